//! The master's domain types: what commands carry in and what views, events
//! and agent commands carry out. No wire types: `api/` converts both ways.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmos_allocator::Quota;
use wasmos_model::{AgentId, FrameworkId, OfferId, Outcome, Resources, Role, TaskId, TaskSpec, TaskState};

/// What an agent says about itself when it registers.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AgentInfo {
    pub hostname: String,
    pub resources: Resources,
    /// In the order the agent gave them (a later duplicate key wins for matching).
    pub attributes: Vec<(String, String)>,
    pub wasmtime_version: String,
    pub target_triple: String,
    pub agent_version: String,
    /// Sandbox pool slots: tasks alive at once.
    pub task_slots: u32,
    /// Run permits: tasks executing Wasm at once.
    pub cpu_cores: u32,
    /// How `cpus` is enforced there: "shares" or "hard".
    pub cpu_limit: String,
    /// What compiled code must fit there (`EngineProfile::key`).
    pub engine_profile: String,
    /// It runs only what the master compiled for `engine_profile`
    /// (`wasmos-edge`); otherwise it compiles modules itself.
    pub precompiled_only: bool,
}

impl AgentInfo {
    /// Attributes as constraints match them: the agent's own, plus `arch`
    /// (`x86_64`, `aarch64`, `pulley64`: what its engine runs) and `compiler`
    /// (`yes`, or `no` for an edge agent) unless it set them itself.
    pub fn attribute_map(&self) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = self.attributes.iter().cloned().collect();
        let arch = wasmos_sandbox::EngineProfile::parse(&self.engine_profile)
            .map(|p| p.arch().to_string())
            .unwrap_or_else(|_| self.target_triple.split('-').next().unwrap_or_default().to_string());
        if !arch.is_empty() {
            m.entry("arch".into()).or_insert(arch);
        }
        m.entry("compiler".into()).or_insert_with(|| if self.precompiled_only { "no" } else { "yes" }.into());
        m
    }
}

/// A registration (or reregistration, when `agent_id` is set).
#[derive(Debug, Clone)]
pub(crate) struct RegisterAgent {
    pub agent_id: Option<AgentId>,
    pub info: AgentInfo,
    /// Tasks the agent runs (RUNNING or PAUSED), or has unacknowledged
    /// updates for (RUNNING), with the attempt (0: not said).
    pub running: Vec<(TaskId, TaskState, u32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Registered {
    pub agent_id: AgentId,
    pub heartbeat_interval: Duration,
}

/// One status update of a task, from an agent or made by the master.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskStatus {
    pub task_id: TaskId,
    pub framework_id: FrameworkId,
    pub agent_id: Option<AgentId>,
    pub state: TaskState,
    /// Set by agents (at-least-once delivery); empty for the master's own.
    pub uuid: Vec<u8>,
    pub timestamp_ms: i64,
    pub reason: String,
    pub message: String,
    /// Shared: the same outcome goes to the task table, the framework and watchers.
    pub outcome: Option<Arc<Outcome>>,
    /// Which run of the task this is about; set by the master from its
    /// record when it applies the update (0: unknown).
    pub attempt: u32,
    /// A health check's verdict (RUNNING updates of a checked task, and the
    /// end of one its check killed).
    pub healthy: Option<bool>,
    /// KILLED, reason "migrated": the encoded snapshot to resume it from.
    pub snapshot: Option<Arc<Vec<u8>>>,
}

impl TaskStatus {
    /// A status the master makes itself (no UUID: nothing to acknowledge).
    pub fn master(
        task: &TaskId,
        fw: &FrameworkId,
        agent: Option<&AgentId>,
        state: TaskState,
        reason: &str,
        message: String,
    ) -> TaskStatus {
        TaskStatus {
            task_id: task.clone(),
            framework_id: fw.clone(),
            agent_id: agent.cloned(),
            state,
            uuid: Vec::new(),
            timestamp_ms: now_ms(),
            reason: reason.to_string(),
            message,
            outcome: None,
            attempt: 0,
            healthy: None,
            snapshot: None,
        }
    }
}

/// A launch refused before it had a task the master could record (its id is
/// not valid, or already in use): reported to the framework, nothing changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub task_id: String,
    pub framework_id: FrameworkId,
    pub state: TaskState,
    pub reason: &'static str,
    pub message: String,
    pub timestamp_ms: i64,
}

/// What a framework's scheduler receives (remote: over its Subscribe stream;
/// hosted: in its actor).
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Subscribed {
        framework_id: FrameworkId,
        heartbeat_interval: Duration,
    },
    Offers(Vec<Offer>),
    Rescind(OfferId),
    Update(TaskStatus),
    Refused(Refusal),
    /// The framework was torn down; the stream ends.
    Error(String),
    Heartbeat,
    /// An agent with these tasks of the framework drains (deadline: unix ms).
    Drain {
        agent_id: AgentId,
        deadline_ms: Option<i64>,
        tasks: Vec<TaskId>,
    },
}

/// An offer as a framework sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Offer {
    pub offer_id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub hostname: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
}

/// What the master tells an agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AgentCommand {
    Launch {
        framework_id: FrameworkId,
        tasks: Vec<LaunchTask>,
    },
    Kill(TaskId),
    /// Kill only this run (attempt) of the task: an older run an agent
    /// reports after the master gave it up.
    KillAttempt(TaskId, u32),
    Pause(TaskId),
    Resume(TaskId),
    /// Capture a migratable task at its next safe point.
    Capture(TaskId),
    /// Send a running task's output (see [`OutputView`]).
    Tail {
        task: TaskId,
        stderr: bool,
        offset: u64,
        max: u32,
        request: u64,
    },
}

/// A piece of a task's output, from an offset on.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct OutputView {
    pub data: Vec<u8>,
    pub next_offset: u64,
    /// More may come.
    pub running: bool,
    pub truncated: bool,
}

impl OutputView {
    /// An ended (or never-run) task's output from its outcome: at most `max`
    /// bytes (0: [`MAX_OUTPUT_CHUNK`](super::task_ops::MAX_OUTPUT_CHUNK)) of
    /// a stream from `offset` on.
    pub fn of_outcome(outcome: Option<&Outcome>, stderr: bool, offset: u64, max: u32, running: bool) -> OutputView {
        let chunk = super::task_ops::MAX_OUTPUT_CHUNK;
        let max = if max == 0 { chunk } else { max.min(chunk) } as usize;
        let (bytes, truncated) = match outcome {
            Some(o) if stderr => (&o.stderr[..], o.stderr_truncated),
            Some(o) => (&o.stdout[..], o.stdout_truncated),
            None => (&[][..], false),
        };
        let from = (offset as usize).min(bytes.len());
        let to = from.saturating_add(max).min(bytes.len());
        OutputView { data: bytes[from..to].to_vec(), next_offset: to as u64, running, truncated }
    }
}

/// A running task's use so far, from its agent's heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    pub fuel: u64,
    pub mem: u64,
    pub at_ms: i64,
    /// Fuel per second between the last two reports.
    pub fuel_per_sec: f64,
    /// CPU time so far.
    pub cpu_ns: u64,
    /// CPU used, in cores, between the last two reports.
    pub cpu_cores: f64,
}

/// One task of a launch: its spec (shared with the task table, and with every
/// task of a submission) under the task's own id and attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LaunchTask {
    pub id: TaskId,
    pub spec: Arc<TaskSpec>,
    pub attempt: u32,
    /// A captured run to resume (an encoded snapshot).
    pub resume: Option<Arc<Vec<u8>>>,
}

/// What `Watch` streams to operators.
#[derive(Debug, Clone)]
pub(crate) enum WatchEvent {
    /// An update and the task's role (who may see it).
    Task(TaskStatus, Role),
    Refused(Refusal, Role),
    AgentAdded(AgentView),
    AgentRemoved(AgentId),
    FrameworkAdded(FrameworkView),
    FrameworkRemoved(FrameworkId),
}

/// A framework subscribing (or failing over, when `framework_id` is set).
#[derive(Debug, Clone)]
pub(crate) struct FrameworkInfo {
    pub framework_id: Option<FrameworkId>,
    pub name: String,
    pub role: Role,
    pub failover_timeout: Duration,
}

/// Default failover timeout of a framework: one week (Mesos's batch default).
pub(crate) const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(7 * 86400);
/// Longest failover timeout honoured: ten years.
pub(crate) const MAX_FAILOVER_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 86400);

/// A framework's failover timeout from the seconds it asked for (or that the
/// registry holds): 0, negative or not a number means the default of one week;
/// more than ten years is ten years.
pub(crate) fn failover_timeout(secs: f64) -> Duration {
    if secs > 0.0 && secs.is_finite() {
        Duration::from_secs_f64(secs.min(MAX_FAILOVER_TIMEOUT.as_secs_f64()))
    } else {
        DEFAULT_FAILOVER_TIMEOUT
    }
}

/// What a hosted framework needs to be started again after a master restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HostedInfo {
    pub module_sha256: String,
    pub config: String,
}

/// A task as a framework asked for it in an ACCEPT, before validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Launch {
    /// The id the framework gave, checked at launch.
    pub task_id: String,
    pub spec: Arc<TaskSpec>,
    /// Why its resources could not be read (reported as `invalid_resources`).
    pub resources_error: Option<String>,
    /// The module's signature (hex), for a role that requires one.
    pub signature: String,
}

impl From<TaskSpec> for Launch {
    fn from(spec: TaskSpec) -> Launch {
        Launch { task_id: spec.task_id.clone(), spec: Arc::new(spec), resources_error: None, signature: String::new() }
    }
}

/// A scheduler call (Mesos v1 semantics), ids already read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Accept {
        offers: Vec<OfferId>,
        launch: Vec<Launch>,
        refuse: Option<Duration>,
    },
    Decline {
        offers: Vec<OfferId>,
        refuse: Option<Duration>,
    },
    Kill(TaskId),
    Pause(TaskId),
    Resume(TaskId),
    Revive,
    Suppress,
    Acknowledge {
        task_id: TaskId,
        uuid: Vec<u8>,
    },
    /// Empty: every task of the framework.
    Reconcile(Vec<TaskId>),
    Teardown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskAction {
    Kill,
    Pause,
    Resume,
}

/// `wasmos submit`: COUNT tasks from one template in the batch framework.
#[derive(Debug, Clone)]
pub(crate) struct Submission {
    pub template: TaskSpec,
    /// Why the template's resources could not be read.
    pub resources_error: Option<String>,
    pub count: u32,
    pub priority: i32,
    pub constraints: Vec<(String, String)>,
    /// 0: the default.
    pub max_attempts: u32,
    /// The module's signature (hex), for roles that require one.
    pub signature: String,
    /// The role the tasks are accounted to (`None`: the batch framework's
    /// default role, `batch`).
    pub role: Option<Role>,
}

/// Which tasks a listing wants (every field: no constraint when absent).
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskFilter {
    pub state: Option<TaskState>,
    pub framework_id: Option<String>,
    pub role: Option<String>,
    pub agent_id: Option<String>,
    pub name_prefix: Option<String>,
    pub id_prefix: Option<String>,
    /// Submitted at or after (ms since the epoch).
    pub submitted_after_ms: Option<i64>,
    /// Submitted before (ms since the epoch).
    pub submitted_before_ms: Option<i64>,
}

impl TaskFilter {
    pub fn matches(&self, t: &TaskView) -> bool {
        self.state.is_none_or(|s| t.state == s)
            && self.framework_id.as_deref().is_none_or(|f| t.framework_id.as_str() == f)
            && self.role.as_deref().is_none_or(|r| t.role == r)
            && self.agent_id.as_deref().is_none_or(|a| t.agent_id.as_ref().is_some_and(|x| x.as_str() == a))
            && self.name_prefix.as_deref().is_none_or(|p| t.name.starts_with(p))
            && self.id_prefix.as_deref().is_none_or(|p| t.task_id.as_str().starts_with(p))
            && self.submitted_after_ms.is_none_or(|a| t.submitted_at_ms >= a)
            && self.submitted_before_ms.is_none_or(|b| t.submitted_at_ms < b)
    }
}

/// One page of a listing: rows in order, and where the next page starts.
#[derive(Debug, Clone)]
pub(crate) struct Page<T> {
    pub rows: Vec<T>,
    /// The position after which the next page starts; `None`: no more.
    pub next: Option<u64>,
}

impl<T> Default for Page<T> {
    fn default() -> Page<T> {
        Page { rows: Vec::new(), next: None }
    }
}

impl Page<TaskView> {
    /// Two pages of tasks after the same position: what both cover (up to
    /// the nearer of their ends) in listing order, a task in both once (from
    /// `first`, the newer word), at most `limit` rows; and where the next
    /// page starts.
    pub fn merge(first: Page<TaskView>, second: Page<TaskView>, limit: usize) -> Page<TaskView> {
        let cut = match (first.next, second.next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let seen: std::collections::HashSet<TaskId> = first.rows.iter().map(|t| t.task_id.clone()).collect();
        let mut rows: Vec<TaskView> = first
            .rows
            .into_iter()
            .chain(second.rows.into_iter().filter(|t| !seen.contains(&t.task_id)))
            .filter(|t| cut.is_none_or(|c| t.seq <= c))
            .collect();
        rows.sort_by_key(|t| t.seq);
        if rows.len() > limit {
            rows.truncate(limit);
            let next = rows.last().map(|t| t.seq);
            return Page { rows, next };
        }
        Page { rows, next: cut }
    }
}

/// Default page size of listings.
pub const DEFAULT_PAGE_SIZE: usize = 1_000;
/// Largest page a listing returns.
pub const MAX_PAGE_SIZE: usize = 10_000;
/// Most rows a page scans for matches before it returns what it has (a
/// filter that matches rarely must not make one request walk everything).
pub(crate) const PAGE_SCAN_BUDGET: usize = 100_000;

/// A change to a role's weight and quota; absent fields stay as they are.
#[derive(Debug, Clone)]
pub(crate) struct RoleUpdate {
    pub role: Role,
    pub weight: Option<f64>,
    pub clear_quota: bool,
    pub guarantee: Option<Resources>,
    /// In a limit, an explicit zero means none of that resource.
    pub limit: Option<BTreeMap<String, wasmos_model::Scalar>>,
    /// Replaces the role's signing keys (empty: unsigned modules again).
    pub signers: Option<Vec<String>>,
}

#[cfg(test)]
impl RoleUpdate {
    /// Changes nothing (yet).
    pub fn new(role: Role) -> RoleUpdate {
        RoleUpdate { role, weight: None, clear_quota: false, guarantee: None, limit: None, signers: None }
    }
}

/// A role's operator settings, as the registry keeps them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoleSettings {
    pub weight: f64,
    pub quota: Quota,
    /// ed25519 public keys (hex); when any, the role's modules must be
    /// signed by one of them.
    pub signers: Vec<String>,
}

impl Default for RoleSettings {
    fn default() -> RoleSettings {
        RoleSettings { weight: 1.0, quota: Quota::default(), signers: Vec::new() }
    }
}

/// A dynamic reservation asked for (or released) by an operator.
#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub agent: AgentId,
    pub role: Role,
    pub resources: Resources,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentView {
    pub agent_id: AgentId,
    pub info: AgentInfo,
    pub allocated: Option<Resources>,
    pub status: &'static str,
    pub running_tasks: u32,
    pub registered_at_ms: i64,
    /// Memory its running tasks use now, as it reports.
    pub mem_used: u64,
    /// What its last heartbeat said: tasks alive (running, paused, starting),
    /// of those starting, pool slots in use, runs waiting for a core.
    pub tasks_live: u32,
    pub tasks_starting: u32,
    pub slots_in_use: u32,
    pub cpu_waiting: u32,
    /// Status updates it dropped (spool full while cut off), as it reports.
    pub updates_dropped: u64,
    pub mode: super::agents::Mode,
    pub eligible: bool,
}

impl AgentView {
    /// An agent with nothing placed and nothing reported yet (just
    /// registered, or away).
    pub fn idle(
        id: &AgentId,
        info: &AgentInfo,
        registered_at_ms: i64,
        mode: super::agents::Mode,
        eligible: bool,
    ) -> AgentView {
        AgentView {
            agent_id: id.clone(),
            info: info.clone(),
            allocated: None,
            status: if mode == super::agents::Mode::Active && !eligible { "ineligible" } else { mode.as_str() },
            running_tasks: 0,
            registered_at_ms,
            mem_used: 0,
            tasks_live: 0,
            tasks_starting: 0,
            slots_in_use: 0,
            cpu_waiting: 0,
            updates_dropped: 0,
            mode,
            eligible,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FrameworkView {
    pub framework_id: String,
    pub name: String,
    pub role: String,
    pub allocated: Option<Resources>,
    pub active_tasks: u32,
    pub connected: bool,
    pub hosted: bool,
    pub status: String,
    pub last_error: String,
    pub callbacks: u64,
    pub callback_failures: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskView {
    /// Where it stands in listings: when the master first knew it.
    pub seq: u64,
    pub task_id: TaskId,
    pub name: String,
    pub framework_id: FrameworkId,
    /// The role its resources are accounted to.
    pub role: String,
    pub agent_id: Option<AgentId>,
    pub state: TaskState,
    pub outcome: Option<Arc<Outcome>>,
    pub submitted_at_ms: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub attempt: u32,
    pub module_sha256: String,
    pub resources: Resources,
    pub message: String,
    /// What happened to it (a task's page and the registry; empty in listings).
    pub events: Vec<crate::master::tasks::TaskEvent>,
    /// Its spec (a task's page; none in listings and the registry's views).
    pub spec: Option<Arc<TaskSpec>>,
    /// While it runs: its use so far.
    pub usage: Option<Usage>,
    /// Its limits (none in the registry's views of ended tasks).
    pub limits: Option<wasmos_model::Limits>,
    /// Tasks with a health check: the latest verdict and what the check said.
    pub health: Option<(bool, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoleView {
    pub role: Role,
    pub weight: f64,
    pub allocated: Option<Resources>,
    pub dominant_share: f64,
    pub frameworks: Vec<FrameworkId>,
    pub quota: Option<Quota>,
    pub reserved: Option<Resources>,
    pub signers: Vec<String>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Longest offer filter honoured: one year.
pub(crate) const MAX_REFUSE: Duration = Duration::from_secs(365 * 86400);

/// An offer filter from the seconds a framework asked for: negative is 0,
/// more than a year is a year, not a number is none (the default applies).
pub(crate) fn refuse_filter(secs: Option<f64>) -> Option<Duration> {
    secs.filter(|s| s.is_finite()).map(|s| Duration::from_secs_f64(s.clamp(0.0, MAX_REFUSE.as_secs_f64())))
}
