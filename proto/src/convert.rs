//! Conversions between wire types and model types. Wire types stay at the edge.

use std::time::Duration;

use wasmos_model::{
    HealthCheck, HealthKind, InputFile, Limits, Outcome, OutcomeKind, ResourceError, Resources, TaskSpec, TaskState,
};

use crate::v1;

pub fn resources_to_wire(r: &Resources) -> v1::Resources {
    v1::Resources { scalars: r.iter().map(|(n, v)| v1::Scalar { name: n.to_string(), milli: v.milli() }).collect() }
}

/// Reads wire resources; negative amounts or bad names are refused.
pub fn resources_from_wire(r: Option<&v1::Resources>) -> Result<Resources, ResourceError> {
    let Some(r) = r else { return Ok(Resources::new()) };
    Resources::from_milli(r.scalars.iter().map(|s| (s.name.as_str(), s.milli)))
}

pub fn limits_to_wire(l: &Limits) -> v1::Limits {
    v1::Limits {
        fuel: l.fuel,
        mem_bytes: l.mem,
        timeout_ms: l.timeout.as_millis() as u64,
        max_output_bytes: l.max_output,
        meter_fuel: l.meter_fuel,
    }
}

/// Zero fields mean "the default".
pub fn limits_from_wire(l: Option<&v1::Limits>) -> Limits {
    let Some(l) = l else { return Limits::default() };
    Limits { meter_fuel: l.meter_fuel, ..Limits::or_defaults(l.fuel, l.mem_bytes, l.timeout_ms, l.max_output_bytes) }
}

pub fn spec_to_wire(s: &TaskSpec) -> v1::TaskSpec {
    v1::TaskSpec {
        task_id: s.task_id.clone(),
        name: s.name.clone(),
        module_sha256: s.module_sha256.clone(),
        args: s.args.clone(),
        env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        resources: Some(resources_to_wire(&s.resources)),
        limits: Some(limits_to_wire(&s.limits)),
        files: s.files.iter().map(|f| v1::InputFile { path: f.path.clone(), contents: f.contents.clone() }).collect(),
        sandbox_dir: s.sandbox_dir,
        input: s.input.clone(),
        attempt: s.attempt,
        signature: String::new(),
        health: s.health.as_ref().map(health_to_wire),
        migratable: s.migratable,
        resume: Vec::new(),
        on_disconnect: s.on_disconnect.to_string(),
    }
}

pub fn health_to_wire(h: &HealthCheck) -> v1::HealthCheck {
    let (probe_sha256, probe_args) = match &h.kind {
        HealthKind::Heartbeat => (String::new(), Vec::new()),
        HealthKind::Probe { module_sha256, args } => (module_sha256.clone(), args.clone()),
    };
    v1::HealthCheck {
        interval_ms: h.interval.as_millis() as u64,
        timeout_ms: h.timeout.as_millis() as u64,
        grace_ms: h.grace.as_millis() as u64,
        failures: h.failures,
        probe_sha256,
        probe_args,
    }
}

/// Zero fields mean the defaults.
pub fn health_from_wire(h: &v1::HealthCheck) -> HealthCheck {
    let ms = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
    HealthCheck {
        interval: ms(h.interval_ms, HealthCheck::DEFAULT_INTERVAL),
        timeout: ms(h.timeout_ms, HealthCheck::DEFAULT_TIMEOUT),
        // An explicit zero grace is the default: a check never starts at once.
        grace: ms(h.grace_ms, HealthCheck::DEFAULT_GRACE),
        failures: if h.failures == 0 { HealthCheck::DEFAULT_FAILURES } else { h.failures },
        kind: if h.probe_sha256.is_empty() {
            HealthKind::Heartbeat
        } else {
            HealthKind::Probe { module_sha256: h.probe_sha256.clone(), args: h.probe_args.clone() }
        },
    }
}

/// A wire task spec; its resources may be invalid, which is reported on that
/// task alone (the spec comes back with empty resources and the error).
pub fn spec_from_wire(s: &v1::TaskSpec) -> (TaskSpec, Option<ResourceError>) {
    let (resources, err) = match resources_from_wire(s.resources.as_ref()) {
        Ok(r) => (r, None),
        Err(e) => (Resources::new(), Some(e)),
    };
    let spec = TaskSpec {
        task_id: s.task_id.clone(),
        name: s.name.clone(),
        module_sha256: s.module_sha256.clone(),
        args: s.args.clone(),
        env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        resources,
        limits: limits_from_wire(s.limits.as_ref()),
        files: s.files.iter().map(|f| InputFile { path: f.path.clone(), contents: f.contents.clone() }).collect(),
        sandbox_dir: s.sandbox_dir,
        input: s.input.clone(),
        attempt: s.attempt,
        health: s.health.as_ref().map(health_from_wire),
        migratable: s.migratable,
        on_disconnect: wasmos_model::OnDisconnect::parse_lenient(&s.on_disconnect),
    };
    (spec, err)
}

pub fn state_to_wire(s: TaskState) -> v1::TaskState {
    match s {
        TaskState::Staging => v1::TaskState::TaskStaging,
        TaskState::Starting => v1::TaskState::TaskStarting,
        TaskState::Running => v1::TaskState::TaskRunning,
        TaskState::Paused => v1::TaskState::TaskPaused,
        TaskState::Killing => v1::TaskState::TaskKilling,
        TaskState::Finished => v1::TaskState::TaskFinished,
        TaskState::Failed => v1::TaskState::TaskFailed,
        TaskState::Killed => v1::TaskState::TaskKilled,
        TaskState::Error => v1::TaskState::TaskError,
        TaskState::Lost => v1::TaskState::TaskLost,
        TaskState::Unreachable => v1::TaskState::TaskUnreachable,
        TaskState::Gone => v1::TaskState::TaskGone,
        TaskState::Dropped => v1::TaskState::TaskDropped,
    }
}

/// `None` for an unknown number.
pub fn state_from_wire(s: i32) -> Option<TaskState> {
    Some(match v1::TaskState::try_from(s).ok()? {
        v1::TaskState::TaskStaging => TaskState::Staging,
        v1::TaskState::TaskStarting => TaskState::Starting,
        v1::TaskState::TaskRunning => TaskState::Running,
        v1::TaskState::TaskPaused => TaskState::Paused,
        v1::TaskState::TaskKilling => TaskState::Killing,
        v1::TaskState::TaskFinished => TaskState::Finished,
        v1::TaskState::TaskFailed => TaskState::Failed,
        v1::TaskState::TaskKilled => TaskState::Killed,
        v1::TaskState::TaskError => TaskState::Error,
        v1::TaskState::TaskDropped => TaskState::Dropped,
        v1::TaskState::TaskLost => TaskState::Lost,
        v1::TaskState::TaskUnreachable => TaskState::Unreachable,
        v1::TaskState::TaskGone => TaskState::Gone,
        v1::TaskState::Unspecified => return None,
    })
}

pub fn outcome_kind_to_wire(k: OutcomeKind) -> v1::OutcomeKind {
    match k {
        OutcomeKind::Finished => v1::OutcomeKind::OutcomeFinished,
        OutcomeKind::Failed => v1::OutcomeKind::OutcomeFailed,
        OutcomeKind::OutOfFuel => v1::OutcomeKind::OutcomeOutOfFuel,
        OutcomeKind::OutOfMemory => v1::OutcomeKind::OutcomeOutOfMemory,
        OutcomeKind::TimedOut => v1::OutcomeKind::OutcomeTimedOut,
        OutcomeKind::Killed => v1::OutcomeKind::OutcomeKilled,
        OutcomeKind::Error => v1::OutcomeKind::OutcomeError,
    }
}

pub fn outcome_kind_from_wire(k: i32) -> Option<OutcomeKind> {
    Some(match v1::OutcomeKind::try_from(k).ok()? {
        v1::OutcomeKind::OutcomeFinished => OutcomeKind::Finished,
        v1::OutcomeKind::OutcomeFailed => OutcomeKind::Failed,
        v1::OutcomeKind::OutcomeOutOfFuel => OutcomeKind::OutOfFuel,
        v1::OutcomeKind::OutcomeOutOfMemory => OutcomeKind::OutOfMemory,
        v1::OutcomeKind::OutcomeTimedOut => OutcomeKind::TimedOut,
        v1::OutcomeKind::OutcomeKilled => OutcomeKind::Killed,
        v1::OutcomeKind::OutcomeError => OutcomeKind::Error,
        v1::OutcomeKind::OutcomeUnspecified => return None,
    })
}

pub fn outcome_to_wire(o: &Outcome) -> v1::Outcome {
    v1::Outcome {
        kind: outcome_kind_to_wire(o.kind) as i32,
        exit_code: o.exit_code,
        fuel_consumed: o.fuel_consumed,
        peak_memory_bytes: o.peak_memory_bytes,
        wall_time_ms: o.wall_time.as_secs_f64() * 1000.0,
        cpu_time_ms: o.cpu_time.as_secs_f64() * 1000.0,
        fuel_metered: o.fuel_metered,
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        message: o.message.clone(),
    }
}

/// [`outcome_from_wire`] without copying the output tails.
pub fn outcome_into_model(o: v1::Outcome) -> Option<Outcome> {
    Some(Outcome {
        kind: outcome_kind_from_wire(o.kind)?,
        exit_code: o.exit_code,
        fuel_consumed: o.fuel_consumed,
        peak_memory_bytes: o.peak_memory_bytes,
        wall_time: Duration::try_from_secs_f64(o.wall_time_ms / 1000.0).unwrap_or_default(),
        fuel_metered: o.fuel_metered,
        cpu_time: Duration::try_from_secs_f64(o.cpu_time_ms / 1000.0).unwrap_or_default(),
        stdout: o.stdout,
        stderr: o.stderr,
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        message: o.message,
    })
}

pub fn outcome_from_wire(o: &v1::Outcome) -> Option<Outcome> {
    Some(Outcome {
        kind: outcome_kind_from_wire(o.kind)?,
        exit_code: o.exit_code,
        fuel_consumed: o.fuel_consumed,
        peak_memory_bytes: o.peak_memory_bytes,
        wall_time: Duration::try_from_secs_f64(o.wall_time_ms / 1000.0).unwrap_or_default(),
        fuel_metered: o.fuel_metered,
        cpu_time: Duration::try_from_secs_f64(o.cpu_time_ms / 1000.0).unwrap_or_default(),
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        message: o.message.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Resources::parse("cpus:0.5;mem:64MiB;gpus:1").unwrap();
        assert_eq!(resources_from_wire(Some(&resources_to_wire(&r))).unwrap(), r);
        let bad = v1::Resources { scalars: vec![v1::Scalar { name: "cpus".into(), milli: -1 }] };
        assert!(resources_from_wire(Some(&bad)).unwrap_err().to_string().contains("negative"));
        for s in TaskState::ALL {
            assert_eq!(state_from_wire(state_to_wire(s) as i32), Some(s));
        }
        for k in OutcomeKind::ALL {
            assert_eq!(outcome_kind_from_wire(outcome_kind_to_wire(k) as i32), Some(k));
        }
        let l = Limits { fuel: Some(5), ..Limits::default() };
        assert_eq!(limits_from_wire(Some(&limits_to_wire(&l))), l);
        assert_eq!(limits_from_wire(Some(&v1::Limits::default())), Limits::default());
    }
}
