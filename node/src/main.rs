//! `meshnode`: the data mesh node's command line.
//!
//! The node itself (networking, store, HTTP API) is still being built; today the binary checks
//! descriptor files, the same checks every node applies to catalog entries it receives.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_protocol::{Config, Descriptor};

#[derive(Debug, Parser)]
#[command(
    name = "meshnode",
    version,
    about = "A node of a broker-less data mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a data product descriptor file and print it as the mesh will see it.
    Check {
        /// The descriptor YAML file.
        file: PathBuf,
        /// Print the checked descriptor as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshnode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { file, json } => check(&file, json),
    }
}

fn check(file: &PathBuf, json: bool) -> anyhow::Result<()> {
    let config = Config::default();
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let descriptor = Descriptor::from_yaml(&text, &config).map_err(|errors| {
        // One line per problem, each prefixed with the file, like a compiler.
        let lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{}: {e}", file.display()))
            .collect();
        anyhow::anyhow!("{} problem(s)\n{}", lines.len(), lines.join("\n"))
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&descriptor)?);
    } else {
        println!(
            "{}: ok — {} {} ({} domain), {} fields{}, {} inputs",
            file.display(),
            descriptor.name,
            descriptor.version,
            descriptor.domain,
            descriptor.fields.len(),
            if descriptor.has_pii() {
                " incl. PII"
            } else {
                ""
            },
            descriptor.inputs.len()
        );
    }
    Ok(())
}
