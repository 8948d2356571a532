//! The task table, and what happens to tasks: status updates, kills, pauses,
//! batch submissions.
//!
//! A task's state only moves through [`Tasks::set_state`], which checks the
//! lifecycle ([`TaskState::can_become`]); an illegal move is refused, logged
//! and counted, never applied. The table journals its own changes: a row is
//! stored whenever it changes, except for the moves an agent reports again
//! when it reregisters (among STAGING, STARTING, RUNNING and PAUSED while the
//! task has an agent) — those are re-learned after a master restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wasmos_allocator::Allocation;
use wasmos_model::{AgentId, FrameworkId, Outcome, TaskId, TaskSpec, TaskState};

use super::Master;
use super::cmd::Error;
use super::frameworks::Kind;
use super::types::{Launch, Submission, TaskAction, TaskStatus, WatchEvent, now_ms};
use crate::batch::{BatchTask, DEFAULT_MAX_ATTEMPTS};
use crate::registry::SubmissionRecord;

/// How many applied status-update UUIDs are remembered per task (duplicates
/// come from resends of recent updates only).
const APPLIED_UUIDS_KEPT: usize = 16;

/// One task the master knows: queued, launched, or ended (history).
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub name: String,
    pub framework: FrameworkId,
    agent: Option<AgentId>,
    /// Its resources are `spec.resources`. Shared by every task of a
    /// submission, so its `task_id` and `attempt` are not this task's: the
    /// table key and [`Task::attempt`] are.
    pub spec: Arc<TaskSpec>,
    /// What the allocator counts for this task while it holds resources.
    allocation: Option<Allocation>,
    state: TaskState,
    pub outcome: Option<Arc<Outcome>>,
    pub message: String,
    pub submitted_at_ms: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub attempt: u32,
    applied: Vec<Vec<u8>>,
}

impl Task {
    /// A task not yet launched (queued, or about to be launched or refused).
    pub fn new(framework: FrameworkId, spec: Arc<TaskSpec>, submitted_at_ms: i64) -> Task {
        Task {
            name: spec.name.clone(),
            framework,
            agent: None,
            spec,
            allocation: None,
            state: TaskState::Staging,
            outcome: None,
            message: String::new(),
            submitted_at_ms,
            started_at_ms: 0,
            finished_at_ms: 0,
            attempt: 0,
            applied: Vec::new(),
        }
    }

    /// A task as the registry held it.
    pub fn restored(rec: crate::registry::TaskRecord) -> Task {
        let v = rec.view;
        Task {
            name: v.name,
            framework: v.framework_id,
            agent: v.agent_id,
            spec: rec.spec,
            allocation: None,
            state: v.state,
            outcome: v.outcome,
            message: v.message,
            submitted_at_ms: v.submitted_at_ms,
            started_at_ms: v.started_at_ms,
            finished_at_ms: v.finished_at_ms,
            attempt: v.attempt,
            applied: rec.applied_uuids,
        }
    }

    pub fn agent(&self) -> Option<&AgentId> {
        self.agent.as_ref()
    }
    pub fn state(&self) -> TaskState {
        self.state
    }
    pub fn applied(&self) -> &[Vec<u8>] {
        &self.applied
    }
    /// Queued: not launched anywhere (a batch task waiting for an offer).
    pub fn is_queued(&self) -> bool {
        self.agent.is_none() && self.state == TaskState::Staging
    }
}

/// A state move the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IllegalMove {
    pub from: TaskState,
    pub to: TaskState,
}

/// The task table: rows by id, their listing order, and what changed since
/// the last commit (tasks and whole submissions).
#[derive(Default)]
pub(crate) struct Tasks {
    map: HashMap<TaskId, Task>,
    order: Vec<TaskId>,
    changed: HashSet<TaskId>,
    submissions: Vec<SubmissionRecord>,
}

impl Tasks {
    pub fn get(&self, id: &TaskId) -> Option<&Task> {
        self.map.get(id)
    }
    pub fn contains(&self, id: &TaskId) -> bool {
        self.map.contains_key(id)
    }
    /// Tasks in the order they were first known.
    pub fn in_order(&self) -> impl Iterator<Item = (&TaskId, &Task)> + '_ {
        self.order.iter().filter_map(|id| self.map.get(id).map(|t| (id, t)))
    }
    /// Non-terminal tasks placed on `agent`.
    pub fn live_on(&self, agent: &AgentId) -> Vec<TaskId> {
        self.map
            .iter()
            .filter(|(_, t)| t.agent.as_ref() == Some(agent) && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Adds a task (last in the listing order). `store`: journal it now (a
    /// task of a stored submission is not, until it changes).
    pub fn insert(&mut self, id: TaskId, task: Task, store: bool) {
        if store {
            self.changed.insert(id.clone());
        }
        if self.map.insert(id.clone(), task).is_none() {
            self.order.push(id);
        }
    }

    /// Restores rows loaded from the registry, in the given order.
    pub fn restore(&mut self, rows: Vec<(TaskId, Task)>) {
        for (id, t) in rows {
            if self.map.insert(id.clone(), t).is_none() {
                self.order.push(id);
            }
        }
    }

    /// Records a whole submission (its tasks are inserted unjournaled).
    pub fn record_submission(&mut self, s: SubmissionRecord) {
        self.submissions.push(s);
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
        Ok(())
    }

    /// Applies the rest of a status update (message, outcome, times); not a
    /// change of its own for the registry.
    pub fn note_status(&mut self, id: &TaskId, st: &TaskStatus) {
        let Some(t) = self.map.get_mut(id) else { return };
        if !st.message.is_empty() {
            t.message = st.message.clone();
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
        Some(Launch { task_id: id.to_string(), spec: t.spec.clone(), resources_error: None })
    }

    /// Puts a task that was LOST back in the queue as a new attempt: the one
    /// move out of a terminal state, because the next run is a new one.
    pub fn requeue(&mut self, id: &TaskId, message: String) {
        let Some(t) = self.map.get_mut(id) else { return };
        t.state = TaskState::Staging;
        t.agent = None;
        t.allocation = None;
        t.finished_at_ms = 0;
        t.message = message;
        self.changed.insert(id.clone());
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

    /// What changed since the last call (for the journal).
    pub fn take_changed(&mut self) -> (Vec<TaskId>, Vec<SubmissionRecord>) {
        (self.changed.drain().collect(), std::mem::take(&mut self.submissions))
    }
}

impl Master {
    /// Applies one status update to the task table and tells the framework.
    /// Duplicates (same UUID) are ignored; updates for unknown tasks dropped.
    pub(super) fn apply_status(&mut self, mut st: TaskStatus, from_agent: bool) {
        let tid = st.task_id.clone();
        let Some((framework, prev, agent)) =
            self.state.tasks.get(&tid).map(|t| (t.framework.clone(), t.state, t.agent.clone()))
        else {
            return;
        };
        // The task's framework is the master's record, not what an agent says.
        st.framework_id = framework;
        if from_agent && !st.uuid.is_empty() && !self.state.tasks.note_uuid(&tid, &st.uuid) {
            return;
        }
        if prev.is_terminal() {
            return;
        }
        if from_agent {
            self.recovery.unreported.remove(&tid);
            match agent {
                // A LOST report for a task that is queued again: stale.
                None if st.state == TaskState::Lost => return,
                // Launched by the previous master incarnation, never recorded.
                None if self.recovery.adoptable.contains(&tid) => {
                    self.state.place(&tid, st.agent_id.clone(), None);
                }
                // From an attempt that was given up (LOST, queued again): stale.
                None => return,
                // An update from an agent the task has left (it was lost there
                // and runs elsewhere now): stale, not applied.
                Some(a) if Some(&a) != st.agent_id.as_ref() => return,
                Some(_) => {}
            }
            // A kill is on its way: a RUNNING or PAUSED sent before it is stale.
            if prev == TaskState::Killing && matches!(st.state, TaskState::Running | TaskState::Paused) {
                return;
            }
        }
        if let Err(m) = self.state.tasks.set_state(&tid, st.state) {
            self.metrics.illegal_moves += 1;
            eprintln!(
                "wasmos master: task {tid} cannot move from {} to {} ({}: {}); update ignored",
                m.from, m.to, st.reason, st.message
            );
            return;
        }
        self.state.tasks.note_status(&tid, &st);
        let fw = st.framework_id.clone();
        if st.state.is_terminal()
            && let Some((agent, alloc)) = self.state.release(&tid)
        {
            if let Some(role) = self.state.frameworks.get(&fw).map(|f| f.role.clone()) {
                let now = self.clock();
                let _ = self.alloc.recover_resources(&fw, &agent, &role, &alloc, None, now);
            }
            self.cycle_due = true;
        }
        // Watchers see an update only once it is committed, so the observed
        // history has each update once even across a master failover.
        self.effects.publish_after_commit(WatchEvent::Task(st.clone()));
        self.notify(&fw, st);
    }

    /// Tells a task's framework about an update it should see.
    fn notify(&mut self, fw: &FrameworkId, st: TaskStatus) {
        let tid = st.task_id.clone();
        let Some(f) = self.state.frameworks.get_mut(fw) else { return };
        match f.kind {
            Kind::Batch => {
                if !st.state.is_terminal() {
                    return;
                }
                // Lost tasks come back to the queue while attempts remain.
                let retry = st.state == TaskState::Lost
                    && self.batch.tasks.get(&tid).is_some_and(|b| b.attempts < b.max_attempts);
                if retry {
                    self.state.tasks.requeue(&tid, format!("retrying after: {}", st.message));
                    self.batch.requeue(&tid);
                    self.revive_batch();
                } else {
                    self.batch.forget(&tid);
                    self.state.frameworks.end_task(fw, &tid);
                }
            }
            Kind::Remote | Kind::Hosted(_) => {
                let terminal = st.state.is_terminal();
                f.send(super::types::Event::Update(st.clone()));
                if !st.uuid.is_empty() {
                    f.unacked.insert(tid, st);
                } else if terminal && !f.unacked.contains_key(&tid) {
                    // Nothing to acknowledge (e.g. a refused launch).
                    self.state.frameworks.end_task(fw, &tid);
                }
            }
        }
    }

    /// Kill, pause or resume a task; `owner`: only if it is this framework's.
    pub(super) fn task_action(
        &mut self,
        tid: &TaskId,
        action: TaskAction,
        owner: Option<&FrameworkId>,
    ) -> Result<(), Error> {
        let plan = super::validate::task_action(&self.state, tid, action, owner)?;
        let task = self.state.tasks.get(tid).expect("checked by validate");
        let fw = task.framework.clone();
        match (action, plan) {
            (TaskAction::Kill, None) => {
                // Still queued in the batch framework: it never ran.
                self.batch.forget(tid);
                let st = TaskStatus::master(
                    tid,
                    &fw,
                    None,
                    TaskState::Killed,
                    "killed_while_queued",
                    "killed before it was launched".into(),
                );
                self.apply_status(st, false);
            }
            (_, None) => unreachable!("validate refuses pause and resume of a queued task"),
            (action, Some(agent)) => {
                let cmd = match action {
                    TaskAction::Kill => {
                        if let Err(m) = self.state.tasks.set_state(tid, TaskState::Killing) {
                            self.metrics.illegal_moves += 1;
                            eprintln!("wasmos master: task {tid} cannot move from {} to {}", m.from, m.to);
                        }
                        super::types::AgentCommand::Kill(tid.clone())
                    }
                    TaskAction::Pause => super::types::AgentCommand::Pause(tid.clone()),
                    TaskAction::Resume => super::types::AgentCommand::Resume(tid.clone()),
                };
                self.effects.send_agent(&agent, cmd);
            }
        }
        Ok(())
    }

    /// `wasmos submit`: COUNT tasks queued in the batch framework, stored as
    /// one submission record (their ids are consecutive).
    pub(super) fn submit(&mut self, s: Submission) -> Result<Vec<TaskId>, Error> {
        super::validate::submit(&s, self.cfg.max_submit_count, |sha| self.artifacts.size(sha).is_some())?;
        let count = s.count.max(1);
        let base = if s.template.name.is_empty() { "task".to_string() } else { s.template.name.clone() };
        let max_attempts = if s.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { s.max_attempts };
        let now = now_ms();
        self.state.tasks.record_submission(SubmissionRecord {
            tag: self.ids.tag.clone(),
            first: self.ids.peek(),
            count,
            template: s.template.clone(),
            priority: s.priority,
            constraints: s.constraints.clone(),
            max_attempts,
            submitted_at_ms: now,
            name: base.clone(),
        });
        let mut ids = Vec::with_capacity(count as usize);
        // One spec for all of them (each task's id is its key in the table).
        let spec = Arc::new(TaskSpec { task_id: String::new(), name: base.clone(), ..s.template });
        for _ in 0..count {
            let tid = TaskId::new(self.ids.fresh("task")).expect("valid id");
            self.enqueue_batch(tid.clone(), spec.clone(), now, s.priority, &s.constraints, max_attempts);
            ids.push(tid);
        }
        self.revive_batch();
        Ok(ids)
    }

    /// Adds a queued batch task (a new submission's, or a restored one's).
    pub(super) fn enqueue_batch(
        &mut self,
        tid: TaskId,
        spec: Arc<TaskSpec>,
        submitted_at_ms: i64,
        priority: i32,
        constraints: &[(String, String)],
        max_attempts: u32,
    ) {
        let resources = spec.resources.clone();
        let mut task = Task::new(self.batch_id.clone(), spec, submitted_at_ms);
        task.message = "queued".into();
        self.state.tasks.insert(tid.clone(), task, false);
        self.state.frameworks.add_task(&self.batch_id, &tid);
        self.batch.enqueue(
            tid,
            BatchTask { resources, priority, constraints: constraints.to_vec(), attempts: 0, max_attempts },
        );
    }
}
