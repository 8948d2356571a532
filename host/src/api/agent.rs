//! `wasmos.v1.AgentService`: registration, command stream, heartbeats, status updates.

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use wasmos_model::{AgentId, TaskId, TaskState};
use wasmos_proto::v1;

use super::convert::{agent_info_from_wire, command_to_wire, status_from_agent};
use super::{BoxStream, bad_id};
use crate::MasterHandle;
use crate::master::cmd::{Cmd, Principal};
use crate::master::types::RegisterAgent;

/// An agent id the master may not know: a malformed one is simply unknown.
fn known_agent(id: &str, then: &str) -> Result<AgentId, Status> {
    AgentId::new(id.to_string()).map_err(|_| Status::not_found(format!("unknown agent {id:?}; {then}")))
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for MasterHandle {
    async fn register(
        &self,
        r: Request<v1::RegisterAgentRequest>,
    ) -> Result<Response<v1::RegisterAgentResponse>, Status> {
        let req = r.into_inner();
        let info = req.info.ok_or_else(|| Status::invalid_argument("register without agent info; send AgentInfo"))?;
        let info = agent_info_from_wire(&info).map_err(Status::invalid_argument)?;
        let agent_id =
            if req.agent_id.is_empty() { None } else { Some(AgentId::new(req.agent_id).map_err(|e| bad_id("", e))?) };
        // An agent only reports tasks it launched, whose ids were valid.
        let running = req
            .running_tasks
            .into_iter()
            .filter_map(|t| {
                let state = wasmos_proto::state_from_wire(t.state).unwrap_or(TaskState::Running);
                Some((TaskId::new(t.task_id).ok()?, state))
            })
            .collect();
        let reg = RegisterAgent { agent_id, info, running };
        let r = self.request(Principal::Agent, |reply| Cmd::RegisterAgent(reg, reply)).await?;
        Ok(Response::new(v1::RegisterAgentResponse {
            agent_id: r.agent_id.to_string(),
            heartbeat_interval_ms: r.heartbeat_interval.as_millis() as u64,
        }))
    }

    type CommandsStream = BoxStream<v1::AgentCommand>;
    async fn commands(&self, r: Request<v1::AgentStreamRequest>) -> Result<Response<Self::CommandsStream>, Status> {
        let id = known_agent(&r.into_inner().agent_id, "register first")?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.request(Principal::Agent, |reply| Cmd::AttachAgent(id, tx, reply)).await?;
        let stream = UnboundedReceiverStream::new(rx).map(|c| Ok(command_to_wire(c)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update(&self, r: Request<v1::StatusUpdates>) -> Result<Response<v1::StatusAcks>, Status> {
        let u = r.into_inner();
        let agent = AgentId::new(u.agent_id).map_err(|e| bad_id("", e))?;
        // Every update is acknowledged, including one the master cannot read
        // (it would only be resent forever).
        let uuids: Vec<Vec<u8>> = u.updates.iter().map(|s| s.uuid.clone()).collect();
        let updates = u.updates.into_iter().filter_map(status_from_agent).collect();
        self.request(Principal::Agent, |reply| Cmd::AgentUpdates(agent, updates, reply)).await?;
        Ok(Response::new(v1::StatusAcks { uuids }))
    }

    async fn heartbeat(&self, r: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let id = known_agent(&r.into_inner().agent_id, "register again")?;
        self.request(Principal::Agent, |reply| Cmd::AgentHeartbeat(id, reply)).await?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }
}
