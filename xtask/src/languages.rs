//! Task and scheduler examples in other languages: Zig, Go, AssemblyScript
//! (wasip1 commands), Python and JavaScript (components of the `wasmos:task`
//! and `wasmos:scheduler` worlds, through componentize-py and
//! componentize-js): their toolchains and their builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::apt_install;
use crate::util::{has_command, is_fresh, quiet_ok, run};

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
pub fn setup(root: &Path) -> Result<()> {
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

/// Builds the Zig, Go, AssemblyScript, Python and JavaScript examples into
/// `out` (each skipped when its .wasm is newer than its sources).
pub fn build(root: &Path, out: &Path) -> Result<()> {
    setup(root)?;
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
