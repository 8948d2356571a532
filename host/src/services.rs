//! The gRPC services: thin translations from RPCs to master commands.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{BroadcastStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use wasmos_proto::v1;

use crate::artifacts::{ArtifactError, ArtifactStore};
use crate::master::{Cmd, Reply, TaskAction};

/// A cheap handle on the master's event loop.
#[derive(Clone)]
pub struct MasterHandle {
    pub(crate) tx: mpsc::Sender<Cmd>,
    pub(crate) watch: tokio::sync::broadcast::Sender<v1::WatchEvent>,
    pub(crate) artifacts: Arc<ArtifactStore>,
    pub(crate) hosted: Arc<crate::hosted::Hosted>,
    pub(crate) sandbox: wasmos_sandbox::Sandbox,
    pub(crate) scheduler_limits: wasmos_sandbox::SchedulerLimits,
    pub(crate) max_hosted: u32,
    pub(crate) next_job: Arc<std::sync::atomic::AtomicU64>,
}

impl MasterHandle {
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Status::unavailable("the master is shutting down; retry shortly"))?;
        rx.await.map_err(|_| Status::internal("the master dropped the request"))?
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn artifact_status(e: ArtifactError) -> Status {
    match e {
        ArtifactError::Missing(_) => Status::not_found(e.to_string()),
        ArtifactError::Io(_) => Status::internal(e.to_string()),
        ArtifactError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for MasterHandle {
    async fn register(
        &self,
        r: Request<v1::RegisterAgentRequest>,
    ) -> Result<Response<v1::RegisterAgentResponse>, Status> {
        let req = r.into_inner();
        self.ask(|reply| Cmd::RegisterAgent(req, reply)).await.map(Response::new)
    }

    type CommandsStream = BoxStream<v1::AgentCommand>;
    async fn commands(&self, r: Request<v1::AgentStreamRequest>) -> Result<Response<Self::CommandsStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = r.into_inner().agent_id;
        self.ask(|reply| Cmd::AgentCommands(id, tx, reply)).await?;
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn update(&self, r: Request<v1::StatusUpdates>) -> Result<Response<v1::StatusAcks>, Status> {
        let u = r.into_inner();
        self.ask(|reply| Cmd::AgentUpdates(u, reply)).await.map(Response::new)
    }

    async fn heartbeat(&self, r: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let id = r.into_inner().agent_id;
        self.ask(|reply| Cmd::AgentHeartbeat(id, reply)).await?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }
}

#[tonic::async_trait]
impl v1::scheduler_server::Scheduler for MasterHandle {
    type SubscribeStream = BoxStream<v1::Event>;
    async fn subscribe(&self, r: Request<v1::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let info =
            r.into_inner().framework.ok_or_else(|| Status::invalid_argument("subscribe without framework info"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.ask(|reply| Cmd::Subscribe(info, tx, None, reply)).await?;
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn call(&self, r: Request<v1::Call>) -> Result<Response<v1::CallResponse>, Status> {
        let call = r.into_inner();
        self.ask(|reply| Cmd::Call(call, reply)).await?;
        Ok(Response::new(v1::CallResponse {}))
    }
}

#[tonic::async_trait]
impl v1::operator_server::Operator for MasterHandle {
    async fn list_agents(&self, _: Request<v1::ListAgentsRequest>) -> Result<Response<v1::ListAgentsResponse>, Status> {
        self.ask(Cmd::ListAgents).await.map(Response::new)
    }
    async fn list_frameworks(
        &self,
        _: Request<v1::ListFrameworksRequest>,
    ) -> Result<Response<v1::ListFrameworksResponse>, Status> {
        let mut list = self.ask(Cmd::ListFrameworks).await?;
        // Hosted frameworks: add their scheduler's health; failed ones are no
        // longer in the master but stay listed with the reason.
        for (name, h) in self.hosted.lock().iter() {
            let st = h.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match list.frameworks.iter_mut().find(|f| f.framework_id == st.framework_id) {
                Some(f) => {
                    f.callbacks = st.callbacks;
                    f.callback_failures = st.failures;
                    if st.status == "failed" {
                        f.status = st.status;
                        f.last_error = st.last_error;
                    }
                }
                None => list.frameworks.push(v1::FrameworkSummary {
                    framework_id: st.framework_id,
                    name: name.clone(),
                    role: st.role,
                    allocated: None,
                    active_tasks: 0,
                    connected: false,
                    hosted: true,
                    status: if st.status == "active" { "removed".into() } else { st.status },
                    last_error: st.last_error,
                    callbacks: st.callbacks,
                    callback_failures: st.failures,
                }),
            }
        }
        Ok(Response::new(list))
    }

    async fn deploy_framework(&self, r: Request<v1::DeployRequest>) -> Result<Response<v1::DeployResponse>, Status> {
        crate::hosted::deploy(self, r.into_inner()).await.map(Response::new)
    }

    async fn remove_framework(
        &self,
        r: Request<v1::RemoveFrameworkRequest>,
    ) -> Result<Response<v1::RemoveFrameworkResponse>, Status> {
        crate::hosted::remove(self, &r.into_inner().name).await?;
        Ok(Response::new(v1::RemoveFrameworkResponse {}))
    }
    async fn list_tasks(&self, r: Request<v1::ListTasksRequest>) -> Result<Response<v1::ListTasksResponse>, Status> {
        let req = r.into_inner();
        self.ask(|reply| Cmd::ListTasks(req, reply)).await.map(Response::new)
    }
    async fn get_task(&self, r: Request<v1::GetTaskRequest>) -> Result<Response<v1::TaskSummary>, Status> {
        let id = r.into_inner().task_id;
        self.ask(|reply| Cmd::GetTask(id, reply)).await.map(Response::new)
    }
    async fn list_roles(&self, _: Request<v1::ListRolesRequest>) -> Result<Response<v1::ListRolesResponse>, Status> {
        self.ask(Cmd::ListRoles).await.map(Response::new)
    }
    async fn update_role(&self, r: Request<v1::UpdateRoleRequest>) -> Result<Response<v1::UpdateRoleResponse>, Status> {
        let req = r.into_inner();
        self.ask(|reply| Cmd::UpdateRole(req, reply)).await.map(Response::new)
    }
    async fn reserve(&self, r: Request<v1::ReserveRequest>) -> Result<Response<v1::ReserveResponse>, Status> {
        let req = r.into_inner();
        self.ask(|reply| Cmd::Reserve(req, true, reply)).await.map(Response::new)
    }
    async fn unreserve(&self, r: Request<v1::ReserveRequest>) -> Result<Response<v1::ReserveResponse>, Status> {
        let req = r.into_inner();
        self.ask(|reply| Cmd::Reserve(req, false, reply)).await.map(Response::new)
    }
    async fn submit(&self, r: Request<v1::SubmitRequest>) -> Result<Response<v1::SubmitResponse>, Status> {
        let req = r.into_inner();
        if req.framework.is_empty() || req.framework == "batch" {
            return self.ask(|reply| Cmd::Submit(req, reply)).await.map(Response::new);
        }
        // A job for a hosted framework: its scheduler's on-submit decides.
        let tpl = req.template.ok_or_else(|| Status::invalid_argument("submit without a task template"))?;
        if self.artifacts.size(&tpl.module_sha256).is_none() {
            return Err(Status::failed_precondition(format!(
                "module {:?} is not in the artifact store; upload it first",
                tpl.module_sha256
            )));
        }
        let jobs = {
            let map = self.hosted.lock();
            let h = map.get(&req.framework).ok_or_else(|| {
                Status::not_found(format!(
                    "no hosted framework {:?}; deploy one with `wasmos framework deploy` or list them with `wasmos framework ls`",
                    req.framework
                ))
            })?;
            let st = h.stats.lock().unwrap_or_else(|e| e.into_inner());
            if st.status != "active" {
                return Err(Status::failed_precondition(format!(
                    "framework {} is {}: {}; redeploy it",
                    req.framework, st.status, st.last_error
                )));
            }
            h.jobs.clone().ok_or_else(|| Status::unavailable("framework is shutting down"))?
        };
        let mut ids = Vec::new();
        for _ in 0..req.count.max(1) {
            let n = self.next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = format!("{}-job-{n}", req.framework);
            let job = crate::hosted::job_from_template(id.clone(), &tpl, req.priority, req.estimated_fuel);
            jobs.send(job).map_err(|_| Status::unavailable("the framework's scheduler stopped; redeploy it"))?;
            ids.push(id);
        }
        Ok(Response::new(v1::SubmitResponse { task_ids: ids }))
    }
    async fn kill_task(&self, r: Request<v1::TaskActionRequest>) -> Result<Response<v1::TaskActionResponse>, Status> {
        let id = r.into_inner().task_id;
        self.ask(|reply| Cmd::TaskAction(id, TaskAction::Kill, reply)).await?;
        Ok(Response::new(v1::TaskActionResponse {}))
    }
    async fn pause_task(&self, r: Request<v1::TaskActionRequest>) -> Result<Response<v1::TaskActionResponse>, Status> {
        let id = r.into_inner().task_id;
        self.ask(|reply| Cmd::TaskAction(id, TaskAction::Pause, reply)).await?;
        Ok(Response::new(v1::TaskActionResponse {}))
    }
    async fn resume_task(&self, r: Request<v1::TaskActionRequest>) -> Result<Response<v1::TaskActionResponse>, Status> {
        let id = r.into_inner().task_id;
        self.ask(|reply| Cmd::TaskAction(id, TaskAction::Resume, reply)).await?;
        Ok(Response::new(v1::TaskActionResponse {}))
    }

    type WatchStream = BoxStream<v1::WatchEvent>;
    async fn watch(&self, r: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let fw = r.into_inner().framework_id;
        let stream = BroadcastStream::new(self.watch.subscribe()).filter_map(move |ev| match ev {
            Ok(ev) => {
                let keep = fw.is_empty()
                    || match &ev.event {
                        Some(v1::watch_event::Event::Task(t)) => t.framework_id == fw,
                        _ => true,
                    };
                keep.then_some(Ok(ev))
            }
            Err(_) => Some(Err(Status::data_loss("watcher fell behind and missed events; watch again and re-list"))),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl v1::artifacts_server::Artifacts for MasterHandle {
    async fn upload(&self, r: Request<Streaming<v1::Chunk>>) -> Result<Response<v1::UploadResponse>, Status> {
        let mut stream = r.into_inner();
        let max = self.artifacts.max_bytes();
        let mut expected = String::new();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if expected.is_empty() && !chunk.sha256.is_empty() {
                expected = chunk.sha256;
            }
            if (bytes.len() + chunk.data.len()) as u64 > max {
                return Err(artifact_status(ArtifactError::TooLarge {
                    size: (bytes.len() + chunk.data.len()) as u64,
                    max,
                }));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let store = self.artifacts.clone();
        let size = bytes.len() as u64;
        let (sha256, existed) = tokio::task::spawn_blocking(move || store.put(Some(&expected), &bytes))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(artifact_status)?;
        Ok(Response::new(v1::UploadResponse { sha256, size, existed }))
    }

    async fn has(&self, r: Request<v1::HasRequest>) -> Result<Response<v1::HasResponse>, Status> {
        let h = r.into_inner().sha256;
        crate::artifacts::check_hash(&h).map_err(artifact_status)?;
        let size = self.artifacts.size(&h);
        Ok(Response::new(v1::HasResponse { present: size.is_some(), size: size.unwrap_or(0) }))
    }

    type DownloadStream = BoxStream<v1::Chunk>;
    async fn download(&self, r: Request<v1::DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let h = r.into_inner().sha256;
        let store = self.artifacts.clone();
        let hash = h.clone();
        let bytes = tokio::task::spawn_blocking(move || store.get(&hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(artifact_status)?;
        let chunks: Vec<Result<v1::Chunk, Status>> = bytes
            .chunks(wasmos_proto::CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| Ok(v1::Chunk { sha256: if i == 0 { h.clone() } else { String::new() }, data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
