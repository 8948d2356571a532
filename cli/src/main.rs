//! The `wasmos` command. `main` stays thin: each subcommand lives in its own module.

mod args;
mod client;
mod cluster;
mod framework;
mod listing;
mod maintenance;
mod masters;
mod migratable;
mod observe;
mod roles;
mod run;
mod sign;
mod sim;
mod submit;
mod tasks;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use tasks::TaskAction;

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
    /// Run a master (the control plane).
    Master(cluster::MasterArgs),
    /// Run an agent that offers this machine's resources to a master; or
    /// drain, undrain or set the eligibility of one (`wasmos agent drain ID`).
    Agent(AgentCmd),
    /// A master plus agents in one process: the embedded default to start with.
    Dev(cluster::DevArgs),
    /// Queue tasks in the built-in batch framework (uploading the module if needed).
    Submit(submit::SubmitArgs),
    /// List tasks.
    Tasks(tasks::TasksArgs),
    /// List agents.
    Agents(listing::ListArgs),
    /// List frameworks.
    Frameworks(listing::ListArgs),
    /// List the masters (several with `master --etcd`): which one leads, its
    /// epoch and for how long.
    Masters(listing::ListArgs),
    /// List roles: weight, quota, reservations, allocation and share.
    Roles(listing::ListArgs),
    /// Set a role's weight and quota (kept in the master's registry).
    #[command(subcommand)]
    Role(roles::RoleCmd),
    /// Set part of an agent aside for a role (a dynamic reservation).
    Reserve(roles::ReserveArgs),
    /// Release a dynamic reservation.
    Unreserve(roles::ReserveArgs),
    /// Deploy, list and remove frameworks whose scheduler is a Wasm component.
    #[command(subcommand)]
    Framework(framework::FrameworkCmd),
    /// Show a task: spec, limits against use, placement, attempts, history.
    #[command(alias = "status")]
    Task(tasks::TaskDetailArgs),
    /// Print a task's output.
    Logs(tasks::LogsArgs),
    /// Kill a task.
    Kill(tasks::TaskArgs),
    /// Pause a running task (no work is lost).
    Pause(tasks::TaskArgs),
    /// Resume a paused task.
    Resume(tasks::TaskArgs),
    /// Create, list and revoke bearer tokens (grants ACTION:ROLE).
    #[command(subcommand)]
    Token(tokens::TokenCmd),
    /// Read the master's audit log (every mutating and every denied call).
    Audit(tokens::AuditArgs),
    /// Make an ed25519 key pair for signing modules.
    Keygen(sign::KeygenArgs),
    /// Sign a module (a detached signature over its SHA-256).
    Sign(sign::SignArgs),
    /// Print the master's Prometheus metrics (needs a token with view:*).
    Metrics(observe::MetricsArgs),
    /// Running tasks by fuel per second, with memory and wall time against their limits, and the agents.
    Top(observe::TopArgs),
    /// Print the dashboard's URL and the token to log in with.
    Dashboard(observe::DashboardArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(observe::CompletionArgs),
}

/// `wasmos agent [OPTIONS]` runs an agent; `wasmos agent drain|undrain|eligibility ID` maintains one.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct AgentCmd {
    #[command(subcommand)]
    op: Option<maintenance::AgentOp>,
    #[command(flatten)]
    run: cluster::AgentArgs,
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
    quiet_broken_pipe();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Sim(args) => sim::run(&args),
        Command::Master(args) => cluster::master(args),
        Command::Agent(AgentCmd { op: Some(op), .. }) => maintenance::main(op),
        Command::Agent(AgentCmd { op: None, run }) => cluster::agent(run),
        Command::Dev(args) => cluster::dev(args),
        Command::Submit(args) => submit::main(args),
        Command::Tasks(args) => tasks::tasks(args),
        Command::Agents(args) => tasks::agents(args),
        Command::Frameworks(args) => tasks::frameworks(args),
        Command::Masters(args) => masters::list(args),
        Command::Framework(cmd) => framework::main(cmd),
        Command::Roles(args) => roles::list(args),
        Command::Role(cmd) => roles::role(cmd),
        Command::Reserve(args) => roles::reserve(args),
        Command::Unreserve(args) => roles::unreserve(args),
        Command::Task(args) => tasks::detail(args),
        Command::Logs(args) => tasks::logs(args),
        Command::Kill(args) => tasks::action(args, TaskAction::Kill),
        Command::Pause(args) => tasks::action(args, TaskAction::Pause),
        Command::Resume(args) => tasks::action(args, TaskAction::Resume),
        Command::Token(cmd) => tokens::main(cmd),
        Command::Audit(args) => tokens::audit(args),
        Command::Keygen(args) => sign::keygen(args),
        Command::Sign(args) => sign::sign(args),
        Command::Metrics(args) => observe::metrics(args),
        Command::Dashboard(args) => observe::dashboard(args),
        Command::Top(args) => observe::top(args),
        Command::Completion(args) => observe::completion(args, &mut Cli::command()),
    }
}

/// A closed stdout or stderr (`wasmos tasks | head -1`) ends the command
/// quietly, as it does `ls` or `grep`: print! panics on EPIPE, and that
/// panic exits with 141 (128 + SIGPIPE) instead of a message and backtrace.
/// SIGPIPE itself stays ignored, so a peer that closes a socket is an
/// error to handle, never a silent death.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to std") && m.contains("Broken pipe")) {
            std::process::exit(141);
        }
        default(info)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_agent_attributes_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["wasmos", "agent", "--attributes", "zone=eu,rack=r1", "--attributes", "arch=x"])
            .unwrap();
        let Command::Agent(AgentCmd { run, .. }) = cli.command else { panic!("not agent") };
        let want: Vec<(String, String)> = [("zone", "eu"), ("rack", "r1"), ("arch", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(run.attributes, want);
        let err = Cli::try_parse_from(["wasmos", "agent", "--attributes", "zone"]).unwrap_err().to_string();
        assert!(err.contains("is not k=v"), "{err}");
        let s = Cli::try_parse_from(["wasmos", "submit", "x.wasm", "--on-disconnect", "stop-after 30s"]);
        assert!(s.is_ok(), "{s:?}");
        let err =
            Cli::try_parse_from(["wasmos", "submit", "x.wasm", "--on-disconnect", "later"]).unwrap_err().to_string();
        assert!(err.contains("keep, stop-after DUR, replace-after DUR"), "{err}");
    }
}
