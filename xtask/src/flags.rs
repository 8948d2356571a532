//! The command line of `cargo xtask`, parsed by clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// wasmos automation: guest toolchains, guest builds, tests, the demo,
/// benchmarks, the fault-injection suite and the soak.
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

#[derive(Subcommand, Debug, PartialEq)]
pub enum Cmd {
    /// Install guest toolchains (rustup wasm targets, or Debian's rustc-web;
    /// clang-16 + wasi-libc; Zig, Go, Node packages, componentize-py, grpcio).
    Setup,
    /// Build the example guests into target/guests/.
    Guests,
    /// Setup, guests, then `cargo test --workspace`, the chaos suite and a
    /// short soak, at CI size.
    Test(TestArgs),
    /// Run the hello guest under `wasmos run`, then on a `wasmos dev` cluster.
    Demo,
    /// Build the compiler-free edge agent for this machine and for aarch64
    /// (target/edge/wasmos-edge, target/aarch64-unknown-linux-gnu/edge/wasmos-edge).
    Edge,
    /// Run benchmarks: the criterion ones (all by default) or e2e.
    Bench(BenchArgs),
    /// Fault injection with real master and agent processes.
    Chaos(ChaosArgs),
    /// Sustained mixed load with repeated faults on real processes; fails if
    /// memory or disk keeps growing, a task is lost or p99 latency drifts up.
    Soak(SoakArgs),
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
    /// Release `wasmos master` + one `wasmos agent`: sleeping tasks launched
    /// through the cluster until all run; time, RSS and per-task cost.
    Density(DensityArgs),
    /// Release `wasmos master` + one `wasmos agent`: benign tasks' latency
    /// quiet and next to spinners in a low-share role.
    Noisy(NoisyArgs),
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct DensityArgs {
    /// Sleeping tasks to hold live at once.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub tasks: u32,
    /// Flags for the agent (after `--`), e.g. `-- --max-tasks 10000`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "AGENT_FLAGS")]
    pub agent_flags: Vec<String>,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct NoisyArgs {
    /// Tasks spinning forever in the low-share role.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub spinners: u32,
    /// Benign tasks timed one after the other, quiet and then noisy.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub samples: u32,
    /// Flags for the agent (after `--`), e.g. `-- --cpu-limit hard`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "AGENT_FLAGS")]
    pub agent_flags: Vec<String>,
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
    /// With `--against` or `--security both`: how many runs of each.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rounds: u32,
    /// `tls`: the default (TLS and a token on every call); `insecure`:
    /// `wasmos dev --insecure` (plaintext, still tokens); `both`: alternate
    /// the two for `--rounds`, for their cost side by side.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Security::Tls)]
    pub security: Security,
    /// Also run the cluster on etcd (a 3-member etcd on loopback, `wasmos
    /// master --etcd` and one agent), alternating with the redb registry for
    /// `--rounds`.
    #[arg(long)]
    pub etcd: bool,
    /// Anything else is passed on to the e2e_bench client.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CLIENT_ARGS")]
    pub client_args: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Tls,
    Insecure,
    Both,
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
    /// Several masters instead: 3 `wasmos master --etcd` on a 3-member etcd,
    /// faults on the leader, etcd and followers (cli/examples/chaos_ha.rs).
    #[arg(long)]
    pub ha: bool,
    /// With --ha: inject faults until this many leader changes were seen.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub leader_changes: u64,
    /// With --ha: batch tasks submitted each round.
    #[arg(long, value_name = "N", default_value_t = 40)]
    pub tasks_per_round: usize,
    /// Bad networks instead (needs root): master and three agents (one full,
    /// two wasmos-edge) in network namespaces on slow, lossy, delayed links,
    /// agents cut off and one rebooted while cut off (cli/examples/chaos_netns.rs).
    #[arg(long, conflicts_with = "ha")]
    pub netns: bool,
    /// With --netns: how long each agent is cut off.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration)]
    pub partition: Duration,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct SoakArgs {
    /// How long the load runs, e.g. `90s`, `30m`, `1h`.
    #[arg(long, value_name = "DUR", default_value = "2m", value_parser = duration)]
    pub duration: Duration,
    /// Target tasks per second, all clients together (batch jobs of 1 to
    /// 1000 tasks, failing and timing-out ones, a hosted and a remote framework).
    #[arg(long, value_name = "TASKS_PER_S", default_value_t = 2000)]
    pub rate: u32,
    /// Agent processes.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub agents: u32,
    /// Faults per minute of load (kill -9 master, kill -9 agent, SIGSTOP an
    /// agent, drop the remote framework), at seeded random moments; 0: none.
    #[arg(long, value_name = "F", default_value_t = 2.0)]
    pub faults_per_minute: f64,
    /// Seed of the fault moments and kinds and of the load mix; a failing
    /// run prints its seed to replay it [default: from the clock]
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Where soak.csv, soak.png, faults.csv, latency.csv, summary.txt and the
    /// processes' logs go [default: target/soak/<UTC timestamp>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// How often memory, open fds, registry size, lag and latency are sampled.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = duration)]
    pub sample_every: Duration,
    /// Growth allowed over the last half of the run (least-squares slope times
    /// its length), as a fraction of the mean there: master RSS, each agent's
    /// RSS, the registry's disk use.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
    pub growth_tolerance: f64,
    /// Growth smaller than this (MiB over the last half) passes whatever its fraction.
    #[arg(long, value_name = "MIB", default_value_t = 32.0)]
    pub growth_floor_mib: f64,
    /// Samples taken this long after a process was restarted are left out of
    /// its growth fit (it starts small and fills up again), and latency
    /// samples this long after a fault ended out of the p99 check.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = duration)]
    pub settle: Duration,
    /// p99 latency of the last quarter (median of each sample interval's p99)
    /// may be this many times the second quarter's...
    #[arg(long, value_name = "X", default_value_t = 3.0)]
    pub p99_ratio: f64,
    /// ...or this many ms more, whichever allows more.
    #[arg(long, value_name = "MS", default_value_t = 50.0)]
    pub p99_floor_ms: f64,
    /// How long the master keeps finished tasks in its registry's history
    /// (its `--task-history`), so that the history's disk use levels off
    /// within the run [default: a quarter of --duration]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub task_history: Option<Duration>,
    /// Use the debug build (the one `cargo xtask test` makes) instead of a release build.
    #[arg(long)]
    pub debug: bool,
    /// Keep every watch event in memory, so that a task failing an invariant
    /// is printed with its history (about 200 bytes an event).
    #[arg(long)]
    pub keep_events: bool,
    /// An extra flag for `wasmos master`, e.g. `--master-arg=--registry=file` (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub master_arg: Vec<String>,
}

/// `500ms`, `90s`, `30m`, `1.5h`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration; write e.g. 90s, 30m or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h (e.g. 90s, 30m)")),
    };
    if secs <= 0.0 {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
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
        let plain = |tasks, framework_tasks| ChaosArgs {
            tasks,
            framework_tasks,
            ha: false,
            leader_changes: 10,
            tasks_per_round: 40,
            netns: false,
            partition: Duration::from_secs(60),
        };
        assert_eq!(parse("chaos"), Cmd::Chaos(plain(2000, 100)));
        assert_eq!(parse("chaos --tasks 600 --framework-tasks 40"), Cmd::Chaos(plain(600, 40)));
        assert_eq!(
            parse("chaos --ha --leader-changes 100"),
            Cmd::Chaos(ChaosArgs { ha: true, leader_changes: 100, ..plain(2000, 100) })
        );
        assert_eq!(
            parse("chaos --netns --partition 2m"),
            Cmd::Chaos(ChaosArgs { netns: true, partition: Duration::from_secs(120), ..plain(2000, 100) })
        );
        assert!(Xtask::try_parse_from(["xtask", "chaos", "--netns", "--ha"]).is_err());
    }

    fn soak(line: &str) -> SoakArgs {
        match parse(line) {
            Cmd::Soak(a) => a,
            other => panic!("{line:?} is not soak: {other:?}"),
        }
    }

    #[test]
    fn soak_defaults_and_flags() {
        let a = soak("soak");
        assert_eq!((a.duration, a.rate, a.agents, a.faults_per_minute), (Duration::from_secs(120), 2000, 2, 2.0));
        assert_eq!((a.seed, a.out, a.sample_every, a.debug), (None, None, Duration::from_secs(5), false));
        assert_eq!((a.growth_tolerance, a.growth_floor_mib, a.settle), (0.1, 32.0, Duration::from_secs(15)));
        assert_eq!((a.p99_ratio, a.p99_floor_ms, a.master_arg.len()), (3.0, 50.0, 0));

        let a = soak(
            "soak --duration 30m --rate 5000 --agents 3 --faults-per-minute 0.5 --seed 7 --out /tmp/s \
             --sample-every 500ms --master-arg=--foo=1 --master-arg --bar --debug",
        );
        assert_eq!((a.duration, a.rate, a.agents, a.faults_per_minute), (Duration::from_secs(1800), 5000, 3, 0.5));
        assert_eq!(
            (a.seed, a.out.as_deref(), a.sample_every),
            (Some(7), Some("/tmp/s".as_ref()), Duration::from_millis(500))
        );
        assert!(a.debug);
        assert_eq!(a.master_arg, strings("--foo=1 --bar"));
    }

    #[test]
    fn durations() {
        for (s, secs) in [("90s", 90.0), ("30m", 1800.0), ("1.5h", 5400.0), ("250ms", 0.25)] {
            assert_eq!(duration(s), Ok(Duration::from_secs_f64(secs)), "{s}");
        }
        for s in ["", "90", "5 s", "1d", "0s", "m"] {
            assert!(duration(s).is_err(), "{s:?} was accepted");
        }
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
            "soak --duration 10",
            "soak --agents 0",
            "soak --rate fast",
        ] {
            assert!(try_parse(line).is_err(), "{line:?} was accepted");
        }
    }
}
