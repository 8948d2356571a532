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
