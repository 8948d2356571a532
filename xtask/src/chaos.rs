//! `cargo xtask chaos`: the fault-injection suite (cli/examples/chaos.rs)
//! against real `wasmos master` and `wasmos agent` processes.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::flags::ChaosArgs;
use crate::guests;
use crate::util::{guests_dir, run};

/// `cargo xtask chaos [--tasks N] [--framework-tasks N]`: the fault-injection
/// suite with real `wasmos master`/`wasmos agent` processes (see
/// cli/examples/chaos.rs). Debug build, so it reuses the test build.
pub fn chaos(root: &Path, args: &ChaosArgs) -> Result<()> {
    guests::guests(root)?;
    if args.ha {
        return chaos_ha(root, args);
    }
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "wasmos",
        "--bin",
        "wasmos",
        "--example",
        "chaos",
    ]))?;
    run(Command::new(root.join("target/debug/examples/chaos"))
        .arg("--wasmos")
        .arg(root.join("target/debug/wasmos"))
        .arg("--guests")
        .arg(guests_dir(root))
        .arg("--tasks")
        .arg(args.tasks.to_string())
        .arg("--framework-tasks")
        .arg(args.framework_tasks.to_string()))
}

/// `cargo xtask chaos --ha [--leader-changes N]`: several masters on etcd
/// (see cli/examples/chaos_ha.rs); etcd comes from `cargo xtask setup`.
fn chaos_ha(root: &Path, args: &ChaosArgs) -> Result<()> {
    crate::setup::apt_install(&crate::setup::DEBIAN_TEST_TOOLS)?;
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "wasmos",
        "--bin",
        "wasmos",
        "--example",
        "chaos_ha",
    ]))?;
    run(Command::new(root.join("target/debug/examples/chaos_ha"))
        .arg("--wasmos")
        .arg(root.join("target/debug/wasmos"))
        .arg("--guests")
        .arg(guests_dir(root))
        .arg("--leader-changes")
        .arg(args.leader_changes.to_string())
        .arg("--tasks-per-round")
        .arg(args.tasks_per_round.to_string())
        .arg("--framework-tasks")
        .arg(args.framework_tasks.min(200).to_string()))
}
