//! WASI behaviour: args, env, the sandbox directory, host directories, escapes.

use std::time::Duration;

use wasmos_sandbox::{HostDir, InputFile, OutcomeKind, SandboxDirSpec, Stdin};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_and_env_reach_the_guest_and_nothing_else() {
    // argv strings to stdout, environ strings to stderr (NUL-separated).
    let echo = r#"
      (func (export "_start")
        (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
        (drop (call $args_get (i32.const 1024) (i32.const 2048)))
        (drop (call $write (i32.const 1) (i32.const 2048) (i32.load (i32.const 20))))
        (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
        (drop (call $environ_get (i32.const 1024) (i32.const 4096)))
        (drop (call $write (i32.const 2) (i32.const 4096) (i32.load (i32.const 20)))))"#;
    let mut r = req(limits());
    r.args = vec!["echo.wasm".into(), "hello".into(), "wide world".into()];
    r.env = vec![("GREETING".into(), "hi".into())];
    // SAFETY of the assertion below: the host has PATH/HOME set; none may leak.
    let o = run(wat(echo), r).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert_eq!(text(&o.stdout), "echo.wasm\0hello\0wide world\0");
    assert_eq!(text(&o.stderr), "GREETING=hi\0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_bytes_are_readable() {
    let cat = r#"
      (func (export "_start")
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.const 100))
        (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
        (drop (call $write (i32.const 1) (i32.const 1024) (i32.load (i32.const 24)))))"#;
    let mut r = req(limits());
    r.stdin = Stdin::Bytes(b"piped in".to_vec());
    let o = run(wat(cat), r).await;
    assert_eq!(text(&o.stdout), "piped in");
    // closed by default: zero bytes read
    let o = run(wat(cat), req(limits())).await;
    assert_eq!(o.stdout, b"");
}

/// path_open(fd 3, PATH, O_CREAT|O_TRUNC) then write "hello" to it; exits with
/// path_open's errno if that fails.
fn create_file(path: &str) -> std::sync::Arc<[u8]> {
    wat(&format!(
        r#"
      (data (i32.const 300) "{path}")
      (data (i32.const 500) "hello")
      (func (export "_start") (local $err i32)
        (local.set $err (call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const {len})
          (i32.const 9) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 400)))
        (if (local.get $err) (then (call $proc_exit (local.get $err))))
        (drop (call $write (i32.load (i32.const 400)) (i32.const 500) (i32.const 5))))"#,
        len = path.len()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_filesystem_unless_asked_for() {
    let o = run(create_file("out.txt"), req(limits())).await;
    // errno 8 = EBADF: there is no fd 3 at all
    assert_eq!((o.kind, o.exit_code), (OutcomeKind::Failed, Some(8)), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_dir_is_writable_kept_on_request_and_removed_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let kept = tmp.path().join("kept");
    let mut r = req(limits());
    r.sandbox_dir = SandboxDirSpec { enabled: true, path: Some(kept.clone()), keep: true, ..Default::default() };
    let o = run(create_file("out.txt"), r).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert_eq!(std::fs::read(kept.join("out.txt")).unwrap(), b"hello");

    let gone = tmp.path().join("gone");
    let mut r = req(limits());
    r.sandbox_dir = SandboxDirSpec { enabled: true, path: Some(gone.clone()), ..Default::default() };
    let o = run(create_file("out.txt"), r).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert!(!gone.exists(), "the sandbox directory is removed after the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escape_is_denied() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox_path = tmp.path().join("box");
    for escape in ["../x", "../../x", "a/../../x"] {
        let mut r = req(limits());
        r.sandbox_dir = SandboxDirSpec { enabled: true, path: Some(sandbox_path.clone()), ..Default::default() };
        let o = run(create_file(escape), r).await;
        assert_eq!(o.kind, OutcomeKind::Failed, "{escape}: {o:?}");
        // 76 = ENOTCAPABLE, 63 = EPERM, 44 = ENOENT: any refusal, never success
        assert!(matches!(o.exit_code, Some(76 | 63 | 44)), "{escape}: {o:?}");
        assert!(!tmp.path().join("x").exists(), "{escape} escaped the sandbox");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_files_are_readable_in_the_sandbox() {
    // open data/in.txt read-only, read it, print it
    let reader = r#"
      (data (i32.const 300) "data/in.txt")
      (func (export "_start") (local $err i32)
        (local.set $err (call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 11)
          (i32.const 0) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 400)))
        (if (local.get $err) (then (call $proc_exit (local.get $err))))
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.const 100))
        (drop (call $fd_read (i32.load (i32.const 400)) (i32.const 16) (i32.const 1) (i32.const 24)))
        (drop (call $write (i32.const 1) (i32.const 1024) (i32.load (i32.const 24)))))"#;
    let mut r = req(limits());
    r.sandbox_dir.files = vec![InputFile { path: "data/in.txt".into(), contents: b"input bytes".to_vec() }];
    let o = run(wat(reader), r).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert_eq!(text(&o.stdout), "input bytes");

    // An input path that would escape is refused before anything runs.
    let mut r = req(limits());
    r.sandbox_dir.files = vec![InputFile { path: "../evil".into(), contents: vec![] }];
    let o = run(wat(reader), r).await;
    assert_eq!(o.kind, OutcomeKind::Error);
    assert!(o.message.unwrap().contains("leaves the sandbox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_dirs_for_local_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = req(limits());
    r.host_dirs = vec![HostDir { host: tmp.path().to_path_buf(), guest: "/data".into(), read_only: false }];
    let o = run(create_file("made-by-guest.txt"), r).await;
    assert_eq!(o.kind, OutcomeKind::Finished, "{o:?}");
    assert_eq!(std::fs::read(tmp.path().join("made-by-guest.txt")).unwrap(), b"hello");

    let mut r = req(limits());
    r.host_dirs = vec![HostDir { host: tmp.path().join("missing"), guest: "/x".into(), read_only: false }];
    let o = run(create_file("f"), r).await;
    assert_eq!(o.kind, OutcomeKind::Error);
    assert!(o.message.unwrap().contains("cannot open directory"));
    let _ = Duration::ZERO;
}
