//! `cargo xtask edge`: the compiler-free edge agent, built alone (so that no
//! other workspace crate turns Cranelift back on) for this machine and,
//! with Debian's cross gcc as linker, for aarch64-unknown-linux-gnu (run
//! under Debian's qemu-user by the tests). Prints each binary's size.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::setup::apt_install;
use crate::util::run;

pub const AARCH64: &str = "aarch64-unknown-linux-gnu";
/// Debian packages the aarch64 build and its run need.
const CROSS_TOOLS: [&str; 3] = ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user"];

/// The two edge binaries: (this machine's, aarch64's). The second is None,
/// said loudly, only when rustup cannot add the aarch64 target (no network
/// to static.rust-lang.org): the tests then take the pulley64 route alone.
pub fn build(root: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    apt_install(&CROSS_TOOLS)?;
    let x86 = build_native(root)?;
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if !installed.map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == AARCH64)).unwrap_or(false)
        && let Err(e) = run(Command::new("rustup").args(["target", "add", AARCH64]))
    {
        eprintln!(
            "xtask: WARNING: cannot add the {AARCH64} target ({e:#}); the aarch64 edge agent is not built and its test part is skipped"
        );
        return Ok((x86, None));
    }
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "-p", "wasmos-edge", "--profile", "edge", "--target", AARCH64])
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar"))?;
    let arm = root.join(format!("target/{AARCH64}/edge/wasmos-edge"));
    report(&arm)?;
    Ok((x86, Some(arm)))
}

fn report(b: &Path) -> Result<()> {
    let size = std::fs::metadata(b).with_context(|| format!("{} was not built", b.display()))?.len();
    eprintln!("xtask: {} is {:.2} MiB (stripped)", b.display(), size as f64 / (1 << 20) as f64);
    Ok(())
}

/// The edge agent for this machine only: target/edge/wasmos-edge.
pub fn build_native(root: &Path) -> Result<PathBuf> {
    run(Command::new("cargo").current_dir(root).args(["build", "-p", "wasmos-edge", "--profile", "edge"]))?;
    let x86 = root.join("target/edge/wasmos-edge");
    report(&x86)?;
    Ok(x86)
}
