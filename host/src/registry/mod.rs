//! The master's registry: what survives a restart. The master's tables say
//! what changed in each batch of commands (see [`journal`]); a backend
//! behind the [`Registry`] trait stores it, in one transaction per group of
//! batches, on a writer thread ([`spawn_writer`]). The records here are domain
//! types; each backend has its own encoding (redb: the `Stored*` wire records).

pub(crate) mod etcd;
mod history_file;
pub(crate) mod journal;
pub(crate) mod records;
mod redb;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use wasmos_model::{AgentId, FrameworkId, Resources, Role, TaskId, TaskSpec};

use crate::master::types::{AgentInfo, HostedInfo, Page, RoleSettings, TaskFilter, TaskView};

pub(crate) use self::redb::Redb;

#[derive(Debug, thiserror::Error)]
#[error("registry {0}")]
pub struct RegistryError(pub(crate) String);

/// A task whose state matters for recovery (it ended, was launched, was lost
/// and queued again, or belongs to another framework than `batch`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRecord {
    pub view: TaskView,
    /// Kept only while it may run again and no submission holds it: a task
    /// that ended, or belongs to a submission, has none. Its `task_id` and
    /// `attempt` are the view's (see [`crate::master::tasks::Task::spec`]).
    pub spec: Option<Arc<TaskSpec>>,
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
    pub mode: crate::master::agents::Mode,
    pub eligible: bool,
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
    /// The role its tasks are accounted to.
    pub role: Role,
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

/// A job a hosted framework's scheduler was given and has not launched yet
/// (see [`crate::master::frameworks::Hosted::pending`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostedJobRecord {
    pub id: String,
    pub framework: FrameworkId,
    pub template: TaskSpec,
    pub priority: i32,
    pub estimated_fuel: Option<u64>,
}

/// One transaction's worth of changes; `None` removes a record.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub tasks: Vec<(TaskId, TaskRecord)>,
    pub frameworks: Vec<(FrameworkId, Option<FrameworkRecord>)>,
    pub agents: Vec<(AgentId, Option<AgentRecord>)>,
    pub submissions: Vec<SubmissionRecord>,
    /// How many tasks of an open submission ended: (key, count).
    pub submission_ended: Vec<(String, u32)>,
    /// Submissions all of whose tasks ended: their records go.
    pub closed_submissions: Vec<String>,
    pub roles: Vec<(Role, Option<RoleSettings>)>,
    pub reservations: Vec<((AgentId, Role), Option<Resources>)>,
    pub hosted_jobs: Vec<(String, Option<Arc<HostedJobRecord>>)>,
    /// Tokens created (Some) or revoked (None), by name.
    pub tokens: Vec<(String, Option<TokenRecord>)>,
    pub next_id: u64,
    /// `next_id` moved since the last batch (ids were handed out).
    pub ids_moved: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.ids_moved
            && self.tasks.is_empty()
            && self.frameworks.is_empty()
            && self.agents.is_empty()
            && self.submissions.is_empty()
            && self.submission_ended.is_empty()
            && self.closed_submissions.is_empty()
            && self.roles.is_empty()
            && self.reservations.is_empty()
            && self.hosted_jobs.is_empty()
            && self.tokens.is_empty()
    }

    /// Records it writes (for metrics).
    pub fn records(&self) -> usize {
        self.tasks.len()
            + self.frameworks.len()
            + self.agents.len()
            + self.submissions.len()
            + self.submission_ended.len()
            + self.closed_submissions.len()
            + self.roles.len()
            + self.reservations.len()
            + self.hosted_jobs.len()
            + self.tokens.len()
    }

    /// Appends a later batch (its records win).
    fn extend(&mut self, c: Changes) {
        self.tasks.extend(c.tasks);
        self.frameworks.extend(c.frameworks);
        self.agents.extend(c.agents);
        self.submissions.extend(c.submissions);
        self.submission_ended.extend(c.submission_ended);
        self.closed_submissions.extend(c.closed_submissions);
        self.roles.extend(c.roles);
        self.reservations.extend(c.reservations);
        self.hosted_jobs.extend(c.hosted_jobs);
        self.tokens.extend(c.tokens);
        self.next_id = self.next_id.max(c.next_id);
        self.ids_moved |= c.ids_moved;
    }
}

/// A bearer token: only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRecord {
    pub name: String,
    pub secret_sha256: [u8; 32],
    pub grants: Vec<String>,
    pub created_at_ms: i64,
    /// 0: never.
    pub expires_at_ms: i64,
    pub created_by: String,
    pub kind: TokenKind,
}

/// What a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Calls the APIs with its grants.
    Bearer,
    /// Lets agents join; `None`: any number of times.
    Join { uses_left: Option<u32> },
    /// An agent's own secret over an `--insecure` master.
    Agent { agent_id: wasmos_model::AgentId },
}

/// What the registry gives back at start-up: everything but the history of
/// ended tasks, of which only the most recent `keep_recent` come back (the
/// rest is read on demand through [`History`]). Records that cannot be read
/// back as domain values (an id that is no longer valid) are skipped with a
/// warning; bytes that do not decode at all fail the start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Tasks that have not ended, and the most recent ended ones.
    pub tasks: Vec<TaskRecord>,
    pub frameworks: Vec<FrameworkRecord>,
    pub agents: Vec<AgentRecord>,
    /// Open submissions, each with how many of its tasks ended.
    pub submissions: Vec<(SubmissionRecord, u32)>,
    /// Ids of open submissions' tasks that have a record of their own but
    /// were not loaded (they ended a while ago): not to be queued again.
    pub recorded: HashSet<String>,
    pub roles: Vec<(Role, RoleSettings)>,
    pub reservations: Vec<((AgentId, Role), Resources)>,
    pub hosted_jobs: Vec<HostedJobRecord>,
    pub tokens: Vec<TokenRecord>,
    pub next_id: u64,
    /// Bumped at every open: which start of the master this is.
    pub epoch: u64,
}

/// Where the registry lives. `load` is called once, at start; then `commit`
/// for every group of batches, from the writer thread; `maintain` runs
/// beside it.
pub(crate) trait Registry: Send + 'static {
    /// Everything but old history; `keep_recent`: how many ended tasks to
    /// load back (the most recent).
    fn load(&mut self, keep_recent: usize) -> Result<Loaded, RegistryError>;
    /// Writes `changes` in one durable transaction.
    fn commit(&mut self, changes: &Changes) -> Result<(), RegistryError>;
    /// Starts what keeps the registry bounded, on its own thread: ended
    /// tasks deleted once they ended more than `task_history` ago (and, for
    /// backends that keep them apart, moved out of what a restart reads).
    fn maintain(&self, task_history: Duration);
    /// Reads ended tasks that left the master's memory.
    fn history(&self) -> Arc<dyn History>;
}

/// Read access to the registry's task history, from any thread (never the
/// event loop's: these read the disk).
pub(crate) trait History: Send + Sync + 'static {
    /// A task's record, whatever its state.
    fn get(&self, id: &str) -> Result<Option<TaskView>, RegistryError>;
    /// Ended tasks after listing position `after` that match `filter`: at
    /// most `limit`, scanning at most `budget` records.
    fn page(
        &self,
        after: u64,
        filter: &TaskFilter,
        limit: usize,
        budget: usize,
    ) -> Result<Page<TaskView>, RegistryError>;
}

/// How the registry keeps history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Ended tasks loaded back at start (the most recent).
    pub keep_recent: usize,
    /// Bytes of registry pages cached in memory.
    pub cache: usize,
}

/// Opens the default backend: redb in `dir/registry.redb`.
pub(crate) fn open(dir: &Path, opts: Options) -> Result<(Box<dyn Registry>, Loaded), RegistryError> {
    let mut reg = Redb::open(dir, opts.cache)?;
    let loaded = reg.load(opts.keep_recent)?;
    Ok((Box::new(reg), loaded))
}

type Batch = (Changes, Vec<Box<dyn FnOnce() + Send>>, u64);
/// Where the event loop sends each batch's changes and held replies.
pub(crate) struct WriterTx {
    tx: std::sync::mpsc::Sender<Batch>,
    /// Batches sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
}

impl WriterTx {
    /// Hands over batch `n`'s changes and the replies that wait for them.
    pub fn send(&self, changes: Changes, replies: Vec<Box<dyn FnOnce() + Send>>, n: u64) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send((changes, replies, n));
    }
}

/// Most batches merged into one transaction.
const MAX_GROUP: usize = 64;

/// Starts the registry writer: it takes batches in order, merges whatever is
/// queued into one transaction (group commit), commits, records the newest
/// committed batch number in `committed`, then runs the held replies. A
/// failed commit stops the process: acknowledging without a durable record
/// would break the API's promise.
pub(crate) fn spawn_writer(
    mut reg: Box<dyn Registry>,
    committed: Arc<AtomicU64>,
    metrics: Arc<crate::metrics::Metrics>,
) -> WriterTx {
    let (tx, rx) = std::sync::mpsc::channel::<Batch>();
    let queued = Arc::new(AtomicUsize::new(0));
    let pending = queued.clone();
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
                pending.fetch_sub(batches.len(), Ordering::AcqRel);
                let mut merged = Changes::default();
                let mut replies = Vec::new();
                let mut newest = 0;
                for (c, r, n) in batches {
                    merged.extend(c);
                    replies.extend(r);
                    newest = newest.max(n);
                }
                if !merged.is_empty() {
                    let t0 = std::time::Instant::now();
                    if let Err(e) = reg.commit(&merged) {
                        if e.0 == etcd::DEPOSED {
                            eprintln!(
                                "wasmos master: {}; exiting so that nothing is written in an old epoch",
                                etcd::DEPOSED
                            );
                            std::process::exit(crate::ha::EXIT_DEPOSED);
                        }
                        eprintln!(
                            "wasmos master: cannot write the registry: {e}; stopping so nothing unrecorded is acknowledged"
                        );
                        std::process::exit(70);
                    }
                    metrics.registry_commit.observe(t0.elapsed().as_secs_f64());
                    metrics.registry_commit_records.observe(merged.records() as f64);
                }
                committed.fetch_max(newest, Ordering::Release);
                for f in replies {
                    f();
                }
            }
        })
        .expect("spawning the registry writer");
    WriterTx { tx, queued }
}
