//! `wasmos.v1.Operator`: listings, roles, reservations, submissions, task
//! actions, hosted frameworks, and the watch stream.

use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};
use wasmos_model::{AgentId, Role, TaskId};
use wasmos_proto::v1;

use super::convert::*;
use super::{BoxStream, bad_id};
use crate::MasterHandle;
use crate::master::cmd::{Cmd, HostedJobs};
use crate::master::types::{Reservation, RoleUpdate, Submission, TaskAction, TaskFilter};

fn reservation(req: v1::ReserveRequest) -> Result<Reservation, Status> {
    let agent = AgentId::new(req.agent_id.clone()).map_err(|e| bad_id(&format!("agent id {:?}: ", req.agent_id), e))?;
    let role = Role::new(req.role.clone()).map_err(|e| bad_id(&format!("role {:?}: ", req.role), e))?;
    let resources = resources_of(req.resources.as_ref(), "resources: ").map_err(status_of)?;
    Ok(Reservation { agent, role, resources })
}

impl MasterHandle {
    async fn task_action(&self, r: Request<v1::TaskActionRequest>, action: TaskAction) -> Result<(), Status> {
        let id = TaskId::new(r.into_inner().task_id).map_err(|e| bad_id("", e))?;
        self.request(|reply| Cmd::TaskAction(id, action, reply)).await
    }
}

#[tonic::async_trait]
impl v1::operator_server::Operator for MasterHandle {
    async fn list_agents(&self, _: Request<v1::ListAgentsRequest>) -> Result<Response<v1::ListAgentsResponse>, Status> {
        let agents = self.request(Cmd::ListAgents).await?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents: agents.iter().map(agent_view_to_wire).collect(),
            ..Default::default()
        }))
    }

    async fn list_frameworks(
        &self,
        _: Request<v1::ListFrameworksRequest>,
    ) -> Result<Response<v1::ListFrameworksResponse>, Status> {
        let fws = self.request(Cmd::ListFrameworks).await?;
        Ok(Response::new(v1::ListFrameworksResponse {
            frameworks: fws.iter().map(framework_view_to_wire).collect(),
            ..Default::default()
        }))
    }

    async fn deploy_framework(&self, r: Request<v1::DeployRequest>) -> Result<Response<v1::DeployResponse>, Status> {
        let req = r.into_inner();
        let d = crate::hosted::Deploy {
            name: req.name,
            role: req.role,
            config: req.config,
            module_sha256: req.module_sha256,
        };
        let fw = crate::hosted::deploy(self, d, None).await.map_err(status_of)?;
        Ok(Response::new(v1::DeployResponse { framework_id: fw.to_string() }))
    }

    async fn remove_framework(
        &self,
        r: Request<v1::RemoveFrameworkRequest>,
    ) -> Result<Response<v1::RemoveFrameworkResponse>, Status> {
        crate::hosted::remove(self, &r.into_inner().name).await.map_err(status_of)?;
        Ok(Response::new(v1::RemoveFrameworkResponse {}))
    }

    async fn list_tasks(&self, r: Request<v1::ListTasksRequest>) -> Result<Response<v1::ListTasksResponse>, Status> {
        let req = r.into_inner();
        let state = match req.state {
            0 => None,
            s => Some(wasmos_proto::state_from_wire(s).ok_or_else(|| Status::invalid_argument("unknown task state"))?),
        };
        let filter = TaskFilter {
            state,
            framework_id: Some(req.framework_id).filter(|f| !f.is_empty()),
            limit: Some(req.limit as usize).filter(|l| *l > 0),
        };
        let tasks = self.request(|reply| Cmd::ListTasks(filter, reply)).await?;
        Ok(Response::new(v1::ListTasksResponse {
            tasks: tasks.iter().map(task_view_to_wire).collect(),
            ..Default::default()
        }))
    }

    async fn get_task(&self, r: Request<v1::GetTaskRequest>) -> Result<Response<v1::TaskSummary>, Status> {
        let id = r.into_inner().task_id;
        let tid = TaskId::new(id.clone())
            .map_err(|_| Status::not_found(format!("no task {id:?}; list tasks with `wasmos tasks`")))?;
        let t = self.request(|reply| Cmd::GetTask(tid, reply)).await?;
        Ok(Response::new(task_view_to_wire(&t)))
    }

    async fn list_roles(&self, _: Request<v1::ListRolesRequest>) -> Result<Response<v1::ListRolesResponse>, Status> {
        let roles = self.request(Cmd::ListRoles).await?;
        Ok(Response::new(v1::ListRolesResponse { roles: roles.iter().map(role_view_to_wire).collect() }))
    }

    async fn update_role(&self, r: Request<v1::UpdateRoleRequest>) -> Result<Response<v1::UpdateRoleResponse>, Status> {
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
        let u = RoleUpdate { role, weight: req.weight, clear_quota: req.clear_quota, guarantee, limit };
        let view = self.request(|reply| Cmd::UpdateRole(u, reply)).await?;
        Ok(Response::new(v1::UpdateRoleResponse { role: Some(role_view_to_wire(&view)) }))
    }

    async fn reserve(&self, r: Request<v1::ReserveRequest>) -> Result<Response<v1::ReserveResponse>, Status> {
        let res = reservation(r.into_inner())?;
        let now = self.request(|reply| Cmd::Reserve(res, reply)).await?;
        Ok(Response::new(v1::ReserveResponse { reserved: Some(wasmos_proto::resources_to_wire(&now)) }))
    }

    async fn unreserve(&self, r: Request<v1::ReserveRequest>) -> Result<Response<v1::ReserveResponse>, Status> {
        let res = reservation(r.into_inner())?;
        let now = self.request(|reply| Cmd::Unreserve(res, reply)).await?;
        Ok(Response::new(v1::ReserveResponse { reserved: Some(wasmos_proto::resources_to_wire(&now)) }))
    }

    async fn submit(&self, r: Request<v1::SubmitRequest>) -> Result<Response<v1::SubmitResponse>, Status> {
        let req = r.into_inner();
        let tpl = req.template.ok_or_else(|| Status::invalid_argument("submit without a task template"))?;
        let (template, bad) = wasmos_proto::spec_from_wire(&tpl);
        if req.framework.is_empty() || req.framework == "batch" {
            let s = Submission {
                template,
                resources_error: bad.map(|e| e.to_string()),
                count: req.count,
                priority: req.priority,
                constraints: attributes_from_wire(&req.constraints),
                max_attempts: req.max_attempts,
            };
            let ids = self.request(|reply| Cmd::Submit(s, reply)).await?;
            return Ok(Response::new(v1::SubmitResponse {
                task_ids: ids.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }));
        }
        // A job for a hosted framework: its scheduler's on-submit decides.
        let jobs =
            HostedJobs { template, count: req.count, priority: req.priority, estimated_fuel: req.estimated_fuel };
        let task_ids = crate::hosted::submit(self, &req.framework, jobs).await.map_err(status_of)?;
        Ok(Response::new(v1::SubmitResponse { task_ids, ..Default::default() }))
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
        let fw = r.into_inner().framework_id;
        let stream = BroadcastStream::new(self.watch.subscribe()).filter_map(move |ev| match ev {
            Ok(ev) => {
                let keep = fw.is_empty() || watch_framework(&ev).is_none_or(|f| f == fw);
                keep.then(|| Ok(watch_to_wire(&ev)))
            }
            Err(_) => Some(Err(Status::data_loss("watcher fell behind and missed events; watch again and re-list"))),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
