//! Fault-injection suite, run by `cargo xtask chaos`: real `wasmos master`
//! and `wasmos agent` processes on loopback, a workload of batch tasks plus a
//! remote framework, and while it runs: `kill -9` the master and restart it,
//! `kill -9` an agent and restart it, SIGSTOP an agent past the heartbeat
//! timeout and SIGCONT it, drop the remote framework's connection and
//! reconnect it. Then it checks the invariants and prints a summary; it exits
//! non-zero if any invariant fails.
//!
//! Usage: chaos --wasmos PATH --guests DIR [--tasks N] [--framework-tasks N]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use wasmos_model::Resources;
use wasmos_proto::v1;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

struct Proc {
    child: Child,
    argv: Vec<String>,
}

impl Proc {
    fn spawn(bin: &Path, argv: &[String]) -> Proc {
        let log = std::env::var_os("CHAOS_LOG")
            .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok())
            .map(Stdio::from)
            .unwrap_or_else(Stdio::null);
        let child =
            Command::new(bin).args(argv).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn");
        Proc { child, argv: argv.to_vec() }
    }
    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn primes_below(n: u64) -> u64 {
    (2..n).filter(|k| (2..).take_while(|d| d * d <= *k).all(|d| k % d != 0)).count() as u64
}

async fn connect(url: &str) -> Channel {
    loop {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn op(ch: &Channel) -> v1::operator_client::OperatorClient<Channel> {
    v1::operator_client::OperatorClient::new(ch.clone()).max_decoding_message_size(1 << 30)
}

/// Every task the master knows, walking the pages.
async fn list(url: &str) -> Option<Vec<v1::TaskSummary>> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string()).ok()?.connect().await.ok()?;
    let (mut out, mut page_token) = (Vec::new(), String::new());
    loop {
        let req = v1::ListTasksRequest { page_token, page_size: 10_000, ..Default::default() };
        let r = op(&ch).list_tasks(req).await.ok()?.into_inner();
        out.extend(r.tasks);
        if r.next_page_token.is_empty() {
            return Some(out);
        }
        page_token = r.next_page_token;
    }
}

/// Records every task event the master publishes, reconnecting across restarts.
fn watch_all(url: String, seen: Arc<Mutex<Vec<v1::TaskStatus>>>) {
    tokio::spawn(async move {
        loop {
            let ch = connect(&url).await;
            if let Ok(s) = op(&ch).watch(v1::WatchRequest::default()).await {
                let mut s = s.into_inner();
                while let Ok(Some(ev)) = s.message().await {
                    if let Some(v1::watch_event::Event::Task(t)) = ev.event {
                        seen.lock().unwrap().push(t);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A remote framework: launches `want` hello tasks, acknowledges updates,
/// returns when told to disconnect (or when all its tasks ended).
async fn framework(
    url: String,
    id: String,
    sha: String,
    want: usize,
    launched: Arc<Mutex<usize>>,
    ended: Arc<Mutex<HashSet<String>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> String {
    let ch = connect(&url).await;
    let mut client = v1::scheduler_client::SchedulerClient::new(ch);
    let info = v1::FrameworkInfo {
        framework_id: id.clone(),
        name: "chaos-remote".into(),
        role: "remote".into(),
        failover_timeout_s: 600.0,
    };
    let mut events = match client.subscribe(v1::SubscribeRequest { framework: Some(info) }).await {
        Ok(s) => s.into_inner(),
        Err(_) => return id,
    };
    let mut fid = id;
    loop {
        let ev = tokio::select! {
            _ = stop.wait_for(|s| *s) => return fid,
            ev = events.message() => ev,
        };
        let Ok(Some(ev)) = ev else { return fid };
        match ev.event {
            Some(v1::event::Event::Subscribed(s)) => {
                fid = s.framework_id;
                // After a reconnect, ask explicitly about every task launched and
                // not yet seen ending: ones the master never recorded (its
                // accept was not acknowledged) come back as LOST.
                let open: Vec<String> = {
                    let n = *launched.lock().unwrap();
                    let ended = ended.lock().unwrap();
                    (1..=n).map(|i| format!("remote-{i}")).filter(|t| !ended.contains(t)).collect()
                };
                if !open.is_empty() {
                    let call = v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: open });
                    let _ = client.call(v1::Call { framework_id: fid.clone(), call: Some(call) }).await;
                }
            }
            Some(v1::event::Event::Offers(o)) => {
                for offer in o.offers {
                    let tasks: Vec<v1::TaskSpec> = {
                        let mut n = launched.lock().unwrap();
                        let mut tasks = Vec::new();
                        while *n < want && tasks.len() < 10 {
                            *n += 1;
                            tasks.push(v1::TaskSpec {
                                task_id: format!("remote-{}", *n),
                                name: "hello.wasm".into(),
                                module_sha256: sha.clone(),
                                resources: Some(wasmos_proto::resources_to_wire(
                                    &Resources::parse("cpus:0.05;mem:8MiB").unwrap(),
                                )),
                                ..Default::default()
                            });
                        }
                        tasks
                    };
                    let call = if tasks.is_empty() {
                        v1::call::Call::Decline(v1::call::Decline {
                            offer_ids: vec![offer.offer_id],
                            filters: Some(v1::Filters { refuse_seconds: Some(1.0) }),
                        })
                    } else {
                        v1::call::Call::Accept(v1::call::Accept {
                            offer_ids: vec![offer.offer_id],
                            launch: tasks,
                            filters: None,
                        })
                    };
                    let _ = client.call(v1::Call { framework_id: fid.clone(), call: Some(call) }).await;
                }
            }
            Some(v1::event::Event::Update(u)) => {
                let Some(st) = u.status else { continue };
                if wasmos_proto::state_from_wire(st.state).is_some_and(|s| s.is_terminal()) {
                    ended.lock().unwrap().insert(st.task_id.clone());
                }
                if !st.uuid.is_empty() {
                    let ack = v1::call::Call::Acknowledge(v1::call::Acknowledge {
                        agent_id: st.agent_id,
                        task_id: st.task_id,
                        uuid: st.uuid,
                    });
                    let _ = client.call(v1::Call { framework_id: fid.clone(), call: Some(ack) }).await;
                }
            }
            _ => {}
        }
    }
}

async fn wait_up(url: &str, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if list(url).await.is_some() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

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
    let url = format!("http://127.0.0.1:{port}");
    let state = dir.path().join("master");
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent_argv = |name: &str| -> Vec<String> {
        [
            "agent",
            "--master",
            &url,
            "--resources",
            "cpus:2;mem:2GiB",
            "--work-dir",
            dir.path().join(name).to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut master = Proc::spawn(&wasmos, &master_argv);
    wait_up(&url, Duration::from_secs(30)).await.expect("master starts");
    let mut agent_a = Proc::spawn(&wasmos, &agent_argv("agent-a"));
    let agent_b = Proc::spawn(&wasmos, &agent_argv("agent-b"));
    let ch = connect(&url).await;
    for _ in 0..300 {
        if op(&ch).list_agents(v1::ListAgentsRequest::default()).await.map(|r| r.into_inner().agents.len()).unwrap_or(0)
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    watch_all(url.clone(), seen.clone());

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
        art.upload(tokio_stream::iter(vec![v1::Chunk { sha256: sha.clone(), data: bytes }])).await.expect("upload");
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
    let launched = Arc::new(Mutex::new(0usize));
    let fw_ended = Arc::new(Mutex::new(HashSet::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fw = tokio::spawn(framework(
        url.clone(),
        String::new(),
        hello_sha.clone(),
        fw_tasks,
        launched.clone(),
        fw_ended.clone(),
        stop_rx,
    ));

    // Round 1, then kill -9 the master and restart it.
    let (ids, input) = submit(per, 1).await;
    submitted += ids.len();
    for id in ids {
        expected.insert(id, input);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    master.kill9();
    let t0 = Instant::now();
    let _master2 = Proc::spawn(&wasmos, &master.argv.clone());
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
    let _agent_a2 = Proc::spawn(&wasmos, &agent_a.argv.clone());
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
    let fw2 = tokio::spawn(framework(
        url.clone(),
        fid.clone(),
        hello_sha.clone(),
        fw_tasks,
        launched.clone(),
        fw_ended.clone(),
        stop_rx2,
    ));
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
            let fw_done = fw_ended.lock().unwrap().len() >= fw_tasks;
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
    // Each applied status update is published once: no UUID twice on the watch stream.
    let events = seen.lock().unwrap().clone();
    let mut uuids = HashSet::new();
    let mut terminal_events: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        if !e.uuid.is_empty() && !uuids.insert(e.uuid.clone()) {
            failures.push(format!("status update {} of task {} applied twice", hex::encode(&e.uuid), e.task_id));
        }
        if wasmos_proto::state_from_wire(e.state).is_some_and(|s| s.is_terminal()) && e.reason != "reconciliation" {
            *terminal_events.entry(e.task_id.clone()).or_default() += 1;
        }
    }
    for (id, n) in &terminal_events {
        // A batch task lost with attempts left is retried: LOST then its final state.
        let retries = by_id.get(id.as_str()).map(|t| t.attempt.saturating_sub(1) as usize).unwrap_or(0);
        if *n > 1 + retries {
            let history: Vec<String> = events
                .iter()
                .filter(|e| &e.task_id == id)
                .map(|e| {
                    format!(
                        "{}:{}:{}:{}:{}",
                        wasmos_proto::state_from_wire(e.state).map(|s| s.to_string()).unwrap_or_default(),
                        e.reason,
                        hex::encode(&e.uuid).get(..6).unwrap_or(""),
                        e.agent_id,
                        e.timestamp_ms % 100000
                    )
                })
                .collect();
            failures.push(format!("task {id} reached a terminal state {n} times: {}", history.join(" ")));
        }
    }
    let fw_done = fw_ended.lock().unwrap().len();
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
    match wasmos_host::registry_tasks(&state) {
        Ok(reg) => {
            let mismatched: Vec<_> = api.iter().filter(|(id, st)| reg.get(*id) != Some(st)).take(5).collect();
            if !mismatched.is_empty() {
                failures.push(format!(
                    "registry disagrees with the Operator API for {} task(s), e.g. {mismatched:?}",
                    mismatched.len()
                ));
            }
        }
        Err(e) => failures.push(format!("registry does not open: {e}")),
    }
    println!("chaos summary");
    println!("  tasks submitted: {submitted} batch + {fw_tasks} remote");
    println!("  finished: {finished}  retried: {retried}  lost: {lost}  remote ended: {fw_done}");
    println!("  faults injected: {}", faults.len());
    for f in &faults {
        println!("    - {f}");
    }
    println!("  recovery after master restart: {recovery:?} (target <= 1 s)");
    println!("  status events observed: {}", events.len());
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
