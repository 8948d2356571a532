//! The sandbox keeps serving while hostile guests do their worst.

use std::time::Duration;

use wasmos_sandbox::{Limits, OutcomeKind, TaskControl};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_every_tenth_hostile() {
    let benign = wat(r#"
      (data (i32.const 64) "ok\n")
      (func (export "_start") (local $i i32)
        (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))
        (drop (call $write (i32.const 1) (i32.const 64) (i32.const 3))))"#);
    let hostile = [
        // infinite loop, stopped by fuel
        (wat(r#"(func (export "_start") (loop (br 0)))"#), OutcomeKind::OutOfFuel),
        // infinite loop, stopped by the clock (fuel unlimited)
        (wat(r#"(func (export "_start") (loop (br 0)))"#), OutcomeKind::TimedOut),
        // memory bomb: grow until refused, then trap
        (
            wat(
                r#"(func (export "_start") (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable)"#,
            ),
            OutcomeKind::OutOfMemory,
        ),
        // stack overflow
        (wat(r#"(func $f (call $f)) (func (export "_start") (call $f))"#), OutcomeKind::Failed),
        // output flood forever, stopped by fuel
        (
            wat(r#"(data (i32.const 64) "spam spam spam\n")
                (func (export "_start") (loop (drop (call $write (i32.const 1) (i32.const 64) (i32.const 15))) (br 0)))"#),
            OutcomeKind::OutOfFuel,
        ),
    ];
    let mut handles = Vec::new();
    for i in 0..1000usize {
        let (bytes, expect, limits) = if i % 10 == 9 {
            let (b, k) = &hostile[(i / 10) % hostile.len()];
            // Fuel-bounded guests get a long timeout and clock-bounded ones no
            // fuel budget, so each ends the way it is meant to even when 1,000
            // tasks share two threads.
            let (fuel, timeout) = if *k == OutcomeKind::TimedOut {
                (None, Duration::from_millis(300))
            } else {
                (Some(5_000_000), Duration::from_secs(60))
            };
            (b.clone(), *k, Limits { fuel, mem: 8 << 20, timeout, max_output: 4096, meter_fuel: false })
        } else {
            (benign.clone(), OutcomeKind::Finished, Limits { timeout: Duration::from_secs(60), ..Limits::default() })
        };
        handles.push(tokio::spawn(async move {
            let o = sandbox().run_bytes(bytes, req(limits), &TaskControl::new()).await;
            (i, expect, o)
        }));
    }
    let mut finished = 0;
    for h in handles {
        let (i, expect, o) = h.await.expect("no task panics");
        assert_eq!(o.kind, expect, "task {i}: {:?}", o.message);
        if expect == OutcomeKind::Finished {
            assert_eq!(o.stdout, b"ok\n", "task {i}");
            finished += 1;
        } else {
            assert!(o.stdout.len() <= 4096, "task {i}: output bounded");
        }
    }
    assert_eq!(finished, 900);
}
