//! `meshsim`: seeded simulations of many data mesh nodes.
//!
//! The scenario runner arrives with the node; today the binary only describes itself.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "meshsim",
    version,
    about = "Seeded simulations of many data mesh nodes (scenario runner not built yet)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("meshsim: no scenario runner yet; see `meshsim --help`");
    std::process::exit(2);
}
