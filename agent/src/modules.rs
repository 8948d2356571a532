//! Modules by hash: read from the work dir (`artifacts/<sha256>.wasm`) or
//! downloaded from the master (retried while it is away), checked against
//! their hash, kept on disk, and prepared (compiled) once per agent even when
//! many launches ask for the same module at the same moment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use wasmos_proto::v1;
use wasmos_proto::v1::artifacts_client::ArtifactsClient;
use wasmos_sandbox::{Prepared, Sandbox};

use crate::FETCH_PATIENCE;
use crate::link::Backoff;

/// One module per hash, fetched and compiled once even when many launches
/// ask for it at the same moment.
type ModuleCell = Arc<OnceCell<Result<Arc<Prepared>, String>>>;

pub(crate) struct Modules {
    /// `<work-dir>/artifacts`: downloaded modules, kept across restarts.
    dir: PathBuf,
    channel: crate::link::SharedChannel,
    sandbox: Sandbox,
    max_backoff: Duration,
    cells: Mutex<HashMap<String, ModuleCell>>,
}

impl Modules {
    pub fn new(
        work_dir: &Path,
        channel: crate::link::SharedChannel,
        sandbox: Sandbox,
        max_backoff: Duration,
    ) -> Modules {
        Modules { dir: work_dir.join("artifacts"), channel, sandbox, max_backoff, cells: Mutex::new(HashMap::new()) }
    }

    /// The module for `sha`: from memory, from the work dir, or downloaded once.
    pub async fn get(&self, sha: &str) -> Result<Arc<Prepared>, String> {
        let cell = {
            let mut m = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(sha.to_string()).or_default().clone()
        };
        let r = cell.get_or_init(|| self.fetch_and_prepare(sha.to_string())).await.clone();
        if r.is_err() {
            // Do not remember failures: a later launch may succeed.
            self.cells.lock().unwrap_or_else(|e| e.into_inner()).remove(sha);
        }
        r
    }

    async fn download(&self, sha: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut client = ArtifactsClient::new(self.channel.read().unwrap_or_else(|e| e.into_inner()).clone())
            .max_decoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES);
        let mut stream = client.download(v1::DownloadRequest { sha256: sha.to_string() }).await?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }

    async fn fetch_and_prepare(&self, sha: String) -> Result<Arc<Prepared>, String> {
        let path = self.dir.join(format!("{sha}.wasm"));
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) if hex::encode(Sha256::digest(&b)) == sha => b,
            _ => {
                // The master may be restarting: retry transient failures with
                // backoff for up to FETCH_PATIENCE; a missing module fails at once.
                let started = std::time::Instant::now();
                let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
                let bytes = loop {
                    match self.download(&sha).await {
                        Ok(b) => break b,
                        Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::InvalidArgument => {
                            return Err(format!("cannot download module {sha}: {}", s.message()));
                        }
                        Err(s) if started.elapsed() >= FETCH_PATIENCE => {
                            return Err(format!(
                                "cannot download module {sha} within {FETCH_PATIENCE:?}: {}",
                                s.message()
                            ));
                        }
                        Err(_) => backoff.wait().await,
                    }
                };
                let got = hex::encode(Sha256::digest(&bytes));
                if got != sha {
                    return Err(format!("downloaded module hashes to {got}, not {sha}; the artifact store is damaged"));
                }
                if let Some(dir) = path.parent() {
                    let _ = tokio::fs::create_dir_all(dir).await;
                    let tmp = dir.join(format!(".{sha}.tmp"));
                    if tokio::fs::write(&tmp, &bytes).await.is_ok() {
                        let _ = tokio::fs::rename(&tmp, &path).await;
                    }
                }
                bytes
            }
        };
        self.sandbox.prepare_async(bytes.into()).await.map_err(|e| e.to_string())
    }
}
