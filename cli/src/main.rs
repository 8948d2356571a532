//! The `wasmos` command. `main` stays thin: each subcommand lives in its own module.

mod run;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "wasmos", version, about = "wasmos: a cluster manager for WebAssembly tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one Wasm task locally under hard limits (no cluster).
    Run(run::RunArgs),
    /// Run the allocator on a scenario file: what would DRF give these tenants?
    Sim(SimArgs),
}

/// Arguments of `wasmos sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Scenario file (JSON; see README.md, "wasmos sim").
    pub scenario: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Sim(args) => sim::run(&args),
    }
}
