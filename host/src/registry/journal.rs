//! The journal: what a batch of commands changed, as registry records. The
//! tables mark their own changed rows (each by its documented rule); this
//! collects them once per batch into one [`Changes`].

use wasmos_model::FrameworkId;

use super::{AgentRecord, Changes, FrameworkRecord, TaskRecord};
use crate::batch::Batch;
use crate::master::State;
use crate::master::frameworks::Kind;
use crate::master::roles::Roles;

/// Drains every table's changed rows into records. With `build` false (the
/// in-memory registry) the marks are only dropped.
pub(crate) fn collect(
    state: &mut State,
    roles: &mut Roles,
    batch: &Batch,
    batch_id: &FrameworkId,
    next_id: u64,
    build: bool,
) -> Changes {
    let tc = state.tasks.take_changed();
    let frameworks = state.frameworks.take_changed();
    let agents = state.agents.take_changed();
    let hosted_jobs = state.frameworks.take_changed_jobs();
    let (role_changes, reservations) = roles.take_changed();
    if !build {
        return Changes::default();
    }
    let mut changes = Changes {
        next_id,
        submissions: tc.new_submissions,
        submission_ended: tc.ended_counts,
        closed_submissions: tc.closed_submissions,
        roles: role_changes,
        reservations,
        hosted_jobs,
        ..Default::default()
    };
    for id in tc.tasks {
        let Some(t) = state.tasks.get(&id) else { continue };
        let b = batch.tasks.get(&id);
        // A batch task's spec is its submission's; an ended task needs none.
        let spec = (&t.framework != batch_id && !t.state().is_terminal()).then(|| t.spec.clone());
        changes.tasks.push((
            id.clone(),
            TaskRecord {
                view: crate::master::types::TaskView { spec: None, ..crate::master::views::task_view(&id, t, true) },
                spec,
                priority: b.map(|b| b.priority).unwrap_or(0),
                constraints: b.map(|b| b.constraints.clone()).unwrap_or_default(),
                max_attempts: b.map(|b| b.max_attempts).unwrap_or(0),
                applied_uuids: t.applied().to_vec(),
            },
        ));
    }
    for id in frameworks {
        let rec = state.frameworks.get(&id).filter(|_| &id != batch_id).map(|f| FrameworkRecord {
            id: id.clone(),
            name: f.name.clone(),
            role: f.role.clone(),
            hosted: match &f.kind {
                Kind::Hosted(h) => Some(h.info.clone()),
                _ => None,
            },
            failover_timeout: f.failover_timeout,
        });
        changes.frameworks.push((id, rec));
    }
    for id in agents {
        let rec = state
            .agents
            .get(&id)
            .map(|a| AgentRecord {
                id: id.clone(),
                info: a.info.clone(),
                registered_at_ms: a.registered_at_ms,
                mode: a.mode,
                eligible: a.eligible,
            })
            .or_else(|| state.agents.parked(&id).cloned());
        changes.agents.push((id, rec));
    }
    changes
}

#[cfg(test)]
mod tests {
    //! The records a submit → launch → finish produces, batch by batch.
    use super::*;

    #[test]
    fn nothing_changed_is_empty() {
        let mut state = State::default();
        let mut roles = Roles::default();
        let c = collect(&mut state, &mut roles, &Batch::default(), &FrameworkId::new("batch").unwrap(), 3, true);
        assert!(c.is_empty());
        assert_eq!(c.next_id, 3);
    }
}
