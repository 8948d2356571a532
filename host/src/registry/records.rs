//! Registry records to and from their stored wire messages (`Stored*`),
//! shared by every backend: a record kind ([`Table`]) names its rows, and
//! [`rows`] / [`Table::decode`] are the one encoding of each.

use std::sync::Arc;

use wasmos_model::{AgentId, FrameworkId, Role};
use wasmos_proto::v1;

use super::*;
use crate::api::convert as wire;
use crate::master::agents::Mode;
use crate::master::types::{HostedInfo, failover_timeout};

pub(crate) fn attributes(a: &[(String, String)]) -> Vec<v1::Attribute> {
    a.iter().map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() }).collect()
}

pub(crate) fn task_to_stored(t: &TaskRecord) -> v1::StoredTask {
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

pub(crate) fn task_from_stored(rec: v1::StoredTask) -> Result<TaskRecord, (String, String)> {
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

pub(crate) fn framework_to_stored(f: &FrameworkRecord) -> Vec<u8> {
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

pub(crate) fn submission_to_stored(s: &SubmissionRecord) -> v1::StoredSubmission {
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

pub(crate) fn agent_to_stored(id: &AgentId, a: &AgentRecord) -> v1::StoredAgent {
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
pub(crate) fn agent_from_stored(a: &v1::StoredAgent) -> Option<AgentRecord> {
    let info = a.info.as_ref().map(wire::agent_info_from_wire).unwrap_or_else(|| Ok(Default::default())).ok()?;
    Some(AgentRecord {
        id: AgentId::new(a.agent_id.clone()).ok()?,
        info,
        registered_at_ms: a.registered_at_ms,
        mode: Mode::parse(&a.mode, a.drain_deadline_ms, a.drain_migrate),
        eligible: !a.ineligible,
    })
}

/// The record kinds besides tasks and submissions' ended counts, each a
/// keyed table of encoded `Stored*` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Frameworks,
    Agents,
    Submissions,
    Roles,
    Reservations,
    HostedJobs,
    Tokens,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Frameworks,
        Table::Agents,
        Table::Submissions,
        Table::Roles,
        Table::Reservations,
        Table::HostedJobs,
        Table::Tokens,
    ];

    /// Its name (redb's table, etcd's key segment, messages).
    pub fn name(self) -> &'static str {
        match self {
            Table::Frameworks => "frameworks",
            Table::Agents => "agents",
            Table::Submissions => "submissions",
            Table::Roles => "roles",
            Table::Reservations => "reservations",
            Table::HostedJobs => "hosted_jobs",
            Table::Tokens => "tokens",
        }
    }

    /// Decodes a record of this table into `loaded` (submissions with
    /// `ended` of their tasks ended). Bytes that do not decode are an error
    /// naming the key (the registry is damaged); a record that decodes but
    /// is not valid any more is skipped with a warning.
    pub fn decode(self, key: &str, bytes: &[u8], ended: u32, loaded: &mut Loaded) -> Result<(), RegistryError> {
        let damaged = || RegistryError(format!("{} record {key:?} is damaged", self.name()));
        match self {
            Table::Frameworks => {
                let f: v1::StoredFramework = wasmos_proto::decode(bytes).ok_or_else(damaged)?;
                match (FrameworkId::new(f.framework_id.clone()), Role::new(f.role.clone())) {
                    (Ok(id), Ok(role)) => loaded.frameworks.push(FrameworkRecord {
                        id,
                        name: f.name,
                        role,
                        hosted: f.hosted.then_some(HostedInfo { module_sha256: f.module_sha256, config: f.config }),
                        failover_timeout: failover_timeout(f.failover_timeout_s),
                    }),
                    _ => skip("framework", &f.framework_id, "bad id or role"),
                }
            }
            Table::Agents => {
                let a: v1::StoredAgent = wasmos_proto::decode(bytes).ok_or_else(damaged)?;
                match agent_from_stored(&a) {
                    Some(rec) => loaded.agents.push(rec),
                    None => skip("agent", &a.agent_id, "bad id or resources"),
                }
            }
            Table::Submissions => {
                let s: v1::StoredSubmission = wasmos_proto::decode(bytes).ok_or_else(damaged)?;
                let Some(tpl) = s.template.as_ref() else {
                    skip("submission", &s.tag, "no template");
                    return Ok(());
                };
                let (template, bad) = wasmos_proto::spec_from_wire(tpl);
                if let Some(e) = bad {
                    skip("submission", &s.tag, e);
                    return Ok(());
                }
                let role = match s.role.as_str() {
                    "" => Role::new("batch").expect("valid role"),
                    r => match Role::new(r) {
                        Ok(r) => r,
                        Err(e) => {
                            skip("submission", &s.tag, e);
                            return Ok(());
                        }
                    },
                };
                let rec = SubmissionRecord {
                    tag: s.tag,
                    first: s.first,
                    count: s.count,
                    template,
                    priority: s.priority,
                    constraints: s.constraints.into_iter().map(|a| (a.key, a.value)).collect(),
                    max_attempts: s.max_attempts,
                    submitted_at_ms: s.submitted_at_ms,
                    name: s.name,
                    role,
                };
                loaded.submissions.push((rec, ended));
            }
            Table::Roles => {
                let rec: v1::StoredRole = wasmos_proto::decode(bytes).ok_or_else(damaged)?;
                let Ok(role) = Role::new(rec.role.clone()) else {
                    skip("role", &rec.role, "bad name");
                    return Ok(());
                };
                match wire::quota_from_wire(rec.quota.as_ref()) {
                    Ok(quota) => {
                        loaded.roles.push((role, RoleSettings { weight: rec.weight, quota, signers: rec.signers }))
                    }
                    Err(e) => eprintln!("wasmos master: registry role {role}: {e}; keeping the defaults for it"),
                }
            }
            Table::Reservations => {
                let rec: v1::StoredReservation = wasmos_proto::decode(bytes).ok_or_else(damaged)?;
                match (
                    AgentId::new(rec.agent_id.clone()),
                    Role::new(rec.role.clone()),
                    wasmos_proto::resources_from_wire(rec.resources.as_ref()),
                ) {
                    (Ok(agent), Ok(role), Ok(res)) => loaded.reservations.push(((agent, role), res)),
                    _ => skip("reservation", &format!("{} {}", rec.agent_id, rec.role), "bad id, role or resources"),
                }
            }
            Table::HostedJobs => {
                let j: v1::StoredHostedJob = wasmos_proto::decode(bytes).ok_or_else(damaged)?;
                let (Ok(framework), Some(tpl)) = (FrameworkId::new(j.framework_id.clone()), j.template.as_ref()) else {
                    skip("hosted job", &j.job_id, "bad framework id or no template");
                    return Ok(());
                };
                let (template, bad) = wasmos_proto::spec_from_wire(tpl);
                if let Some(e) = bad {
                    skip("hosted job", &j.job_id, e);
                    return Ok(());
                }
                loaded.hosted_jobs.push(HostedJobRecord {
                    id: j.job_id,
                    framework,
                    template,
                    priority: j.priority,
                    estimated_fuel: j.estimated_fuel,
                });
            }
            Table::Tokens => {
                let t: v1::StoredToken = wasmos_proto::decode(bytes).ok_or_else(damaged)?;
                let Ok(hash) = <[u8; 32]>::try_from(t.secret_sha256.as_slice()) else {
                    skip("token", &t.name, "bad hash");
                    return Ok(());
                };
                let kind = match t.kind {
                    0 => TokenKind::Bearer,
                    1 => TokenKind::Join { uses_left: t.uses_left },
                    _ => match AgentId::new(t.agent_id.clone()) {
                        Ok(agent_id) => TokenKind::Agent { agent_id },
                        Err(_) => {
                            skip("token", &t.name, "bad agent id");
                            return Ok(());
                        }
                    },
                };
                loaded.tokens.push(TokenRecord {
                    name: t.name,
                    secret_sha256: hash,
                    grants: t.grants,
                    created_at_ms: t.created_at_ms,
                    expires_at_ms: t.expires_at_ms,
                    created_by: t.created_by,
                    kind,
                });
            }
        }
        Ok(())
    }
}

/// Says why a record is skipped at load.
pub(crate) fn skip(what: &str, key: &str, why: impl std::fmt::Display) {
    eprintln!("wasmos master: registry {what} {key:?} is not valid ({why}); skipping it");
}

/// The rows `changes` writes in the [`Table`]s, in order: (table, key,
/// encoded record or `None` to remove it). Tasks, submissions' ended counts
/// and closed submissions are each backend's own (they have indexes).
pub(crate) fn rows(c: &Changes) -> Vec<(Table, String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for s in &c.submissions {
        out.push((Table::Submissions, s.key(), Some(wasmos_proto::encode(&submission_to_stored(s)))));
    }
    for (id, f) in &c.frameworks {
        out.push((Table::Frameworks, id.to_string(), f.as_ref().map(framework_to_stored)));
    }
    for (id, a) in &c.agents {
        out.push((Table::Agents, id.to_string(), a.as_ref().map(|a| wasmos_proto::encode(&agent_to_stored(id, a)))));
    }
    for (role, s) in &c.roles {
        let rec = s.as_ref().map(|s| {
            wasmos_proto::encode(&v1::StoredRole {
                role: role.to_string(),
                weight: s.weight,
                quota: Some(wire::quota_to_wire(&s.quota)),
                signers: s.signers.clone(),
            })
        });
        out.push((Table::Roles, role.to_string(), rec));
    }
    for ((agent, role), r) in &c.reservations {
        let rec = r.as_ref().map(|r| {
            wasmos_proto::encode(&v1::StoredReservation {
                agent_id: agent.to_string(),
                role: role.to_string(),
                resources: Some(wasmos_proto::resources_to_wire(r)),
            })
        });
        out.push((Table::Reservations, format!("{agent} {role}"), rec));
    }
    for (id, j) in &c.hosted_jobs {
        let rec = j.as_ref().map(|j| {
            wasmos_proto::encode(&v1::StoredHostedJob {
                job_id: j.id.clone(),
                framework_id: j.framework.to_string(),
                template: Some(wasmos_proto::spec_to_wire(&j.template)),
                priority: j.priority,
                estimated_fuel: j.estimated_fuel,
            })
        });
        out.push((Table::HostedJobs, id.clone(), rec));
    }
    for (name, t) in &c.tokens {
        let rec = t.as_ref().map(|t| {
            wasmos_proto::encode(&v1::StoredToken {
                name: t.name.clone(),
                secret_sha256: t.secret_sha256.to_vec(),
                grants: t.grants.clone(),
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                created_by: t.created_by.clone(),
                kind: match &t.kind {
                    TokenKind::Bearer => 0,
                    TokenKind::Join { .. } => 1,
                    TokenKind::Agent { .. } => 2,
                },
                uses_left: match &t.kind {
                    TokenKind::Join { uses_left } => *uses_left,
                    _ => None,
                },
                agent_id: match &t.kind {
                    TokenKind::Agent { agent_id } => agent_id.to_string(),
                    _ => String::new(),
                },
            })
        });
        out.push((Table::Tokens, name.clone(), rec));
    }
    out
}
