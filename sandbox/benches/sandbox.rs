//! `cargo bench -p wasmos-sandbox`: the sandbox's hot paths.
//!
//! - run/noop_cached: instantiate + run + drop of a no-op WASI task whose module
//!   is already compiled (`Prepared` from the cache) — the per-task launch cost.
//! - run/noop_cached_sandbox_dir: the same with a sandbox directory created,
//!   preopened and removed.
//! - run/hello_rust_cached: the Rust hello guest (prints two lines), if built.
//! - compile/*: cold compile of a small module (bytes made unique per iteration
//!   so no cache can answer).
//! - fuel/*: a 10M-iteration compute loop: counting fuel (`meter_fuel`), on
//!   the plain lane (epoch time slices and CPU accounting, the default), and
//!   as raw wasmtime code with neither (the floor).
//! - mem/*: a 10M-load memory loop with 1 GiB memory slots (bounds checks,
//!   the default) and 4 GiB ones (guard pages only).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmos_sandbox::{Limits, RunRequest, Sandbox, SandboxConfig, SandboxDirSpec, TaskControl};

const NOOP: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")))"#;

const LOOP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32) (local $acc i32)
    (loop $l
      (local.set $acc (i32.add (local.get $acc) (i32.mul (local.get $i) (i32.const 7))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10000000))))
    (if (i32.eq (local.get $acc) (i32.const 1)) (then unreachable))))"#;

const MEMLOOP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32) (local $acc i32)
    (loop $l
      (local.set $acc (i32.add (local.get $acc)
        (i32.load (i32.and (i32.mul (local.get $i) (i32.const 4)) (i32.const 65532)))))
      (i32.store (i32.and (i32.mul (local.get $i) (i32.const 12)) (i32.const 65532)) (local.get $acc))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10000000))))
    (if (i32.eq (local.get $acc) (i32.const 1)) (then unreachable))))"#;

fn request() -> RunRequest {
    RunRequest { name: "bench".into(), args: vec!["noop.wasm".into()], limits: Limits::default(), ..Default::default() }
}

/// Appends a custom section so the bytes (and hash) differ but the module does not.
fn unique(bytes: &[u8], n: u64) -> Vec<u8> {
    let mut v = bytes.to_vec();
    let name = b"bench";
    let payload = n.to_le_bytes();
    v.push(0); // custom section id
    v.push((1 + name.len() + payload.len()) as u8);
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.extend_from_slice(&payload);
    v
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox =
        Sandbox::new(SandboxConfig { max_concurrent_tasks: 64, max_metered_tasks: 4, ..Default::default() }).unwrap();
    let control = TaskControl::new();
    let noop = sandbox.prepare(&wat::parse_str(NOOP).unwrap()).unwrap();

    let mut g = c.benchmark_group("run");
    g.bench_function("noop_cached", |b| {
        b.iter(|| {
            let o = rt.block_on(sandbox.run(&noop, request(), &control));
            assert_eq!(o.exit_code, Some(0));
        })
    });
    g.bench_function("noop_cached_sandbox_dir", |b| {
        b.iter(|| {
            let mut r = request();
            r.sandbox_dir = SandboxDirSpec { enabled: true, ..Default::default() };
            let o = rt.block_on(sandbox.run(&noop, r, &control));
            assert_eq!(o.exit_code, Some(0));
        })
    });
    let hello_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/hello.wasm");
    if let Ok(bytes) = std::fs::read(&hello_path) {
        let hello = sandbox.prepare(&bytes).unwrap();
        g.bench_function("hello_rust_cached", |b| {
            b.iter(|| {
                let o = rt.block_on(sandbox.run(&hello, request(), &control));
                assert_eq!(o.exit_code, Some(0));
            })
        });
    } else {
        eprintln!("skipping run/hello_rust_cached: build guests with `cargo xtask guests`");
    }
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let counter = AtomicU64::new(0);
    let noop_bytes = wat::parse_str(NOOP).unwrap();
    g.bench_function("noop_wat_cold", |b| {
        b.iter(|| sandbox.prepare(&unique(&noop_bytes, counter.fetch_add(1, Ordering::Relaxed))).unwrap())
    });
    if let Ok(bytes) = std::fs::read(&hello_path) {
        g.bench_function("hello_rust_67k_cold", |b| {
            b.iter(|| sandbox.prepare(&unique(&bytes, counter.fetch_add(1, Ordering::Relaxed))).unwrap())
        });
    }
    g.finish();

    let loop_bytes: Arc<[u8]> = wat::parse_str(LOOP).unwrap().into();
    let looped = sandbox.prepare(&loop_bytes).unwrap();
    let metered = || {
        let mut r = request();
        r.limits.meter_fuel = true;
        r
    };
    // The floor: the same loop as plain wasmtime code, no fuel, no epochs.
    let raw_engine = wasmtime::Engine::default();
    let raw = wasmtime::Module::new(&raw_engine, &*loop_bytes).unwrap();
    let mut g = c.benchmark_group("fuel");
    g.sample_size(20);
    g.bench_function("loop_10M_metered", |b| b.iter(|| rt.block_on(sandbox.run(&looped, metered(), &control))));
    g.bench_function("loop_10M_plain", |b| b.iter(|| rt.block_on(sandbox.run(&looped, request(), &control))));
    g.bench_function("loop_10M_raw_wasmtime", |b| {
        b.iter(|| {
            let mut store = wasmtime::Store::new(&raw_engine, ());
            let i = wasmtime::Instance::new(&mut store, &raw, &[]).unwrap();
            i.get_typed_func::<(), ()>(&mut store, "_start").unwrap().call(&mut store, ()).unwrap();
        })
    });
    g.finish();

    let mem_bytes: Arc<[u8]> = wat::parse_str(MEMLOOP).unwrap().into();
    let big = Sandbox::new(SandboxConfig {
        max_concurrent_tasks: 4,
        max_metered_tasks: 1,
        max_task_mem: 4 << 30,
        ..Default::default()
    })
    .unwrap();
    let (small_slot, big_slot) = (sandbox.prepare(&mem_bytes).unwrap(), big.prepare(&mem_bytes).unwrap());
    let mut g = c.benchmark_group("mem");
    g.sample_size(20);
    g.bench_function("loop_10M_slot_1g", |b| b.iter(|| rt.block_on(sandbox.run(&small_slot, request(), &control))));
    g.bench_function("loop_10M_slot_4g", |b| b.iter(|| rt.block_on(big.run(&big_slot, request(), &control))));
    g.finish();
}

/// Hosted scheduler callback overhead: `on-offers` with 10 offers on the SJF
/// example (empty queue: it declines all ten and suppresses), and `on-update`.
fn scheduler_benches(c: &mut Criterion) {
    use wasmos_sandbox::sched::{Offer, Scalar, TaskState, TaskStatus};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/sjf.wasm");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("skipping scheduler/*: build guests with `cargo xtask guests`");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox =
        Sandbox::new(SandboxConfig { max_concurrent_tasks: 1, max_metered_tasks: 2, ..Default::default() }).unwrap();
    let mut inst = rt.block_on(sandbox.instantiate_scheduler(bytes.into(), Default::default())).unwrap();
    rt.block_on(inst.init("")).unwrap().unwrap();
    let offers: Vec<Offer> = (0..10)
        .map(|i| Offer {
            id: format!("offer-{i}"),
            agent_id: format!("agent-{i}"),
            hostname: "host".into(),
            resources: vec![
                Scalar { name: "cpus".into(), milli: 2000 },
                Scalar { name: "mem".into(), milli: (4i64 << 30) * 1000 },
            ],
            attributes: vec![("zone".into(), "eu".into())],
        })
        .collect();
    let status = TaskStatus {
        task_id: "t-1".into(),
        agent_id: "agent-1".into(),
        state: TaskState::Finished,
        reason: String::new(),
        message: String::new(),
        outcome: None,
        healthy: None,
        drain_deadline_ms: None,
    };
    let mut g = c.benchmark_group("scheduler");
    g.bench_function("on_offers_10", |b| {
        b.iter(|| {
            let calls = rt.block_on(inst.on_offers(&offers)).unwrap();
            assert_eq!(calls.len(), 11);
        })
    });
    g.bench_function("on_update", |b| b.iter(|| rt.block_on(inst.on_update(&status)).unwrap()));
    g.finish();
}

criterion_group!(sandbox_benches, benches, scheduler_benches);
criterion_main!(sandbox_benches);
