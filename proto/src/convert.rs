//! Conversions between wire types and model types. Wire types stay at the edge.

use std::time::Duration;

use wasmos_model::{Limits, Outcome, OutcomeKind, ResourceError, Resources, Scalar, TaskState};

use crate::v1;

pub fn resources_to_wire(r: &Resources) -> v1::Resources {
    v1::Resources { scalars: r.iter().map(|(n, v)| v1::Scalar { name: n.to_string(), milli: v.milli() }).collect() }
}

/// Reads wire resources; negative amounts or bad names are refused.
pub fn resources_from_wire(r: Option<&v1::Resources>) -> Result<Resources, ResourceError> {
    let mut out = Resources::new();
    let Some(r) = r else { return Ok(out) };
    for s in &r.scalars {
        if s.name.is_empty()
            || !s.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(ResourceError::BadName { name: s.name.clone() });
        }
        if s.milli < 0 {
            return Err(ResourceError::Negative {
                name: s.name.clone(),
                amount: (s.milli as f64 / 1000.0).to_string(),
            });
        }
        if out.get(&s.name) != Scalar::ZERO {
            return Err(ResourceError::Duplicate { name: s.name.clone() });
        }
        out.set(&s.name, Scalar(s.milli));
    }
    Ok(out)
}

pub fn limits_to_wire(l: &Limits) -> v1::Limits {
    v1::Limits {
        fuel: l.fuel,
        mem_bytes: l.mem,
        timeout_ms: l.timeout.as_millis() as u64,
        max_output_bytes: l.max_output,
    }
}

/// Zero fields mean "the default".
pub fn limits_from_wire(l: Option<&v1::Limits>) -> Limits {
    let d = Limits::default();
    let Some(l) = l else { return d };
    Limits {
        fuel: l.fuel,
        mem: if l.mem_bytes == 0 { d.mem } else { l.mem_bytes },
        timeout: if l.timeout_ms == 0 { d.timeout } else { Duration::from_millis(l.timeout_ms) },
        max_output: if l.max_output_bytes == 0 { d.max_output } else { l.max_output_bytes },
    }
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
    }
}

/// `None` for states the model does not have (dropped, unreachable, gone map
/// to their closest model state by the caller) or an unknown number.
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
        v1::TaskState::TaskError | v1::TaskState::TaskDropped => TaskState::Error,
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
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        message: o.message.clone(),
    }
}

pub fn outcome_from_wire(o: &v1::Outcome) -> Option<Outcome> {
    Some(Outcome {
        kind: outcome_kind_from_wire(o.kind)?,
        exit_code: o.exit_code,
        fuel_consumed: o.fuel_consumed,
        peak_memory_bytes: o.peak_memory_bytes,
        wall_time: Duration::from_secs_f64((o.wall_time_ms / 1000.0).max(0.0)),
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
