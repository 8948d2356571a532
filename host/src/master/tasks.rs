//! The task table: every task the master holds in memory (queued, launched,
//! and recently ended), in listing order, with what changed for the registry
//! and which ended tasks may leave memory.
//!
//! A task's state only moves through [`Tasks::set_state`], which checks the
//! lifecycle ([`TaskState::can_become`]); an illegal move is refused, logged
//! and counted, never applied. The table journals its own changes: a row is
//! stored whenever it changes, except for the moves an agent reports again
//! when it reregisters (among STAGING, STARTING, RUNNING and PAUSED while the
//! task has an agent) — those are re-learned after a master restart.
//!
//! Retention: a task that ended and that its framework is done with (it
//! acknowledged the final update, or there was none to acknowledge) waits in
//! `done`; it leaves memory, oldest first, once more than
//! `max_completed_tasks` (or `completed_task_memory` bytes of output) wait,
//! or it waited `completed_task_ttl` — but never before the registry holds
//! its final record. From then on it is answered from the registry.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmos_allocator::Allocation;
use wasmos_model::{AgentId, FrameworkId, Outcome, Role, TaskId, TaskSpec, TaskState};

use super::types::{Launch, TaskStatus, now_ms};
use crate::registry::SubmissionRecord;

/// How many applied status-update UUIDs are remembered per task (duplicates
/// come from resends of recent updates only).
const APPLIED_UUIDS_KEPT: usize = 16;

/// One task the master knows: queued, launched, or ended (history).
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub framework: FrameworkId,
    /// The role its resources are accounted to: its framework's, or for the
    /// batch framework (which serves many roles) the one it was submitted to.
    pub role: Role,
    agent: Option<AgentId>,
    /// Its resources are `spec.resources`, its name `spec.name`. Shared by
    /// every task of a submission, so its `task_id` and `attempt` are not
    /// this task's: the table key and [`Task::attempt`] are.
    pub spec: Arc<TaskSpec>,
    /// What the allocator counts for this task while it holds resources.
    allocation: Option<Allocation>,
    state: TaskState,
    pub outcome: Option<Arc<Outcome>>,
    pub message: Cow<'static, str>,
    pub submitted_at_ms: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub attempt: u32,
    /// Where it stands in listings (see [`Tasks::insert`]).
    seq: u64,
    applied: Vec<Vec<u8>>,
    /// Counted among its submission's ended tasks.
    counted_ended: bool,
    /// What happened to it since it was submitted (see [`TaskEvent`]).
    pub events: Vec<TaskEvent>,
    /// While it runs: its use so far, as its agent reports it.
    pub usage: Option<super::types::Usage>,
    /// Tasks with a health check: the latest verdict and what it said.
    pub health: Option<Box<(bool, String)>>,
    /// A captured run its next launch resumes (in memory only: after a
    /// master restart the task starts afresh).
    resume: Option<Arc<Vec<u8>>>,
}

/// Most events kept per task: the first, and the latest after it.
pub(crate) const MAX_TASK_EVENTS: usize = 32;
/// Longest message (bytes) an event keeps; the rest is cut.
pub(crate) const MAX_EVENT_MESSAGE: usize = 1024;

/// One step of a task's life: launched, running, paused, resumed, each
/// retry, its end (with the reason). Its submission is `submitted_at_ms`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskEvent {
    pub at_ms: i64,
    pub state: TaskState,
    pub reason: Cow<'static, str>,
    pub message: String,
    pub agent: Option<AgentId>,
}

impl Task {
    /// Adds an event, keeping the first and the latest [`MAX_TASK_EVENTS`].
    pub fn log(&mut self, state: TaskState, reason: impl Into<Cow<'static, str>>, mut message: String) {
        if self.events.len() >= MAX_TASK_EVENTS {
            self.events.remove(1);
        }
        if message.len() > MAX_EVENT_MESSAGE {
            let mut cut = MAX_EVENT_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let mut reason: Cow<'static, str> = reason.into();
        if reason.len() > MAX_EVENT_MESSAGE {
            reason = Cow::Owned(reason.chars().take(64).collect());
        }
        let at_ms = now_ms();
        self.events.push(TaskEvent { at_ms, state, reason, message, agent: self.agent.clone() });
    }
}

impl Task {
    /// A task not yet launched (queued, or about to be launched or refused).
    pub fn new(framework: FrameworkId, role: Role, spec: Arc<TaskSpec>, submitted_at_ms: i64) -> Task {
        Task {
            framework,
            role,
            agent: None,
            spec,
            allocation: None,
            state: TaskState::Staging,
            outcome: None,
            message: Cow::Borrowed(""),
            submitted_at_ms,
            started_at_ms: 0,
            finished_at_ms: 0,
            attempt: 0,
            seq: 0,
            applied: Vec::new(),
            counted_ended: false,
            events: Vec::new(),
            usage: None,
            health: None,
            resume: None,
        }
    }

    /// A task as the registry held it; `spec`: its own, or its submission's;
    /// `role`: used when the record names none (its framework was gone).
    pub fn restored(rec: crate::registry::TaskRecord, spec: Arc<TaskSpec>, role: Role) -> Task {
        let v = rec.view;
        Task {
            framework: v.framework_id,
            role: Role::new(v.role).unwrap_or(role),
            agent: v.agent_id,
            spec,
            allocation: None,
            state: v.state,
            outcome: v.outcome,
            message: Cow::Owned(v.message),
            submitted_at_ms: v.submitted_at_ms,
            started_at_ms: v.started_at_ms,
            finished_at_ms: v.finished_at_ms,
            attempt: v.attempt,
            seq: v.seq,
            applied: rec.applied_uuids,
            counted_ended: v.state.is_terminal(),
            events: v.events,
            usage: None,
            health: v.health.map(Box::new),
            resume: None,
        }
    }

    pub fn agent(&self) -> Option<&AgentId> {
        self.agent.as_ref()
    }
    pub fn state(&self) -> TaskState {
        self.state
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn applied(&self) -> &[Vec<u8>] {
        &self.applied
    }
    /// Queued: not launched anywhere (a batch task waiting for an offer).
    pub fn is_queued(&self) -> bool {
        self.agent.is_none() && self.state == TaskState::Staging
    }
    /// Roughly what an ended task holds on to (its output tails dominate).
    fn weight(&self) -> u64 {
        256 + self.outcome.as_ref().map(|o| (o.stdout.len() + o.stderr.len()) as u64).unwrap_or(0)
    }
}

/// A state move the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IllegalMove {
    pub from: TaskState,
    pub to: TaskState,
}

/// How long ended tasks stay in memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub max_tasks: usize,
    pub max_bytes: u64,
    pub ttl: Duration,
}

/// A submission whose record the registry still needs (some task of it has
/// not ended).
#[derive(Debug, Clone)]
struct OpenSubmission {
    count: u32,
    ended: u32,
}

/// What changed since the last commit.
#[derive(Debug, Default)]
pub(crate) struct TaskChanges {
    pub tasks: Vec<TaskId>,
    pub new_submissions: Vec<SubmissionRecord>,
    /// Submissions whose count of ended tasks changed: (key, ended).
    pub ended_counts: Vec<(String, u32)>,
    /// Submissions all of whose tasks ended: their records go.
    pub closed_submissions: Vec<String>,
}

/// The task table.
#[derive(Default)]
pub(crate) struct Tasks {
    map: HashMap<TaskId, Task>,
    order: BTreeMap<u64, TaskId>,
    changed: HashSet<TaskId>,
    new_submissions: Vec<SubmissionRecord>,
    /// By (tag, first task number).
    open: BTreeMap<(String, u64), OpenSubmission>,
    /// Ended tasks their framework is done with: (task, when, commit batch).
    done: VecDeque<(TaskId, Instant, u64)>,
    done_bytes: u64,
}

/// The submission (tag, number) a batch task id `task-TAG-N` names.
fn submission_part(id: &TaskId) -> Option<(&str, u64)> {
    let (head, n) = id.as_str().rsplit_once('-')?;
    Some((head.strip_prefix("task-")?, n.parse().ok()?))
}

impl Tasks {
    pub fn get(&self, id: &TaskId) -> Option<&Task> {
        self.map.get(id)
    }
    pub fn contains(&self, id: &TaskId) -> bool {
        self.map.contains_key(id)
    }
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Tasks after position `after`, in listing order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = (&TaskId, &Task)> + '_ {
        self.order.range(after.saturating_add(1)..).filter_map(|(_, id)| self.map.get(id).map(|t| (id, t)))
    }
    /// Non-terminal tasks placed on `agent`.
    pub fn live_on(&self, agent: &AgentId) -> Vec<TaskId> {
        self.map
            .iter()
            .filter(|(_, t)| t.agent.as_ref() == Some(agent) && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect()
    }
    /// Modules of the tasks that have not ended.
    pub fn live_modules(&self) -> HashSet<&str> {
        let mut used = HashSet::new();
        for t in self.map.values().filter(|t| !t.state.is_terminal()) {
            used.insert(t.spec.module_sha256.as_str());
            if let Some(wasmos_model::HealthCheck {
                kind: wasmos_model::HealthKind::Probe { module_sha256, .. }, ..
            }) = &t.spec.health
            {
                used.insert(module_sha256.as_str());
            }
        }
        used
    }

    /// Adds a task at listing position `seq`. `store`: journal it now (a task
    /// of a stored submission is not, until it changes).
    pub fn insert(&mut self, id: TaskId, mut task: Task, seq: u64, store: bool) {
        if store {
            self.changed.insert(id.clone());
        }
        task.seq = seq;
        self.order.insert(seq, id.clone());
        if let Some(old) = self.map.insert(id, task) {
            self.order.remove(&old.seq);
        }
    }

    /// Restores a row loaded from the registry (at its recorded position).
    pub fn restore(&mut self, id: TaskId, task: Task) {
        let ended = task.state.is_terminal();
        self.order.insert(task.seq, id.clone());
        self.map.insert(id.clone(), task);
        if ended {
            // Loaded because it is recent: it may leave memory as usual.
            self.done.push_back((id, Instant::now(), 0));
        }
    }

    /// Records a whole submission (its tasks are inserted unjournaled).
    pub fn record_submission(&mut self, s: SubmissionRecord) {
        self.open.insert((s.tag.clone(), s.first), OpenSubmission { count: s.count, ended: 0 });
        self.new_submissions.push(s);
    }

    /// A submission from the registry, with how many of its tasks ended.
    pub fn restore_submission(&mut self, s: &SubmissionRecord, ended: u32) {
        self.open.insert((s.tag.clone(), s.first), OpenSubmission { count: s.count, ended });
    }

    /// Moves a task to `next`, if the lifecycle allows it. Staying in the
    /// same state is not a move.
    pub fn set_state(&mut self, id: &TaskId, next: TaskState) -> Result<(), IllegalMove> {
        let Some(t) = self.map.get_mut(id) else { return Ok(()) };
        let prev = t.state;
        if prev == next {
            return Ok(());
        }
        if !prev.can_become(next) {
            return Err(IllegalMove { from: prev, to: next });
        }
        use TaskState::*;
        let relearned = t.agent.is_some()
            && matches!(prev, Staging | Starting | Running | Paused)
            && matches!(next, Staging | Starting | Running | Paused);
        if !relearned {
            self.changed.insert(id.clone());
        }
        t.state = next;
        if next.is_terminal() {
            // Nothing is applied to an ended task again, nor resumed.
            t.applied = Vec::new();
            t.resume = None;
        }
        Ok(())
    }

    /// Applies the rest of a status update (message, outcome, times); not a
    /// change of its own for the registry.
    pub fn note_status(&mut self, id: &TaskId, st: &TaskStatus) {
        let Some(t) = self.map.get_mut(id) else { return };
        if let Some(h) = st.healthy {
            t.health = Some(Box::new((h, st.message.clone())));
        }
        // A passed health check keeps the task's message (it is in `health`).
        if !st.message.is_empty() && st.healthy != Some(true) {
            t.message = Cow::Owned(st.message.clone());
        }
        if st.outcome.is_some() {
            t.outcome = st.outcome.clone();
        }
        if st.state == TaskState::Running && t.started_at_ms == 0 {
            t.started_at_ms = st.timestamp_ms.max(1);
        }
        if st.state.is_terminal() {
            t.finished_at_ms = now_ms();
        }
        t.log(st.state, st.reason.to_string(), st.message.clone());
        if st.timestamp_ms > 0
            && let Some(e) = t.events.last_mut()
        {
            e.at_ms = st.timestamp_ms;
        }
    }

    /// An agent said after a master restart that the task runs: the master
    /// may have missed its RUNNING update, so it starts now if it had not,
    /// and is no longer "queued".
    pub fn relearned_running(&mut self, id: &TaskId, agent: &AgentId) {
        let Some(t) = self.map.get_mut(id) else { return };
        if t.started_at_ms == 0 {
            t.started_at_ms = now_ms();
        }
        let state = t.state;
        t.log(state, "agent_reregistered", format!("{agent} reports it {state} after a master restart"));
        if t.message == "queued" || t.message.is_empty() {
            t.message = Cow::Owned(format!("{} on {agent} (reported after a master restart)", t.state));
        }
    }

    /// Whether the master has run `attempt` of `id` live on `agent` (attempt
    /// 0: an agent that does not say which).
    pub fn runs_there(&self, id: &TaskId, agent: &AgentId, attempt: u32) -> bool {
        self.get(id).is_some_and(|k| {
            !k.state().is_terminal()
                && k.agent() == Some(agent)
                && (attempt == 0 || k.attempt == 0 || k.attempt == attempt)
        })
    }

    /// Remembers an agent's update UUID; false if it was applied before.
    pub fn note_uuid(&mut self, id: &TaskId, uuid: &[u8]) -> bool {
        let Some(t) = self.map.get_mut(id) else { return false };
        if t.applied.iter().any(|u| u == uuid) {
            return false;
        }
        t.applied.push(uuid.to_vec());
        if t.applied.len() > APPLIED_UUIDS_KEPT {
            t.applied.remove(0);
        }
        true
    }

    /// Starts a new attempt of a queued task: it is about to be launched.
    pub fn next_attempt(&mut self, id: &TaskId) -> Option<Launch> {
        let t = self.map.get_mut(id)?;
        t.attempt += 1;
        self.changed.insert(id.clone());
        Some(Launch { task_id: id.to_string(), spec: t.spec.clone(), resources_error: None, signature: String::new() })
    }

    /// The captured run the next launch resumes.
    pub fn set_resume(&mut self, id: &TaskId, snapshot: Option<Arc<Vec<u8>>>) {
        if let Some(t) = self.map.get_mut(id) {
            t.resume = snapshot;
        }
    }
    pub fn resumes(&self, id: &TaskId) -> bool {
        self.map.get(id).is_some_and(|t| t.resume.is_some())
    }
    pub fn take_resume(&mut self, id: &TaskId) -> Option<Arc<Vec<u8>>> {
        self.map.get_mut(id).and_then(|t| t.resume.take())
    }

    /// Takes back the attempt its latest launch counted (a run killed by a
    /// drain is not held against it): its next launch has the same number.
    pub fn unlaunch(&mut self, id: &TaskId) {
        if let Some(t) = self.map.get_mut(id) {
            t.attempt = t.attempt.saturating_sub(1);
            self.changed.insert(id.clone());
        }
    }

    /// Puts a task that was LOST back in the queue as a new attempt: the one
    /// move out of a terminal state, because the next run is a new one.
    pub fn requeue(&mut self, id: &TaskId, message: String) {
        let Some(t) = self.map.get_mut(id) else { return };
        t.state = TaskState::Staging;
        t.agent = None;
        t.allocation = None;
        t.finished_at_ms = 0;
        // The next attempt starts afresh.
        t.started_at_ms = 0;
        t.usage = None;
        t.health = None;
        t.outcome = None;
        t.log(TaskState::Staging, "retrying", message.clone());
        t.message = Cow::Owned(message);
        self.changed.insert(id.clone());
    }

    /// A running task's use as its agent reports it.
    pub fn note_usage(&mut self, id: &TaskId, fuel: u64, mem: u64, cpu_ns: u64) {
        let Some(t) = self.map.get_mut(id).filter(|t| !t.state.is_terminal()) else { return };
        let at_ms = now_ms();
        let (fuel_per_sec, cpu_cores) = match t.usage {
            Some(u) if at_ms > u.at_ms && fuel >= u.fuel && cpu_ns >= u.cpu_ns => {
                let ms = (at_ms - u.at_ms) as f64;
                ((fuel - u.fuel) as f64 * 1e3 / ms, (cpu_ns - u.cpu_ns) as f64 / 1e6 / ms)
            }
            Some(u) => (u.fuel_per_sec, u.cpu_cores),
            None => (0.0, 0.0),
        };
        t.usage = Some(super::types::Usage { fuel, mem, at_ms, fuel_per_sec, cpu_ns, cpu_cores });
    }

    /// A launch: logged, and a queued task's "queued" message goes.
    pub fn launched(&mut self, id: &TaskId, attempt: u32) {
        if let Some(t) = self.map.get_mut(id) {
            // The agent is the event's; a first attempt needs no words.
            let msg = if attempt > 1 { format!("attempt {attempt}") } else { String::new() };
            t.log(TaskState::Staging, "launched", msg);
            if t.message == "queued" {
                t.message = Cow::Borrowed("");
            }
        }
    }

    /// Adds an event to a task (see [`Task::log`]).
    pub fn log(&mut self, id: &TaskId, state: TaskState, reason: &'static str, message: String) {
        if let Some(t) = self.map.get_mut(id) {
            t.log(state, reason, message);
        }
    }

    /// Sets where a task runs and what it holds there (see [`super::State`],
    /// which keeps the agent's index in step).
    pub(super) fn set_placement(&mut self, id: &TaskId, agent: Option<AgentId>, alloc: Option<Allocation>) {
        let Some(t) = self.map.get_mut(id) else { return };
        if t.agent != agent {
            self.changed.insert(id.clone());
        }
        t.agent = agent;
        t.allocation = alloc;
    }

    /// Takes back what a task holds (it ended, or its agent left).
    pub(super) fn take_allocation(&mut self, id: &TaskId) -> Option<Allocation> {
        self.map.get_mut(id)?.allocation.take()
    }

    /// Sets a refused task's framework (a queued batch task refused by its own
    /// launch keeps its row).
    pub fn set_framework(&mut self, id: &TaskId, fw: &FrameworkId) {
        if let Some(t) = self.map.get_mut(id)
            && &t.framework != fw
        {
            t.framework = fw.clone();
            self.changed.insert(id.clone());
        }
    }

    /// The framework is done with an ended task (see [`super::State::end_task`]):
    /// it may leave memory once batch `batch` is committed.
    pub(super) fn mark_done(&mut self, id: &TaskId, batch: u64) {
        if let Some(t) = self.map.get(id).filter(|t| t.state.is_terminal()) {
            self.done_bytes += t.weight();
            self.done.push_back((id.clone(), Instant::now(), batch));
        }
    }

    /// Ended tasks that leave memory now: oldest first, while over the count
    /// or byte bound or past the TTL, and only once `committed` covers the
    /// batch that recorded them.
    pub fn evict(&mut self, r: &Retention, committed: u64) -> usize {
        let mut n = 0;
        while let Some((id, at, batch)) = self.done.front() {
            let over = self.done.len() > r.max_tasks || self.done_bytes > r.max_bytes || at.elapsed() >= r.ttl;
            if !over || *batch > committed {
                break;
            }
            let id = id.clone();
            self.done.pop_front();
            // Still ended (not queued again since), and still here.
            let Some(t) = self.map.get(&id).filter(|t| t.state.is_terminal()) else { continue };
            self.done_bytes = self.done_bytes.saturating_sub(t.weight());
            if let Some(t) = self.map.remove(&id) {
                self.order.remove(&t.seq);
                self.changed.remove(&id);
                n += 1;
            }
        }
        n
    }

    /// What changed since the last call (for the journal), with the
    /// bookkeeping of which submissions are still needed.
    pub fn take_changed(&mut self) -> TaskChanges {
        let mut out = TaskChanges {
            tasks: self.changed.drain().collect(),
            new_submissions: std::mem::take(&mut self.new_submissions),
            ..Default::default()
        };
        let mut touched: BTreeMap<(String, u64), ()> = BTreeMap::new();
        for id in &out.tasks {
            let Some(t) = self.map.get_mut(id) else { continue };
            let ended = t.state.is_terminal();
            if ended == t.counted_ended {
                continue;
            }
            let Some((tag, n)) = submission_part(id) else { continue };
            let Some((key, sub)) = self
                .open
                .range_mut(..=(tag.to_string(), n))
                .next_back()
                .filter(|((tg, first), s)| tg == tag && n >= *first && n < first + s.count as u64)
            else {
                continue;
            };
            t.counted_ended = ended;
            if ended {
                sub.ended += 1;
            } else {
                sub.ended = sub.ended.saturating_sub(1);
            }
            touched.insert(key.clone(), ());
        }
        for (key, ()) in touched {
            let Some(sub) = self.open.get(&key) else { continue };
            let name = format!("task-{}-{}", key.0, key.1);
            if sub.ended >= sub.count {
                self.open.remove(&key);
                out.closed_submissions.push(name);
            } else {
                out.ended_counts.push((name, sub.ended));
            }
        }
        out
    }
}
