//! `cargo xtask bench memory` and `cargo xtask bench restart`: what a long
//! run costs the master (memory and registry per task) and how fast a master
//! with a long history serves again after `kill -9`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::dev::{Dev, free_port};
use crate::flags::{MemoryArgs, RestartArgs};
use crate::util::run;

/// Builds the release `wasmos` and `e2e_bench` this repo has.
fn build(root: &Path) -> Result<PathBuf> {
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
    Ok(root.join("target/release"))
}

/// A build: its `wasmos` and its `e2e_bench`.
struct Build {
    name: &'static str,
    wasmos: PathBuf,
    client: PathBuf,
}

fn builds(root: &Path, against: Option<&PathBuf>) -> Result<Vec<Build>> {
    let this = build(root)?;
    let mut out = vec![Build { name: "this", wasmos: this.join("wasmos"), client: this.join("examples/e2e_bench") }];
    if let Some(dir) = against {
        if !dir.join("wasmos").is_file() || !dir.join("e2e_bench").is_file() {
            bail!("--against {}: put that build's wasmos and e2e_bench in it", dir.display());
        }
        out.push(Build { name: "against", wasmos: dir.join("wasmos"), client: dir.join("e2e_bench") });
    }
    Ok(out)
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The registry's files in a state dir (`history.redb` beside it since the
/// history moved out; older builds have only `registry.redb`).
fn registry_size(state: &Path) -> u64 {
    size(&state.join("registry.redb")) + size(&state.join("history.redb"))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Runs `rounds` submissions of `tasks` no-op tasks each through the e2e
/// client, sampling the master's RSS and registry file after each.
fn e2e_rounds(
    b: &Build,
    url: &str,
    config: &Path,
    tasks: u32,
    rounds: u32,
    sample: impl Fn() -> Result<(u64, u64)>,
) -> Result<()> {
    let (rss0, reg0) = sample()?;
    println!("{:>8} {:>12} {:>10} {:>12}", b.name, "tasks", "rss MiB", "registry MiB");
    println!("{:>8} {:>12} {:>10.1} {:>12.1}", "", 0, mib(rss0), mib(reg0));
    let mut done = 0u64;
    let (mut rss_n, mut reg_n) = (rss0, reg0);
    for _ in 0..rounds {
        let out = Command::new(&b.client)
            .env("WASMOS_CONFIG", config)
            .args(["--master", url, "--tasks", &tasks.to_string(), "--latency-samples", "1"])
            .output()
            .context("running e2e_bench")?;
        if !out.status.success() {
            bail!("e2e_bench failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        done += tasks as u64 + 11;
        // A tick for ended tasks to leave memory.
        std::thread::sleep(Duration::from_secs(3));
        (rss_n, reg_n) = sample()?;
        println!("{:>8} {:>12} {:>10.1} {:>12.1}", "", done, mib(rss_n), mib(reg_n));
    }
    let per = |a: u64, b: u64| (b as f64 - a as f64) / done as f64;
    println!(
        "{}: per task over {done} tasks: memory {:.0} bytes, registry {:.0} bytes",
        b.name,
        per(rss0, rss_n),
        per(reg0, reg_n)
    );
    Ok(())
}

/// `cargo xtask bench memory`: `--rounds` submissions of `--tasks` no-op
/// tasks into one release `wasmos dev`, its RSS and registry size after each.
pub fn memory(root: &Path, args: &MemoryArgs) -> Result<()> {
    for b in builds(root, args.against.as_ref())? {
        let dev = Dev::start(&b.wasmos, "memory", &[])?;
        let state = dev.state().to_path_buf();
        let pid = dev.pid();
        e2e_rounds(&b, &dev.url, &dev.config, args.tasks, args.rounds, || Ok((rss(pid)?, registry_size(&state))))?;
    }
    Ok(())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `show`: its messages go to our stderr. `config`: its client config.
fn spawn(bin: &Path, config: &Path, args: &[&str], show: bool) -> Result<Proc> {
    Ok(Proc(
        Command::new(bin)
            .env("WASMOS_CONFIG", config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if show { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    ))
}

/// Until `wasmos tasks --limit 1` answers; how long that took.
fn until_serving(wasmos: &Path, config: &Path, url: &str, since: Instant) -> Result<Duration> {
    loop {
        let ok = Command::new(wasmos)
            .env("WASMOS_CONFIG", config)
            .args(["tasks", "--master", url, "--limit", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(300) {
            bail!("the master did not serve within 300 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `cargo xtask bench restart`: a master with `--history` ended tasks in its
/// registry and `--queued` waiting, killed with SIGKILL and started again,
/// `--restarts` times: how long until it serves.
pub fn restart(root: &Path, args: &RestartArgs) -> Result<()> {
    let b = builds(root, None)?.remove(0);
    let state = std::env::temp_dir().join(format!("wasmos-restart-{}", std::process::id()));
    let _cleanup = Cleanup(state.clone());
    let addr = free_port()?;
    let url = format!("https://{addr}");
    // The master writes it on its first start (URL, CA); every client reads it.
    let config = state.join("client.json");
    let master_args = |dir: &Path| -> Vec<String> {
        vec!["master".into(), "--listen".into(), addr.clone(), "--state-dir".into(), dir.display().to_string()]
    };
    let margs = master_args(&state.join("master"));
    let margv: Vec<&str> = margs.iter().map(String::as_str).collect();
    let mut master = spawn(&b.wasmos, &config, &margv, false)?;
    until_serving(&b.wasmos, &config, &url, Instant::now())?;
    let agent_dir = state.join("agent").display().to_string();
    let join = Command::new(&b.wasmos)
        .env("WASMOS_CONFIG", &config)
        .args(["token", "create", "bench-agents", "--agent", "--master", &url])
        .output()?;
    if !join.status.success() {
        bail!("join token: {}", String::from_utf8_lossy(&join.stderr));
    }
    let join = String::from_utf8_lossy(&join.stdout).trim().to_string();
    let agent =
        spawn(&b.wasmos, &config, &["agent", "--master", &url, "--join", &join, "--work-dir", &agent_dir], false)?;
    let rounds = args.history.div_ceil(100_000);
    let per = (args.history / rounds.max(1)) as u32;
    let reg = state.join("master");
    eprintln!("xtask: {rounds} rounds of {per} tasks for the history");
    let pid = master.0.id();
    e2e_rounds(&b, &url, &config, per, rounds as u32, || Ok((rss(pid)?, registry_size(&reg))))?;
    // Nothing runs them: the agent goes, then the queued submission comes.
    drop(agent);
    let hello = root.join("target/guests/hello.wasm");
    let q = args.queued.to_string();
    let out = Command::new(&b.wasmos)
        .env("WASMOS_CONFIG", &config)
        .args(["submit", "--master", &url, "--count", &q, "--cpus", "0.01", "--mem", "1MiB"])
        .arg(&hello)
        .output()?;
    if !out.status.success() {
        bail!("submit failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut took = Vec::new();
    for _ in 0..args.restarts {
        drop(master); // SIGKILL
        let t0 = Instant::now();
        master = spawn(&b.wasmos, &config, &margv, true)?;
        let d = until_serving(&b.wasmos, &config, &url, t0)?;
        println!(
            "restart with {} ended tasks in history and {} queued (registry.redb {:.0} MiB, history.redb {:.0} MiB): serving after {} ms",
            args.history,
            args.queued,
            mib(size(&reg.join("registry.redb"))),
            mib(size(&reg.join("history.redb"))),
            d.as_millis()
        );
        took.push(d);
    }
    took.sort();
    if let Some(m) = took.get(took.len() / 2) {
        println!("median of {}: {} ms", took.len(), m.as_millis());
    }
    Ok(())
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
