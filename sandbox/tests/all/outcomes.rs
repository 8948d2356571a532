//! One test per outcome kind, with three-line guests.

use std::time::Duration;

use wasmos_sandbox::{Limits, OutcomeKind, TaskControl};

use crate::*;

const LOOP_FOREVER: &str = r#"(func (export "_start") (loop (br 0)))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_zero_is_finished_with_cpu_time_and_fuel_only_where_metered() {
    let exit0 = wat(r#"(func (export "_start") (call $proc_exit (i32.const 0)))"#);
    let o = run(exit0.clone(), req(limits())).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert_eq!(o.exit_code, Some(0));
    assert!(!o.fuel_metered && o.fuel_consumed == 0, "no budget, no fuel counting: {o:?}");
    assert!(o.cpu_time > Duration::ZERO, "CPU time is always measured: {o:?}");
    // Asked for, fuel is counted, and identical work uses identical fuel.
    let metered = || req(Limits { meter_fuel: true, ..limits() });
    let (a, b) = (run(exit0.clone(), metered()).await, run(exit0, metered()).await);
    assert!(a.fuel_metered && a.fuel_consumed > 0, "{a:?}");
    assert_eq!(a.fuel_consumed, b.fuel_consumed);
    // one 64 KiB page of memory (+ no table)
    assert_eq!(o.peak_memory_bytes, 65536);
    // returning from _start is also exit 0
    let o = run(wat(r#"(func (export "_start"))"#), req(limits())).await;
    assert_eq!((o.kind, o.exit_code), (OutcomeKind::Finished, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_exit_3_is_failed_with_code_3() {
    let o = run(wat(r#"(func (export "_start") (call $proc_exit (i32.const 3)))"#), req(limits())).await;
    assert_eq!(o.kind, OutcomeKind::Failed);
    assert_eq!(o.exit_code, Some(3));
    assert_eq!(OutcomeKind::Failed.process_exit_code(o.exit_code), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_with_fuel_is_out_of_fuel() {
    let o = run(wat(LOOP_FOREVER), req(Limits { fuel: Some(1_000_000), ..limits() })).await;
    assert_eq!(o.kind, OutcomeKind::OutOfFuel, "{o:?}");
    assert_eq!(o.exit_code, None);
    // the whole budget went, and not more
    assert_eq!(o.fuel_consumed, 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_without_fuel_times_out() {
    let timeout = Duration::from_millis(300);
    let o = run(wat(LOOP_FOREVER), req(Limits { timeout, ..limits() })).await;
    assert_eq!(o.kind, OutcomeKind::TimedOut, "{o:?}");
    assert!(o.wall_time >= timeout, "{:?}", o.wall_time);
    // generous bound: a shared CI machine, but far below "never"
    assert!(o.wall_time < Duration::from_secs(10), "{:?}", o.wall_time);
    assert!(o.message.unwrap().contains("timed out after 300ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_applies_while_blocked_in_a_host_call() {
    // poll_oneoff on a 60 s relative clock: the guest sits in the host, not in wasm.
    let sleep = r#"
      (func (export "_start")
        (i64.store (i32.const 104) (i64.const 1))           ;; userdata
        (i32.store8 (i32.const 112) (i32.const 0))          ;; tag: clock
        (i32.store (i32.const 120) (i32.const 1))           ;; clock id: monotonic
        (i64.store (i32.const 128) (i64.const 60000000000)) ;; 60 s in ns
        (i64.store (i32.const 136) (i64.const 0))           ;; precision
        (i32.store16 (i32.const 144) (i32.const 0))         ;; flags: relative
        (drop (call $poll_oneoff (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300))))"#;
    let o = run(wat(sleep), req(Limits { timeout: Duration::from_millis(200), ..limits() })).await;
    assert_eq!(o.kind, OutcomeKind::TimedOut, "{o:?}");
    assert!(o.wall_time < Duration::from_secs(10), "{:?}", o.wall_time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_grow_past_mem_fails_inside_the_guest() {
    // mem = 4 pages. Growing by 8 more returns -1; this guest reports it by
    // exiting 7 and carries on.
    let guest = r#"
      (func (export "_start")
        (if (i32.eq (memory.grow (i32.const 8)) (i32.const -1))
          (then (call $proc_exit (i32.const 7))))
        (call $proc_exit (i32.const 0)))"#;
    let o = run(wat(guest), req(Limits { mem: 4 * 65536, ..limits() })).await;
    assert_eq!((o.kind, o.exit_code), (OutcomeKind::Failed, Some(7)), "{o:?}");
    assert!(o.message.unwrap().contains("over its mem limit of 262144 bytes"));
    // 1 initial page; the refused grow never counted
    assert_eq!(o.peak_memory_bytes, 65536);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_after_refused_grow_is_out_of_memory() {
    let guest = r#"
      (func (export "_start")
        (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable)))"#;
    let o = run(wat(guest), req(Limits { mem: 1 << 20, ..limits() })).await;
    assert_eq!(o.kind, OutcomeKind::OutOfMemory, "{o:?}");
    assert_eq!(o.exit_code, None);
    let msg = o.message.unwrap();
    assert!(msg.contains("mem limit of 1048576 bytes"), "{msg}");
    assert!(msg.contains("unreachable"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_follows_grows_within_the_limit() {
    // 1 page + 3 pages grown = 4 x 65536
    let guest = r#"(func (export "_start") (drop (memory.grow (i32.const 3))))"#;
    let o = run(wat(guest), req(limits())).await;
    assert_eq!(o.kind, OutcomeKind::Finished);
    assert_eq!(o.peak_memory_bytes, 4 * 65536);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_memory_over_the_limit_is_out_of_memory() {
    let bytes: std::sync::Arc<[u8]> =
        wat::parse_str(r#"(module (memory (export "memory") 100) (func (export "_start")))"#).unwrap().into();
    let o = run(bytes, req(Limits { mem: 1 << 20, ..limits() })).await;
    assert_eq!(o.kind, OutcomeKind::OutOfMemory, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_is_failed_with_stack_overflow() {
    let guest = r#"
      (func $down (param i64) (result i64) (i64.add (call $down (local.get 0)) (i64.const 1)))
      (func (export "_start") (drop (call $down (i64.const 0))))"#;
    let o = run(wat(guest), req(limits())).await;
    assert_eq!(o.kind, OutcomeKind::Failed, "{o:?}");
    let msg = o.message.unwrap();
    assert!(msg.contains("call stack exhausted"), "{msg}");
    // the wasm backtrace names the guest function
    assert!(msg.contains("down"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_failed_with_message() {
    let o = run(wat(r#"(func (export "_start") (drop (i32.div_u (i32.const 1) (i32.const 0))))"#), req(limits())).await;
    assert_eq!((o.kind, o.exit_code), (OutcomeKind::Failed, None));
    assert!(o.message.unwrap().contains("integer divide by zero"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flood_is_truncated_and_the_task_finishes() {
    // 100,000 writes of 64 bytes = 6.4 MB to stdout, 1 byte to stderr.
    let flood = r#"
      (data (i32.const 64) "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n")
      (func (export "_start") (local $i i32)
        (loop $l
          (drop (call $write (i32.const 1) (i32.const 64) (i32.const 64)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 100000))))
        (drop (call $write (i32.const 2) (i32.const 64) (i32.const 1))))"#;
    let o = run(wat(flood), req(Limits { max_output: 1024, ..limits() })).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert_eq!(o.stdout.len(), 1024);
    assert!(o.stdout_truncated);
    assert!(o.stdout.starts_with(b"0123456789abcdef"));
    assert_eq!(o.stderr, b"0");
    assert!(!o.stderr_truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_a_running_task() {
    let control = TaskControl::new();
    let c = control.clone();
    let h = tokio::spawn(async move { sandbox().run_bytes(wat(LOOP_FOREVER), req(limits()), &c).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.is_finished());
    control.kill();
    let o = h.await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Killed, "{o:?}");
    assert_eq!(OutcomeKind::Killed.process_exit_code(o.exit_code), 137);
    assert!(o.cpu_time > Duration::ZERO, "{o:?}");
}

/// Counts to 2^27 and exits 0: long enough to pause in the middle.
const COUNT: &str = r#"
  (func (export "_start") (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 134217728)))))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_lose_no_work() {
    let reference = run(wat(COUNT), req(limits())).await;
    assert_eq!(reference.kind, OutcomeKind::Finished);

    let control = TaskControl::new();
    control.pause(); // paused before it starts: not one instruction runs
    let c = control.clone();
    let h = tokio::spawn(async move { sandbox().run_bytes(wat(COUNT), req(limits()), &c).await });
    tokio::time::sleep(reference.wall_time * 2 + Duration::from_millis(200)).await;
    assert!(!h.is_finished(), "a paused task must not progress to its end");
    control.resume();
    tokio::time::sleep(Duration::from_millis(5)).await;
    control.pause(); // and pause again mid-run
    tokio::time::sleep(Duration::from_millis(100)).await;
    control.resume();
    let o = h.await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    // Same instructions executed: nothing was redone or skipped.
    assert_eq!(o.fuel_consumed, reference.fuel_consumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_time_does_not_count_toward_the_timeout() {
    let control = TaskControl::new();
    control.pause();
    let c = control.clone();
    let quick = wat(r#"(func (export "_start"))"#);
    let h = tokio::spawn(async move {
        sandbox().run_bytes(quick, req(Limits { timeout: Duration::from_millis(100), ..limits() }), &c).await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    control.resume();
    let o = h.await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_paused() {
    let control = TaskControl::new();
    let c = control.clone();
    let h = tokio::spawn(async move { sandbox().run_bytes(wat(LOOP_FOREVER), req(limits()), &c).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    control.pause();
    tokio::time::sleep(Duration::from_millis(50)).await;
    control.kill();
    control.resume(); // kill is sticky
    assert_eq!(h.await.unwrap().kind, OutcomeKind::Killed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_are_errors_that_say_why() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"#!/bin/sh\necho hi\n".to_vec(), "not a wasm module"),
        (b"\0asm\x01\0".to_vec(), "truncated"),
        (b"\0asm\x01\0\0\0\x01\x05".to_vec(), "not valid wasm"),
        (wat::parse_str(r#"(module (import "env" "foo" (func)) (func (export "_start")))"#).unwrap(), "`env::foo`"),
        (
            wat::parse_str(
                r#"(module (import "wasi_snapshot_preview1" "no_such_call" (func)) (func (export "_start")))"#,
            )
            .unwrap(),
            "no_such_call",
        ),
        (wat::parse_str(r#"(module (func (export "main")))"#).unwrap(), "no `_start`"),
    ];
    for (bytes, want) in cases {
        let o = run(bytes.into(), req(limits())).await;
        assert_eq!(o.kind, OutcomeKind::Error, "{want}: {o:?}");
        let msg = o.message.unwrap();
        assert!(msg.contains(want), "{want}: {msg}");
        assert_eq!(OutcomeKind::Error.process_exit_code(None), 125);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_over_the_sandbox_maximum_are_refused() {
    let o = run(wat(r#"(func (export "_start"))"#), req(Limits { mem: 8 << 30, ..limits() })).await;
    assert_eq!(o.kind, OutcomeKind::Error);
    assert!(o.message.unwrap().contains("max_task_mem"));
}
