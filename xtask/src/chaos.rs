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
/// cli/examples/chaos.rs); with `--ha [--leader-changes N]`, several masters
/// on etcd (cli/examples/chaos_ha.rs; etcd comes from `cargo xtask setup`).
/// Debug build, so it reuses the test build.
pub fn chaos(root: &Path, args: &ChaosArgs) -> Result<()> {
    guests::guests(root)?;
    if args.netns {
        return netns(root, args);
    }
    let (example, flags) = if args.ha {
        crate::setup::apt_install(&crate::setup::DEBIAN_TEST_TOOLS)?;
        let flags = [
            ("--leader-changes", args.leader_changes.to_string()),
            ("--tasks-per-round", args.tasks_per_round.to_string()),
            ("--framework-tasks", args.framework_tasks.min(200).to_string()),
        ];
        ("chaos_ha", flags.to_vec())
    } else {
        let flags = [("--tasks", args.tasks.to_string()), ("--framework-tasks", args.framework_tasks.to_string())];
        ("chaos", flags.to_vec())
    };
    let mut c = build_example(root, example)?;
    c.arg("--wasmos").arg(root.join("target/debug/wasmos")).arg("--guests").arg(guests_dir(root));
    for (flag, value) in flags {
        c.args([flag, &value]);
    }
    run(&mut c)
}

/// `cargo xtask chaos --netns [--partition DUR]`: cli/examples/chaos_netns.rs
/// with the debug `wasmos` and the edge agent (built alone, as the tests do).
fn netns(root: &Path, args: &ChaosArgs) -> Result<()> {
    crate::setup::apt_install(&["iproute2", "iptables"])?;
    let edge = crate::edge::build_native(root)?;
    run(build_example(root, "chaos_netns")?
        .arg("--wasmos")
        .arg(root.join("target/debug/wasmos"))
        .arg("--edge")
        .arg(edge)
        .arg("--guests")
        .arg(guests_dir(root))
        .args(["--partition", &format!("{}s", args.partition.as_secs().max(4))]))
}

/// Builds `wasmos` and the example (debug, reusing the test build) and
/// returns the command that runs the example.
fn build_example(root: &Path, example: &str) -> Result<Command> {
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "wasmos",
        "--bin",
        "wasmos",
        "--example",
        example,
    ]))?;
    Ok(Command::new(root.join("target/debug/examples").join(example)))
}
