//! Fault-injection suite, run by `cargo xtask chaos`: real `wasmos master`
//! and `wasmos agent` processes on loopback, a workload of batch tasks plus a
//! remote framework, and while it runs: `kill -9` the master and restart it,
//! `kill -9` an agent and restart it, SIGSTOP an agent past the heartbeat
//! timeout and SIGCONT it, drop the remote framework's connection and
//! reconnect it. Then it checks the invariants and prints a summary; it exits
//! non-zero if any invariant fails.
//!
//! Usage: chaos --wasmos PATH --guests DIR [--tasks N] [--framework-tasks N]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmos_model::Resources;
use wasmos_proto::v1;

#[path = "common/mod.rs"]
mod common;

use common::{History, Proc, Remote, arg, connect, list, op, primes_below, wait_up, watch_all};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // All processes are owned by `chaos()` and killed when it returns, also
    // when an invariant failed: only then does the exit code say so.
    let ok = chaos().await;
    std::process::exit(if ok { 0 } else { 1 });
}

async fn chaos() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let wasmos = PathBuf::from(arg(&args, "--wasmos").expect("--wasmos PATH"));
    let guests = PathBuf::from(arg(&args, "--guests").expect("--guests DIR"));
    let total: usize = arg(&args, "--tasks").map(|s| s.parse().unwrap()).unwrap_or(2000);
    let fw_tasks: usize = arg(&args, "--framework-tasks").map(|s| s.parse().unwrap()).unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let state = dir.path().join("master");
    let client_config = dir.path().join("client.json");
    common::trust(&client_config);
    let ca_file = state.join("tls").join("ca.pem");
    let master_argv: Vec<String> = [
        "master",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        state.to_str().unwrap(),
        "--agent-heartbeat",
        "200ms",
        "--agent-timeout",
        "2s",
        "--client-config",
        client_config.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent_argv = |name: &str, join: &str| -> Vec<String> {
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
            join,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let log = std::env::var_os("CHAOS_LOG").map(PathBuf::from);
    let log = log.as_deref();
    let mut master = Proc::spawn(&wasmos, &master_argv, log);
    wait_up(&url, Duration::from_secs(30)).await.expect("master starts");
    let join = common::join_token(&url).await;
    let mut agent_a = Proc::spawn(&wasmos, &agent_argv("agent-a", &join), log);
    let agent_b = Proc::spawn(&wasmos, &agent_argv("agent-b", &join), log);
    let ch = connect(&url).await;
    common::wait_agents(&ch, 2, Duration::from_secs(6)).await;
    let seen = Arc::new(Mutex::new(History::new(true)));
    let master_epoch = Arc::new(AtomicU64::new(0));
    let recorder = seen.clone();
    watch_all(url.clone(), master_epoch.clone(), move |t| recorder.lock().unwrap().record(t));

    // Operator settings that must survive every fault: a role's weight and
    // quota, and a dynamic reservation on one of the agents (both get faults).
    let agents = op(&ch).list_agents(v1::ListAgentsRequest::default()).await.expect("agents").into_inner().agents;
    let first_agent = agents.first().map(|a| a.agent_id.clone());
    let res = |s: &str| Some(wasmos_proto::resources_to_wire(&Resources::parse(s).unwrap()));
    op(&ch)
        .update_role(v1::UpdateRoleRequest {
            role: "eng".into(),
            weight: Some(2.5),
            quota_guarantee: res("cpus:0.2"),
            quota_limit: res("cpus:1"),
            clear_quota: false,
            ..Default::default()
        })
        .await
        .expect("update role");
    let reserved_on = first_agent.expect("an agent");
    op(&ch)
        .reserve(v1::ReserveRequest { agent_id: reserved_on.clone(), role: "eng".into(), resources: res("cpus:0.1") })
        .await
        .expect("reserve");

    // Modules.
    let mut art = v1::artifacts_client::ArtifactsClient::new(ch.clone());
    let upload = |name: &str| {
        let bytes = std::fs::read(guests.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("{name}.wasm: {e}; run `cargo xtask guests`"));
        let sha = hex::encode(Sha256::digest(&bytes));
        (sha, bytes)
    };
    let (primes_sha, primes_bytes) = upload("primes");
    let (hello_sha, hello_bytes) = upload("hello");
    for (sha, bytes) in [(&primes_sha, primes_bytes), (&hello_sha, hello_bytes)] {
        art.upload(tokio_stream::iter(vec![v1::Chunk { sha256: sha.clone(), data: bytes, ..Default::default() }]))
            .await
            .expect("upload");
    }

    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut submitted = 0usize;
    let submit = |n_tasks: usize, round: usize| {
        let url = url.clone();
        let sha = primes_sha.clone();
        async move {
            // Each submission uses one input; primes are counted to check outputs.
            let input = 2000 + 1000 * (round as u64 % 20);
            let ch = connect(&url).await;
            let req = v1::SubmitRequest {
                template: Some(v1::TaskSpec {
                    name: "primes".into(),
                    module_sha256: sha,
                    resources: Some(wasmos_proto::resources_to_wire(&Resources::parse("cpus:0.05;mem:16MiB").unwrap())),
                    input: input.to_string().into_bytes(),
                    ..Default::default()
                }),
                count: n_tasks as u32,
                ..Default::default()
            };
            let ids = op(&ch).submit(req).await.expect("submit").into_inner().task_ids;
            (ids, input)
        }
    };
    let per = (total / 4).max(1);
    let mut faults = Vec::new();

    // Remote framework.
    let remote = Remote::new(&url, "chaos-remote", &hello_sha, "cpus:0.05;mem:8MiB", 10, fw_tasks);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fw = tokio::spawn(remote.clone().run(String::new(), stop_rx));

    // Round 1, then kill -9 the master and restart it.
    let (ids, input) = submit(per, 1).await;
    submitted += ids.len();
    for id in ids {
        expected.insert(id, input);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    master.kill9();
    let t0 = Instant::now();
    let _master2 = Proc::spawn(&wasmos, &master.argv.clone(), log);
    master_epoch.fetch_add(1, Ordering::SeqCst);
    let recovery = wait_up(&url, Duration::from_secs(30)).await.map(|_| t0.elapsed()).expect("master restarts");
    faults.push(format!("kill -9 master, restarted: answering after {recovery:?}"));

    // Round 2, then kill -9 agent A and start it again.
    let (ids, input) = submit(per, 2).await;
    submitted += ids.len();
    for id in ids {
        expected.insert(id, input);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent_a.kill9();
    let _agent_a2 = Proc::spawn(&wasmos, &agent_a.argv.clone(), log);
    faults.push("kill -9 agent a, restarted".into());

    // Round 3, then SIGSTOP agent B past the heartbeat timeout, and SIGCONT.
    let (ids, input) = submit(per, 3).await;
    submitted += ids.len();
    for id in ids {
        expected.insert(id, input);
    }
    agent_b.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    agent_b.signal("-CONT");
    faults.push("SIGSTOP agent b for 3 s (agent timeout 2 s), SIGCONT".into());

    // Drop the remote framework's connection and reconnect with its id.
    let _ = stop_tx.send(true);
    let fid = fw.await.unwrap();
    let (stop_tx2, stop_rx2) = tokio::sync::watch::channel(false);
    let fw2 = tokio::spawn(remote.clone().run(fid.clone(), stop_rx2));
    faults.push(format!("remote framework {fid} disconnected and reconnected"));

    // Round 4.
    let (ids, input) = submit(total - 3 * per, 4).await;
    submitted += ids.len();
    for id in ids {
        expected.insert(id, input);
    }

    // Wait for everything to end.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut final_tasks = Vec::new();
    while Instant::now() < deadline {
        if let Some(ts) = list(&url).await {
            let batch_done = expected.keys().all(|id| {
                ts.iter().any(|t| {
                    &t.task_id == id && wasmos_proto::state_from_wire(t.state).is_some_and(|s| s.is_terminal())
                })
            });
            let fw_done = remote.ended() >= fw_tasks;
            final_tasks = ts;
            if batch_done && fw_done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop_tx2.send(true);
    let _ = fw2.await;

    // Invariants.
    let mut failures = Vec::new();
    let by_id: HashMap<&str, &v1::TaskSummary> = final_tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let mut finished = 0;
    let mut retried = 0;
    let mut lost = 0;
    let mut cache: HashMap<u64, u64> = HashMap::new();
    for (id, input) in &expected {
        match by_id.get(id.as_str()) {
            None => failures.push(format!("acknowledged submission {id} is missing")),
            Some(t) => {
                let state = wasmos_proto::state_from_wire(t.state);
                if t.attempt > 1 {
                    retried += 1;
                }
                match state {
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
                    Some(wasmos_model::TaskState::Lost) => lost += 1,
                    other => failures.push(format!("task {id} ended as {other:?}, not finished")),
                }
            }
        }
    }
    // Each applied status update is published once: no UUID twice on the
    // watch stream; a batch task lost with attempts left is retried (LOST,
    // then its final state), so it may end once per attempt.
    let events_seen = {
        let seen = seen.lock().unwrap();
        failures.extend(seen.check(|id| by_id.get(id).map(|t| t.attempt).unwrap_or(1)));
        seen.events
    };
    let fw_done = remote.ended();
    if fw_done < fw_tasks {
        failures.push(format!("remote framework saw {fw_done} of its {fw_tasks} tasks end"));
    }
    // Role settings and the reservation survived.
    let eng = op(&connect(&url).await)
        .list_roles(v1::ListRolesRequest {})
        .await
        .map(|r| r.into_inner().roles.into_iter().find(|r| r.role == "eng"));
    match eng {
        Ok(Some(r)) => {
            let q = r.quota.clone().unwrap_or_default();
            if r.weight != 2.5
                || q.guarantee != res("cpus:0.2")
                || q.limit != res("cpus:1")
                || r.reserved != res("cpus:0.1")
            {
                failures.push(format!("role eng changed across the faults: {r:?}"));
            }
        }
        other => failures.push(format!("role eng is missing after the faults: {other:?}")),
    }
    // The registry file opens and matches the Operator API.
    let api: BTreeMap<String, String> = final_tasks
        .iter()
        .map(|t| (t.task_id.clone(), wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default()))
        .collect();
    drop(_master2);
    failures.extend(common::check_registry(&state, &api));
    println!("chaos summary");
    println!("  tasks submitted: {submitted} batch + {fw_tasks} remote");
    println!("  finished: {finished}  retried: {retried}  lost: {lost}  remote ended: {fw_done}");
    println!("  faults injected: {}", faults.len());
    for f in &faults {
        println!("    - {f}");
    }
    println!("  recovery after master restart: {recovery:?} (target <= 1 s)");
    println!("  status events observed: {}", events_seen);
    if failures.is_empty() {
        println!("  invariants: all hold");
        println!("1 passed, 0 failed");
    } else {
        println!("  invariants FAILED:");
        for f in failures.iter().take(20) {
            println!("    - {f}");
        }
        println!("0 passed, 1 failed");
        return false;
    }
    true
}
