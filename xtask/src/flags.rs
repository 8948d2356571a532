//! The command line of `cargo xtask`, parsed by clap.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// wasmos automation: guest toolchains, guest builds, tests, the demo,
/// benchmarks and the fault-injection suite.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", arg_required_else_help = true)]
pub struct Xtask {
    #[command(subcommand)]
    pub command: Cmd,
}

impl Xtask {
    /// This process's command line; on bad input clap prints why and exits 2.
    pub fn from_env() -> Xtask {
        Xtask::try_from_args(std::env::args().collect()).unwrap_or_else(|e| e.exit())
    }

    fn try_from_args(argv: Vec<String>) -> Result<Xtask, clap::Error> {
        let mut flags = Xtask::try_parse_from(&argv)?;
        // clap takes a `--` right after `test` as its own end of options, but
        // `cargo xtask test -- --nocapture` means it for cargo test.
        if let Cmd::Test(t) = &mut flags.command
            && argv.get(1..3).is_some_and(|a| a == ["test", "--"])
        {
            t.cargo_args.insert(0, "--".into());
        }
        Ok(flags)
    }
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// Install guest toolchains (rustup wasm targets, or Debian's rustc-web;
    /// clang-16 + wasi-libc; Zig, Go, Node packages, componentize-py, grpcio).
    Setup,
    /// Build the example guests into target/guests/.
    Guests,
    /// Setup, guests, then `cargo test --workspace` and the chaos suite at CI size.
    Test(TestArgs),
    /// Run the hello guest under `wasmos run`, then on a `wasmos dev` cluster.
    Demo,
    /// Run benchmarks: the criterion ones (all by default) or e2e.
    Bench(BenchArgs),
    /// Fault injection with real master and agent processes.
    Chaos(ChaosArgs),
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct TestArgs {
    /// Passed on to `cargo test --workspace` (e.g. `-- --nocapture`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CARGO_TEST_ARGS")]
    pub cargo_args: Vec<String>,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Option<Bench>,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Bench {
    /// The sandbox's criterion benchmarks (wasmos-sandbox).
    Sandbox,
    /// The allocator's criterion benchmarks (wasmos-allocator).
    Allocator,
    /// Both criterion suites (the default).
    All,
    /// A release `wasmos dev` (one agent with the whole machine) and the
    /// e2e_bench client against it over loopback gRPC: latency, then throughput.
    E2e(E2eArgs),
    /// Memory and registry size of a release `wasmos dev` as rounds of tasks
    /// run through it: what each task costs once it ended.
    Memory(MemoryArgs),
    /// A master with a long history killed with SIGKILL and started again:
    /// how long until it serves.
    Restart(RestartArgs),
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct MemoryArgs {
    /// Submissions, one after the other.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rounds: u32,
    /// No-op tasks per submission.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub tasks: u32,
    /// Also measure another build (a directory with its `wasmos` and `e2e_bench`).
    #[arg(long, value_name = "DIR")]
    pub against: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct RestartArgs {
    /// Ended tasks in the registry's history before the restarts.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub history: u64,
    /// Tasks waiting in the queue (no agent runs them).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub queued: u32,
    /// Restarts measured.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub restarts: u32,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct E2eArgs {
    /// The master's registry: `file` (durable, fsync'd group commits) or `in-memory`.
    #[arg(long, value_name = "KIND", default_value = "file", value_parser = ["file", "in-memory"])]
    pub registry: String,
    /// `off`: the agent keeps no checkpoint (for an A/B of its cost).
    #[arg(long, value_name = "ON|OFF", value_enum, default_value_t = Switch::On)]
    pub agent_checkpoint: Switch,
    /// Tasks in the one throughput submission.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub tasks: u32,
    /// Single tasks timed one at a time for the latency percentiles.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub latency_samples: u32,
    /// A/B: also run another build (a directory holding its `wasmos` and
    /// `e2e_bench`, e.g. a copy of an older target/release) and alternate the
    /// two, first one then the other, for `--rounds`.
    #[arg(long, value_name = "DIR")]
    pub against: Option<std::path::PathBuf>,
    /// With `--against`: how many runs of each.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rounds: u32,
    /// Anything else is passed on to the e2e_bench client.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CLIENT_ARGS")]
    pub client_args: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct ChaosArgs {
    /// Batch tasks submitted while the faults are injected.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub tasks: usize,
    /// Tasks the remote framework launches meanwhile.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub framework_tasks: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_parse(line: &str) -> Result<Cmd, clap::Error> {
        let argv = std::iter::once("xtask").chain(line.split_whitespace()).map(String::from).collect();
        Xtask::try_from_args(argv).map(|x| x.command)
    }

    fn parse(line: &str) -> Cmd {
        try_parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn e2e(line: &str) -> E2eArgs {
        match parse(line) {
            Cmd::Bench(BenchArgs { which: Some(Bench::E2e(a)) }) => a,
            other => panic!("{line:?} is not bench e2e: {other:?}"),
        }
    }

    fn strings(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands_without_flags() {
        assert_eq!(parse("setup"), Cmd::Setup);
        assert_eq!(parse("guests"), Cmd::Guests);
        assert_eq!(parse("demo"), Cmd::Demo);
        assert_eq!(parse("bench"), Cmd::Bench(BenchArgs { which: None }));
        assert_eq!(parse("bench sandbox"), Cmd::Bench(BenchArgs { which: Some(Bench::Sandbox) }));
        assert_eq!(parse("bench allocator"), Cmd::Bench(BenchArgs { which: Some(Bench::Allocator) }));
        assert_eq!(parse("bench all"), Cmd::Bench(BenchArgs { which: Some(Bench::All) }));
    }

    #[test]
    fn test_passes_everything_on_to_cargo_test() {
        assert_eq!(parse("test"), Cmd::Test(TestArgs { cargo_args: vec![] }));
        for extra in ["-p wasmos-model", "--release -- --nocapture", "-- --ignored", "rfc3339 -- --nocapture"] {
            assert_eq!(parse(&format!("test {extra}")), Cmd::Test(TestArgs { cargo_args: strings(extra) }), "{extra}");
        }
    }

    #[test]
    fn chaos_sizes() {
        assert_eq!(parse("chaos"), Cmd::Chaos(ChaosArgs { tasks: 2000, framework_tasks: 100 }));
        assert_eq!(
            parse("chaos --tasks 600 --framework-tasks 40"),
            Cmd::Chaos(ChaosArgs { tasks: 600, framework_tasks: 40 })
        );
    }

    #[test]
    fn e2e_flags_and_client_pass_through() {
        let a = e2e("bench e2e");
        assert_eq!((a.registry.as_str(), a.agent_checkpoint), ("file", Switch::On));
        assert_eq!((a.tasks, a.latency_samples, a.client_args.len()), (100_000, 1000, 0));

        let a = e2e("bench e2e --registry in-memory --agent-checkpoint off --tasks 20000 --latency-samples 10");
        assert_eq!((a.registry.as_str(), a.agent_checkpoint), ("in-memory", Switch::Off));
        assert_eq!((a.tasks, a.latency_samples, a.client_args.len()), (20_000, 10, 0));

        // Flags xtask does not know go to the client, with what follows them.
        let a = e2e("bench e2e --tasks 5 --warmup 3 --latency-samples 7");
        assert_eq!((a.tasks, a.latency_samples), (5, 1000));
        assert_eq!(a.client_args, strings("--warmup 3 --latency-samples 7"));
    }

    #[test]
    fn bad_input_is_refused() {
        for line in [
            "",
            "build",
            "bench gpu",
            "bench e2e --registry redis",
            "bench e2e --agent-checkpoint maybe",
            "chaos --tasks many",
            "chaos --seed 1",
        ] {
            assert!(try_parse(line).is_err(), "{line:?} was accepted");
        }
    }
}
