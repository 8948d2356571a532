//! Fault injection for several masters, run by `cargo xtask chaos --ha`:
//! three real `wasmos master --etcd` processes on a real 3-member etcd
//! cluster, two agents, a batch workload and a remote framework; while they
//! run it injects, round after round:
//!
//! - `kill -9` of the leader (restarted at once, as a follower);
//! - SIGSTOP of the leader past its lease, then SIGCONT: it must find itself
//!   deposed and exit without writing (restarted, as a supervisor would);
//! - `kill -9` of one etcd member (started again a round later);
//! - `kill -9` and restart of a follower.
//!
//! A supervisor loop restarts any master that exits (a deposed leader exits
//! by design). Until `--leader-changes N` leader changes were seen it goes
//! on; then it checks the invariants: every acknowledged submission ended
//! once per attempt with the right output, no status update applied twice,
//! the remote framework saw its tasks end, and etcd's own history of the
//! commit stamp shows every epoch written by one master only and never after
//! a newer one. It prints the time from each leader's loss to the first
//! Submit the next leader accepted (p50, p99, max).
//!
//! Usage: chaos_ha --wasmos PATH --guests DIR [--leader-changes N] [--tasks-per-round N] [--framework-tasks N]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmos_model::Resources;
use wasmos_proto::v1;

#[path = "common/mod.rs"]
mod common;
#[path = "common/etcd.rs"]
mod etcd;

use common::{History, Proc, Remote, arg, connect, list, op, primes_below, watch_all};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ok = chaos().await;
    std::process::exit(if ok { 0 } else { 1 });
}

/// The masters, restarted when they exit.
struct Masters {
    procs: Vec<Proc>,
    urls: Vec<String>,
    restarts: u64,
}

impl Masters {
    fn supervise(&mut self) {
        for p in &mut self.procs {
            if p.respawn_if_exited() {
                self.restarts += 1;
            }
        }
    }
    fn by_url(&mut self, url: &str) -> Option<&mut Proc> {
        let i = self.urls.iter().position(|u| u == url)?;
        Some(&mut self.procs[i])
    }
}

/// The leader's URL and epoch as a master answers (None: no answer or no leader).
async fn leader(url: &str) -> Option<(String, u64)> {
    let ch = common::try_connect(url).await?;
    let r = v1::masters_client::MastersClient::new(ch).list(v1::ListMastersRequest {}).await.ok()?.into_inner();
    (!r.leader.is_empty() && r.leader_since_ms > 0).then_some((r.leader, r.epoch))
}

/// Waits until a master accepts a Submit of one hello task, asking every
/// master directly and at once (so that what is measured is the masters'
/// failover, not a client's time-outs on a stopped one); returns how long
/// since `t0` and the task id.
async fn first_submit(urls: &[String], hello: &str, t0: Instant) -> Option<(Duration, String)> {
    let req = v1::SubmitRequest {
        template: Some(v1::TaskSpec {
            name: "probe".into(),
            module_sha256: hello.to_string(),
            resources: Some(wasmos_proto::resources_to_wire(&Resources::parse("cpus:0.01;mem:8MiB").unwrap())),
            args: vec!["probe".into()],
            ..Default::default()
        }),
        count: 1,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (tx, mut rx) = tokio::sync::mpsc::channel(urls.len());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for url in urls {
        let (url, req, tx, stop) = (url.clone(), req.clone(), tx.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut last = String::new();
            while Instant::now() < deadline && !*stop.borrow() {
                match tokio::time::timeout(Duration::from_millis(1000), common::try_connect(&url)).await {
                    Ok(Some(ch)) => {
                        match tokio::time::timeout(Duration::from_millis(1000), op(&ch).submit(req.clone())).await {
                            Ok(Ok(r)) => {
                                let id = r.into_inner().task_ids.into_iter().next().unwrap_or_default();
                                let _ = tx.send((t0.elapsed(), id)).await;
                                return;
                            }
                            Ok(Err(e)) => last = format!("submit: {}", e.message()),
                            Err(_) => last = "submit: timed out".into(),
                        }
                    }
                    Ok(None) => last = "cannot connect".into(),
                    Err(_) => last = "connect: timed out".into(),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !*stop.borrow() {
                eprintln!("chaos_ha: {url}: no Submit accepted: {last}");
            }
        });
    }
    drop(tx);
    let first = rx.recv().await;
    let _ = stop_tx.send(true);
    first
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn chaos() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let wasmos = PathBuf::from(arg(&args, "--wasmos").expect("--wasmos PATH"));
    let guests = PathBuf::from(arg(&args, "--guests").expect("--guests DIR"));
    let want_changes: u64 = arg(&args, "--leader-changes").map(|s| s.parse().unwrap()).unwrap_or(10);
    let per_round: usize = arg(&args, "--tasks-per-round").map(|s| s.parse().unwrap()).unwrap_or(40);
    let fw_tasks: usize = arg(&args, "--framework-tasks").map(|s| s.parse().unwrap()).unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let log = std::env::var_os("CHAOS_LOG").map(PathBuf::from);
    let log = log.as_deref();

    let mut etcd = etcd::EtcdCluster::start(dir.path(), 3);
    assert!(etcd.wait_ready(Duration::from_secs(30)).await, "etcd starts (see {}/e*.log)", dir.path().display());
    let endpoints = etcd.endpoints();
    let ports: Vec<u16> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let url = urls.join(",");
    let client_config = dir.path().join("client.json");
    common::trust(&client_config);
    let master_argv = |i: usize| -> Vec<String> {
        [
            "master",
            "--listen",
            &format!("127.0.0.1:{}", ports[i]),
            "--state-dir",
            dir.path().join(format!("master-{i}")).to_str().unwrap(),
            "--etcd",
            &endpoints,
            "--etcd-compact-every",
            "0s",
            "--agent-heartbeat",
            "200ms",
            "--agent-timeout",
            "5s",
            "--client-config",
            client_config.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let masters = Arc::new(Mutex::new(Masters { procs: Vec::new(), urls: urls.clone(), restarts: 0 }));
    for i in 0..3 {
        masters.lock().unwrap().procs.push(Proc::spawn(&wasmos, &master_argv(i), log));
    }
    // The supervisor: a master that exits (a deposed leader does, by
    // design; so does one that lost its lease) is started again.
    {
        let masters = masters.clone();
        tokio::spawn(async move {
            loop {
                masters.lock().unwrap().supervise();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    // The first leader writes the client config (admin token, CA).
    let t0 = Instant::now();
    while common::client_config().is_none_or(|c| c.token.is_none()) {
        assert!(t0.elapsed() < Duration::from_secs(60), "no master was elected within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::wait_up(&url, Duration::from_secs(30)).await.expect("the leader answers");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, common::client_config().unwrap().ca_pem.unwrap()).unwrap();
    let join = common::join_token(&url).await;
    let agent_argv = |name: &str| -> Vec<String> {
        [
            "agent",
            "--master",
            &url,
            "--resources",
            "cpus:2;mem:2GiB",
            "--work-dir",
            dir.path().join(name).to_str().unwrap(),
            "--ca-cert",
            ca_file.to_str().unwrap(),
            "--join",
            &join,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let _agents =
        [Proc::spawn(&wasmos, &agent_argv("agent-a"), log), Proc::spawn(&wasmos, &agent_argv("agent-b"), log)];
    let ch = connect(&url).await;
    assert!(common::wait_agents(&ch, 2, Duration::from_secs(30)).await, "two agents join");
    let seen = Arc::new(Mutex::new(History::new(false)));
    let master_epoch = Arc::new(AtomicU64::new(0));
    let recorder = seen.clone();
    watch_all(url.clone(), master_epoch.clone(), move |t| recorder.lock().unwrap().record(t));

    let mut art = v1::artifacts_client::ArtifactsClient::new(ch.clone());
    let mut sha = HashMap::new();
    for name in ["primes", "hello"] {
        let bytes = std::fs::read(guests.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("{name}.wasm: {e}; run `cargo xtask guests`"));
        let s = hex::encode(Sha256::digest(&bytes));
        art.upload(tokio_stream::iter(vec![v1::Chunk { sha256: s.clone(), data: bytes, ..Default::default() }]))
            .await
            .expect("upload");
        sha.insert(name, s);
    }
    let (primes_sha, hello_sha) = (sha["primes"].clone(), sha["hello"].clone());

    // The remote framework, resubscribing whenever its connection ends.
    let remote = Remote::new(&url, "chaos-ha-remote", &hello_sha, "cpus:0.05;mem:8MiB", 5, fw_tasks);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fw = {
        let remote = remote.clone();
        tokio::spawn(async move {
            let mut fid = String::new();
            while !*stop_rx.borrow() {
                fid = remote.clone().run(fid, stop_rx.clone()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            fid
        })
    };

    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut probes: Vec<String> = Vec::new();
    let mut failovers: Vec<Duration> = Vec::new();
    let mut slowest: Option<(Duration, usize, &str)> = None;
    let mut faults: HashMap<&str, u64> = HashMap::new();
    let mut changes = 0u64;
    let (mut last_leader, mut last_epoch) = leader(&url).await.expect("a leader");
    let mut etcd_down: Option<usize> = None;
    let mut round = 0usize;
    let started = Instant::now();
    while changes < want_changes {
        round += 1;
        assert!(started.elapsed() < Duration::from_secs(1800), "30 minutes and only {changes} leader changes");
        // A round of batch tasks.
        let input = 2000 + 1000 * (round as u64 % 20);
        let req = v1::SubmitRequest {
            template: Some(v1::TaskSpec {
                name: "primes".into(),
                module_sha256: primes_sha.clone(),
                resources: Some(wasmos_proto::resources_to_wire(&Resources::parse("cpus:0.05;mem:16MiB").unwrap())),
                input: input.to_string().into_bytes(),
                ..Default::default()
            }),
            count: per_round as u32,
            ..Default::default()
        };
        let mut submitted = false;
        for _ in 0..100 {
            let ch = connect(&url).await;
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), op(&ch).submit(req.clone())).await {
                for id in r.into_inner().task_ids {
                    expected.insert(id, input);
                }
                submitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(submitted, "round {round}: no master accepted a submission");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(i) = etcd_down.take() {
            etcd.restart(i);
        }
        let fault = ["kill-leader", "stop-leader", "kill-etcd", "restart-follower"][round % 4];
        *faults.entry(fault).or_default() += 1;
        let t0 = Instant::now();
        match fault {
            "kill-leader" => {
                if let Some(p) = masters.lock().unwrap().by_url(&last_leader) {
                    p.restart();
                }
            }
            "stop-leader" => {
                // Past its 1 s lease; the next leader is measured meanwhile.
                if let Some(p) = masters.lock().unwrap().by_url(&last_leader) {
                    p.signal("-STOP");
                    let pid = p.pid().to_string();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(2500)).await;
                        let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
                    });
                }
            }
            "kill-etcd" => {
                let i = round / 4 % 3;
                etcd.kill(i);
                etcd_down = Some(i);
            }
            _ => {
                let follower = urls.iter().find(|u| **u != last_leader).cloned().unwrap();
                if let Some(p) = masters.lock().unwrap().by_url(&follower) {
                    p.restart();
                }
            }
        }
        let leader_lost = matches!(fault, "kill-leader" | "stop-leader");
        if let Some((took, id)) = first_submit(&urls, &hello_sha, t0).await {
            probes.push(id);
            if leader_lost {
                failovers.push(took);
                if slowest.is_none_or(|(t, _, _)| took > t) {
                    slowest = Some((took, round, fault));
                }
            }
        } else {
            eprintln!("chaos_ha: round {round} ({fault}): no Submit accepted within 60 s");
        }
        // A stopped leader gets its SIGCONT, finds itself deposed and exits;
        // the supervisor starts it again.
        if fault == "stop-leader" {
            tokio::time::sleep((Duration::from_millis(3000)).saturating_sub(t0.elapsed())).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some((l, e)) = leader(&url).await {
            if e != last_epoch {
                changes += e.saturating_sub(last_epoch).max(1);
                master_epoch.fetch_add(1, Ordering::SeqCst);
            }
            last_leader = l;
            last_epoch = e;
        }
        println!("chaos_ha: round {round}: {fault}; leader {last_leader} epoch {last_epoch}; {changes} leader changes");
    }
    if let Some(i) = etcd_down.take() {
        etcd.restart(i);
    }

    // Wait for everything to end.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut final_tasks = Vec::new();
    while Instant::now() < deadline {
        if let Some(ts) = list(&url).await {
            let ended: HashMap<&str, bool> =
                ts.iter().map(|t| (t.task_id.as_str(), common::is_terminal(t.state))).collect();
            let done = expected.keys().chain(probes.iter()).all(|id| ended.get(id.as_str()) == Some(&true));
            let fw_done = remote.ended() >= fw_tasks;
            final_tasks = ts;
            if done && fw_done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), fw).await;

    // Invariants.
    let mut failures = Vec::new();
    let by_id: HashMap<&str, &v1::TaskSummary> = final_tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let (mut finished, mut retried) = (0, 0);
    let mut cache: HashMap<u64, u64> = HashMap::new();
    for (id, input) in &expected {
        match by_id.get(id.as_str()) {
            None => failures.push(format!("acknowledged submission {id} is missing")),
            Some(t) => {
                if t.attempt > 1 {
                    retried += 1;
                }
                match wasmos_proto::state_from_wire(t.state) {
                    Some(wasmos_model::TaskState::Finished) => {
                        finished += 1;
                        let want = *cache.entry(*input).or_insert_with(|| primes_below(*input));
                        let out = t
                            .outcome
                            .as_ref()
                            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                            .unwrap_or_default();
                        if out != format!("{want} primes below {input}\n") {
                            failures.push(format!("task {id} finished with wrong output {out:?}"));
                        }
                    }
                    other => failures.push(format!("task {id} ended as {other:?}, not finished")),
                }
            }
        }
    }
    for id in &probes {
        match by_id.get(id.as_str()).and_then(|t| wasmos_proto::state_from_wire(t.state)) {
            Some(wasmos_model::TaskState::Finished) => {}
            other => {
                failures.push(format!("probe task {id} (a Submit acknowledged right after a fault) ended as {other:?}"))
            }
        }
    }
    let events = {
        let seen = seen.lock().unwrap();
        failures.extend(seen.check(|id| by_id.get(id).map(|t| t.attempt).unwrap_or(1)));
        seen.events
    };
    let fw_done = remote.ended();
    if fw_done < fw_tasks {
        failures.push(format!("remote framework saw {fw_done} of its {fw_tasks} tasks end"));
    }
    // etcd's own history: who wrote in which epoch.
    let key = "/wasmos/meta/commit";
    let (epochs_written, writes) = match etcd::key_history(&endpoints, key).await {
        Ok(h) => {
            let (f, n) = etcd::check_epochs(&h);
            failures.extend(f);
            (n, h.len())
        }
        Err(e) => {
            failures.push(format!("reading etcd's history: {e}"));
            (0, 0)
        }
    };
    failovers.sort();
    println!("chaos --ha summary");
    println!("  tasks submitted: {} batch + {} probes + {fw_tasks} remote", expected.len(), probes.len());
    println!("  finished: {finished}  retried: {retried}  remote ended: {fw_done}");
    println!("  rounds: {round}; faults: {faults:?}");
    println!(
        "  leader changes: {changes} (epochs that wrote: {epochs_written}; commit writes in etcd's history: {writes})"
    );
    println!("  master restarts by the supervisor: {}", masters.lock().unwrap().restarts);
    println!(
        "  leader lost -> next leader accepts a Submit: p50 {:?}, p99 {:?}, max {:?} over {} faults (target p99 <= 2 s)",
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.last().copied().unwrap_or_default(),
        failovers.len()
    );
    if let Some((t, r, f)) = slowest {
        println!("  slowest failover: {t:?} in round {r} ({f})");
    }
    println!("  status events observed: {events}");
    if failures.is_empty() {
        println!("  invariants: all hold");
        println!("1 passed, 0 failed");
        true
    } else {
        println!("  invariants FAILED:");
        for f in failures.iter().take(20) {
            println!("    - {f}");
        }
        println!("0 passed, 1 failed");
        false
    }
}
