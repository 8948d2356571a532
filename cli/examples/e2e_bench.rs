//! End-to-end benchmark client, run by `cargo xtask bench e2e` against a
//! `wasmos dev` process: everything goes through the real gRPC API.
//!
//! 1. latency: N single no-op tasks, one at a time, each timed from Submit to
//!    its FINISHED status reaching the batch framework (seen on the Watch
//!    stream) — p50/p99;
//! 2. throughput: M no-op tasks in one submission, timed from Submit until
//!    the last FINISHED status — tasks/s.
//!
//! Usage: e2e_bench --master URL [--tasks 100000] [--latency-samples 1000]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmos_model::Resources;
use wasmos_proto::v1;

const NOOP: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let master = arg(&args, "--master").expect("--master URL");
    let tasks: u32 = arg(&args, "--tasks").map(|s| s.parse().expect("--tasks N")).unwrap_or(100_000);
    let samples: u32 = arg(&args, "--latency-samples").map(|s| s.parse().expect("N")).unwrap_or(1000);
    // The CA and token from the client config `wasmos dev` wrote
    // (WASMOS_CONFIG), as any client of a TLS master.
    let config = wasmos_security::client::config_path()
        .and_then(|p| wasmos_security::client::ClientConfig::read(&p).expect("client config"))
        .unwrap_or_default();
    let target = wasmos_security::client::Target {
        url: master.clone(),
        ca_pem: config.ca_pem,
        identity: None,
        token: config.token,
    };
    let ch = target.connect().await.expect("connect to the master");
    let mut op = v1::operator_client::OperatorClient::new(ch.clone()).max_decoding_message_size(1 << 30);
    let mut art = v1::artifacts_client::ArtifactsClient::new(ch.clone());
    let bytes = wat::parse_str(NOOP).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    art.upload(tokio_stream::iter(vec![v1::Chunk { sha256: sha.clone(), data: bytes, ..Default::default() }]))
        .await
        .unwrap();
    let template = v1::TaskSpec {
        name: "noop".into(),
        module_sha256: sha,
        resources: Some(wasmos_proto::resources_to_wire(&Resources::parse("cpus:0.01;mem:1MiB").unwrap())),
        limits: Some(v1::Limits {
            mem_bytes: 1 << 20,
            timeout_ms: 60_000,
            max_output_bytes: 4096,
            ..Default::default()
        }),
        ..Default::default()
    };
    let submit = |count: u32| v1::SubmitRequest {
        template: Some(template.clone()),
        count,
        priority: 0,
        constraints: vec![],
        max_attempts: 0,
        framework: String::new(),
        estimated_fuel: None,
        role: String::new(),
        signature: String::new(),
    };
    let mut watch = Watch {
        op: op.clone(),
        stream: op
            .watch(v1::WatchRequest { framework_id: "batch".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner(),
        last: 0,
    };

    // Warm-up: the agent downloads and compiles the module once.
    let ids = op.submit(submit(10)).await.unwrap().into_inner().task_ids;
    wait_finished(&mut watch, ids.into_iter().collect()).await;

    // Latency, one task at a time.
    let mut lat = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let t0 = Instant::now();
        let id = op.submit(submit(1)).await.unwrap().into_inner().task_ids.remove(0);
        wait_finished(&mut watch, HashSet::from([id])).await;
        lat.push(t0.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "latency: {samples} single tasks, submit -> FINISHED at the framework: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*lat.last().unwrap())
    );

    // Throughput, one big submission.
    let t0 = Instant::now();
    let ids: HashSet<String> = op.submit(submit(tasks)).await.unwrap().into_inner().task_ids.into_iter().collect();
    let submitted = t0.elapsed();
    let failed = wait_finished(&mut watch, ids).await;
    let total = t0.elapsed();
    println!(
        "throughput: {tasks} no-op tasks, submit -> all FINISHED at the framework: {:.2} s, {:.0} tasks/s \
         (submit call {:.0} ms, {failed} not finished)",
        total.as_secs_f64(),
        tasks as f64 / total.as_secs_f64(),
        ms(submitted)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The batch framework's events, resuming after the last one seen if the
/// stream breaks.
struct Watch {
    op: v1::operator_client::OperatorClient<wasmos_security::client::AuthChannel>,
    stream: tonic::Streaming<v1::WatchEvent>,
    last: u64,
}

impl Watch {
    async fn next(&mut self) -> v1::WatchEvent {
        loop {
            match tokio::time::timeout(Duration::from_secs(120), self.stream.message())
                .await
                .expect("no event for 120 s")
            {
                Ok(Some(ev)) => {
                    self.last = ev.seq;
                    return ev;
                }
                Ok(None) | Err(_) => {
                    let req = v1::WatchRequest { framework_id: "batch".into(), from: Some(self.last) };
                    self.stream = self.op.watch(req).await.expect("resuming the watch").into_inner();
                }
            }
        }
    }
}

/// Waits for a terminal status of every id; returns how many were not FINISHED.
async fn wait_finished(watch: &mut Watch, mut ids: HashSet<String>) -> usize {
    let mut not_finished = 0;
    while !ids.is_empty() {
        let ev = watch.next().await;
        if let Some(v1::watch_event::Event::Task(st)) = ev.event {
            let terminal = wasmos_proto::state_from_wire(st.state).is_some_and(|s| s.is_terminal());
            if terminal && ids.remove(&st.task_id) && st.state != v1::TaskState::TaskFinished as i32 {
                not_finished += 1;
            }
        }
    }
    not_finished
}
