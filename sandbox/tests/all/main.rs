//! Sandbox integration tests: one binary, one module per topic. Most guests are
//! inline WAT (no toolchain needed); `wat!` builds a WASI preview1 command.

mod cache;
mod cpu;
mod hostile;
mod outcomes;
mod precompiled;
mod wasi;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmos_sandbox::{Limits, Outcome, RunRequest, Sandbox, SandboxConfig, TaskControl};

/// One sandbox shared by the tests of this binary (each pool reserves address
/// space, so tests do not build their own unless they need other settings).
pub fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        Sandbox::new(SandboxConfig { max_concurrent_tasks: 256, ..Default::default() }).expect("sandbox builds")
    })
}

/// The WASI imports every test module may use, and a 1-page memory.
pub const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; write(fd, ptr, len): one iovec at 0..8, nwritten at 8
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
"#;

/// A WASI command: the prelude plus `body` (which must define `_start`).
pub fn wat(body: &str) -> Arc<[u8]> {
    let text = format!("(module {PRELUDE} {body})");
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test wat: {e}\n{text}")).into()
}

pub fn req(limits: Limits) -> RunRequest {
    RunRequest { name: "test".into(), args: vec!["test.wasm".into()], limits, ..Default::default() }
}

pub fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(20), ..Default::default() }
}

pub async fn run(bytes: Arc<[u8]>, r: RunRequest) -> Outcome {
    sandbox().run_bytes(bytes, r, &TaskControl::new()).await
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
