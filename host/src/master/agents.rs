//! The agent table, and what agents do: register, attach their command
//! stream, heartbeat, send status updates, go silent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use wasmos_model::{AgentId, OnDisconnect, TaskId, TaskState};

use super::Master;
use super::cmd::{CommandTx, Error};
use super::types::*;

/// What an agent is doing for the cluster (see `maintenance.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    #[default]
    Active,
    /// No offers; its tasks run until the deadline (unix ms), when the rest
    /// are killed.
    Draining { deadline_ms: Option<i64>, migrate: bool },
    /// Drained: nothing runs there and nothing will until undrained.
    Drained,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Draining { .. } => "draining",
            Mode::Drained => "drained",
        }
    }
    /// A stored mode (an unknown one is active).
    pub fn parse(s: &str, deadline_ms: i64, migrate: bool) -> Mode {
        match s {
            "draining" => Mode::Draining { deadline_ms: (deadline_ms > 0).then_some(deadline_ms), migrate },
            "drained" => Mode::Drained,
            _ => Mode::Active,
        }
    }
    pub fn deadline_ms(self) -> Option<i64> {
        match self {
            Mode::Draining { deadline_ms, .. } => deadline_ms,
            _ => None,
        }
    }
    pub fn migrates(self) -> bool {
        matches!(self, Mode::Draining { migrate: true, .. })
    }
}

pub(crate) struct Agent {
    pub info: AgentInfo,
    /// `info.attributes` as constraints match them.
    pub attributes: BTreeMap<String, String>,
    pub tx: Option<CommandTx>,
    pub last_seen: Instant,
    pub registered_at_ms: i64,
    pub mode: Mode,
    /// Receives offers (when active): `wasmos agent eligibility ID on|off`.
    pub eligible: bool,
    /// Tasks placed here that hold resources (see [`super::State::place`]).
    tasks: HashSet<TaskId>,
    /// Commands waiting for the agent's command stream to attach.
    pending: Vec<AgentCommand>,
    /// What it reported with its latest heartbeat.
    pub stats: crate::metrics::AgentStats,
}

impl Agent {
    pub fn new(info: AgentInfo) -> Agent {
        Agent {
            attributes: info.attribute_map(),
            info,
            tx: None,
            last_seen: Instant::now(),
            registered_at_ms: now_ms(),
            mode: Mode::Active,
            eligible: true,
            tasks: HashSet::new(),
            pending: Vec::new(),
            stats: Default::default(),
        }
    }
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
    /// The tasks placed here that hold resources (not ended).
    pub fn tasks(&self) -> impl Iterator<Item = &TaskId> + '_ {
        self.tasks.iter()
    }
    /// Whether the allocator may offer its resources.
    pub fn offerable(&self) -> bool {
        self.eligible && self.mode == Mode::Active
    }

    /// Sends a command now, or keeps it until the command stream attaches.
    pub fn deliver(&mut self, cmd: AgentCommand) {
        match &self.tx {
            Some(tx) if tx.send(cmd.clone()).is_ok() => {}
            _ => {
                self.tx = None;
                self.pending.push(cmd);
            }
        }
    }
}

/// Registered agents by id, and which changed since the last commit.
#[derive(Default)]
pub(crate) struct Agents {
    map: HashMap<AgentId, Agent>,
    changed: HashSet<AgentId>,
    /// Agents not registered now whose mode or eligibility must outlive
    /// them (drained and switched off for maintenance, ineligible): their
    /// records stay in the registry and apply when they register again.
    parked: HashMap<AgentId, crate::registry::AgentRecord>,
}

impl Agents {
    pub fn get(&self, id: &AgentId) -> Option<&Agent> {
        self.map.get(id)
    }
    pub fn get_mut(&mut self, id: &AgentId) -> Option<&mut Agent> {
        self.map.get_mut(id)
    }
    pub fn contains(&self, id: &AgentId) -> bool {
        self.map.contains_key(id)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&AgentId, &Agent)> + '_ {
        self.map.iter()
    }
    pub fn insert(&mut self, id: AgentId, a: Agent) {
        self.changed.insert(id.clone());
        self.parked.remove(&id);
        self.map.insert(id, a);
    }
    /// Removes a silent agent (its record stays until it expires, or for
    /// good while it is not plain active: it is parked).
    pub fn remove(&mut self, id: &AgentId) -> Option<Agent> {
        self.changed.insert(id.clone());
        let a = self.map.remove(id)?;
        if !a.offerable() {
            self.park(crate::registry::AgentRecord {
                id: id.clone(),
                info: a.info.clone(),
                registered_at_ms: a.registered_at_ms,
                mode: a.mode,
                eligible: a.eligible,
            });
        }
        Some(a)
    }
    /// Keeps the record of an agent that is not registered (see `parked`).
    pub fn park(&mut self, rec: crate::registry::AgentRecord) {
        self.parked.insert(rec.id.clone(), rec);
    }
    pub fn parked(&self, id: &AgentId) -> Option<&crate::registry::AgentRecord> {
        self.parked.get(id)
    }
    /// Forgets a parked record (the agent registers, or is active again, or
    /// gone): its registry record goes with the next commit unless the
    /// agent is in the table.
    pub fn unpark(&mut self, id: &AgentId) -> Option<crate::registry::AgentRecord> {
        self.changed.insert(id.clone());
        self.parked.remove(id)
    }
    /// Marks an agent's record to be written again (or dropped, if the agent
    /// is not in the table).
    pub fn touch(&mut self, id: &AgentId) {
        self.changed.insert(id.clone());
    }
    pub(super) fn add_task(&mut self, id: &AgentId, t: &TaskId) {
        if let Some(a) = self.map.get_mut(id) {
            a.tasks.insert(t.clone());
        }
    }
    pub(super) fn remove_task(&mut self, id: &AgentId, t: &TaskId) {
        if let Some(a) = self.map.get_mut(id) {
            a.tasks.remove(t);
        }
    }
    pub fn take_changed(&mut self) -> Vec<AgentId> {
        self.changed.drain().collect()
    }
}

impl Master {
    pub(super) fn register_agent(&mut self, req: RegisterAgent) -> Result<Registered, Error> {
        super::validate::register_agent(&req.info)?;
        let registered =
            |id: AgentId, m: &Master| Registered { agent_id: id, heartbeat_interval: m.cfg.agent_heartbeat_interval };
        let id = match req.agent_id {
            Some(id) => id,
            None => AgentId::new(self.ids.fresh("agent")).expect("valid id"),
        };
        if let Some(existing) = self.state.agents.get_mut(&id) {
            // Reregistration of a known agent (e.g. its stream broke): tasks it
            // runs that are no longer its own are killed.
            existing.last_seen = Instant::now();
            existing.attributes = req.info.attribute_map();
            existing.info = req.info;
            let stray: Vec<(TaskId, u32)> = req
                .running
                .iter()
                .filter(|(t, _, attempt)| !self.state.tasks.runs_there(t, &id, *attempt))
                .map(|(t, _, attempt)| (t.clone(), *attempt))
                .collect();
            for (t, attempt) in stray {
                self.effects.send_agent(&id, AgentCommand::KillAttempt(t, attempt));
            }
            // Tasks the master has there that the agent no longer knows (it
            // restarted without its checkpoint): LOST after the grace period,
            // unless their final update arrives first.
            let reported: HashSet<&TaskId> = req
                .running
                .iter()
                .filter(|(t, _, attempt)| self.state.tasks.runs_there(t, &id, *attempt))
                .map(|(t, _, _)| t)
                .collect();
            for tid in self.state.tasks.live_on(&id) {
                if !reported.contains(&tid) {
                    self.recovery.unreported_after_grace(tid);
                }
            }
            return Ok(registered(id, self));
        }
        let mut ainfo = wasmos_allocator::AgentInfo::new(req.info.resources.clone());
        ainfo.attributes = req.info.attribute_map();
        self.alloc.add_agent(id.clone(), ainfo).map_err(|e| Error::invalid(e.to_string()))?;
        self.apply_reservations(&id);
        let mut agent = Agent::new(req.info);
        // A drain or eligibility set before a master restart or before the
        // agent went silent holds.
        if let Some(rec) = self.state.agents.unpark(&id) {
            agent.mode = rec.mode;
            agent.eligible = rec.eligible;
            if !agent.offerable() {
                let _ = self.alloc.deactivate_agent(&id);
            }
        }
        let view = AgentView::idle(&id, &agent.info, agent.registered_at_ms, agent.mode, agent.eligible);
        self.state.agents.insert(id.clone(), agent);
        self.effects.publish(WatchEvent::AgentAdded(view));
        self.cycle_due = true;
        self.recovery.recovering.remove(&id);
        self.reconcile_agent(&id, &req.running);
        Ok(registered(id, self))
    }

    pub(super) fn attach_agent(&mut self, id: &AgentId, tx: CommandTx) -> Result<(), Error> {
        let agent = self
            .state
            .agents
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("unknown agent {:?}; register first", id.as_str())))?;
        for cmd in agent.pending.drain(..) {
            let _ = tx.send(cmd);
        }
        agent.tx = Some(tx);
        agent.last_seen = Instant::now();
        Ok(())
    }

    pub(super) fn agent_heartbeat(&mut self, id: &AgentId, mut stats: crate::metrics::AgentStats) -> Result<(), Error> {
        match self.state.agents.get_mut(id) {
            Some(a) => {
                a.last_seen = Instant::now();
                let usage = std::mem::take(&mut stats.usage);
                a.stats = stats;
                for (task, fuel, mem, cpu_ns) in usage {
                    // Only a task the master has on this agent.
                    if let Ok(tid) = TaskId::new(task)
                        && self.state.tasks.get(&tid).is_some_and(|t| t.agent() == Some(id))
                    {
                        self.state.tasks.note_usage(&tid, fuel, mem, cpu_ns);
                    }
                }
                Ok(())
            }
            None => Err(unknown_agent(id)),
        }
    }

    pub(super) fn agent_updates(&mut self, agent: AgentId, updates: Vec<TaskStatus>) -> Result<(), Error> {
        match self.state.agents.get_mut(&agent) {
            Some(a) => a.last_seen = Instant::now(),
            None => return Err(unknown_agent(&agent)),
        }
        for mut st in updates {
            st.agent_id = Some(agent.clone());
            self.apply_status(st, true);
        }
        Ok(())
    }

    /// Agents silent for longer than `agent_timeout` are removed; their tasks
    /// are LOST (and batch tasks retried).
    pub(super) fn check_agents(&mut self) {
        let timeout = self.cfg.agent_timeout;
        let dead: Vec<AgentId> = self
            .state
            .agents
            .iter()
            .filter(|(_, a)| a.last_seen.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            self.remove_agent(&id, "agent_lost", format!("agent {id} missed heartbeats for {timeout:?}"));
        }
    }

    /// An agent stopped answering: its resources leave the pool and its
    /// offers are rescinded. Its batch tasks are LOST (and retried at once);
    /// other frameworks' tasks become UNREACHABLE: if the agent reregisters
    /// within `agent_reregister_timeout` they resume being tracked, otherwise
    /// they are GONE.
    pub(super) fn remove_agent(&mut self, id: &AgentId, reason: &str, message: String) {
        for o in self.state.offers.on_agent(id) {
            self.rescind(&o);
        }
        let Some(agent) = self.state.agents.remove(id) else { return };
        for t in agent.tasks {
            // The agent's resources leave with it.
            let Some(task) = self.state.tasks.get(&t) else { continue };
            let fw = task.framework.clone();
            let policy = task.spec.on_disconnect.clone();
            self.state.place(&t, Some(id.clone()), None);
            let state = match policy {
                OnDisconnect::Default | OnDisconnect::Invalid(_) if fw == self.batch_id => TaskState::Lost,
                _ => TaskState::Unreachable,
            };
            if let OnDisconnect::StopAfter(d) | OnDisconnect::ReplaceAfter(d) = policy {
                // Counted from the agent's last word, as the agent counts its
                // own stop-after, which starts a heartbeat and a second later
                // (never before it stops the task: never two copies).
                let at = (agent.last_seen + d + self.cfg.agent_heartbeat_interval + STOP_MARGIN).max(Instant::now());
                self.recovery.disconnected.insert(t.clone(), at);
            }
            let st = TaskStatus::master(&t, &fw, Some(id), state, reason, message.clone());
            self.apply_status(st, false);
        }
        let _ = self.alloc.remove_agent(id);
        self.recovery.recovering.insert(id.clone(), Instant::now() + self.cfg.agent_reregister_timeout);
        self.effects.publish(WatchEvent::AgentRemoved(id.clone()));
        self.cycle_due = true;
    }
}

/// Past an agent's own stop-after grace (`wasmos_agent`'s CUT_OFF_GRACE, 1 s),
/// how much later the master declares a `stop-after` task LOST.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

fn unknown_agent(id: &AgentId) -> Error {
    Error::not_found(format!("unknown agent {:?}; register again", id.as_str()))
}
