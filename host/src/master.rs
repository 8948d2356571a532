//! The master's state and its event loop. One task owns all state; services
//! send it [`Cmd`]s (a closed enum) and await replies, so there are no locks
//! around the registry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;
use wasmos_allocator::{Allocation, Allocator, Config as AllocConfig, Quota};
use wasmos_model::{AgentId, FrameworkId, OfferId, Resources, Role, TaskId, TaskState};
use wasmos_proto::v1;
use wasmos_proto::{resources_from_wire, resources_to_wire, state_to_wire};

use crate::MasterConfig;
use crate::artifacts::ArtifactStore;
use crate::batch::{Batch, BatchTask, DEFAULT_MAX_ATTEMPTS};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Status>>;
pub(crate) type EventTx = mpsc::UnboundedSender<Result<v1::Event, Status>>;
pub(crate) type CommandTx = mpsc::UnboundedSender<Result<v1::AgentCommand, Status>>;

/// Everything the services can ask of the master.
pub(crate) enum Cmd {
    RegisterAgent(v1::RegisterAgentRequest, Reply<v1::RegisterAgentResponse>),
    AgentCommands(String, CommandTx, Reply<()>),
    AgentUpdates(v1::StatusUpdates, Reply<v1::StatusAcks>),
    AgentHeartbeat(String, Reply<()>),
    /// (info, events, Some if hosted by the master as a Wasm scheduler, reply)
    Subscribe(v1::FrameworkInfo, EventTx, Option<HostedInfo>, Reply<()>),
    Call(v1::Call, Reply<()>),
    ListAgents(Reply<v1::ListAgentsResponse>),
    ListFrameworks(Reply<v1::ListFrameworksResponse>),
    ListTasks(v1::ListTasksRequest, Reply<v1::ListTasksResponse>),
    GetTask(String, Reply<v1::TaskSummary>),
    ListRoles(Reply<v1::ListRolesResponse>),
    UpdateRole(v1::UpdateRoleRequest, Reply<v1::UpdateRoleResponse>),
    /// (request, true to reserve / false to unreserve, reply)
    Reserve(v1::ReserveRequest, bool, Reply<v1::ReserveResponse>),
    Submit(v1::SubmitRequest, Reply<v1::SubmitResponse>),
    TaskAction(String, TaskAction, Reply<()>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskAction {
    Kill,
    Pause,
    Resume,
}

struct Agent {
    info: v1::AgentInfo,
    resources: Resources,
    attributes: BTreeMap<String, String>,
    tx: Option<CommandTx>,
    last_seen: Instant,
    registered_at_ms: i64,
    tasks: HashSet<TaskId>,
    /// Commands waiting for the agent's command stream to attach.
    pending: Vec<v1::AgentCommand>,
}

enum FrameworkKind {
    Batch,
    Remote { tx: Option<EventTx> },
}

struct Framework {
    name: String,
    role: Role,
    kind: FrameworkKind,
    /// Non-terminal tasks, plus terminal ones whose last update is not yet
    /// acknowledged (Mesos keeps those for reconciliation too).
    tasks: HashSet<TaskId>,
    offers: HashSet<OfferId>,
    /// Latest update with a UUID per task, until the framework acknowledges it;
    /// resent when the framework fails over.
    unacked: HashMap<TaskId, v1::TaskStatus>,
    /// A Wasm scheduler hosted by the master (talks through the same event
    /// stream and calls as a remote framework).
    hosted: bool,
    hosted_info: Option<HostedInfo>,
    /// How long a disconnected framework keeps its tasks before teardown.
    failover_timeout: Duration,
    disconnected_at: Option<Instant>,
}

/// A framework's failover timeout: its own, or the default of one week.
fn failover_of(info: &v1::FrameworkInfo) -> Duration {
    if info.failover_timeout_s > 0.0 && info.failover_timeout_s.is_finite() {
        Duration::from_secs_f64(info.failover_timeout_s.min(10.0 * 365.0 * 86400.0))
    } else {
        DEFAULT_FAILOVER_TIMEOUT
    }
}

/// Default failover timeout of a framework: one week (Mesos's batch default).
pub(crate) const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(7 * 86400);

struct Task {
    name: String,
    framework: FrameworkId,
    agent: Option<AgentId>,
    spec: v1::TaskSpec,
    resources: Resources,
    /// What the allocator counts for this task while it holds resources.
    allocation: Option<Allocation>,
    state: TaskState,
    outcome: Option<v1::Outcome>,
    message: String,
    submitted_at_ms: i64,
    started_at_ms: i64,
    finished_at_ms: i64,
    attempt: u32,
    applied: Vec<Vec<u8>>,
}

/// The task table, remembering which tasks changed since the last commit.
#[derive(Default)]
struct Tasks {
    map: HashMap<TaskId, Task>,
    dirty: HashSet<TaskId>,
}

impl Tasks {
    fn get(&self, id: &TaskId) -> Option<&Task> {
        self.map.get(id)
    }
    fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        let t = self.map.get_mut(id)?;
        self.dirty.insert(id.clone());
        Some(t)
    }
    fn contains_key(&self, id: &TaskId) -> bool {
        self.map.contains_key(id)
    }
    fn entry(&mut self, id: TaskId) -> std::collections::hash_map::Entry<'_, TaskId, Task> {
        self.dirty.insert(id.clone());
        self.map.entry(id)
    }
}

impl std::ops::Index<&TaskId> for Tasks {
    type Output = Task;
    fn index(&self, id: &TaskId) -> &Task {
        &self.map[id]
    }
}

/// How long after an agent reregisters a task it did not report may still get
/// its (resent) final update before it is declared LOST.
const UNREPORTED_GRACE: Duration = Duration::from_secs(5);

/// How many applied status-update UUIDs are remembered per task (duplicates
/// come from resends of recent updates only).
const APPLIED_UUIDS_KEPT: usize = 16;

/// What a hosted framework needs to be started again after a master restart.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostedInfo {
    pub module_sha256: String,
    pub config: String,
}

struct OfferRec {
    framework: FrameworkId,
    agent: AgentId,
    role: Role,
    allocation: Allocation,
}

fn quota_to_wire(q: &Quota) -> v1::Quota {
    v1::Quota {
        guarantee: Some(resources_to_wire(&q.guarantee)),
        limit: Some(v1::Resources {
            scalars: q.limit.iter().map(|(n, v)| v1::Scalar { name: n.clone(), milli: v.milli() }).collect(),
        }),
    }
}

/// A quota from the wire; in the limit, explicit zero amounts are kept (none
/// of that resource), which `resources_from_wire` would drop.
fn quota_from_wire(q: Option<&v1::Quota>) -> Result<Quota, Status> {
    let Some(q) = q else { return Ok(Quota::default()) };
    let guarantee = resources_from_wire(q.guarantee.as_ref())
        .map_err(|e| Status::invalid_argument(format!("quota guarantee: {e}")))?;
    // Checks names and signs the usual way.
    resources_from_wire(q.limit.as_ref()).map_err(|e| Status::invalid_argument(format!("quota limit: {e}")))?;
    let mut limit = BTreeMap::new();
    for s in q.limit.iter().flat_map(|l| &l.scalars) {
        if limit.insert(s.name.clone(), wasmos_model::Scalar(s.milli)).is_some() {
            return Err(Status::invalid_argument(format!(
                "quota limit names {} twice; give each resource once",
                s.name
            )));
        }
    }
    Ok(Quota { guarantee, limit })
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn status(
    task: &TaskId,
    fw: &FrameworkId,
    agent: Option<&AgentId>,
    state: v1::TaskState,
    reason: &str,
    message: String,
) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: task.to_string(),
        framework_id: fw.to_string(),
        agent_id: agent.map(|a| a.to_string()).unwrap_or_default(),
        state: state as i32,
        uuid: Vec::new(),
        timestamp_ms: now_ms(),
        reason: reason.to_string(),
        message,
        outcome: None,
    }
}

/// Takes `need` out of `pool`: reserved parts first, then unreserved.
fn take(pool: &mut Allocation, need: &Resources) -> Option<Allocation> {
    if !pool.total().contains(need) {
        return None;
    }
    let mut left = need.clone();
    let mut out = Allocation::default();
    for (role, r) in pool.reserved.iter_mut() {
        let part = r.min(&left);
        if !part.is_empty() {
            r.sub_assign(&part);
            left.sub_assign(&part);
            out.reserved.entry(role.clone()).or_default().add_assign(&part);
        }
    }
    pool.reserved.retain(|_, r| !r.is_empty());
    pool.unreserved.sub_assign(&left);
    out.unreserved = left;
    Some(out)
}

fn merge(into: &mut Allocation, more: &Allocation) {
    into.unreserved.add_assign(&more.unreserved);
    for (role, r) in &more.reserved {
        into.reserved.entry(role.clone()).or_default().add_assign(r);
    }
}

pub(crate) struct Master {
    cfg: MasterConfig,
    started: Instant,
    tag: String,
    next_id: u64,
    alloc: Allocator,
    agents: HashMap<AgentId, Agent>,
    frameworks: HashMap<FrameworkId, Framework>,
    tasks: Tasks,
    task_order: Vec<TaskId>,
    offers: HashMap<OfferId, OfferRec>,
    batch: Batch,
    batch_id: FrameworkId,
    /// Frameworks that were torn down may not come back under the same id.
    torn_down: HashSet<FrameworkId>,
    artifacts: Arc<ArtifactStore>,
    pub(crate) watch: broadcast::Sender<v1::WatchEvent>,
    dirty: bool,
    /// The registry writer thread (absent without a registry).
    writer: Option<crate::store::WriterTx>,
    dirty_frameworks: HashSet<FrameworkId>,
    /// Roles whose weight or quota an operator set (the rest have defaults).
    role_settings: BTreeMap<Role, v1::StoredRole>,
    /// Dynamic reservations by (agent, role), applied whenever the agent registers.
    reservations: BTreeMap<(AgentId, Role), Resources>,
    dirty_roles: BTreeSet<Role>,
    dirty_reservations: BTreeSet<(AgentId, Role)>,
    /// Recorded reservations the allocator does not hold (their agent came
    /// back with less free than they need); retried every tick.
    unapplied: BTreeSet<(AgentId, Role)>,
    dirty_agents: HashSet<AgentId>,
    /// Submissions accepted in this batch, stored as one record each.
    new_submissions: Vec<v1::StoredSubmission>,
    /// Replies held back until this batch's changes are committed.
    deferred: Vec<Box<dyn FnOnce() + Send>>,
    /// Agent commands held back until this batch's changes are committed.
    outbox: Vec<(AgentId, v1::AgentCommand)>,
    /// Tasks their agent did not report at reregistration: LOST at the deadline
    /// unless an update for them arrives first.
    unreported: HashMap<TaskId, Instant>,
    /// Agents known from the registry that have not reregistered since the
    /// master started, with the deadline for doing so.
    recovering: HashMap<AgentId, Instant>,
    /// Batch tasks restored from a submission record (never launched as far
    /// as the registry knows): an agent that reports one ran the previous
    /// master's unrecorded launch, which is adopted. Cleared at launch.
    adoptable: HashSet<TaskId>,
}

impl Master {
    pub(crate) fn new(
        cfg: MasterConfig,
        artifacts: Arc<ArtifactStore>,
        watch: broadcast::Sender<v1::WatchEvent>,
        registry: Option<(crate::store::Registry, crate::store::Loaded)>,
    ) -> Master {
        let tag = format!("{:04x}", (now_ms() as u64 ^ (std::process::id() as u64 * 0x9e37)) & 0xffff);
        let mut alloc = Allocator::new(AllocConfig { seed: cfg.seed, ..AllocConfig::default() });
        let batch_id = FrameworkId::new("batch").expect("valid id");
        let batch_role = cfg.batch_role.clone();
        // Cannot fail: a fresh allocator, a valid role.
        let _ = alloc.add_framework(batch_id.clone(), std::slice::from_ref(&batch_role));
        let mut frameworks = HashMap::new();
        frameworks.insert(
            batch_id.clone(),
            Framework {
                name: "batch".into(),
                role: batch_role,
                kind: FrameworkKind::Batch,
                tasks: HashSet::new(),
                offers: HashSet::new(),
                unacked: HashMap::new(),
                hosted: true,
                hosted_info: None,
                failover_timeout: DEFAULT_FAILOVER_TIMEOUT,
                disconnected_at: None,
            },
        );
        let mut m = Master {
            cfg,
            started: Instant::now(),
            tag,
            next_id: 0,
            alloc,
            agents: HashMap::new(),
            frameworks,
            tasks: Tasks::default(),
            task_order: Vec::new(),
            offers: HashMap::new(),
            batch: Batch::default(),
            batch_id: batch_id.clone(),
            torn_down: HashSet::new(),
            artifacts,
            watch,
            dirty: false,
            writer: None,
            dirty_frameworks: HashSet::new(),
            role_settings: BTreeMap::new(),
            reservations: BTreeMap::new(),
            dirty_roles: BTreeSet::new(),
            dirty_reservations: BTreeSet::new(),
            unapplied: BTreeSet::new(),
            dirty_agents: HashSet::new(),
            new_submissions: Vec::new(),
            deferred: Vec::new(),
            outbox: Vec::new(),
            unreported: HashMap::new(),
            recovering: HashMap::new(),
            adoptable: HashSet::new(),
        };
        // Nothing queued yet: no offers for the batch framework until a submit.
        let _ = m.alloc.suppress(&batch_id, &[]);
        m.batch.suppressed = true;
        if let Some((reg, loaded)) = registry {
            m.restore(loaded);
            m.writer = Some(crate::store::spawn_writer(reg));
        }
        m
    }

    fn defer(&mut self, f: impl FnOnce() + Send + 'static) {
        self.deferred.push(Box::new(f));
    }

    /// Answers once this batch's registry changes are committed.
    fn reply_after_commit<T: Send + 'static>(&mut self, reply: Reply<T>, r: Result<T, Status>) {
        self.defer(move || {
            let _ = reply.send(r);
        });
    }

    /// Commits what changed in this batch, then releases the held replies.
    /// If the commit fails, the replies say so and the master exits: running
    /// on without durability would break the promise the API makes.
    fn persist(&mut self) {
        if self.writer.is_none() {
            // In-memory registry: nothing to write.
            self.tasks.dirty.clear();
            self.dirty_frameworks.clear();
            self.dirty_agents.clear();
            self.dirty_roles.clear();
            self.dirty_reservations.clear();
            self.new_submissions.clear();
            self.flush_outbox();
            for f in std::mem::take(&mut self.deferred) {
                f();
            }
            return;
        }
        let mut changes = crate::store::Changes { next_id: self.next_id, ..Default::default() };
        for id in std::mem::take(&mut self.tasks.dirty) {
            if let Some(t) = self.tasks.get(&id) {
                let b = self.batch.tasks.get(&id);
                let rec = v1::StoredTask {
                    summary: Some(self.summary(&id, t)),
                    spec: Some(t.spec.clone()),
                    priority: b.map(|b| b.priority).unwrap_or(0),
                    constraints: b
                        .map(|b| {
                            b.constraints
                                .iter()
                                .map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() })
                                .collect()
                        })
                        .unwrap_or_default(),
                    max_attempts: b.map(|b| b.max_attempts).unwrap_or(0),
                    applied_uuids: t.applied.clone(),
                };
                changes.tasks.push((id.to_string(), wasmos_proto::encode(&rec)));
            }
        }
        for id in std::mem::take(&mut self.dirty_frameworks) {
            let rec = self.frameworks.get(&id).filter(|_| id != self.batch_id).map(|f| {
                wasmos_proto::encode(&v1::StoredFramework {
                    framework_id: id.to_string(),
                    name: f.name.clone(),
                    role: f.role.to_string(),
                    hosted: f.hosted,
                    module_sha256: f.hosted_info.as_ref().map(|h| h.module_sha256.clone()).unwrap_or_default(),
                    config: f.hosted_info.as_ref().map(|h| h.config.clone()).unwrap_or_default(),
                    failover_timeout_s: f.failover_timeout.as_secs_f64(),
                })
            });
            changes.frameworks.push((id.to_string(), rec));
        }
        for sub in std::mem::take(&mut self.new_submissions) {
            let key = format!("task-{}-{}", sub.tag, sub.first);
            changes.submissions.push((key, wasmos_proto::encode(&sub)));
        }
        for id in std::mem::take(&mut self.dirty_agents) {
            let rec = self.agents.get(&id).map(|a| {
                wasmos_proto::encode(&v1::StoredAgent {
                    agent_id: id.to_string(),
                    info: Some(a.info.clone()),
                    registered_at_ms: a.registered_at_ms,
                })
            });
            changes.agents.push((id.to_string(), rec));
        }
        for role in std::mem::take(&mut self.dirty_roles) {
            let rec = self.role_settings.get(&role).map(wasmos_proto::encode);
            changes.roles.push((role.to_string(), rec));
        }
        for key in std::mem::take(&mut self.dirty_reservations) {
            let rec = self.reservations.get(&key).map(|r| {
                wasmos_proto::encode(&v1::StoredReservation {
                    agent_id: key.0.to_string(),
                    role: key.1.to_string(),
                    resources: Some(resources_to_wire(r)),
                })
            });
            changes.reservations.push((format!("{} {}", key.0, key.1), rec));
        }
        // Agent commands go out now; replies wait for the commit. A launch the
        // registry never recorded (master killed before committing) is killed
        // when its agent reregisters; nothing acknowledged depends on it.
        self.flush_outbox();
        let deferred = std::mem::take(&mut self.deferred);
        match &self.writer {
            Some(w) if !changes.is_empty() || !deferred.is_empty() => {
                // The writer thread commits (grouping queued batches into one
                // transaction) and then releases the replies, so the event loop
                // never waits for the disk.
                let _ = w.send((changes, deferred));
            }
            _ => {
                for f in deferred {
                    f();
                }
            }
        }
    }

    fn clock(&self) -> Duration {
        self.started.elapsed()
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}-{}", self.tag, self.next_id)
    }

    /// The event loop: handles commands in batches, then runs an allocation
    /// cycle if anything changed (at most once per `allocation_interval`).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut tick = tokio::time::interval(self.cfg.agent_heartbeat_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_alloc = Instant::now() - self.cfg.allocation_interval;
        let mut last_fw_heartbeat = Instant::now();
        loop {
            let alloc_at = last_alloc + self.cfg.allocation_interval;
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd);
                    // Drain what is already queued: one allocation and one
                    // registry commit per batch.
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(alloc_at.into()), if self.dirty => {}
                _ = tick.tick() => {
                    // At least one cycle per tick: offer filters that expired
                    // since the last cycle make resources offerable again.
                    self.dirty = true;
                    self.check_agents();
                    self.retry_unapplied();
                    self.expire_recovering();
                    self.expire_unreported();
                    self.expire_frameworks();
                    if last_fw_heartbeat.elapsed() >= self.cfg.framework_heartbeat_interval {
                        last_fw_heartbeat = Instant::now();
                        self.heartbeat_frameworks();
                    }
                }
            }
            if self.dirty && Instant::now() >= alloc_at {
                self.dirty = false;
                last_alloc = Instant::now();
                self.allocate();
            }
            self.persist();
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::RegisterAgent(req, reply) => {
                let r = self.register_agent(req);
                self.reply_after_commit(reply, r);
            }
            Cmd::AgentCommands(id, tx, reply) => {
                let _ = reply.send(self.attach_agent(&id, tx));
            }
            Cmd::AgentUpdates(u, reply) => {
                let r = self.agent_updates(u);
                self.reply_after_commit(reply, r);
            }
            Cmd::AgentHeartbeat(id, reply) => {
                let r = match AgentId::new(id.clone()).ok().and_then(|a| self.agents.get_mut(&a)) {
                    Some(a) => {
                        a.last_seen = Instant::now();
                        Ok(())
                    }
                    None => Err(Status::not_found(format!("unknown agent {id:?}; register again"))),
                };
                let _ = reply.send(r);
            }
            Cmd::Subscribe(info, tx, hosted, reply) => {
                let r = self.subscribe(info, tx, hosted);
                self.reply_after_commit(reply, r);
            }
            Cmd::Call(call, reply) => {
                let r = self.call(call);
                self.reply_after_commit(reply, r);
            }
            Cmd::ListAgents(reply) => {
                let _ = reply.send(Ok(self.list_agents()));
            }
            Cmd::ListFrameworks(reply) => {
                let _ = reply.send(Ok(self.list_frameworks()));
            }
            Cmd::ListTasks(req, reply) => {
                let _ = reply.send(self.list_tasks(req));
            }
            Cmd::GetTask(id, reply) => {
                let r = TaskId::new(id.clone())
                    .ok()
                    .and_then(|t| self.tasks.get(&t).map(|task| self.summary(&t, task)))
                    .ok_or_else(|| Status::not_found(format!("no task {id:?}; list tasks with `wasmos tasks`")));
                let _ = reply.send(r);
            }
            Cmd::ListRoles(reply) => {
                let _ = reply.send(Ok(self.list_roles()));
            }
            Cmd::UpdateRole(req, reply) => {
                let r = self.update_role(req);
                self.reply_after_commit(reply, r);
            }
            Cmd::Reserve(req, reserve, reply) => {
                let r = self.reserve(req, reserve);
                self.reply_after_commit(reply, r);
            }
            Cmd::Submit(req, reply) => {
                let r = self.submit(req);
                self.reply_after_commit(reply, r);
            }
            Cmd::TaskAction(id, action, reply) => {
                let r = match TaskId::new(id.clone()) {
                    Ok(t) => self.task_action(&t, action, None),
                    Err(e) => Err(Status::invalid_argument(e.to_string())),
                };
                let _ = reply.send(r);
            }
        }
    }

    // ------------------------------------------------------------ agents

    fn register_agent(&mut self, req: v1::RegisterAgentRequest) -> Result<v1::RegisterAgentResponse, Status> {
        let info = req.info.ok_or_else(|| Status::invalid_argument("register without agent info; send AgentInfo"))?;
        let resources = resources_from_wire(info.resources.as_ref())
            .map_err(|e| Status::invalid_argument(format!("agent resources: {e}")))?;
        if resources.is_empty() {
            return Err(Status::invalid_argument(
                "agent offers no resources; give it e.g. --resources cpus:2;mem:4GiB",
            ));
        }
        let mut attributes = BTreeMap::new();
        for a in &info.attributes {
            attributes.insert(a.key.clone(), a.value.clone());
        }
        let id = if req.agent_id.is_empty() {
            AgentId::new(self.fresh("agent")).expect("valid id")
        } else {
            AgentId::new(req.agent_id.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        if let Some(existing) = self.agents.get_mut(&id) {
            // Reregistration of a known agent (e.g. its stream broke): tasks it
            // runs that are no longer its own are killed.
            existing.last_seen = Instant::now();
            existing.info = info;
            let stray: Vec<String> = req
                .running_tasks
                .iter()
                .filter(|t| {
                    TaskId::new(t.task_id.clone())
                        .ok()
                        .and_then(|tid| self.tasks.get(&tid))
                        .is_none_or(|k| k.state.is_terminal() || k.agent.as_ref() != Some(&id))
                })
                .map(|t| t.task_id.clone())
                .collect();
            for t in stray {
                let cmd = v1::AgentCommand {
                    command: Some(v1::agent_command::Command::Kill(v1::agent_command::Kill { task_id: t })),
                };
                self.send_agent(&id, cmd);
            }
            // Tasks the master has there that the agent no longer knows (it
            // restarted without its checkpoint): LOST after the grace period,
            // unless their final update arrives first.
            let reported: HashSet<&str> = req.running_tasks.iter().map(|t| t.task_id.as_str()).collect();
            let missing: Vec<TaskId> = self
                .tasks
                .map
                .iter()
                .filter(|(k, t)| {
                    t.agent.as_ref() == Some(&id) && !t.state.is_terminal() && !reported.contains(k.as_str())
                })
                .map(|(k, _)| k.clone())
                .collect();
            for tid in missing {
                self.unreported.entry(tid).or_insert_with(|| Instant::now() + UNREPORTED_GRACE);
            }
            return Ok(v1::RegisterAgentResponse {
                agent_id: id.to_string(),
                heartbeat_interval_ms: self.cfg.agent_heartbeat_interval.as_millis() as u64,
            });
        }
        let mut ainfo = wasmos_allocator::AgentInfo::new(resources.clone());
        ainfo.attributes = attributes.clone();
        self.alloc.add_agent(id.clone(), ainfo).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.apply_reservations(&id);
        let summary = v1::AgentSummary {
            agent_id: id.to_string(),
            info: Some(info.clone()),
            allocated: None,
            status: "active".into(),
            running_tasks: 0,
            registered_at_ms: now_ms(),
        };
        self.agents.insert(
            id.clone(),
            Agent {
                info,
                resources,
                attributes,
                tx: None,
                last_seen: Instant::now(),
                registered_at_ms: now_ms(),
                tasks: HashSet::new(),
                pending: Vec::new(),
            },
        );
        let _ = self.watch.send(v1::WatchEvent { event: Some(v1::watch_event::Event::AgentAdded(summary)) });
        self.dirty_agents.insert(id.clone());
        self.dirty = true;
        self.recovering.remove(&id);
        self.reconcile_agent(&id, &req.running_tasks);
        Ok(v1::RegisterAgentResponse {
            agent_id: id.to_string(),
            heartbeat_interval_ms: self.cfg.agent_heartbeat_interval.as_millis() as u64,
        })
    }

    /// Counts a task's resources on `agent` again and records it there (after a
    /// failover, when the agent says it runs the task). False if the allocator
    /// refuses (unknown framework, no room), which leaves the task untouched.
    fn track_on_agent(&mut self, tid: &TaskId, agent: &AgentId) -> bool {
        let Some(t) = self.tasks.get(tid) else { return false };
        let fw = t.framework.clone();
        let need = t.resources.clone();
        let Some(role) = self.frameworks.get(&fw).map(|f| f.role.clone()) else { return false };
        // As at launch: reserved parts the role may use first, then unreserved.
        let mut pool = self.alloc.agent_free(agent).unwrap_or_default();
        pool.reserved.retain(|r, _| r.covers(&role));
        let first = take(&mut pool, &need).unwrap_or_else(|| Allocation::from(need.clone()));
        let alloc = if self.alloc.add_allocation(&fw, agent, &role, &first).is_ok() {
            first
        } else {
            let plain = Allocation::from(need);
            if self.alloc.add_allocation(&fw, agent, &role, &plain).is_err() {
                return false;
            }
            plain
        };
        if let Some(t) = self.tasks.get_mut(tid) {
            t.agent = Some(agent.clone());
            t.allocation = Some(alloc);
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.tasks.insert(tid.clone());
        }
        true
    }

    /// After a master failover: an agent from the registry came back and said
    /// which tasks it runs. Those resume being tracked (their resources count
    /// again); the ones it no longer has are LOST; the ones the master does not
    /// know (or has given up on) are killed.
    fn reconcile_agent(&mut self, id: &AgentId, running: &[v1::TaskStatus]) {
        let reported: HashSet<&str> = running.iter().map(|t| t.task_id.as_str()).collect();
        let mine: Vec<TaskId> = self
            .tasks
            .map
            .iter()
            .filter(|(_, t)| t.agent.as_ref() == Some(id) && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        for tid in mine {
            if reported.contains(tid.as_str()) {
                let fw = self.tasks[&tid].framework.clone();
                if !self.track_on_agent(&tid, id)
                    && let Some(a) = self.agents.get_mut(id)
                {
                    a.tasks.insert(tid.clone());
                }
                if self.tasks.get(&tid).is_some_and(|t| t.state == TaskState::Unreachable) {
                    let st = status(
                        &tid,
                        &fw,
                        Some(id),
                        v1::TaskState::TaskRunning,
                        "agent_reregistered",
                        format!("agent {id} is back"),
                    );
                    self.apply_status(st, false);
                }
            } else {
                // Not running there: its final update may still be on its way
                // (resent after the failover), so it is declared LOST only if
                // nothing arrives within the grace period.
                self.unreported.insert(tid, Instant::now() + UNREPORTED_GRACE);
            }
        }
        for t in running {
            // Launched just before the restart but recorded as still queued:
            // adopt it. Only tasks the registry has as never launched qualify;
            // one that was LOST and queued again runs here as a given-up
            // attempt and is killed below.
            if let Ok(tid) = TaskId::new(t.task_id.clone()) {
                let queued = self.adoptable.contains(&tid)
                    && self.tasks.get(&tid).is_some_and(|k| k.agent.is_none() && k.state == TaskState::Staging);
                if queued && self.track_on_agent(&tid, id) {
                    self.adoptable.remove(&tid);
                    self.batch.take(&tid);
                    if let Some(k) = self.tasks.get_mut(&tid) {
                        k.state = TaskState::Running;
                    }
                    continue;
                }
            }
            let known = TaskId::new(t.task_id.clone())
                .ok()
                .and_then(|tid| self.tasks.get(&tid))
                .is_some_and(|k| !k.state.is_terminal() && k.agent.as_ref() == Some(id));
            if !known {
                let cmd = v1::AgentCommand {
                    command: Some(v1::agent_command::Command::Kill(v1::agent_command::Kill {
                        task_id: t.task_id.clone(),
                    })),
                };
                self.send_agent(id, cmd);
            }
        }
    }

    /// Tasks an agent did not report at reregistration and that got no update since.
    fn expire_unreported(&mut self) {
        let now = Instant::now();
        let due: Vec<TaskId> = self.unreported.iter().filter(|(_, d)| **d <= now).map(|(k, _)| k.clone()).collect();
        for tid in due {
            self.unreported.remove(&tid);
            let Some(t) = self.tasks.get(&tid) else { continue };
            if t.state.is_terminal() {
                continue;
            }
            let (fw, agent) = (t.framework.clone(), t.agent.clone());
            let st = status(
                &tid,
                &fw,
                agent.as_ref(),
                v1::TaskState::TaskLost,
                "agent_failover",
                format!(
                    "task was not running on agent {} when it reregistered (the agent or the master restarted)",
                    agent.as_ref().map(|a| a.as_str()).unwrap_or("?")
                ),
            );
            self.apply_status(st, false);
        }
    }

    /// Agents from the registry that did not come back in time: their tasks are LOST.
    fn expire_recovering(&mut self) {
        let now = Instant::now();
        let expired: Vec<AgentId> =
            self.recovering.iter().filter(|(_, d)| **d <= now).map(|(k, _)| k.clone()).collect();
        for id in expired {
            self.recovering.remove(&id);
            let lost: Vec<TaskId> = self
                .tasks
                .map
                .iter()
                .filter(|(_, t)| t.agent.as_ref() == Some(&id) && !t.state.is_terminal())
                .map(|(k, _)| k.clone())
                .collect();
            for tid in lost {
                let (fw, unreachable) = {
                    let t = &self.tasks[&tid];
                    (t.framework.clone(), t.state == TaskState::Unreachable)
                };
                let state = if unreachable { v1::TaskState::TaskGone } else { v1::TaskState::TaskLost };
                let st = status(
                    &tid,
                    &fw,
                    Some(&id),
                    state,
                    "agent_gone",
                    format!("agent {id} did not reregister within {:?}", self.cfg.agent_reregister_timeout),
                );
                self.apply_status(st, false);
            }
            self.dirty_agents.insert(id);
        }
    }

    /// Remote frameworks disconnected longer than their failover timeout are torn down.
    fn expire_frameworks(&mut self) {
        let gone: Vec<FrameworkId> = self
            .frameworks
            .iter()
            .filter(|(_, f)| f.disconnected_at.is_some_and(|d| d.elapsed() >= f.failover_timeout))
            .map(|(k, _)| k.clone())
            .collect();
        for id in gone {
            self.teardown(&id);
        }
    }

    /// Rebuilds the in-memory state from the registry after a restart.
    fn restore(&mut self, loaded: crate::store::Loaded) {
        self.next_id = self.next_id.max(loaded.next_id);
        for rec in loaded.roles {
            let Ok(role) = Role::new(rec.role.clone()) else { continue };
            if let Err(e) = self.apply_role(&role, &rec) {
                eprintln!("wasmos master: registry role {role}: {e}; keeping the defaults for it");
            }
            self.role_settings.insert(role, rec);
        }
        for rec in loaded.reservations {
            let (Ok(agent), Ok(role), Ok(res)) = (
                AgentId::new(rec.agent_id.clone()),
                Role::new(rec.role.clone()),
                resources_from_wire(rec.resources.as_ref()),
            ) else {
                continue;
            };
            // Applied when the agent reregisters.
            self.reservations.insert((agent, role), res);
        }
        let now = Instant::now();
        for f in loaded.frameworks {
            let (Ok(id), Ok(role)) = (FrameworkId::new(f.framework_id.clone()), Role::new(f.role.clone())) else {
                continue;
            };
            if id == self.batch_id || self.alloc.add_framework(id.clone(), std::slice::from_ref(&role)).is_err() {
                continue;
            }
            let _ = self.alloc.deactivate_framework(&id);
            self.frameworks.insert(
                id,
                Framework {
                    name: f.name,
                    role,
                    kind: FrameworkKind::Remote { tx: None },
                    tasks: HashSet::new(),
                    offers: HashSet::new(),
                    unacked: HashMap::new(),
                    hosted: f.hosted,
                    hosted_info: f.hosted.then_some(HostedInfo { module_sha256: f.module_sha256, config: f.config }),
                    failover_timeout: if f.failover_timeout_s > 0.0 {
                        Duration::from_secs_f64(f.failover_timeout_s)
                    } else {
                        DEFAULT_FAILOVER_TIMEOUT
                    },
                    disconnected_at: Some(now),
                },
            );
        }
        for a in loaded.agents {
            if let Ok(id) = AgentId::new(a.agent_id) {
                self.recovering.insert(id, now + self.cfg.agent_reregister_timeout);
            }
        }
        let mut order: Vec<(i64, u64, TaskId)> = Vec::new();
        for rec in loaded.tasks {
            let (Some(sum), Some(spec)) = (rec.summary, rec.spec) else { continue };
            let (Ok(tid), Ok(fw)) = (TaskId::new(sum.task_id.clone()), FrameworkId::new(sum.framework_id.clone()))
            else {
                continue;
            };
            let Some(state) = wasmos_proto::state_from_wire(sum.state) else { continue };
            let agent = if sum.agent_id.is_empty() { None } else { AgentId::new(sum.agent_id.clone()).ok() };
            let resources = resources_from_wire(sum.resources.as_ref()).unwrap_or_default();
            let seq: u64 = sum.task_id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            order.push((sum.submitted_at_ms, seq, tid.clone()));
            if !state.is_terminal() {
                if let Some(f) = self.frameworks.get_mut(&fw) {
                    f.tasks.insert(tid.clone());
                }
                if fw == self.batch_id {
                    let bt = BatchTask {
                        resources: resources.clone(),
                        priority: rec.priority,
                        constraints: rec.constraints.iter().map(|a| (a.key.clone(), a.value.clone())).collect(),
                        attempts: sum.attempt,
                        max_attempts: if rec.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { rec.max_attempts },
                    };
                    if agent.is_none() {
                        self.batch.enqueue(tid.clone(), bt);
                    } else {
                        self.batch.tasks.insert(tid.clone(), bt);
                    }
                }
            }
            self.tasks.map.insert(
                tid,
                Task {
                    name: sum.name,
                    framework: fw,
                    agent,
                    spec,
                    resources,
                    allocation: None,
                    state,
                    outcome: sum.outcome,
                    message: sum.message,
                    submitted_at_ms: sum.submitted_at_ms,
                    started_at_ms: sum.started_at_ms,
                    finished_at_ms: sum.finished_at_ms,
                    attempt: sum.attempt,
                    applied: rec.applied_uuids,
                },
            );
        }
        // Tasks of stored submissions without a record of their own are still
        // queued (or were launched and will be adopted when their agent
        // reregisters).
        for sub in loaded.submissions {
            let Some(tpl) = sub.template else { continue };
            let resources = resources_from_wire(tpl.resources.as_ref()).unwrap_or_default();
            let constraints: Vec<(String, String)> =
                sub.constraints.iter().map(|a| (a.key.clone(), a.value.clone())).collect();
            let max_attempts = if sub.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { sub.max_attempts };
            for n in sub.first..sub.first + sub.count as u64 {
                let Ok(tid) = TaskId::new(format!("task-{}-{n}", sub.tag)) else { continue };
                if self.tasks.contains_key(&tid) {
                    continue;
                }
                let mut spec = tpl.clone();
                spec.task_id = tid.to_string();
                spec.name = sub.name.clone();
                self.tasks.map.insert(
                    tid.clone(),
                    Task {
                        name: sub.name.clone(),
                        framework: self.batch_id.clone(),
                        agent: None,
                        spec,
                        resources: resources.clone(),
                        allocation: None,
                        state: TaskState::Staging,
                        outcome: None,
                        message: "queued".into(),
                        submitted_at_ms: sub.submitted_at_ms,
                        started_at_ms: 0,
                        finished_at_ms: 0,
                        attempt: 0,
                        applied: Vec::new(),
                    },
                );
                order.push((sub.submitted_at_ms, n, tid.clone()));
                if let Some(f) = self.frameworks.get_mut(&self.batch_id.clone()) {
                    f.tasks.insert(tid.clone());
                }
                self.adoptable.insert(tid.clone());
                self.batch.enqueue(
                    tid,
                    BatchTask {
                        resources: resources.clone(),
                        priority: sub.priority,
                        constraints: constraints.clone(),
                        attempts: 0,
                        max_attempts,
                    },
                );
            }
        }
        order.sort();
        self.task_order = order.into_iter().map(|(_, _, t)| t).collect();
        if self.batch.queued() > 0 {
            self.revive_batch();
        }
        self.dirty = true;
    }

    fn attach_agent(&mut self, id: &str, tx: CommandTx) -> Result<(), Status> {
        let agent = AgentId::new(id.to_string())
            .ok()
            .and_then(|a| self.agents.get_mut(&a))
            .ok_or_else(|| Status::not_found(format!("unknown agent {id:?}; register first")))?;
        for cmd in agent.pending.drain(..) {
            let _ = tx.send(Ok(cmd));
        }
        agent.tx = Some(tx);
        agent.last_seen = Instant::now();
        Ok(())
    }

    /// Queues a command for an agent; it leaves after this batch's registry
    /// commit, so an agent never runs a launch the registry does not know.
    fn send_agent(&mut self, agent: &AgentId, cmd: v1::AgentCommand) {
        self.outbox.push((agent.clone(), cmd));
    }

    fn flush_outbox(&mut self) {
        for (agent, cmd) in std::mem::take(&mut self.outbox) {
            self.deliver_agent(&agent, cmd);
        }
    }

    fn deliver_agent(&mut self, agent: &AgentId, cmd: v1::AgentCommand) {
        if let Some(a) = self.agents.get_mut(agent) {
            match &a.tx {
                Some(tx) if tx.send(Ok(cmd.clone())).is_ok() => {}
                _ => {
                    a.tx = None;
                    a.pending.push(cmd);
                }
            }
        }
    }

    /// Agents silent for longer than `agent_timeout` are removed; their tasks
    /// are LOST (and batch tasks retried).
    fn check_agents(&mut self) {
        let timeout = self.cfg.agent_timeout;
        let dead: Vec<AgentId> =
            self.agents.iter().filter(|(_, a)| a.last_seen.elapsed() > timeout).map(|(id, _)| id.clone()).collect();
        for id in dead {
            self.remove_agent(&id, "agent_lost", format!("agent {id} missed heartbeats for {timeout:?}"));
        }
    }

    /// An agent stopped answering: its resources leave the pool and its
    /// offers are rescinded. Its batch tasks are LOST (and retried at once);
    /// other frameworks' tasks become UNREACHABLE: if the agent reregisters
    /// within `agent_reregister_timeout` they resume being tracked, otherwise
    /// they are GONE.
    fn remove_agent(&mut self, id: &AgentId, reason: &str, message: String) {
        let Some(agent) = self.agents.remove(id) else { return };
        let offers: Vec<OfferId> = self.offers.iter().filter(|(_, o)| &o.agent == id).map(|(k, _)| k.clone()).collect();
        for o in offers {
            self.rescind(&o);
        }
        for t in agent.tasks {
            let Some(task) = self.tasks.get_mut(&t) else { continue };
            task.allocation = None; // the agent's resources leave with it
            let fw = task.framework.clone();
            let state = if fw == self.batch_id { v1::TaskState::TaskLost } else { v1::TaskState::TaskUnreachable };
            let st = status(&t, &fw, Some(id), state, reason, message.clone());
            self.apply_status(st, false);
        }
        let _ = self.alloc.remove_agent(id);
        self.recovering.insert(id.clone(), Instant::now() + self.cfg.agent_reregister_timeout);
        self.dirty_agents.insert(id.clone());
        let _ = self.watch.send(v1::WatchEvent { event: Some(v1::watch_event::Event::AgentRemoved(id.to_string())) });
        self.dirty = true;
    }

    fn agent_updates(&mut self, u: v1::StatusUpdates) -> Result<v1::StatusAcks, Status> {
        let agent = AgentId::new(u.agent_id.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        match self.agents.get_mut(&agent) {
            Some(a) => a.last_seen = Instant::now(),
            None => return Err(Status::not_found(format!("unknown agent {:?}; register again", u.agent_id))),
        }
        let mut acks = Vec::with_capacity(u.updates.len());
        for mut st in u.updates {
            st.agent_id = agent.to_string();
            let uuid = st.uuid.clone();
            self.apply_status(st, true);
            acks.push(uuid);
        }
        Ok(v1::StatusAcks { uuids: acks })
    }

    /// Applies one status update to the registry and tells the framework.
    /// Duplicates (same UUID) are ignored; updates for unknown tasks dropped.
    fn apply_status(&mut self, st: v1::TaskStatus, from_agent: bool) {
        let Ok(tid) = TaskId::new(st.task_id.clone()) else { return };
        let Some(state) = wasmos_proto::state_from_wire(st.state) else { return };
        let now = self.clock();
        // Only transitions recovery needs are written to the registry: where a
        // task ended (or that it got an agent). RUNNING/PAUSED are re-learned
        // from the agents when they reregister after a master restart.
        if state.is_terminal() || self.tasks.get(&tid).is_some_and(|t| t.agent.is_none()) {
            self.tasks.dirty.insert(tid.clone());
        }
        let Some(task) = self.tasks.map.get_mut(&tid) else { return };
        if from_agent && !st.uuid.is_empty() {
            if task.applied.contains(&st.uuid) {
                return;
            }
            task.applied.push(st.uuid.clone());
            if task.applied.len() > APPLIED_UUIDS_KEPT {
                task.applied.remove(0);
            }
        }
        if task.state.is_terminal() {
            return;
        }
        if from_agent {
            self.unreported.remove(&tid);
            match &task.agent {
                // A LOST report for a task that is queued again: stale.
                None if state == TaskState::Lost => return,
                // Launched by the previous master incarnation, never recorded.
                None if self.adoptable.contains(&tid) => task.agent = AgentId::new(st.agent_id.clone()).ok(),
                // From an attempt that was given up (LOST, queued again): stale.
                None => return,
                // An update from an agent the task has left (it was lost there
                // and runs elsewhere now): stale, not applied.
                Some(a) if a.as_str() != st.agent_id => return,
                Some(_) => {}
            }
        }
        task.state = state;
        if !st.message.is_empty() {
            task.message = st.message.clone();
        }
        if st.outcome.is_some() {
            task.outcome = st.outcome.clone();
        }
        if state == TaskState::Running && task.started_at_ms == 0 {
            task.started_at_ms = st.timestamp_ms.max(1);
        }
        let fw = task.framework.clone();
        if state.is_terminal() {
            task.finished_at_ms = now_ms();
            if let (Some(agent), Some(alloc)) = (task.agent.clone(), task.allocation.take()) {
                let role = self.frameworks.get(&fw).map(|f| f.role.clone());
                if let Some(role) = role {
                    let _ = self.alloc.recover_resources(&fw, &agent, &role, &alloc, None, now);
                }
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.tasks.remove(&tid);
                }
                self.dirty = true;
            }
        }
        // Watchers see an update only once it is committed, so the observed
        // history has each update once even across a master failover.
        let watch = self.watch.clone();
        let ev = v1::WatchEvent { event: Some(v1::watch_event::Event::Task(st.clone())) };
        self.defer(move || {
            let _ = watch.send(ev);
        });
        self.notify(&fw, st, state);
    }

    // ------------------------------------------------------------ frameworks

    fn notify(&mut self, fw: &FrameworkId, st: v1::TaskStatus, state: TaskState) {
        let Some(f) = self.frameworks.get_mut(fw) else { return };
        match &mut f.kind {
            FrameworkKind::Remote { tx } => {
                let tid = TaskId::new(st.task_id.clone()).expect("known task");
                if let Some(t) = tx {
                    let ev = v1::Event {
                        event: Some(v1::event::Event::Update(v1::event::Update { status: Some(st.clone()) })),
                    };
                    if t.send(Ok(ev)).is_err() {
                        *tx = None;
                    }
                }
                if !st.uuid.is_empty() {
                    f.unacked.insert(tid.clone(), st);
                } else if state.is_terminal() && !f.unacked.contains_key(&tid) {
                    // Nothing to acknowledge (e.g. a refused launch).
                    f.tasks.remove(&tid);
                }
            }
            FrameworkKind::Batch => {
                let tid = TaskId::new(st.task_id.clone()).expect("known task");
                if !state.is_terminal() {
                    return;
                }
                // Lost tasks come back to the queue while attempts remain.
                let retry = st.state == v1::TaskState::TaskLost as i32
                    && self.batch.tasks.get(&tid).is_some_and(|b| b.attempts < b.max_attempts);
                if retry {
                    if let Some(task) = self.tasks.get_mut(&tid) {
                        task.state = TaskState::Staging;
                        task.agent = None;
                        task.finished_at_ms = 0;
                        task.message = format!("retrying after: {}", st.message);
                    }
                    self.batch.requeue(&tid);
                    self.revive_batch();
                } else {
                    self.batch.forget(&tid);
                    f.tasks.remove(&tid);
                }
            }
        }
    }

    fn revive_batch(&mut self) {
        if self.batch.suppressed {
            let _ = self.alloc.revive(&self.batch_id, &[]);
            self.batch.suppressed = false;
        }
        self.dirty = true;
    }

    fn subscribe(
        &mut self,
        info: v1::FrameworkInfo,
        tx: EventTx,
        hosted_info: Option<HostedInfo>,
    ) -> Result<(), Status> {
        let hosted = hosted_info.is_some();
        let role = Role::new(if info.role.is_empty() { "default".to_string() } else { info.role.clone() })
            .map_err(|e| Status::invalid_argument(format!("framework role: {e}")))?;
        let id = if info.framework_id.is_empty() {
            FrameworkId::new(self.fresh("fw")).expect("valid id")
        } else {
            FrameworkId::new(info.framework_id.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        if id == self.batch_id {
            return Err(Status::invalid_argument("framework id \"batch\" is reserved for the built-in framework"));
        }
        if self.torn_down.contains(&id) {
            return Err(Status::failed_precondition(format!(
                "framework {id} was torn down; subscribe without a framework_id to start a new one"
            )));
        }
        let subscribed = v1::Event {
            event: Some(v1::event::Event::Subscribed(v1::event::Subscribed {
                framework_id: id.to_string(),
                heartbeat_interval_ms: self.cfg.framework_heartbeat_interval.as_millis() as u64,
            })),
        };
        if self.frameworks.get(&id).is_some_and(|f| f.hosted != hosted) {
            return Err(Status::failed_precondition(format!(
                "framework {id} is hosted by the master; manage it with `wasmos framework`"
            )));
        }
        if let Some(f) = self.frameworks.get_mut(&id) {
            // Failover: the new connection takes over.
            if f.role != role {
                return Err(Status::invalid_argument(format!(
                    "framework {id} is subscribed in role {}; resubscribe with that role",
                    f.role
                )));
            }
            let _ = tx.send(Ok(subscribed));
            // Redeliver what the previous connection did not acknowledge.
            for st in f.unacked.values() {
                let ev =
                    v1::Event { event: Some(v1::event::Event::Update(v1::event::Update { status: Some(st.clone()) })) };
                let _ = tx.send(Ok(ev));
            }
            f.kind = FrameworkKind::Remote { tx: Some(tx) };
            f.disconnected_at = None;
            if hosted_info.is_some() {
                f.hosted_info = hosted_info;
            }
            let _ = self.alloc.activate_framework(&id);
            self.dirty_frameworks.insert(id);
            self.dirty = true;
            return Ok(());
        }
        self.alloc
            .add_framework(id.clone(), std::slice::from_ref(&role))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _ = tx.send(Ok(subscribed));
        let name = if info.name.is_empty() { id.to_string() } else { info.name.clone() };
        self.frameworks.insert(
            id.clone(),
            Framework {
                name,
                role,
                kind: FrameworkKind::Remote { tx: Some(tx) },
                tasks: HashSet::new(),
                offers: HashSet::new(),
                unacked: HashMap::new(),
                hosted,
                hosted_info,
                failover_timeout: failover_of(&info),
                disconnected_at: None,
            },
        );
        self.dirty_frameworks.insert(id.clone());
        let summary = self.framework_summary(&id);
        let _ = self.watch.send(v1::WatchEvent { event: summary.map(v1::watch_event::Event::FrameworkAdded) });
        self.dirty = true;
        Ok(())
    }

    fn heartbeat_frameworks(&mut self) {
        let mut gone = Vec::new();
        for (id, f) in self.frameworks.iter_mut() {
            if let FrameworkKind::Remote { tx } = &mut f.kind {
                let alive = tx.as_ref().is_some_and(|t| {
                    t.send(Ok(v1::Event { event: Some(v1::event::Event::Heartbeat(v1::event::Heartbeat {})) })).is_ok()
                });
                if !alive && tx.is_some() {
                    *tx = None;
                    gone.push(id.clone());
                }
            }
        }
        for id in gone {
            self.disconnected(&id);
        }
    }

    /// A remote framework's stream closed: its offers go back; its tasks keep
    /// running until it fails over (failover timeouts come with durable state).
    fn disconnected(&mut self, id: &FrameworkId) {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.disconnected_at.get_or_insert_with(Instant::now);
        }
        let offers: Vec<OfferId> =
            self.frameworks.get(id).map(|f| f.offers.iter().cloned().collect()).unwrap_or_default();
        for o in offers {
            self.recover_offer(&o, None);
        }
        let _ = self.alloc.deactivate_framework(id);
    }

    fn rescind(&mut self, offer: &OfferId) {
        let fw = self.offers.get(offer).map(|o| o.framework.clone());
        self.recover_offer(offer, None);
        if let Some(fw) = fw
            && let Some(FrameworkKind::Remote { tx: Some(tx) }) = self.frameworks.get(&fw).map(|f| &f.kind)
        {
            let _ = tx.send(Ok(v1::Event {
                event: Some(v1::event::Event::Rescind(v1::event::Rescind { offer_id: offer.to_string() })),
            }));
        }
    }

    fn recover_offer(&mut self, offer: &OfferId, refuse: Option<Duration>) {
        let Some(o) = self.offers.remove(offer) else { return };
        if let Some(f) = self.frameworks.get_mut(&o.framework) {
            f.offers.remove(offer);
        }
        let now = self.clock();
        let _ = self.alloc.recover_resources(&o.framework, &o.agent, &o.role, &o.allocation, refuse, now);
        self.dirty = true;
    }

    // ------------------------------------------------------------ allocation

    fn allocate(&mut self) {
        let now = self.clock();
        let offers = self.alloc.allocate(now);
        let mut remote: HashMap<FrameworkId, Vec<v1::Offer>> = HashMap::new();
        let mut batch_offers = Vec::new();
        for o in offers {
            let id = OfferId::new(self.fresh("offer")).expect("valid id");
            let agent = self.agents.get(&o.agent);
            let wire = v1::Offer {
                offer_id: id.to_string(),
                framework_id: o.framework.to_string(),
                agent_id: o.agent.to_string(),
                hostname: agent.map(|a| a.info.hostname.clone()).unwrap_or_default(),
                resources: Some(resources_to_wire(&o.resources.total())),
                attributes: agent.map(|a| a.info.attributes.clone()).unwrap_or_default(),
            };
            if let Some(f) = self.frameworks.get_mut(&o.framework) {
                f.offers.insert(id.clone());
            }
            let fw = o.framework.clone();
            self.offers.insert(
                id.clone(),
                OfferRec { framework: o.framework, agent: o.agent, role: o.role, allocation: o.resources },
            );
            if fw == self.batch_id {
                batch_offers.push(id);
            } else {
                remote.entry(fw).or_default().push(wire);
            }
        }
        for (fw, offers) in remote {
            let ids: Vec<String> = offers.iter().map(|o| o.offer_id.clone()).collect();
            let ok = match self.frameworks.get(&fw).map(|f| &f.kind) {
                Some(FrameworkKind::Remote { tx: Some(tx) }) => tx
                    .send(Ok(v1::Event { event: Some(v1::event::Event::Offers(v1::event::Offers { offers })) }))
                    .is_ok(),
                _ => false,
            };
            if !ok {
                for id in ids {
                    self.recover_offer(&OfferId::new(id).expect("valid id"), None);
                }
                if let Some(f) = self.frameworks.get_mut(&fw) {
                    f.kind = FrameworkKind::Remote { tx: None };
                }
                self.disconnected(&fw);
            }
        }
        if !batch_offers.is_empty() {
            self.batch_offers(batch_offers);
        }
    }

    fn batch_offers(&mut self, offers: Vec<OfferId>) {
        for id in offers {
            let Some(o) = self.offers.get(&id) else { continue };
            let free = o.allocation.total();
            let attrs = self.agents.get(&o.agent).map(|a| a.attributes.clone()).unwrap_or_default();
            let picked = self.batch.pick(&free, &attrs);
            if picked.is_empty() {
                self.recover_offer(&id, Some(self.cfg.batch_refuse));
                continue;
            }
            let specs: Vec<v1::TaskSpec> = picked
                .iter()
                .filter_map(|t| {
                    if let Some(b) = self.batch.tasks.get_mut(t) {
                        b.attempts += 1;
                    }
                    let task = self.tasks.get_mut(t)?;
                    task.attempt += 1;
                    Some(task.spec.clone())
                })
                .collect();
            let batch_id = self.batch_id.clone();
            self.accept(&batch_id, &[id], specs, Some(self.cfg.batch_refuse));
        }
        if self.batch.queued() == 0 && !self.batch.suppressed {
            let _ = self.alloc.suppress(&self.batch_id, &[]);
            self.batch.suppressed = true;
        }
    }

    /// ACCEPT, validated against live state (Mesos v1 semantics): stale or
    /// foreign offers drop every task; each task is checked on its own.
    fn accept(&mut self, fw: &FrameworkId, offer_ids: &[OfferId], specs: Vec<v1::TaskSpec>, refuse: Option<Duration>) {
        let is_batch = fw == &self.batch_id;
        let valid =
            !offer_ids.is_empty() && offer_ids.iter().all(|o| self.offers.get(o).is_some_and(|r| &r.framework == fw));
        let one_agent = valid && {
            let first = &self.offers[&offer_ids[0]].agent;
            offer_ids.iter().all(|o| &self.offers[o].agent == first)
        };
        if !valid || !one_agent {
            let (reason, msg) = if !valid {
                ("invalid_offers", "offer is unknown, stale, already used or not this framework's; wait for new offers")
            } else {
                ("invalid_offers", "offers span more than one agent; accept offers of one agent per call")
            };
            for o in offer_ids {
                if self.offers.get(o).is_some_and(|r| &r.framework == fw) {
                    self.recover_offer(o, None);
                }
            }
            for spec in specs {
                self.refuse_task(fw, spec, v1::TaskState::TaskDropped, reason, msg.to_string());
            }
            return;
        }
        let mut pool = Allocation::default();
        let mut agent = None;
        let mut role = None;
        for o in offer_ids {
            let rec = self.offers.remove(o).expect("checked above");
            if let Some(f) = self.frameworks.get_mut(fw) {
                f.offers.remove(o);
            }
            merge(&mut pool, &rec.allocation);
            agent = Some(rec.agent);
            role = Some(rec.role);
        }
        let agent = agent.expect("at least one offer");
        let role = role.expect("at least one offer");
        let mut launch = Vec::new();
        for spec in specs {
            let tid = match TaskId::new(spec.task_id.clone()) {
                Ok(t) => t,
                Err(e) => {
                    self.refuse_task(fw, spec, v1::TaskState::TaskError, "invalid_task_id", e.to_string());
                    continue;
                }
            };
            let queued_here =
                is_batch && self.tasks.get(&tid).is_some_and(|t| t.agent.is_none() && t.state == TaskState::Staging);
            if self.tasks.contains_key(&tid) && !queued_here {
                self.refuse_task(
                    fw,
                    spec,
                    v1::TaskState::TaskError,
                    "duplicate_task_id",
                    format!("task id {tid} is already in use; pick a unique id"),
                );
                continue;
            }
            if self.artifacts.size(&spec.module_sha256).is_none() {
                let msg = format!("module {:?} is not in the artifact store; upload it first", spec.module_sha256);
                self.refuse_task(fw, spec, v1::TaskState::TaskError, "unknown_module", msg);
                continue;
            }
            let resources = match resources_from_wire(spec.resources.as_ref()) {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => {
                    self.refuse_task(
                        fw,
                        spec,
                        v1::TaskState::TaskError,
                        "invalid_resources",
                        "task asks for no resources; give it at least cpus or mem".into(),
                    );
                    continue;
                }
                Err(e) => {
                    self.refuse_task(fw, spec, v1::TaskState::TaskError, "invalid_resources", e.to_string());
                    continue;
                }
            };
            let Some(task_alloc) = take(&mut pool, &resources) else {
                let msg = format!("task needs {resources}, more than is left of the offer ({})", pool.total());
                self.refuse_task(fw, spec, v1::TaskState::TaskError, "insufficient_resources", msg);
                continue;
            };
            let now = now_ms();
            // A queued batch task that is launched is not written again until it
            // ends: after a restart its agent reports it running and the master
            // adopts it (see reconcile_agent). Other frameworks' tasks are new
            // here and recorded now.
            if !queued_here {
                self.tasks.dirty.insert(tid.clone());
            }
            let task = self.tasks.map.entry(tid.clone()).or_insert_with(|| Task {
                name: spec.name.clone(),
                framework: fw.clone(),
                agent: None,
                spec: spec.clone(),
                resources: resources.clone(),
                allocation: None,
                state: TaskState::Staging,
                outcome: None,
                message: String::new(),
                submitted_at_ms: now,
                started_at_ms: 0,
                finished_at_ms: 0,
                attempt: 1,
                applied: Vec::new(),
            });
            if !queued_here {
                self.task_order.push(tid.clone());
            }
            task.agent = Some(agent.clone());
            task.allocation = Some(task_alloc);
            task.state = TaskState::Staging;
            self.adoptable.remove(&tid);
            if let Some(f) = self.frameworks.get_mut(fw) {
                f.tasks.insert(tid.clone());
            }
            if let Some(a) = self.agents.get_mut(&agent) {
                a.tasks.insert(tid.clone());
            }
            launch.push(spec);
        }
        if !pool.is_empty() {
            let now = self.clock();
            let _ = self.alloc.recover_resources(fw, &agent, &role, &pool, refuse, now);
        }
        if !launch.is_empty() {
            let cmd = v1::AgentCommand {
                command: Some(v1::agent_command::Command::Launch(v1::agent_command::Launch {
                    framework_id: fw.to_string(),
                    tasks: launch,
                })),
            };
            self.send_agent(&agent, cmd);
        }
        self.dirty = true;
    }

    /// Reports a task that was never launched (TASK_ERROR / TASK_DROPPED).
    fn refuse_task(
        &mut self,
        fw: &FrameworkId,
        spec: v1::TaskSpec,
        state: v1::TaskState,
        reason: &str,
        message: String,
    ) {
        let st = v1::TaskStatus {
            task_id: spec.task_id.clone(),
            framework_id: fw.to_string(),
            agent_id: String::new(),
            state: state as i32,
            uuid: Vec::new(),
            timestamp_ms: now_ms(),
            reason: reason.to_string(),
            message: message.clone(),
            outcome: None,
        };
        match TaskId::new(spec.task_id.clone()) {
            Ok(tid) if !self.tasks.contains_key(&tid) || (fw == &self.batch_id && self.tasks[&tid].agent.is_none()) => {
                // Record it, so the refusal is visible through the Operator API.
                if !self.tasks.contains_key(&tid) {
                    self.task_order.push(tid.clone());
                }
                let t = self.tasks.entry(tid.clone()).or_insert_with(|| Task {
                    name: spec.name.clone(),
                    framework: fw.clone(),
                    agent: None,
                    spec: spec.clone(),
                    resources: resources_from_wire(spec.resources.as_ref()).unwrap_or_default(),
                    allocation: None,
                    state: TaskState::Staging,
                    outcome: None,
                    message: String::new(),
                    submitted_at_ms: now_ms(),
                    started_at_ms: 0,
                    finished_at_ms: 0,
                    attempt: 1,
                    applied: Vec::new(),
                });
                t.framework = fw.clone();
                if let Some(f) = self.frameworks.get_mut(fw) {
                    f.tasks.insert(tid);
                }
                self.apply_status(st, false);
            }
            _ => {
                // Unknown or duplicate id: tell the framework, change nothing.
                let _ = self.watch.send(v1::WatchEvent { event: Some(v1::watch_event::Event::Task(st.clone())) });
                if let Some(FrameworkKind::Remote { tx: Some(tx) }) = self.frameworks.get(fw).map(|f| &f.kind) {
                    let _ = tx.send(Ok(v1::Event {
                        event: Some(v1::event::Event::Update(v1::event::Update { status: Some(st) })),
                    }));
                }
            }
        }
    }

    fn call(&mut self, call: v1::Call) -> Result<(), Status> {
        let fw = FrameworkId::new(call.framework_id.clone())
            .map_err(|e| Status::invalid_argument(format!("call framework_id: {e}")))?;
        if fw == self.batch_id || !self.frameworks.contains_key(&fw) {
            return Err(Status::not_found(format!("framework {fw} is not subscribed; subscribe first")));
        }
        use v1::call::Call as C;
        let Some(c) = call.call else {
            return Err(Status::invalid_argument("empty call; set one of accept, decline, kill, ..."));
        };
        let refuse_of = |f: &Option<v1::Filters>| {
            f.as_ref().and_then(|f| f.refuse_seconds).map(|s| Duration::from_secs_f64(s.clamp(0.0, 365.0 * 86400.0)))
        };
        match c {
            C::Accept(a) => {
                let ids: Vec<OfferId> = a
                    .offer_ids
                    .iter()
                    .map(|o| OfferId::new(o.clone()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| Status::invalid_argument(format!("offer id: {e}")))?;
                let refuse = refuse_of(&a.filters).or(Some(self.cfg.default_refuse));
                self.accept(&fw, &ids, a.launch, refuse);
            }
            C::Decline(d) => {
                let refuse = refuse_of(&d.filters).or(Some(self.cfg.default_refuse));
                for o in d.offer_ids {
                    let Ok(id) = OfferId::new(o) else { continue };
                    if self.offers.get(&id).is_some_and(|r| r.framework == fw) {
                        self.recover_offer(&id, refuse);
                    }
                }
            }
            C::Kill(k) => self.framework_task_action(&fw, &k.task_id, TaskAction::Kill)?,
            C::Pause(p) => self.framework_task_action(&fw, &p.task_id, TaskAction::Pause)?,
            C::Resume(r) => self.framework_task_action(&fw, &r.task_id, TaskAction::Resume)?,
            C::Revive(_) => {
                let _ = self.alloc.revive(&fw, &[]);
                self.dirty = true;
            }
            C::Suppress(_) => {
                let _ = self.alloc.suppress(&fw, &[]);
            }
            C::Acknowledge(a) => self.acknowledge(&fw, a)?,
            C::Reconcile(r) => self.reconcile(&fw, r.task_ids),
            C::Teardown(_) => self.teardown(&fw),
        }
        Ok(())
    }

    fn acknowledge(&mut self, fw: &FrameworkId, a: v1::call::Acknowledge) -> Result<(), Status> {
        let tid = TaskId::new(a.task_id.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let terminal = self.tasks.get(&tid).is_some_and(|t| t.state.is_terminal());
        let f = self.frameworks.get_mut(fw).expect("checked by call()");
        match f.unacked.get(&tid) {
            Some(st) if st.uuid == a.uuid => {
                f.unacked.remove(&tid);
                if terminal {
                    f.tasks.remove(&tid);
                }
                Ok(())
            }
            // An older update of the task, or one acknowledged before: at-least-once
            // delivery makes duplicates normal, so this is not an error.
            Some(_) | None if f.tasks.contains(&tid) || self.tasks.contains_key(&tid) => Ok(()),
            _ => Err(Status::not_found(format!("framework {fw} has no task {tid} to acknowledge"))),
        }
    }

    fn framework_task_action(&mut self, fw: &FrameworkId, task: &str, action: TaskAction) -> Result<(), Status> {
        let tid = TaskId::new(task.to_string()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.task_action(&tid, action, Some(fw))
    }

    fn task_action(&mut self, tid: &TaskId, action: TaskAction, owner: Option<&FrameworkId>) -> Result<(), Status> {
        let task = self
            .tasks
            .get(tid)
            .ok_or_else(|| Status::not_found(format!("no task {tid}; list tasks with `wasmos tasks`")))?;
        if owner.is_some_and(|o| o != &task.framework) {
            return Err(Status::permission_denied(format!("task {tid} belongs to another framework")));
        }
        if task.state.is_terminal() {
            return Err(Status::failed_precondition(format!("task {tid} already ended ({})", task.state)));
        }
        let fw = task.framework.clone();
        match (action, task.agent.clone()) {
            (TaskAction::Kill, None) => {
                // Still queued in the batch framework: it never ran.
                self.batch.forget(tid);
                let st = status(
                    tid,
                    &fw,
                    None,
                    v1::TaskState::TaskKilled,
                    "killed_while_queued",
                    "killed before it was launched".into(),
                );
                self.apply_status(st, false);
            }
            (_, None) => {
                return Err(Status::failed_precondition(format!(
                    "task {tid} is not running yet; pause and resume apply to running tasks"
                )));
            }
            (action, Some(agent)) => {
                let id = tid.to_string();
                let command = match action {
                    TaskAction::Kill => {
                        if let Some(t) = self.tasks.get_mut(tid) {
                            t.state = TaskState::Killing;
                        }
                        v1::agent_command::Command::Kill(v1::agent_command::Kill { task_id: id })
                    }
                    TaskAction::Pause => v1::agent_command::Command::Pause(v1::agent_command::Pause { task_id: id }),
                    TaskAction::Resume => v1::agent_command::Command::Resume(v1::agent_command::Resume { task_id: id }),
                };
                self.send_agent(&agent, v1::AgentCommand { command: Some(command) });
            }
        }
        Ok(())
    }

    fn reconcile(&mut self, fw: &FrameworkId, ids: Vec<String>) {
        let ids: Vec<TaskId> = if ids.is_empty() {
            self.frameworks.get(fw).map(|f| f.tasks.iter().cloned().collect()).unwrap_or_default()
        } else {
            ids.into_iter().filter_map(|i| TaskId::new(i).ok()).collect()
        };
        let Some(FrameworkKind::Remote { tx: Some(tx) }) = self.frameworks.get(fw).map(|f| &f.kind) else { return };
        for tid in ids {
            let st = match self.tasks.get(&tid).filter(|t| &t.framework == fw) {
                Some(t) => v1::TaskStatus {
                    task_id: tid.to_string(),
                    framework_id: fw.to_string(),
                    agent_id: t.agent.as_ref().map(|a| a.to_string()).unwrap_or_default(),
                    state: state_to_wire(t.state) as i32,
                    uuid: Vec::new(),
                    timestamp_ms: now_ms(),
                    reason: "reconciliation".into(),
                    message: t.message.clone(),
                    outcome: t.outcome.clone(),
                },
                None => status(
                    &tid,
                    fw,
                    None,
                    v1::TaskState::TaskLost,
                    "reconciliation",
                    "the master knows no such task".into(),
                ),
            };
            let _ = tx
                .send(Ok(v1::Event { event: Some(v1::event::Event::Update(v1::event::Update { status: Some(st) })) }));
        }
    }

    fn teardown(&mut self, fw: &FrameworkId) {
        let tasks: Vec<TaskId> = self.frameworks.get(fw).map(|f| f.tasks.iter().cloned().collect()).unwrap_or_default();
        for t in tasks {
            let _ = self.task_action(&t, TaskAction::Kill, None);
        }
        let offers: Vec<OfferId> =
            self.frameworks.get(fw).map(|f| f.offers.iter().cloned().collect()).unwrap_or_default();
        for o in offers {
            self.recover_offer(&o, None);
        }
        // Killed tasks still hold resources until their agents report back;
        // those are recovered as their updates arrive (the framework is gone,
        // so the recovery is skipped and the allocator forgets the framework).
        if let Some(f) = self.frameworks.remove(fw)
            && let FrameworkKind::Remote { tx: Some(tx) } = f.kind
        {
            let _ = tx.send(Ok(v1::Event {
                event: Some(v1::event::Event::Error(v1::event::Error {
                    message: format!("framework {fw} was torn down; its tasks are being killed"),
                })),
            }));
        }
        let _ = self.alloc.remove_framework(fw);
        self.torn_down.insert(fw.clone());
        self.dirty_frameworks.insert(fw.clone());
        let _ =
            self.watch.send(v1::WatchEvent { event: Some(v1::watch_event::Event::FrameworkRemoved(fw.to_string())) });
    }

    // ------------------------------------------------------------ batch submit

    fn submit(&mut self, req: v1::SubmitRequest) -> Result<v1::SubmitResponse, Status> {
        let tpl = req.template.ok_or_else(|| Status::invalid_argument("submit without a task template"))?;
        if self.artifacts.size(&tpl.module_sha256).is_none() {
            return Err(Status::failed_precondition(format!(
                "module {:?} is not in the artifact store; upload it first",
                tpl.module_sha256
            )));
        }
        let resources =
            resources_from_wire(tpl.resources.as_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if resources.is_empty() {
            return Err(Status::invalid_argument("task asks for no resources; give it --cpus or --mem"));
        }
        let count = req.count.max(1);
        if count > self.cfg.max_submit_count {
            return Err(Status::invalid_argument(format!(
                "count {count} is over the limit of {} tasks per submit; submit in parts",
                self.cfg.max_submit_count
            )));
        }
        let base = if tpl.name.is_empty() { "task".to_string() } else { tpl.name.clone() };
        let max_attempts = if req.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { req.max_attempts };
        let constraints: Vec<(String, String)> =
            req.constraints.iter().map(|a| (a.key.clone(), a.value.clone())).collect();
        let now = now_ms();
        let mut ids = Vec::with_capacity(count as usize);
        // One registry record for the whole submission (ids are consecutive).
        self.new_submissions.push(v1::StoredSubmission {
            tag: self.tag.clone(),
            first: self.next_id + 1,
            count,
            template: Some(tpl.clone()),
            priority: req.priority,
            constraints: req.constraints.clone(),
            max_attempts,
            submitted_at_ms: now,
            name: base.clone(),
        });
        for _ in 0..count {
            let tid = TaskId::new(self.fresh("task")).expect("valid id");
            let mut spec = tpl.clone();
            spec.task_id = tid.to_string();
            spec.name = base.clone();
            self.tasks.map.insert(
                tid.clone(),
                Task {
                    name: base.clone(),
                    framework: self.batch_id.clone(),
                    agent: None,
                    spec,
                    resources: resources.clone(),
                    allocation: None,
                    state: TaskState::Staging,
                    outcome: None,
                    message: "queued".into(),
                    submitted_at_ms: now,
                    started_at_ms: 0,
                    finished_at_ms: 0,
                    attempt: 0,
                    applied: Vec::new(),
                },
            );
            self.task_order.push(tid.clone());
            if let Some(f) = self.frameworks.get_mut(&self.batch_id.clone()) {
                f.tasks.insert(tid.clone());
            }
            self.batch.enqueue(
                tid.clone(),
                BatchTask {
                    resources: resources.clone(),
                    priority: req.priority,
                    constraints: constraints.clone(),
                    attempts: 0,
                    max_attempts,
                },
            );
            ids.push(tid.to_string());
        }
        self.revive_batch();
        Ok(v1::SubmitResponse { task_ids: ids })
    }

    // ------------------------------------------------------------ operator views

    fn list_agents(&self) -> v1::ListAgentsResponse {
        let mut agents: Vec<v1::AgentSummary> = self
            .agents
            .iter()
            .map(|(id, a)| {
                let free = self.alloc.agent_free(id).map(|f| f.total()).unwrap_or_default();
                v1::AgentSummary {
                    agent_id: id.to_string(),
                    info: Some(a.info.clone()),
                    allocated: Some(resources_to_wire(&a.resources.saturating_sub(&free))),
                    status: if a.tx.is_some() { "active".into() } else { "disconnected".into() },
                    running_tasks: a.tasks.len() as u32,
                    registered_at_ms: a.registered_at_ms,
                }
            })
            .collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        v1::ListAgentsResponse { agents }
    }

    fn framework_summary(&self, id: &FrameworkId) -> Option<v1::FrameworkSummary> {
        let f = self.frameworks.get(id)?;
        let (connected, hosted) = match &f.kind {
            FrameworkKind::Batch => (true, true),
            FrameworkKind::Remote { tx } => (tx.is_some(), f.hosted),
        };
        Some(v1::FrameworkSummary {
            framework_id: id.to_string(),
            name: f.name.clone(),
            role: f.role.to_string(),
            allocated: self.alloc.framework_allocated(id).map(|r| resources_to_wire(&r)),
            active_tasks: f.tasks.iter().filter(|t| self.tasks.get(t).is_some_and(|t| !t.state.is_terminal())).count()
                as u32,
            connected,
            hosted,
            status: if connected { "active".into() } else { "disconnected".into() },
            last_error: String::new(),
            callbacks: 0,
            callback_failures: 0,
        })
    }

    fn list_frameworks(&self) -> v1::ListFrameworksResponse {
        let mut ids: Vec<&FrameworkId> = self.frameworks.keys().collect();
        ids.sort();
        v1::ListFrameworksResponse { frameworks: ids.into_iter().filter_map(|id| self.framework_summary(id)).collect() }
    }

    fn summary(&self, id: &TaskId, t: &Task) -> v1::TaskSummary {
        v1::TaskSummary {
            task_id: id.to_string(),
            name: t.name.clone(),
            framework_id: t.framework.to_string(),
            agent_id: t.agent.as_ref().map(|a| a.to_string()).unwrap_or_default(),
            state: state_to_wire(t.state) as i32,
            outcome: t.outcome.clone(),
            submitted_at_ms: t.submitted_at_ms,
            started_at_ms: t.started_at_ms,
            finished_at_ms: t.finished_at_ms,
            attempt: t.attempt,
            module_sha256: t.spec.module_sha256.clone(),
            resources: Some(resources_to_wire(&t.resources)),
            message: t.message.clone(),
        }
    }

    fn list_tasks(&self, req: v1::ListTasksRequest) -> Result<v1::ListTasksResponse, Status> {
        let state = if req.state == 0 {
            None
        } else {
            Some(
                wasmos_proto::state_from_wire(req.state)
                    .ok_or_else(|| Status::invalid_argument("unknown task state"))?,
            )
        };
        let fw = if req.framework_id.is_empty() { None } else { Some(req.framework_id.as_str()) };
        let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
        let tasks = self
            .task_order
            .iter()
            .filter_map(|id| self.tasks.get(id).map(|t| (id, t)))
            .filter(|(_, t)| state.is_none_or(|s| t.state == s))
            .filter(|(_, t)| fw.is_none_or(|f| t.framework.as_str() == f))
            .take(limit)
            .map(|(id, t)| self.summary(id, t))
            .collect();
        Ok(v1::ListTasksResponse { tasks })
    }

    fn role_summary(&self, role: &Role) -> v1::RoleSummary {
        let stats = self.alloc.role_stats(role);
        let mut frameworks: Vec<String> =
            self.frameworks.iter().filter(|(_, f)| &f.role == role).map(|(id, _)| id.to_string()).collect();
        frameworks.sort();
        v1::RoleSummary {
            role: role.to_string(),
            weight: stats.as_ref().map(|s| s.weight).unwrap_or(1.0),
            allocated: stats.as_ref().map(|s| resources_to_wire(&s.allocated)),
            dominant_share: stats.as_ref().map(|s| s.share).unwrap_or(0.0),
            frameworks,
            quota: stats.as_ref().map(|s| quota_to_wire(&s.quota)),
            reserved: stats.as_ref().map(|s| resources_to_wire(&s.reserved)),
        }
    }

    fn list_roles(&self) -> v1::ListRolesResponse {
        v1::ListRolesResponse { roles: self.alloc.roles().iter().map(|r| self.role_summary(r)).collect() }
    }

    /// Gives the allocator a role's stored weight and quota.
    fn apply_role(&mut self, role: &Role, rec: &v1::StoredRole) -> Result<(), Status> {
        let quota = quota_from_wire(rec.quota.as_ref())?;
        let weight = if rec.weight > 0.0 { rec.weight } else { 1.0 };
        if !weight.is_finite() {
            return Err(Status::invalid_argument(format!("weight {weight} for role {role} is invalid")));
        }
        self.alloc.set_quota(role, quota).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.alloc.update_weight(role, weight).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    fn update_role(&mut self, req: v1::UpdateRoleRequest) -> Result<v1::UpdateRoleResponse, Status> {
        let role =
            Role::new(req.role.clone()).map_err(|e| Status::invalid_argument(format!("role {:?}: {e}", req.role)))?;
        let mut rec = self.role_settings.get(&role).cloned().unwrap_or_else(|| v1::StoredRole {
            role: role.to_string(),
            weight: 1.0,
            quota: None,
        });
        if let Some(w) = req.weight {
            if !(w.is_finite() && w > 0.0) {
                return Err(Status::invalid_argument(format!(
                    "weight {w} for role {role} is invalid; use a positive number such as 1 or 2.5"
                )));
            }
            rec.weight = w;
        }
        let mut quota = if req.clear_quota { v1::Quota::default() } else { rec.quota.clone().unwrap_or_default() };
        if req.quota_guarantee.is_some() {
            quota.guarantee = req.quota_guarantee.clone();
        }
        if req.quota_limit.is_some() {
            quota.limit = req.quota_limit.clone();
        }
        rec.quota = Some(quota);
        // Check everything before changing anything.
        let parsed = quota_from_wire(rec.quota.as_ref())?;
        for (name, limit) in &parsed.limit {
            if parsed.guarantee.get(name) > *limit {
                return Err(Status::invalid_argument(format!(
                    "role {role}: quota guarantee {} exceeds the limit for {name}; raise --limit or lower --guarantee",
                    parsed.guarantee
                )));
            }
        }
        self.apply_role(&role, &rec)?;
        self.role_settings.insert(role.clone(), rec);
        self.dirty_roles.insert(role.clone());
        self.dirty = true;
        Ok(v1::UpdateRoleResponse { role: Some(self.role_summary(&role)) })
    }

    /// Reserves (or unreserves) part of an agent for a role, and records it.
    fn reserve(&mut self, req: v1::ReserveRequest, reserve: bool) -> Result<v1::ReserveResponse, Status> {
        let verb = if reserve { "reserve" } else { "unreserve" };
        let agent = AgentId::new(req.agent_id.clone())
            .map_err(|e| Status::invalid_argument(format!("agent id {:?}: {e}", req.agent_id)))?;
        let role =
            Role::new(req.role.clone()).map_err(|e| Status::invalid_argument(format!("role {:?}: {e}", req.role)))?;
        let res = resources_from_wire(req.resources.as_ref())
            .map_err(|e| Status::invalid_argument(format!("resources: {e}")))?;
        if res.is_empty() {
            return Err(Status::invalid_argument(format!("nothing to {verb}; give resources, e.g. cpus:1;mem:1GiB")));
        }
        let key = (agent.clone(), role.clone());
        // The allocator holds the recorded reservation only if the agent is
        // registered and it could be applied.
        let registered = self.agents.contains_key(&agent) && !self.unapplied.contains(&key);
        if reserve && self.unapplied.contains(&key) {
            return Err(Status::failed_precondition(format!(
                "the reservation for role {role} on agent {agent} is recorded but not applied (the agent came back with less free); unreserve it first"
            )));
        }
        if !registered && !reserve && self.reservations.contains_key(&key) {
            // The agent is gone, not back yet, or the reservation could not
            // be applied: only the record changes.
            let held = self.reservations.get(&key).cloned().unwrap_or_default();
            if !held.contains(&res) {
                return Err(Status::failed_precondition(format!(
                    "agent {agent} has only {held} reserved for role {role}; cannot unreserve {res}"
                )));
            }
        } else if !registered {
            if self.recovering.contains_key(&agent) {
                return Err(Status::failed_precondition(format!(
                    "agent {agent} has not reregistered since the master restarted; retry when `wasmos agents` lists it"
                )));
            }
            return Err(Status::not_found(format!("no agent {agent}; list agents with `wasmos agents`")));
        }
        if reserve {
            if let Err(e) = self.alloc.reserve(&agent, &role, &res) {
                // Outstanding offers may hold the resources: rescind the
                // agent's offers (as Mesos does) and try once more, but only
                // if that would make room.
                let held: Vec<OfferId> =
                    self.offers.iter().filter(|(_, o)| o.agent == agent).map(|(id, _)| id.clone()).collect();
                let mut could = self.alloc.agent_free(&agent).map(|f| f.unreserved).unwrap_or_default();
                for o in &held {
                    could.add_assign(&self.offers[o].allocation.unreserved);
                }
                if !could.contains(&res) {
                    return Err(Status::failed_precondition(format!("{e}; free it up or reserve less")));
                }
                for o in held {
                    self.rescind(&o);
                }
                self.alloc
                    .reserve(&agent, &role, &res)
                    .map_err(|e| Status::failed_precondition(format!("{e}; free it up or reserve less")))?;
            }
            self.reservations.entry(key.clone()).or_default().add_assign(&res);
        } else {
            if registered {
                self.alloc.unreserve(&agent, &role, &res).map_err(|e| Status::failed_precondition(e.to_string()))?;
            }
            if let Some(r) = self.reservations.get_mut(&key) {
                r.sub_assign(&res);
                if r.is_empty() {
                    self.reservations.remove(&key);
                    self.unapplied.remove(&key);
                }
            }
        }
        self.dirty_reservations.insert(key.clone());
        self.dirty = true;
        let now = self.reservations.get(&key).cloned().unwrap_or_default();
        Ok(v1::ReserveResponse { reserved: Some(resources_to_wire(&now)) })
    }

    /// Gives a (re)registered agent its recorded dynamic reservations back. One
    /// that no longer fits (the agent came back smaller) is kept on record and
    /// reported, not dropped.
    fn apply_reservations(&mut self, agent: &AgentId) {
        let mine: Vec<(Role, Resources)> = self
            .reservations
            .iter()
            .filter(|((a, _), _)| a == agent)
            .map(|((_, r), res)| (r.clone(), res.clone()))
            .collect();
        for (role, res) in mine {
            let key = (agent.clone(), role.clone());
            match self.alloc.reserve(agent, &role, &res) {
                Ok(()) => {
                    self.unapplied.remove(&key);
                }
                Err(e) => {
                    if self.unapplied.insert(key) {
                        eprintln!(
                            "wasmos master: cannot apply the reservation of {res} for role {role} on agent {agent} yet: {e}; retrying as resources free up"
                        );
                    }
                }
            }
        }
    }

    /// Tries the recorded reservations that did not fit when their agent registered.
    fn retry_unapplied(&mut self) {
        for (agent, role) in std::mem::take(&mut self.unapplied) {
            let Some(res) = self.reservations.get(&(agent.clone(), role.clone())).cloned() else { continue };
            if !self.alloc.has_agent(&agent) || self.alloc.reserve(&agent, &role, &res).is_err() {
                self.unapplied.insert((agent, role));
            } else {
                self.dirty = true;
            }
        }
    }
}
