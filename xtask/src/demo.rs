//! `cargo xtask demo`: the hello guest under `wasmos run`, then on a
//! `wasmos dev` cluster, end to end.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::dev::Dev;
use crate::guests;
use crate::util::{guests_dir, run};

/// The README's first command: `wasmos run` of the hello guest, then a
/// `wasmos dev` cluster (master + one agent in one process) with one task and
/// 100 components submitted and waited for, the agent and framework lists,
/// then stop (when `dev` is dropped, also on an error).
pub fn demo(root: &Path) -> Result<()> {
    // Only what it shows: the Rust guests (`cargo xtask test` builds and
    // installs the rest).
    guests::demo_guests(root)?;
    crate::setup::setup_build()?;
    run(Command::new("cargo").current_dir(root).args(["build", "--quiet", "-p", "wasmos"]))?;
    let wasmos = root.join("target/debug/wasmos");
    run(Command::new(&wasmos)
        .args(["run", "--env", "GREETING=hello"])
        .arg(guests_dir(root).join("hello.wasm"))
        .args(["--", "wasmos run"]))?;
    let dev = Dev::start(&wasmos, "demo", &[])?;
    let url = &dev.url;
    // As a user after `wasmos dev`: the client config it wrote says where
    // the master is and which CA to trust.
    let wasmos = || {
        let mut c = Command::new(&wasmos);
        c.env("WASMOS_CONFIG", &dev.config);
        c
    };
    run(wasmos()
        .args(["submit", "--master", url, "--wait", "--env", "GREETING=hello"])
        .arg(guests_dir(root).join("hello.wasm"))
        .args(["--", "cluster"]))?;
    run(wasmos()
        .args(["submit", "--master", url, "--wait", "--count", "100"])
        .arg(guests_dir(root).join("hello-component.wasm"))
        .args(["--", "1", "2"])
        .stdout(std::process::Stdio::null()))?;
    run(wasmos().args(["agents", "--master", url]))?;
    run(wasmos().args(["frameworks", "--master", url]))?;
    run(wasmos().args(["dashboard", "--master", url]))?;
    println!("(this demo's cluster stops now: `target/debug/wasmos dev` keeps one running, and then");
    println!(" `wasmos dashboard` prints its URL and the token to log in with)");
    Ok(())
}
