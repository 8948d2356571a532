//! Benchmarks of one agent, run by `cargo xtask bench density|noisy`: a real
//! `wasmos master` and one `wasmos agent` process on loopback, everything
//! through the gRPC API (submit → offers → launch → RUNNING).
//!
//! - `density`: submits `--tasks` tasks that each sleep in a WASI clock wait
//!   (one 64 KiB page of memory) and waits until all are RUNNING on the one
//!   agent; reports the time that took and the agent's and master's RSS
//!   before and after, per task.
//! - `noisy`: benign one-shot tasks timed submit → FINISHED one after the
//!   other, first on a quiet agent, then next to `--spinners` tasks spinning
//!   forever in another role with a small share; reports both p50/p99 and
//!   their ratio, and the CPU the spinners got.
//!
//! Usage: agent_bench density|noisy --wasmos PATH [--tasks N] [--spinners N]
//!        [--samples N] [-- AGENT_FLAGS...]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmos_model::Resources;
use wasmos_proto::v1;

#[path = "common/mod.rs"]
mod common;

use common::{Proc, arg, connect, op, wait_up};

/// Sleeps `SECS` seconds in one `poll_oneoff` on a relative monotonic clock.
fn sleeper(secs: u64) -> Vec<u8> {
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 104) (i64.const 1))
    (i32.store8 (i32.const 112) (i32.const 0))
    (i32.store (i32.const 120) (i32.const 1))
    (i64.store (i32.const 128) (i64.const {ns}))
    (i64.store (i32.const 136) (i64.const 0))
    (i32.store16 (i32.const 144) (i32.const 0))
    (drop (call $poll (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300)))))"#,
        ns = secs * 1_000_000_000
    );
    wat::parse_str(wat).unwrap()
}

const SPIN: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;
const NOOP: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

struct Cluster {
    _master: Proc,
    agent: Proc,
    master_pid: u32,
    url: String,
    _dir: tempfile::TempDir,
}

async fn cluster(wasmos: &std::path::Path, agent_flags: &[String]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let state = dir.path().join("master");
    let client_config = dir.path().join("client.json");
    common::trust(&client_config);
    let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let log = std::env::var_os("AGENT_BENCH_LOG").map(PathBuf::from);
    let master = Proc::spawn(
        wasmos,
        &argv(&[
            "master",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
            state.to_str().unwrap(),
            "--client-config",
            client_config.to_str().unwrap(),
            "--registry",
            "in-memory",
        ]),
        log.as_deref(),
    );
    wait_up(&url, Duration::from_secs(30)).await.expect("the master starts");
    let join = common::join_token(&url).await;
    let ca = state.join("tls").join("ca.pem");
    let mut a = argv(&[
        "agent",
        "--master",
        &url,
        "--work-dir",
        dir.path().join("agent").to_str().unwrap(),
        "--ca-cert",
        ca.to_str().unwrap(),
        "--join",
        &join,
    ]);
    a.extend(agent_flags.iter().cloned());
    let agent = Proc::spawn(wasmos, &a, log.as_deref());
    let ch = connect(&url).await;
    assert!(common::wait_agents(&ch, 1, Duration::from_secs(30)).await, "the agent registers");
    let master_pid = master.pid();
    Cluster { _master: master, agent, master_pid, url, _dir: dir }
}

async fn upload(ch: &wasmos_security::client::AuthChannel, bytes: Vec<u8>) -> String {
    let sha = hex::encode(Sha256::digest(&bytes));
    let mut art = v1::artifacts_client::ArtifactsClient::new(ch.clone());
    art.upload(tokio_stream::iter(vec![v1::Chunk { sha256: sha.clone(), data: bytes, ..Default::default() }]))
        .await
        .expect("upload");
    sha
}

fn submit(sha: &str, count: u32, res: &str, timeout_ms: u64, role: &str) -> v1::SubmitRequest {
    v1::SubmitRequest {
        template: Some(v1::TaskSpec {
            name: "bench".into(),
            module_sha256: sha.to_string(),
            resources: Some(wasmos_proto::resources_to_wire(&Resources::parse(res).unwrap())),
            limits: Some(v1::Limits { mem_bytes: 128 << 10, timeout_ms, max_output_bytes: 1024, ..Default::default() }),
            ..Default::default()
        }),
        count,
        role: role.to_string(),
        ..Default::default()
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let wasmos = PathBuf::from(arg(&args, "--wasmos").expect("--wasmos PATH"));
    let agent_flags: Vec<String> =
        args.iter().position(|a| a == "--").map(|i| args[i + 1..].to_vec()).unwrap_or_default();
    match args.get(1).map(String::as_str) {
        Some("density") => density(&wasmos, &args, &agent_flags).await,
        Some("noisy") => noisy(&wasmos, &args, &agent_flags).await,
        _ => panic!("usage: agent_bench density|noisy --wasmos PATH ..."),
    }
}

async fn density(wasmos: &std::path::Path, args: &[String], agent_flags: &[String]) {
    let n: u32 = arg(args, "--tasks").map(|s| s.parse().unwrap()).unwrap_or(50_000);
    let mut flags = vec!["--resources".to_string(), "cpus:64;mem:20GiB".to_string()];
    flags.extend(agent_flags.iter().cloned());
    let c = cluster(wasmos, &flags).await;
    let ch = connect(&c.url).await;
    // Past the time it takes to launch them all.
    let sha = upload(&ch, sleeper(600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (agent_idle, master_idle) =
        (common::rss_bytes(c.agent.pid()).unwrap_or(0), common::rss_bytes(c.master_pid).unwrap_or(0));
    let t0 = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(10_000);
        op(&ch).submit(submit(&sha, k, "cpus:0.001;mem:128KiB", 900_000, "")).await.expect("submit");
        left -= k;
    }
    let submitted = t0.elapsed();
    let mut last_print = Instant::now();
    let (mut running, mut starting, mut slots) = (0, 0, 0);
    while t0.elapsed() < Duration::from_secs(600) {
        let agents = op(&ch).list_agents(v1::ListAgentsRequest::default()).await.expect("agents").into_inner().agents;
        let a = agents.first().cloned().unwrap_or_default();
        let o = op(&ch).overview(v1::OverviewRequest {}).await.expect("overview").into_inner();
        running = o.tasks_by_state.get("running").copied().unwrap_or(0);
        starting = a.tasks_starting;
        slots = a.slots_in_use;
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "agent_bench: {:>5.1} s: {running} running on the master's books; the agent has {} live, {starting} starting, {slots} slots in use",
                t0.elapsed().as_secs_f64(),
                a.tasks_live
            );
            last_print = Instant::now();
        }
        if running as u32 >= n && a.tasks_live >= n && starting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_running = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (agent_rss, master_rss) =
        (common::rss_bytes(c.agent.pid()).unwrap_or(0), common::rss_bytes(c.master_pid).unwrap_or(0));
    let per = |loaded: u64, idle: u64| loaded.saturating_sub(idle) as f64 / n as f64 / 1024.0;
    println!(
        "density: {running} of {n} sleeping tasks RUNNING on one agent after {:.1} s (submit calls {:.1} s); \
         {slots} sandbox slots in use, {starting} starting",
        all_running.as_secs_f64(),
        submitted.as_secs_f64()
    );
    println!(
        "density: agent RSS {:.0} MiB idle -> {:.0} MiB ({:.1} KiB per task); master RSS {:.0} MiB idle -> {:.0} MiB ({:.1} KiB per task)",
        mib(agent_idle),
        mib(agent_rss),
        per(agent_rss, agent_idle),
        mib(master_idle),
        mib(master_rss),
        per(master_rss, master_idle)
    );
    if (running as u32) < n {
        eprintln!("agent_bench: only {running} of {n} tasks reached RUNNING");
        std::process::exit(1);
    }
}

async fn noisy(wasmos: &std::path::Path, args: &[String], agent_flags: &[String]) {
    let spinners: u32 = arg(args, "--spinners").map(|s| s.parse().unwrap()).unwrap_or(200);
    let samples: usize = arg(args, "--samples").map(|s| s.parse().unwrap()).unwrap_or(300);
    let mut flags = vec!["--resources".to_string(), "cpus:2;mem:8GiB".to_string()];
    flags.extend(agent_flags.iter().cloned());
    let c = cluster(wasmos, &flags).await;
    let ch = connect(&c.url).await;
    let noop = upload(&ch, wat::parse_str(NOOP).unwrap()).await;
    let spin = upload(&ch, wat::parse_str(SPIN).unwrap()).await;
    let mut watch = Watch::new(&ch).await;
    // Warm-up: the agent fetches and compiles the module once.
    let ids = op(&ch).submit(submit(&noop, 10, "cpus:0.1;mem:1MiB", 60_000, "")).await.unwrap().into_inner().task_ids;
    watch.wait(ids.into_iter().collect()).await;

    let sample = |label: &'static str| {
        let ch = ch.clone();
        let noop = noop.clone();
        async move {
            let mut w = Watch::new(&ch).await;
            let mut lat = Vec::with_capacity(samples);
            for _ in 0..samples {
                let t0 = Instant::now();
                let id = op(&ch)
                    .submit(submit(&noop, 1, "cpus:0.1;mem:1MiB", 60_000, ""))
                    .await
                    .unwrap()
                    .into_inner()
                    .task_ids
                    .remove(0);
                w.wait(HashSet::from([id])).await;
                lat.push(t0.elapsed());
            }
            lat.sort();
            let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
            let (p50, p99) = (pct(0.5), pct(0.99));
            println!(
                "noisy: {label}: {samples} benign tasks, submit -> FINISHED: p50 {:.3} ms, p99 {:.3} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
            (p50, p99)
        }
    };
    let (_, quiet99) = sample("quiet").await;
    // The noisy neighbours: a role with a small share, each spinner 0.001 cpus.
    let ids = op(&ch)
        .submit(submit(&spin, spinners, "cpus:0.001;mem:1MiB", 3_600_000, "noisy"))
        .await
        .expect("submit spinners")
        .into_inner()
        .task_ids;
    let t0 = Instant::now();
    loop {
        let o = op(&ch).overview(v1::OverviewRequest {}).await.expect("overview").into_inner();
        if o.tasks_by_state.get("running").copied().unwrap_or(0) as u32 >= spinners {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the spinners did not all start within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu0 = common::cpu_time(c.agent.pid()).unwrap_or_default();
    let (_, noisy99) = sample("next to spinners").await;
    let cpu = common::cpu_time(c.agent.pid()).unwrap_or_default().saturating_sub(cpu0);
    println!(
        "noisy: p99 next to {spinners} spinners / quiet p99 = {:.2} (the agent's process used {:.1} s of CPU meanwhile)",
        noisy99.as_secs_f64() / quiet99.as_secs_f64(),
        cpu.as_secs_f64()
    );
    for id in ids {
        let _ = op(&ch).kill_task(v1::TaskActionRequest { task_id: id }).await;
    }
}

/// The batch framework's events, resumed after the last one seen.
struct Watch {
    op: v1::operator_client::OperatorClient<wasmos_security::client::AuthChannel>,
    stream: tonic::Streaming<v1::WatchEvent>,
    last: u64,
}

impl Watch {
    async fn new(ch: &wasmos_security::client::AuthChannel) -> Watch {
        let mut o = op(ch);
        let req = v1::WatchRequest { framework_id: "batch".into(), ..Default::default() };
        let stream = o.watch(req).await.expect("watch").into_inner();
        Watch { op: o, stream, last: 0 }
    }

    async fn wait(&mut self, mut ids: HashSet<String>) {
        while !ids.is_empty() {
            match tokio::time::timeout(Duration::from_secs(120), self.stream.message())
                .await
                .expect("no event for 120 s")
            {
                Ok(Some(ev)) => {
                    self.last = ev.seq;
                    if let Some(v1::watch_event::Event::Task(st)) = ev.event
                        && wasmos_proto::state_from_wire(st.state).is_some_and(|s| s.is_terminal())
                    {
                        ids.remove(&st.task_id);
                    }
                }
                Ok(None) | Err(_) => {
                    let req = v1::WatchRequest { framework_id: "batch".into(), from: Some(self.last) };
                    self.stream = self.op.watch(req).await.expect("resuming the watch").into_inner();
                }
            }
        }
    }
}
