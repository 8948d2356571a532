//! The master's registry: what survives a restart. The master's tables say
//! what changed in each batch of commands (see [`journal`]); a backend
//! behind the [`Registry`] trait stores it, in one transaction per group of
//! batches, on a writer thread ([`spawn_writer`]). The records here are domain
//! types; each backend has its own encoding (redb: the `Stored*` wire records).

pub(crate) mod journal;
mod redb;

use std::path::Path;
use std::time::Duration;

use wasmos_model::{AgentId, FrameworkId, Resources, Role, TaskId, TaskSpec};

use crate::master::types::{AgentInfo, HostedInfo, RoleSettings, TaskView};

pub(crate) use self::redb::Redb;

#[derive(Debug, thiserror::Error)]
#[error("registry {0}")]
pub struct RegistryError(pub(crate) String);

/// A task whose state matters for recovery (it ended, was launched, was lost
/// and queued again, or belongs to another framework than `batch`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRecord {
    pub view: TaskView,
    /// Its `task_id` and `attempt` are the view's (see [`crate::master::tasks::Task::spec`]).
    pub spec: std::sync::Arc<TaskSpec>,
    /// Batch queue: priority, agent constraints, attempt budget (0: not batch).
    pub priority: i32,
    pub constraints: Vec<(String, String)>,
    pub max_attempts: u32,
    /// Recent status update UUIDs already applied.
    pub applied_uuids: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FrameworkRecord {
    pub id: FrameworkId,
    pub name: String,
    pub role: Role,
    /// A Wasm scheduler hosted by the master: its module and config.
    pub hosted: Option<HostedInfo>,
    pub failover_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentRecord {
    pub id: AgentId,
    pub info: AgentInfo,
    pub registered_at_ms: i64,
}

/// One `wasmos submit` of COUNT tasks, stored once: its tasks are
/// `task-TAG-FIRST ..= task-TAG-(FIRST+COUNT-1)`; a task gets a record of its
/// own only when its state matters for recovery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubmissionRecord {
    pub tag: String,
    pub first: u64,
    pub count: u32,
    pub template: TaskSpec,
    pub priority: i32,
    pub constraints: Vec<(String, String)>,
    pub max_attempts: u32,
    pub submitted_at_ms: i64,
    pub name: String,
}

impl SubmissionRecord {
    pub fn key(&self) -> String {
        format!("task-{}-{}", self.tag, self.first)
    }

    /// The ids of its tasks, in order (`(n, id)`).
    pub fn task_ids(&self) -> impl Iterator<Item = (u64, String)> + '_ {
        (self.first..self.first + self.count as u64).map(|n| (n, format!("task-{}-{n}", self.tag)))
    }
}

/// One transaction's worth of changes; `None` removes a record.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub tasks: Vec<(TaskId, TaskRecord)>,
    pub frameworks: Vec<(FrameworkId, Option<FrameworkRecord>)>,
    pub agents: Vec<(AgentId, Option<AgentRecord>)>,
    pub submissions: Vec<SubmissionRecord>,
    pub roles: Vec<(Role, Option<RoleSettings>)>,
    pub reservations: Vec<((AgentId, Role), Option<Resources>)>,
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

    /// Appends a later batch (its records win).
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

/// Everything the registry held at start-up. Records that cannot be read
/// back as domain values (an id that is no longer valid) are skipped with a
/// warning; bytes that do not decode at all fail the start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub tasks: Vec<TaskRecord>,
    pub frameworks: Vec<FrameworkRecord>,
    pub agents: Vec<AgentRecord>,
    pub submissions: Vec<SubmissionRecord>,
    pub roles: Vec<(Role, RoleSettings)>,
    pub reservations: Vec<((AgentId, Role), Resources)>,
    pub next_id: u64,
}

/// Where the registry lives. `load` is called once, at start; then `commit`
/// for every group of batches, from the writer thread.
pub(crate) trait Registry: Send + 'static {
    fn load(&mut self) -> Result<Loaded, RegistryError>;
    /// Writes `changes` in one durable transaction.
    fn commit(&mut self, changes: &Changes) -> Result<(), RegistryError>;
}

/// Opens the default backend: redb in `dir/registry.redb`.
pub(crate) fn open(dir: &Path) -> Result<(Box<dyn Registry>, Loaded), RegistryError> {
    let mut reg = Redb::open(dir)?;
    let loaded = reg.load()?;
    Ok((Box::new(reg), loaded))
}

type Batch = (Changes, Vec<Box<dyn FnOnce() + Send>>);
/// Where the event loop sends each batch's changes and held replies.
pub(crate) type WriterTx = std::sync::mpsc::Sender<Batch>;

/// Most batches merged into one transaction.
const MAX_GROUP: usize = 64;

/// Starts the registry writer: it takes batches in order, merges whatever is
/// queued into one transaction (group commit), commits, then runs the held
/// replies. A failed commit stops the process: acknowledging without a
/// durable record would break the API's promise.
pub(crate) fn spawn_writer(mut reg: Box<dyn Registry>) -> WriterTx {
    let (tx, rx) = std::sync::mpsc::channel::<Batch>();
    std::thread::Builder::new()
        .name("wasmos-registry".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batches = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batches.push(more);
                    if batches.len() >= MAX_GROUP {
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
