//! Small helpers every job uses: where things are, and running commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repo root").to_path_buf()
}

/// Where built guests go: target/guests/<name>.wasm.
pub fn guests_dir(root: &Path) -> PathBuf {
    root.join("target").join("guests")
}

/// Runs `cmd` (showing it first) and fails unless it exits with success.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// True when `cmd` runs and succeeds; its output is discarded.
pub fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

/// True when `name --version` runs and succeeds.
pub fn has_command(name: &str) -> bool {
    quiet_ok(Command::new(name).arg("--version"))
}

/// True when `out` exists and is at least as new as every one of `inputs`.
pub fn is_fresh(out: &Path, inputs: &[PathBuf]) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = mtime(out) else { return false };
    inputs.iter().all(|i| mtime(i).is_some_and(|t| t <= built))
}
