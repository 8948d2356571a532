//! The offer table, and the path from an allocation cycle to launches:
//! offers are made, accepted (validated by [`super::validate::accept`], then
//! applied here), declined or rescinded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmos_allocator::Allocation;
use wasmos_model::{AgentId, FrameworkId, OfferId, Role, TaskId, TaskSpec, TaskState};

use super::Master;
use super::tasks::Task;
use super::types::*;
use super::validate::{AcceptPlan, Step};

/// An outstanding offer: which framework holds what of which agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OfferRec {
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub role: Role,
    pub allocation: Allocation,
}

/// Outstanding offers by id (the frameworks' rows index them too; see
/// [`super::State::add_offer`]).
#[derive(Default)]
pub(crate) struct Offers {
    map: HashMap<OfferId, OfferRec>,
}

impl Offers {
    pub fn get(&self, id: &OfferId) -> Option<&OfferRec> {
        self.map.get(id)
    }
    /// The offers of `agent`'s resources.
    pub fn on_agent(&self, agent: &AgentId) -> Vec<OfferId> {
        self.map.iter().filter(|(_, o)| &o.agent == agent).map(|(k, _)| k.clone()).collect()
    }
    pub fn iter(&self) -> impl Iterator<Item = &OfferRec> + '_ {
        self.map.values()
    }
    pub(super) fn insert(&mut self, id: OfferId, rec: OfferRec) {
        self.map.insert(id, rec);
    }
    pub(super) fn remove(&mut self, id: &OfferId) -> Option<OfferRec> {
        self.map.remove(id)
    }
}

impl Master {
    /// One allocation cycle: the allocator's offers go to their frameworks
    /// (the batch framework answers at once).
    pub(super) fn allocate(&mut self) {
        let now = self.clock();
        let t0 = std::time::Instant::now();
        let offers = self.alloc.allocate(now);
        self.metrics.cycles += 1;
        self.metrics.prom.offers_sent.inc_by(offers.len() as u64);
        let mut remote: HashMap<FrameworkId, Vec<Offer>> = HashMap::new();
        let mut batch_offers = Vec::new();
        for o in offers {
            let id = OfferId::new(self.ids.offer()).expect("valid id");
            let agent = self.state.agents.get(&o.agent);
            let offer = Offer {
                offer_id: id.clone(),
                framework_id: o.framework.clone(),
                agent_id: o.agent.clone(),
                hostname: agent.map(|a| a.info.hostname.clone()).unwrap_or_default(),
                resources: o.resources.total(),
                attributes: agent.map(|a| a.info.attributes.clone()).unwrap_or_default(),
            };
            let fw = o.framework.clone();
            self.state.add_offer(
                id.clone(),
                OfferRec { framework: o.framework, agent: o.agent, role: o.role, allocation: o.resources },
            );
            if fw == self.batch_id {
                batch_offers.push(id);
            } else {
                remote.entry(fw).or_default().push(offer);
            }
        }
        for (fw, offers) in remote {
            let ids: Vec<OfferId> = offers.iter().map(|o| o.offer_id.clone()).collect();
            let sent = self.state.frameworks.get_mut(&fw).is_some_and(|f| f.send(Event::Offers(offers)));
            if !sent {
                for id in ids {
                    self.recover_offer(&id, None);
                }
                self.disconnected(&fw);
            }
        }
        if !batch_offers.is_empty() {
            self.batch_offers(batch_offers);
        }
        let took = t0.elapsed();
        self.metrics.last_cycle = took;
        self.metrics.cycle_time += took;
        self.metrics.prom.allocation_cycle.observe(took.as_secs_f64());
    }

    /// The batch framework's turn: queued tasks that fit are launched on each
    /// offer; the rest of it is declined for `batch_refuse`.
    fn batch_offers(&mut self, offers: Vec<OfferId>) {
        for id in offers {
            let Some(o) = self.state.offers.get(&id) else { continue };
            let free = o.allocation.total();
            let attrs = self.state.agents.get(&o.agent).map(|a| a.attributes.clone()).unwrap_or_default();
            let picked = self.batch.pick(&o.role, &free, &attrs);
            if picked.is_empty() {
                self.metrics.prom.offers_declined.inc();
                self.recover_offer(&id, Some(self.cfg.batch_refuse));
                continue;
            }
            let specs: Vec<Launch> = picked
                .iter()
                .filter_map(|t| {
                    if let Some(b) = self.batch.tasks.get_mut(t) {
                        b.attempts += 1;
                    }
                    self.state.tasks.next_attempt(t)
                })
                .collect();
            let batch_id = self.batch_id.clone();
            self.accept(&batch_id, &[id], specs, Some(self.cfg.batch_refuse));
        }
        self.suppress_batch();
    }

    /// ACCEPT (Mesos v1 semantics): validated against live state, then
    /// applied. Stale or foreign offers drop every task; each task is
    /// checked on its own.
    pub(super) fn accept(
        &mut self,
        fw: &FrameworkId,
        offers: &[OfferId],
        launch: Vec<Launch>,
        refuse: Option<Duration>,
    ) {
        let plan = {
            let (artifacts, roles) = (&self.artifacts, &mut self.roles);
            super::validate::accept(
                &self.state,
                &self.batch_id,
                fw,
                offers,
                launch,
                |sha| artifacts.size(sha).is_some(),
                |role, sha, sig| roles.launch_signed(role, sha, sig),
            )
        };
        self.apply_accept(fw, plan, refuse);
    }

    fn apply_accept(&mut self, fw: &FrameworkId, plan: AcceptPlan, refuse: Option<Duration>) {
        let Some(target) = plan.target else {
            for o in &plan.recover {
                self.recover_offer(o, None);
            }
            for step in plan.steps {
                if let Step::Refuse { task_id, spec, state, reason, message, record } = step {
                    self.refuse_task(fw, task_id, spec, state, reason, message, record);
                }
            }
            return;
        };
        for o in &plan.recover {
            self.state.take_offer(o);
        }
        self.metrics.prom.offers_accepted.inc_by(plan.recover.len() as u64);
        let mut launch = Vec::new();
        for step in plan.steps {
            match step {
                Step::Refuse { task_id, spec, state, reason, message, record } => {
                    self.refuse_task(fw, task_id, spec, state, reason, message, record)
                }
                Step::Launch { id, spec, allocation, queued } => {
                    if !queued {
                        // New here (another framework's task): recorded now.
                        // A framework that counts its own retries may say
                        // which attempt this is; otherwise it is the first.
                        let mut task = Task::new(fw.clone(), target.role.clone(), spec.clone(), now_ms());
                        task.attempt = spec.attempt.max(1);
                        let seq = self.ids.bump();
                        self.state.tasks.insert(id.clone(), task, seq, true);
                    }
                    let attempt = self.state.tasks.get(&id).map(|t| t.attempt).unwrap_or(1);
                    self.state.place(&id, Some(target.agent.clone()), Some(allocation));
                    self.state.tasks.launched(&id, attempt);
                    self.metrics.prom.tasks_launched.inc();
                    self.recovery.adoptable.remove(&id);
                    self.state.frameworks.add_task(fw, &id);
                    let resume = self.state.tasks.take_resume(&id);
                    launch.push(LaunchTask { id, spec, attempt, resume });
                }
            }
        }
        if !plan.leftover.is_empty() {
            let now = self.clock();
            let _ = self.alloc.recover_resources(fw, &target.agent, &target.role, &plan.leftover, refuse, now);
        }
        // A resumed task's snapshot is large: it travels in a launch of its own.
        let (resumed, launch): (Vec<LaunchTask>, Vec<LaunchTask>) =
            launch.into_iter().partition(|t| t.resume.is_some());
        for t in resumed {
            self.effects.send_agent(&target.agent, AgentCommand::Launch { framework_id: fw.clone(), tasks: vec![t] });
        }
        if !launch.is_empty() {
            self.effects.send_agent(&target.agent, AgentCommand::Launch { framework_id: fw.clone(), tasks: launch });
        }
        self.cycle_due = true;
    }

    /// Reports a task that was never launched (TASK_ERROR / TASK_DROPPED).
    /// `record`: keep it in the task table, so the refusal is visible through
    /// the Operator API; otherwise (a bad or duplicate id) only tell the
    /// framework.
    #[allow(clippy::too_many_arguments)] // one refused task, as the plan gives it
    fn refuse_task(
        &mut self,
        fw: &FrameworkId,
        task_id: String,
        spec: Arc<TaskSpec>,
        state: TaskState,
        reason: &'static str,
        message: String,
        record: bool,
    ) {
        match TaskId::new(task_id.clone()) {
            Ok(tid) if record => {
                if !self.state.tasks.contains(&tid) {
                    let role = self.state.frameworks.get(fw).map(|f| f.role.clone());
                    let mut task =
                        Task::new(fw.clone(), role.unwrap_or_else(|| self.cfg.batch_role.clone()), spec, now_ms());
                    task.attempt = 1;
                    let seq = self.ids.bump();
                    self.state.tasks.insert(tid.clone(), task, seq, true);
                }
                self.state.tasks.set_framework(&tid, fw);
                self.state.frameworks.add_task(fw, &tid);
                let st = TaskStatus::master(&tid, fw, None, state, reason, message);
                self.apply_status(st, false);
            }
            _ => {
                let r = Refusal { task_id, framework_id: fw.clone(), state, reason, message, timestamp_ms: now_ms() };
                let role =
                    self.state.frameworks.get(fw).map_or_else(|| self.cfg.batch_role.clone(), |f| f.role.clone());
                self.effects.publish(WatchEvent::Refused(r.clone(), role));
                if let Some(f) = self.state.frameworks.get_mut(fw) {
                    f.send(Event::Refused(r));
                }
            }
        }
    }

    /// Takes an offer back and tells its framework.
    pub(super) fn rescind(&mut self, offer: &OfferId) {
        let fw = self.state.offers.get(offer).map(|o| o.framework.clone());
        if fw.is_some() {
            self.metrics.prom.offers_rescinded.inc();
        }
        self.recover_offer(offer, None);
        if let Some(f) = fw.and_then(|fw| self.state.frameworks.get_mut(&fw)) {
            f.send(Event::Rescind(offer.clone()));
        }
    }

    /// An offer's resources go back to the allocator (with a filter when the
    /// framework declined them).
    pub(super) fn recover_offer(&mut self, offer: &OfferId, refuse: Option<Duration>) {
        let Some(o) = self.state.take_offer(offer) else { return };
        let now = self.clock();
        let _ = self.alloc.recover_resources(&o.framework, &o.agent, &o.role, &o.allocation, refuse, now);
        self.cycle_due = true;
    }
}
