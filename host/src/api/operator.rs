//! `wasmos.v1.Operator`: listings, roles, reservations, submissions, task
//! actions, hosted frameworks, and the watch stream.

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use wasmos_model::{AgentId, Role, TaskId};
use wasmos_proto::v1;

use super::convert::*;
use super::{BoxStream, bad_id};
use crate::MasterHandle;
use crate::auth::sees;
use crate::master::cmd::{Cmd, HostedJobs, Maintenance, NewToken, Principal, TokenView};
use crate::master::types::OutputView;
use crate::master::types::{
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PAGE_SCAN_BUDGET, Page, Reservation, RoleUpdate, Submission, TaskAction,
    TaskFilter, TaskView,
};
use wasmos_security::grant::Action;

fn reservation(req: v1::ReserveRequest) -> Result<Reservation, Status> {
    let agent = AgentId::new(req.agent_id.clone()).map_err(|e| bad_id(&format!("agent id {:?}: ", req.agent_id), e))?;
    let role = Role::new(req.role.clone()).map_err(|e| bad_id(&format!("role {:?}: ", req.role), e))?;
    let resources = resources_of(req.resources.as_ref(), "resources: ").map_err(status_of)?;
    Ok(Reservation { agent, role, resources })
}

impl MasterHandle {
    async fn task_action(&self, r: Request<v1::TaskActionRequest>, action: TaskAction) -> Result<(), Status> {
        let who = self.caller(&r, "task_action")?;
        let id = TaskId::new(r.into_inner().task_id).map_err(|e| bad_id("", e))?;
        self.request(who, |reply| Cmd::TaskAction(id, action, reply)).await
    }
}

#[tonic::async_trait]
impl v1::operator_server::Operator for MasterHandle {
    async fn list_agents(&self, r: Request<v1::ListAgentsRequest>) -> Result<Response<v1::ListAgentsResponse>, Status> {
        let who = self.caller(&r, "list_agents")?;
        let req = r.into_inner();
        let after = Some(req.page_token).filter(|t| !t.is_empty());
        let (agents, next) = self.request(who, |reply| Cmd::ListAgents(after, page_size(req.page_size), reply)).await?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents: agents.iter().map(agent_view_to_wire).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_frameworks(
        &self,
        r: Request<v1::ListFrameworksRequest>,
    ) -> Result<Response<v1::ListFrameworksResponse>, Status> {
        let who = self.caller(&r, "list_frameworks")?;
        let req = r.into_inner();
        let after = Some(req.page_token).filter(|t| !t.is_empty());
        let (fws, next) =
            self.request(who.clone(), |reply| Cmd::ListFrameworks(after, page_size(req.page_size), reply)).await?;
        Ok(Response::new(v1::ListFrameworksResponse {
            frameworks: fws.iter().filter(|f| sees(&who, &f.role)).map(framework_view_to_wire).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn deploy_framework(&self, r: Request<v1::DeployRequest>) -> Result<Response<v1::DeployResponse>, Status> {
        let who = self.caller(&r, "deploy_framework")?;
        let req = r.into_inner();
        self.check(&who, Action::DeployFramework, &req.name, &req.role)?;
        let d = crate::hosted::Deploy {
            name: req.name,
            role: req.role,
            config: req.config,
            module_sha256: req.module_sha256,
            signature: req.signature,
        };
        let fw = crate::hosted::deploy(self, d, None).await.map_err(status_of)?;
        Ok(Response::new(v1::DeployResponse { framework_id: fw.to_string() }))
    }

    async fn remove_framework(
        &self,
        r: Request<v1::RemoveFrameworkRequest>,
    ) -> Result<Response<v1::RemoveFrameworkResponse>, Status> {
        let who = self.caller(&r, "remove_framework")?;
        crate::hosted::remove(self, who, &r.into_inner().name).await.map_err(status_of)?;
        Ok(Response::new(v1::RemoveFrameworkResponse {}))
    }

    async fn list_tasks(&self, r: Request<v1::ListTasksRequest>) -> Result<Response<v1::ListTasksResponse>, Status> {
        let who = self.caller(&r, "list_tasks")?;
        let req = r.into_inner();
        let state = match req.state {
            0 => None,
            s => Some(wasmos_proto::state_from_wire(s).ok_or_else(|| Status::invalid_argument("unknown task state"))?),
        };
        let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
        let filter = TaskFilter {
            state,
            framework_id: nonempty(req.framework_id),
            role: nonempty(req.role),
            agent_id: nonempty(req.agent_id),
            name_prefix: nonempty(req.name_prefix),
            id_prefix: nonempty(req.id_prefix),
            submitted_after_ms: Some(req.submitted_after_ms).filter(|t| *t > 0),
            submitted_before_ms: Some(req.submitted_before_ms).filter(|t| *t > 0),
        };
        let after: u64 = match req.page_token.as_str() {
            "" => 0,
            t => t.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token {t:?} is not one this master gave; start from the first page"
                ))
            })?,
        };
        // Older clients set only `limit`.
        let limit = page_size(if req.page_size == 0 { req.limit } else { req.page_size });
        // Taken first: whatever happens after the listing has a later seq.
        let watch_seq = self.watch.current();
        let f = filter.clone();
        let memory = self.request(who.clone(), |reply| Cmd::ListTasks(f, after, limit, reply)).await?;
        let history = match &self.history {
            Some(h) => {
                let h = h.clone();
                tokio::task::spawn_blocking(move || h.page(after, &filter, limit, PAGE_SCAN_BUDGET))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| Status::internal(e.to_string()))?
            }
            None => Page::default(),
        };
        let (tasks, next) = merge_pages(memory, history, limit);
        // A token sees only the roles its view grants name (a page may come
        // out shorter; the next one goes on from the same position).
        Ok(Response::new(v1::ListTasksResponse {
            tasks: tasks.iter().filter(|t| sees(&who, &t.role)).map(task_view_to_wire).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
            watch_seq,
        }))
    }

    async fn get_task(&self, r: Request<v1::GetTaskRequest>) -> Result<Response<v1::TaskSummary>, Status> {
        let who = self.caller(&r, "get_task")?;
        let id = r.into_inner().task_id;
        let tid = TaskId::new(id.clone())
            .map_err(|_| Status::not_found(format!("no task {id:?}; list tasks with `wasmos tasks`")))?;
        let missing = match self.request(who.clone(), |reply| Cmd::GetTask(tid, reply)).await {
            Ok(t) => return Ok(Response::new(task_view_to_wire(&t))),
            Err(s) if s.code() == tonic::Code::NotFound => s,
            Err(s) => return Err(s),
        };
        // It may have left memory: the registry keeps its history.
        self.task_in_history(&who, id, missing).await.map(|t| Response::new(task_view_to_wire(&t)))
    }

    async fn task_output(&self, r: Request<v1::TaskOutputRequest>) -> Result<Response<v1::TaskOutputResponse>, Status> {
        let who = self.caller(&r, "task_output")?;
        let req = r.into_inner();
        let id = req.task_id.clone();
        let tid = TaskId::new(id.clone())
            .map_err(|_| Status::not_found(format!("no task {id:?}; list tasks with `wasmos tasks`")))?;
        let (stderr, offset, max) = (req.stderr, req.offset, req.max_bytes);
        let missing = match self.request(who.clone(), |reply| Cmd::TaskOutput(tid, stderr, offset, max, reply)).await {
            Ok(o) => {
                return Ok(Response::new(v1::TaskOutputResponse {
                    data: o.data,
                    next_offset: o.next_offset,
                    running: o.running,
                    truncated: o.truncated,
                }));
            }
            Err(s) if s.code() == tonic::Code::NotFound => s,
            Err(s) => return Err(s),
        };
        // An ended task that left memory: its outcome from the history.
        let t = self.task_in_history(&who, id, missing).await?;
        let o = OutputView::of_outcome(t.outcome.as_deref(), stderr, offset, max, false);
        Ok(Response::new(v1::TaskOutputResponse {
            data: o.data,
            next_offset: o.next_offset,
            running: false,
            truncated: o.truncated,
        }))
    }

    async fn list_roles(&self, r: Request<v1::ListRolesRequest>) -> Result<Response<v1::ListRolesResponse>, Status> {
        let who = self.caller(&r, "list_roles")?;
        let roles = self.request(who, Cmd::ListRoles).await?;
        Ok(Response::new(v1::ListRolesResponse { roles: roles.iter().map(role_view_to_wire).collect() }))
    }

    async fn overview(&self, r: Request<v1::OverviewRequest>) -> Result<Response<v1::OverviewResponse>, Status> {
        let who = self.caller(&r, "overview")?;
        let watch_seq = self.watch.current();
        let o = self.request(who, Cmd::Overview).await?;
        let res = |x: &wasmos_model::Resources| Some(wasmos_proto::resources_to_wire(x));
        Ok(Response::new(v1::OverviewResponse {
            cluster: self.cluster().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            tasks_by_state: o.tasks_by_state.iter().map(|(s, n)| (s.as_str().to_string(), *n)).collect(),
            agents_active: o.agents_active,
            agents_disconnected: o.agents_disconnected,
            agents_draining: o.agents_draining,
            agents_drained: o.agents_drained,
            agents_ineligible: o.agents_ineligible,
            frameworks: o.frameworks,
            total: res(&o.total),
            allocated: res(&o.allocated),
            offered: res(&o.offered),
            idle: res(&o.total.saturating_sub(&o.allocated)),
            allocation_cycles: o.cycles,
            last_cycle_ms: o.last_cycle_ms,
            mean_cycle_ms: o.mean_cycle_ms,
            watch_seq,
            uptime_ms: o.uptime_ms,
        }))
    }

    async fn update_role(&self, r: Request<v1::UpdateRoleRequest>) -> Result<Response<v1::UpdateRoleResponse>, Status> {
        let who = self.caller(&r, "update_role")?;
        let req = r.into_inner();
        let role = Role::new(req.role.clone()).map_err(|e| bad_id(&format!("role {:?}: ", req.role), e))?;
        let guarantee = match &req.quota_guarantee {
            Some(g) => Some(resources_of(Some(g), "quota guarantee: ").map_err(status_of)?),
            None => None,
        };
        let limit = match &req.quota_limit {
            Some(l) => Some(limit_from_wire(Some(l)).map_err(Status::invalid_argument)?),
            None => None,
        };
        let signers = (req.clear_signers || !req.require_signed.is_empty()).then_some(req.require_signed);
        let u = RoleUpdate { role, weight: req.weight, clear_quota: req.clear_quota, guarantee, limit, signers };
        let view = self.request(who, |reply| Cmd::UpdateRole(u, reply)).await?;
        Ok(Response::new(v1::UpdateRoleResponse { role: Some(role_view_to_wire(&view)) }))
    }

    async fn reserve(&self, r: Request<v1::ReserveRequest>) -> Result<Response<v1::ReserveResponse>, Status> {
        let who = self.caller(&r, "reserve")?;
        let res = reservation(r.into_inner())?;
        let now = self.request(who, |reply| Cmd::Reserve(res, reply)).await?;
        Ok(Response::new(v1::ReserveResponse { reserved: Some(wasmos_proto::resources_to_wire(&now)) }))
    }

    async fn unreserve(&self, r: Request<v1::ReserveRequest>) -> Result<Response<v1::ReserveResponse>, Status> {
        let who = self.caller(&r, "unreserve")?;
        let res = reservation(r.into_inner())?;
        let now = self.request(who, |reply| Cmd::Unreserve(res, reply)).await?;
        Ok(Response::new(v1::ReserveResponse { reserved: Some(wasmos_proto::resources_to_wire(&now)) }))
    }

    async fn submit(&self, r: Request<v1::SubmitRequest>) -> Result<Response<v1::SubmitResponse>, Status> {
        let who = self.caller(&r, "submit")?;
        let req = r.into_inner();
        let role = match req.role.as_str() {
            "" => None,
            r => Some(Role::new(r).map_err(|e| bad_id(&format!("role {r:?}: "), e))?),
        };
        let hosted = !(req.framework.is_empty() || req.framework == "batch");
        if hosted && role.is_some() {
            return Err(Status::invalid_argument(format!(
                "--role is for the batch framework; the tasks of hosted framework {:?} run in its own role (leave --role out)",
                req.framework
            )));
        }
        let tpl = req.template.ok_or_else(|| Status::invalid_argument("submit without a task template"))?;
        let (template, bad) = wasmos_proto::spec_from_wire(&tpl);
        let watch_seq = self.watch.current();
        if !hosted {
            let s = Submission {
                role,
                template,
                resources_error: bad.map(|e| e.to_string()),
                count: req.count,
                priority: req.priority,
                constraints: attributes_from_wire(&req.constraints),
                max_attempts: req.max_attempts,
                signature: req.signature.clone(),
            };
            let ids = self.request(who, |reply| Cmd::Submit(s, reply)).await?;
            return Ok(Response::new(v1::SubmitResponse {
                task_ids: ids.iter().map(|t| t.to_string()).collect(),
                watch_seq,
            }));
        }
        // A job for a hosted framework: its scheduler's on-submit decides.
        let jobs = HostedJobs {
            template,
            count: req.count,
            priority: req.priority,
            estimated_fuel: req.estimated_fuel,
            signature: req.signature,
        };
        let task_ids = crate::hosted::submit(self, who, &req.framework, jobs).await.map_err(status_of)?;
        Ok(Response::new(v1::SubmitResponse { task_ids, watch_seq }))
    }

    async fn kill_task(&self, r: Request<v1::TaskActionRequest>) -> Result<Response<v1::TaskActionResponse>, Status> {
        self.task_action(r, TaskAction::Kill).await?;
        Ok(Response::new(v1::TaskActionResponse {}))
    }
    async fn pause_task(&self, r: Request<v1::TaskActionRequest>) -> Result<Response<v1::TaskActionResponse>, Status> {
        self.task_action(r, TaskAction::Pause).await?;
        Ok(Response::new(v1::TaskActionResponse {}))
    }
    async fn resume_task(&self, r: Request<v1::TaskActionRequest>) -> Result<Response<v1::TaskActionResponse>, Status> {
        self.task_action(r, TaskAction::Resume).await?;
        Ok(Response::new(v1::TaskActionResponse {}))
    }

    type WatchStream = BoxStream<v1::WatchEvent>;
    async fn watch(&self, r: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.caller(&r, "watch")?;
        crate::auth::allow_somewhere(&who, Action::View).map_err(status_of)?;
        let req = r.into_inner();
        let (fw, from) = (req.framework_id, req.from);
        // A token that does not see every role sees the events of the roles
        // it sees (a task's role, which for the batch framework is the one
        // it was submitted to); agents' events are for the others.
        let restricted = matches!(&who, Principal::Token(c) if !c.grants.allows_everywhere(Action::View));
        let hub = self.watch.clone();
        let (backlog, rx) = hub.follow(from).map_err(gone)?;
        // The backlog, then live events; a watcher that falls behind the live
        // buffer catches up from the ring, and fails only past it.
        let who2 = who.clone();
        let stream = async_stream(hub, backlog, rx, from.unwrap_or(0)).filter_map(move |ev| match ev {
            Ok(ev) => {
                let seen = !restricted || watch_role(&ev.1).is_some_and(|r| sees(&who2, r));
                let keep = seen && (fw.is_empty() || watch_framework(&ev.1).is_none_or(|f| f == fw));
                keep.then(|| Ok(v1::WatchEvent { seq: ev.0, ..watch_to_wire(&ev.1) }))
            }
            Err(g) => Some(Err(gone(g))),
        });
        Ok(Response::new(super::until_revoked(&who, Box::pin(stream))))
    }

    async fn create_token(
        &self,
        r: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let who = self.caller(&r, "token_create")?;
        let req = r.into_inner();
        let t = NewToken {
            name: req.name,
            grants: req.grants,
            ttl: std::time::Duration::from_millis(req.ttl_ms),
            agent: req.agent,
            uses: req.uses,
        };
        let (secret, view) = self.request(who, |reply| Cmd::CreateToken(t, reply)).await?;
        Ok(Response::new(v1::CreateTokenResponse { secret, token: Some(token_to_wire(&view)) }))
    }

    async fn list_tokens(&self, r: Request<v1::ListTokensRequest>) -> Result<Response<v1::ListTokensResponse>, Status> {
        let who = self.caller(&r, "token_list")?;
        let tokens = self.request(who, Cmd::ListTokens).await?;
        Ok(Response::new(v1::ListTokensResponse { tokens: tokens.iter().map(token_to_wire).collect() }))
    }

    async fn revoke_token(
        &self,
        r: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let who = self.caller(&r, "token_revoke")?;
        let name = r.into_inner().name;
        self.request(who, |reply| Cmd::RevokeToken(name, reply)).await?;
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }

    async fn drain_agent(&self, r: Request<v1::DrainAgentRequest>) -> Result<Response<v1::AgentSummary>, Status> {
        let who = self.caller(&r, "agent_drain")?;
        let req = r.into_inner();
        let deadline = req.deadline_ms.map(std::time::Duration::from_millis);
        let op = Maintenance::Drain { deadline, force: req.force, migrate: req.migrate };
        self.maintain(who, &req.agent_id, op).await
    }

    async fn undrain_agent(&self, r: Request<v1::AgentRequest>) -> Result<Response<v1::AgentSummary>, Status> {
        let who = self.caller(&r, "agent_undrain")?;
        self.maintain(who, &r.into_inner().agent_id, Maintenance::Undrain).await
    }

    async fn set_eligibility(&self, r: Request<v1::EligibilityRequest>) -> Result<Response<v1::AgentSummary>, Status> {
        let who = self.caller(&r, "agent_eligibility")?;
        let req = r.into_inner();
        self.maintain(who, &req.agent_id, Maintenance::Eligible(req.eligible)).await
    }

    async fn mark_gone(&self, r: Request<v1::AgentRequest>) -> Result<Response<v1::AgentSummary>, Status> {
        let who = self.caller(&r, "agent_mark_gone")?;
        self.maintain(who, &r.into_inner().agent_id, Maintenance::MarkGone).await
    }
}

impl MasterHandle {
    async fn maintain(
        &self,
        who: Principal,
        agent: &str,
        op: Maintenance,
    ) -> Result<Response<v1::AgentSummary>, Status> {
        let id = AgentId::new(agent.to_string()).map_err(|e| {
            Status::invalid_argument(format!("agent id {agent:?}: {e}; list agents with `wasmos agents`"))
        })?;
        let view = self.request(who, |reply| Cmd::Maintain(id, op, reply)).await?;
        Ok(Response::new(agent_view_to_wire(&view)))
    }
}

impl MasterHandle {
    /// A task that left memory, from the registry's history, if `who` may
    /// view its role; `missing` otherwise.
    async fn task_in_history(&self, who: &Principal, id: String, missing: Status) -> Result<TaskView, Status> {
        let Some(h) = self.history.clone() else { return Err(missing) };
        let found = tokio::task::spawn_blocking(move || h.get(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        found.filter(|t| sees(who, &t.role)).ok_or(missing)
    }
}

fn token_to_wire(t: &TokenView) -> v1::TokenInfo {
    v1::TokenInfo {
        name: t.name.clone(),
        grants: t.grants.clone(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        created_by: t.created_by.clone(),
        kind: t.kind.to_string(),
        uses_left: t.uses_left.unwrap_or(0),
        agent_id: t.agent_id.as_ref().map(|a| a.to_string()).unwrap_or_default(),
    }
}

fn gone(g: crate::watch::Gone) -> Status {
    let mut s = Status::data_loss(format!(
        "the events after the one asked for are no longer held (the oldest held is {}; the master restarted, or the watcher fell too far behind); re-list and watch from the listing's watch_seq",
        g.oldest
    ));
    if let Ok(v) = g.oldest.to_string().parse() {
        s.metadata_mut().insert(wasmos_proto::WATCH_OLDEST_HELD, v);
    }
    s
}

/// Backlog then live events, in sequence order without repeats; on a lagging
/// live buffer, catch up from the ring.
fn async_stream(
    hub: std::sync::Arc<crate::watch::WatchHub>,
    backlog: Vec<crate::watch::Sequenced>,
    rx: tokio::sync::broadcast::Receiver<crate::watch::Sequenced>,
    from: u64,
) -> impl tokio_stream::Stream<Item = Result<crate::watch::Sequenced, crate::watch::Gone>> {
    use tokio::sync::broadcast::error::RecvError;
    struct S {
        hub: std::sync::Arc<crate::watch::WatchHub>,
        pending: std::collections::VecDeque<crate::watch::Sequenced>,
        rx: tokio::sync::broadcast::Receiver<crate::watch::Sequenced>,
        last: u64,
        done: bool,
    }
    let s = S { hub, pending: backlog.into(), rx, last: from, done: false };
    futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            if let Some(e) = s.pending.pop_front() {
                if e.0 <= s.last {
                    continue;
                }
                s.last = e.0;
                return Some((Ok(e), s));
            }
            match s.rx.recv().await {
                Ok(e) => s.pending.push_back(e),
                Err(RecvError::Lagged(_)) => match s.hub.follow(Some(s.last)) {
                    Ok((backlog, rx)) => {
                        s.pending = backlog.into();
                        s.rx = rx;
                    }
                    Err(g) => {
                        s.done = true;
                        return Some((Err(g), s));
                    }
                },
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

/// A page size as asked: 0 is the default, more than the maximum is the maximum.
fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// One page from the master's memory and one from the registry's history,
/// both after the same position (see [`Page::merge`]).
fn merge_pages(memory: Page<TaskView>, history: Page<TaskView>, limit: usize) -> (Vec<TaskView>, Option<u64>) {
    let p = Page::merge(memory, history, limit);
    (p.rows, p.next)
}

#[cfg(test)]
mod tests {
    use wasmos_model::{FrameworkId, Resources, TaskState};

    use super::*;

    fn t(seq: u64, id: &str, state: TaskState) -> TaskView {
        TaskView {
            seq,
            task_id: TaskId::new(id).unwrap(),
            name: id.into(),
            framework_id: FrameworkId::new("batch").unwrap(),
            role: "batch".into(),
            agent_id: None,
            state,
            outcome: None,
            submitted_at_ms: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            attempt: 1,
            module_sha256: String::new(),
            resources: Resources::new(),
            message: String::new(),
            events: vec![],
            spec: None,
            usage: None,
            limits: None,
            health: None,
        }
    }

    fn ids(rows: &[TaskView]) -> Vec<u64> {
        rows.iter().map(|t| t.seq).collect()
    }

    #[test]
    fn pages_merge_up_to_the_nearer_end() {
        use TaskState::*;
        // memory holds 2, 5, 9 (stopped after 9); history 1, 5 (stale), 7 (stopped after 7)
        let memory = Page { rows: vec![t(2, "b", Running), t(5, "e", Finished), t(9, "i", Running)], next: Some(9) };
        let history = Page { rows: vec![t(1, "a", Finished), t(5, "e", Lost), t(7, "g", Finished)], next: Some(7) };
        let (rows, next) = merge_pages(memory, history, 10);
        // cut at 7: 9 waits for the next page; "e" once, from memory
        assert_eq!((ids(&rows), next), (vec![1, 2, 5, 7], Some(7)));
        assert_eq!(rows[2].state, Finished);
        // both complete: no next page
        let (rows, next) = merge_pages(Page { rows: vec![t(3, "c", Running)], next: None }, Page::default(), 10);
        assert_eq!((ids(&rows), next), (vec![3], None));
        // more than the limit: the page ends at its last row
        let memory = Page { rows: vec![t(1, "a", Running), t(2, "b", Running), t(3, "c", Running)], next: None };
        let (rows, next) = merge_pages(memory, Page::default(), 2);
        assert_eq!((ids(&rows), next), (vec![1, 2], Some(2)));
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5), 5);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);
    }
}
