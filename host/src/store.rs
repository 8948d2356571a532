//! The master's registry on disk: an embedded transactional database (redb)
//! under `--state-dir`. Records are the wire types of `StoredTask`,
//! `StoredSubmission`, `StoredFramework`, `StoredAgent`, `StoredRole` and
//! `StoredReservation`. The event loop writes everything that
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
const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
/// "agent-id role" -> StoredReservation
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");

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
    pub roles: Vec<v1::StoredRole>,
    pub reservations: Vec<v1::StoredReservation>,
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
    pub roles: Vec<(String, Option<Vec<u8>>)>,
    pub reservations: Vec<(String, Option<Vec<u8>>)>,
    pub next_id: u64,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.frameworks.is_empty()
            && self.agents.is_empty()
            && self.submissions.is_empty()
            && self.roles.is_empty()
            && self.reservations.is_empty()
    }

    fn extend(&mut self, c: Changes) {
        self.tasks.extend(c.tasks);
        self.frameworks.extend(c.frameworks);
        self.agents.extend(c.agents);
        self.submissions.extend(c.submissions);
        self.roles.extend(c.roles);
        self.reservations.extend(c.reservations);
        self.next_id = self.next_id.max(c.next_id);
    }
}

/// Reads every record of `table`; a record that does not decode is an error
/// naming its key (the registry is damaged; nothing is silently dropped).
fn load<T: wasmos_proto::Wire>(
    r: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    let t = r.open_table(table).map_err(|e| err(what)(e.to_string()))?;
    let mut out = Vec::new();
    for row in t.iter().map_err(|e| err(what)(e.to_string()))? {
        let (k, v) = row.map_err(|e| err(what)(e.to_string()))?;
        out.push(
            wasmos_proto::decode(v.value())
                .ok_or_else(|| StoreError(format!("{what} record {:?} is damaged", k.value())))?,
        );
    }
    Ok(out)
}

/// Inserts or (for `None`) removes each keyed record.
fn put(
    w: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    what: &str,
    rows: &[(String, Option<Vec<u8>>)],
) -> Result<(), StoreError> {
    let mut t = w.open_table(table).map_err(|e| err(what)(e.to_string()))?;
    for (k, v) in rows {
        match v {
            Some(v) => t.insert(k.as_str(), v.as_slice()).map(|_| ()),
            None => t.remove(k.as_str()).map(|_| ()),
        }
        .map_err(|e| err(what)(e.to_string()))?;
    }
    Ok(())
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
                w.open_table(ROLES).map_err(|e| err("roles")(e.to_string()))?;
                w.open_table(RESERVATIONS).map_err(|e| err("reservations")(e.to_string()))?;
            }
            w.commit().map_err(|e| err("commit")(e.to_string()))?;
        }
        let r = db.begin_read().map_err(|e| err("read")(e.to_string()))?;
        loaded.tasks = load(&r, TASKS, "task")?;
        loaded.frameworks = load(&r, FRAMEWORKS, "framework")?;
        loaded.agents = load(&r, AGENTS, "agent")?;
        loaded.submissions = load(&r, SUBMISSIONS, "submission")?;
        loaded.roles = load(&r, ROLES, "role")?;
        loaded.reservations = load(&r, RESERVATIONS, "reservation")?;
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
            put(&w, FRAMEWORKS, "frameworks", &changes.frameworks)?;
            put(&w, AGENTS, "agents", &changes.agents)?;
            put(&w, ROLES, "roles", &changes.roles)?;
            put(&w, RESERVATIONS, "reservations", &changes.reservations)?;
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
/// Where the event loop sends each batch's changes and held replies.
pub(crate) type WriterTx = std::sync::mpsc::Sender<Batch>;

/// Starts the registry writer: it takes batches in order, merges whatever is
/// queued into one transaction (group commit), commits, then runs the held
/// replies. A failed commit stops the process: acknowledging without a
/// durable record would break the API's promise.
pub(crate) fn spawn_writer(reg: Registry) -> WriterTx {
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
                    merged.extend(c);
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
