//! Maintenance: draining an agent (Mesos's DRAIN_AGENT, Nomad's node drain)
//! and its eligibility for offers.
//!
//! A draining agent gets no offers (its outstanding ones are rescinded), and
//! the frameworks with tasks there are told once (`Event::Drain`, a
//! simplified inverse offer) so they can move them. Its tasks run until the
//! deadline; then the rest are killed, and batch tasks go back to the queue
//! without the attempt counting. Once nothing holds resources there it is
//! DRAINED; `mark_gone` then removes it for good (its identity is revoked).
//! Mode and eligibility are kept in the agent's registry record, so a drain
//! survives a master restart.

use std::collections::BTreeMap;
use std::time::Duration;

use wasmos_model::{AgentId, FrameworkId, TaskId, TaskState};

use super::Master;
use super::agents::Mode;
use super::cmd::Error;
use super::frameworks::Kind;
use super::types::{AgentCommand, AgentView, Event, now_ms};

/// The reason tasks killed at a drain's deadline end with.
pub(crate) const DRAIN_REASON: &str = "agent_drained";

impl Master {
    fn maintained(&mut self, id: &AgentId) -> Result<&mut super::agents::Agent, Error> {
        if !self.state.agents.contains(id) {
            return Err(if let Some(r) = self.state.agents.parked(id) {
                Error::unavailable(format!(
                    "agent {id} is not connected; it stays {} until it comes back (undrain, eligibility and, once drained, mark-gone work meanwhile)",
                    if r.eligible { r.mode.as_str() } else { "ineligible" }
                ))
            } else if self.recovery.recovering.contains_key(id) {
                Error::unavailable(format!(
                    "agent {id} has not reregistered since it went silent or the master restarted; try again once `wasmos agents` lists it"
                ))
            } else {
                Error::not_found(format!("no agent {id}; list them with `wasmos agents`"))
            });
        }
        Ok(self.state.agents.get_mut(id).expect("checked"))
    }

    /// `wasmos agent drain`: `deadline` from now (none: no deadline);
    /// `force`: the deadline is now. Draining again sets a new deadline.
    pub(super) fn drain_agent(
        &mut self,
        id: &AgentId,
        deadline: Option<Duration>,
        force: bool,
        migrate: bool,
    ) -> Result<AgentView, Error> {
        let now = now_ms();
        let deadline_ms = if force {
            Some(now)
        } else {
            deadline.map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        };
        let a = self.maintained(id)?;
        if a.mode == Mode::Drained && !force {
            return self.agent_view(id).ok_or_else(|| Error::internal("agent vanished"));
        }
        a.mode = Mode::Draining { deadline_ms, migrate };
        self.state.agents.touch(id);
        let _ = self.alloc.deactivate_agent(id);
        for o in self.state.offers.on_agent(id) {
            self.rescind(&o);
        }
        let when = deadline_ms.map_or("no deadline".to_string(), |d| {
            format!("deadline in {:?}", Duration::from_millis((d - now).max(0) as u64))
        });
        eprintln!("wasmos master: draining agent {id} ({when})");
        self.tell_frameworks_of_drain(id, deadline_ms);
        self.check_drain(id);
        self.agent_view(id).ok_or_else(|| Error::internal("agent vanished"))
    }

    /// Tells each framework (but batch, which lets its tasks run) with tasks
    /// on the agent which of them must move, and by when.
    fn tell_frameworks_of_drain(&mut self, id: &AgentId, deadline_ms: Option<i64>) {
        for (fw, tasks) in self.drain_notices(id) {
            self.send_drain(&fw, Event::Drain { agent_id: id.clone(), deadline_ms, tasks });
        }
    }

    /// The tasks on an agent by framework (but batch), in id order.
    fn drain_notices(&self, id: &AgentId) -> BTreeMap<FrameworkId, Vec<TaskId>> {
        let mut by_fw: BTreeMap<FrameworkId, Vec<TaskId>> = BTreeMap::new();
        let Some(a) = self.state.agents.get(id) else { return by_fw };
        for t in a.tasks() {
            if let Some(task) = self.state.tasks.get(t)
                && task.framework != self.batch_id
            {
                by_fw.entry(task.framework.clone()).or_default().push(t.clone());
            }
        }
        by_fw.values_mut().for_each(|v| v.sort());
        by_fw
    }

    fn send_drain(&mut self, fw: &FrameworkId, ev: Event) {
        if let Some(f) = self.state.frameworks.get_mut(fw)
            && matches!(f.kind, Kind::Remote | Kind::Hosted(_))
        {
            f.send(ev);
        }
    }

    /// A maintenance command on an agent that is not registered but parked
    /// (drained, then switched off): its record changes, and applies when it
    /// registers again. `None`: it is not parked.
    fn on_parked(&mut self, id: &AgentId, change: impl FnOnce(&mut crate::registry::AgentRecord)) -> Option<AgentView> {
        let mut rec = self.state.agents.unpark(id)?;
        change(&mut rec);
        let view = AgentView::idle(id, &rec.info, rec.registered_at_ms, rec.mode, rec.eligible);
        if rec.mode != Mode::Active || !rec.eligible {
            self.state.agents.park(rec);
        }
        Some(view)
    }

    /// A framework that fails over (or a hosted one after a master restart)
    /// hears again of every drain its tasks are in.
    pub(super) fn retell_drains(&mut self, fw: &FrameworkId) {
        let draining: Vec<(AgentId, Option<i64>)> = self
            .state
            .agents
            .iter()
            .filter_map(|(id, a)| match a.mode {
                Mode::Draining { deadline_ms, .. } => Some((id.clone(), deadline_ms)),
                _ => None,
            })
            .collect();
        for (agent_id, deadline_ms) in draining {
            if let Some(tasks) = self.drain_notices(&agent_id).remove(fw) {
                self.send_drain(fw, Event::Drain { agent_id, deadline_ms, tasks });
            }
        }
    }

    /// `wasmos agent undrain`: active again (offers resume if eligible).
    pub(super) fn undrain_agent(&mut self, id: &AgentId) -> Result<AgentView, Error> {
        if !self.state.agents.contains(id)
            && let Some(v) = self.on_parked(id, |r| r.mode = Mode::Active)
        {
            return Ok(v);
        }
        let a = self.maintained(id)?;
        a.mode = Mode::Active;
        let offerable = a.offerable();
        self.state.agents.touch(id);
        // Kills and captures already sent stand: their ends requeue as usual.
        if offerable {
            let _ = self.alloc.activate_agent(id);
            self.cycle_due = true;
        }
        eprintln!("wasmos master: agent {id} undrained");
        self.agent_view(id).ok_or_else(|| Error::internal("agent vanished"))
    }

    /// `wasmos agent eligibility ID on|off`: an ineligible agent gets no new
    /// offers (outstanding ones are rescinded); its tasks go on running.
    pub(super) fn set_eligibility(&mut self, id: &AgentId, eligible: bool) -> Result<AgentView, Error> {
        if !self.state.agents.contains(id)
            && let Some(v) = self.on_parked(id, |r| r.eligible = eligible)
        {
            return Ok(v);
        }
        let a = self.maintained(id)?;
        a.eligible = eligible;
        let offerable = a.offerable();
        self.state.agents.touch(id);
        if offerable {
            let _ = self.alloc.activate_agent(id);
            self.cycle_due = true;
        } else {
            let _ = self.alloc.deactivate_agent(id);
            for o in self.state.offers.on_agent(id) {
                self.rescind(&o);
            }
        }
        self.agent_view(id).ok_or_else(|| Error::internal("agent vanished"))
    }

    /// `wasmos agent drain --mark-gone`: a drained agent leaves for good;
    /// its identity is revoked, so it can never come back under its id.
    pub(super) fn mark_gone(&mut self, id: &AgentId) -> Result<AgentView, Error> {
        // Drained and switched off: gone without coming back first.
        if !self.state.agents.contains(id) && self.state.agents.parked(id).is_some_and(|r| r.mode == Mode::Drained) {
            let view = self.on_parked(id, |_| {}).expect("parked");
            let _ = self.revoke_token(&format!("agent@{id}"));
            self.recovery.recovering.remove(id);
            self.state.agents.unpark(id);
            eprintln!("wasmos master: agent {id} marked gone");
            return Ok(AgentView { status: "gone", ..view });
        }
        let a = self.maintained(id)?;
        if a.mode != Mode::Drained {
            return Err(Error::precondition(format!(
                "agent {id} is {}, not drained; drain it first (`wasmos agent drain {id}`), then mark it gone",
                a.mode.as_str()
            )));
        }
        let view = self.agent_view(id).ok_or_else(|| Error::internal("agent vanished"))?;
        let row = format!("agent@{id}");
        match self.revoke_token(&row) {
            Ok(()) => {}
            // An agent without an identity row (joined before identities
            // were recorded): removed all the same.
            Err(_) => self.remove_agent(id, "agent_gone", format!("agent {id} was marked gone")),
        }
        self.recovery.recovering.remove(id);
        self.state.agents.unpark(id);
        self.state.agents.touch(id);
        eprintln!("wasmos master: agent {id} marked gone");
        Ok(AgentView { status: "gone", ..view })
    }

    /// Every draining agent: DRAINED once nothing holds resources there;
    /// past its deadline, what still runs is killed.
    pub(super) fn check_drains(&mut self) {
        let draining: Vec<AgentId> = self
            .state
            .agents
            .iter()
            .filter(|(_, a)| matches!(a.mode, Mode::Draining { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in draining {
            self.check_drain(&id);
        }
    }

    fn check_drain(&mut self, id: &AgentId) {
        let Some(a) = self.state.agents.get(id) else { return };
        let Mode::Draining { deadline_ms, migrate } = a.mode else { return };
        if a.task_count() == 0 {
            let a = self.state.agents.get_mut(id).expect("present");
            a.mode = Mode::Drained;
            self.state.agents.touch(id);
            eprintln!("wasmos master: agent {id} is drained");
            return;
        }
        if migrate {
            // Migratable batch tasks are captured at their next safe point
            // (a heartbeat) and resumed elsewhere; others run to the deadline.
            let running: Vec<TaskId> = a
                .tasks()
                .filter(|t| !self.captures.contains_key(*t))
                .filter(|t| {
                    self.state.tasks.get(t).is_some_and(|k| {
                        k.spec.migratable && k.framework == self.batch_id && k.state() == TaskState::Running
                    })
                })
                .cloned()
                .collect();
            for tid in running {
                self.captures.insert(tid.clone(), id.clone());
                self.state.tasks.log(
                    &tid,
                    TaskState::Running,
                    "capture_requested",
                    format!("agent {id} drains with migrate"),
                );
                self.effects.send_agent(id, AgentCommand::Capture(tid));
            }
        }
        if deadline_ms.is_none_or(|d| now_ms() < d) {
            return;
        }
        let tasks: Vec<TaskId> = a.tasks().cloned().collect();
        for tid in tasks {
            if self.drain_kills.contains_key(&tid) {
                continue;
            }
            let Some(t) = self.state.tasks.get(&tid) else { continue };
            // Ended, or killed by someone else (that kill is not the drain's).
            if t.state().is_terminal() || t.state() == TaskState::Killing {
                continue;
            }
            self.drain_kills.insert(tid.clone(), id.clone());
            if t.state() != TaskState::Killing && self.state.tasks.set_state(&tid, TaskState::Killing).is_ok() {
                let why = format!("agent {id} reached its drain deadline");
                self.state.tasks.log(&tid, TaskState::Killing, DRAIN_REASON, why);
            }
            self.effects.send_agent(id, AgentCommand::Kill(tid));
        }
    }

    /// A batch task killed at its agent's drain deadline goes back to the
    /// queue, this run not counted against its attempts. Returns whether it
    /// was requeued.
    pub(super) fn requeue_drained(&mut self, tid: &TaskId) -> bool {
        let Some(b) = self.batch.tasks.get_mut(tid) else { return false };
        b.attempts = b.attempts.saturating_sub(1);
        self.state.tasks.unlaunch(tid);
        let why = if self.state.tasks.resumes(tid) {
            "captured on its draining agent; queued to resume elsewhere (the attempt does not count)"
        } else {
            "its agent was drained; queued again (the attempt does not count)"
        };
        self.state.tasks.requeue(tid, why.into());
        self.batch.requeue(tid);
        self.revive_batch();
        true
    }
}
