//! `wasmos-edge`, the agent without a compiler, joined to `wasmos dev`: the
//! master compiles for its engine profile, placement by `arch`/`compiler`,
//! a wrong artifact refused, a download resumed from its part, and the
//! aarch64 build under qemu-aarch64 giving the same output as x86-64.
//!
//! The binaries come from `cargo xtask test` (`cargo build -p wasmos-edge
//! --profile edge`, alone, so that no other crate turns Cranelift back on;
//! and the same for aarch64-unknown-linux-gnu): `WASMOS_EDGE_BIN` and
//! `WASMOS_EDGE_AARCH64_BIN`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::cluster::{err, guest, out, wait_for, wasmos};
use crate::dev::Cluster;

fn bin(var: &str) -> PathBuf {
    maybe_bin(var).unwrap_or_else(|| {
        panic!("{var} is not set: run `cargo xtask test`, which builds the edge agent alone and sets it")
    })
}

fn maybe_bin(var: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(var)?);
    assert!(p.exists(), "{var}={} does not exist; run `cargo xtask edge`", p.display());
    Some(p)
}

struct Edge {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Edge {
    /// Starts an edge agent (under `runner`, e.g. qemu-aarch64, if given).
    fn start(c: &Cluster, runner: Option<&[&str]>, bin: &Path, work: &Path, site: &str, extra: &[&str]) -> Edge {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let o = wasmos(c, &["token", "create", &format!("edge-{site}-{}-{n}", std::process::id()), "--agent"]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        let token = out(&o).lines().next().unwrap().trim().to_string();
        let mut cmd = match runner {
            Some([prog, args @ ..]) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bin);
                c
            }
            _ => Command::new(bin),
        };
        cmd.args(["--master", &c.url, "--join", &token, "--work-dir"])
            .arg(work)
            .args(["--resources", "cpus:1;mem:512MiB", "--attributes", &format!("site={site}")])
            .args(extra)
            .env_remove("WASMOS_MASTER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start wasmos-edge");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = kept.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let e = Edge { child, log };
        wait_for("the edge agent to register", 60, || e.log().contains("registered with the master as"));
        e
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a guest on the agents matching `constraint`; (stdout, last line).
fn run_on(c: &Cluster, constraint: &str, extra: &[&str], g: &str, args: &[&str]) -> (String, String) {
    let path = guest(g);
    let mut a = vec!["submit", "--wait", "--constraint", constraint];
    a.extend_from_slice(extra);
    a.push(path.to_str().unwrap());
    a.push("--");
    a.extend_from_slice(args);
    let o = wasmos(c, &a);
    let text = out(&o);
    let last = text.lines().last().unwrap_or_default().to_string();
    (text, last)
}

fn sha_of(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// Output lines without the summary line (task id, agent, timings).
fn body(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.pop();
    v
}

#[test]
fn an_edge_agent_runs_what_the_master_compiled_for_it_and_refuses_anything_else() {
    let c = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let edge = Edge::start(&c, None, &bin("WASMOS_EDGE_BIN"), work.path(), "x86", &[]);

    // The master adds arch and compiler=no to the agent's own attributes:
    // placement matches them like any attribute.
    let (text, last) = run_on(&c, "compiler=no", &[], "hello", &["placed"]);
    assert!(last.contains("finished exit=0") && text.starts_with("hello, placed!"), "{text}");
    let (text, last) = run_on(&c, &format!("arch={}", std::env::consts::ARCH), &["--count", "4"], "hello", &[]);
    assert!(last.contains("finished exit=0"), "{text}");

    // The same guests, same output, on the compiling agent and on the edge.
    for (g, args) in
        [("hello", vec!["edge"]), ("primes", vec![]), ("primes-c", vec!["50000"]), ("hello-component", vec!["7"])]
    {
        let (full, full_last) = run_on(&c, "compiler=yes", &[], g, &args);
        let (edge_out, edge_last) = run_on(&c, "site=x86", &[], g, &args);
        assert!(full_last.contains("finished exit=0"), "{g} on the full agent: {full}");
        assert!(edge_last.contains("finished exit=0"), "{g} on the edge agent: {edge_out}\n{}", edge.log());
        assert_eq!(body(&full), body(&edge_out), "{g}: output differs");
    }
    // Fuel is counted the same way in the metered artifact.
    let fuel = |s: &str| s.split_whitespace().find(|w| w.starts_with("fuel=")).map(str::to_string);
    let (a, _) = run_on(&c, "compiler=yes", &["--fuel", "1000000000"], "primes", &[]);
    let (b, _) = run_on(&c, "site=x86", &["--fuel", "1000000000"], "primes", &[]);
    assert!(fuel(&a).is_some() && fuel(&a) == fuel(&b), "fuel differs:\n{a}\n{b}");
    assert!(c.log().contains("compiled module"), "{}", c.log());

    // An artifact of another module under this module's name is refused, never run.
    let dir = work.path().join("artifacts/compiled");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let hello_sha = sha_of(&guest("hello"));
    let hello_art =
        names.iter().find(|n| n.starts_with(&hello_sha) && n.ends_with("-plain.cwasm")).expect("hello's artifact");
    let profile_part = hello_art.trim_start_matches(&hello_sha).to_string(); // -<profile>-plain.cwasm
    let hc_sha = sha_of(&guest("hello-c"));
    std::fs::copy(dir.join(hello_art), dir.join(format!("{hc_sha}{profile_part}"))).unwrap();
    let (text, _) = run_on(&c, "site=x86", &[], "hello-c", &[]);
    assert!(text.contains(" error exit="), "{text}");
    assert!(text.contains(&format!("the artifact is of module {hello_sha}, not {hc_sha}")), "{text}");

    // A download cut at 90% resumes there: a fresh process (nothing in
    // memory) with 90% of wordcount's artifact in its part file.
    let g = "wordcount";
    let (text, last) = run_on(&c, "compiler=yes", &[], g, &[]);
    assert!(last.contains("finished"), "{text}");
    let wc_sha = sha_of(&guest(g));
    let (_, _) = run_on(&c, "site=x86", &[], g, &[]); // compiled on the master
    drop(edge);
    let name = format!("{wc_sha}{profile_part}");
    let whole = std::fs::read(dir.join(&name)).unwrap();
    std::fs::remove_file(dir.join(&name)).unwrap();
    let cut = whole.len() * 9 / 10;
    let part = dir.join(&name).with_extension("part");
    std::fs::write(&part, &whole[..cut]).unwrap();
    std::fs::write(part.with_extension("sha"), hex::encode(Sha256::digest(&whole))).unwrap();
    let edge = Edge::start(&c, None, &bin("WASMOS_EDGE_BIN"), work.path(), "x86", &[]);
    let (text2, last2) = run_on(&c, "site=x86", &[], g, &[]);
    assert!(last2.contains("finished exit=0"), "{text2}\n{}", edge.log());
    assert!(edge.log().contains(&format!("at {cut} of {} bytes", whole.len())), "no resume at {cut}: {}", edge.log());
    assert_eq!(std::fs::read(dir.join(&name)).unwrap(), whole, "the resumed artifact differs");
    assert_eq!(body(&text), body(&text2));
    drop(edge);

    // pulley64, the portable route for a kind Cranelift does not cover: the
    // same binary told to run Wasmtime's interpreter; the master compiles
    // pulley bytecode for it.
    let p_work = tempfile::tempdir().unwrap();
    let pulley = Edge::start(&c, None, &bin("WASMOS_EDGE_BIN"), p_work.path(), "pulley", &["--target", "pulley64"]);
    assert!(pulley.log().contains("target=pulley64"), "{}", pulley.log());
    for (g, args) in [("hello", vec!["pulley"]), ("primes-c", vec!["2000"])] {
        let (x86, _) = run_on(&c, "compiler=yes", &[], g, &args);
        let (p, last) = run_on(&c, "site=pulley", &[], g, &args);
        assert!(last.contains("finished exit=0"), "{g} on pulley64: {p}\n{}", pulley.log());
        assert_eq!(body(&x86), body(&p), "{g}: pulley64 output differs");
    }
    drop(pulley);

    // aarch64: the cross-built edge agent under qemu-aarch64, joined to this
    // x86-64 master which compiles for it. `cargo xtask test` leaves the
    // variable unset (and says so) only when rustup cannot add the target.
    let Some(arm_bin) = maybe_bin("WASMOS_EDGE_AARCH64_BIN") else {
        eprintln!("WASMOS_EDGE_AARCH64_BIN is not set: the aarch64 part is skipped (pulley64 ran above)");
        return;
    };
    let arm_work = tempfile::tempdir().unwrap();
    let arm =
        Edge::start(&c, Some(&["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]), &arm_bin, arm_work.path(), "arm", &[]);
    assert!(arm.log().contains("target=aarch64-unknown-linux-gnu"), "{}", arm.log());
    for (g, args) in [("hello", vec!["arm"]), ("primes", vec![]), ("primes-c", vec!["50000"])] {
        let (x86, _) = run_on(&c, "compiler=yes", &[], g, &args);
        let (a64, last) = run_on(&c, "arch=aarch64", &[], g, &args);
        assert!(last.contains("finished exit=0"), "{g} on aarch64: {a64}\n{}", arm.log());
        assert_eq!(body(&x86), body(&a64), "{g}: aarch64 output differs");
    }
    assert!(c.log().contains("for aarch64-unknown-linux-gnu"), "{}", c.log());
}

/// The agent with `name`'s entry in `wasmos agents --json` (by its `site`).
fn agent_json(c: &Cluster, site: &str) -> Option<serde_json::Value> {
    let o = wasmos(c, &["agents", "--json"]);
    out(&o).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|a| {
        a["attributes"].as_array().is_some_and(|v| v.iter().any(|x| x.as_str() == Some(&format!("site={site}"))))
    })
}

#[test]
fn a_full_spool_drops_the_oldest_updates_and_says_how_many_never_silently() {
    // The master is stopped for 25 s below: a longer agent timeout, so that
    // nothing is declared lost when it wakes (its clock moved on meanwhile).
    let c = Cluster::start_with(&["--agent-timeout", "60s"]);
    let work = tempfile::tempdir().unwrap();
    // A spool of 1.5 KiB holds about seven whole ends; ten tasks at 0.1 cpus (hard;
    // the agent offers 1) take seconds, so they end while the master is
    // stopped, and their ends do not all fit: the oldest lose their output.
    let edge = Edge::start(
        &c,
        None,
        &bin("WASMOS_EDGE_BIN"),
        work.path(),
        "spool",
        &["--max-spool", "1536B", "--cpu-limit", "hard"],
    );
    let primes = guest("primes");
    // Under a second of CPU each: several seconds at 0.1 cpus, ending
    // within the master's stop.
    let input = work.path().join("input");
    std::fs::write(&input, "4000000").unwrap();
    let o = wasmos(
        &c,
        &[
            "submit",
            "--count",
            "10",
            "--cpus",
            "0.1",
            "--mem",
            "16MiB",
            "--constraint",
            "site=spool",
            "--input",
            input.to_str().unwrap(),
            primes.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    wait_for("10 tasks running on the edge agent", 60, || {
        let a = agent_json(&c, "spool");
        a.is_some_and(|a| a["tasks_live"].as_u64() == Some(10))
    });
    // Every agent is cut off: the master stops answering.
    let pid = c.pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(std::time::Duration::from_secs(25));
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let dropped = || agent_json(&c, "spool").and_then(|a| a["updates_dropped"].as_u64()).unwrap_or(0);
    wait_for("the drops to be reported", 60, || dropped() > 0);
    assert!(edge.log().contains("the spool of undelivered status updates is full"), "{}", edge.log());
    // Every end still arrives (the oldest without their output): all ten
    // tasks finish, once each; some say their output was dropped.
    let t0 = std::time::Instant::now();
    while out(&wasmos(&c, &["tasks", "--json", "--state", "finished"])).lines().count() < 10 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(120),
            "not every task finished:\n{}\n{}\n{}",
            out(&wasmos(&c, &["tasks"])),
            edge.log(),
            c.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let o = wasmos(&c, &["tasks", "--json"]);
    let tasks: Vec<serde_json::Value> = out(&o).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(tasks.len(), 10, "{}", out(&o));
    assert!(tasks.iter().all(|t| t["attempt"].as_u64() == Some(1)), "a task ran twice: {}", out(&o));
    let stripped = out(&o).matches("output dropped: agent spool full").count();
    assert!(stripped >= 1, "no end says its output was dropped: {}", out(&o));
    eprintln!("{} updates dropped or stripped; all 10 tasks finished, {stripped} without their output", dropped());
}
