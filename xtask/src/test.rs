//! `cargo xtask test`: what CI runs (`.ci/run`), on a clean clone too.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::flags::{ChaosArgs, SoakArgs, TestArgs};
use crate::util::run;
use crate::{chaos, guests, setup, soak};

/// The chaos suite at a size that keeps CI short.
const CI_CHAOS: ChaosArgs = ChaosArgs {
    tasks: 600,
    framework_tasks: 40,
    ha: false,
    leader_changes: 0,
    tasks_per_round: 0,
    netns: false,
    partition: Duration::ZERO,
};

/// The several-masters chaos suite at CI size: at least 10 leader changes.
const CI_CHAOS_HA: ChaosArgs = ChaosArgs {
    tasks: 0,
    framework_tasks: 40,
    ha: true,
    leader_changes: 10,
    tasks_per_round: 30,
    netns: false,
    partition: Duration::ZERO,
};

/// Bad networks at CI size: each cut lasts 20 s (the suite's timers, agent
/// timeout 6 s and on-disconnect deadlines of 5 s, fit in).
const CI_CHAOS_NETNS: ChaosArgs = ChaosArgs {
    tasks: 0,
    framework_tasks: 0,
    ha: false,
    leader_changes: 0,
    tasks_per_round: 0,
    netns: true,
    partition: Duration::from_secs(20),
};

/// A short soak: 80 s at a modest rate with 2 faults (a fixed seed, so every
/// CI run injects the same ones: kill -9 of agent 1 at 28 s, of the master at
/// 40 s), on the debug build the tests already made (a release build would be
/// a second full build). At 300 tasks/s the last half sees ~12,000 tasks; the
/// growth floor is the default 32 MiB (about 2.8 KB a task): with 16 MiB a
/// never-restarted agent still warming up failed the verdict (agent 0 of
/// seed 11: +2.9 MiB in one run, +24.3 MiB in the next, same code), and the
/// per-task growth the summary prints is what to read here. The long release
/// soak is the leak check.
///
/// A master that holds up to N finished tasks before it lets go of them grows
/// until it holds N, and its history until it holds `--task-history` worth:
/// both must level off well within the first half, also after the master's
/// kill at 40 s. At 300 tasks/s that means 2,000 tasks held (~7 s worth; the
/// default 10,000 would take 33 s), 20 s of history, and a watch ring of
/// 20,000 events (~25 s; the default 100,000 would take the whole run).
fn ci_soak() -> SoakArgs {
    SoakArgs {
        duration: Duration::from_secs(80),
        rate: 300,
        agents: 2,
        faults_per_minute: 1.5,
        seed: Some(CI_SOAK_SEED),
        out: None,
        sample_every: Duration::from_secs(2),
        growth_tolerance: 0.1,
        growth_floor_mib: 32.0,
        settle: Duration::from_secs(20),
        p99_ratio: 3.0,
        // 80 s at CI size gives the second quarter 5 intervals of a debug
        // build: its median p99 ranged 16–64 ms and the last quarter's
        // 19–103 ms over five runs of one commit (the last quarter follows
        // the master's kill -9, after which the probe's p99 roughly doubles).
        // The drift check that means something is the long release soak.
        p99_floor_ms: 100.0,
        task_history: Some(Duration::from_secs(20)),
        debug: true,
        keep_events: true,
        master_arg: vec!["--max-completed-tasks=2000".into(), "--watch-history=20000".into()],
    }
}
const CI_SOAK_SEED: u64 = 11;

/// `cargo xtask test [CARGO_TEST_ARGS]`: setup if needed, build the guests, run
/// the edge agents, every test of the workspace, then the chaos suite and a short soak at CI size.
pub fn test(root: &Path, args: &TestArgs) -> Result<()> {
    setup::setup_build()?;
    guests::guests(root)?;
    // Cheap when already installed; covers machines whose guests were built
    // before the Python example existed.
    setup::setup_python(root)?;
    // Likewise for the dashboard's browser and promtool.
    setup::apt_install(&setup::DEBIAN_TEST_TOOLS)?;
    // The edge agents first, each built alone: a workspace build would give
    // them Cranelift. The CLI tests run them (x86-64, and aarch64 under qemu).
    let (edge, edge_arm) = crate::edge::build(root)?;
    let mut test = Command::new("cargo");
    test.current_dir(root).args(["test", "--workspace"]).args(&args.cargo_args).env("WASMOS_EDGE_BIN", edge);
    match edge_arm {
        Some(arm) => test.env("WASMOS_EDGE_AARCH64_BIN", arm),
        None => test.env_remove("WASMOS_EDGE_AARCH64_BIN"),
    };
    run(&mut test)?;
    chaos::chaos(root, &CI_CHAOS)?;
    chaos::chaos(root, &CI_CHAOS_HA)?;
    chaos::chaos(root, &CI_CHAOS_NETNS)?;
    soak::soak_built_guests(root, &ci_soak())
}
