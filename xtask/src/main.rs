//! `cargo xtask <command>`: project automation, in Rust so it runs wherever cargo does.
//!
//! - `setup`   install what building guests needs (idempotent)
//! - `guests`  build every example guest into target/guests/<name>.wasm
//! - `test`    setup if needed, build guests, run every test of the workspace
//! - `demo`    build the hello guest and run it under `wasmos run`
//! - `bench`   run the criterion benchmarks (`cargo xtask bench [sandbox|...]`)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const WASM_TARGETS: [&str; 2] = ["wasm32-wasip1", "wasm32-wasip2"];
/// Debian's Rust for wasm, used when rustup cannot download targets.
const DEBIAN_RUST: [&str; 5] = ["rustc-web", "cargo-web", "rust-web-src", "wasi-libc", "lld-22"];
/// clang + wasi-libc for C guests.
const DEBIAN_C: [&str; 4] = ["clang-16", "lld-16", "libclang-rt-16-dev-wasm32", "wasi-libc"];
const WASI_SYSROOT: &str = "/usr/lib/wasm32-wasi";
const CLANG_RT_WASM: &str = "/usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    match args.first().map(String::as_str) {
        Some("setup") => setup(&root).map(|_| ()),
        Some("guests") => guests(&root),
        Some("test") => test(&root, &args[1..]),
        Some("demo") => demo(&root),
        Some("bench") => bench(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  setup   install guest toolchains (rustup wasm targets, or Debian's \
                 rustc-web; clang-16 + wasi-libc)\n  guests  build example guests into target/guests/\n  test    setup, \
                 guests, then cargo test --workspace\n  demo    run the hello guest under `wasmos run`\n  bench   run \
                 criterion benchmarks: bench [sandbox|allocator|all]"
            );
            std::process::exit(2);
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repo root").to_path_buf()
}

fn guests_dir(root: &Path) -> PathBuf {
    root.join("target").join("guests")
}

/// How Rust guests get built on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RustRoute {
    /// rustup's wasm32-wasip1/wasip2 targets.
    Rustup,
    /// Debian's rustc-web with -Z build-std (wasip1 only; components are made
    /// with wit-component and the preview1 adapter).
    Debian,
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn has_command(name: &str) -> bool {
    quiet_ok(Command::new(name).arg("--version"))
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

fn apt_install(packages: &[&str]) -> Result<()> {
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

/// Installs guest toolchains; idempotent and quick when all is there.
fn setup(root: &Path) -> Result<RustRoute> {
    let route = if installed_rust_targets().iter().filter(|t| WASM_TARGETS.contains(&t.as_str())).count()
        == WASM_TARGETS.len()
    {
        RustRoute::Rustup
    } else if has_command("rustup") && quiet_ok(Command::new("rustup").args(["target", "add"]).args(WASM_TARGETS)) {
        eprintln!("xtask: added rustup targets {WASM_TARGETS:?}");
        RustRoute::Rustup
    } else {
        eprintln!("xtask: rustup cannot provide wasm targets; using Debian's rustc-web with build-std");
        apt_install(&DEBIAN_RUST)?;
        RustRoute::Debian
    };
    if !(has_command("clang-16")
        && Path::new(WASI_SYSROOT).join("libc.a").exists()
        && Path::new(CLANG_RT_WASM).exists())
    {
        apt_install(&DEBIAN_C)?;
    }
    setup_python(root)?;
    std::fs::create_dir_all(guests_dir(root))?;
    std::fs::write(guests_dir(root).join(".rust-route"), format!("{route:?}\n"))?;
    Ok(route)
}

/// grpcio + grpcio-tools for the Python remote framework example (and its
/// test); installed from its requirements.txt only when the import fails.
fn setup_python(root: &Path) -> Result<()> {
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

fn current_route(root: &Path) -> Result<RustRoute> {
    match std::fs::read_to_string(guests_dir(root).join(".rust-route")).ok().as_deref().map(str::trim) {
        Some("Rustup") if installed_rust_targets().iter().any(|t| t == "wasm32-wasip2") => Ok(RustRoute::Rustup),
        Some("Debian") if Path::new("/usr/bin/rustc").exists() => Ok(RustRoute::Debian),
        _ => setup(root),
    }
}

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

/// Wraps a wasip1 command module into a `wasi:cli/run` component.
fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    let adapter = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;
    wit_component::ComponentEncoder::default()
        .module(core)
        .context("reading the core module")?
        .adapter("wasi_snapshot_preview1", adapter)
        .context("adding the preview1 adapter")?
        .validate(true)
        .encode()
        .context("encoding the component")
}

fn guests(root: &Path) -> Result<()> {
    let route = current_route(root)?;
    let out = guests_dir(root);
    std::fs::create_dir_all(&out)?;
    let hello = cargo_guest(root, route, "hello", "wasm32-wasip1")?;
    std::fs::copy(&hello, out.join("hello.wasm"))?;
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
    run(Command::new("clang-16")
        .args(["--target=wasm32-wasi", "-O2", "-Wl,--strip-debug", "-o"])
        .arg(out.join("hello-c.wasm"))
        .arg(root.join("examples/tasks/hello-c/hello.c")))?;
    let mut names: Vec<String> = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    names.sort();
    eprintln!("xtask: guests in {}: {}", out.display(), names.join(", "));
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    guests(root)?;
    // Cheap when already installed; covers machines whose guests were built
    // before the Python example existed.
    setup_python(root)?;
    run(Command::new("cargo").current_dir(root).args(["test", "--workspace"]).args(extra))
}

/// The README's first command: a `wasmos dev` cluster (master + one agent in
/// one process), one task submitted and waited for, the task list, then stop.
fn demo(root: &Path) -> Result<()> {
    use std::io::BufRead;
    guests(root)?;
    run(Command::new("cargo").current_dir(root).args(["build", "--quiet", "-p", "wasmos"]))?;
    let wasmos = root.join("target/debug/wasmos");
    run(Command::new(&wasmos)
        .args(["run", "--env", "GREETING=hello"])
        .arg(guests_dir(root).join("hello.wasm"))
        .args(["--", "wasmos run"]))?;
    let state = std::env::temp_dir().join(format!("wasmos-demo-{}", std::process::id()));
    let mut dev = Command::new(&wasmos)
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting wasmos dev")?;
    let mut lines = std::io::BufReader::new(dev.stderr.take().context("dev stderr")?).lines();
    let url = loop {
        let Some(line) = lines.next() else { bail!("wasmos dev exited before it listened") };
        let line = line?;
        eprintln!("{line}");
        if let Some(rest) = line.split("master on ").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let result = (|| {
        run(Command::new(&wasmos)
            .args(["submit", "--master", &url, "--wait", "--env", "GREETING=hello"])
            .arg(guests_dir(root).join("hello.wasm"))
            .args(["--", "cluster"]))?;
        run(Command::new(&wasmos)
            .args(["submit", "--master", &url, "--wait", "--count", "100"])
            .arg(guests_dir(root).join("hello-component.wasm"))
            .args(["--", "1", "2"])
            .stdout(std::process::Stdio::null()))?;
        run(Command::new(&wasmos).args(["agents", "--master", &url]))?;
        run(Command::new(&wasmos).args(["frameworks", "--master", &url]))
    })();
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&state);
    result
}

fn bench(root: &Path, which: &[String]) -> Result<()> {
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

/// `cargo xtask bench e2e [--tasks N] [--latency-samples N]`: starts a release
/// `wasmos dev` (one agent with the whole machine) and runs the e2e client
/// against it over loopback gRPC.
fn bench_e2e(root: &Path, extra: &[String]) -> Result<()> {
    use std::io::BufRead;
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
    let mut dev = Command::new(root.join("target/release/wasmos"))
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting wasmos dev")?;
    let stderr = dev.stderr.take().context("dev stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let Some(line) = lines.next() else { bail!("wasmos dev exited before it listened") };
        let line = line?;
        eprintln!("{line}");
        if let Some(rest) = line.split("master on ").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let result = run(Command::new(root.join("target/release/examples/e2e_bench")).args(["--master", &url]).args(extra));
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&state);
    result
}
