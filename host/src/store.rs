//! The master's registry on disk: an embedded transactional database (redb)
//! under `--state-dir`. Records are the wire types of `StoredTask`,
//! `StoredFramework` and `StoredAgent`. The event loop writes everything that
//! changed in one batch of commands in one transaction, and answers the
//! commands that must be durable (submits, agent status updates, launches,
//! subscriptions, registrations) only after it commits: what the API has
//! acknowledged survives `kill -9`.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use wasmos_proto::v1;

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const FRAMEWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("frameworks");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SUBMISSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("submissions");

#[derive(Debug, thiserror::Error)]
#[error("registry {0}")]
pub struct StoreError(String);

fn err(what: &str) -> impl Fn(String) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

/// Everything the registry held at start-up.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub tasks: Vec<v1::StoredTask>,
    pub frameworks: Vec<v1::StoredFramework>,
    pub agents: Vec<v1::StoredAgent>,
    pub submissions: Vec<v1::StoredSubmission>,
    pub next_id: u64,
    pub epoch: u64,
}

/// One transaction's worth of changes.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub tasks: Vec<(String, Vec<u8>)>,
    pub frameworks: Vec<(String, Option<Vec<u8>>)>,
    pub agents: Vec<(String, Option<Vec<u8>>)>,
    pub submissions: Vec<(String, Vec<u8>)>,
    pub next_id: u64,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.frameworks.is_empty() && self.agents.is_empty() && self.submissions.is_empty()
    }
}

pub(crate) struct Registry {
    db: Database,
}

impl Registry {
    /// Opens (creating) `dir/registry.redb`, bumps the master epoch, and loads it.
    pub fn open(dir: &Path) -> Result<(Registry, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("registry.redb");
        let db = Database::create(&path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let mut loaded = Loaded::default();
        {
            let w = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
            {
                let mut meta = w.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
                let epoch =
                    meta.get("epoch").map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0) + 1;
                loaded.next_id =
                    meta.get("next_id").map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0);
                meta.insert("epoch", epoch).map_err(|e| err("meta")(e.to_string()))?;
                loaded.epoch = epoch;
                w.open_table(TASKS).map_err(|e| err("tasks")(e.to_string()))?;
                w.open_table(FRAMEWORKS).map_err(|e| err("frameworks")(e.to_string()))?;
                w.open_table(AGENTS).map_err(|e| err("agents")(e.to_string()))?;
                w.open_table(SUBMISSIONS).map_err(|e| err("submissions")(e.to_string()))?;
            }
            w.commit().map_err(|e| err("commit")(e.to_string()))?;
        }
        let r = db.begin_read().map_err(|e| err("read")(e.to_string()))?;
        let t = r.open_table(TASKS).map_err(|e| err("tasks")(e.to_string()))?;
        for row in t.iter().map_err(|e| err("tasks")(e.to_string()))? {
            let (k, v) = row.map_err(|e| err("tasks")(e.to_string()))?;
            let rec: v1::StoredTask = wasmos_proto::decode(v.value())
                .ok_or_else(|| StoreError(format!("task record {:?} is damaged", k.value())))?;
            loaded.tasks.push(rec);
        }
        let t = r.open_table(FRAMEWORKS).map_err(|e| err("frameworks")(e.to_string()))?;
        for row in t.iter().map_err(|e| err("frameworks")(e.to_string()))? {
            let (k, v) = row.map_err(|e| err("frameworks")(e.to_string()))?;
            loaded.frameworks.push(
                wasmos_proto::decode(v.value())
                    .ok_or_else(|| StoreError(format!("framework record {:?} is damaged", k.value())))?,
            );
        }
        let t = r.open_table(AGENTS).map_err(|e| err("agents")(e.to_string()))?;
        for row in t.iter().map_err(|e| err("agents")(e.to_string()))? {
            let (k, v) = row.map_err(|e| err("agents")(e.to_string()))?;
            loaded.agents.push(
                wasmos_proto::decode(v.value())
                    .ok_or_else(|| StoreError(format!("agent record {:?} is damaged", k.value())))?,
            );
        }
        drop(t);
        let t = r.open_table(SUBMISSIONS).map_err(|e| err("submissions")(e.to_string()))?;
        for row in t.iter().map_err(|e| err("submissions")(e.to_string()))? {
            let (k, v) = row.map_err(|e| err("submissions")(e.to_string()))?;
            loaded.submissions.push(
                wasmos_proto::decode(v.value())
                    .ok_or_else(|| StoreError(format!("submission record {:?} is damaged", k.value())))?,
            );
        }
        drop(t);
        drop(r);
        Ok((Registry { db }, loaded))
    }

    /// Writes `changes` in one durable transaction.
    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            let mut t = w.open_table(TASKS).map_err(|e| err("tasks")(e.to_string()))?;
            for (k, v) in &changes.tasks {
                t.insert(k.as_str(), v.as_slice()).map_err(|e| err("tasks")(e.to_string()))?;
            }
            let mut f = w.open_table(FRAMEWORKS).map_err(|e| err("frameworks")(e.to_string()))?;
            for (k, v) in &changes.frameworks {
                match v {
                    Some(v) => f.insert(k.as_str(), v.as_slice()).map(|_| ()),
                    None => f.remove(k.as_str()).map(|_| ()),
                }
                .map_err(|e| err("frameworks")(e.to_string()))?;
            }
            let mut a = w.open_table(AGENTS).map_err(|e| err("agents")(e.to_string()))?;
            for (k, v) in &changes.agents {
                match v {
                    Some(v) => a.insert(k.as_str(), v.as_slice()).map(|_| ()),
                    None => a.remove(k.as_str()).map(|_| ()),
                }
                .map_err(|e| err("agents")(e.to_string()))?;
            }
            let mut sub = w.open_table(SUBMISSIONS).map_err(|e| err("submissions")(e.to_string()))?;
            for (k, v) in &changes.submissions {
                sub.insert(k.as_str(), v.as_slice()).map_err(|e| err("submissions")(e.to_string()))?;
            }
            let mut m = w.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
            m.insert("next_id", changes.next_id).map_err(|e| err("meta")(e.to_string()))?;
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))
    }
}

type Batch = (Changes, Vec<Box<dyn FnOnce() + Send>>);

/// Starts the registry writer: it takes batches in order, merges whatever is
/// queued into one transaction (group commit), commits, then runs the held
/// replies. A failed commit stops the process: acknowledging without a
/// durable record would break the API's promise.
pub(crate) fn spawn_writer(reg: Registry) -> std::sync::mpsc::Sender<Batch> {
    let (tx, rx) = std::sync::mpsc::channel::<Batch>();
    std::thread::Builder::new()
        .name("wasmos-registry".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batches = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batches.push(more);
                    if batches.len() >= 64 {
                        break;
                    }
                }
                let mut merged = Changes::default();
                let mut replies = Vec::new();
                for (c, r) in batches {
                    merged.tasks.extend(c.tasks);
                    merged.frameworks.extend(c.frameworks);
                    merged.agents.extend(c.agents);
                    merged.submissions.extend(c.submissions);
                    merged.next_id = merged.next_id.max(c.next_id);
                    replies.extend(r);
                }
                if !merged.is_empty()
                    && let Err(e) = reg.commit(&merged)
                {
                    eprintln!(
                        "wasmos master: cannot write the registry: {e}; stopping so nothing unrecorded is acknowledged"
                    );
                    std::process::exit(70);
                }
                for f in replies {
                    f();
                }
            }
        })
        .expect("spawning the registry writer");
    tx
}
