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
use crate::master::cmd::{Cmd, JoinRequest, Principal};
use crate::master::types::RegisterAgent;

/// An agent id the master may not know: a malformed one is simply unknown.
fn known_agent(id: &str, then: &str) -> Result<AgentId, Status> {
    AgentId::new(id.to_string()).map_err(|_| Status::not_found(format!("unknown agent {id:?}; {then}")))
}

/// Most running tasks' use taken from one heartbeat.
pub(crate) const MAX_USAGE: usize = 1000;

impl MasterHandle {
    /// The agent a request comes from: the agent its client certificate
    /// names (TLS), or whose secret it carries (`--insecure`).
    pub(crate) fn agent_caller<T>(&self, r: &Request<T>, method: &str) -> Result<Principal, Status> {
        let found = match &self.tls {
            Some(t) => r.peer_certs().and_then(|certs| {
                certs.first().and_then(|c| wasmos_security::pki::agent_of_cert(c.as_ref(), &t.pki.cluster))
            }),
            None => r
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|s| wasmos_security::token::parse_bearer(s.trim()).ok())
                .and_then(|h| self.auth.get(&h))
                .and_then(|c| c.agent.as_ref().map(|a| a.to_string())),
        };
        match found.and_then(|id| AgentId::new(id).ok()) {
            Some(id) if !self.auth.admits_agent(&id) => {
                let why = format!(
                    "agent {id} was removed from the cluster (its identity was revoked); to come back, delete the agent's work dir identity and join again with a new token"
                );
                self.audit.refused(&format!("agent:{id}"), method, "", "", &why);
                Err(Status::unauthenticated(why))
            }
            Some(id) => Ok(Principal::Agent(id)),
            None => {
                let why = "agents need an identity: join with `wasmos agent --join TOKEN` (a token from `wasmos token create NAME --agent`)";
                self.audit.refused("unauthenticated", method, "", "", why);
                Err(Status::unauthenticated(why))
            }
        }
    }
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for MasterHandle {
    async fn join(&self, r: Request<v1::JoinRequest>) -> Result<Response<v1::JoinResponse>, Status> {
        let req = r.into_inner();
        let token_sha256 = wasmos_security::token::parse_join(req.token.trim())
            .map_err(|e| {
                self.audit.refused("unauthenticated", "agent_join", "", "", &e.to_string());
                Status::unauthenticated(e.to_string())
            })?
            .0;
        // The CSR is checked before a use of the token is spent.
        if self.tls.is_some() {
            wasmos_security::pki::check_csr(&req.csr_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let over_tls = self.tls.is_some();
        let joined =
            self.request(Principal::Master, |reply| Cmd::Join(JoinRequest { token_sha256, over_tls }, reply)).await?;
        let cert_pem = match &self.tls {
            Some(t) => t
                .pki
                .sign_agent(&req.csr_pem, joined.agent_id.as_str(), self.agent_cert_ttl)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
            None => String::new(),
        };
        Ok(Response::new(v1::JoinResponse {
            agent_id: joined.agent_id.to_string(),
            cert_pem,
            agent_secret: joined.secret.unwrap_or_default(),
        }))
    }

    async fn renew(&self, r: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        let who = self.agent_caller(&r, "agent_renew")?;
        let req = r.into_inner();
        let (Principal::Agent(me), Some(t)) = (&who, &self.tls) else {
            return Err(Status::failed_precondition("this master serves plaintext: there is no certificate to renew"));
        };
        if me.as_str() != req.agent_id {
            let why = format!("agent {me} may renew only its own certificate, not {}'s", req.agent_id);
            self.audit.refused(&who.label(), "agent_renew", &req.agent_id, "", &why);
            return Err(Status::permission_denied(why));
        }
        let cert_pem = t
            .pki
            .sign_agent(&req.csr_pem, me.as_str(), self.agent_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(v1::RenewResponse { cert_pem }))
    }

    async fn register(
        &self,
        r: Request<v1::RegisterAgentRequest>,
    ) -> Result<Response<v1::RegisterAgentResponse>, Status> {
        let who = self.agent_caller(&r, "agent_register")?;
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
                Some((TaskId::new(t.task_id).ok()?, state, t.attempt))
            })
            .collect();
        let reg = RegisterAgent { agent_id, info, running };
        let r = self.request(who, |reply| Cmd::RegisterAgent(reg, reply)).await?;
        Ok(Response::new(v1::RegisterAgentResponse {
            agent_id: r.agent_id.to_string(),
            heartbeat_interval_ms: r.heartbeat_interval.as_millis() as u64,
            epoch: self.epoch,
        }))
    }

    type CommandsStream = BoxStream<v1::AgentCommand>;
    async fn commands(&self, r: Request<v1::AgentStreamRequest>) -> Result<Response<Self::CommandsStream>, Status> {
        let who = self.agent_caller(&r, "agent_commands")?;
        let id = known_agent(&r.into_inner().agent_id, "register first")?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.request(who, |reply| Cmd::AttachAgent(id, tx, reply)).await?;
        let epoch = self.epoch;
        let stream = UnboundedReceiverStream::new(rx).map(move |c| {
            let mut c = command_to_wire(c);
            c.epoch = epoch;
            Ok(c)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update(&self, r: Request<v1::StatusUpdates>) -> Result<Response<v1::StatusAcks>, Status> {
        let who = self.agent_caller(&r, "agent_update")?;
        let u = r.into_inner();
        let agent = AgentId::new(u.agent_id).map_err(|e| bad_id("", e))?;
        // Every update is acknowledged, including one the master cannot read
        // (it would only be resent forever).
        let uuids: Vec<Vec<u8>> = u.updates.iter().map(|s| s.uuid.clone()).collect();
        let updates = u.updates.into_iter().filter_map(status_from_agent).collect();
        self.request(who, |reply| Cmd::AgentUpdates(agent, updates, reply)).await?;
        Ok(Response::new(v1::StatusAcks { uuids }))
    }

    async fn output(&self, r: Request<v1::TaskOutputChunk>) -> Result<Response<v1::TaskOutputAck>, Status> {
        let who = self.agent_caller(&r, "agent_output")?;
        let req = r.into_inner();
        let id = known_agent(&req.agent_id, "register again")?;
        let out = crate::master::types::OutputView {
            data: req.data,
            next_offset: req.next_offset,
            running: req.running,
            truncated: false,
        };
        self.request(who, |reply| Cmd::AgentOutput(id, req.request_id, out, reply)).await?;
        Ok(Response::new(v1::TaskOutputAck {}))
    }

    async fn heartbeat(&self, r: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let who = self.agent_caller(&r, "agent_heartbeat")?;
        let req = r.into_inner();
        let id = known_agent(&req.agent_id, "register again")?;
        let s = req.stats.unwrap_or_default();
        let stats = crate::metrics::AgentStats {
            tasks_running: s.tasks_running,
            tasks_paused: s.tasks_paused,
            mem_used_bytes: s.mem_used_bytes,
            cache_memory_hits: s.module_cache_memory_hits,
            cache_disk_hits: s.module_cache_disk_hits,
            compiles: s.module_compiles,
            cache_evictions: s.module_cache_evictions,
            fuel_consumed: s.fuel_consumed,
            tasks_ended: s.tasks_ended,
            tasks_starting: s.tasks_starting,
            slots_in_use: s.slots_in_use,
            slots: s.slots,
            cpu_waiting: s.cpu_waiting,
            cpu_ns: s.cpu_ns,
            updates_dropped: s.updates_dropped,
            usage: req
                .usage
                .into_iter()
                .take(MAX_USAGE)
                .map(|u| (u.task_id, u.fuel_used, u.mem_bytes, u.cpu_ns))
                .collect(),
        };
        self.request(who, |reply| Cmd::AgentHeartbeat(id, stats, reply)).await?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }
}
