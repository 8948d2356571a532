//! The compiled-module cache: memory (InstancePre) and disk (serialized).

use wasmos_sandbox::{OutcomeKind, Sandbox, SandboxConfig, TaskControl};

use crate::*;

fn small(cache_dir: Option<std::path::PathBuf>, entries: usize) -> Sandbox {
    Sandbox::new(SandboxConfig { max_concurrent_tasks: 4, cache_dir, cache_max_entries: entries, ..Default::default() })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_prepare_is_a_memory_hit() {
    let sb = small(None, 8);
    let m = wat(r#"(func (export "_start") (call $proc_exit (i32.const 0)))"#);
    let a = sb.prepare(&m).unwrap();
    let b = sb.prepare(&m).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let s = sb.cache_stats();
    assert_eq!((s.compiles, s.memory_hits), (1, 1));
    let o = sb.run(&a, req(limits()), &TaskControl::new()).await;
    assert_eq!(o.kind, OutcomeKind::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cache_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let m = wat(r#"(func (export "_start"))"#);
    {
        let sb = small(Some(tmp.path().to_path_buf()), 8);
        sb.prepare(&m).unwrap();
        assert_eq!(sb.cache_stats().compiles, 1);
    }
    let files: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().filter_map(Result::ok).collect();
    assert_eq!(files.len(), 1, "one artifact, no temp files left");
    // A new sandbox (a restarted process) loads it instead of compiling.
    let sb = small(Some(tmp.path().to_path_buf()), 8);
    let p = sb.prepare(&m).unwrap();
    let s = sb.cache_stats();
    assert_eq!((s.compiles, s.disk_hits), (0, 1));
    assert_eq!(sb.run(&p, req(limits()), &TaskControl::new()).await.kind, OutcomeKind::Finished);
    drop((p, sb));

    // A damaged artifact is recompiled, not trusted.
    std::fs::write(files[0].path(), b"garbage").unwrap();
    let sb = small(Some(tmp.path().to_path_buf()), 8);
    sb.prepare(&m).unwrap();
    assert_eq!(sb.cache_stats().compiles, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cache_is_bounded_lru() {
    let sb = small(None, 2);
    let mods: Vec<_> =
        (0..3).map(|i| wat(&format!(r#"(func (export "_start") (call $proc_exit (i32.const {i})))"#))).collect();
    sb.prepare(&mods[0]).unwrap();
    sb.prepare(&mods[1]).unwrap();
    sb.prepare(&mods[0]).unwrap(); // 0 is now more recent than 1
    sb.prepare(&mods[2]).unwrap(); // evicts 1
    assert_eq!(sb.cache_stats().evictions, 1);
    sb.prepare(&mods[0]).unwrap(); // still cached
    assert_eq!(sb.cache_stats().compiles, 3);
    sb.prepare(&mods[1]).unwrap(); // recompiled
    assert_eq!(sb.cache_stats().compiles, 4);
}
