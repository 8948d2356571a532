//! Several masters on a real 3-member etcd (`wasmos master --etcd`): one is
//! elected, followers name it, clients given every URL follow it through a
//! `kill -9` and through a SIGSTOP past its lease, the deposed leader exits
//! without writing, and etcd's history shows one master per epoch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../examples/common/etcd.rs"]
mod etcd;

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

fn bin(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasmos"));
    c.env_remove("WASMOS_MASTER").env("WASMOS_CONFIG", config);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn cli(config: &Path, master: &str, args: &[&str]) -> Output {
    let mut c = bin(config);
    c.env("WASMOS_MASTER", master).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.output().unwrap()
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

/// `wasmos masters --json`, once a leader answers.
fn masters(config: &Path, urls: &str) -> serde_json::Value {
    let mut v = serde_json::Value::Null;
    wait_for("a leader", Duration::from_secs(30), || {
        let o = cli(config, urls, &["masters", "--json"]);
        if !o.status.success() {
            return false;
        }
        v = serde_json::from_slice(&o.stdout).unwrap();
        v["epoch"].as_u64().unwrap_or(0) > 0
    });
    v
}

#[test]
fn several_masters_elect_one_leader_that_clients_follow_and_a_deposed_one_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cluster = etcd::EtcdCluster::start(dir.path(), 3);
    assert!(rt.block_on(cluster.wait_ready(Duration::from_secs(30))), "etcd starts");
    let endpoints = cluster.endpoints();
    let config = dir.path().join("client.json");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let all = urls.join(",");
    let start = |i: usize| {
        Proc(
            bin(&config)
                .args(["master", "--listen", &format!("127.0.0.1:{}", ports[i]), "--state-dir"])
                .arg(dir.path().join(format!("m{i}")))
                .args(["--etcd", &endpoints, "--etcd-compact-every", "0s", "--client-config"])
                .arg(&config)
                .args(["--agent-heartbeat", "200ms", "--agent-timeout", "5s"])
                .spawn()
                .unwrap(),
        )
    };
    let mut procs: Vec<Option<Proc>> = (0..3).map(|i| Some(start(i))).collect();
    wait_for("the leader's client config", Duration::from_secs(60), || {
        std::fs::read_to_string(&config).is_ok_and(|s| s.contains("token"))
    });

    // One leader among three, epoch 1; every master says the same.
    let m = masters(&config, &all);
    assert_eq!(m["ha"], true, "{m}");
    assert_eq!(m["epoch"], 1, "{m}");
    assert_eq!(m["masters"].as_array().unwrap().len(), 3, "{m}");
    let leader = m["leader"].as_str().unwrap().to_string();
    let follower = urls.iter().find(|u| **u != leader).unwrap().clone();
    let seen_by_follower = masters(&config, &follower);
    assert_eq!(seen_by_follower["leader"], leader.as_str(), "{seen_by_follower}");

    // A follower alone refuses, naming the leader; given every URL, clients find it.
    let o = cli(&config, &follower, &["agents"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("follower") && err.contains(&leader), "{err}");
    let o = cli(&config, &all, &["token", "create", "agents", "--agent"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let join = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let _agent = Proc(
        bin(&config)
            .args(["agent", "--master", &all, "--resources", "cpus:2;mem:2GiB", "--join", &join, "--work-dir"])
            .arg(dir.path().join("agent"))
            .spawn()
            .unwrap(),
    );
    let hello = guest("hello");
    let o = cli(&config, &all, &["submit", "--wait", &hello, "--", "first"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("hello, first!"), "{}", String::from_utf8_lossy(&o.stdout));

    // kill -9 of the leader: another is elected, epoch 2, and takes the
    // next submission (the module uploaded to the first one included).
    let i = urls.iter().position(|u| *u == leader).unwrap();
    procs[i] = None;
    let o = cli(&config, &all, &["submit", "--wait", &hello, "--", "second"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("hello, second!"), "{}", String::from_utf8_lossy(&o.stdout));
    let m = masters(&config, &all);
    assert_eq!(m["epoch"], 2, "{m}");
    let second = m["leader"].as_str().unwrap().to_string();
    assert_ne!(second, leader);
    procs[i] = Some(start(i));

    // SIGSTOP of the leader past its 1 s lease: a third is elected; on
    // SIGCONT the old one finds its lease gone and exits (75).
    let j = urls.iter().position(|u| *u == second).unwrap();
    let pid = procs[j].as_ref().unwrap().0.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    wait_for("a new leader", Duration::from_secs(30), || {
        let o = cli(
            &config,
            &urls.iter().filter(|u| **u != second).cloned().collect::<Vec<_>>().join(","),
            &["masters", "--json"],
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["epoch"].as_u64().unwrap_or(0) >= 3
    });
    let o = cli(&config, &all, &["submit", "--wait", &hello, "--", "third"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let mut code = None;
    wait_for("the deposed leader to exit", Duration::from_secs(20), || {
        code = procs[j].as_mut().unwrap().0.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code.flatten(), Some(75), "a deposed leader exits with 75");

    // Every task finished once; etcd's history: each epoch one writer,
    // never an older epoch after a newer one.
    let o = cli(&config, &all, &["tasks", "--json"]);
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["state"] == "finished"), "{rows:?}");
    let history = rt.block_on(etcd::key_history(&endpoints, "/wasmos/meta/commit")).unwrap();
    let (failures, epochs) = etcd::check_epochs(&history);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(epochs >= 3, "{epochs} epochs wrote: {history:?}");
}
