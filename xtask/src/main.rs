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
        Some("chaos") => chaos(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  setup   install guest toolchains (rustup wasm targets, or Debian's \
                 rustc-web; clang-16 + wasi-libc; Zig, Go, Node packages, componentize-py, grpcio)\n  guests  build example guests into target/guests/\n  test    setup, \
                 guests, then cargo test --workspace\n  demo    run the hello guest under `wasmos run`\n  bench   run \
                 criterion benchmarks: bench [sandbox|allocator|all], or bench e2e [--registry in-memory] [--agent-checkpoint off]\n  chaos   fault injection with real processes: chaos [--tasks N] [--framework-tasks N]"
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
    setup_languages(root)?;
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

fn guests(root: &Path) -> Result<()> {
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
    language_guests(root, &out)?;
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
    run(Command::new("cargo").current_dir(root).args(["test", "--workspace"]).args(extra))?;
    // The fault-injection suite, at a size that keeps CI short.
    chaos(root, &["--tasks".into(), "600".into(), "--framework-tasks".into(), "40".into()])
}

/// `cargo xtask chaos [--tasks N] [--framework-tasks N]`: the fault-injection
/// suite with real `wasmos master`/`wasmos agent` processes (see
/// cli/examples/chaos.rs). Debug build, so it reuses the test build.
fn chaos(root: &Path, extra: &[String]) -> Result<()> {
    guests(root)?;
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
        .args(extra))
}

/// Starts `wasmos dev` on a free loopback port with a fresh state dir and
/// returns it with the URL it printed (its stderr keeps being drained).
fn start_dev(wasmos: &Path, state: &Path, extra: &[&str]) -> Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut dev = Command::new(wasmos)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--state-dir")
        .arg(state)
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
    Ok((dev, url))
}

/// The README's first command: a `wasmos dev` cluster (master + one agent in
/// one process), one task submitted and waited for, the task list, then stop.
fn demo(root: &Path) -> Result<()> {
    guests(root)?;
    run(Command::new("cargo").current_dir(root).args(["build", "--quiet", "-p", "wasmos"]))?;
    let wasmos = root.join("target/debug/wasmos");
    run(Command::new(&wasmos)
        .args(["run", "--env", "GREETING=hello"])
        .arg(guests_dir(root).join("hello.wasm"))
        .args(["--", "wasmos run"]))?;
    let state = std::env::temp_dir().join(format!("wasmos-demo-{}", std::process::id()));
    let (mut dev, url) = start_dev(&wasmos, &state, &[])?;
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

// ---------------------------------------------------------------------------
// Task examples in other languages: Zig, Go, AssemblyScript (wasip1 commands),
// Python and JavaScript (components of the `wasmos:task` world).
// ---------------------------------------------------------------------------

/// Debian bookworm ships Go 1.19; `GOOS=wasip1` needs 1.21+, so Go comes from
/// bookworm-backports.
const GO_PACKAGE: &str = "golang-1.23-go";
const GO_BIN: &str = "/usr/lib/go-1.23/bin/go";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
/// Example folders with a package.json and package-lock.json (examples/js:
/// componentize-js and jco, shared by the JavaScript components).
const NPM_EXAMPLES: [&str; 2] = ["examples/tasks/hello-as", "examples/js"];

/// Every toolchain of the non-Rust, non-C examples; quick (a few process
/// spawns, no network) when all are installed.
fn setup_languages(root: &Path) -> Result<()> {
    setup_zig(root)?;
    setup_go()?;
    setup_node(root)?;
    setup_componentize_py(root)
}

/// Zig, from PyPI's `ziglang` (pinned in examples/tasks/hello-zig/requirements.txt).
fn setup_zig(root: &Path) -> Result<()> {
    pip_pinned(&root.join("examples/tasks/hello-zig/requirements.txt"))
}

/// componentize-py, from PyPI (pinned in examples/tasks/wordcount-py/requirements.txt).
fn setup_componentize_py(root: &Path) -> Result<()> {
    pip_pinned(&root.join("examples/tasks/wordcount-py/requirements.txt"))
}

/// Installs `name==version` lines of a requirements file with pip unless
/// exactly those versions are already installed.
fn pip_pinned(req: &Path) -> Result<()> {
    let text = std::fs::read_to_string(req).with_context(|| format!("reading {}", req.display()))?;
    let pins: Vec<(&str, &str)> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter_map(|l| l.split_once("=="))
        .collect();
    let check = pins
        .iter()
        .map(|(name, version)| format!("m.version({name:?}) == {version:?}"))
        .collect::<Vec<_>>()
        .join(" and ");
    let installed = || {
        quiet_ok(Command::new("python3").args([
            "-c",
            &format!("import sys, importlib.metadata as m\ntry: sys.exit(0 if {check} else 1)\nexcept m.PackageNotFoundError: sys.exit(1)"),
        ]))
    };
    if installed() {
        return Ok(());
    }
    if !has_command("python3") {
        bail!("python3 (with pip) is needed to install {}", req.display());
    }
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"]).arg(req);
    run(&mut pip).with_context(|| format!("try `python3 -m pip install -r {}`", req.display()))?;
    if !installed() {
        bail!("pip installed {} but the pinned versions are still not importable", req.display());
    }
    Ok(())
}

/// A Go of at least 1.21 (the first with `GOOS=wasip1`): Debian's golang-1.23-go
/// from bookworm-backports, unless a recent enough `go` is on PATH.
fn setup_go() -> Result<()> {
    if go_command().is_some() {
        return Ok(());
    }
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !os_release.lines().any(|l| l == "VERSION_CODENAME=bookworm") {
        bail!("no Go 1.21+ found: install Go 1.21 or newer (for GOOS=wasip1) and put `go` on PATH");
    }
    let has_backports = |dir: &str| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("bookworm-backports")))
    };
    if !has_backports("/etc/apt/sources.list.d")
        && !std::fs::read_to_string("/etc/apt/sources.list").is_ok_and(|t| t.contains("bookworm-backports"))
    {
        eprintln!("xtask: adding Debian bookworm-backports to apt's sources (for {GO_PACKAGE})");
        std::fs::write(
            BACKPORTS_SOURCES,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .with_context(|| format!("writing {BACKPORTS_SOURCES} (run as root)"))?;
        // apt_install skips `apt-get update` only when nothing is missing, and
        // golang-1.23-go is missing here, so the new source is read.
    }
    apt_install(&[GO_PACKAGE])?;
    go_command().map(|_| ()).context("golang-1.23-go is installed but its go does not run")
}

/// The `go` to use: Debian's golang-1.23-go, else a `go` on PATH of 1.21 or newer.
fn go_command() -> Option<PathBuf> {
    if quiet_ok(Command::new(GO_BIN).arg("version")) {
        return Some(PathBuf::from(GO_BIN));
    }
    let out = Command::new("go").arg("env").arg("GOVERSION").output().ok().filter(|o| o.status.success())?;
    // go1.22.3, go1.24rc1
    let v = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("go").to_string();
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next()?, parts.next()?);
    ((major, minor) >= (1, 21)).then(|| PathBuf::from("go"))
}

/// Node.js and npm (Debian's when missing), then `npm install` in each npm example
/// whose node_modules is missing or older than its package-lock.json.
fn setup_node(root: &Path) -> Result<()> {
    if !(has_command("node") && has_command("npm")) {
        apt_install(&["nodejs", "npm"])?;
    }
    // componentize-js's parser (oxc-parser) needs Node.js 20+; Debian 12's own is 18.
    let node = Command::new("node").arg("--version").output().context("running node --version")?;
    let major: u32 = String::from_utf8_lossy(&node.stdout)
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    if major < 20 {
        bail!(
            "Node.js 20 or newer is needed for componentize-js (found {}); install it and re-run",
            String::from_utf8_lossy(&node.stdout).trim()
        );
    }
    for dir in NPM_EXAMPLES {
        let dir = root.join(dir);
        let lock = dir.join("package-lock.json");
        let installed = dir.join("node_modules/.package-lock.json");
        if is_fresh(&installed, &[lock]) {
            continue;
        }
        // `npm install` (not `npm ci`) from the lock: npm 11's `ci` rejects
        // these lock files for missing optional platform packages (npm/cli#9846).
        // --no-save keeps package.json and package-lock.json untouched.
        run(Command::new("npm").current_dir(&dir).args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))
        .with_context(|| format!("installing the npm packages of {}", dir.display()))?;
    }
    Ok(())
}

/// True when `out` exists and is at least as new as every one of `inputs`.
fn is_fresh(out: &Path, inputs: &[PathBuf]) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = mtime(out) else { return false };
    inputs.iter().all(|i| mtime(i).is_some_and(|t| t <= built))
}

/// Builds the Zig, Go, AssemblyScript, Python and JavaScript examples into
/// `out` (each skipped when its .wasm is newer than its sources).
fn language_guests(root: &Path, out: &Path) -> Result<()> {
    setup_languages(root)?;
    let ex = root.join("examples/tasks");

    // Zig: a wasip1 command.
    let dir = ex.join("hello-zig");
    let wasm = out.join("hello-zig.wasm");
    if !is_fresh(&wasm, &[dir.join("hello.zig"), dir.join("requirements.txt")]) {
        run(Command::new("python3")
            .current_dir(&dir)
            .args(["-m", "ziglang", "build-exe", "-target", "wasm32-wasi", "-O", "ReleaseSmall", "-fstrip"])
            .arg("hello.zig")
            .arg(format!("-femit-bin={}", wasm.display())))?;
    }

    // Go: a wasip1 command.
    let dir = ex.join("hello-go");
    let wasm = out.join("hello-go.wasm");
    if !is_fresh(&wasm, &[dir.join("main.go"), dir.join("go.mod")]) {
        let go = go_command().context("no Go 1.21+ (run `cargo xtask setup`)")?;
        run(Command::new(go)
            .current_dir(&dir)
            .env("GOOS", "wasip1")
            .env("GOARCH", "wasm")
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .args(["build", "-trimpath", "-ldflags=-s", "-o"])
            .arg(&wasm)
            .arg("."))?;
    }

    // AssemblyScript: a wasip1 command through @assemblyscript/wasi-shim.
    let dir = ex.join("hello-as");
    let wasm = out.join("hello-as.wasm");
    if !is_fresh(&wasm, &[dir.join("assembly/index.ts"), dir.join("package-lock.json")]) {
        run(Command::new("node")
            .current_dir(&dir)
            .args([
                "node_modules/assemblyscript/bin/asc.js",
                "assembly/index.ts",
                "--config",
                "node_modules/@assemblyscript/wasi-shim/asconfig.json",
                "-O3",
                "--noAssert",
                "-o",
            ])
            .arg(&wasm))?;
    }

    // Python and JavaScript: components of the wasmos:task world, and hosted
    // schedulers of the wasmos:scheduler world, built the same way.
    let frameworks = root.join("examples/frameworks");
    py_component(root, &ex.join("wordcount-py"), "app", "task", &out.join("wordcount-py.wasm"))?;
    py_component(root, &frameworks.join("fifo-py"), "fifo", "scheduler", &out.join("fifo-py.wasm"))?;
    js_component(root, &ex.join("upper-js/upper.js"), "task", &out.join("upper-js.wasm"))?;
    js_component(root, &frameworks.join("fifo-js/fifo.js"), "scheduler", &out.join("fifo-js.wasm"))?;
    Ok(())
}

/// componentize-py: the Python module `module` of `dir` as a component of
/// `world` (wit/<world>/), unless `out` is newer than its sources.
fn py_component(root: &Path, dir: &Path, module: &str, world: &str, out: &Path) -> Result<()> {
    let wit = root.join("wit").join(world);
    let inputs = [
        dir.join(format!("{module}.py")),
        wit.join(format!("{world}.wit")),
        root.join("examples/tasks/wordcount-py/requirements.txt"),
    ];
    if is_fresh(out, &inputs) {
        return Ok(());
    }
    run(Command::new("python3")
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args([
            "-c",
            "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
            "--quiet",
            "-d",
        ])
        .arg(&wit)
        .args(["-w", world, "componentize", module, "-o"])
        .arg(out))
}

/// componentize-js (from examples/js/node_modules): the JavaScript module
/// `source` as a component of `world` (wit/<world>/), without wasi:http (which
/// wasmos does not provide), unless `out` is newer than its sources.
fn js_component(root: &Path, source: &Path, world: &str, out: &Path) -> Result<()> {
    let wit = root.join("wit").join(world);
    let js = root.join("examples/js");
    let inputs = [source.to_path_buf(), wit.join(format!("{world}.wit")), js.join("package-lock.json")];
    if is_fresh(out, &inputs) {
        return Ok(());
    }
    run(Command::new("node")
        .arg(js.join("node_modules/@bytecodealliance/componentize-js/src/cli.js"))
        .arg(source)
        .arg("--wit")
        .arg(&wit)
        .args(["-n", world, "-d", "http", "fetch-event", "-o"])
        .arg(out))
}
