//! Hosted frameworks: a `wasmos:scheduler` component run by the master.
//!
//! Each hosted framework is an actor task that owns its scheduler instance. It
//! subscribes like a remote framework (same events, same calls, same
//! validation in the master) but talks to the master in domain types: events
//! become WIT callbacks, and the calls a callback returns are checked here and
//! sent to the master together. A callback that traps, runs out of fuel or
//! memory, times out or returns invalid calls fails the framework: the master
//! records why, tears it down (offers back, tasks killed) and keeps listing it
//! as failed; the master and every other framework carry on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wasmos_model::{FrameworkId, Limits, OfferId, Resources, Role, TaskId, TaskSpec, TaskState};
use wasmos_sandbox::{SchedulerInstance, sched};

use crate::MasterHandle;
use crate::master::cmd::{Cmd, Error, HostedJobs, Principal};
use crate::master::types::{Call, Event, FrameworkInfo, HostedInfo, Launch, Refusal, TaskStatus};

/// Most calls one callback may return.
pub const MAX_CALLS_PER_CALLBACK: usize = 10_000;
/// Longest `set-timer` a scheduler may ask for: one day.
pub const MAX_TIMER: Duration = Duration::from_secs(86_400);

/// How the master reaches a hosted framework's actor.
#[derive(Debug)]
pub(crate) struct Link {
    pub jobs: mpsc::UnboundedSender<sched::Job>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Link {
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
    pub fn stop(self) {
        self.task.abort();
    }
}

fn scalars(r: &Resources) -> Vec<sched::Scalar> {
    r.iter().map(|(n, v)| sched::Scalar { name: n.to_string(), milli: v.milli() }).collect()
}

/// The WIT `limits` record has no `meter-fuel` field: there, a fuel budget of
/// `u64::MAX` stands for "count fuel, no budget".
const WIT_METERED_NO_BUDGET: u64 = u64::MAX;

fn limits_to_wit(l: &Limits) -> sched::Limits {
    sched::Limits {
        fuel: l.fuel.or(l.meter_fuel.then_some(WIT_METERED_NO_BUDGET)),
        mem_bytes: l.mem,
        timeout_ms: l.timeout.as_millis() as u64,
        max_output_bytes: l.max_output,
    }
}

fn limits_from_wit(l: &sched::Limits) -> Limits {
    let metered_only = l.fuel == Some(WIT_METERED_NO_BUDGET);
    Limits {
        meter_fuel: metered_only,
        ..Limits::or_defaults(l.fuel.filter(|_| !metered_only), l.mem_bytes, l.timeout_ms, l.max_output_bytes)
    }
}

/// A job for `on-submit` from a submission's template. A job with a fuel
/// estimate counts fuel when it runs, so that the framework can compare its
/// estimate with what identical work used (SRTF, SJF).
pub(crate) fn job(id: String, t: &TaskSpec, priority: i32, estimated_fuel: Option<u64>) -> sched::Job {
    let limits = Limits { meter_fuel: t.limits.meter_fuel || estimated_fuel.is_some(), ..t.limits.clone() };
    sched::Job {
        id,
        name: t.name.clone(),
        module_sha256: t.module_sha256.clone(),
        args: t.args.clone(),
        env: t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        resources: scalars(&t.resources),
        limits: limits_to_wit(&limits),
        priority,
        estimated_fuel,
        payload: t.input.clone(),
        health: t.health.as_ref().map(health_to_wit),
    }
}

fn health_to_wit(h: &wasmos_model::HealthCheck) -> sched::HealthCheck {
    let w = wasmos_proto::health_to_wire(h);
    sched::HealthCheck {
        interval_ms: w.interval_ms,
        timeout_ms: w.timeout_ms,
        grace_ms: w.grace_ms,
        failures: w.failures,
        probe_sha256: w.probe_sha256,
        probe_args: w.probe_args,
    }
}

fn health_from_wit(h: sched::HealthCheck) -> wasmos_model::HealthCheck {
    wasmos_proto::health_from_wire(&wasmos_proto::v1::HealthCheck {
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        grace_ms: h.grace_ms,
        failures: h.failures,
        probe_sha256: h.probe_sha256,
        probe_args: h.probe_args,
    })
}

fn offer_to_wit(o: &crate::master::types::Offer) -> sched::Offer {
    sched::Offer {
        id: o.offer_id.to_string(),
        agent_id: o.agent_id.to_string(),
        hostname: o.hostname.clone(),
        resources: scalars(&o.resources),
        attributes: o.attributes.clone(),
    }
}

fn state_to_wit(s: TaskState) -> sched::TaskState {
    match s {
        TaskState::Staging => sched::TaskState::Staging,
        TaskState::Starting => sched::TaskState::Starting,
        TaskState::Running => sched::TaskState::Running,
        TaskState::Paused => sched::TaskState::Paused,
        TaskState::Killing => sched::TaskState::Killing,
        TaskState::Finished => sched::TaskState::Finished,
        TaskState::Failed => sched::TaskState::Failed,
        TaskState::Killed => sched::TaskState::Killed,
        TaskState::Error => sched::TaskState::Error,
        TaskState::Lost | TaskState::Unreachable | TaskState::Gone => sched::TaskState::Lost,
        TaskState::Dropped => sched::TaskState::Dropped,
    }
}

fn status_to_wit(s: &TaskStatus) -> sched::TaskStatus {
    sched::TaskStatus {
        task_id: s.task_id.to_string(),
        agent_id: s.agent_id.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        state: state_to_wit(s.state),
        reason: s.reason.clone(),
        message: s.message.clone(),
        outcome: s.outcome.as_ref().map(|o| sched::Outcome {
            kind: o.kind.to_string(),
            exit_code: o.exit_code,
            fuel_consumed: o.fuel_consumed,
            peak_memory_bytes: o.peak_memory_bytes,
            wall_time_ms: o.wall_time.as_secs_f64() * 1000.0,
        }),
        healthy: s.healthy,
        drain_deadline_ms: None,
    }
}

fn refusal_to_wit(r: &Refusal) -> sched::TaskStatus {
    sched::TaskStatus {
        task_id: r.task_id.clone(),
        agent_id: String::new(),
        state: state_to_wit(r.state),
        reason: r.reason.to_string(),
        message: r.message.clone(),
        outcome: None,
        healthy: None,
        drain_deadline_ms: None,
    }
}

/// A filter a scheduler asked for: negative or not a number means none.
fn refuse_of(s: Option<f64>) -> Option<Duration> {
    crate::master::types::refuse_filter(s.filter(|s| s.is_finite() && *s >= 0.0))
}

/// A checked call: forward it (`Ok(Some(Ok))`), refuse it as the master
/// would (`Ok(Some(Err))`: the scheduler's business, logged), nothing to send
/// (`Ok(None)`: a timer), or `Err`: the scheduler is broken.
type Checked = Result<Option<Result<Call, Error>>, String>;

/// Checks one call against what the scheduler holds.
fn translate(call: sched::Call, held: &mut HashSet<String>, timer: &mut Option<Instant>) -> Checked {
    let take_offers = |ids: &[String], held: &mut HashSet<String>| -> Result<Vec<OfferId>, String> {
        if ids.is_empty() {
            return Err("names no offers".into());
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if !held.remove(id) {
                return Err(format!("names offer {id:?}, which it does not hold"));
            }
            out.push(OfferId::new(id.clone()).map_err(|e| e.to_string())?);
        }
        Ok(out)
    };
    let task = |t: String| TaskId::new(t).map_err(|e| Error::invalid(e.to_string()));
    Ok(Some(Ok(match call {
        sched::Call::Launch(l) => {
            let offers = take_offers(&l.offer_ids, held).map_err(|e| format!("launch {e}"))?;
            let mut launch = Vec::with_capacity(l.tasks.len());
            for t in l.tasks {
                if t.task_id.is_empty() {
                    return Err("launch has a task without an id".into());
                }
                if let Some(x) = t.resources.iter().find(|x| x.name.is_empty() || x.milli < 0) {
                    return Err(format!("launch: resource {:?} with amount {} is not valid", x.name, x.milli));
                }
                let (resources, resources_error) =
                    match Resources::from_milli(t.resources.iter().map(|s| (s.name.as_str(), s.milli))) {
                        Ok(r) => (r, None),
                        Err(e) => (Resources::new(), Some(e.to_string())),
                    };
                let spec = TaskSpec {
                    task_id: t.task_id,
                    name: t.name,
                    module_sha256: t.module_sha256,
                    args: t.args,
                    env: t.env.into_iter().collect(),
                    resources,
                    limits: limits_from_wit(&t.limits),
                    files: vec![],
                    sandbox_dir: false,
                    input: t.input,
                    attempt: 0,
                    health: t.health.map(health_from_wit),
                    migratable: false,
                    on_disconnect: Default::default(),
                };
                launch.push(Launch {
                    task_id: spec.task_id.clone(),
                    spec: Arc::new(spec),
                    resources_error,
                    signature: String::new(),
                });
            }
            Call::Accept { offers, launch, refuse: refuse_of(l.refuse_seconds) }
        }
        sched::Call::Decline(d) => {
            let offers = take_offers(&d.offer_ids, held).map_err(|e| format!("decline {e}"))?;
            Call::Decline { offers, refuse: refuse_of(d.refuse_seconds) }
        }
        sched::Call::Kill(t) => return Ok(Some(task(t).map(Call::Kill))),
        sched::Call::Pause(t) => return Ok(Some(task(t).map(Call::Pause))),
        sched::Call::Resume(t) => return Ok(Some(task(t).map(Call::Resume))),
        sched::Call::Revive => Call::Revive,
        sched::Call::Suppress => Call::Suppress,
        sched::Call::Reconcile(ids) => Call::Reconcile(ids.into_iter().filter_map(|i| TaskId::new(i).ok()).collect()),
        sched::Call::SetTimer(ms) => {
            let d = Duration::from_millis(ms);
            if d > MAX_TIMER {
                return Err(format!("set-timer of {ms} ms is longer than the one-day maximum"));
            }
            // One timer per framework: the earliest one asked for wins.
            let at = Instant::now() + d;
            *timer = Some(timer.map_or(at, |t| t.min(at)));
            return Ok(None);
        }
    })))
}

/// The actor that drives one hosted scheduler until it fails or is removed.
pub(crate) async fn run_actor(
    name: String,
    fw: FrameworkId,
    mut inst: SchedulerInstance,
    initial: Vec<sched::Call>,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut jobs: mpsc::UnboundedReceiver<sched::Job>,
    handle: MasterHandle,
) {
    let mut held: HashSet<String> = HashSet::new();
    let mut timer: Option<Instant> = None;
    let mut pending: Result<Vec<sched::Call>, wasmos_sandbox::CallbackError> = Ok(initial);
    let fail = |why: String| {
        let handle = handle.clone();
        let (fw, name) = (fw.clone(), name.clone());
        async move {
            eprintln!("wasmos master: framework {name} failed: {why}; tearing it down");
            let _ = handle.ask(Principal::Master, |r| Cmd::HostedFailed(fw, why, r)).await;
        }
    };
    loop {
        // Forward what the last callback asked for.
        let calls = match std::mem::replace(&mut pending, Ok(Vec::new())) {
            Ok(c) => c,
            Err(e) => return fail(format!("scheduler callback failed: {e}")).await,
        };
        if calls.len() > MAX_CALLS_PER_CALLBACK {
            let msg = format!("returned {} calls, more than the {MAX_CALLS_PER_CALLBACK} allowed", calls.len());
            return fail(msg).await;
        }
        let mut checked = Vec::with_capacity(calls.len());
        for call in calls {
            match translate(call, &mut held, &mut timer) {
                Ok(Some(Ok(c))) => checked.push(c),
                Ok(Some(Err(e))) => eprintln!("wasmos master: framework {name}: call refused: {e}"),
                Ok(None) => {}
                Err(msg) => return fail(format!("invalid call: {msg}")).await,
            }
        }
        let callbacks = inst.callbacks;
        if let Ok(results) =
            handle.ask(Principal::Master, |r| Cmd::HostedCalls(fw.clone(), checked, callbacks, r)).await
        {
            for e in results.into_iter().filter_map(Result::err) {
                // The master refused a well-formed call (e.g. killing a task
                // that already ended): the scheduler's business, not fatal.
                eprintln!("wasmos master: framework {name}: call refused: {e}");
            }
        }
        for (level, msg) in inst.logs.drain(..) {
            eprintln!("wasmos master: framework {name} [{level}] {msg}");
        }
        let sleep_until = timer.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        pending = tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Offers(offers)) => {
                    held.extend(offers.iter().map(|o| o.offer_id.to_string()));
                    let offers: Vec<sched::Offer> = offers.iter().map(offer_to_wit).collect();
                    inst.on_offers(&offers).await
                }
                Some(Event::Rescind(o)) => {
                    held.remove(o.as_str());
                    inst.on_rescind(o.as_str()).await
                }
                Some(Event::Update(st)) => {
                    let r = inst.on_update(&status_to_wit(&st)).await;
                    if r.is_ok() && !st.uuid.is_empty() {
                        let ack = Call::Acknowledge { task_id: st.task_id.clone(), uuid: st.uuid.clone() };
                        let _ = handle.ask(Principal::Master, |r| Cmd::HostedCalls(fw.clone(), vec![ack], inst.callbacks, r)).await;
                    }
                    r
                }
                Some(Event::Refused(refusal)) => inst.on_update(&refusal_to_wit(&refusal)).await,
                // One update per task on the draining agent, in one callback
                // turn each (their calls are sent together).
                Some(Event::Drain { agent_id, deadline_ms, tasks }) => {
                    let mut all = Ok(Vec::new());
                    for t in tasks {
                        let st = sched::TaskStatus {
                            task_id: t.to_string(),
                            agent_id: agent_id.to_string(),
                            state: sched::TaskState::Running,
                            reason: "agent_draining".into(),
                            message: format!("agent {agent_id} is draining"),
                            outcome: None,
                            healthy: None,
                            drain_deadline_ms: Some(deadline_ms.map_or(0, |d| d.max(1) as u64)),
                        };
                        match (inst.on_update(&st).await, &mut all) {
                            (Ok(calls), Ok(acc)) => acc.extend(calls),
                            (Err(e), _) => {
                                all = Err(e);
                                break;
                            }
                            _ => {}
                        }
                    }
                    all
                }
                Some(Event::Error(e)) => {
                    eprintln!("wasmos master: framework {name}: {e}");
                    return;
                }
                Some(Event::Subscribed { .. } | Event::Heartbeat) => continue,
                None => return,
            },
            job = jobs.recv() => match job {
                Some(job) => inst.on_submit(&job).await,
                None => return,
            },
            _ = tokio::time::sleep_until(sleep_until.into()), if timer.is_some() => {
                timer = None;
                inst.on_timer().await
            }
        };
    }
}

/// What `wasmos framework deploy` asks for.
#[derive(Debug, Clone)]
pub(crate) struct Deploy {
    pub name: String,
    pub role: String,
    pub config: String,
    pub module_sha256: String,
    /// The module's signature (hex), for roles that require one.
    pub signature: String,
}

/// Deploys a hosted framework: instantiate, init, subscribe, start the actor.
/// `take_over`: the framework id it had before a master restart.
pub(crate) async fn deploy(
    handle: &MasterHandle,
    req: Deploy,
    take_over: Option<FrameworkId>,
) -> Result<FrameworkId, Error> {
    FrameworkId::new(req.name.clone()).map_err(|e| Error::invalid(format!("framework name: {e}")))?;
    if req.name == "batch" {
        return Err(Error::invalid("the name \"batch\" is taken by the built-in framework; pick another"));
    }
    let role = Role::new(req.role.clone()).map_err(|e| Error::invalid(format!("role: {e}")))?;
    // A restart redeploys what was checked when it was first deployed.
    let signed = take_over.is_none().then(|| (role.clone(), req.module_sha256.clone(), req.signature.clone()));
    handle.ask(Principal::Master, |r| Cmd::HostedCheck(req.name.clone(), signed, r)).await?;
    let store = handle.artifacts.clone();
    let sha = req.module_sha256.clone();
    let bytes = tokio::task::spawn_blocking(move || store.get(&sha))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| Error::precondition(e.to_string()))?;
    let mut inst = handle
        .sandbox
        .instantiate_scheduler(bytes.into(), handle.scheduler_limits)
        .await
        .map_err(|e| Error::invalid(e.to_string()))?;
    let initial = match inst.init(&req.config).await {
        Ok(Ok(calls)) => calls,
        Ok(Err(msg)) => return Err(Error::invalid(format!("the scheduler refused its config: {msg}"))),
        Err(e) => return Err(Error::invalid(format!("the scheduler failed in init: {e}"))),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let info = FrameworkInfo {
        framework_id: take_over,
        name: req.name.clone(),
        role,
        failover_timeout: crate::master::types::DEFAULT_FAILOVER_TIMEOUT,
    };
    let hosted = HostedInfo { module_sha256: req.module_sha256.clone(), config: req.config.clone() };
    handle.ask(Principal::Master, |r| Cmd::Subscribe(info, tx, Some(hosted), r)).await?;
    let fw = match rx.recv().await {
        Some(Event::Subscribed { framework_id, .. }) => framework_id,
        _ => return Err(Error::internal("subscribing the hosted framework failed")),
    };
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_actor(req.name.clone(), fw.clone(), inst, initial, rx, jobs_rx, handle.clone()));
    handle.send(Principal::Master, Cmd::HostedAttach(fw.clone(), Link { jobs: jobs_tx, task })).await;
    Ok(fw)
}

/// Removes a hosted framework: teardown (its tasks are killed), stop the actor.
pub(crate) async fn remove(handle: &MasterHandle, who: Principal, name: &str) -> Result<(), Error> {
    handle.ask(who, |r| Cmd::HostedRemove(name.to_string(), r)).await
}

/// `wasmos submit --framework NAME`: jobs for its scheduler's `on-submit`.
pub(crate) async fn submit(
    handle: &MasterHandle,
    who: Principal,
    name: &str,
    jobs: HostedJobs,
) -> Result<Vec<String>, Error> {
    handle.ask(who, |r| Cmd::HostedSubmit(name.to_string(), jobs, r)).await
}
