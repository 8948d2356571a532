//! `wasmos.v1.Artifacts`: modules by SHA-256, streamed in chunks.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use wasmos_proto::v1;

use super::BoxStream;
use crate::MasterHandle;
use crate::artifacts::ArtifactError;
use wasmos_security::grant::Action;

fn artifact_status(e: ArtifactError) -> Status {
    match e {
        ArtifactError::Missing(_) => Status::not_found(e.to_string()),
        ArtifactError::Io(_) => Status::internal(e.to_string()),
        ArtifactError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

impl MasterHandle {
    /// Modules are read by agents (to run them) and by any token holder.
    fn agent_or_token<T>(&self, r: &Request<T>, method: &str) -> Result<(), Status> {
        if r.metadata().get("authorization").is_some() {
            // A token, or (plaintext) an agent's secret.
            if self.auth.authenticate(r.metadata()).is_ok() {
                return Ok(());
            }
        }
        self.agent_caller(r, method).map(|_| ())
    }
}

#[tonic::async_trait]
impl v1::artifacts_server::Artifacts for MasterHandle {
    async fn upload(&self, r: Request<Streaming<v1::Chunk>>) -> Result<Response<v1::UploadResponse>, Status> {
        // Any token that may submit or deploy somewhere may upload a module
        // (running it is checked per role).
        let who = self.caller(&r, "upload")?;
        let may = [Action::Submit, Action::DeployFramework, Action::RegisterFramework]
            .into_iter()
            .any(|a| crate::auth::allow_somewhere(&who, a).is_ok());
        if !may {
            let e = crate::auth::allow_somewhere(&who, Action::Submit).unwrap_err();
            self.audit.refused(&who.label(), "upload", "", "", &e.message);
            return Err(super::convert::status_of(e));
        }
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
        self.agent_or_token(&r, "artifact_has")?;
        let h = r.into_inner().sha256;
        crate::artifacts::check_hash(&h).map_err(artifact_status)?;
        let size = self.artifacts.size(&h);
        Ok(Response::new(v1::HasResponse { present: size.is_some(), size: size.unwrap_or(0) }))
    }

    type DownloadStream = BoxStream<v1::Chunk>;
    async fn download(&self, r: Request<v1::DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        self.agent_or_token(&r, "artifact_download")?;
        let req = r.into_inner();
        let store = self.artifacts.clone();
        let hash = req.sha256.clone();
        let bytes = tokio::task::spawn_blocking(move || store.get(&hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(artifact_status)?;
        Ok(Response::new(chunks(Arc::new(bytes), req.sha256, req.offset)))
    }

    type DownloadCompiledStream = BoxStream<v1::Chunk>;
    async fn download_compiled(
        &self,
        r: Request<v1::DownloadCompiledRequest>,
    ) -> Result<Response<Self::DownloadCompiledStream>, Status> {
        self.agent_or_token(&r, "artifact_download")?;
        let req = r.into_inner();
        crate::artifacts::check_hash(&req.sha256).map_err(artifact_status)?;
        let profile = wasmos_sandbox::EngineProfile::parse(&req.engine_profile).map_err(Status::invalid_argument)?;
        wasmos_sandbox::Precompiler::check(&profile).map_err(Status::failed_precondition)?;
        if self.artifacts.size(&req.sha256).is_none() {
            return Err(artifact_status(ArtifactError::Missing(req.sha256)));
        }
        let art = self.compiled.get(&self.artifacts, &req.sha256, &profile, req.metered).await.map_err(|e| {
            Status::invalid_argument(format!("cannot compile module {} for this agent: {e}", req.sha256))
        })?;
        // Resume only where the artifact is still the one the agent has a part of.
        let offset = if req.expect_sha256 == art.sha256 { req.offset } else { 0 };
        let sent = (art.bytes.len() as u64).saturating_sub(offset);
        self.compiled.stats.bytes_sent.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        let sha = art.sha256.clone();
        Ok(Response::new(chunks(art, sha, offset)))
    }
}

/// `bytes` from `offset` in chunks; the first names the whole's hash and size.
fn chunks<T: AsRef<[u8]> + Send + Sync + 'static>(whole: Arc<T>, sha256: String, offset: u64) -> BoxStream<v1::Chunk> {
    let len = (*whole).as_ref().len();
    let total = len as u64;
    let start = offset.min(total) as usize;
    let n = (len - start).div_ceil(wasmos_proto::CHUNK_BYTES).max(1);
    let it = (0..n).map(move |i| {
        let from = start + i * wasmos_proto::CHUNK_BYTES;
        let to = (from + wasmos_proto::CHUNK_BYTES).min(len);
        Ok(v1::Chunk {
            sha256: if i == 0 { sha256.clone() } else { String::new() },
            data: (*whole).as_ref()[from..to].to_vec(),
            offset: from as u64,
            total: if i == 0 { total } else { 0 },
        })
    });
    Box::pin(tokio_stream::iter(it))
}
