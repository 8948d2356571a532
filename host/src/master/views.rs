//! What operators see: read-only views of the tables.

use wasmos_model::{FrameworkId, Role, TaskId};

use super::Master;
use super::agents::Mode;
use super::cmd::Error;
use super::frameworks::Kind;
use super::tasks::Task;
use super::types::*;

pub(crate) fn task_view(id: &TaskId, t: &Task) -> TaskView {
    TaskView {
        task_id: id.clone(),
        name: t.name.clone(),
        framework_id: t.framework.clone(),
        agent_id: t.agent().cloned(),
        state: t.state(),
        outcome: t.outcome.clone(),
        submitted_at_ms: t.submitted_at_ms,
        started_at_ms: t.started_at_ms,
        finished_at_ms: t.finished_at_ms,
        attempt: t.attempt,
        module_sha256: t.spec.module_sha256.clone(),
        resources: t.spec.resources.clone(),
        message: t.message.clone(),
    }
}

impl Master {
    pub(super) fn list_agents(&self) -> Vec<AgentView> {
        let mut agents: Vec<AgentView> = self
            .state
            .agents
            .iter()
            .map(|(id, a)| {
                let free = self.alloc.agent_free(id).map(|f| f.total()).unwrap_or_default();
                AgentView {
                    agent_id: id.clone(),
                    info: a.info.clone(),
                    allocated: Some(a.info.resources.saturating_sub(&free)),
                    status: match (a.mode, a.tx.is_some()) {
                        (Mode::Active, true) => "active",
                        (Mode::Active, false) => "disconnected",
                    },
                    running_tasks: a.task_count() as u32,
                    registered_at_ms: a.registered_at_ms,
                }
            })
            .collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        agents
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

    /// Every framework, then the hosted ones that failed (with the reason).
    pub(super) fn list_frameworks(&self) -> Vec<FrameworkView> {
        let mut ids: Vec<&FrameworkId> = self.state.frameworks.iter().map(|(id, _)| id).collect();
        ids.sort();
        let mut out: Vec<FrameworkView> = ids.into_iter().filter_map(|id| self.framework_view(id)).collect();
        out.extend(self.state.frameworks.failed().cloned());
        out
    }

    pub(super) fn get_task(&self, id: &TaskId) -> Result<TaskView, Error> {
        self.state
            .tasks
            .get(id)
            .map(|t| task_view(id, t))
            .ok_or_else(|| Error::not_found(format!("no task {:?}; list tasks with `wasmos tasks`", id.as_str())))
    }

    pub(super) fn list_tasks(&self, f: &TaskFilter) -> Vec<TaskView> {
        self.state
            .tasks
            .in_order()
            .filter(|(_, t)| f.state.is_none_or(|s| t.state() == s))
            .filter(|(_, t)| f.framework_id.as_deref().is_none_or(|fw| t.framework.as_str() == fw))
            .take(f.limit.unwrap_or(usize::MAX))
            .map(|(id, t)| task_view(id, t))
            .collect()
    }

    pub(super) fn role_view(&self, role: &Role) -> RoleView {
        let stats = self.alloc.role_stats(role);
        let mut frameworks: Vec<FrameworkId> =
            self.state.frameworks.iter().filter(|(_, f)| &f.role == role).map(|(id, _)| id.clone()).collect();
        frameworks.sort();
        RoleView {
            role: role.clone(),
            weight: stats.as_ref().map(|s| s.weight).unwrap_or(1.0),
            allocated: stats.as_ref().map(|s| s.allocated.clone()),
            dominant_share: stats.as_ref().map(|s| s.share).unwrap_or(0.0),
            frameworks,
            quota: stats.as_ref().map(|s| s.quota.clone()),
            reserved: stats.as_ref().map(|s| s.reserved.clone()),
        }
    }

    pub(super) fn list_roles(&self) -> Vec<RoleView> {
        self.alloc.roles().iter().map(|r| self.role_view(r)).collect()
    }
}
