//! The registry on disk: an embedded transactional database (redb) under
//! `--state-dir`. Records are encoded as the wire types `StoredTask`,
//! `StoredSubmission`, `StoredFramework`, `StoredAgent`, `StoredRole` and
//! `StoredReservation`, so a registry written by an earlier version loads.

use std::path::Path;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use wasmos_model::{AgentId, FrameworkId, Role};
use wasmos_proto::v1;

use super::*;
use crate::api::convert as wire;
use crate::master::types::{HostedInfo, RoleSettings, failover_timeout};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const FRAMEWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("frameworks");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SUBMISSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("submissions");
const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
/// "agent-id role" -> StoredReservation
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");

fn err(what: &str) -> impl Fn(String) -> RegistryError + '_ {
    move |e| RegistryError(format!("{what}: {e}"))
}

/// Reads every record of `table`; a record that does not decode is an error
/// naming its key (the registry is damaged; nothing is silently dropped).
fn load<T: wasmos_proto::Wire>(
    r: &::redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    what: &str,
) -> Result<Vec<T>, RegistryError> {
    let t = r.open_table(table).map_err(|e| err(what)(e.to_string()))?;
    let mut out = Vec::new();
    for row in t.iter().map_err(|e| err(what)(e.to_string()))? {
        let (k, v) = row.map_err(|e| err(what)(e.to_string()))?;
        out.push(
            wasmos_proto::decode(v.value())
                .ok_or_else(|| RegistryError(format!("{what} record {:?} is damaged", k.value())))?,
        );
    }
    Ok(out)
}

/// Inserts or (for `None`) removes each keyed record.
fn put(
    w: &::redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    what: &str,
    rows: impl Iterator<Item = (String, Option<Vec<u8>>)>,
) -> Result<(), RegistryError> {
    let mut t = w.open_table(table).map_err(|e| err(what)(e.to_string()))?;
    for (k, v) in rows {
        match v {
            Some(v) => t.insert(k.as_str(), v.as_slice()).map(|_| ()),
            None => t.remove(k.as_str()).map(|_| ()),
        }
        .map_err(|e| err(what)(e.to_string()))?;
    }
    Ok(())
}

/// Says why a record is skipped at load.
fn skip(what: &str, key: &str, why: impl std::fmt::Display) {
    eprintln!("wasmos master: registry {what} {key:?} is not valid ({why}); skipping it");
}

pub(crate) struct Redb {
    db: Database,
}

impl Redb {
    /// Opens (creating) `dir/registry.redb` and bumps the master epoch.
    pub fn open(dir: &Path) -> Result<Redb, RegistryError> {
        std::fs::create_dir_all(dir).map_err(|e| RegistryError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("registry.redb");
        let db = Database::create(&path).map_err(|e| RegistryError(format!("cannot open {}: {e}", path.display())))?;
        let w = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            let mut meta = w.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
            let epoch = meta.get("epoch").map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0) + 1;
            meta.insert("epoch", epoch).map_err(|e| err("meta")(e.to_string()))?;
            for (t, what) in [
                (TASKS, "tasks"),
                (FRAMEWORKS, "frameworks"),
                (AGENTS, "agents"),
                (SUBMISSIONS, "submissions"),
                (ROLES, "roles"),
                (RESERVATIONS, "reservations"),
            ] {
                w.open_table(t).map_err(|e| err(what)(e.to_string()))?;
            }
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))?;
        Ok(Redb { db })
    }
}

impl Registry for Redb {
    fn load(&mut self) -> Result<Loaded, RegistryError> {
        let r = self.db.begin_read().map_err(|e| err("read")(e.to_string()))?;
        let mut loaded = Loaded::default();
        {
            let meta = r.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
            loaded.next_id =
                meta.get("next_id").map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0);
        }
        for t in load::<v1::StoredTask>(&r, TASKS, "task")? {
            match task_from_stored(t) {
                Ok(t) => loaded.tasks.push(t),
                Err((key, why)) => skip("task", &key, why),
            }
        }
        for f in load::<v1::StoredFramework>(&r, FRAMEWORKS, "framework")? {
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
        for a in load::<v1::StoredAgent>(&r, AGENTS, "agent")? {
            let info = a.info.as_ref().map(wire::agent_info_from_wire);
            match (AgentId::new(a.agent_id.clone()), info.unwrap_or_else(|| Ok(Default::default()))) {
                (Ok(id), Ok(info)) => {
                    loaded.agents.push(AgentRecord { id, info, registered_at_ms: a.registered_at_ms })
                }
                _ => skip("agent", &a.agent_id, "bad id or resources"),
            }
        }
        for s in load::<v1::StoredSubmission>(&r, SUBMISSIONS, "submission")? {
            let Some(tpl) = s.template.as_ref() else {
                skip("submission", &s.tag, "no template");
                continue;
            };
            let (template, bad) = wasmos_proto::spec_from_wire(tpl);
            if let Some(e) = bad {
                skip("submission", &s.tag, e);
                continue;
            }
            loaded.submissions.push(SubmissionRecord {
                tag: s.tag,
                first: s.first,
                count: s.count,
                template,
                priority: s.priority,
                constraints: s.constraints.into_iter().map(|a| (a.key, a.value)).collect(),
                max_attempts: s.max_attempts,
                submitted_at_ms: s.submitted_at_ms,
                name: s.name,
            });
        }
        for rec in load::<v1::StoredRole>(&r, ROLES, "role")? {
            let Ok(role) = Role::new(rec.role.clone()) else {
                skip("role", &rec.role, "bad name");
                continue;
            };
            match wire::quota_from_wire(rec.quota.as_ref()) {
                Ok(quota) => loaded.roles.push((role, RoleSettings { weight: rec.weight, quota })),
                Err(e) => eprintln!("wasmos master: registry role {role}: {e}; keeping the defaults for it"),
            }
        }
        for rec in load::<v1::StoredReservation>(&r, RESERVATIONS, "reservation")? {
            match (
                AgentId::new(rec.agent_id.clone()),
                Role::new(rec.role.clone()),
                wasmos_proto::resources_from_wire(rec.resources.as_ref()),
            ) {
                (Ok(agent), Ok(role), Ok(res)) => loaded.reservations.push(((agent, role), res)),
                _ => skip("reservation", &format!("{} {}", rec.agent_id, rec.role), "bad id, role or resources"),
            }
        }
        Ok(loaded)
    }

    fn commit(&mut self, changes: &Changes) -> Result<(), RegistryError> {
        let w = self.db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            put(
                &w,
                TASKS,
                "tasks",
                changes.tasks.iter().map(|(id, t)| (id.to_string(), Some(wasmos_proto::encode(&task_to_stored(t))))),
            )?;
            put(
                &w,
                FRAMEWORKS,
                "frameworks",
                changes.frameworks.iter().map(|(id, f)| (id.to_string(), f.as_ref().map(framework_to_stored))),
            )?;
            put(
                &w,
                AGENTS,
                "agents",
                changes.agents.iter().map(|(id, a)| {
                    let rec = a.as_ref().map(|a| {
                        wasmos_proto::encode(&v1::StoredAgent {
                            agent_id: id.to_string(),
                            info: Some(wire::agent_info_to_wire(&a.info)),
                            registered_at_ms: a.registered_at_ms,
                        })
                    });
                    (id.to_string(), rec)
                }),
            )?;
            put(
                &w,
                ROLES,
                "roles",
                changes.roles.iter().map(|(role, s)| {
                    let rec = s.as_ref().map(|s| {
                        wasmos_proto::encode(&v1::StoredRole {
                            role: role.to_string(),
                            weight: s.weight,
                            quota: Some(wire::quota_to_wire(&s.quota)),
                        })
                    });
                    (role.to_string(), rec)
                }),
            )?;
            put(
                &w,
                RESERVATIONS,
                "reservations",
                changes.reservations.iter().map(|((agent, role), r)| {
                    let rec = r.as_ref().map(|r| {
                        wasmos_proto::encode(&v1::StoredReservation {
                            agent_id: agent.to_string(),
                            role: role.to_string(),
                            resources: Some(wasmos_proto::resources_to_wire(r)),
                        })
                    });
                    (format!("{agent} {role}"), rec)
                }),
            )?;
            put(
                &w,
                SUBMISSIONS,
                "submissions",
                changes.submissions.iter().map(|s| (s.key(), Some(wasmos_proto::encode(&submission_to_stored(s))))),
            )?;
            let mut m = w.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
            m.insert("next_id", changes.next_id).map_err(|e| err("meta")(e.to_string()))?;
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))
    }
}

fn attributes(a: &[(String, String)]) -> Vec<v1::Attribute> {
    a.iter().map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() }).collect()
}

fn task_to_stored(t: &TaskRecord) -> v1::StoredTask {
    v1::StoredTask {
        summary: Some(wire::task_view_to_wire(&t.view)),
        spec: Some({
            let mut spec = wasmos_proto::spec_to_wire(&t.spec);
            spec.task_id = t.view.task_id.to_string();
            spec.attempt = t.view.attempt;
            spec
        }),
        priority: t.priority,
        constraints: attributes(&t.constraints),
        max_attempts: t.max_attempts,
        applied_uuids: t.applied_uuids.clone(),
    }
}

fn task_from_stored(rec: v1::StoredTask) -> Result<TaskRecord, (String, String)> {
    let (Some(sum), Some(spec)) = (rec.summary, rec.spec) else {
        return Err((String::new(), "no summary or spec".into()));
    };
    let key = sum.task_id.clone();
    let view = wire::task_view_from_wire(&sum).map_err(|e| (key.clone(), e))?;
    // The task's resources are its summary's (they were checked at launch).
    let (mut spec, _) = wasmos_proto::spec_from_wire(&spec);
    spec.resources = view.resources.clone();
    Ok(TaskRecord {
        view,
        spec: std::sync::Arc::new(spec),
        priority: rec.priority,
        constraints: rec.constraints.into_iter().map(|a| (a.key, a.value)).collect(),
        max_attempts: rec.max_attempts,
        applied_uuids: rec.applied_uuids,
    })
}

fn framework_to_stored(f: &FrameworkRecord) -> Vec<u8> {
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

fn submission_to_stored(s: &SubmissionRecord) -> v1::StoredSubmission {
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
    }
}

#[cfg(test)]
mod tests {
    use wasmos_model::{Resources, TaskId, TaskSpec, TaskState};

    use super::*;
    use crate::master::types::TaskView;

    /// What is committed is what loads back, through the wire encoding.
    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Redb::open(dir.path()).unwrap();
        let res = Resources::parse("cpus:0.5;mem:64MiB").unwrap();
        let tid = TaskId::new("task-ab-7").unwrap();
        let spec = TaskSpec {
            task_id: tid.to_string(),
            name: "t".into(),
            module_sha256: "00".repeat(32),
            resources: res.clone(),
            attempt: 2,
            ..Default::default()
        };
        let view = TaskView {
            task_id: tid.clone(),
            name: "t".into(),
            framework_id: FrameworkId::new("batch").unwrap(),
            agent_id: Some(AgentId::new("agent-1").unwrap()),
            state: TaskState::Dropped,
            outcome: None,
            submitted_at_ms: 5,
            started_at_ms: 0,
            finished_at_ms: 9,
            attempt: 2,
            module_sha256: "00".repeat(32),
            resources: res.clone(),
            message: "m".into(),
        };
        let task = TaskRecord {
            view,
            spec: std::sync::Arc::new(spec),
            priority: 3,
            constraints: vec![("zone".into(), "eu".into())],
            max_attempts: 4,
            applied_uuids: vec![vec![1, 2]],
        };
        let role = Role::new("eng").unwrap();
        let settings =
            RoleSettings { weight: 2.5, quota: wasmos_allocator::Quota::parse("cpus:1", "cpus:2;gpus:0").unwrap() };
        let changes = Changes {
            tasks: vec![(tid.clone(), task.clone())],
            roles: vec![(role.clone(), Some(settings.clone()))],
            next_id: 42,
            ..Default::default()
        };
        reg.commit(&changes).unwrap();
        drop(reg);
        let mut reg = Redb::open(dir.path()).unwrap();
        let loaded = reg.load().unwrap();
        assert_eq!(loaded.tasks, vec![task]);
        assert_eq!(loaded.roles, vec![(role.clone(), settings)]);
        assert_eq!(loaded.next_id, 42);
        // Removing a role's record.
        reg.commit(&Changes { roles: vec![(role, None)], next_id: 42, ..Default::default() }).unwrap();
        assert!(reg.load().unwrap().roles.is_empty());
    }
}
