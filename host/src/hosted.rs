//! Hosted frameworks: a `wasmos:scheduler` component run by the master.
//!
//! Each hosted framework is an actor task that owns its scheduler instance. It
//! subscribes like a remote framework (same event stream, same calls, same
//! validation in the master), turns events into WIT callbacks, checks the
//! calls the scheduler returns, and sends them on. A callback that traps, runs
//! out of fuel or memory, times out or returns invalid calls fails the
//! framework: it is torn down (offers back, tasks killed) and marked failed;
//! the master and every other framework carry on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::Status;
use wasmos_proto::v1;
use wasmos_sandbox::{SchedulerInstance, sched};

use crate::master::Cmd;
use crate::services::MasterHandle;

/// Most calls one callback may return.
pub const MAX_CALLS_PER_CALLBACK: usize = 10_000;
/// Longest `set-timer` a scheduler may ask for: one day.
pub const MAX_TIMER: Duration = Duration::from_secs(86_400);

/// What the operator sees of a hosted framework, including after it failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostedStats {
    pub framework_id: String,
    pub role: String,
    pub status: String,
    pub last_error: String,
    pub callbacks: u64,
    pub failures: u64,
}

pub(crate) struct HostedFw {
    pub stats: Arc<Mutex<HostedStats>>,
    pub jobs: Option<mpsc::UnboundedSender<sched::Job>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub(crate) struct Hosted {
    pub by_name: Mutex<HashMap<String, HostedFw>>,
}

impl Hosted {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostedFw>> {
        self.by_name.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn scalars_to_wire(s: &[sched::Scalar]) -> Result<v1::Resources, String> {
    let mut out = Vec::with_capacity(s.len());
    for x in s {
        if x.name.is_empty() || x.milli < 0 {
            return Err(format!("resource {:?} with amount {} is not valid", x.name, x.milli));
        }
        out.push(v1::Scalar { name: x.name.clone(), milli: x.milli });
    }
    Ok(v1::Resources { scalars: out })
}

fn scalars_from_wire(r: Option<&v1::Resources>) -> Vec<sched::Scalar> {
    r.map(|r| r.scalars.iter().map(|s| sched::Scalar { name: s.name.clone(), milli: s.milli }).collect())
        .unwrap_or_default()
}

fn limits_to_wire(l: &sched::Limits) -> v1::Limits {
    v1::Limits { fuel: l.fuel, mem_bytes: l.mem_bytes, timeout_ms: l.timeout_ms, max_output_bytes: l.max_output_bytes }
}

pub(crate) fn limits_from_wire(l: Option<&v1::Limits>) -> sched::Limits {
    let l = l.cloned().unwrap_or_default();
    sched::Limits {
        fuel: l.fuel,
        mem_bytes: l.mem_bytes,
        timeout_ms: l.timeout_ms,
        max_output_bytes: l.max_output_bytes,
    }
}

pub(crate) fn job_from_template(
    id: String,
    t: &v1::TaskSpec,
    priority: i32,
    estimated_fuel: Option<u64>,
) -> sched::Job {
    sched::Job {
        id,
        name: t.name.clone(),
        module_sha256: t.module_sha256.clone(),
        args: t.args.clone(),
        env: t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        resources: scalars_from_wire(t.resources.as_ref()),
        limits: limits_from_wire(t.limits.as_ref()),
        priority,
        estimated_fuel,
        payload: t.input.clone(),
    }
}

fn offer_from_wire(o: &v1::Offer) -> sched::Offer {
    sched::Offer {
        id: o.offer_id.clone(),
        agent_id: o.agent_id.clone(),
        hostname: o.hostname.clone(),
        resources: scalars_from_wire(o.resources.as_ref()),
        attributes: o.attributes.iter().map(|a| (a.key.clone(), a.value.clone())).collect(),
    }
}

fn status_from_wire(s: &v1::TaskStatus) -> sched::TaskStatus {
    use v1::TaskState as W;
    let state = match W::try_from(s.state).unwrap_or(W::Unspecified) {
        W::TaskStaging | W::Unspecified => sched::TaskState::Staging,
        W::TaskStarting => sched::TaskState::Starting,
        W::TaskRunning => sched::TaskState::Running,
        W::TaskPaused => sched::TaskState::Paused,
        W::TaskKilling => sched::TaskState::Killing,
        W::TaskFinished => sched::TaskState::Finished,
        W::TaskFailed => sched::TaskState::Failed,
        W::TaskKilled => sched::TaskState::Killed,
        W::TaskError => sched::TaskState::Error,
        W::TaskLost | W::TaskUnreachable | W::TaskGone => sched::TaskState::Lost,
        W::TaskDropped => sched::TaskState::Dropped,
    };
    sched::TaskStatus {
        task_id: s.task_id.clone(),
        agent_id: s.agent_id.clone(),
        state,
        reason: s.reason.clone(),
        message: s.message.clone(),
        outcome: s.outcome.as_ref().and_then(|o| {
            Some(sched::Outcome {
                kind: wasmos_proto::outcome_kind_from_wire(o.kind)?.to_string(),
                exit_code: o.exit_code,
                fuel_consumed: o.fuel_consumed,
                peak_memory_bytes: o.peak_memory_bytes,
                wall_time_ms: o.wall_time_ms,
            })
        }),
    }
}

/// Checks one call and turns it into a gRPC call; `Err` = the scheduler is broken.
fn translate(
    call: sched::Call,
    held: &mut HashSet<String>,
    timer: &mut Option<Instant>,
) -> Result<Option<v1::call::Call>, String> {
    use v1::call::Call as C;
    let take_offers = |ids: &[String], held: &mut HashSet<String>| -> Result<(), String> {
        if ids.is_empty() {
            return Err("names no offers".into());
        }
        for id in ids {
            if !held.remove(id) {
                return Err(format!("names offer {id:?}, which it does not hold"));
            }
        }
        Ok(())
    };
    Ok(Some(match call {
        sched::Call::Launch(l) => {
            take_offers(&l.offer_ids, held).map_err(|e| format!("launch {e}"))?;
            let mut launch = Vec::with_capacity(l.tasks.len());
            for t in l.tasks {
                if t.task_id.is_empty() {
                    return Err("launch has a task without an id".into());
                }
                launch.push(v1::TaskSpec {
                    task_id: t.task_id,
                    name: t.name,
                    module_sha256: t.module_sha256,
                    args: t.args,
                    env: t.env.into_iter().collect(),
                    resources: Some(scalars_to_wire(&t.resources).map_err(|e| format!("launch: {e}"))?),
                    limits: Some(limits_to_wire(&t.limits)),
                    files: vec![],
                    sandbox_dir: false,
                    input: t.input,
                    attempt: 0,
                });
            }
            C::Accept(v1::call::Accept {
                offer_ids: l.offer_ids,
                launch,
                filters: Some(v1::Filters { refuse_seconds: l.refuse_seconds.filter(|s| s.is_finite() && *s >= 0.0) }),
            })
        }
        sched::Call::Decline(d) => {
            take_offers(&d.offer_ids, held).map_err(|e| format!("decline {e}"))?;
            C::Decline(v1::call::Decline {
                offer_ids: d.offer_ids,
                filters: Some(v1::Filters { refuse_seconds: d.refuse_seconds.filter(|s| s.is_finite() && *s >= 0.0) }),
            })
        }
        sched::Call::Kill(t) => C::Kill(v1::call::Kill { task_id: t }),
        sched::Call::Pause(t) => C::Pause(v1::call::Pause { task_id: t }),
        sched::Call::Resume(t) => C::Resume(v1::call::Resume { task_id: t }),
        sched::Call::Revive => C::Revive(v1::call::Revive {}),
        sched::Call::Suppress => C::Suppress(v1::call::Suppress {}),
        sched::Call::Reconcile(ids) => C::Reconcile(v1::call::Reconcile { task_ids: ids }),
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
    }))
}

async fn send_call(handle: &MasterHandle, fw: &str, call: v1::call::Call) -> Result<(), Status> {
    let call = v1::Call { framework_id: fw.to_string(), call: Some(call) };
    handle.ask(|reply| Cmd::Call(call, reply)).await
}

/// The actor that drives one hosted scheduler until it fails or is removed.
#[allow(clippy::too_many_arguments)] // one actor's whole context, passed once at spawn
pub(crate) async fn run_actor(
    name: String,
    framework_id: String,
    mut inst: SchedulerInstance,
    initial: Vec<sched::Call>,
    mut events: mpsc::UnboundedReceiver<Result<v1::Event, Status>>,
    mut jobs: mpsc::UnboundedReceiver<sched::Job>,
    handle: MasterHandle,
    stats: Arc<Mutex<HostedStats>>,
) {
    let mut held: HashSet<String> = HashSet::new();
    let mut timer: Option<Instant> = None;
    let mut pending: Result<Vec<sched::Call>, wasmos_sandbox::CallbackError> = Ok(initial);
    loop {
        // Forward what the last callback asked for.
        let calls = match std::mem::replace(&mut pending, Ok(Vec::new())) {
            Ok(c) => c,
            Err(e) => {
                fail(&name, &framework_id, &handle, &stats, format!("scheduler callback failed: {e}")).await;
                return;
            }
        };
        if calls.len() > MAX_CALLS_PER_CALLBACK {
            let msg = format!("returned {} calls, more than the {MAX_CALLS_PER_CALLBACK} allowed", calls.len());
            fail(&name, &framework_id, &handle, &stats, msg).await;
            return;
        }
        for call in calls {
            match translate(call, &mut held, &mut timer) {
                Ok(Some(c)) => {
                    if let Err(s) = send_call(&handle, &framework_id, c).await {
                        // The master refused a well-formed call (e.g. killing a task
                        // that already ended): the scheduler's business, not fatal.
                        eprintln!("wasmos master: framework {name}: call refused: {}", s.message());
                    }
                }
                Ok(None) => {}
                Err(msg) => {
                    fail(&name, &framework_id, &handle, &stats, format!("invalid call: {msg}")).await;
                    return;
                }
            }
        }
        for (level, msg) in inst.logs.drain(..) {
            eprintln!("wasmos master: framework {name} [{level}] {msg}");
        }
        {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            s.callbacks = inst.callbacks;
        }
        let sleep_until = timer.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        pending = tokio::select! {
            ev = events.recv() => match ev {
                Some(Ok(v1::Event { event: Some(ev) })) => match ev {
                    v1::event::Event::Offers(o) => {
                        held.extend(o.offers.iter().map(|o| o.offer_id.clone()));
                        let offers: Vec<sched::Offer> = o.offers.iter().map(offer_from_wire).collect();
                        inst.on_offers(&offers).await
                    }
                    v1::event::Event::Rescind(r) => {
                        held.remove(&r.offer_id);
                        inst.on_rescind(&r.offer_id).await
                    }
                    v1::event::Event::Update(u) => {
                        let Some(st) = u.status else { continue };
                        let r = inst.on_update(&status_from_wire(&st)).await;
                        if r.is_ok() && !st.uuid.is_empty() {
                            let ack = v1::call::Call::Acknowledge(v1::call::Acknowledge {
                                agent_id: st.agent_id.clone(),
                                task_id: st.task_id.clone(),
                                uuid: st.uuid.clone(),
                            });
                            let _ = send_call(&handle, &framework_id, ack).await;
                        }
                        r
                    }
                    v1::event::Event::Error(e) => {
                        eprintln!("wasmos master: framework {name}: {}", e.message);
                        return;
                    }
                    v1::event::Event::Subscribed(_) | v1::event::Event::Heartbeat(_) => continue,
                },
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
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

async fn fail(name: &str, framework_id: &str, handle: &MasterHandle, stats: &Arc<Mutex<HostedStats>>, why: String) {
    eprintln!("wasmos master: framework {name} failed: {why}; tearing it down");
    {
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        s.status = "failed".into();
        s.last_error = why;
        s.failures += 1;
    }
    let _ = send_call(handle, framework_id, v1::call::Call::Teardown(v1::call::Teardown {})).await;
}

/// Deploys a hosted framework: instantiate, init, subscribe, start the actor.
pub(crate) async fn deploy(handle: &MasterHandle, req: v1::DeployRequest) -> Result<v1::DeployResponse, Status> {
    deploy_as(handle, req, None).await
}

/// [`deploy`], optionally taking over an existing framework id (restart).
pub(crate) async fn deploy_as(
    handle: &MasterHandle,
    req: v1::DeployRequest,
    framework_id: Option<String>,
) -> Result<v1::DeployResponse, Status> {
    wasmos_model::FrameworkId::new(req.name.clone())
        .map_err(|e| Status::invalid_argument(format!("framework name: {e}")))?;
    if req.name == "batch" {
        return Err(Status::invalid_argument("the name \"batch\" is taken by the built-in framework; pick another"));
    }
    let role = wasmos_model::Role::new(req.role.clone()).map_err(|e| Status::invalid_argument(format!("role: {e}")))?;
    {
        let map = handle.hosted.lock();
        if map.get(&req.name).is_some_and(|h| h.task.as_ref().is_some_and(|t| !t.is_finished())) {
            return Err(Status::already_exists(format!(
                "framework {} is already deployed; remove it first with `wasmos framework rm {}`",
                req.name, req.name
            )));
        }
        let running = map.values().filter(|h| h.task.as_ref().is_some_and(|t| !t.is_finished())).count();
        if running >= handle.max_hosted as usize {
            return Err(Status::resource_exhausted(format!(
                "{running} hosted frameworks are running, the limit; remove one or raise --max-hosted-frameworks"
            )));
        }
    }
    let store = handle.artifacts.clone();
    let sha = req.module_sha256.clone();
    let bytes = tokio::task::spawn_blocking(move || store.get(&sha))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    let mut inst = handle
        .sandbox
        .instantiate_scheduler(bytes.into(), handle.scheduler_limits)
        .await
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let initial = match inst.init(&req.config).await {
        Ok(Ok(calls)) => calls,
        Ok(Err(msg)) => return Err(Status::invalid_argument(format!("the scheduler refused its config: {msg}"))),
        Err(e) => return Err(Status::invalid_argument(format!("the scheduler failed in init: {e}"))),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let info = v1::FrameworkInfo {
        framework_id: framework_id.unwrap_or_default(),
        name: req.name.clone(),
        role: role.to_string(),
        failover_timeout_s: 0.0,
    };
    let hinfo = crate::master::HostedInfo { module_sha256: req.module_sha256.clone(), config: req.config.clone() };
    handle.ask(|reply| Cmd::Subscribe(info, tx, Some(hinfo), reply)).await?;
    let framework_id = match rx.recv().await {
        Some(Ok(v1::Event { event: Some(v1::event::Event::Subscribed(s)) })) => s.framework_id,
        _ => return Err(Status::internal("subscribing the hosted framework failed")),
    };
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Mutex::new(HostedStats {
        framework_id: framework_id.clone(),
        role: role.to_string(),
        status: "active".into(),
        ..Default::default()
    }));
    let task = tokio::spawn(run_actor(
        req.name.clone(),
        framework_id.clone(),
        inst,
        initial,
        rx,
        jobs_rx,
        handle.clone(),
        stats.clone(),
    ));
    handle.hosted.lock().insert(req.name, HostedFw { stats, jobs: Some(jobs_tx), task: Some(task) });
    Ok(v1::DeployResponse { framework_id })
}

/// Removes a hosted framework: teardown (its tasks are killed), stop the actor.
pub(crate) async fn remove(handle: &MasterHandle, name: &str) -> Result<(), Status> {
    let Some(fw) = handle.hosted.lock().remove(name) else {
        return Err(Status::not_found(format!("no hosted framework {name:?}; list them with `wasmos framework ls`")));
    };
    let id = fw.stats.lock().unwrap_or_else(|e| e.into_inner()).framework_id.clone();
    let _ = send_call(handle, &id, v1::call::Call::Teardown(v1::call::Teardown {})).await;
    if let Some(t) = fw.task {
        t.abort();
    }
    Ok(())
}
