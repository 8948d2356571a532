//! The agent's checkpoint under `--work-dir` (`checkpoint.redb`): its id, the
//! tasks it launched and has not yet seen acknowledged as ended, and every
//! status update the master has not acknowledged. Artifacts and compiled
//! modules live beside it (`artifacts/`, `cache/`) and survive restarts too.
//!
//! After an agent restart it reregisters under the same id, resends the
//! updates, and reports each launched task that has no final update as LOST
//! ("the agent restarted while the task ran"), so its framework can retry it.
//!
//! Writes never hold up a launch or an update: they go to a writer thread
//! that, once something changed, waits `interval` (default 20 ms), then
//! merges everything that changed into one transaction. A short task whose
//! launch, updates and acknowledgements all fall within that window is never
//! written at all, so the disk sees only tasks that outlive it. The price is
//! the window itself: a crash loses the newest `interval` of changes. The
//! outcome stays correct, only slower: a task nobody reports is declared LOST
//! by the master after a short grace and retried (at-least-once).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use wasmos_proto::v1;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// uuid (hex) -> encoded TaskStatus
const UPDATES: TableDefinition<&str, &[u8]> = TableDefinition::new("updates");
/// task id -> framework id
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks");

/// What the checkpoint held at start-up.
#[derive(Default)]
pub(crate) struct Restored {
    pub agent_id: String,
    pub updates: Vec<v1::TaskStatus>,
    /// Launched tasks (task id, framework id) with no acknowledged final update.
    pub tasks: Vec<(String, String)>,
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Changes not yet written; the last change of a key wins.
#[derive(Default)]
struct Pending {
    agent_id: Option<String>,
    tasks: HashMap<String, Option<String>>,
    updates: HashMap<String, Option<Vec<u8>>>,
    /// Set when the agent shuts down: the writer flushes and exits.
    closed: bool,
    /// Commits done (for `flush`).
    commits: u64,
    /// Set while the writer holds taken changes it has not committed yet.
    writing: bool,
    /// Set while the writer waits for the first change (only then is it woken).
    idle: bool,
    /// Set by `flush`: commit without waiting out the interval.
    flushing: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.agent_id.is_none() && self.tasks.is_empty() && self.updates.is_empty()
    }
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    done: Condvar,
}

/// A handle to the checkpoint; cheap to call from async code (it only takes
/// a mutex for a few map operations).
#[derive(Clone)]
pub(crate) struct Checkpoint {
    inner: Arc<Inner>,
}

impl Checkpoint {
    /// Opens (creating) `dir/checkpoint.redb`, reads it, and starts the writer.
    pub fn open(dir: &Path, interval: Duration) -> Result<(Checkpoint, Restored), String> {
        let path = dir.join("checkpoint.redb");
        let db = Database::create(&path).map_err(|x| format!("cannot open {}: {x}", path.display()))?;
        {
            let w = db.begin_write().map_err(e)?;
            w.open_table(META).map_err(e)?;
            w.open_table(UPDATES).map_err(e)?;
            w.open_table(TASKS).map_err(e)?;
            w.commit().map_err(e)?;
        }
        let mut r = Restored::default();
        let mut on_disk_tasks = HashSet::new();
        let mut on_disk_updates = HashSet::new();
        {
            let t = db.begin_read().map_err(e)?;
            let meta = t.open_table(META).map_err(e)?;
            r.agent_id = meta.get("agent_id").map_err(e)?.map(|v| v.value().to_string()).unwrap_or_default();
            for row in t.open_table(UPDATES).map_err(e)?.iter().map_err(e)? {
                let (k, v) = row.map_err(e)?;
                on_disk_updates.insert(k.value().to_string());
                if let Some(st) = wasmos_proto::decode::<v1::TaskStatus>(v.value()) {
                    r.updates.push(st);
                }
            }
            for row in t.open_table(TASKS).map_err(e)?.iter().map_err(e)? {
                let (k, v) = row.map_err(e)?;
                on_disk_tasks.insert(k.value().to_string());
                r.tasks.push((k.value().to_string(), v.value().to_string()));
            }
        }
        // Resend in the order they were made (uuids end with a counter per process,
        // timestamps order across processes).
        r.updates.sort_by_key(|u| u.timestamp_ms);
        let inner =
            Arc::new(Inner { pending: Mutex::new(Pending::default()), wake: Condvar::new(), done: Condvar::new() });
        let w = inner.clone();
        std::thread::Builder::new()
            .name("wasmos-checkpoint".into())
            .spawn(move || writer(db, w, interval, on_disk_tasks, on_disk_updates))
            .map_err(|x| format!("cannot start the checkpoint writer: {x}"))?;
        Ok((Checkpoint { inner }, r))
    }

    fn change(&self, f: impl FnOnce(&mut Pending)) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p);
        if p.idle {
            p.idle = false;
            self.inner.wake.notify_one();
        }
    }

    pub fn set_agent_id(&self, id: &str) {
        self.change(|p| p.agent_id = Some(id.to_string()));
    }

    pub fn launched(&self, task: &str, framework: &str) {
        self.change(|p| {
            p.tasks.insert(task.to_string(), Some(framework.to_string()));
        });
    }

    /// The task's final update was acknowledged: nothing more to report for it.
    pub fn ended(&self, tasks: &[String]) {
        self.change(|p| {
            for t in tasks {
                p.tasks.insert(t.clone(), None);
            }
        });
    }

    pub fn update(&self, st: &v1::TaskStatus) {
        let bytes = wasmos_proto::encode(st);
        self.change(|p| {
            p.updates.insert(hex::encode(&st.uuid), Some(bytes));
        });
    }

    /// Forgets acknowledged updates.
    pub fn acked(&self, uuids: &[Vec<u8>]) {
        self.change(|p| {
            for u in uuids {
                p.updates.insert(hex::encode(u), None);
            }
        });
    }

    /// Waits until everything changed so far is committed.
    pub fn flush(&self) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        // A commit in progress may predate our changes: wait for the next one too.
        let target = p.commits + u64::from(p.writing) + u64::from(!p.is_empty());
        p.flushing = true;
        self.inner.wake.notify_one();
        while p.commits < target && !p.closed {
            p = self.inner.done.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Flushes and stops the writer.
    pub fn close(&self) {
        self.flush();
        self.change(|p| p.closed = true);
    }
}

fn writer(
    db: Database,
    inner: Arc<Inner>,
    interval: Duration,
    mut tasks_on_disk: HashSet<String>,
    mut updates_on_disk: HashSet<String>,
) {
    loop {
        let taken = {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            while p.is_empty() && !p.closed && !p.flushing {
                p.idle = true;
                p = inner.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            p.idle = false;
            if p.is_empty() && p.closed {
                inner.done.notify_all();
                return;
            }
            // Let changes gather (and cancel out) for one interval.
            if !p.flushing && !p.closed {
                p = inner.wake.wait_timeout(p, interval).unwrap_or_else(|e| e.into_inner()).0;
            }
            p.flushing = false;
            p.writing = true;
            (p.agent_id.take(), std::mem::take(&mut p.tasks), std::mem::take(&mut p.updates))
        };
        let (agent_id, tasks, updates) = taken;
        if let Err(x) = write(&db, agent_id, tasks, updates, &mut tasks_on_disk, &mut updates_on_disk) {
            eprintln!("wasmos agent: cannot write the checkpoint: {x}");
        }
        let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.writing = false;
        p.commits += 1;
        inner.done.notify_all();
    }
}

fn write(
    db: &Database,
    agent_id: Option<String>,
    tasks: HashMap<String, Option<String>>,
    updates: HashMap<String, Option<Vec<u8>>>,
    tasks_on_disk: &mut HashSet<String>,
    updates_on_disk: &mut HashSet<String>,
) -> Result<(), String> {
    // Entries added and removed since the last commit never reach the disk.
    let tasks: Vec<_> = tasks.into_iter().filter(|(k, v)| v.is_some() || tasks_on_disk.contains(k)).collect();
    let updates: Vec<_> = updates.into_iter().filter(|(k, v)| v.is_some() || updates_on_disk.contains(k)).collect();
    if agent_id.is_none() && tasks.is_empty() && updates.is_empty() {
        return Ok(());
    }
    let w = db.begin_write().map_err(e)?;
    {
        if let Some(id) = &agent_id {
            w.open_table(META).map_err(e)?.insert("agent_id", id.as_str()).map_err(e)?;
        }
        let mut t = w.open_table(TASKS).map_err(e)?;
        for (k, v) in &tasks {
            match v {
                Some(fw) => t.insert(k.as_str(), fw.as_str()).map(|_| ()),
                None => t.remove(k.as_str()).map(|_| ()),
            }
            .map_err(e)?;
        }
        let mut u = w.open_table(UPDATES).map_err(e)?;
        for (k, v) in &updates {
            match v {
                Some(b) => u.insert(k.as_str(), b.as_slice()).map(|_| ()),
                None => u.remove(k.as_str()).map(|_| ()),
            }
            .map_err(e)?;
        }
    }
    w.commit().map_err(e)?;
    for (k, v) in tasks {
        if v.is_some() {
            tasks_on_disk.insert(k);
        } else {
            tasks_on_disk.remove(&k);
        }
    }
    for (k, v) in updates {
        if v.is_some() {
            updates_on_disk.insert(k);
        } else {
            updates_on_disk.remove(&k);
        }
    }
    Ok(())
}
