//! Registry records to and from their stored wire messages.

use std::sync::Arc;

use wasmos_model::AgentId;
use wasmos_proto::v1;

use super::super::*;
use crate::api::convert as wire;
use crate::master::agents::Mode;

pub(super) fn attributes(a: &[(String, String)]) -> Vec<v1::Attribute> {
    a.iter().map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() }).collect()
}

pub(super) fn task_to_stored(t: &TaskRecord) -> v1::StoredTask {
    v1::StoredTask {
        summary: Some(wire::task_view_to_wire(&t.view)),
        spec: t.spec.as_ref().map(|s| {
            let mut spec = wasmos_proto::spec_to_wire(s);
            spec.task_id = t.view.task_id.to_string();
            spec.attempt = t.view.attempt;
            spec
        }),
        priority: t.priority,
        constraints: attributes(&t.constraints),
        max_attempts: t.max_attempts,
        applied_uuids: t.applied_uuids.clone(),
        seq: t.view.seq,
    }
}

pub(super) fn task_from_stored(rec: v1::StoredTask) -> Result<TaskRecord, (String, String)> {
    let Some(sum) = rec.summary else {
        return Err((String::new(), "no summary".into()));
    };
    let key = sum.task_id.clone();
    let mut view = wire::task_view_from_wire(&sum).map_err(|e| (key.clone(), e))?;
    view.seq = rec.seq;
    // The task's resources are its summary's (they were checked at launch).
    let spec = rec.spec.map(|spec| {
        let (mut spec, _) = wasmos_proto::spec_from_wire(&spec);
        spec.resources = view.resources.clone();
        Arc::new(spec)
    });
    Ok(TaskRecord {
        view,
        spec,
        priority: rec.priority,
        constraints: rec.constraints.into_iter().map(|a| (a.key, a.value)).collect(),
        max_attempts: rec.max_attempts,
        applied_uuids: rec.applied_uuids,
    })
}

pub(super) fn framework_to_stored(f: &FrameworkRecord) -> Vec<u8> {
    wasmos_proto::encode(&v1::StoredFramework {
        framework_id: f.id.to_string(),
        name: f.name.clone(),
        role: f.role.to_string(),
        hosted: f.hosted.is_some(),
        module_sha256: f.hosted.as_ref().map(|h| h.module_sha256.clone()).unwrap_or_default(),
        config: f.hosted.as_ref().map(|h| h.config.clone()).unwrap_or_default(),
        failover_timeout_s: f.failover_timeout.as_secs_f64(),
    })
}

pub(super) fn submission_to_stored(s: &SubmissionRecord) -> v1::StoredSubmission {
    v1::StoredSubmission {
        tag: s.tag.clone(),
        first: s.first,
        count: s.count,
        template: Some(wasmos_proto::spec_to_wire(&s.template)),
        priority: s.priority,
        constraints: attributes(&s.constraints),
        max_attempts: s.max_attempts,
        submitted_at_ms: s.submitted_at_ms,
        name: s.name.clone(),
        role: s.role.to_string(),
    }
}

pub(super) fn agent_to_stored(id: &AgentId, a: &AgentRecord) -> v1::StoredAgent {
    v1::StoredAgent {
        agent_id: id.to_string(),
        info: Some(wire::agent_info_to_wire(&a.info)),
        registered_at_ms: a.registered_at_ms,
        mode: a.mode.as_str().to_string(),
        ineligible: !a.eligible,
        drain_deadline_ms: a.mode.deadline_ms().unwrap_or(0),
        drain_migrate: a.mode.migrates(),
    }
}

/// `None`: a bad id or resources.
pub(super) fn agent_from_stored(a: &v1::StoredAgent) -> Option<AgentRecord> {
    let info = a.info.as_ref().map(wire::agent_info_from_wire).unwrap_or_else(|| Ok(Default::default())).ok()?;
    Some(AgentRecord {
        id: AgentId::new(a.agent_id.clone()).ok()?,
        info,
        registered_at_ms: a.registered_at_ms,
        mode: Mode::parse(&a.mode, a.drain_deadline_ms, a.drain_migrate),
        eligible: !a.ineligible,
    })
}
