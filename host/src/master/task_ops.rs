//! What happens to tasks: status updates, kills, pauses, batch submissions.

use std::sync::Arc;

use wasmos_model::{AgentId, FrameworkId, Role, TaskId, TaskSpec, TaskState};

use super::Master;
use super::cmd::Error;
use super::frameworks::Kind;
use super::tasks::Task;
use super::types::{OutputView, Submission, TaskAction, TaskStatus, WatchEvent, now_ms};
use crate::batch::{BatchTask, DEFAULT_MAX_ATTEMPTS};
use crate::registry::SubmissionRecord;

impl Master {
    /// Applies one status update to the task table and tells the framework.
    /// Duplicates (same UUID) are ignored; updates for unknown tasks dropped.
    pub(super) fn apply_status(&mut self, mut st: TaskStatus, from_agent: bool) {
        let tid = st.task_id.clone();
        let Some((framework, prev, agent, attempt)) =
            self.state.tasks.get(&tid).map(|t| (t.framework.clone(), t.state(), t.agent().cloned(), t.attempt))
        else {
            return;
        };
        // From a run the master gave up (an older attempt, still on an agent
        // that was cut off): stale, whatever agent it is on.
        if from_agent && st.attempt != 0 && attempt != 0 && st.attempt != attempt {
            return;
        }
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
            // A kill is on its way: a STARTING, RUNNING or PAUSED sent before it is stale.
            if prev == TaskState::Killing
                && matches!(st.state, TaskState::Starting | TaskState::Running | TaskState::Paused)
            {
                return;
            }
            // Nothing new: the live state the master holds already, no health
            // verdict. That is an update resent after a master restart (the
            // old master published it, then died before its ack reached the
            // agent; the agent's reregistration taught the new master the
            // state first): acknowledged, not published twice.
            if st.state == prev
                && st.healthy.is_none()
                && matches!(prev, TaskState::Starting | TaskState::Running | TaskState::Paused)
            {
                return;
            }
        }
        // A health verdict on a live task: no move (a verdict that crossed a
        // pause or a kill must not undo it), but noted, watched and told to
        // its framework like any update.
        let verdict_only = st.healthy.is_some()
            && st.state == TaskState::Running
            && matches!(prev, TaskState::Running | TaskState::Paused | TaskState::Killing);
        if verdict_only {
            st.state = prev;
        } else if let Err(m) = self.state.tasks.set_state(&tid, st.state) {
            self.metrics.illegal_moves += 1;
            eprintln!(
                "wasmos master: task {tid} cannot move from {} to {} ({}: {}); update ignored",
                m.from, m.to, st.reason, st.message
            );
            return;
        }
        // What the master itself asked of a draining agent decides whether
        // a batch task is queued again, never the reason an agent gives.
        let (asked_capture, asked_kill) = if st.state.is_terminal() {
            (self.captures.remove(&tid).is_some(), self.drain_kills.remove(&tid).is_some())
        } else {
            (false, false)
        };
        let snapshot = st.snapshot.take();
        if st.state == TaskState::Killed && prev != TaskState::Killing && asked_capture && st.reason == "migrated" {
            // Captured at a safe point: its next launch resumes it. (Not
            // kept on the update: watchers and frameworks never see it.)
            if let Some(s) = snapshot {
                self.state.tasks.set_resume(&tid, Some(s));
                self.drain_requeue = Some(tid.clone());
            }
        } else if st.state == TaskState::Killed && asked_kill {
            st.reason = super::maintenance::DRAIN_REASON.into();
            st.message = "killed at its agent's drain deadline".into();
            self.drain_requeue = Some(tid.clone());
        } else if from_agent && (st.reason == super::maintenance::DRAIN_REASON || st.reason == "migrated") {
            // Not the master's doing: an agent's word alone requeues nothing.
            st.reason = format!("agent_said_{}", st.reason);
        }
        let started_before = self.state.tasks.get(&tid).map_or(0, |t| t.started_at_ms);
        self.state.tasks.note_status(&tid, &st);
        self.observe(&tid, &st, from_agent, started_before);
        st.attempt = self.state.tasks.get(&tid).map_or(0, |t| t.attempt);
        let fw = st.framework_id.clone();
        let role = self.state.tasks.get(&tid).map(|t| t.role.clone());
        if st.state.is_terminal()
            && let Some((agent, alloc)) = self.state.release(&tid)
        {
            if let Some(role) = &role {
                let now = self.clock();
                let _ = self.alloc.recover_resources(&fw, &agent, role, &alloc, None, now);
            }
            self.cycle_due = true;
        }
        // Watchers see an update only once it is committed, so the observed
        // history has each update once even across a master failover.
        let role = role.unwrap_or_else(|| self.cfg.batch_role.clone());
        self.effects.publish_after_commit(WatchEvent::Task(st.clone(), role));
        self.notify(&fw, st);
    }

    /// Counts an applied update for `/metrics`: its source and delay, a
    /// first RUNNING's latency, an end's state, reason and run time.
    fn observe(&mut self, tid: &TaskId, st: &TaskStatus, from_agent: bool, started_before: i64) {
        let m = self.metrics.prom.clone();
        let now = now_ms();
        if from_agent {
            m.updates_from_agent.inc()
        } else {
            m.updates_from_master.inc()
        }
        if from_agent && st.timestamp_ms > 0 {
            m.status_update_delay.observe((now - st.timestamp_ms).max(0) as f64 / 1e3);
        }
        let Some(t) = self.state.tasks.get(tid) else { return };
        if started_before == 0 && t.started_at_ms > 0 && t.submitted_at_ms > 0 {
            m.launch_latency.observe((t.started_at_ms - t.submitted_at_ms).max(0) as f64 / 1e3);
        }
        if st.state.is_terminal() {
            if t.started_at_ms > 0 {
                m.run_time.observe((now - t.started_at_ms).max(0) as f64 / 1e3);
            }
            let reason = if st.reason.is_empty() { "none" } else { st.reason.as_str() };
            let state = st.state.as_str();
            // Resolved once per (reason, state): no label hashing per task.
            match self.metrics.ended.get(reason).and_then(|s| s.get(state)) {
                Some(c) => c.inc(),
                None => {
                    let label = m.bounded("reason", reason);
                    let c = m.tasks_ended.with_label_values(&[state, label.as_str()]);
                    c.inc();
                    if self.metrics.ended.len() < crate::metrics::MAX_LABEL_VALUES {
                        self.metrics.ended.entry(reason.to_string()).or_default().insert(state, c);
                    }
                }
            }
        }
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
                if self.drain_requeue.as_ref() == Some(&tid) {
                    self.drain_requeue = None;
                    if self.requeue_drained(&tid) {
                        return;
                    }
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
                    self.state.end_task(fw, &tid);
                }
            }
            Kind::Remote | Kind::Hosted(_) => {
                let terminal = st.state.is_terminal();
                f.send(super::types::Event::Update(st.clone()));
                if !st.uuid.is_empty() {
                    f.unacked.insert(tid, st);
                } else if terminal && !f.unacked.contains_key(&tid) {
                    // Nothing to acknowledge (e.g. a refused launch).
                    self.state.end_task(fw, &tid);
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
                        match self.state.tasks.set_state(tid, TaskState::Killing) {
                            Ok(()) => self.state.tasks.log(tid, TaskState::Killing, "kill_requested", String::new()),
                            Err(m) => {
                                self.metrics.illegal_moves += 1;
                                eprintln!("wasmos master: task {tid} cannot move from {} to {}", m.from, m.to);
                            }
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
        let role = s.role.clone().unwrap_or_else(|| self.cfg.batch_role.clone());
        self.check_signed(&role, &s.template.module_sha256, &s.signature)?;
        if let Some(wasmos_model::HealthCheck { kind: wasmos_model::HealthKind::Probe { module_sha256, .. }, .. }) =
            &s.template.health
        {
            // A probe runs code too: in a signed role it must be verified.
            self.check_signed(&role, module_sha256, "").map_err(|e| {
                Error::denied(format!(
                    "health probe: {}; submit the probe signed once as a task of its own, or use --health-heartbeat",
                    e.message
                ))
            })?;
        }
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
            role: role.clone(),
        });
        let mut ids = Vec::with_capacity(count as usize);
        // One spec for all of them (each task's id is its key in the table).
        let spec = Arc::new(TaskSpec { task_id: String::new(), name: base.clone(), ..s.template });
        let queue = BatchTask {
            role,
            resources: spec.resources.clone(),
            priority: s.priority,
            constraints: s.constraints.clone(),
            attempts: 0,
            max_attempts,
        };
        for _ in 0..count {
            let (id, n) = self.ids.fresh_n("task");
            let tid = TaskId::new(id).expect("valid id");
            self.enqueue_batch(tid.clone(), n, spec.clone(), now, queue.clone());
            ids.push(tid);
        }
        self.revive_batch();
        self.metrics.prom.tasks_submitted.inc_by(ids.len() as u64);
        Ok(ids)
    }

    /// Adds a queued batch task (a new submission's, or a restored one's);
    /// `queue`: its priority, constraints and attempt budget.
    pub(super) fn enqueue_batch(
        &mut self,
        tid: TaskId,
        seq: u64,
        spec: Arc<TaskSpec>,
        submitted_at_ms: i64,
        queue: BatchTask,
    ) {
        let mut task = Task::new(self.batch_id.clone(), queue.role.clone(), spec, submitted_at_ms);
        task.message = "queued".into();
        self.state.tasks.insert(tid.clone(), task, seq, false);
        self.state.frameworks.add_task(&self.batch_id, &tid);
        let role = queue.role.clone();
        if self.batch.enqueue(tid, queue) {
            self.batch_serves(&role);
        }
    }

    /// The batch framework takes offers in a role it had no queue for: it
    /// subscribes to it, suppressed until [`Master::revive_batch`].
    pub(super) fn batch_serves(&mut self, role: &Role) {
        let mut roles = self.batch.roles();
        if !roles.contains(&self.cfg.batch_role) {
            roles.push(self.cfg.batch_role.clone());
        }
        // Cannot fail: the batch framework is always known, roles non-empty.
        let _ = self.alloc.update_framework(&self.batch_id, &roles);
        let _ = self.alloc.suppress(&self.batch_id, std::slice::from_ref(role));
    }

    /// A task's output from `offset` on: an ended or never-placed task's
    /// from its outcome; a running task's asked of its agent (answered by
    /// [`Master::agent_output`], or an error after [`OUTPUT_WAIT`]).
    pub(super) fn task_output(
        &mut self,
        id: &TaskId,
        stderr: bool,
        offset: u64,
        max: u32,
        reply: super::cmd::Reply<OutputView>,
    ) {
        let Some(t) = self.state.tasks.get(id) else {
            let _ = reply.send(Err(Error::not_found(format!("no task {id}; list tasks with `wasmos tasks`"))));
            return;
        };
        let max = if max == 0 { MAX_OUTPUT_CHUNK } else { max.min(MAX_OUTPUT_CHUNK) };
        let running =
            matches!(t.state(), TaskState::Starting | TaskState::Running | TaskState::Paused | TaskState::Killing);
        let agent = t.agent().cloned().filter(|_| running);
        let Some(agent) = agent else {
            let more = !t.state().is_terminal();
            let _ = reply.send(Ok(OutputView::of_outcome(t.outcome.as_deref(), stderr, offset, max, more)));
            return;
        };
        if self.state.agents.get(&agent).is_none_or(|a| a.tx.is_none()) {
            let _ = reply.send(Err(Error::unavailable(format!(
                "agent {agent} is not connected; its task's output can be read when it is back, or when the task ends"
            ))));
            return;
        }
        if self.outputs.len() >= MAX_PENDING_OUTPUTS {
            let _ = reply.send(Err(Error::unavailable(format!(
                "{MAX_PENDING_OUTPUTS} output requests are waiting for agents; retry shortly"
            ))));
            return;
        }
        self.next_output = self.next_output.wrapping_add(1);
        let request = self.next_output;
        let entry = (agent.clone(), id.clone(), reply, std::time::Instant::now() + OUTPUT_WAIT);
        self.outputs.insert(request, entry);
        let cmd = super::types::AgentCommand::Tail { task: id.clone(), stderr, offset, max, request };
        self.effects.send_agent(&agent, cmd);
    }

    /// An agent's answer to a `Tail`. More may come while the master has
    /// the task unended (its final output then comes with its outcome).
    pub(super) fn agent_output(&mut self, agent: &AgentId, request: u64, mut out: OutputView) {
        if self.outputs.get(&request).is_some_and(|(a, _, _, _)| a == agent)
            && let Some((_, task, reply, _)) = self.outputs.remove(&request)
        {
            out.running = self.state.tasks.get(&task).is_some_and(|t| !t.state().is_terminal());
            let _ = reply.send(Ok(out));
        }
    }

    /// Output requests whose agent did not answer in time.
    pub(super) fn expire_outputs(&mut self) {
        let now = std::time::Instant::now();
        let due: Vec<u64> = self.outputs.iter().filter(|(_, (_, _, _, d))| *d <= now).map(|(k, _)| *k).collect();
        for k in due {
            if let Some((agent, _, reply, _)) = self.outputs.remove(&k) {
                let _ = reply.send(Err(Error::unavailable(format!(
                    "agent {agent} did not send the task's output within {OUTPUT_WAIT:?}; retry"
                ))));
            }
        }
    }
}

/// How long a running task's agent has to send its output.
const OUTPUT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Output requests waiting for agents at once.
const MAX_PENDING_OUTPUTS: usize = 1024;
/// Most output bytes one request returns.
pub(crate) const MAX_OUTPUT_CHUNK: u32 = 1 << 20;
