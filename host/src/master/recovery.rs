//! Recovery: the master's state rebuilt from the registry after a restart,
//! agents reconciled as they come back, and the deadlines of what did not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmos_allocator::Allocation;
use wasmos_model::{AgentId, OnDisconnect, Role, TaskId, TaskSpec, TaskState};

use super::Master;
use super::frameworks::{Framework, Hosted, Kind};
use super::tasks::Task;
use super::types::*;
use super::validate::take;
use crate::batch::{BatchTask, DEFAULT_MAX_ATTEMPTS};
use crate::registry::{Loaded, SubmissionRecord};

/// How long after an agent reregisters a task it did not report may still get
/// its (resent) final update before it is declared LOST.
pub(crate) const UNREPORTED_GRACE: Duration = Duration::from_secs(5);

/// Deadlines and marks that only matter while the cluster recovers.
#[derive(Default)]
pub(crate) struct Recovery {
    /// Tasks their agent did not report at reregistration: LOST at the deadline
    /// unless an update for them arrives first.
    pub unreported: HashMap<TaskId, Instant>,
    /// Agents known from the registry (or removed as silent) that have not
    /// reregistered, with the deadline for doing so.
    pub recovering: HashMap<AgentId, Instant>,
    /// Batch tasks restored from a submission record (never launched as far
    /// as the registry knows): an agent that reports one ran the previous
    /// master's unrecorded launch, which is adopted. Cleared at launch.
    pub adoptable: HashSet<TaskId>,
    /// UNREACHABLE tasks whose `--on-disconnect` is `stop-after` or
    /// `replace-after`: declared LOST at the deadline unless their agent is
    /// back first.
    pub disconnected: HashMap<TaskId, Instant>,
}

impl Recovery {
    /// LOST after the grace period unless an update arrives (an earlier
    /// deadline stays).
    pub fn unreported_after_grace(&mut self, tid: TaskId) {
        self.unreported.entry(tid).or_insert_with(|| Instant::now() + UNREPORTED_GRACE);
    }
}

impl Master {
    /// Rebuilds the in-memory state from the registry after a restart.
    pub(super) fn restore(&mut self, mut loaded: Loaded) {
        self.tokens.restore(std::mem::take(&mut loaded.tokens));
        self.ids.next = self.ids.next.max(loaded.next_id);
        for (role, s) in loaded.roles {
            if let Err(e) = self.apply_role(&role, &s) {
                eprintln!("wasmos master: registry role {role}: {e}; keeping the defaults for it");
            }
            self.roles.restore_settings(role, s);
        }
        for (key, res) in loaded.reservations {
            // Applied when the agent reregisters.
            self.roles.restore_reservation(key, res);
        }
        let now = Instant::now();
        for f in loaded.frameworks {
            if f.id == self.batch_id || self.alloc.add_framework(f.id.clone(), std::slice::from_ref(&f.role)).is_err() {
                continue;
            }
            let _ = self.alloc.deactivate_framework(&f.id);
            let kind = match f.hosted {
                Some(info) => Kind::Hosted(Hosted::new(info)),
                None => Kind::Remote,
            };
            let mut fw = Framework::new(f.name, f.role, kind, f.failover_timeout);
            fw.disconnected_at = Some(now);
            self.state.frameworks.insert(f.id, fw, false);
        }
        for job in loaded.hosted_jobs {
            let (id, fw) = (job.id.clone(), job.framework.clone());
            if !self.state.frameworks.add_job(&fw, Arc::new(job), false) {
                // Its framework is gone.
                self.state.frameworks.drop_job(id);
            }
        }
        for a in loaded.agents {
            self.recovery.recovering.insert(a.id.clone(), now + self.cfg.agent_reregister_timeout);
            if a.mode != super::agents::Mode::Active || !a.eligible {
                self.state.agents.park(a);
            }
        }
        // Open submissions: one spec each, shared by their tasks.
        let mut subs: BTreeMap<(String, u64), (Arc<TaskSpec>, SubmissionRecord)> = BTreeMap::new();
        for (sub, ended) in loaded.submissions {
            self.state.tasks.restore_submission(&sub, ended);
            let spec = Arc::new(TaskSpec { task_id: String::new(), name: sub.name.clone(), ..sub.template.clone() });
            subs.insert((sub.tag.clone(), sub.first), (spec, sub));
        }
        let submission_of = |id: &TaskId| {
            let (head, n) = id.as_str().rsplit_once('-')?;
            let (tag, n) = (head.strip_prefix("task-")?, n.parse::<u64>().ok()?);
            let (_, (spec, sub)) = subs.range(..=(tag.to_string(), n)).next_back()?;
            (sub.tag == tag && n < sub.first + sub.count as u64).then(|| spec.clone())
        };
        let mut records = loaded.tasks;
        records.sort_by_key(|r| r.view.seq);
        let mut known: HashSet<TaskId> = HashSet::new();
        for rec in records {
            let tid = rec.view.task_id.clone();
            let fw = rec.view.framework_id.clone();
            let spec = rec.spec.clone().or_else(|| submission_of(&tid)).unwrap_or_else(|| {
                // Ended, and its submission is gone: what the record says.
                Arc::new(TaskSpec {
                    name: rec.view.name.clone(),
                    module_sha256: rec.view.module_sha256.clone(),
                    resources: rec.view.resources.clone(),
                    ..Default::default()
                })
            });
            if !rec.view.state.is_terminal() {
                self.state.frameworks.add_task(&fw, &tid);
                if fw == self.batch_id {
                    let role = Role::new(rec.view.role.clone()).unwrap_or_else(|_| self.cfg.batch_role.clone());
                    let bt = BatchTask {
                        role: role.clone(),
                        resources: spec.resources.clone(),
                        priority: rec.priority,
                        constraints: rec.constraints.clone(),
                        attempts: rec.view.attempt,
                        max_attempts: if rec.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { rec.max_attempts },
                    };
                    let new = if rec.view.agent_id.is_none() {
                        self.batch.enqueue(tid.clone(), bt)
                    } else {
                        self.batch.insert_running(tid.clone(), bt)
                    };
                    if new {
                        self.batch_serves(&role);
                    }
                }
            }
            known.insert(tid.clone());
            let role = self.state.frameworks.get(&fw).map_or_else(|| self.cfg.batch_role.clone(), |f| f.role.clone());
            self.state.tasks.restore(tid, Task::restored(rec, spec, role));
        }
        // Tasks of open submissions without a record of their own are still
        // queued (or were launched and will be adopted when their agent
        // reregisters).
        // In the order they were submitted (ids count up across restarts).
        type Entry = (Arc<TaskSpec>, SubmissionRecord);
        let mut queued: Vec<(u64, TaskId, &Entry)> = Vec::new();
        for entry in subs.values() {
            for (n, id) in entry.1.task_ids() {
                if loaded.recorded.contains(&id) {
                    continue;
                }
                let Ok(tid) = TaskId::new(id) else { continue };
                if !known.contains(&tid) {
                    queued.push((n, tid, entry));
                }
            }
        }
        queued.sort_by_key(|q| q.0);
        for (n, tid, (spec, sub)) in queued {
            let max_attempts = if sub.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { sub.max_attempts };
            self.recovery.adoptable.insert(tid.clone());
            let queue = BatchTask {
                role: sub.role.clone(),
                resources: spec.resources.clone(),
                priority: sub.priority,
                constraints: sub.constraints.clone(),
                attempts: 0,
                max_attempts,
            };
            self.enqueue_batch(tid, n, spec.clone(), sub.submitted_at_ms, queue);
        }
        self.revive_batch();
        self.cycle_due = true;
    }

    /// Counts a task's resources on `agent` again and records it there (after a
    /// failover, when the agent says it runs the task). False if the allocator
    /// refuses (unknown framework, no room), which leaves the task untouched.
    fn track_on_agent(&mut self, tid: &TaskId, agent: &AgentId) -> bool {
        let Some(t) = self.state.tasks.get(tid) else { return false };
        let (fw, role) = (t.framework.clone(), t.role.clone());
        let need = t.spec.resources.clone();
        if !self.state.frameworks.contains(&fw) {
            return false;
        }
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
        self.state.place(tid, Some(agent.clone()), Some(alloc));
        true
    }

    /// After a master failover: an agent from the registry came back and said
    /// which tasks it runs. Those resume being tracked (their resources count
    /// again); the ones it no longer has are LOST; the ones the master does not
    /// know (or has given up on) are killed.
    pub(super) fn reconcile_agent(&mut self, id: &AgentId, running: &[(TaskId, TaskState, u32)]) {
        // A report of an older run than the master's (given up while the
        // agent was away) is not the task's: that run is killed below.
        let current = |t: &TaskId, attempt: u32| {
            attempt == 0 || self.state.tasks.get(t).is_none_or(|k| k.attempt == 0 || k.attempt == attempt)
        };
        let reported: HashMap<&TaskId, TaskState> =
            running.iter().filter(|(t, _, a)| current(t, *a)).map(|(t, s, _)| (t, *s)).collect();
        for tid in self.state.tasks.live_on(id) {
            if let Some(now) = reported.get(&tid) {
                let (fw, was) = self.state.tasks.get(&tid).map(|t| (t.framework.clone(), t.state())).expect("listed");
                if !self.track_on_agent(&tid, id) {
                    self.state.place(&tid, Some(id.clone()), None);
                }
                // RUNNING and PAUSED are not written to the registry: the
                // agent's report is where the master learns them again.
                use TaskState::*;
                let relearn =
                    matches!(was, Staging | Starting | Running | Paused) && matches!(now, Starting | Running | Paused);
                if relearn {
                    match self.state.tasks.set_state(&tid, *now) {
                        Ok(()) => self.state.tasks.relearned_running(&tid, id),
                        Err(m) => {
                            self.metrics.illegal_moves += 1;
                            eprintln!("wasmos master: task {tid} cannot move from {} to {}", m.from, m.to);
                        }
                    }
                }
                self.recovery.disconnected.remove(&tid);
                if self.state.tasks.get(&tid).is_some_and(|t| t.state() == TaskState::Unreachable) {
                    let st = TaskStatus::master(
                        &tid,
                        &fw,
                        Some(id),
                        TaskState::Running,
                        "agent_reregistered",
                        format!("agent {id} is back"),
                    );
                    self.apply_status(st, false);
                }
            } else {
                // Not running there: its final update may still be on its way
                // (resent after the failover), so it is declared LOST only if
                // nothing arrives within the grace period.
                self.recovery.unreported.insert(tid, Instant::now() + UNREPORTED_GRACE);
            }
        }
        for (tid, _, attempt) in running {
            // Launched just before the restart but recorded as still queued:
            // adopt it. Only tasks the registry has as never launched qualify;
            // one that was LOST and queued again runs here as a given-up
            // attempt and is killed below.
            let adoptable =
                self.recovery.adoptable.contains(tid) && self.state.tasks.get(tid).is_some_and(|k| k.is_queued());
            if adoptable && self.track_on_agent(tid, id) {
                self.recovery.adoptable.remove(tid);
                self.batch.take(tid);
                match self.state.tasks.set_state(tid, TaskState::Running) {
                    Ok(()) => self.state.tasks.relearned_running(tid, id),
                    Err(m) => {
                        self.metrics.illegal_moves += 1;
                        eprintln!("wasmos master: task {tid} cannot move from {} to {}", m.from, m.to);
                    }
                }
                continue;
            }
            if !self.state.tasks.runs_there(tid, id, *attempt) {
                self.effects.send_agent(id, AgentCommand::KillAttempt(tid.clone(), *attempt));
            }
        }
    }

    /// Tasks an agent did not report at reregistration and that got no update since.
    pub(super) fn expire_unreported(&mut self) {
        let now = Instant::now();
        let due: Vec<TaskId> =
            self.recovery.unreported.iter().filter(|(_, d)| **d <= now).map(|(k, _)| k.clone()).collect();
        for tid in due {
            self.recovery.unreported.remove(&tid);
            let Some(t) = self.state.tasks.get(&tid) else { continue };
            if t.state().is_terminal() {
                continue;
            }
            let (fw, agent) = (t.framework.clone(), t.agent().cloned());
            let st = TaskStatus::master(
                &tid,
                &fw,
                agent.as_ref(),
                TaskState::Lost,
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
    pub(super) fn expire_recovering(&mut self) {
        let now = Instant::now();
        let expired: Vec<AgentId> =
            self.recovery.recovering.iter().filter(|(_, d)| **d <= now).map(|(k, _)| k.clone()).collect();
        for id in expired {
            self.recovery.recovering.remove(&id);
            for tid in self.state.tasks.live_on(&id) {
                let Some(t) = self.state.tasks.get(&tid) else { continue };
                // `--on-disconnect keep` waits for the agent however long;
                // stop-after and replace-after have their own deadlines.
                if t.state() == TaskState::Unreachable && t.spec.on_disconnect != OnDisconnect::Default {
                    continue;
                }
                let fw = t.framework.clone();
                let state = if t.state() == TaskState::Unreachable { TaskState::Gone } else { TaskState::Lost };
                let st = TaskStatus::master(
                    &tid,
                    &fw,
                    Some(&id),
                    state,
                    "agent_gone",
                    format!("agent {id} did not reregister within {:?}", self.cfg.agent_reregister_timeout),
                );
                self.apply_status(st, false);
            }
            self.state.agents.touch(&id);
        }
    }

    /// UNREACHABLE tasks past their `stop-after`/`replace-after` deadline:
    /// LOST (a batch task is then retried elsewhere).
    pub(super) fn expire_disconnected(&mut self) {
        let now = Instant::now();
        let due: Vec<TaskId> =
            self.recovery.disconnected.iter().filter(|(_, d)| **d <= now).map(|(k, _)| k.clone()).collect();
        for tid in due {
            self.recovery.disconnected.remove(&tid);
            let Some(t) = self.state.tasks.get(&tid) else { continue };
            if t.state() != TaskState::Unreachable {
                continue;
            }
            let (fw, agent, policy) = (t.framework.clone(), t.agent().cloned(), t.spec.on_disconnect.clone());
            let (reason, what) = match policy {
                OnDisconnect::StopAfter(_) => ("stopped_on_disconnect", "its agent stopped it"),
                _ => ("replaced_on_disconnect", "a replacement may run; the original is killed if its agent returns"),
            };
            let st = TaskStatus::master(
                &tid,
                &fw,
                agent.as_ref(),
                TaskState::Lost,
                reason,
                format!("its agent was cut off past --on-disconnect {policy}: {what}"),
            );
            self.apply_status(st, false);
        }
    }
}
