//! Wire ↔ domain for the master's own types (the model's live in
//! `wasmos_proto::convert`). Wire types stop here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmos_allocator::Quota;
use wasmos_model::{AgentId, FrameworkId, Resources, Scalar, TaskId};
use wasmos_proto::{resources_from_wire, resources_to_wire, state_from_wire, state_to_wire, v1};

use crate::master::cmd::{Error, ErrorKind};
use crate::master::types::*;

pub(crate) fn status_of(e: Error) -> tonic::Status {
    use tonic::Status;
    let m = e.message;
    match e.kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(m),
        ErrorKind::Unauthenticated => Status::unauthenticated(m),
        ErrorKind::NotFound => Status::not_found(m),
        ErrorKind::FailedPrecondition => Status::failed_precondition(m),
        ErrorKind::PermissionDenied => Status::permission_denied(m),
        ErrorKind::AlreadyExists => Status::already_exists(m),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(m),
        ErrorKind::Unavailable => Status::unavailable(m),
        ErrorKind::Internal => Status::internal(m),
    }
}

fn attributes_to_wire(a: &[(String, String)]) -> Vec<v1::Attribute> {
    a.iter().map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() }).collect()
}

pub(crate) fn attributes_from_wire(a: &[v1::Attribute]) -> Vec<(String, String)> {
    a.iter().map(|a| (a.key.clone(), a.value.clone())).collect()
}

pub(crate) fn agent_info_to_wire(i: &AgentInfo) -> v1::AgentInfo {
    v1::AgentInfo {
        hostname: i.hostname.clone(),
        resources: Some(resources_to_wire(&i.resources)),
        attributes: attributes_to_wire(&i.attributes),
        wasmtime_version: i.wasmtime_version.clone(),
        target_triple: i.target_triple.clone(),
        agent_version: i.agent_version.clone(),
        task_slots: i.task_slots,
        cpu_cores: i.cpu_cores,
        cpu_limit: i.cpu_limit.clone(),
        engine_profile: i.engine_profile.clone(),
        precompiled_only: i.precompiled_only,
    }
}

/// The agent's info; its resources must read.
pub(crate) fn agent_info_from_wire(i: &v1::AgentInfo) -> Result<AgentInfo, String> {
    Ok(AgentInfo {
        hostname: i.hostname.clone(),
        resources: resources_from_wire(i.resources.as_ref()).map_err(|e| format!("agent resources: {e}"))?,
        attributes: attributes_from_wire(&i.attributes),
        wasmtime_version: i.wasmtime_version.clone(),
        target_triple: i.target_triple.clone(),
        agent_version: i.agent_version.clone(),
        task_slots: i.task_slots,
        cpu_cores: i.cpu_cores,
        cpu_limit: i.cpu_limit.chars().take(16).collect(),
        engine_profile: i.engine_profile.chars().take(1024).collect(),
        precompiled_only: i.precompiled_only,
    })
}

pub(crate) fn quota_to_wire(q: &Quota) -> v1::Quota {
    v1::Quota { guarantee: Some(resources_to_wire(&q.guarantee)), limit: Some(limit_to_wire(&q.limit)) }
}

fn limit_to_wire(l: &BTreeMap<String, Scalar>) -> v1::Resources {
    v1::Resources { scalars: l.iter().map(|(n, v)| v1::Scalar { name: n.clone(), milli: v.milli() }).collect() }
}

/// A quota limit from the wire: explicit zero amounts are kept (none of that
/// resource), which `resources_from_wire` would drop.
pub(crate) fn limit_from_wire(l: Option<&v1::Resources>) -> Result<BTreeMap<String, Scalar>, String> {
    // Checks names and signs the usual way.
    resources_from_wire(l).map_err(|e| format!("quota limit: {e}"))?;
    let mut limit = BTreeMap::new();
    for s in l.iter().flat_map(|l| &l.scalars) {
        if limit.insert(s.name.clone(), Scalar(s.milli)).is_some() {
            return Err(format!("quota limit names {} twice; give each resource once", s.name));
        }
    }
    Ok(limit)
}

pub(crate) fn quota_from_wire(q: Option<&v1::Quota>) -> Result<Quota, String> {
    let Some(q) = q else { return Ok(Quota::default()) };
    let guarantee = resources_from_wire(q.guarantee.as_ref()).map_err(|e| format!("quota guarantee: {e}"))?;
    Ok(Quota { guarantee, limit: limit_from_wire(q.limit.as_ref())? })
}

pub(crate) fn status_to_wire(s: &TaskStatus) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: s.task_id.to_string(),
        framework_id: s.framework_id.to_string(),
        agent_id: s.agent_id.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        state: state_to_wire(s.state) as i32,
        uuid: s.uuid.clone(),
        timestamp_ms: s.timestamp_ms,
        reason: s.reason.clone(),
        message: s.message.clone(),
        outcome: s.outcome.as_deref().map(wasmos_proto::outcome_to_wire),
        attempt: s.attempt,
        healthy: s.healthy,
        snapshot: Vec::new(),
    }
}

fn refusal_to_wire(r: &Refusal) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: r.task_id.clone(),
        framework_id: r.framework_id.to_string(),
        agent_id: String::new(),
        state: state_to_wire(r.state) as i32,
        uuid: Vec::new(),
        timestamp_ms: r.timestamp_ms,
        reason: r.reason.to_string(),
        message: r.message.clone(),
        outcome: None,
        attempt: 0,
        healthy: None,
        snapshot: Vec::new(),
    }
}

/// An agent's status update. `None`: one the master cannot read (a task or
/// framework id that is not valid, an unknown state), which it acknowledges
/// and ignores. (The master keeps its own record of the task's framework.)
pub(crate) fn status_from_agent(s: v1::TaskStatus) -> Option<TaskStatus> {
    Some(TaskStatus {
        task_id: TaskId::new(s.task_id).ok()?,
        framework_id: FrameworkId::new(s.framework_id).ok()?,
        agent_id: AgentId::new(s.agent_id).ok(),
        state: state_from_wire(s.state)?,
        uuid: s.uuid,
        timestamp_ms: s.timestamp_ms,
        reason: s.reason,
        message: s.message,
        outcome: s.outcome.and_then(wasmos_proto::outcome_into_model).map(Arc::new),
        // Which run the agent says it is about (0: not said); stale if not
        // the master's current one. Published with the master's record.
        attempt: s.attempt,
        healthy: s.healthy,
        snapshot: (!s.snapshot.is_empty()).then(|| Arc::new(s.snapshot)),
    })
}

pub(crate) fn event_to_wire(ev: Event) -> v1::Event {
    use v1::event::Event as E;
    let e = match ev {
        Event::Subscribed { framework_id, heartbeat_interval } => E::Subscribed(v1::event::Subscribed {
            framework_id: framework_id.to_string(),
            heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
        }),
        Event::Offers(offers) => E::Offers(v1::event::Offers {
            offers: offers
                .iter()
                .map(|o| v1::Offer {
                    offer_id: o.offer_id.to_string(),
                    framework_id: o.framework_id.to_string(),
                    agent_id: o.agent_id.to_string(),
                    hostname: o.hostname.clone(),
                    resources: Some(resources_to_wire(&o.resources)),
                    attributes: attributes_to_wire(&o.attributes),
                })
                .collect(),
        }),
        Event::Rescind(o) => E::Rescind(v1::event::Rescind { offer_id: o.to_string() }),
        Event::Update(st) => E::Update(v1::event::Update { status: Some(status_to_wire(&st)) }),
        Event::Refused(r) => E::Update(v1::event::Update { status: Some(refusal_to_wire(&r)) }),
        Event::Error(message) => E::Error(v1::event::Error { message }),
        Event::Heartbeat => E::Heartbeat(v1::event::Heartbeat {}),
        Event::Drain { agent_id, deadline_ms, tasks } => E::Drain(v1::event::Drain {
            agent_id: agent_id.to_string(),
            deadline_ms: deadline_ms.unwrap_or(0),
            task_ids: tasks.iter().map(|t| t.to_string()).collect(),
        }),
    };
    v1::Event { event: Some(e) }
}

pub(crate) fn command_to_wire(c: AgentCommand) -> v1::AgentCommand {
    use v1::agent_command::{Command, Kill, Launch, Pause, Resume};
    let command = match c {
        AgentCommand::Launch { framework_id, tasks } => Command::Launch(Launch {
            framework_id: framework_id.to_string(),
            tasks: tasks
                .iter()
                .map(|t| {
                    let mut w = wasmos_proto::spec_to_wire(&t.spec);
                    w.task_id = t.id.to_string();
                    w.attempt = t.attempt;
                    w.resume = t.resume.as_deref().cloned().unwrap_or_default();
                    w
                })
                .collect(),
        }),
        AgentCommand::Kill(t) => Command::Kill(Kill { task_id: t.to_string(), attempt: 0 }),
        AgentCommand::KillAttempt(t, attempt) => Command::Kill(Kill { task_id: t.to_string(), attempt }),
        AgentCommand::Pause(t) => Command::Pause(Pause { task_id: t.to_string() }),
        AgentCommand::Resume(t) => Command::Resume(Resume { task_id: t.to_string() }),
        AgentCommand::Capture(t) => Command::Capture(v1::agent_command::Capture { task_id: t.to_string() }),
        AgentCommand::Tail { task, stderr, offset, max, request } => Command::Tail(v1::agent_command::Tail {
            task_id: task.to_string(),
            stderr,
            offset,
            request_id: request,
            max_bytes: max,
        }),
    };
    v1::AgentCommand { command: Some(command), epoch: 0 }
}

pub(crate) fn agent_view_to_wire(a: &AgentView) -> v1::AgentSummary {
    v1::AgentSummary {
        agent_id: a.agent_id.to_string(),
        info: Some(agent_info_to_wire(&a.info)),
        allocated: a.allocated.as_ref().map(resources_to_wire),
        status: a.status.to_string(),
        running_tasks: a.running_tasks,
        registered_at_ms: a.registered_at_ms,
        mem_used_bytes: a.mem_used,
        tasks_live: a.tasks_live,
        tasks_starting: a.tasks_starting,
        slots_in_use: a.slots_in_use,
        cpu_waiting: a.cpu_waiting,
        updates_dropped: a.updates_dropped,
        mode: a.mode.as_str().to_string(),
        eligible: a.eligible,
        drain_deadline_ms: a.mode.deadline_ms().unwrap_or(0),
        drain_migrate: a.mode.migrates(),
    }
}

pub(crate) fn framework_view_to_wire(f: &FrameworkView) -> v1::FrameworkSummary {
    v1::FrameworkSummary {
        framework_id: f.framework_id.clone(),
        name: f.name.clone(),
        role: f.role.clone(),
        allocated: f.allocated.as_ref().map(resources_to_wire),
        active_tasks: f.active_tasks,
        connected: f.connected,
        hosted: f.hosted,
        status: f.status.clone(),
        last_error: f.last_error.clone(),
        callbacks: f.callbacks,
        callback_failures: f.callback_failures,
    }
}

pub(crate) fn task_view_to_wire(t: &TaskView) -> v1::TaskSummary {
    v1::TaskSummary {
        task_id: t.task_id.to_string(),
        name: t.name.clone(),
        framework_id: t.framework_id.to_string(),
        agent_id: t.agent_id.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        state: state_to_wire(t.state) as i32,
        outcome: t.outcome.as_deref().map(wasmos_proto::outcome_to_wire),
        submitted_at_ms: t.submitted_at_ms,
        started_at_ms: t.started_at_ms,
        finished_at_ms: t.finished_at_ms,
        attempt: t.attempt,
        module_sha256: t.module_sha256.clone(),
        resources: Some(resources_to_wire(&t.resources)),
        message: t.message.clone(),
        role: t.role.clone(),
        events: t.events.iter().map(task_event_to_wire).collect(),
        limits: t.limits.as_ref().map(wasmos_proto::limits_to_wire),
        args: t.spec.as_ref().map(|s| s.args.clone()).unwrap_or_default(),
        env_keys: t.spec.as_ref().map(|s| s.env.keys().cloned().collect()).unwrap_or_default(),
        live_fuel: t.usage.map_or(0, |u| u.fuel),
        live_mem_bytes: t.usage.map_or(0, |u| u.mem),
        fuel_per_sec: t.usage.map_or(0.0, |u| u.fuel_per_sec),
        live_cpu_ns: t.usage.map_or(0, |u| u.cpu_ns),
        cpu_cores: t.usage.map_or(0.0, |u| u.cpu_cores),
        healthy: t.health.as_ref().map(|h| h.0),
        health_message: t.health.as_ref().map(|h| h.1.clone()).unwrap_or_default(),
        health: t.spec.as_ref().and_then(|s| s.health.as_ref()).map(wasmos_proto::health_to_wire),
    }
}

fn task_event_to_wire(e: &crate::master::tasks::TaskEvent) -> v1::TaskEvent {
    v1::TaskEvent {
        at_ms: e.at_ms,
        state: state_to_wire(e.state) as i32,
        reason: e.reason.to_string(),
        message: e.message.clone(),
        agent_id: e.agent.as_ref().map(|a| a.to_string()).unwrap_or_default(),
    }
}

fn task_event_from_wire(e: &v1::TaskEvent) -> Option<crate::master::tasks::TaskEvent> {
    Some(crate::master::tasks::TaskEvent {
        at_ms: e.at_ms,
        state: state_from_wire(e.state)?,
        reason: e.reason.clone().into(),
        message: e.message.clone(),
        agent: AgentId::new(e.agent_id.clone()).ok(),
    })
}

/// A stored summary back as a view (the registry's records).
pub(crate) fn task_view_from_wire(s: &v1::TaskSummary) -> Result<TaskView, String> {
    Ok(TaskView {
        seq: 0,
        task_id: TaskId::new(s.task_id.clone()).map_err(|e| e.to_string())?,
        name: s.name.clone(),
        framework_id: FrameworkId::new(s.framework_id.clone()).map_err(|e| e.to_string())?,
        role: s.role.clone(),
        agent_id: if s.agent_id.is_empty() { None } else { AgentId::new(s.agent_id.clone()).ok() },
        state: state_from_wire(s.state).ok_or("unknown state")?,
        outcome: s.outcome.as_ref().and_then(wasmos_proto::outcome_from_wire).map(Arc::new),
        submitted_at_ms: s.submitted_at_ms,
        started_at_ms: s.started_at_ms,
        finished_at_ms: s.finished_at_ms,
        attempt: s.attempt,
        module_sha256: s.module_sha256.clone(),
        resources: resources_from_wire(s.resources.as_ref()).unwrap_or_default(),
        message: s.message.clone(),
        events: s.events.iter().filter_map(task_event_from_wire).collect(),
        spec: None,
        usage: None,
        limits: s.limits.as_ref().map(|l| wasmos_proto::limits_from_wire(Some(l))),
        health: s.healthy.map(|h| (h, s.health_message.clone())),
    })
}

pub(crate) fn role_view_to_wire(r: &RoleView) -> v1::RoleSummary {
    v1::RoleSummary {
        role: r.role.to_string(),
        weight: r.weight,
        allocated: r.allocated.as_ref().map(resources_to_wire),
        dominant_share: r.dominant_share,
        frameworks: r.frameworks.iter().map(|f| f.to_string()).collect(),
        quota: r.quota.as_ref().map(quota_to_wire),
        reserved: r.reserved.as_ref().map(resources_to_wire),
        signers: r.signers.clone(),
    }
}

pub(crate) fn watch_to_wire(ev: &WatchEvent) -> v1::WatchEvent {
    use v1::watch_event::Event as E;
    let e = match ev {
        WatchEvent::Task(st, _) => E::Task(status_to_wire(st)),
        WatchEvent::Refused(r, _) => E::Task(refusal_to_wire(r)),
        WatchEvent::AgentAdded(a) => E::AgentAdded(agent_view_to_wire(a)),
        WatchEvent::AgentRemoved(a) => E::AgentRemoved(a.to_string()),
        WatchEvent::FrameworkAdded(f) => E::FrameworkAdded(framework_view_to_wire(f)),
        WatchEvent::FrameworkRemoved(f) => E::FrameworkRemoved(f.to_string()),
    };
    let role = watch_role(ev).filter(|_| !matches!(ev, WatchEvent::FrameworkAdded(_))).unwrap_or("").to_string();
    v1::WatchEvent { seq: 0, event: Some(e), role }
}

/// The framework a watch event concerns (task events only).
pub(crate) fn watch_framework(ev: &WatchEvent) -> Option<&str> {
    match ev {
        WatchEvent::Task(st, _) => Some(st.framework_id.as_str()),
        WatchEvent::Refused(r, _) => Some(r.framework_id.as_str()),
        _ => None,
    }
}

/// The role an event belongs to (who may see it); `None`: an agent's event.
pub(crate) fn watch_role(ev: &WatchEvent) -> Option<&str> {
    match ev {
        WatchEvent::Task(_, role) | WatchEvent::Refused(_, role) => Some(role.as_str()),
        WatchEvent::FrameworkAdded(f) => Some(f.role.as_str()),
        _ => None,
    }
}

/// A wire task spec as a launch: a bad resource list is that task's error.
pub(crate) fn launch_from_wire(s: &v1::TaskSpec) -> Launch {
    let (spec, err) = wasmos_proto::spec_from_wire(s);
    Launch {
        task_id: s.task_id.clone(),
        spec: Arc::new(spec),
        resources_error: err.map(|e| e.to_string()),
        signature: s.signature.clone(),
    }
}

/// Seconds of an offer filter, if any.
pub(crate) fn filter_of(f: &Option<v1::Filters>) -> Option<Duration> {
    refuse_filter(f.as_ref().and_then(|f| f.refuse_seconds))
}

pub(crate) fn resources_of(r: Option<&v1::Resources>, what: &str) -> Result<Resources, Error> {
    resources_from_wire(r).map_err(|e| Error::invalid(format!("{what}{e}")))
}
