//! Bad networks, for real: `cargo xtask chaos --netns` (root). A master in
//! one network namespace, three agents in three others (the full `wasmos
//! agent` and two compiler-free `wasmos-edge`), joined by veth pairs on a
//! bridge in the master's namespace. Every link is slow and lossy the whole
//! time: a bandwidth cap (tc tbf), random packet loss both ways (iptables
//! statistic) and 100-300 ms of delay each way (a relay in the master's
//! namespace: this kernel has no sch_netem, see below). While a sustained
//! workload runs (short and long batch tasks, every --on-disconnect policy):
//! agent 1 is cut off (all its packets dropped) for --partition; agent 2 is
//! cut off, `kill -9`ed and restarted while still cut off, then let back.
//! Afterwards: every task ended, finished ones with the right output; no
//! task ended more often than it had attempts; every agent update arrived
//! once (no UUID twice) and, per task and attempt, in the order the agent
//! made them; nothing after a task's end; no gap in the watch stream; no
//! spooled update dropped; `keep` tasks cut off on agent 1 were never
//! replaced, and `stop-after` ones there were stopped by the agent itself.
//!
//! Delay: `tc qdisc ... netem` answers "Specified qdisc kind is unknown"
//! here (the kernel is built without sch_netem), so each agent reaches the
//! master through a relay that holds every chunk 100-300 ms (order kept)
//! before passing it on; loss, the bandwidth cap and partitions are the
//! kernel's own, on the agent's veth.
//!
//! The outer process makes the namespaces and runs itself again inside the
//! master's (`--inner`), then deletes them whatever happened; namespaces of
//! an earlier run that was killed are deleted first.
//!
//! Usage: chaos_netns --wasmos PATH --edge PATH --guests DIR [--partition DUR]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmos_model::{Resources, TaskState};
use wasmos_proto::v1;

#[path = "common/mod.rs"]
mod common;

use common::{History, Proc, arg, connect, list, op, primes_below, watch_all};

const AGENTS: usize = 3;
const NET: &str = "10.231.0";
/// Namespace and interface names start with this and the outer pid.
const PREFIX: &str = "wxn";
/// Each agent's link: the cap (both ways) and the loss (each way).
const RATE: &str = "8mbit";
const LOSS: &str = "0.02";
const DELAY_MS: (u64, u64) = (100, 300);
/// The pinned tasks' input: a few seconds of CPU, tens of seconds at the
/// 0.2 cpus they get (`--cpu-limit hard`).
const PINNED_INPUT: u64 = 8_000_000;
const PINNED_CPUS: &str = "cpus:0.2;mem:16MiB";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match arg(&args, "--inner") {
        Some(prefix) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let ok = rt.block_on(inner(&args, &prefix));
            std::process::exit(if ok { 0 } else { 1 });
        }
        None => std::process::exit(outer(&args)),
    }
}

// ---------------------------------------------------------------- the network

fn ip(args: &[&str]) {
    sh("ip", args);
}

fn in_ns(ns: &str, prog: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, prog];
    all.extend_from_slice(args);
    sh("ip", &all);
}

fn sh(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    if !out.status.success() {
        panic!("{prog} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
}

fn ns_master(prefix: &str) -> String {
    format!("{prefix}m")
}
fn ns_agent(prefix: &str, i: usize) -> String {
    format!("{prefix}a{i}")
}
fn agent_ip(i: usize) -> String {
    format!("{NET}.{}", 10 + i)
}

/// The namespaces of this run; deleted (with their veths) when dropped.
struct Net {
    names: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Deletes namespaces left by a run whose process is gone.
fn clean_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("chaos_netns: deleting namespace {name} of an earlier run");
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn build_net(prefix: &str) -> Net {
    let m = ns_master(prefix);
    let mut net = Net { names: vec![] };
    ip(&["netns", "add", &m]);
    net.names.push(m.clone());
    in_ns(&m, "ip", &["link", "set", "lo", "up"]);
    in_ns(&m, "ip", &["link", "add", "br0", "type", "bridge"]);
    in_ns(&m, "ip", &["addr", "add", &format!("{NET}.1/24"), "dev", "br0"]);
    in_ns(&m, "ip", &["link", "set", "br0", "up"]);
    for i in 0..AGENTS {
        let a = ns_agent(prefix, i);
        ip(&["netns", "add", &a]);
        net.names.push(a.clone());
        let (mv, av) = (format!("{prefix}m{i}"), format!("{prefix}a{i}"));
        ip(&["link", "add", &mv, "type", "veth", "peer", "name", &av]);
        ip(&["link", "set", &mv, "netns", &m]);
        ip(&["link", "set", &av, "netns", &a]);
        in_ns(&m, "ip", &["link", "set", &mv, "master", "br0"]);
        in_ns(&m, "ip", &["link", "set", &mv, "up"]);
        in_ns(&a, "ip", &["link", "set", "lo", "up"]);
        in_ns(&a, "ip", &["addr", "add", &format!("{}/24", agent_ip(i)), "dev", &av]);
        in_ns(&a, "ip", &["link", "set", &av, "up"]);
        // The cap, both ways: on the agent's end (upload) and the bridge's
        // port (download).
        for (ns, dev) in [(&m, &mv), (&a, &av)] {
            in_ns(
                ns,
                "tc",
                &["qdisc", "add", "dev", dev, "root", "tbf", "rate", RATE, "burst", "32kbit", "latency", "400ms"],
            );
        }
        // Random loss both ways, in the agent's namespace.
        for chain in ["INPUT", "OUTPUT"] {
            in_ns(
                &a,
                "iptables",
                &["-A", chain, "-m", "statistic", "--mode", "random", "--probability", LOSS, "-j", "DROP"],
            );
        }
    }
    net
}

/// Cuts agent `i` off (every packet dropped both ways) or lets it back.
fn partition(prefix: &str, i: usize, cut: bool) {
    let a = ns_agent(prefix, i);
    for chain in ["INPUT", "OUTPUT"] {
        if cut {
            in_ns(&a, "iptables", &["-I", chain, "1", "-j", "DROP"]);
        } else {
            in_ns(&a, "iptables", &["-D", chain, "1"]);
        }
    }
}

fn outer(args: &[String]) -> i32 {
    if Command::new("ip").args(["netns", "list"]).output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("chaos_netns: `ip netns` does not work here; it needs root and iproute2");
        return 2;
    }
    clean_stale();
    let prefix = format!("{PREFIX}{}", std::process::id());
    let net = match std::panic::catch_unwind(|| build_net(&prefix)) {
        Ok(n) => n,
        Err(_) => {
            // build_net panicked after saying what failed; delete what it made.
            for n in [ns_master(&prefix)].into_iter().chain((0..AGENTS).map(|i| ns_agent(&prefix, i))) {
                let _ = Command::new("ip").args(["netns", "del", &n]).status();
            }
            eprintln!("chaos_netns: cannot build the test network (needs root, iproute2, iptables and tc tbf)");
            return 2;
        }
    };
    let me = std::env::current_exe().expect("own path");
    let status = Command::new("ip")
        .args(["netns", "exec", &ns_master(&prefix)])
        .arg(me)
        .args(&args[1..])
        .args(["--inner", &prefix])
        .status();
    drop(net);
    match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("chaos_netns: cannot run itself in the master's namespace: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------- the delay

/// A relay at `listen` (in the master's namespace) to the master at `to`:
/// each chunk read is written out 100-300 ms later, in order.
async fn relay(listen: tokio::net::TcpListener, to: std::net::SocketAddr, seed: u64) {
    let mut n = 0u64;
    loop {
        let Ok((inbound, _)) = listen.accept().await else { continue };
        n += 1;
        let Ok(outbound) = tokio::net::TcpStream::connect(to).await else { continue };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (ri, wi) = inbound.into_split();
        let (ro, wo) = outbound.into_split();
        tokio::spawn(delayed(ri, wo, seed ^ (n << 1)));
        tokio::spawn(delayed(ro, wi, seed ^ (n << 1 | 1)));
    }
}

async fn delayed(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, seed: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut rng = common::Rng::new(seed | 1);
    let mut last = tokio::time::Instant::now();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                let d = DELAY_MS.0 + rng.below((DELAY_MS.1 - DELAY_MS.0) as usize) as u64;
                let at = (tokio::time::Instant::now() + Duration::from_millis(d)).max(last);
                last = at;
                if tx.send((at, buf[..k].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

// ---------------------------------------------------------------- the run

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Default,
    Keep,
    StopAfter,
    ReplaceAfter,
}

impl Policy {
    fn wire(self, after: Duration) -> String {
        match self {
            Policy::Default => String::new(),
            Policy::Keep => "keep".into(),
            Policy::StopAfter => format!("stop-after {}s", after.as_secs()),
            Policy::ReplaceAfter => format!("replace-after {}s", after.as_secs()),
        }
    }
}

const POLICIES: [Policy; 4] = [Policy::Default, Policy::Keep, Policy::StopAfter, Policy::ReplaceAfter];

async fn inner(args: &[String], prefix: &str) -> bool {
    let wasmos = PathBuf::from(arg(args, "--wasmos").expect("--wasmos PATH"));
    let edge = PathBuf::from(arg(args, "--edge").expect("--edge PATH"));
    let guests = PathBuf::from(arg(args, "--guests").expect("--guests DIR"));
    let part = arg(args, "--partition")
        .map(|s| wasmos_model::parse_duration(&s).expect("--partition DUR, e.g. 60s"))
        .unwrap_or(Duration::from_secs(60));
    // The stop-after/replace-after deadline: short, so that the pinned
    // tasks (tens of seconds) still run when it passes, however long the cut.
    let after = (part / 4).clamp(Duration::from_secs(3), Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let state = dir.path().join("master");
    let client_config = dir.path().join("client.json");
    common::trust(&client_config);
    let log = std::env::var_os("CHAOS_LOG").map(PathBuf::from);
    let log = log.as_deref();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let _master = Proc::spawn(
        &wasmos,
        &s(&[
            "master",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--advertise",
            &format!("{NET}.1"),
            "--state-dir",
            state.to_str().unwrap(),
            "--agent-heartbeat",
            "500ms",
            "--agent-timeout",
            "6s",
            "--client-config",
            client_config.to_str().unwrap(),
        ]),
        log,
    );
    common::wait_up(&url, Duration::from_secs(60)).await.expect("the master starts");
    let join = common::join_token(&url).await;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let relay_at = tokio::net::TcpListener::bind(format!("{NET}.1:0")).await.expect("relay address");
        let relay_port = relay_at.local_addr().unwrap().port();
        tokio::spawn(relay(relay_at, ([127, 0, 0, 1], port).into(), 0x9e37_79b9 + i as u64));
        let bin = if i == 0 { wasmos.to_str().unwrap().to_string() } else { edge.to_str().unwrap().to_string() };
        let mut argv = s(&["netns", "exec", &ns_agent(prefix, i), &bin]);
        if i == 0 {
            argv.push("agent".into());
        }
        argv.extend(s(&[
            "--master",
            &format!("https://{NET}.1:{relay_port}"),
            "--ca-cert",
            state.join("tls/ca.pem").to_str().unwrap(),
            "--join",
            &join,
            "--work-dir",
            dir.path().join(format!("agent{i}")).to_str().unwrap(),
            "--resources",
            "cpus:2;mem:1GiB",
            "--attributes",
            &format!("site=a{i}"),
            "--max-backoff",
            "2s",
            // Tasks get their cpus and no more: the long ones take long
            // without taking the two cores the whole cluster shares.
            "--cpu-limit",
            "hard",
        ]));
        agents.push(Proc::spawn(Path::new("ip"), &argv, Some(&agent_log(dir.path(), i))));
    }
    let ch = connect(&url).await;
    assert!(common::wait_agents(&ch, AGENTS, Duration::from_secs(90)).await, "the agents did not register");
    let mut site_of: HashMap<String, String> = HashMap::new();
    for a in op(&ch).list_agents(v1::ListAgentsRequest::default()).await.expect("agents").into_inner().agents {
        let info = a.info.unwrap_or_default();
        let site = info.attributes.iter().find(|x| x.key == "site").map(|x| x.value.clone()).unwrap_or_default();
        site_of.insert(a.agent_id, site);
    }
    let id_of = |site: &str| site_of.iter().find(|(_, s)| s.as_str() == site).map(|(id, _)| id.clone()).unwrap();
    let (a1, a2) = (id_of("a1"), id_of("a2"));

    let seen = Arc::new(Mutex::new(History::new(true)));
    let recorder = seen.clone();
    let watch = watch_all(url.clone(), Arc::new(AtomicU64::new(0)), move |t| recorder.lock().unwrap().record(t));

    let bytes = std::fs::read(guests.join("primes.wasm")).expect("primes.wasm; run `cargo xtask guests`");
    let sha = hex::encode(Sha256::digest(&bytes));
    let mut art = v1::artifacts_client::ArtifactsClient::new(ch.clone());
    art.upload(tokio_stream::iter(vec![v1::Chunk { sha256: sha.clone(), data: bytes, ..Default::default() }]))
        .await
        .expect("upload");

    // The workload: every second a few short tasks and, every other second,
    // a long one (seconds of CPU, so that the cuts find tasks running), each
    // submission with the next --on-disconnect policy.
    let expected: Arc<Mutex<HashMap<String, (u64, Policy)>>> = Arc::default();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load = {
        let (url, sha, expected) = (url.clone(), sha.clone(), expected.clone());
        tokio::spawn(async move {
            let ch = connect(&url).await;
            let mut round = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => return round,
                }
                round += 1;
                let mut batches = vec![(4u32, 2000 + 1000 * (round % 20))];
                if round % 2 == 0 {
                    batches.push((1, 1_500_000 + 100_000 * (round % 5)));
                }
                for (count, input) in batches {
                    let policy = POLICIES[(round as usize + count as usize) % POLICIES.len()];
                    let req = v1::SubmitRequest {
                        template: Some(v1::TaskSpec {
                            name: "primes".into(),
                            module_sha256: sha.clone(),
                            resources: Some(wasmos_proto::resources_to_wire(
                                &Resources::parse("cpus:0.1;mem:16MiB").unwrap(),
                            )),
                            input: input.to_string().into_bytes(),
                            on_disconnect: policy.wire(after),
                            ..Default::default()
                        }),
                        count,
                        ..Default::default()
                    };
                    match op(&ch).submit(req).await {
                        Ok(r) => {
                            let mut e = expected.lock().unwrap();
                            for id in r.into_inner().task_ids {
                                e.insert(id, (input, policy));
                            }
                        }
                        Err(e) => eprintln!("chaos_netns: submit failed: {e}"),
                    }
                }
            }
        })
    };

    // Pinned to agent 1: one long task per policy, running when it is cut off.
    let mut pinned: Vec<(String, Policy)> = Vec::new();
    for policy in POLICIES {
        let req = v1::SubmitRequest {
            template: Some(v1::TaskSpec {
                name: "pinned".into(),
                module_sha256: sha.clone(),
                resources: Some(wasmos_proto::resources_to_wire(&Resources::parse(PINNED_CPUS).unwrap())),
                input: PINNED_INPUT.to_string().into_bytes(),
                on_disconnect: policy.wire(after),
                ..Default::default()
            }),
            count: 1,
            constraints: vec![v1::Attribute { key: "site".into(), value: "a1".into() }],
            ..Default::default()
        };
        let id = op(&ch).submit(req).await.expect("submit pinned").into_inner().task_ids.remove(0);
        expected.lock().unwrap().insert(id.clone(), (PINNED_INPUT, policy));
        pinned.push((id, policy));
    }
    let running = |seen: &History, id: &str| {
        seen.events_kept()
            .iter()
            .any(|e| e.task_id == id && e.agent_id == a1 && e.state == v1::TaskState::TaskRunning as i32)
    };
    let t_wait = Instant::now();
    while !pinned.iter().all(|(id, _)| running(&seen.lock().unwrap(), id)) {
        if t_wait.elapsed() > Duration::from_secs(60) {
            let ts = list(&url).await.unwrap_or_default();
            for (id, _) in &pinned {
                let t = ts.iter().find(|t| &t.task_id == id);
                eprintln!(
                    "chaos_netns: pinned {id}: {:?}",
                    t.map(|t| (common::state_name(t.state), &t.agent_id, &t.message))
                );
            }
            panic!("the pinned tasks did not start on agent 1 within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The faults.
    let mut faults = Vec::new();
    let t0 = Instant::now() - Duration::from_secs(5);
    let at = |d: Duration| tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + d));
    at(Duration::from_secs(5)).await;
    partition(prefix, 1, true);
    faults.push(format!("agent 1 (edge) cut off for {part:?}"));
    at(Duration::from_secs(5) + part / 4).await;
    partition(prefix, 2, true);
    at(Duration::from_secs(5) + part / 2).await;
    agents[2].restart();
    faults.push(format!("agent 2 (edge) cut off for {:?}, kill -9 and restarted {:?} into it", part, part / 4));
    at(Duration::from_secs(5) + part).await;
    partition(prefix, 1, false);
    at(Duration::from_secs(5) + part * 5 / 4).await;
    partition(prefix, 2, false);
    at(Duration::from_secs(15) + part * 5 / 4).await;
    let _ = stop_tx.send(true);
    let rounds = load.await.unwrap();

    // Everything ends.
    let expected = expected.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(240) + part;
    let mut final_tasks = Vec::new();
    while Instant::now() < deadline {
        if let Some(ts) = list(&url).await {
            let by: HashMap<&str, &v1::TaskSummary> = ts.iter().map(|t| (t.task_id.as_str(), t)).collect();
            let done = expected.keys().all(|id| by.get(id.as_str()).is_some_and(|t| common::is_terminal(t.state)));
            final_tasks = ts;
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The last updates are on the watch a moment after the listing shows them.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Invariants.
    let mut failures = Vec::new();
    let by_id: HashMap<&str, &v1::TaskSummary> = final_tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut cache: HashMap<u64, u64> = HashMap::new();
    let mut retried = 0;
    for (id, (input, _)) in &expected {
        let Some(t) = by_id.get(id.as_str()) else {
            failures.push(format!("acknowledged task {id} is missing"));
            continue;
        };
        let state = wasmos_proto::state_from_wire(t.state);
        *ends.entry(state.map(|s| s.to_string()).unwrap_or_default()).or_default() += 1;
        retried += usize::from(t.attempt > 1);
        match state {
            Some(TaskState::Finished) => {
                let want = *cache.entry(*input).or_insert_with(|| primes_below(*input));
                let out =
                    t.outcome.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
                if out != format!("{want} primes below {input}\n") {
                    failures.push(format!("task {id} finished with wrong output {out:?}"));
                }
            }
            // A batch task LOST on its last attempt stays LOST.
            Some(TaskState::Lost) if t.attempt >= wasmos_host::DEFAULT_MAX_ATTEMPTS => {}
            other => failures.push(format!("task {id} ended as {other:?} on attempt {}, not finished", t.attempt)),
        }
    }
    let seen = seen.lock().unwrap();
    failures.extend(seen.check(|id| by_id.get(id).map(|t| t.attempt).unwrap_or(1)));
    let events = seen.events_kept();
    // Per task and attempt, the agent's updates (those with a UUID) in the
    // order it made them, and nothing after an end.
    let mut last: HashMap<(String, u32), (i64, bool)> = HashMap::new();
    let mut unreachable_on: HashMap<String, String> = HashMap::new();
    for e in events {
        let state = wasmos_proto::state_from_wire(e.state);
        if state == Some(TaskState::Unreachable) {
            unreachable_on.entry(e.task_id.clone()).or_insert(e.agent_id.clone());
        }
        if e.uuid.is_empty() || e.reason == "reconciliation" {
            continue;
        }
        let key = (e.task_id.clone(), e.attempt);
        let terminal = state.is_some_and(|s| s.is_terminal());
        if let Some((ts, ended)) = last.get(&key) {
            if *ended && failures.len() < 40 {
                failures.push(format!("task {} attempt {}: {:?} after its end", e.task_id, e.attempt, state));
            } else if e.timestamp_ms < *ts && failures.len() < 40 {
                failures.push(format!("task {} attempt {}: updates out of order", e.task_id, e.attempt));
            }
        }
        last.insert(key, (e.timestamp_ms, terminal));
    }
    let gaps = watch.gaps.load(std::sync::atomic::Ordering::Relaxed);
    if gaps > 0 {
        failures.push(format!("the watch stream skipped events {gaps} time(s)"));
    }
    // The cuts took effect, and the policies held on agent 1 (never restarted).
    let cut_a1: Vec<&String> = unreachable_on.iter().filter(|(_, a)| **a == a1).map(|(t, _)| t).collect();
    let cut_a2 = unreachable_on.values().filter(|a| **a == a2).count();
    if cut_a1.is_empty() || cut_a2 == 0 {
        failures.push(format!("the cuts left no task UNREACHABLE (agent 1: {}, agent 2: {cut_a2})", cut_a1.len()));
    }
    // A keep task running on agent 1 when it was cut off runs on: never
    // again. (One whose launch was lost in the cut never ran: it runs again.)
    let mut kept = 0;
    for t in &cut_a1 {
        let Some((_, policy)) = expected.get(*t) else { continue };
        let ran = events.iter().any(|e| {
            &e.task_id == *t && e.agent_id == a1 && e.attempt == 1 && e.state == v1::TaskState::TaskRunning as i32
        });
        if *policy == Policy::Keep && ran {
            kept += 1;
            if by_id.get(t.as_str()).is_some_and(|s| s.attempt > 1) {
                failures.push(format!("keep task {t}, running on agent 1 when cut off, was run again"));
            }
        }
    }
    // The pinned tasks: each policy did what it says.
    let a1_log = std::fs::read_to_string(agent_log(dir.path(), 1)).unwrap_or_default();
    let agent_stopped = a1_log.contains("stopped 1 task(s) (--on-disconnect stop-after)");
    for (id, policy) in &pinned {
        let ev: Vec<&v1::TaskStatus> = events.iter().filter(|e| &e.task_id == id).collect();
        let attempt = by_id.get(id.as_str()).map(|t| t.attempt).unwrap_or(0);
        let has = |reason: &str| ev.iter().any(|e| e.reason == reason);
        let ok = match policy {
            Policy::Default => has("agent_lost") && attempt >= 2,
            Policy::Keep => attempt == 1 && ev.iter().any(|e| e.state == v1::TaskState::TaskUnreachable as i32),
            Policy::StopAfter => has("stopped_on_disconnect") && attempt >= 2 && agent_stopped,
            Policy::ReplaceAfter => has("replaced_on_disconnect") && attempt >= 2,
        };
        if !ok {
            let h: Vec<String> =
                ev.iter().map(|e| format!("{}:{}:a{}", common::state_name(e.state), e.reason, e.attempt)).collect();
            failures.push(format!(
                "pinned {policy:?} task {id} (final attempt {attempt}{}): {}",
                if *policy == Policy::StopAfter && !agent_stopped { ", agent 1 never said it stopped it" } else { "" },
                h.join(" ")
            ));
        }
    }
    // Stopped by the agents themselves (their word: the master's LOST at its
    // deadline comes first, so the agents' own reports of it are stale).
    let stopped_by_agent: u64 = (0..AGENTS)
        .map(|i| std::fs::read_to_string(agent_log(dir.path(), i)).unwrap_or_default())
        .flat_map(|log| {
            log.lines()
                .filter_map(|l| l.split(": stopped ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    let dropped = dropped_updates(&url).await;
    if dropped != Some(0) {
        failures.push(format!("agents dropped spooled updates: {dropped:?}"));
    }

    println!("chaos --netns summary");
    println!(
        "  links: {RATE} cap, {}% loss each way, {}-{} ms delay each way; partition {part:?}; on-disconnect deadline {after:?}",
        LOSS.parse::<f64>().unwrap() * 100.0,
        DELAY_MS.0,
        DELAY_MS.1
    );
    println!("  tasks: {} submitted in {rounds} rounds; ended {ends:?}; {retried} ran more than once", expected.len());
    println!(
        "  cut off: {} task(s) UNREACHABLE on agent 1 ({kept} keep), {cut_a2} on agent 2; {stopped_by_agent} stopped by their agent (stop-after)",
        cut_a1.len()
    );
    println!("  status events observed: {}; spooled updates dropped: {dropped:?}", seen.events);
    println!("  pinned to agent 1 when cut off: one task per policy {:?}", POLICIES);
    for f in &faults {
        println!("    - {f}");
    }
    if failures.is_empty() {
        println!("  invariants: all hold");
        println!("1 passed, 0 failed");
        true
    } else {
        println!("  invariants FAILED:");
        for f in failures.iter().take(30) {
            println!("    - {f}");
        }
        for i in 0..AGENTS {
            let log = std::fs::read_to_string(agent_log(dir.path(), i)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            println!("  agent {i}'s last log lines:");
            for l in tail.iter().rev() {
                println!("    {l}");
            }
        }
        println!("0 passed, 1 failed");
        false
    }
}

/// Where agent `i` logs: beside $CHAOS_LOG when set (kept), else in the run's dir.
fn agent_log(dir: &Path, i: usize) -> PathBuf {
    match std::env::var_os("CHAOS_LOG") {
        Some(p) => PathBuf::from(format!("{}.agent{i}", p.to_string_lossy())),
        None => dir.join(format!("agent{i}.log")),
    }
}

/// The agents' counted spool drops, from the master's metrics.
async fn dropped_updates(url: &str) -> Option<u64> {
    let ch = connect(url).await;
    let agents = op(&ch).list_agents(v1::ListAgentsRequest::default()).await.ok()?.into_inner().agents;
    Some(agents.iter().map(|a| a.updates_dropped).sum())
}
