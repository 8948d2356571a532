//! CPU shares: runs take turns on the sandbox's run permits in proportion to
//! their `cpus`, and in hard mode never exceed it. Ratios of thread CPU time,
//! not timings: the machine may be busy, the split between runs still holds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use wasmos_sandbox::{CpuLimit, Limits, OutcomeKind, Sandbox, SandboxConfig, TaskControl};

use crate::{req, wat};

const SPIN: &str = r#"(func (export "_start") (loop (br 0)))"#;

/// These tests measure CPU: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn sandbox(cores: usize, limit: CpuLimit) -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_concurrent_tasks: 8,
        max_metered_tasks: 8,
        cpu_cores: cores,
        cpu_limit: limit,
        ..Default::default()
    })
    .expect("sandbox builds")
}

/// Runs one spinner per weight for `secs`, then kills them; their CPU times.
async fn spin(sb: &Sandbox, weights: &[u64], secs: f64, metered: bool) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut runs = Vec::new();
    for &w in weights {
        let control = TaskControl::new();
        let mut r = req(Limits { timeout: Duration::from_secs(60), meter_fuel: metered, ..Default::default() });
        r.cpu_weight = w;
        let (sb, c) = (sb.clone(), control.clone());
        runs.push((control, tokio::spawn(async move { sb.run_bytes(wat(SPIN), r, &c).await })));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    for (c, _) in &runs {
        c.kill();
    }
    let wall = started.elapsed();
    let mut cpu = Vec::new();
    for (_, h) in runs {
        let o = h.await.unwrap();
        assert_eq!(o.kind, OutcomeKind::Killed, "{o:?}");
        assert_eq!(o.fuel_metered, metered);
        cpu.push(o.cpu_time);
    }
    (cpu, wall)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_contention_cpu_follows_the_shares() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Four spinners on two cores: two of cpus 0.25, two of 0.75.
    let sb = sandbox(2, CpuLimit::Shares);
    let (cpu, _) = spin(&sb, &[250, 250, 750, 750], 3.0, false).await;
    let small = (cpu[0] + cpu[1]).as_secs_f64() / 2.0;
    let big = (cpu[2] + cpu[3]).as_secs_f64() / 2.0;
    let ratio = big / small;
    eprintln!("cpu times {cpu:?}: 0.75 / 0.25 = {ratio:.2}");
    // Without shares the ratio is about 1. The other tests of this binary
    // run meanwhile on the same two cores, and once (of five full runs) that
    // left 2.24; the band below still fails if shares are not enforced.
    assert!((1.8..=4.5).contains(&ratio), "the cpus:0.75 runs got {ratio:.2}x the CPU of the cpus:0.25 ones ({cpu:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_runs_are_shared_the_same_way() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One core, two spinners counting fuel: 1 : 3.
    let sb = sandbox(1, CpuLimit::Shares);
    let (cpu, _) = spin(&sb, &[250, 750], 2.0, true).await;
    let ratio = cpu[1].as_secs_f64() / cpu[0].as_secs_f64();
    eprintln!("cpu times {cpu:?}: {ratio:.2}");
    // As above: about 1 without shares; noise from the tests alongside.
    assert!((1.8..=4.5).contains(&ratio), "{ratio:.2} ({cpu:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_limit_holds_a_lone_run_to_its_cpus() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sb = sandbox(2, CpuLimit::Hard);
    let (cpu, wall) = spin(&sb, &[500], 2.0, false).await;
    let share = cpu[0].as_secs_f64() / wall.as_secs_f64();
    eprintln!("a cpus:0.5 run alone, hard mode: {share:.3} of a core over {wall:?}");
    assert!(share <= 0.55, "it got {share:.3} of a core");
    assert!(share >= 0.05, "it hardly ran: {share:.3} of a core");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_lend_idle_cpu_where_hard_mode_does_not() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The same lone cpus:0.25 run: with shares it takes the idle core.
    let (soft, _) = spin(&sandbox(1, CpuLimit::Shares), &[250], 1.5, false).await;
    let (hard, _) = spin(&sandbox(1, CpuLimit::Hard), &[250], 1.5, false).await;
    eprintln!("a lone cpus:0.25 run: {soft:?} with shares, {hard:?} hard");
    assert!(soft[0] > hard[0] * 2, "shares lent it no more than its share: {soft:?} vs {hard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_a_core_can_be_killed_and_paused() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sb = sandbox(1, CpuLimit::Shares);
    // One spinner holds the only core; a second waits, is paused, resumed
    // and killed; the first still runs and is killed in turn.
    let mut handles = Vec::new();
    let controls = [TaskControl::new(), TaskControl::new()];
    for c in &controls {
        let (sb, c) = (sb.clone(), c.clone());
        let r = req(Limits { timeout: Duration::from_secs(60), ..Default::default() });
        handles.push(tokio::spawn(async move { sb.run_bytes(wat(SPIN), r, &c).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    controls[1].pause();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = controls[1].cpu_time();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(controls[1].cpu_time(), before, "a paused run uses no CPU");
    controls[1].resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in &controls {
        c.kill();
    }
    for h in handles {
        let o = h.await.unwrap();
        assert_eq!(o.kind, OutcomeKind::Killed, "{o:?}");
        assert!(o.cpu_time > Duration::ZERO, "both ran: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_the_pool_waits_unstarted_for_a_slot() {
    let sb = Sandbox::new(SandboxConfig { max_concurrent_tasks: 1, max_metered_tasks: 1, ..Default::default() })
        .expect("sandbox builds");
    let (first, second) = (TaskControl::new(), TaskControl::new());
    let sleep = wat(r#"
      (func (export "_start")
        (i64.store (i32.const 104) (i64.const 1))           ;; userdata
        (i32.store8 (i32.const 112) (i32.const 0))          ;; tag: clock
        (i32.store (i32.const 120) (i32.const 1))           ;; clock id: monotonic
        (i64.store (i32.const 128) (i64.const 300000000))   ;; 300 ms in ns
        (i64.store (i32.const 136) (i64.const 0))           ;; precision
        (i32.store16 (i32.const 144) (i32.const 0))         ;; flags: relative
        (drop (call $poll_oneoff (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300))))"#);
    let spawn = |c: &TaskControl| {
        let (sb, c, m) = (sb.clone(), c.clone(), sleep.clone());
        tokio::spawn(async move { sb.run_bytes(m, req(crate::limits()), &c).await })
    };
    let a = spawn(&first);
    tokio::time::timeout(Duration::from_secs(10), first.started()).await.expect("the first run starts");
    let b = spawn(&second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.has_started(), "the only slot is taken: the second run waits (STARTING)");
    assert_eq!(sb.slot_stats().in_use, 1);
    assert_eq!(a.await.unwrap().kind, OutcomeKind::Finished);
    tokio::time::timeout(Duration::from_secs(10), second.started()).await.expect("then the second starts");
    assert_eq!(b.await.unwrap().kind, OutcomeKind::Finished);
    // Killed while it waits: it never starts.
    let (third, fourth) = (TaskControl::new(), TaskControl::new());
    let c = spawn(&third);
    third.started().await;
    let d = spawn(&fourth);
    fourth.kill();
    let o = d.await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Killed, "{o:?}");
    assert!(!fourth.has_started());
    assert_eq!(c.await.unwrap().kind, OutcomeKind::Finished);
}
