//! `cargo xtask setup`: the toolchains guests need — Rust's wasm targets
//! (rustup, else Debian's rustc-web with build-std), clang-16 + wasi-libc for
//! C, Python's grpcio for the remote framework example, matplotlib for the
//! soak's plot, and the other languages' toolchains (`languages.rs`).
//! Idempotent and quick when all is there.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::languages;
use crate::util::{guests_dir, has_command, quiet_ok, run};

const WASM_TARGETS: [&str; 2] = ["wasm32-wasip1", "wasm32-wasip2"];
/// Debian's Rust for wasm, used when rustup cannot download targets.
const DEBIAN_RUST: [&str; 5] = ["rustc-web", "cargo-web", "rust-web-src", "wasi-libc", "lld-22"];
/// clang + wasi-libc for C guests.
const DEBIAN_C: [&str; 4] = ["clang-16", "lld-16", "libclang-rt-16-dev-wasm32", "wasi-libc"];
pub const WASI_SYSROOT: &str = "/usr/lib/wasm32-wasi";
const CLANG_RT_WASM: &str = "/usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a";

/// How Rust guests get built on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RustRoute {
    /// rustup's wasm32-wasip1/wasip2 targets.
    Rustup,
    /// Debian's rustc-web with -Z build-std (wasip1 only; components are made
    /// with wit-component and the preview1 adapter).
    Debian,
}

fn installed_rust_targets() -> Vec<String> {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Headless Chromium and its WebDriver (the dashboard test), Prometheus
/// for `promtool check metrics`, Binaryen's `wasm-opt` (asyncify, for
/// `wasmos submit --migratable`), and etcd (the several-masters tests
/// start their own 3-member cluster on loopback).
pub const DEBIAN_TEST_TOOLS: [&str; 5] = ["chromium", "chromium-driver", "prometheus", "binaryen", "etcd-server"];

/// What building wasmos itself needs beyond Rust: `protoc`, which the
/// `etcd-client` crate's build script runs (wasmos's own protos are
/// compiled by protox, in Rust). Installed before the first build by
/// `cargo xtask setup`, `test` and `demo`.
pub const DEBIAN_BUILD: [&str; 1] = ["protobuf-compiler"];

/// [`DEBIAN_BUILD`], unless `protoc` is already there (or `PROTOC` names one).
pub fn setup_build() -> Result<()> {
    if std::env::var_os("PROTOC").is_some() || has_command("protoc") {
        return Ok(());
    }
    apt_install(&DEBIAN_BUILD)
}

/// `apt-get install` of the `packages` not installed yet (as root, else with
/// `sudo -n`); nothing at all when every one is there.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> =
        packages.iter().copied().filter(|p| !quiet_ok(Command::new("dpkg").args(["-s", p]))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let sudo = |args: &[&str]| {
        let mut c = if root { Command::new(args[0]) } else { Command::new("sudo") };
        if root {
            c.args(&args[1..]);
        } else {
            c.arg("-n").args(args);
        }
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut sudo(&["apt-get", "update", "-qq"]))?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    run(&mut sudo(&install)).with_context(|| format!("installing {missing:?}; run as root or with sudo"))
}

/// Rust's wasm targets only (what `cargo xtask demo` needs): rustup's,
/// else Debian's rustc-web.
pub fn setup_rust() -> Result<RustRoute> {
    Ok(
        if installed_rust_targets().iter().filter(|t| WASM_TARGETS.contains(&t.as_str())).count() == WASM_TARGETS.len()
        {
            RustRoute::Rustup
        } else if has_command("rustup") && quiet_ok(Command::new("rustup").args(["target", "add"]).args(WASM_TARGETS)) {
            eprintln!("xtask: added rustup targets {WASM_TARGETS:?}");
            RustRoute::Rustup
        } else {
            eprintln!("xtask: rustup cannot provide wasm targets; using Debian's rustc-web with build-std");
            apt_install(&DEBIAN_RUST)?;
            RustRoute::Debian
        },
    )
}

/// Installs guest toolchains; idempotent and quick when all is there.
pub fn setup(root: &Path) -> Result<RustRoute> {
    setup_build()?;
    let route = setup_rust()?;
    if !(has_command("clang-16")
        && Path::new(WASI_SYSROOT).join("libc.a").exists()
        && Path::new(CLANG_RT_WASM).exists())
    {
        apt_install(&DEBIAN_C)?;
    }
    setup_python(root)?;
    setup_plot(root);
    // The dashboard's browser test and the metrics check.
    apt_install(&DEBIAN_TEST_TOOLS)?;
    languages::setup(root)?;
    std::fs::create_dir_all(guests_dir(root))?;
    std::fs::write(guests_dir(root).join(".rust-route"), format!("{route:?}\n"))?;
    Ok(route)
}

/// grpcio + grpcio-tools for the Python remote framework example (and its
/// test); installed from its requirements.txt only when the import fails.
pub fn setup_python(root: &Path) -> Result<()> {
    let importable = || quiet_ok(Command::new("python3").args(["-c", "import grpc, grpc_tools"]));
    if importable() {
        return Ok(());
    }
    if !has_command("python3") {
        bail!("python3 is not installed; the python-remote example and its test need Python 3.9+ with pip");
    }
    let req = root.join("examples/frameworks/python-remote/requirements.txt");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"]).arg(&req);
    let hint = format!("installing grpcio failed; try `python3 -m pip install -r {}`", req.display());
    run(&mut pip).context(hint)?;
    if !importable() {
        bail!("pip installed {} but `python3 -c \"import grpc, grpc_tools\"` still fails", req.display());
    }
    Ok(())
}

/// matplotlib for `cargo xtask soak`'s plot, from xtask/plot-requirements.txt,
/// installed only when the import fails. Optional: the soak writes its CSV
/// and gives its verdict without it, so a failed install only warns.
pub fn setup_plot(root: &Path) {
    let importable = || quiet_ok(Command::new("python3").args(["-c", "import matplotlib"]));
    if importable() || !has_command("python3") {
        return;
    }
    let req = root.join("xtask/plot-requirements.txt");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"]).arg(&req);
    if run(&mut pip).is_err() || !importable() {
        eprintln!(
            "xtask: warning: could not install matplotlib (`python3 -m pip install -r {}`); `cargo xtask soak` will write its CSV without a plot",
            req.display()
        );
    }
}

/// The route `setup` recorded in target/guests/.rust-route, when it still
/// holds; else `setup` runs again.
pub fn current_route(root: &Path) -> Result<RustRoute> {
    match std::fs::read_to_string(guests_dir(root).join(".rust-route")).ok().as_deref().map(str::trim) {
        Some("Rustup") if installed_rust_targets().iter().any(|t| t == "wasm32-wasip2") => Ok(RustRoute::Rustup),
        Some("Debian") if Path::new("/usr/bin/rustc").exists() => Ok(RustRoute::Debian),
        _ => setup(root),
    }
}
