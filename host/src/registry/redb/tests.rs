use wasmos_model::{Resources, TaskId, TaskSpec, TaskState};

use super::*;
use crate::master::types::{TaskFilter, TaskView};

/// What is committed is what loads back, through the wire encoding.
#[test]
fn records_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Redb::open(dir.path(), 1 << 20).unwrap();
    let res = Resources::parse("cpus:0.5;mem:64MiB").unwrap();
    let tid = TaskId::new("task-ab-7").unwrap();
    let spec = TaskSpec {
        task_id: tid.to_string(),
        name: "t".into(),
        module_sha256: "00".repeat(32),
        resources: res.clone(),
        attempt: 2,
        ..Default::default()
    };
    let view = TaskView {
        seq: 7,
        task_id: tid.clone(),
        name: "t".into(),
        framework_id: FrameworkId::new("batch").unwrap(),
        role: "batch".into(),
        agent_id: Some(AgentId::new("agent-1").unwrap()),
        state: TaskState::Dropped,
        outcome: None,
        submitted_at_ms: 5,
        started_at_ms: 0,
        finished_at_ms: 9,
        attempt: 2,
        module_sha256: "00".repeat(32),
        resources: res.clone(),
        message: "m".into(),
        events: vec![],
        spec: None,
        usage: None,
        limits: None,
        health: None,
    };
    let task = TaskRecord {
        view,
        spec: Some(Arc::new(spec)),
        priority: 3,
        constraints: vec![("zone".into(), "eu".into())],
        max_attempts: 4,
        applied_uuids: vec![vec![1, 2]],
    };
    let role = Role::new("eng").unwrap();
    let settings = RoleSettings {
        weight: 2.5,
        quota: wasmos_allocator::Quota::parse("cpus:1", "cpus:2;gpus:0").unwrap(),
        signers: vec!["ab".repeat(32)],
    };
    let changes = Changes {
        tasks: vec![(tid.clone(), task.clone())],
        roles: vec![(role.clone(), Some(settings.clone()))],
        next_id: 42,
        ..Default::default()
    };
    reg.commit(&changes).unwrap();
    drop(reg);
    let mut reg = Redb::open(dir.path(), 1 << 20).unwrap();
    let loaded = reg.load(100).unwrap();
    assert_eq!(loaded.tasks, vec![task]);
    assert_eq!(loaded.roles, vec![(role.clone(), settings)]);
    assert_eq!(loaded.next_id, 42);
    // Removing a role's record.
    reg.commit(&Changes { roles: vec![(role, None)], next_id: 42, ..Default::default() }).unwrap();
    assert!(reg.load(100).unwrap().roles.is_empty());
}

fn ended(n: u64, finished_at_ms: i64) -> (TaskId, TaskRecord) {
    let id = TaskId::new(format!("task-ab-{n}")).unwrap();
    let view = TaskView {
        seq: n,
        task_id: id.clone(),
        name: "t".into(),
        framework_id: FrameworkId::new("batch").unwrap(),
        role: "batch".into(),
        agent_id: None,
        state: TaskState::Finished,
        outcome: None,
        submitted_at_ms: 1,
        started_at_ms: 2,
        finished_at_ms,
        attempt: 1,
        module_sha256: String::new(),
        resources: Resources::new(),
        message: String::new(),
        events: vec![],
        spec: None,
        usage: None,
        limits: None,
        health: None,
    };
    let rec = TaskRecord { view, spec: None, priority: 0, constraints: vec![], max_attempts: 0, applied_uuids: vec![] };
    (id, rec)
}

/// A main file that grew (a long queue, since ended and moved to the
/// history) is compacted when it is mostly free, and loads the same after.
#[test]
fn a_mostly_free_main_file_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Redb::open(dir.path(), 1 << 20).unwrap();
    let tasks: Vec<_> = (1..=2000)
        .map(|n| {
            let (id, mut rec) = ended(n, 1000);
            rec.view.message = "x".repeat(4096);
            (id, rec)
        })
        .collect();
    reg.commit(&Changes { tasks, ..Default::default() }).unwrap();
    let kept = ended(5000, 1000);
    reg.commit(&Changes { tasks: vec![kept.clone()], ..Default::default() }).unwrap();
    while reg.archive(500).unwrap() > 0 {}
    // One task that did not end yet stays in the main file.
    let mut live = kept.clone();
    live.1.view.state = TaskState::Running;
    live.1.view.seq = 5001;
    reg.commit(&Changes { tasks: vec![live.clone()], ..Default::default() }).unwrap();
    drop(reg);
    let path = dir.path().join("registry.redb");
    let before = std::fs::metadata(&path).unwrap().len();
    let mut db = Database::builder().create(&path).unwrap();
    // Not worth it below the size floor.
    assert!(!compact_if_worth(&mut db, &path, before + 1).unwrap());
    assert!(compact_if_worth(&mut db, &path, 1 << 20).unwrap(), "a {before}-byte file, mostly free");
    drop(db);
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(after * 2 < before, "{before} -> {after} bytes");
    let mut reg = Redb::open(dir.path(), 1 << 20).unwrap();
    let loaded = reg.load(100).unwrap().tasks;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].view.state, TaskState::Running);
    assert!(reg.history().get("task-ab-1999").unwrap().is_some());
}

/// Ended tasks move to the history file (a restart reads none of them),
/// stay readable and listable, and go once past their time.
#[test]
fn ended_tasks_move_to_the_history_and_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Redb::open(dir.path(), 1 << 20).unwrap();
    // 5 tasks ended at 1000..5000 ms
    let tasks: Vec<_> = (1..=5).map(|n| ended(n, n as i64 * 1000)).collect();
    reg.commit(&Changes { tasks: tasks.clone(), ..Default::default() }).unwrap();
    assert_eq!(reg.load(100).unwrap().tasks.len(), 5);
    // Two at a time: 2, 2, 1, then nothing left to move.
    assert_eq!([reg.archive(2).unwrap(), reg.archive(2).unwrap(), reg.archive(2).unwrap()], [2, 2, 1]);
    assert_eq!(reg.archive(2).unwrap(), 0);
    assert!(reg.load(100).unwrap().tasks.is_empty());
    let h = reg.history();
    assert_eq!(h.get("task-ab-3").unwrap().unwrap(), tasks[2].1.view);
    let page = h.page(0, &TaskFilter::default(), 3, 100).unwrap();
    assert_eq!(page.rows.iter().map(|t| t.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(page.next, Some(3));
    // Past their time: the ones that ended before 3000 ms go.
    assert_eq!(reg.collect(3000, 100).unwrap(), 2);
    assert!(h.get("task-ab-2").unwrap().is_none());
    assert_eq!(h.page(0, &TaskFilter::default(), 10, 100).unwrap().rows.len(), 3);
    // Both files reopen after a crash (no clean close here).
    drop(h);
    drop(reg);
    let reg = Redb::open(dir.path(), 1 << 20).unwrap();
    assert!(reg.history().get("task-ab-5").unwrap().is_some());
}
