//! `meshsim`: seeded simulations of a data mesh.
//!
//! `meshsim run SCENARIO.toml` runs real nodes in this process and writes a report (JSON,
//! Markdown, SVG plots); `meshsim model MODEL.toml` runs the protocol core on a virtual clock;
//! `meshsim plan SCENARIO.toml` prints the seeded plan without running it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mesh_sim::Scenario;
use mesh_sim::model::{self, ModelScenario};
use mesh_sim::plan::Plan;
use mesh_sim::scenario::Stack;

#[derive(Debug, Parser)]
#[command(name = "meshsim", version, about = "Seeded simulations of a data mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run real nodes (the node crate's code over an in-process network) through a scenario.
    Run {
        scenario: PathBuf,
        /// Seed of the plan (topology, workload, faults); default: the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write report.json, report.md and the plots; default
        /// results/NAME-STACK-SEED, followed by any override (-nodesN, -rateR).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// No progress bar; log the phases instead (as when stderr is not a terminal).
        #[arg(long)]
        quiet: bool,
    },
    /// Run the protocol core alone on a virtual clock (thousands of nodes, invariants checked
    /// after every step).
    Model {
        scenario: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        nodes: Option<usize>,
        /// Where to write model.json.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Rewrite DIR/report.md from DIR/report.json, as this version of meshsim writes it
    /// (the plots need the run's samples and are left as they are).
    Render { dir: PathBuf },
    /// Print a scenario's seeded plan (topology and schedule) without running it; with the
    /// same overrides, the plan `run` would carry out.
    Plan {
        scenario: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// What `run` and `plan` may change in a scenario.
#[derive(Debug, Args)]
struct Overrides {
    /// Run the scenario's catalog workload on a gossipsub baseline: stock-gossipsub (its
    /// defaults) or node-gossipsub (the node's gossip layer alone, forwarding unchecked).
    #[arg(long, value_parser = parse_stack)]
    stack: Option<Stack>,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    /// Override the scenario's catalog update rate (updates per second, all nodes
    /// together), e.g. to find the rate a machine carries. The plan draws its faults after
    /// the updates: with another rate, faults may fall on other nodes.
    #[arg(long, value_name = "PER_S")]
    catalog_rate: Option<f64>,
}

/// The scenario a command runs, once its overrides are applied.
struct Overridden {
    scenario: Scenario,
    /// The overrides that change the plan, as flags (empty if none): the report repeats them
    /// in the scenario's description and a failure names them in its replay hint.
    flags: String,
    /// Appended to the default report directory: `-nodesN`, `-rateR`.
    suffix: String,
}

impl Overrides {
    fn apply(&self, path: &Path) -> anyhow::Result<Overridden> {
        let mut s = Scenario::load(path)?;
        if let Some(stack) = self.stack {
            s.stack = stack;
            if stack.is_baseline() {
                // A baseline runs the catalog workload; faults other than link ones need the
                // node.
                s.faults
                    .retain(|f| matches!(f, mesh_sim::scenario::Fault::Link { .. }));
            }
        }
        let (mut flags, mut suffix) = (Vec::new(), String::new());
        if let Some(n) = self.nodes {
            s.nodes = n;
            flags.push(format!("--nodes {n}"));
            suffix.push_str(&format!("-nodes{n}"));
        }
        if let Some(rate) = self.catalog_rate {
            s.workload.catalog_update_rate = rate;
            flags.push(format!("--catalog-rate {rate}"));
            suffix.push_str(&format!("-rate{rate}"));
        }
        let flags = flags.join(" ");
        if !flags.is_empty() {
            s.check()
                .map_err(|e| anyhow::anyhow!("{} with {flags}: {e}", path.display()))?;
            s.description = format!("{} Run with {flags}.", s.description)
                .trim_start()
                .to_string();
        }
        Ok(Overridden {
            scenario: s,
            flags,
            suffix,
        })
    }
}

fn parse_stack(s: &str) -> Result<Stack, String> {
    Stack::ALL
        .into_iter()
        .find(|stack| stack.label() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Stack::ALL.iter().map(|s| s.label()).collect();
            format!("unknown stack {s:?}: one of {}", names.join(", "))
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The progress bar shows the phase on a terminal; anywhere else (CI, `nohup`, a pipe) the
    // phases and node-start counts are logged instead, so a long run shows where it is.
    let bar =
        std::io::stderr().is_terminal() && !matches!(cli.command, Command::Run { quiet: true, .. });
    let default_filter = if bar {
        "error,libp2p_gossipsub::behaviour=off"
    } else {
        "error,mesh_sim=info,libp2p_gossipsub::behaviour=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // gossipsub logs an ERROR for every message that races a closing connection,
                // which closing unneeded connections makes routine.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match execute(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("meshsim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Run {
            scenario,
            seed,
            out,
            overrides,
            quiet,
        } => {
            let Overridden {
                scenario: s,
                flags: changed,
                suffix,
            } = overrides.apply(&scenario)?;
            let seed = seed.unwrap_or(s.seed);
            let out = out.unwrap_or_else(|| {
                PathBuf::from("results").join(format!(
                    "{}-{}-{seed}{suffix}",
                    s.name,
                    s.stack.label()
                ))
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let outcome = runtime.block_on(mesh_sim::run(&s, seed, !quiet))?;
            outcome.report.write(&out, &outcome.samples)?;
            for c in &outcome.report.checks {
                println!(
                    "{} {}: {}",
                    if c.passed { "PASS" } else { "FAIL" },
                    c.name,
                    c.detail
                );
            }
            println!("report: {}", out.join("report.md").display());
            let passed = outcome.report.passed();
            if !passed {
                let stack = match s.stack {
                    Stack::Mesh => String::new(),
                    other => format!(" --stack {}", other.label()),
                };
                eprintln!("meshsim: a check failed; replay with --seed {seed}{stack} {changed}");
            }
            // Nodes were stopped; do not wait for stray blocking tasks.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            Ok(passed)
        }
        Command::Model {
            scenario,
            seed,
            nodes,
            out,
        } => {
            let mut s = ModelScenario::load(&scenario)?;
            if let Some(n) = nodes {
                s.nodes = n;
            }
            let seed = seed.unwrap_or(s.seed);
            match model::run(&s, seed) {
                Ok(report) => {
                    let json = serde_json::to_string_pretty(&report)?;
                    println!("{json}");
                    if let Some(out) = out {
                        std::fs::create_dir_all(&out)?;
                        std::fs::write(out.join("model.json"), &json)?;
                    }
                    let converged = report.converged_after_end_ms.is_some();
                    if !converged {
                        eprintln!("meshsim: the model did not converge; replay with --seed {seed}");
                    }
                    Ok(converged)
                }
                Err(v) => {
                    eprintln!(
                        "meshsim: {v}; replay with `meshsim model {} --seed {seed}`",
                        scenario.display()
                    );
                    Ok(false)
                }
            }
        }
        Command::Render { dir } => {
            let report = mesh_sim::report::Report::read(&dir.join("report.json"))?;
            let out = dir.join("report.md");
            std::fs::write(&out, report.markdown())?;
            println!("report: {}", out.display());
            Ok(true)
        }
        Command::Plan {
            scenario,
            seed,
            overrides,
        } => {
            let s = overrides.apply(&scenario)?.scenario;
            let plan = Plan::new(&s, seed.unwrap_or(s.seed));
            println!("plan {} (seed {})", plan.fingerprint(), plan.seed);
            println!("links: {:?}", plan.edges);
            for a in plan.actions.iter().filter(|a| a.what.is_fault()) {
                println!("{:>8.3} s  {:?}", a.at.as_secs_f64(), a.what);
            }
            println!(
                "{} appends, {} catalog updates",
                plan.count(|w| matches!(w, mesh_sim::plan::What::Append { .. })),
                plan.count(|w| matches!(w, mesh_sim::plan::What::Update { .. }))
            );
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str) -> String {
        format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"))
    }

    fn applied(args: &[&str]) -> anyhow::Result<Overridden> {
        let cli = Cli::try_parse_from(args)?;
        match cli.command {
            Command::Run {
                scenario,
                overrides,
                ..
            }
            | Command::Plan {
                scenario,
                overrides,
                ..
            } => overrides.apply(&scenario),
            other => panic!("not run or plan: {other:?}"),
        }
    }

    #[test]
    fn plan_shows_the_plan_run_carries_out_with_the_same_overrides() {
        let path = scenario("churn");
        let flags = [
            "--nodes",
            "12",
            "--catalog-rate",
            "3",
            "--stack",
            "stock-gossipsub",
        ];
        let run = applied(&[&["meshsim", "run", &path][..], &flags].concat()).unwrap();
        let plan = applied(&[&["meshsim", "plan", &path][..], &flags].concat()).unwrap();
        let plain = applied(&["meshsim", "plan", &path]).unwrap();
        let fingerprint = |o: &Overridden| Plan::new(&o.scenario, 1).fingerprint();
        assert_eq!(fingerprint(&run), fingerprint(&plan));
        assert_ne!(fingerprint(&plan), fingerprint(&plain));
        assert_eq!(plan.scenario.nodes, 12);
        assert_eq!(plan.scenario.workload.catalog_update_rate, 3.0);
        // Stock gossipsub keeps only link faults; churn has none.
        assert!(plan.scenario.faults.is_empty() && !plain.scenario.faults.is_empty());
        assert_eq!(plan.flags, "--nodes 12 --catalog-rate 3");
        assert_eq!(plan.suffix, "-nodes12-rate3");
        assert!(plain.flags.is_empty() && plain.suffix.is_empty());
    }

    #[test]
    fn every_stack_is_named_as_its_report_labels_it_and_a_baseline_keeps_link_faults_only() {
        for stack in Stack::ALL {
            assert_eq!(parse_stack(stack.label()), Ok(stack));
        }
        let err = parse_stack("gossip").unwrap_err();
        assert!(
            err.contains("mesh, stock-gossipsub, node-gossipsub"),
            "{err}"
        );
        for (path, faults_kept) in [(scenario("churn"), 0), (scenario("link"), 1)] {
            let o = applied(&["meshsim", "run", &path, "--stack", "node-gossipsub"]).unwrap();
            assert_eq!(o.scenario.stack, Stack::NodeGossipsub);
            assert_eq!(o.scenario.faults.len(), faults_kept, "{path}");
            o.scenario.check().unwrap();
        }
    }

    #[test]
    fn an_override_the_scenario_cannot_take_is_refused_by_plan_too() {
        let path = scenario("ci-smoke");
        for bad in [["--nodes", "1"], ["--catalog-rate", "inf"]] {
            let err = applied(&[&["meshsim", "plan", &path][..], &bad].concat())
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(err.to_string().contains(bad[0]), "{bad:?}: {err}");
        }
    }
}
