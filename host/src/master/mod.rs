//! The master's state and its event loop. One task owns all state; services
//! send it [`cmd::Cmd`]s (a closed enum, in domain types) and await replies,
//! so there are no locks around the registry.
//!
//! - `cmd.rs`: the commands, replies, errors, principals and `authorize`.
//! - `types.rs`: domain types commands carry in and views carry out.
//! - `agents.rs`, `frameworks.rs`, `tasks.rs`, `offers.rs`: the tables (each
//!   owns its rows and journals its own changes) and what happens to them.
//! - [`State`] (here): the four tables, and the operations that keep their
//!   cross-indexes in step (task ↔ agent, offer ↔ framework).
//! - `validate.rs`: pure checks over a read-only `State`, returning plans.
//! - `roles.rs`, `recovery.rs`, `hosting.rs`, `effects.rs`, `views.rs`.

pub(crate) mod agents;
pub(crate) mod cmd;
pub(crate) mod effects;
pub(crate) mod frameworks;
mod hosting;
pub(crate) mod maintenance;
pub(crate) mod offers;
pub(crate) mod recovery;
pub(crate) mod roles;
pub(crate) mod stats;
pub(crate) mod task_ops;
pub(crate) mod tasks;
pub(crate) mod tokens;
pub(crate) mod types;
pub(crate) mod validate;
pub(crate) mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wasmos_allocator::{Allocation, Allocator, Config as AllocConfig};
use wasmos_model::{AgentId, FrameworkId, OfferId, TaskId};

use self::agents::Agents;
use self::cmd::{Cmd, Envelope, Maintenance};
use self::effects::Effects;
use self::frameworks::{Framework, Frameworks, Kind};
use self::offers::{OfferRec, Offers};
use self::recovery::Recovery;
use self::roles::Roles;
use self::tasks::{Retention, Tasks};
use self::types::*;
use crate::MasterConfig;
use crate::artifacts::ArtifactStore;
use crate::batch::Batch;
use crate::registry::{self, Loaded, WriterTx};

/// The tables. Operations that touch two of them live here, so their
/// cross-indexes cannot drift apart.
#[derive(Default)]
pub(crate) struct State {
    pub agents: Agents,
    pub frameworks: Frameworks,
    pub tasks: Tasks,
    pub offers: Offers,
    /// The batch of commands being handled (its changes commit together).
    pub batch_no: u64,
}

impl State {
    /// Places a task on `agent` (or nowhere) holding `alloc`; the agents'
    /// task sets follow.
    pub fn place(&mut self, tid: &TaskId, agent: Option<AgentId>, alloc: Option<Allocation>) {
        let Some(old) = self.tasks.get(tid).map(|t| t.agent().cloned()) else { return };
        if let Some(old) = old.as_ref().filter(|o| Some(*o) != agent.as_ref()) {
            self.agents.remove_task(old, tid);
        }
        if let Some(a) = &agent {
            self.agents.add_task(a, tid);
        }
        self.tasks.set_placement(tid, agent, alloc);
    }

    /// A task stops holding resources (it ended): returns where and what it
    /// held, if anything. It keeps its agent for the record.
    pub fn release(&mut self, tid: &TaskId) -> Option<(AgentId, Allocation)> {
        let agent = self.tasks.get(tid)?.agent().cloned()?;
        self.agents.remove_task(&agent, tid);
        let alloc = self.tasks.take_allocation(tid)?;
        Some((agent, alloc))
    }

    /// A framework is done with a task (it acknowledged its end, or there
    /// was nothing to acknowledge): it leaves the framework's set and, once
    /// ended, may leave memory.
    pub fn end_task(&mut self, fw: &FrameworkId, tid: &TaskId) {
        self.frameworks.end_task(fw, tid);
        self.tasks.mark_done(tid, self.batch_no);
    }

    pub fn add_offer(&mut self, id: OfferId, rec: OfferRec) {
        self.frameworks.add_offer(&rec.framework, &id);
        self.offers.insert(id, rec);
    }

    pub fn take_offer(&mut self, id: &OfferId) -> Option<OfferRec> {
        let rec = self.offers.remove(id)?;
        self.frameworks.remove_offer(&rec.framework, id);
        Some(rec)
    }
}

/// Id generation: `PREFIX-TAG-N`, with N counting up across restarts (the
/// registry keeps it) and TAG telling incarnations apart.
pub(crate) struct Ids {
    pub tag: String,
    pub next: u64,
    /// Offers are numbered apart: they do not outlive the incarnation (whose
    /// tag is in their ids), so their counter is not written anywhere.
    pub offers: u64,
}

impl Ids {
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.fresh_n(prefix).0
    }
    /// [`Ids::fresh`] and its number.
    pub fn fresh_n(&mut self, prefix: &str) -> (String, u64) {
        let n = self.bump();
        (format!("{prefix}-{}-{n}", self.tag), n)
    }
    /// The next number, without an id (a task's listing position).
    pub fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
    /// A new offer id.
    pub fn offer(&mut self) -> String {
        self.offers += 1;
        format!("offer-{}-{}", self.tag, self.offers)
    }
    /// The number the next [`Ids::fresh`] will use.
    pub fn peek(&self) -> u64 {
        self.next + 1
    }
}

/// How often unused modules are looked for.
const ARTIFACT_GC_EVERY: Duration = Duration::from_secs(60);

/// Counters the loop bumps (the Overview's), and the Prometheus ones.
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    pub commands: u64,
    pub cycles: u64,
    /// The latest allocation cycle, and all of them.
    pub last_cycle: Duration,
    pub cycle_time: Duration,
    /// Task state moves the lifecycle does not allow (refused, logged).
    pub illegal_moves: u64,
    pub denied: u64,
    pub prom: Arc<crate::metrics::Metrics>,
    /// `tasks_ended` children by reason and state, for the first
    /// MAX_LABEL_VALUES reasons (others are looked up each time).
    pub ended: HashMap<String, HashMap<&'static str, prometheus::IntCounter>>,
}

/// What the master shares with the gRPC edge.
pub(crate) struct Shared {
    pub artifacts: Arc<ArtifactStore>,
    pub watch: Arc<crate::watch::WatchHub>,
    pub auth: Arc<crate::auth::Auth>,
    pub audit: Arc<crate::audit::Audit>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub(crate) struct Master {
    cfg: MasterConfig,
    started: Instant,
    ids: Ids,
    alloc: Allocator,
    state: State,
    batch: Batch,
    batch_id: FrameworkId,
    roles: Roles,
    recovery: Recovery,
    artifacts: Arc<ArtifactStore>,
    effects: Effects,
    metrics: Metrics,
    /// An allocation cycle is due (something changed).
    cycle_due: bool,
    /// The registry writer thread (absent with the in-memory registry).
    writer: Option<WriterTx>,
    /// The id counter as last handed to the registry.
    written_next_id: u64,
    /// The newest batch the registry committed (set by its writer).
    committed: Arc<AtomicU64>,
    retention: Retention,
    tokens: tokens::Tokens,
    /// The audit log (every mutating and every denied command).
    audit: Arc<crate::audit::Audit>,
    /// Output requests sent to agents, by request id: (agent, reply, deadline).
    outputs: HashMap<u64, (AgentId, TaskId, cmd::Reply<OutputView>, Instant)>,
    /// Tasks killed at their agent's drain deadline, and the agent.
    drain_kills: HashMap<TaskId, AgentId>,
    /// Migratable tasks asked to capture (a drain with migrate), and the agent.
    captures: HashMap<TaskId, AgentId>,
    /// The task whose update being applied ended a drain's kill or capture:
    /// the batch framework queues it again (set and taken in one update).
    drain_requeue: Option<TaskId>,
    /// The latest full count of tasks by state (see `stats.rs`).
    counts_cache: std::cell::RefCell<Option<(Instant, std::collections::BTreeMap<wasmos_model::TaskState, u64>)>>,
    next_output: u64,
    /// The secret of the admin token made at this start, if one was.
    pub(crate) bootstrap_secret: Option<String>,
}

impl Master {
    pub(crate) fn new(
        cfg: MasterConfig,
        shared: Shared,
        registry: Option<(Box<dyn registry::Registry>, Loaded)>,
        ca_fingerprint: Option<String>,
    ) -> Master {
        let Shared { artifacts, watch, auth, audit, metrics: prom } = shared;
        let tag = format!("{:04x}", (now_ms() as u64 ^ (std::process::id() as u64 * 0x9e37)) & 0xffff);
        let mut alloc = Allocator::new(AllocConfig { seed: cfg.seed, ..AllocConfig::default() });
        let batch_id = FrameworkId::new("batch").expect("valid id");
        let batch_role = cfg.batch_role.clone();
        // Cannot fail: a fresh allocator, a valid role.
        let _ = alloc.add_framework(batch_id.clone(), std::slice::from_ref(&batch_role));
        let mut state = State::default();
        state.frameworks.insert(
            batch_id.clone(),
            Framework::new("batch".into(), batch_role, Kind::Batch, DEFAULT_FAILOVER_TIMEOUT),
            false,
        );
        let retention_cfg = (cfg.max_completed_tasks, cfg.completed_task_memory, cfg.completed_task_ttl);
        let mut m = Master {
            cfg,
            started: Instant::now(),
            ids: Ids { tag, next: 0, offers: 0 },
            alloc,
            state,
            batch: Batch::default(),
            batch_id: batch_id.clone(),
            roles: Roles::default(),
            recovery: Recovery::default(),
            drain_kills: HashMap::new(),
            captures: HashMap::new(),
            drain_requeue: None,
            artifacts,
            effects: Effects::new(watch),
            metrics: Metrics { prom: prom.clone(), ..Metrics::default() },
            cycle_due: false,
            writer: None,
            committed: Arc::new(AtomicU64::new(0)),
            written_next_id: 0,
            retention: Retention { max_tasks: retention_cfg.0, max_bytes: retention_cfg.1, ttl: retention_cfg.2 },
            tokens: tokens::Tokens::new(auth, ca_fingerprint),
            audit,
            outputs: HashMap::new(),
            counts_cache: Default::default(),
            // Not 0 at every start: a late answer to a request of an earlier
            // incarnation must not match a new one.
            next_output: (now_ms() as u64) << 16,
            bootstrap_secret: None,
        };
        // Nothing queued yet: no offers for the batch framework until a submit.
        let _ = m.alloc.suppress(&batch_id, &[]);
        if let Some((reg, loaded)) = registry {
            m.restore(loaded);
            reg.maintain(m.cfg.task_history);
            m.writer = Some(registry::spawn_writer(reg, m.committed.clone(), prom));
        }
        m.bootstrap_secret = if m.cfg.reset_admin_token { m.reset_admin_token() } else { m.bootstrap_token() };
        m
    }

    /// Ended tasks leave memory (see [`Retention`]); with the in-memory
    /// registry there is nothing to wait for.
    fn evict(&mut self) {
        let committed =
            if self.writer.is_some() { self.committed.load(std::sync::atomic::Ordering::Acquire) } else { u64::MAX };
        self.state.tasks.evict(&self.retention, committed);
    }

    /// Modules nothing uses leave the artifact store after `artifact_ttl`
    /// (deleted off the loop's thread).
    fn collect_artifacts(&self) {
        let mut used: std::collections::HashSet<String> =
            self.state.tasks.live_modules().into_iter().map(str::to_string).collect();
        for (_, f) in self.state.frameworks.iter() {
            if let Kind::Hosted(h) = &f.kind {
                used.insert(h.info.module_sha256.clone());
            }
        }
        let (store, ttl) = (self.artifacts.clone(), self.cfg.artifact_ttl);
        tokio::task::spawn_blocking(move || {
            let n = store.collect(&used, ttl);
            if n > 0 {
                eprintln!("wasmos master: deleted {n} module(s) unused for {ttl:?}");
            }
        });
    }

    fn clock(&self) -> Duration {
        self.started.elapsed()
    }

    /// Offers again in every role with queued batch tasks.
    pub(super) fn revive_batch(&mut self) {
        for role in self.batch.to_revive() {
            let _ = self.alloc.revive(&self.batch_id, std::slice::from_ref(&role));
            self.batch.set_suppressed(&role, false);
        }
        self.cycle_due = true;
    }

    /// No more offers in the roles whose batch queue is empty.
    pub(super) fn suppress_batch(&mut self) {
        for role in self.batch.to_suppress() {
            let _ = self.alloc.suppress(&self.batch_id, std::slice::from_ref(&role));
            self.batch.set_suppressed(&role, true);
        }
    }

    /// The event loop: handles commands in batches, then runs an allocation
    /// cycle if anything changed (at most once per `allocation_interval`),
    /// then hands the batch's changes to the registry writer.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Envelope>) {
        let mut tick = tokio::time::interval(self.cfg.agent_heartbeat_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_alloc = Instant::now() - self.cfg.allocation_interval;
        let mut last_fw_heartbeat = Instant::now();
        let mut last_artifact_gc = Instant::now();
        loop {
            let alloc_at = last_alloc + self.cfg.allocation_interval;
            tokio::select! {
                env = rx.recv() => {
                    let Some(env) = env else { break };
                    self.handle(env);
                    // Drain what is already queued: one allocation and one
                    // registry commit per batch.
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(env) => self.handle(env),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(alloc_at.into()), if self.cycle_due => {}
                _ = tick.tick() => {
                    // At least one cycle per tick: offer filters that expired
                    // since the last cycle make resources offerable again.
                    self.cycle_due = true;
                    self.check_agents();
                    self.retry_unapplied();
                    self.expire_recovering();
                    self.expire_disconnected();
                    self.check_drains();
                    self.expire_unreported();
                    self.expire_frameworks();
                    self.expire_outputs();
                    self.evict();
                    if last_artifact_gc.elapsed() >= ARTIFACT_GC_EVERY {
                        last_artifact_gc = Instant::now();
                        self.collect_artifacts();
                        self.state.frameworks.prune_torn_down(self.cfg.task_history);
                    }
                    if last_fw_heartbeat.elapsed() >= self.cfg.framework_heartbeat_interval {
                        last_fw_heartbeat = Instant::now();
                        self.heartbeat_frameworks();
                    }
                }
            }
            if self.cycle_due && Instant::now() >= alloc_at {
                self.cycle_due = false;
                last_alloc = Instant::now();
                self.allocate();
            }
            self.persist();
        }
    }

    fn handle(&mut self, env: Envelope) {
        self.metrics.commands += 1;
        let decision = cmd::authorize(&env.principal, &env.cmd, &self.state);
        self.audit.command(&env.principal, &env.cmd, &self.state, decision.as_ref().err());
        if let Err(e) = decision {
            self.metrics.denied += 1;
            self.metrics.prom.refused.with_label_values(&["denied"]).inc();
            env.cmd.refuse(e);
            return;
        }
        let who = env.principal;
        match env.cmd {
            Cmd::RegisterAgent(req, reply) => {
                let r = self.register_agent(req);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::AttachAgent(id, tx, reply) => {
                let _ = reply.send(self.attach_agent(&id, tx));
            }
            Cmd::AgentUpdates(agent, updates, reply) => {
                let r = self.agent_updates(agent, updates);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::AgentHeartbeat(id, stats, reply) => {
                let _ = reply.send(self.agent_heartbeat(&id, stats));
            }
            Cmd::Subscribe(info, tx, hosted, reply) => {
                let r = self.subscribe(info, tx, hosted);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::Call(fw, call, reply) => {
                let r = self.call(fw, call);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::ListAgents(after, limit, reply) => {
                let _ = reply.send(Ok(self.list_agents(after.as_deref(), limit)));
            }
            Cmd::ListFrameworks(after, limit, reply) => {
                let _ = reply.send(Ok(self.list_frameworks(after.as_deref(), limit)));
            }
            Cmd::ListTasks(filter, after, limit, reply) => {
                let _ = reply.send(Ok(self.list_tasks(&filter, after, limit)));
            }
            Cmd::GetTask(id, reply) => {
                let _ = reply.send(self.get_task(&id));
            }
            Cmd::TaskOutput(id, stderr, offset, max, reply) => self.task_output(&id, stderr, offset, max, reply),
            Cmd::AgentOutput(agent, request, out, reply) => {
                let _ = reply.send(Ok(()));
                self.agent_output(&agent, request, out);
            }
            Cmd::ListRoles(reply) => {
                let _ = reply.send(Ok(self.list_roles()));
            }
            Cmd::Overview(reply) => {
                let _ = reply.send(Ok(self.overview(&who)));
            }
            Cmd::Snapshot(reply) => {
                let _ = reply.send(Ok(self.snapshot()));
            }
            Cmd::UpdateRole(u, reply) => {
                let r = self.update_role(u);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::Reserve(r, reply) => {
                let r = self.reserve(r, true);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::Unreserve(r, reply) => {
                let r = self.reserve(r, false);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::Submit(s, reply) => {
                let r = self.submit(s);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::TaskAction(id, action, reply) => {
                let _ = reply.send(self.task_action(&id, action, None));
            }
            Cmd::HostedCheck(name, signed, reply) => {
                if let Some((role, sha, sig)) = &signed
                    && let Err(e) = self.check_signed(role, sha, sig)
                {
                    let _ = reply.send(Err(e));
                    return;
                }
                let _ = reply.send(self.hosted_check(&name));
            }
            Cmd::HostedAttach(fw, link) => self.hosted_attach(&fw, link),
            Cmd::HostedCalls(fw, calls, callbacks, reply) => {
                let r = self.hosted_calls(fw, calls, callbacks);
                self.effects.reply_after_commit(reply, Ok(r));
            }
            Cmd::HostedFailed(fw, why, reply) => {
                self.hosted_failed(&fw, why);
                self.effects.reply_after_commit(reply, Ok(()));
            }
            Cmd::HostedRemove(name, reply) => {
                let r = self.hosted_remove(&name);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::HostedSubmit(name, jobs, reply) => {
                // After the commit that records the ids it handed out.
                let r = self.hosted_submit(&name, jobs);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::CreateToken(t, reply) => {
                // The secret goes out only once its hash is committed.
                let r = self.create_token(&who, t);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::ListTokens(reply) => {
                let _ = reply.send(Ok(self.list_tokens()));
            }
            Cmd::RevokeToken(name, reply) => {
                let r = self.revoke_token(&name);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::Join(req, reply) => {
                // A use of the token and the agent's secret are committed first.
                let r = self.join(&req);
                self.effects.reply_after_commit(reply, r);
            }
            Cmd::Maintain(id, op, reply) => {
                let r = match op {
                    Maintenance::Drain { deadline, force, migrate } => self.drain_agent(&id, deadline, force, migrate),
                    Maintenance::Undrain => self.undrain_agent(&id),
                    Maintenance::Eligible(on) => self.set_eligibility(&id, on),
                    Maintenance::MarkGone => self.mark_gone(&id),
                };
                self.effects.reply_after_commit(reply, r);
            }
        }
    }

    /// Sends this batch's agent commands, then hands its changes and held
    /// replies to the registry writer, which commits before it releases
    /// them. If the commit fails, the master exits: running on without
    /// durability would break the promise the API makes.
    fn persist(&mut self) {
        // Agent commands go out now; replies wait for the commit. A launch the
        // registry never recorded (master killed before committing) is killed
        // when its agent reregisters; nothing acknowledged depends on it.
        for (agent, cmd) in self.effects.take_outbox() {
            if let Some(a) = self.state.agents.get_mut(&agent) {
                a.deliver(cmd);
            }
        }
        let changes = registry::journal::collect(
            &mut self.state,
            &mut self.roles,
            &self.batch,
            &self.batch_id,
            self.ids.next,
            self.writer.is_some(),
        );
        let mut changes = changes;
        let tokens = self.tokens.take_changed();
        if self.writer.is_some() {
            changes.tokens = tokens;
        }
        changes.ids_moved = self.ids.next != self.written_next_id;
        self.written_next_id = self.ids.next;
        let deferred = self.effects.take_deferred();
        match &self.writer {
            Some(w) if !changes.is_empty() || !deferred.is_empty() => {
                // The writer thread commits (grouping queued batches into one
                // transaction) and then releases the replies, so the event loop
                // never waits for the disk.
                w.send(changes, deferred, self.state.batch_no);
            }
            _ => {
                for f in deferred {
                    f();
                }
            }
        }
        self.state.batch_no += 1;
    }
}
