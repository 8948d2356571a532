//! Maintenance through the real binary against `wasmos dev`: health checks
//! (heartbeat and probe), the service framework replacing what they kill,
//! and service replicas moving off a draining agent. (A drain with a
//! deadline across a master kill -9 is in `recovery.rs`.)

use std::time::{Duration, Instant};

use crate::cluster::{err, lines, wait_for, wasmos, wat_file};
use crate::dev::Cluster;

/// Sleeps `ns` nanoseconds in one `poll_oneoff`; `$beat` is the wasmos
/// heartbeat import.
const SLEEP_FN: &str = r#"
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasmos" "heartbeat" (func $beat))
  (memory (export "memory") 1)
  (func $sleep (param $ns i64)
    (i64.store (i32.const 104) (i64.const 1))
    (i32.store8 (i32.const 112) (i32.const 0))
    (i32.store (i32.const 120) (i32.const 1))
    (i64.store (i32.const 128) (local.get $ns))
    (i64.store (i32.const 136) (i64.const 0))
    (i32.store16 (i32.const 144) (i32.const 0))
    (drop (call $poll (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300))))"#;

/// Beats every 100 ms `beats` times, then sleeps `then_ms` without a beat.
fn beater(beats: u32, then_ms: u64) -> String {
    format!(
        r#"(module {SLEEP_FN}
  (func (export "_start") (local $i i32)
    (loop $l
      (call $beat)
      (call $sleep (i64.const 100000000))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {beats}))))
    (call $sleep (i64.const {}))))"#,
        then_ms * 1_000_000
    )
}

/// Sleeps `secs` seconds, then exits 0.
pub(crate) fn sleeper(secs: u64) -> String {
    format!(r#"(module {SLEEP_FN} (func (export "_start") (call $sleep (i64.const {}))))"#, secs * 1_000_000_000)
}

/// Deploys the service example framework as `svc` in role web.
fn deploy_service(c: &Cluster, config: &str) {
    let svc = crate::cluster::guest("service");
    let o = wasmos(
        c,
        &["framework", "deploy", "--name", "svc", "--role", "web", "--config", config, svc.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", err(&o));
}

/// `wasmos dev --agents 2`, both registered: the cluster and the agents' ids.
fn two_agents() -> (Cluster, String, String) {
    let c = Cluster::start_with(&["--agents", "2"]);
    wait_for("two agents", 60, || lines(&wasmos(&c, &["agents", "--json"])).len() == 2);
    let ids: Vec<String> =
        lines(&wasmos(&c, &["agents", "--json"])).iter().map(|a| a["agent_id"].as_str().unwrap().to_string()).collect();
    (c, ids[0].clone(), ids[1].clone())
}

fn task(c: &Cluster, id: &str) -> serde_json::Value {
    lines(&wasmos(c, &["task", id, "--json"])).remove(0)
}

fn submit(c: &Cluster, args: &[&str]) -> String {
    let o = wasmos(c, &[&["submit", "--cpus", "0.1", "--mem", "8MiB"][..], args].concat());
    assert!(o.status.success(), "{}", err(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

const CHECK: [&str; 6] = ["--health-interval", "300ms", "--health-grace", "500ms", "--health-failures", "3"];

#[test]
fn health_checks_kill_what_stops_heartbeating_or_fails_its_probe_and_the_service_replaces_it() {
    let c = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let stops = wat_file(dir.path(), "stops", &beater(20, 60_000));
    let beats = wat_file(dir.path(), "beats", &beater(40, 0));
    let sleeps = wat_file(dir.path(), "sleeps", &sleeper(4));
    // Healthy when it can open its task's directory (preopened as fd 3).
    let reads = wat_file(
        dir.path(),
        "reads",
        r#"(module
          (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) ".")
          (func (export "_start")
            (if (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 2) (i64.const 16384) (i64.const 0) (i32.const 0) (i32.const 64))
              (then (call $exit (i32.const 1))))))"#,
    );
    // Healthy only if it can create a file there: it cannot (read-only).
    let writes = wat_file(
        dir.path(),
        "writes",
        r#"(module
          (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "probe-wrote-this")
          (func (export "_start")
            (if (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 16) (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 64))
              (then (call $exit (i32.const 1))))))"#,
    );
    let p = |f: &std::path::Path| f.to_str().unwrap().to_string();
    let hb = [&["--health-heartbeat"][..], &CHECK[..]].concat();
    let stopped = submit(&c, &[&hb[..], &[p(&stops).as_str()]].concat());
    let beating = submit(&c, &[&hb[..], &[p(&beats).as_str()]].concat());
    let probe_ok = submit(&c, &[&["--health-probe", &p(&reads)][..], &CHECK[..], &[p(&sleeps).as_str()]].concat());
    let probe_bad = submit(&c, &[&["--health-probe", &p(&writes)][..], &CHECK[..], &[p(&sleeps).as_str()]].concat());
    let ids = [&stopped, &beating, &probe_ok, &probe_bad];
    wait_for("the four to end", 60, || {
        ids.iter().all(|id| ["finished", "failed", "killed"].contains(&task(&c, id)["state"].as_str().unwrap_or("")))
    });

    // It beat for about 2 s, then missed 3 checks of 300 ms: killed.
    let t = task(&c, &stopped);
    assert_eq!(t["state"], "killed", "{t}");
    assert_eq!(t["healthy"], false, "{t}");
    assert!(t["health_message"].as_str().unwrap().contains("no heartbeat"), "{t}");
    let events = t["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["reason"] == "health_check_passed"), "first healthy reported: {t}");
    let last = events.last().unwrap();
    assert_eq!((last["state"].as_str(), last["reason"].as_str()), (Some("killed"), Some("health_check_failed")), "{t}");
    let unhealthy = events.iter().filter(|e| e["reason"] == "health_check_failed" && e["state"] == "running").count();
    assert_eq!(unhealthy, 3, "every unhealthy check reported: {t}");
    // A healthy task is never killed.
    for id in [&beating, &probe_ok] {
        let t = task(&c, id);
        assert_eq!(t["state"], "finished", "{t}");
        assert_eq!(t["healthy"], true, "{t}");
    }
    // The probe may look at the task's directory, not write in it.
    let t = task(&c, &probe_bad);
    assert_eq!(t["state"], "killed", "{t}");
    assert!(t["health_message"].as_str().unwrap().contains("probe failed (exit 1)"), "{t}");
    // `wasmos task` shows the verdict and the last check.
    let o = wasmos(&c, &["task", &stopped]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("health      unhealthy  (heartbeat every 300ms")
            && text.contains("last check  health check failed"),
        "{text}"
    );

    // The service framework restarts a replica its health check killed.
    deploy_service(&c, "replicas=1,backoff_ms=50");
    let o = wasmos(
        &c,
        &[&["submit", "--framework", "svc", "--cpus", "0.1", "--mem", "8MiB"][..], &hb[..], &[p(&stops).as_str()]]
            .concat(),
    );
    assert!(o.status.success(), "{}", err(&o));
    let job = String::from_utf8_lossy(&o.stdout).trim().to_string();
    wait_for("a second replica after the first one's health check killed it", 60, || {
        lines(&wasmos(&c, &["tasks", "--json"])).iter().any(|t| t["task_id"] == format!("{job}-2").as_str())
    });
    let first = task(&c, &format!("{job}-1"));
    assert_eq!((first["state"].as_str(), first["healthy"].as_bool()), (Some("killed"), Some(false)), "{first}");
}

#[test]
fn service_replicas_move_off_a_draining_agent_before_the_old_ones_stop() {
    let (c, a, b) = two_agents();
    let (a, b) = (&a, &b);
    // Both replicas on a: b takes no offers for now.
    let o = wasmos(&c, &["agent", "eligibility", b, "off"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(ineligible)"), "{o:?}");
    let dir = tempfile::tempdir().unwrap();
    let long = wat_file(dir.path(), "long", &sleeper(120));
    deploy_service(&c, "replicas=2,max_parallel=1");
    let o = wasmos(&c, &["submit", "--framework", "svc", "--cpus", "0.1", "--mem", "8MiB", long.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    let running_on = |agent: &str| {
        lines(&wasmos(&c, &["tasks", "--json", "--state", "running"]))
            .iter()
            .filter(|t| t["framework"] != "batch" && t["agent_id"] == agent)
            .count()
    };
    wait_for("two replicas on a", 60, || running_on(a) == 2);
    let o = wasmos(&c, &["agent", "eligibility", b, "on"]);
    assert!(o.status.success(), "{}", err(&o));

    let o = wasmos(&c, &["agent", "drain", a, "--deadline", "60s", "--detach"]);
    assert!(o.status.success(), "{}", err(&o));
    // Replacements start on b before the old replicas stop, one at a time:
    // never fewer than replicas - max_parallel running.
    let t0 = Instant::now();
    let mut fewest = usize::MAX;
    loop {
        let running = lines(&wasmos(&c, &["tasks", "--json", "--state", "running"]))
            .iter()
            .filter(|t| t["framework"] != "batch")
            .count();
        fewest = fewest.min(running);
        let st = lines(&wasmos(&c, &["agents", "--json"])).into_iter().find(|x| x["agent_id"] == a.as_str()).unwrap();
        if st["status"] == "drained" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(40), "a drained well before its 60 s deadline: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fewest >= 1, "at least replicas - max_parallel running throughout, saw {fewest}");
    assert_eq!(running_on(b), 2, "both replicas on b now");
    // The old ones were stopped by the framework, not at the deadline.
    let ended: Vec<serde_json::Value> = lines(&wasmos(&c, &["tasks", "--json", "--state", "killed"]));
    assert_eq!(ended.iter().filter(|t| t["agent_id"] == a.as_str()).count(), 2, "{ended:?}");
    assert!(ended.iter().all(|t| t["message"] != "killed at its agent's drain deadline"), "{ended:?}");
}

#[test]
fn a_drain_with_migrate_moves_a_running_task_that_ends_as_an_undisturbed_run_would() {
    let (c, a, b) = two_agents();
    let (a, b) = (&a, &b);
    assert!(wasmos(&c, &["agent", "eligibility", b, "off"]).status.success());
    // primes-c (C, clang + wasi-libc) counts primes, calling the heartbeat
    // every 10,000 numbers: its safe points.
    let primes = crate::cluster::guest("primes-c");
    let run = ["submit", "--migratable", "--meter-fuel", "--cpus", "1", "--mem", "16MiB"];
    let o = wasmos(&c, &[&run[..], &["--wait", "--json", primes.to_str().unwrap(), "--", "3000000"]].concat());
    assert!(o.status.success(), "{}", err(&o));
    let reference = lines(&o).remove(0);
    assert_eq!(reference["stdout"], "216816 primes below 3000000\n", "{reference}");
    let fuel = reference["fuel_consumed"].as_u64().unwrap();

    // The same, moved mid-run.
    let o = wasmos(&c, &[&run[..], &[primes.to_str().unwrap(), "--", "3000000"]].concat());
    assert!(o.status.success(), "{}", err(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    wait_for("it runs on a", 60, || {
        let t = task(&c, &id);
        t["state"] == "running" && t["agent_id"] == a.as_str()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(wasmos(&c, &["agent", "eligibility", b, "on"]).status.success());
    let o = wasmos(&c, &["agent", "drain", a, "--migrate", "--deadline", "5m", "--detach"]);
    assert!(o.status.success(), "{}", err(&o));
    wait_for("it ends", 120, || task(&c, &id)["state"] == "finished");
    let t = task(&c, &id);
    assert_eq!((t["agent_id"].as_str(), t["attempt"].as_u64()), (Some(b.as_str()), Some(1)), "{t}");
    let events = t["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["state"] == "killed" && e["reason"] == "migrated"), "captured on a: {t}");
    // Resumed on b, not started again: it came with the fuel it had used on a.
    let resumed = events
        .iter()
        .find_map(|e| e["message"].as_str().filter(|m| m.starts_with("resumed from a capture")))
        .unwrap_or_else(|| panic!("no resumed run: {t}"));
    let before: u64 = resumed.split("fuel ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(before > 0 && before < fuel, "{resumed}");
    let o = wasmos(&c, &["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "216816 primes below 3000000\n");
    // Same work, same fuel: what ran on a and on b adds up to the undisturbed run.
    let listed = lines(&wasmos(&c, &["tasks", "--json"])).into_iter().find(|x| x["task_id"] == id.as_str()).unwrap();
    assert_eq!(listed["fuel_consumed"].as_u64(), Some(fuel), "{listed}");
    wait_for("a drained", 30, || {
        lines(&wasmos(&c, &["agents", "--json"]))
            .iter()
            .any(|x| x["agent_id"] == a.as_str() && x["status"] == "drained")
    });
}
