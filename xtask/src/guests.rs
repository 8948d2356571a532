//! `cargo xtask guests`: every example guest, built into target/guests/ —
//! Rust commands and components (natively for wasip2, or wasip1 wrapped with
//! wit-component and the preview1 adapter), the C example, and the other
//! languages (`languages.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::languages;
use crate::setup::{RustRoute, WASI_SYSROOT, current_route};
use crate::util::{guests_dir, run};

/// Builds one Rust guest package for `target`; returns the .wasm path.
fn cargo_guest(root: &Path, route: RustRoute, package: &str, target: &str) -> Result<PathBuf> {
    let examples = root.join("examples");
    let target_dir = examples.join("target");
    let mut cmd = match route {
        RustRoute::Rustup => Command::new("cargo"),
        RustRoute::Debian => {
            let mut c = Command::new("/usr/bin/cargo");
            c.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_WASIP1_LINKER", "/usr/lib/llvm-22/bin/wasm-ld")
                .env(
                    "RUSTFLAGS",
                    format!(
                        "-C link-self-contained=no -C link-arg={WASI_SYSROOT}/crt1-command.o -L native={WASI_SYSROOT}"
                    ),
                );
            c
        }
    };
    // Do not let the host build's settings leak into the guest build.
    for var in ["RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
        if route == RustRoute::Rustup || var == "CARGO_TARGET_DIR" || var == "RUSTC_WRAPPER" {
            cmd.env_remove(var);
        }
    }
    cmd.current_dir(&examples).env("CARGO_TARGET_DIR", &target_dir).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        package,
        "--target",
        target,
    ]);
    if route == RustRoute::Debian {
        cmd.args(["-Z", "build-std=std,panic_abort"]);
    }
    run(&mut cmd)?;
    Ok(target_dir.join(target).join("release").join(format!("{package}.wasm")))
}

/// Rust guests that are components of the wasmos WIT worlds (`cdylib`s using
/// the guest SDK): (package, output name).
const RUST_COMPONENTS: &[(&str, &str)] =
    &[("sjf", "sjf"), ("srtf", "srtf"), ("service", "service"), ("hostile", "hostile"), ("primes", "primes")];

/// Builds the RUST_COMPONENTS: natively for wasm32-wasip2, or (fallback) for
/// wasip1 and then wrapped with wit-component and the preview1 reactor adapter.
fn rust_components(root: &Path, route: RustRoute, componentize_anyway: bool) -> Result<()> {
    let out = guests_dir(root);
    for (package, name) in RUST_COMPONENTS {
        if !root.join("examples").join("frameworks").join(package).exists()
            && !root.join("examples").join("tasks").join(package).exists()
        {
            continue;
        }
        if route == RustRoute::Rustup && !componentize_anyway {
            let c = cargo_guest(root, route, package, "wasm32-wasip2")?;
            std::fs::copy(&c, out.join(format!("{name}.wasm")))?;
        } else {
            let core = cargo_guest(root, route, package, "wasm32-wasip1")?;
            let component = componentize_with(
                &std::fs::read(&core)?,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )?;
            std::fs::write(out.join(format!("{name}.wasm")), component)?;
        }
    }
    Ok(())
}

/// Wraps a wasip1 command module into a `wasi:cli/run` component.
fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    componentize_with(core, wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
}

/// Wraps a wasip1 core module into a component with the given preview1 adapter.
fn componentize_with(core: &[u8], adapter: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .context("reading the core module")?
        .adapter("wasi_snapshot_preview1", adapter)
        .context("adding the preview1 adapter")?
        .validate(true)
        .encode()
        .context("encoding the component")
}

/// The guests `cargo xtask demo` shows, and nothing else: hello (a WASI
/// command) and hello-component, with Rust's wasm targets only.
pub fn demo_guests(root: &Path) -> Result<()> {
    let route = crate::setup::setup_rust()?;
    let out = guests_dir(root);
    std::fs::create_dir_all(&out)?;
    let wasm = cargo_guest(root, route, "hello", "wasm32-wasip1")?;
    std::fs::copy(&wasm, out.join("hello.wasm"))?;
    if route == RustRoute::Rustup {
        let c = cargo_guest(root, route, "hello-component", "wasm32-wasip2")?;
        std::fs::copy(&c, out.join("hello-component.wasm"))?;
    } else {
        let core = cargo_guest(root, route, "hello-component", "wasm32-wasip1")?;
        std::fs::write(out.join("hello-component.wasm"), componentize(&std::fs::read(&core)?)?)?;
    }
    Ok(())
}

/// `cargo xtask guests`: every example guest into target/guests/<name>.wasm.
pub fn guests(root: &Path) -> Result<()> {
    let route = current_route(root)?;
    let out = guests_dir(root);
    std::fs::create_dir_all(&out)?;
    for command in ["hello", "wordcount"] {
        let wasm = cargo_guest(root, route, command, "wasm32-wasip1")?;
        std::fs::copy(&wasm, out.join(format!("{command}.wasm")))?;
    }
    // WASMOS_COMPONENTIZE=1 takes the fallback path (wasip1 + adapter) even
    // with rustup, to exercise it.
    let componentize_anyway = std::env::var_os("WASMOS_COMPONENTIZE").is_some_and(|v| v == "1");
    match route {
        RustRoute::Rustup if !componentize_anyway => {
            let c = cargo_guest(root, route, "hello-component", "wasm32-wasip2")?;
            std::fs::copy(&c, out.join("hello-component.wasm"))?;
        }
        _ => {
            let core = cargo_guest(root, route, "hello-component", "wasm32-wasip1")?;
            let component = componentize(&std::fs::read(&core)?)?;
            std::fs::write(out.join("hello-component.wasm"), component)?;
        }
    }
    rust_components(root, route, componentize_anyway)?;
    run(Command::new("clang-16")
        .args(["--target=wasm32-wasi", "-O2", "-Wl,--strip-debug", "-o"])
        .arg(out.join("hello-c.wasm"))
        .arg(root.join("examples/tasks/hello-c/hello.c")))?;
    run(Command::new("clang-16")
        .args(["--target=wasm32-wasi", "-O2", "-Wl,--strip-debug", "-o"])
        .arg(out.join("primes-c.wasm"))
        .arg(root.join("examples/tasks/primes-c/primes.c")))?;
    languages::build(root, &out)?;
    let mut names: Vec<String> = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    names.sort();
    eprintln!("xtask: guests in {}: {}", out.display(), names.join(", "));
    Ok(())
}
