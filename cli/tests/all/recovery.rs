//! Failures with real processes: `kill -9` the master and restart it on the
//! same state directory; `kill -9` an agent and start a new one. Nothing the
//! API acknowledged is lost, and every task ends exactly once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The client config of the master on `port`: its first start writes it
/// (URL, CA); the agents and client commands here read it, as a user's do.
fn config(port: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("recovery-client-{port}.json"))
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a URL with a port")
}

fn bin(port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmos"));
    c.env_remove("WASMOS_MASTER").env("WASMOS_CONFIG", config(port));
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn master(state: &Path, port: u16) -> Proc {
    master_with(state, port, &[])
}

fn master_with(state: &Path, port: u16, extra: &[&str]) -> Proc {
    // A first start writes the client config: none from an earlier run
    // with this port may be read meanwhile.
    let first = !state.exists();
    if first {
        let _ = std::fs::remove_file(config(port));
    }
    let p = Proc(
        bin(port)
            .args(["master", "--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(state)
            .args(["--agent-heartbeat", "200ms", "--agent-timeout", "2s"])
            .args(extra)
            .spawn()
            .unwrap(),
    );
    if first {
        wait_for("the client config", Duration::from_secs(60), || config(port).exists());
    }
    p
}

/// An agent on `work`, joining with a fresh join token (an agent restarted
/// on the same work dir keeps the identity it got the first time).
fn agent(url: &str, work: &Path) -> Proc {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("agents-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    // The master may be starting again: retry until it answers.
    let mut join = String::new();
    wait_for("a join token", Duration::from_secs(60), || {
        let o = cli(url, &["token", "create", &name, "--agent"]);
        join = String::from_utf8_lossy(&o.stdout).trim().to_string();
        o.status.success()
    });
    Proc(
        bin(port_of(url))
            .args(["agent", "--master", url, "--resources", "cpus:2;mem:2GiB", "--join", &join, "--work-dir"])
            .arg(work)
            .spawn()
            .unwrap(),
    )
}

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmos"))
        .env("WASMOS_CONFIG", config(port_of(url)))
        .args(args)
        .args(["--master", url])
        .output()
        .unwrap()
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn guest(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guests").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask guests` first", p.display());
    p.to_string_lossy().into_owned()
}

fn tasks(url: &str) -> Vec<serde_json::Value> {
    let o = cli(url, &["tasks", "--json"]);
    if !o.status.success() {
        return vec![];
    }
    lines(&o)
}

/// A master on `dir/master` and one agent on `dir/agent`, registered.
/// Returns (url, master state dir, port, master, agent).
fn master_and_agent(dir: &Path) -> (String, PathBuf, u16, Proc, Proc) {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let state = dir.join("master");
    let m = master(&state, port);
    let a = agent(&url, &dir.join("agent"));
    wait_for("the agent", Duration::from_secs(90), || lines(&cli(&url, &["agents", "--json"])).len() == 1);
    (url, state, port, m, a)
}

/// Submits a primes task that runs a few seconds (still running when its
/// agent is killed) and waits until it runs; returns its id.
fn submit_running_primes(url: &str, dir: &Path) -> String {
    let n = dir.join("n.txt");
    std::fs::write(&n, "5000000").unwrap();
    let o = cli(url, &["submit", "--cpus", "1", "--input", n.to_str().unwrap(), &guest("primes")]);
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    wait_for("the task to run", Duration::from_secs(90), || {
        tasks(url).iter().any(|t| t["task_id"] == id.as_str() && t["state"] == "running")
    });
    id
}

#[test]
fn master_kill_9_and_restart_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, state, port, mut m, _a) = master_and_agent(tmp.path());

    // A long task (about 10 s: runs across the failover and well past the
    // master's 5 s grace for unreported tasks) and a backlog of short ones.
    let n = tmp.path().join("n.txt");
    std::fs::write(&n, "20000000").unwrap();
    let o = cli(&url, &["submit", "--cpus", "1", "--input", n.to_str().unwrap(), &guest("primes")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let long = String::from_utf8_lossy(&o.stdout).trim().to_string();
    wait_for("the long task to run", Duration::from_secs(90), || {
        tasks(&url).iter().any(|t| t["task_id"] == long.as_str() && t["state"] == "running")
    });
    let o = cli(&url, &["submit", "--count", "200", "--cpus", "0.01", "--mem", "4MiB", &guest("hello")]);
    assert!(o.status.success());
    let mut short: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    // A hundred more, accounted to another role (the batch framework's
    // queue for it is rebuilt from the registry too).
    let o =
        cli(&url, &["submit", "--role", "eng", "--count", "100", "--cpus", "0.01", "--mem", "4MiB", &guest("hello")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let eng: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    short.extend(eng.iter().cloned());
    assert_eq!(short.len(), 300);

    // kill -9 right after the submission was acknowledged; restart on the same state.
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let t0 = Instant::now();
    let _m = master(&state, port);
    wait_for("the master to answer again", Duration::from_secs(90), || {
        cli(&url, &["tasks", "--json"]).status.success()
    });
    let recovery = t0.elapsed();
    eprintln!("master answered {recovery:?} after restart");

    let mut seen = String::new();
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(60) {
        let ts = tasks(&url);
        let mut counts = std::collections::BTreeMap::new();
        for t in &ts {
            *counts.entry(t["state"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
        }
        seen = format!("{} tasks: {counts:?}", ts.len());
        let ended = |t: &serde_json::Value| {
            ["finished", "failed", "lost", "error", "killed"].contains(&t["state"].as_str().unwrap_or(""))
        };
        if ts.len() == 301 && ts.iter().all(ended) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("after restart: {seen}");
    let ts = tasks(&url);
    assert_eq!(ts.len(), 301, "no acknowledged submission is missing");
    for t in &ts {
        assert_eq!(t["state"], "finished", "{t}");
        let want = if eng.iter().any(|e| t["task_id"] == e.as_str()) { "eng" } else { "batch" };
        assert_eq!(t["role"], want, "{t}");
    }
    // The long task kept running through the failover: the agent reported it
    // when it reregistered, so it was tracked again (one attempt, not LOST).
    let l = ts.iter().find(|t| t["task_id"] == long.as_str()).unwrap();
    assert_eq!(l["attempt"], 1, "{l}");
    assert!(l["started_at"].is_string() && l["message"] != "queued", "{l}");
    let o = cli(&url, &["logs", &long]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1270607 primes below 20000000\n");
}

/// A drain with a deadline, across a master kill -9: what ends in time ends
/// there, new work goes elsewhere, what is left at the deadline runs again
/// elsewhere with its attempt unchanged; DRAINED is reached, and
/// `--mark-gone` then removes the agent for good.
#[test]
fn a_drain_survives_a_master_kill_9_and_requeues_what_is_left_at_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, state, port, mut m, mut a) = master_and_agent(tmp.path());
    let id_of = |o: &Output| String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect::<Vec<_>>();
    let a_id = lines(&cli(&url, &["agents", "--json"]))[0]["agent_id"].as_str().unwrap().to_string();
    let short = crate::cluster::wat_file(tmp.path(), "short", &crate::maintenance::sleeper(3));
    let long = crate::cluster::wat_file(tmp.path(), "long", &crate::maintenance::sleeper(120));
    let submit = |n: &str, cpus: &str, m: &Path| {
        let o = cli(&url, &["submit", "--count", n, "--cpus", cpus, "--mem", "8MiB", m.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        id_of(&o)
    };
    let longs = submit("2", "0.5", &long);
    let shorts = submit("2", "0.5", &short);
    let state_of = |id: &str| tasks(&url).into_iter().find(|t| t["task_id"] == id);
    wait_for("four tasks running on a", Duration::from_secs(60), || {
        longs.iter().chain(&shorts).all(|id| state_of(id).is_some_and(|t| t["state"] == "running"))
    });
    let _b = agent(&url, &tmp.path().join("agent-b"));
    wait_for("agent b", Duration::from_secs(90), || lines(&cli(&url, &["agents", "--json"])).len() == 2);

    let o = cli(&url, &["agent", "drain", &a_id, "--deadline", "15s", "--detach"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("is draining, deadline in"), "{o:?}");
    // No more offers from a: new work runs on b.
    let fresh = submit("2", "0.1", &short);

    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let _m = master(&state, port);
    let agent_status = |id: &str| {
        lines(&cli(&url, &["agents", "--json"])).into_iter().find(|x| x["agent_id"] == id).map(|x| x["status"].clone())
    };
    wait_for("a, reregistered, still draining", Duration::from_secs(90), || {
        agent_status(&a_id).is_some_and(|s| s == "draining")
    });
    for id in &shorts {
        wait_for("a short task to finish on a", Duration::from_secs(60), || {
            state_of(id).is_some_and(|t| t["state"] == "finished" && t["agent_id"] == a_id.as_str())
        });
    }
    for id in &fresh {
        wait_for("new work to finish on b", Duration::from_secs(60), || {
            state_of(id).is_some_and(|t| t["state"] == "finished" && t["agent_id"] != a_id.as_str())
        });
    }
    for id in &longs {
        wait_for("a long task to run again on b", Duration::from_secs(60), || {
            state_of(id).is_some_and(|t| t["state"] == "running" && t["agent_id"] != a_id.as_str())
        });
        let t = state_of(id).unwrap();
        assert_eq!(t["attempt"], 1, "the drain's kill does not count: {t}");
        let o = cli(&url, &["task", id, "--json"]);
        let events = lines(&o)[0]["events"].clone();
        assert!(events.as_array().unwrap().iter().any(|e| e["reason"] == "agent_drained"), "{events}");
    }
    wait_for("a drained", Duration::from_secs(30), || agent_status(&a_id).is_some_and(|s| s == "drained"));

    // Switched off for maintenance and back: it comes back drained, not
    // offered to anyone until undrained.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    wait_for("a silent and removed", Duration::from_secs(30), || agent_status(&a_id).is_none());
    a = agent(&url, &tmp.path().join("agent"));
    wait_for("a back, still drained", Duration::from_secs(60), || agent_status(&a_id).is_some_and(|s| s == "drained"));

    let o = cli(&url, &["agent", "drain", &a_id, "--mark-gone"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("is gone for good"), "{o:?}");
    assert!(agent_status(&a_id).is_none(), "a is no longer listed");
    // Its identity is revoked: the agent process learns it and exits.
    wait_for("agent a to exit", Duration::from_secs(60), || a.0.try_wait().unwrap().is_some());
    let o = cli(&url, &["agent", "undrain", &a_id]);
    assert!(!o.status.success(), "a gone agent cannot be undrained");
}

#[test]
fn agent_kill_9_tasks_are_retried_on_a_new_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _m = master(&tmp.path().join("master"), port);
    let mut a = agent(&url, &tmp.path().join("agent-a"));
    wait_for("the agent", Duration::from_secs(90), || lines(&cli(&url, &["agents", "--json"])).len() == 1);
    let id = submit_running_primes(&url, tmp.path());
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let _b = agent(&url, &tmp.path().join("agent-b"));
    wait_for("the task to finish elsewhere", Duration::from_secs(120), || {
        tasks(&url).iter().any(|t| t["task_id"] == id.as_str() && t["state"] == "finished")
    });
    let t = tasks(&url).into_iter().find(|t| t["task_id"] == id.as_str()).unwrap();
    assert_eq!(t["attempt"], 2, "{t}");
}

#[test]
fn agent_restarts_from_its_checkpoint_under_the_same_id() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _m = master(&tmp.path().join("master"), port);
    let work = tmp.path().join("agent");
    let mut a = agent(&url, &work);
    let id_of = |url: &str| {
        lines(&cli(url, &["agents", "--json"])).first().map(|a| a["agent_id"].as_str().unwrap().to_string())
    };
    wait_for("the agent", Duration::from_secs(90), || id_of(&url).is_some());
    let first_id = id_of(&url).unwrap();
    let id = submit_running_primes(&url, tmp.path());
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let _a2 = agent(&url, &work);
    wait_for("the task to finish after a retry", Duration::from_secs(120), || {
        tasks(&url).iter().any(|t| t["task_id"] == id.as_str() && t["state"] == "finished")
    });
    let t = tasks(&url).into_iter().find(|t| t["task_id"] == id.as_str()).unwrap();
    assert_eq!(t["attempt"], 2, "{t}");
    // Reported LOST by the restarted agent from its checkpoint (not by the
    // master's grace period for tasks nobody reports).
    let msg = t["message"].as_str().unwrap_or("");
    assert!(msg.contains("the agent restarted while the task ran"), "{t}");
    assert_eq!(t["agent_id"].as_str(), Some(first_id.as_str()), "it ran again on the same agent");
    let agents = lines(&cli(&url, &["agents", "--json"]));
    assert_eq!(agents.len(), 1, "the restarted agent came back under its id: {agents:?}");
    assert_eq!(agents[0]["agent_id"].as_str(), Some(first_id.as_str()));
}

#[test]
fn roles_and_reservations_survive_a_master_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, state, port, mut m, _a) = master_and_agent(tmp.path());
    let agent_id = lines(&cli(&url, &["agents", "--json"]))[0]["agent_id"].as_str().unwrap().to_string();

    let ok = |o: Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(cli(&url, &["role", "set", "eng", "--weight", "3", "--guarantee", "cpus:0.5", "--limit", "cpus:1.5;gpus:0"]));
    let out = ok(cli(&url, &["reserve", &agent_id, "eng", "cpus:1;mem:256MiB"]));
    assert!(out.contains("cpus:1;mem:256MiB reserved for role eng"), "{out}");
    // A refused request answers with a reason and exit 2.
    let bad = cli(&url, &["role", "set", "eng", "--weight", "-1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("weight -1 for role eng is invalid"), "{bad:?}");

    let eng =
        |url: &str| lines(&cli(url, &["roles", "--json"])).into_iter().find(|r| r["role"] == "eng").unwrap_or_default();
    let before = eng(&url);
    assert_eq!(before["weight"], 3.0, "{before}");
    assert_eq!(before["guarantee"], "cpus:0.5", "{before}");
    assert_eq!(before["limit"], "cpus:1.5;gpus:0", "{before}");
    assert_eq!(before["reserved"], "cpus:1;mem:256MiB", "{before}");

    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let _m = master(&state, port);
    // The reservation counts again once the agent has reregistered.
    wait_for("the role with its reservation after the restart", Duration::from_secs(90), || eng(&url) == before);
    let out = ok(cli(&url, &["unreserve", &agent_id, "eng", "cpus:1;mem:256MiB"]));
    assert!(out.contains("nothing reserved for role eng"), "{out}");
}

/// Jobs a hosted scheduler acknowledged but could not launch yet (no agent)
/// are given to it again after a kill -9 of the master, and run.
#[test]
fn hosted_jobs_survive_a_master_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, state, port, mut m, a) = master_and_agent(tmp.path());
    let ok = |o: Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(cli(&url, &["framework", "deploy", "--name", "sjf", "--role", "batch", &guest("sjf")]));
    // No agent: the jobs wait in the scheduler's memory.
    drop(a);
    wait_for("the agent to be gone", Duration::from_secs(30), || lines(&cli(&url, &["agents", "--json"])).is_empty());
    let out = ok(cli(&url, &["submit", "--framework", "sjf", "--count", "3", &guest("hello")]));
    let ids: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    assert_eq!(ids.len(), 3, "{out}");
    assert!(ids.iter().all(|id| id.starts_with("sjf-job-")), "{ids:?}");

    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let _m = master(&state, port);
    let _a = agent(&url, &tmp.path().join("agent"));
    wait_for("the three jobs to finish after the restart", Duration::from_secs(90), || {
        let all = tasks(&url);
        ids.iter().all(|id| all.iter().any(|t| t["task_id"] == id.as_str() && t["state"] == "finished"))
    });
    // Launched: not given again at the next restart.
    drop(_m);
    let _m = master(&state, port);
    wait_for("the master", Duration::from_secs(30), || cli(&url, &["agents", "--json"]).status.success());
    std::thread::sleep(Duration::from_secs(2));
    let all = tasks(&url);
    let sjf: Vec<_> = all.iter().filter(|t| t["task_id"].as_str().is_some_and(|i| i.starts_with("sjf-"))).collect();
    assert_eq!(sjf.len(), 3, "{sjf:?}");
    assert!(sjf.iter().all(|t| t["state"] == "finished"), "{sjf:?}");
}

#[test]
fn an_agent_renews_its_certificate_and_reconnects_with_it_after_the_old_one_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let state = tmp.path().join("master");
    let mut m = master_with(&state, port, &["--agent-cert-ttl", "6s"]);
    let work = tmp.path().join("agent");
    let _a = agent(&url, &work);
    wait_for("the agent", Duration::from_secs(90), || lines(&cli(&url, &["agents", "--json"])).len() == 1);
    let cert = work.join("identity/cert.pem");
    let first = std::fs::read_to_string(&cert).unwrap();
    let t0 = Instant::now();
    wait_for("a renewed certificate", Duration::from_secs(30), || std::fs::read_to_string(&cert).unwrap() != first);
    // Past the first certificate's end, the master restarts: every
    // connection is new, and only the renewed certificate is accepted.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(t0.elapsed()) + Duration::from_millis(500));
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let _m = master_with(&state, port, &["--agent-cert-ttl", "6s"]);
    wait_for("the master", Duration::from_secs(60), || cli(&url, &["agents", "--json"]).status.success());
    let o = cli(&url, &["submit", &guest("hello")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    wait_for("a task to run after the restart", Duration::from_secs(60), || {
        tasks(&url).iter().any(|t| t["task_id"] == id.as_str() && t["state"] == "finished")
    });
}

/// An operator who lost the admin token restarts the master on its state
/// dir with `--reset-admin-token`: the old token stops working, the new one
/// is in the client config, and the rest of the registry is as it was.
#[test]
fn a_lost_admin_token_is_replaced_by_a_restart_with_reset_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, state) = (free_port(), tmp.path().join("state"));
    let url = format!("https://127.0.0.1:{port}");
    let mut m = master(&state, port);
    let read = || wasmos_security::client::ClientConfig::read(&config(port)).unwrap().unwrap();
    let old = read().token.expect("a first start writes the admin token");
    wait_for("the master", Duration::from_secs(60), || cli(&url, &["token", "ls"]).status.success());
    let keep = cli(&url, &["token", "create", "ci", "--grant", "view:*"]);
    assert!(keep.status.success(), "{}", String::from_utf8_lossy(&keep.stderr));
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    // A plain restart makes no new admin token and keeps the config's.
    let mut m = master(&state, port);
    wait_for("the master", Duration::from_secs(60), || cli(&url, &["token", "ls"]).status.success());
    assert_eq!(read().token.as_deref(), Some(old.as_str()));
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let _m = master_with(&state, port, &["--reset-admin-token"]);
    wait_for("a new admin token in the client config", Duration::from_secs(60), || {
        read().token.is_some_and(|t| t != old)
    });
    wait_for("the master", Duration::from_secs(60), || cli(&url, &["token", "ls"]).status.success());
    let o = cli(&url, &["token", "ls", "--token", &old]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown"), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = String::from_utf8_lossy(&cli(&url, &["token", "ls"]).stdout).into_owned();
    assert!(listed.contains("ci") && listed.contains("--reset-admin-token"), "{listed}");
}
