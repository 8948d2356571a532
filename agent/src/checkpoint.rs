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

/// Bytes of checkpoint pages cached in memory. The checkpoint holds only
/// tasks that outlive its write window and updates not yet acknowledged, so
/// a small cache is enough (redb's own default is 1 GiB).
pub const CHECKPOINT_CACHE: usize = 16 << 20;

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
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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
        let db = Database::builder()
            .set_cache_size(CHECKPOINT_CACHE)
            .create(&path)
            .map_err(|x| format!("cannot open {}: {x}", path.display()))?;
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
        let mut damaged = Vec::new();
        {
            let t = db.begin_read().map_err(e)?;
            let meta = t.open_table(META).map_err(e)?;
            r.agent_id = meta.get("agent_id").map_err(e)?.map(|v| v.value().to_string()).unwrap_or_default();
            for row in t.open_table(UPDATES).map_err(e)?.iter().map_err(e)? {
                let (k, v) = row.map_err(e)?;
                match wasmos_proto::decode::<v1::TaskStatus>(v.value()) {
                    Some(st) => {
                        on_disk_updates.insert(k.value().to_string());
                        r.updates.push(st);
                    }
                    None => damaged.push(k.value().to_string()),
                }
            }
            for row in t.open_table(TASKS).map_err(e)?.iter().map_err(e)? {
                let (k, v) = row.map_err(e)?;
                on_disk_tasks.insert(k.value().to_string());
                r.tasks.push((k.value().to_string(), v.value().to_string()));
            }
        }
        // Resend in the order they were made: timestamps order across
        // processes, the uuid's counter (bytes 8..16, little-endian) within one.
        r.updates.sort_by_key(|u| {
            let n = u.uuid.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).unwrap_or(0);
            (u.timestamp_ms, n)
        });
        if !damaged.is_empty() {
            eprintln!("wasmos agent: checkpoint: dropping {} damaged update record(s)", damaged.len());
            let w = db.begin_write().map_err(e)?;
            {
                let mut t = w.open_table(UPDATES).map_err(e)?;
                for k in &damaged {
                    t.remove(k.as_str()).map_err(e)?;
                }
            }
            w.commit().map_err(e)?;
        }
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            thread: Mutex::new(None),
        });
        let w = inner.clone();
        let handle = std::thread::Builder::new()
            .name("wasmos-checkpoint".into())
            .spawn(move || writer(db, w, interval, on_disk_tasks, on_disk_updates))
            .map_err(|x| format!("cannot start the checkpoint writer: {x}"))?;
        *inner.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok((Checkpoint { inner }, r))
    }

    fn change(&self, f: impl FnOnce(&mut Pending)) {
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed {
            return;
        }
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

    pub fn update(&self, st: &v1::TaskStatus) {
        let bytes = wasmos_proto::encode(st);
        self.change(|p| {
            p.updates.insert(hex::encode(&st.uuid), Some(bytes));
        });
    }

    /// Forgets acknowledged updates, and the tasks whose final update is
    /// among them (one change, so no commit holds one without the other).
    pub fn acked(&self, uuids: &[Vec<u8>], ended: &[String]) {
        self.change(|p| {
            for u in uuids {
                p.updates.insert(hex::encode(u), None);
            }
            for t in ended {
                p.tasks.insert(t.clone(), None);
            }
        });
    }

    /// Waits until everything changed so far is committed.
    #[cfg(test)]
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

    /// Commits what changed so far, stops the writer and waits for it to let
    /// go of the database. Later changes are ignored.
    pub fn close(&self) {
        {
            let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.closed = true;
            p.flushing = true;
            self.inner.wake.notify_one();
        }
        let handle = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
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
        let kept = (agent_id.clone(), tasks.clone(), updates.clone());
        let result = write(&db, agent_id, tasks, updates, &mut tasks_on_disk, &mut updates_on_disk);
        let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(x) = result {
            // Keep what was not written (newer changes win) and try again
            // after the next interval.
            eprintln!("wasmos agent: cannot write the checkpoint: {x}; retrying");
            let (agent_id, tasks, updates) = kept;
            if p.agent_id.is_none() {
                p.agent_id = agent_id;
            }
            for (k, v) in tasks {
                p.tasks.entry(k).or_insert(v);
            }
            for (k, v) in updates {
                p.updates.entry(k).or_insert(v);
            }
            if p.closed {
                // Shutting down: give up rather than spin.
                p.writing = false;
                inner.done.notify_all();
                return;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(task: &str, counter: u64, ts: i64, state: v1::TaskState) -> v1::TaskStatus {
        let mut uuid = 7u64.to_le_bytes().to_vec();
        uuid.extend_from_slice(&counter.to_le_bytes());
        v1::TaskStatus { task_id: task.into(), uuid, timestamp_ms: ts, state: state as i32, ..Default::default() }
    }

    #[test]
    fn what_is_not_acknowledged_survives_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, r) = Checkpoint::open(dir.path(), Duration::from_millis(5)).unwrap();
        assert!(r.agent_id.is_empty() && r.tasks.is_empty() && r.updates.is_empty());
        cp.set_agent_id("agent-1");
        cp.launched("t1", "batch");
        cp.launched("t2", "fw");
        // Same millisecond: the uuid counter orders them (256 > 1 although
        // its little-endian hex sorts first).
        cp.update(&status("t1", 256, 10, v1::TaskState::TaskPaused));
        cp.update(&status("t1", 1, 10, v1::TaskState::TaskRunning));
        let fin = status("t2", 2, 11, v1::TaskState::TaskFinished);
        cp.update(&fin);
        cp.flush();
        // t2's final update is acknowledged: t2 is forgotten with it.
        cp.acked(std::slice::from_ref(&fin.uuid), &["t2".to_string()]);
        cp.close();
        // Changes after close are ignored (the agent's own kills at shutdown).
        cp.launched("t3", "batch");

        let (_cp2, r) = Checkpoint::open(dir.path(), Duration::from_millis(5)).unwrap();
        assert_eq!(r.agent_id, "agent-1");
        assert_eq!(r.tasks, vec![("t1".to_string(), "batch".to_string())]);
        let states: Vec<i32> = r.updates.iter().map(|u| u.state).collect();
        assert_eq!(states, vec![v1::TaskState::TaskRunning as i32, v1::TaskState::TaskPaused as i32]);
    }

    #[test]
    fn a_task_that_starts_and_ends_within_one_interval_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, _) = Checkpoint::open(dir.path(), Duration::from_secs(3600)).unwrap();
        cp.launched("short", "batch");
        let st = status("short", 1, 1, v1::TaskState::TaskFinished);
        cp.update(&st);
        cp.acked(std::slice::from_ref(&st.uuid), &["short".to_string()]);
        cp.launched("long", "batch");
        cp.close();
        let (_cp2, r) = Checkpoint::open(dir.path(), Duration::from_millis(5)).unwrap();
        assert_eq!(r.tasks, vec![("long".to_string(), "batch".to_string())]);
        assert!(r.updates.is_empty());
    }
}
