//! What operators see: read-only views of the tables.

use wasmos_model::{AgentId, FrameworkId, Role, TaskId};

use super::Master;
use super::agents::Mode;
use super::cmd::Error;
use super::frameworks::Kind;
use super::tasks::Task;
use super::types::*;

/// A task as listings show it; `role`: its framework's.
/// A task as listings show it; `detail`: with its events and spec (a
/// task's page, the registry's record).
pub(crate) fn task_view(id: &TaskId, t: &Task, detail: bool) -> TaskView {
    TaskView {
        seq: t.seq(),
        task_id: id.clone(),
        name: t.spec.name.clone(),
        framework_id: t.framework.clone(),
        role: t.role.to_string(),
        agent_id: t.agent().cloned(),
        state: t.state(),
        outcome: t.outcome.clone(),
        submitted_at_ms: t.submitted_at_ms,
        started_at_ms: t.started_at_ms,
        finished_at_ms: t.finished_at_ms,
        attempt: t.attempt,
        module_sha256: t.spec.module_sha256.clone(),
        resources: t.spec.resources.clone(),
        message: t.message.to_string(),
        events: if detail { t.events.clone() } else { Vec::new() },
        spec: detail.then(|| t.spec.clone()),
        usage: if t.state().is_terminal() { None } else { t.usage },
        limits: Some(t.spec.limits.clone()),
        health: t.health.as_deref().cloned(),
    }
}

impl Master {
    /// A page of agents by id, after `after`.
    pub(super) fn list_agents(&self, after: Option<&str>, limit: usize) -> (Vec<AgentView>, Option<String>) {
        let mut ids: Vec<&AgentId> =
            self.state.agents.iter().map(|(id, _)| id).filter(|id| after.is_none_or(|a| id.as_str() > a)).collect();
        ids.sort();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next = if more { ids.last().map(|i| i.to_string()) } else { None };
        let agents = ids.into_iter().filter_map(|id| self.agent_view(id)).collect();
        (agents, next)
    }

    /// One agent as listings show it.
    pub(super) fn agent_view(&self, id: &AgentId) -> Option<AgentView> {
        let a = self.state.agents.get(id)?;
        let free = self.alloc.agent_free(id).map(|f| f.total()).unwrap_or_default();
        Some(AgentView {
            agent_id: id.clone(),
            info: a.info.clone(),
            allocated: Some(a.info.resources.saturating_sub(&free)),
            status: match (a.mode, a.eligible, a.tx.is_some()) {
                (Mode::Active, _, false) => "disconnected",
                (Mode::Active, true, true) => "active",
                (Mode::Active, false, true) => "ineligible",
                (m, _, _) => m.as_str(),
            },
            running_tasks: a.task_count() as u32,
            registered_at_ms: a.registered_at_ms,
            mem_used: a.stats.mem_used_bytes,
            tasks_live: a.stats.tasks_running + a.stats.tasks_paused + a.stats.tasks_starting,
            tasks_starting: a.stats.tasks_starting,
            slots_in_use: a.stats.slots_in_use,
            cpu_waiting: a.stats.cpu_waiting,
            updates_dropped: a.stats.updates_dropped,
            mode: a.mode,
            eligible: a.eligible,
        })
    }

    pub(super) fn framework_view(&self, id: &FrameworkId) -> Option<FrameworkView> {
        let f = self.state.frameworks.get(id)?;
        let connected = f.connected();
        let callbacks = match &f.kind {
            Kind::Hosted(h) => h.callbacks,
            _ => 0,
        };
        Some(FrameworkView {
            framework_id: id.to_string(),
            name: f.name.clone(),
            role: f.role.to_string(),
            allocated: self.alloc.framework_allocated(id),
            active_tasks: f
                .tasks()
                .filter(|t| self.state.tasks.get(t).is_some_and(|t| !t.state().is_terminal()))
                .count() as u32,
            connected,
            hosted: f.is_hosted(),
            status: if connected { "active".into() } else { "disconnected".into() },
            last_error: String::new(),
            callbacks,
            callback_failures: 0,
        })
    }

    /// A page of frameworks by id (the failed hosted ones by name, after
    /// them), after `after`.
    pub(super) fn list_frameworks(&self, after: Option<&str>, limit: usize) -> (Vec<FrameworkView>, Option<String>) {
        let mut all: Vec<(String, FrameworkView)> = self
            .state
            .frameworks
            .iter()
            .filter_map(|(id, _)| self.framework_view(id).map(|v| (format!("0{id}"), v)))
            .chain(self.state.frameworks.failed().map(|v| (format!("1{}", v.name), v.clone())))
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let more = all.len() > limit;
        all.truncate(limit);
        let next = if more { all.last().map(|(k, _)| k.clone()) } else { None };
        (all.into_iter().map(|(_, v)| v).collect(), next)
    }

    pub(super) fn get_task(&self, id: &TaskId) -> Result<TaskView, Error> {
        self.state
            .tasks
            .get(id)
            .map(|t| task_view(id, t, true))
            .ok_or_else(|| Error::not_found(format!("no task {:?}; list tasks with `wasmos tasks`", id.as_str())))
    }

    /// Up to `limit` tasks in memory after position `after` that match `f`,
    /// scanning at most [`PAGE_SCAN_BUDGET`] rows. `next`: where the next
    /// page starts (`None`: nothing more in memory).
    pub(super) fn list_tasks(&self, f: &TaskFilter, after: u64, limit: usize) -> Page<TaskView> {
        let mut rows = Vec::new();
        let mut last = after;
        for (scanned, (id, t)) in self.state.tasks.after(after).enumerate() {
            if rows.len() >= limit || scanned >= PAGE_SCAN_BUDGET {
                return Page { rows, next: Some(last) };
            }
            last = t.seq();
            let v = task_view(id, t, false);
            if f.matches(&v) {
                rows.push(v);
            }
        }
        Page { rows, next: None }
    }

    pub(super) fn role_view(&self, role: &Role) -> RoleView {
        let stats = self.alloc.role_stats(role);
        let mut frameworks: Vec<FrameworkId> =
            self.state.frameworks.iter().filter(|(_, f)| &f.role == role).map(|(id, _)| id.clone()).collect();
        // The batch framework serves every role something was submitted to.
        if !frameworks.contains(&self.batch_id) && self.batch.serves(role) {
            frameworks.push(self.batch_id.clone());
        }
        frameworks.sort();
        RoleView {
            role: role.clone(),
            weight: stats.as_ref().map(|s| s.weight).unwrap_or(1.0),
            allocated: stats.as_ref().map(|s| s.allocated.clone()),
            dominant_share: stats.as_ref().map(|s| s.share).unwrap_or(0.0),
            frameworks,
            quota: stats.as_ref().map(|s| s.quota.clone()),
            reserved: stats.as_ref().map(|s| s.reserved.clone()),
            signers: self.roles.settings(role).map(|s| s.signers.clone()).unwrap_or_default(),
        }
    }

    pub(super) fn list_roles(&self) -> Vec<RoleView> {
        self.alloc.roles().iter().map(|r| self.role_view(r)).collect()
    }
}
