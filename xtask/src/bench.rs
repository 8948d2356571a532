//! `cargo xtask bench`: the criterion benchmarks of the sandbox and the
//! allocator, and the end-to-end benchmark against a release `wasmos dev`.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::dev::start_dev;
use crate::util::run;

/// `cargo xtask bench [sandbox|allocator|all]`: the criterion benchmarks;
/// `bench e2e`: the whole cluster over loopback gRPC.
pub fn bench(root: &Path, which: &[String]) -> Result<()> {
    let pkgs: Vec<&str> = match which.first().map(String::as_str) {
        None | Some("all") => vec!["wasmos-sandbox", "wasmos-allocator"],
        Some("sandbox") => vec!["wasmos-sandbox"],
        Some("allocator") => vec!["wasmos-allocator"],
        Some("e2e") => return bench_e2e(root, &which[1..]),
        Some(other) => bail!("unknown benchmark {other:?}; use sandbox, allocator, e2e or all"),
    };
    for p in pkgs {
        run(Command::new("cargo").current_dir(root).args(["bench", "-p", p]))?;
    }
    Ok(())
}

/// `cargo xtask bench e2e [--registry in-memory] [--agent-checkpoint off] [--tasks N] [--latency-samples N]`:
/// starts a release `wasmos dev` (one agent with the whole machine; durable
/// registry unless `--registry in-memory`) and runs the e2e client against it
/// over loopback gRPC.
fn bench_e2e(root: &Path, extra: &[String]) -> Result<()> {
    let (registry, extra): (String, Vec<String>) = match extra.iter().position(|a| a == "--registry") {
        Some(i) if i + 1 < extra.len() => {
            let mut rest = extra.to_vec();
            let v = rest.remove(i + 1);
            rest.remove(i);
            (v, rest)
        }
        _ => ("file".into(), extra.to_vec()),
    };
    // `--agent-checkpoint off`: the agent keeps no checkpoint (for an A/B of its cost).
    let (dev_extra, extra): (Vec<&str>, Vec<String>) = match extra.iter().position(|a| a == "--agent-checkpoint") {
        Some(i) if i + 1 < extra.len() => {
            let mut rest = extra.clone();
            let v = rest.remove(i + 1);
            rest.remove(i);
            match v.as_str() {
                "off" => (vec!["--no-checkpoint"], rest),
                "on" => (vec![], rest),
                _ => bail!("--agent-checkpoint takes on or off, not {v:?}"),
            }
        }
        _ => (vec![], extra),
    };
    let extra = &extra[..];
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "wasmos",
        "--bin",
        "wasmos",
        "--example",
        "e2e_bench",
    ]))?;
    let state = std::env::temp_dir().join(format!("wasmos-bench-{}", std::process::id()));
    let (mut dev, url) = start_dev(
        &root.join("target/release/wasmos"),
        &state,
        &[&["--registry", registry.as_str()][..], &dev_extra].concat(),
    )?;
    let result = run(Command::new(root.join("target/release/examples/e2e_bench")).args(["--master", &url]).args(extra));
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&state);
    result
}
