//! The framework table, and what frameworks do: subscribe, call, acknowledge,
//! reconcile, fail over, tear down. Hosted (Wasm) frameworks live here too:
//! their status, last error and callback counts are columns of their row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use wasmos_model::{FrameworkId, OfferId, Role, TaskId, TaskState};

use std::sync::Arc;

use super::Master;
use super::cmd::{Error, EventTx};
use super::types::*;
use crate::registry::HostedJobRecord;

/// What kind of scheduler a framework has.
#[derive(Debug)]
pub(crate) enum Kind {
    /// The built-in queue behind `wasmos submit` (inside the master).
    Batch,
    /// A program on the gRPC Scheduler API.
    Remote,
    /// A Wasm component hosted by the master.
    Hosted(Hosted),
}

/// A hosted framework's scheduler: what restarts it, and how it is doing.
#[derive(Debug)]
pub(crate) struct Hosted {
    pub info: HostedInfo,
    /// The running actor (absent until it is attached, e.g. after a restart).
    pub link: Option<crate::hosted::Link>,
    pub callbacks: u64,
    /// Jobs given to its `on-submit` and not launched yet as a task named
    /// after them (the job id, or the job id and a `-suffix`), by job id.
    /// Journaled, and given to the scheduler again whenever it is
    /// (re)attached, so that an acknowledged job survives a master restart.
    pub pending: BTreeMap<String, Arc<HostedJobRecord>>,
}

impl Hosted {
    pub fn new(info: HostedInfo) -> Hosted {
        Hosted { info, link: None, callbacks: 0, pending: BTreeMap::new() }
    }

    /// Its pending jobs in the order they were submitted (ids of one prefix
    /// and a growing number: shorter first, then by text).
    pub fn pending_in_order(&self) -> Vec<Arc<HostedJobRecord>> {
        let mut jobs: Vec<_> = self.pending.values().cloned().collect();
        jobs.sort_by(|a, b| (a.id.len(), &a.id).cmp(&(b.id.len(), &b.id)));
        jobs
    }
}

pub(crate) struct Framework {
    pub name: String,
    pub role: Role,
    pub kind: Kind,
    /// The event stream (remote and hosted frameworks), while connected.
    tx: Option<EventTx>,
    /// Non-terminal tasks, plus terminal ones whose last update is not yet
    /// acknowledged (Mesos keeps those for reconciliation too).
    tasks: HashSet<TaskId>,
    offers: HashSet<OfferId>,
    /// Latest update with a UUID per task, until the framework acknowledges it;
    /// resent when the framework fails over.
    pub unacked: HashMap<TaskId, TaskStatus>,
    /// How long a disconnected framework keeps its tasks before teardown.
    pub failover_timeout: Duration,
    pub disconnected_at: Option<Instant>,
}

impl Framework {
    pub fn new(name: String, role: Role, kind: Kind, failover_timeout: Duration) -> Framework {
        Framework {
            name,
            role,
            kind,
            tx: None,
            tasks: HashSet::new(),
            offers: HashSet::new(),
            unacked: HashMap::new(),
            failover_timeout,
            disconnected_at: None,
        }
    }

    pub fn is_hosted(&self) -> bool {
        matches!(self.kind, Kind::Hosted(_) | Kind::Batch)
    }
    pub fn connected(&self) -> bool {
        matches!(self.kind, Kind::Batch) || self.tx.is_some()
    }
    pub fn tasks(&self) -> impl Iterator<Item = &TaskId> + '_ {
        self.tasks.iter()
    }
    pub fn has_task(&self, t: &TaskId) -> bool {
        self.tasks.contains(t)
    }
    pub fn offers(&self) -> impl Iterator<Item = &OfferId> + '_ {
        self.offers.iter()
    }

    /// Sends an event; a closed stream marks the framework disconnected.
    /// False if it could not be sent.
    pub fn send(&mut self, ev: Event) -> bool {
        match &self.tx {
            Some(tx) if tx.send(ev).is_ok() => true,
            Some(_) => {
                self.tx = None;
                false
            }
            None => false,
        }
    }

    /// A (new) connection takes over the event stream.
    pub fn connect(&mut self, tx: EventTx) {
        self.tx = Some(tx);
        self.disconnected_at = None;
    }

    /// The stream is gone; returns whether it was connected.
    pub fn disconnect(&mut self) -> bool {
        self.disconnected_at.get_or_insert_with(Instant::now);
        self.tx.take().is_some()
    }
}

/// Every framework by id, the ids that may not come back, the failed hosted
/// frameworks (by name, until redeployed), and what changed for the registry.
#[derive(Default)]
pub(crate) struct Frameworks {
    map: HashMap<FrameworkId, Framework>,
    /// Frameworks that were torn down may not come back under the same id.
    /// (When, so the list is pruned after `--task-history`.)
    torn_down: HashMap<FrameworkId, Instant>,
    /// Hosted frameworks that failed: still listed with the reason.
    failed: BTreeMap<String, FrameworkView>,
    changed: HashSet<FrameworkId>,
    /// Hosted jobs added (`Some`) or retired (`None`) since the last batch.
    changed_jobs: Vec<(String, Option<Arc<HostedJobRecord>>)>,
}

impl Frameworks {
    pub fn get(&self, id: &FrameworkId) -> Option<&Framework> {
        self.map.get(id)
    }
    pub fn get_mut(&mut self, id: &FrameworkId) -> Option<&mut Framework> {
        self.map.get_mut(id)
    }
    pub fn contains(&self, id: &FrameworkId) -> bool {
        self.map.contains_key(id)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&FrameworkId, &Framework)> + '_ {
        self.map.iter()
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&FrameworkId, &mut Framework)> + '_ {
        self.map.iter_mut()
    }
    pub fn is_torn_down(&self, id: &FrameworkId) -> bool {
        self.torn_down.contains_key(id)
    }
    pub fn failed(&self) -> impl Iterator<Item = &FrameworkView> + '_ {
        self.failed.values()
    }
    pub fn failed_named(&self, name: &str) -> Option<&FrameworkView> {
        self.failed.get(name)
    }
    /// A hosted framework by name.
    pub fn hosted_named(&self, name: &str) -> Option<(&FrameworkId, &Framework)> {
        self.map.iter().find(|(_, f)| matches!(f.kind, Kind::Hosted(_)) && f.name == name)
    }

    /// Adds a framework; `store`: journal it (the batch framework is not).
    pub fn insert(&mut self, id: FrameworkId, f: Framework, store: bool) {
        if store {
            self.changed.insert(id.clone());
        }
        if let Kind::Hosted(_) = f.kind {
            self.failed.remove(&f.name);
        }
        self.map.insert(id, f);
    }

    /// Marks a framework's record to be written again.
    pub fn touch(&mut self, id: &FrameworkId) {
        self.changed.insert(id.clone());
    }

    /// Removes a torn-down framework for good (its pending jobs too).
    pub fn remove(&mut self, id: &FrameworkId) -> Option<Framework> {
        self.torn_down.insert(id.clone(), Instant::now());
        self.changed.insert(id.clone());
        let mut f = self.map.remove(id)?;
        if let Kind::Hosted(h) = &mut f.kind {
            self.changed_jobs.extend(std::mem::take(&mut h.pending).into_keys().map(|j| (j, None)));
        }
        Some(f)
    }

    /// A job for hosted framework `fw`'s scheduler: pending until a task
    /// named after it is launched. `store`: journal it (not when it was
    /// just loaded from the registry). False if `fw` is not hosted.
    pub fn add_job(&mut self, fw: &FrameworkId, job: Arc<HostedJobRecord>, store: bool) -> bool {
        let Some(Kind::Hosted(h)) = self.map.get_mut(fw).map(|f| &mut f.kind) else { return false };
        if store {
            self.changed_jobs.push((job.id.clone(), Some(job.clone())));
        }
        h.pending.insert(job.id.clone(), job);
        true
    }

    /// Forgets a stored job of a framework that is gone.
    pub fn drop_job(&mut self, job_id: String) {
        self.changed_jobs.push((job_id, None));
    }

    pub fn take_changed_jobs(&mut self) -> Vec<(String, Option<Arc<HostedJobRecord>>)> {
        std::mem::take(&mut self.changed_jobs)
    }

    /// Keeps a failed hosted framework listed.
    pub fn remember_failed(&mut self, view: FrameworkView) {
        self.failed.insert(view.name.clone(), view);
    }

    /// Stops listing a failed hosted framework; false if there was none.
    pub fn forget_failed(&mut self, name: &str) -> bool {
        self.failed.remove(name).is_some()
    }

    /// A task of `fw` was launched (or refused and recorded): it is the
    /// framework's now; a pending hosted job named by it is done.
    pub fn add_task(&mut self, fw: &FrameworkId, t: &TaskId) {
        let Some(f) = self.map.get_mut(fw) else { return };
        f.tasks.insert(t.clone());
        if let Kind::Hosted(h) = &mut f.kind
            && !h.pending.is_empty()
        {
            let id = t.as_str();
            let job = if h.pending.contains_key(id) {
                Some(id)
            } else {
                id.rsplit_once('-').map(|(head, _)| head).filter(|head| h.pending.contains_key(*head))
            };
            if let Some(job) = job {
                h.pending.remove(job);
                self.changed_jobs.push((job.to_string(), None));
            }
        }
    }
    /// The framework is done with a task (ended and acknowledged, or nothing
    /// to acknowledge).
    pub fn end_task(&mut self, fw: &FrameworkId, t: &TaskId) {
        if let Some(f) = self.map.get_mut(fw) {
            f.tasks.remove(t);
        }
    }
    pub(super) fn add_offer(&mut self, fw: &FrameworkId, o: &OfferId) {
        if let Some(f) = self.map.get_mut(fw) {
            f.offers.insert(o.clone());
        }
    }
    pub(super) fn remove_offer(&mut self, fw: &FrameworkId, o: &OfferId) {
        if let Some(f) = self.map.get_mut(fw) {
            f.offers.remove(o);
        }
    }

    /// Forgets torn-down ids older than `keep` (their tasks' history is gone too).
    pub fn prune_torn_down(&mut self, keep: Duration) {
        self.torn_down.retain(|_, at| at.elapsed() < keep);
    }

    pub fn take_changed(&mut self) -> Vec<FrameworkId> {
        self.changed.drain().collect()
    }
}

impl Master {
    pub(super) fn subscribe(
        &mut self,
        info: FrameworkInfo,
        tx: EventTx,
        hosted: Option<HostedInfo>,
    ) -> Result<(), Error> {
        let plan = super::validate::subscribe(&self.state, &self.batch_id, &info, hosted.is_some())?;
        let id = match plan {
            Some(id) => id,
            None => FrameworkId::new(self.ids.fresh("fw")).expect("valid id"),
        };
        let subscribed =
            Event::Subscribed { framework_id: id.clone(), heartbeat_interval: self.cfg.framework_heartbeat_interval };
        // Failover: the new connection knows none of the offers the old one
        // held (it may reconnect before the old stream is seen closed). They
        // go back to the allocator and are offered again, as Mesos rescinds
        // them at failover; without this they stayed allocated for good (the
        // soak's remote framework held a whole cluster that way).
        let stale: Vec<OfferId> =
            self.state.frameworks.get(&id).map(|f| f.offers().cloned().collect()).unwrap_or_default();
        for o in stale {
            self.recover_offer(&o, None);
        }
        if let Some(f) = self.state.frameworks.get_mut(&id) {
            // Failover: the new connection takes over.
            let _ = tx.send(subscribed);
            // Redeliver what the previous connection did not acknowledge.
            for st in f.unacked.values() {
                let _ = tx.send(Event::Update(st.clone()));
            }
            f.connect(tx);
            if let (Some(h), Kind::Hosted(k)) = (hosted, &mut f.kind) {
                k.info = h;
            }
            let _ = self.alloc.activate_framework(&id);
            self.state.frameworks.touch(&id);
            self.cycle_due = true;
            // A drain it may have missed while away (or before a master restart).
            self.retell_drains(&id);
            return Ok(());
        }
        self.alloc
            .add_framework(id.clone(), std::slice::from_ref(&info.role))
            .map_err(|e| Error::invalid(e.to_string()))?;
        let _ = tx.send(subscribed);
        let name = if info.name.is_empty() { id.to_string() } else { info.name.clone() };
        let kind = match hosted {
            Some(info) => Kind::Hosted(Hosted::new(info)),
            None => Kind::Remote,
        };
        let mut f = Framework::new(name, info.role, kind, info.failover_timeout);
        f.connect(tx);
        self.state.frameworks.insert(id.clone(), f, true);
        if let Some(v) = self.framework_view(&id) {
            self.effects.publish(WatchEvent::FrameworkAdded(v));
        }
        self.cycle_due = true;
        Ok(())
    }

    pub(super) fn call(&mut self, fw: FrameworkId, call: Result<Call, Error>) -> Result<(), Error> {
        super::validate::caller(&self.state, &self.batch_id, &fw)?;
        match call? {
            Call::Accept { offers, launch, refuse } => {
                let refuse = refuse.or(Some(self.cfg.default_refuse));
                self.accept(&fw, &offers, launch, refuse);
            }
            Call::Decline { offers, refuse } => {
                let refuse = refuse.or(Some(self.cfg.default_refuse));
                for id in offers {
                    if self.state.offers.get(&id).is_some_and(|r| r.framework == fw) {
                        self.metrics.prom.offers_declined.inc();
                        self.recover_offer(&id, refuse);
                    }
                }
            }
            Call::Kill(t) => self.task_action(&t, TaskAction::Kill, Some(&fw))?,
            Call::Pause(t) => self.task_action(&t, TaskAction::Pause, Some(&fw))?,
            Call::Resume(t) => self.task_action(&t, TaskAction::Resume, Some(&fw))?,
            Call::Revive => {
                let _ = self.alloc.revive(&fw, &[]);
                self.cycle_due = true;
            }
            Call::Suppress => {
                let _ = self.alloc.suppress(&fw, &[]);
            }
            Call::Acknowledge { task_id, uuid } => self.acknowledge(&fw, &task_id, &uuid)?,
            Call::Reconcile(ids) => self.reconcile(&fw, ids),
            Call::Teardown => self.teardown(&fw),
        }
        Ok(())
    }

    fn acknowledge(&mut self, fw: &FrameworkId, tid: &TaskId, uuid: &[u8]) -> Result<(), Error> {
        if let super::validate::Ack::Latest { ended } = super::validate::acknowledge(&self.state, fw, tid, uuid)? {
            if let Some(f) = self.state.frameworks.get_mut(fw) {
                f.unacked.remove(tid);
            }
            if ended {
                self.state.end_task(fw, tid);
            }
        }
        Ok(())
    }

    fn reconcile(&mut self, fw: &FrameworkId, ids: Vec<TaskId>) {
        let ids: Vec<TaskId> = if ids.is_empty() {
            self.state.frameworks.get(fw).map(|f| f.tasks().cloned().collect()).unwrap_or_default()
        } else {
            ids
        };
        let statuses: Vec<TaskStatus> = ids
            .into_iter()
            .map(|tid| match self.state.tasks.get(&tid).filter(|t| &t.framework == fw) {
                Some(t) => TaskStatus {
                    agent_id: t.agent().cloned(),
                    outcome: t.outcome.clone(),
                    attempt: t.attempt,
                    ..TaskStatus::master(&tid, fw, None, t.state(), "reconciliation", t.message.to_string())
                },
                None => TaskStatus::master(
                    &tid,
                    fw,
                    None,
                    TaskState::Lost,
                    "reconciliation",
                    "the master knows no such task".into(),
                ),
            })
            .collect();
        let Some(f) = self.state.frameworks.get_mut(fw) else { return };
        for st in statuses {
            f.send(Event::Update(st));
        }
    }

    /// Ends a framework: its tasks are killed, its offers go back, its id may
    /// not come back.
    pub(super) fn teardown(&mut self, fw: &FrameworkId) {
        let tasks: Vec<TaskId> =
            self.state.frameworks.get(fw).map(|f| f.tasks().cloned().collect()).unwrap_or_default();
        for t in tasks {
            let _ = self.task_action(&t, TaskAction::Kill, None);
        }
        let offers: Vec<OfferId> =
            self.state.frameworks.get(fw).map(|f| f.offers().cloned().collect()).unwrap_or_default();
        for o in offers {
            self.recover_offer(&o, None);
        }
        // Killed tasks still hold resources until their agents report back;
        // those are recovered as their updates arrive (the framework is gone,
        // so the recovery is skipped and the allocator forgets the framework).
        if let Some(mut f) = self.state.frameworks.remove(fw) {
            f.send(Event::Error(format!("framework {fw} was torn down; its tasks are being killed")));
            // Ended tasks nobody will acknowledge now may leave memory.
            for t in f.tasks() {
                self.state.tasks.mark_done(t, self.state.batch_no);
            }
            if let Kind::Hosted(Hosted { link: Some(link), .. }) = f.kind {
                link.stop();
            }
        }
        let _ = self.alloc.remove_framework(fw);
        self.effects.publish(WatchEvent::FrameworkRemoved(fw.clone()));
    }

    pub(super) fn heartbeat_frameworks(&mut self) {
        let mut gone = Vec::new();
        for (id, f) in self.state.frameworks.iter_mut() {
            // Also catches a stream found closed by an earlier send.
            if !matches!(f.kind, Kind::Batch) && !f.send(Event::Heartbeat) && f.disconnected_at.is_none() {
                gone.push(id.clone());
            }
        }
        for id in gone {
            self.disconnected(&id);
        }
    }

    /// A framework's stream closed: its offers go back; its tasks keep
    /// running until it fails over or its failover timeout passes.
    pub(super) fn disconnected(&mut self, id: &FrameworkId) {
        let offers: Vec<OfferId> = match self.state.frameworks.get_mut(id) {
            Some(f) => {
                f.disconnect();
                f.offers().cloned().collect()
            }
            None => return,
        };
        for o in offers {
            self.recover_offer(&o, None);
        }
        let _ = self.alloc.deactivate_framework(id);
    }

    /// Frameworks disconnected longer than their failover timeout are torn down.
    pub(super) fn expire_frameworks(&mut self) {
        let gone: Vec<FrameworkId> = self
            .state
            .frameworks
            .iter()
            .filter(|(_, f)| f.disconnected_at.is_some_and(|d| d.elapsed() >= f.failover_timeout))
            .map(|(k, _)| k.clone())
            .collect();
        for id in gone {
            self.teardown(&id);
        }
    }
}
