//! Modules by hash: read from the work dir (`artifacts/<sha256>.wasm`) or
//! downloaded from the master (retried while it is away), checked against
//! their hash, kept on disk, and prepared (compiled) once per agent even when
//! many launches ask for the same module at the same moment.
//!
//! An agent without a compiler (`wasmos-edge`) downloads instead what the
//! master compiled for its engine profile, one artifact per lane
//! (`artifacts/compiled/<sha>-<profile>-<lane>.cwasm`), gzip-compressed on
//! the wire and resumable: an interrupted download continues from the bytes
//! already in its `.part` file, if the master's artifact still hashes the same.

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
        let mut stream =
            client.download(v1::DownloadRequest { sha256: sha.to_string(), offset: 0 }).await?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }

    /// Makes a prepared module runnable on the metered lane: compiled here,
    /// or its metered artifact downloaded from the master.
    pub async fn ensure_metered(&self, p: &Arc<Prepared>) -> Result<(), String> {
        if self.sandbox.compiles() {
            return self.sandbox.prepare_metered(p).await.map_err(|e| e.to_string());
        }
        if self.sandbox.has_metered(p) {
            return Ok(());
        }
        let sha = p.hash.to_hex();
        let art = self.artifact(&sha, true).await?;
        let (sandbox, p) = (self.sandbox.clone(), p.clone());
        tokio::task::spawn_blocking(move || sandbox.load_precompiled_metered(&p, &art))
            .await
            .map_err(|e| format!("loading the artifact crashed: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn fetch_precompiled(&self, sha: String) -> Result<Arc<Prepared>, String> {
        let hash = wasmos_sandbox::ModuleHash(
            hex::decode(&sha).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("bad module hash {sha:?}"))?,
        );
        let art = self.artifact(&sha, false).await?;
        let sandbox = self.sandbox.clone();
        tokio::task::spawn_blocking(move || sandbox.load_precompiled(hash, &art))
            .await
            .map_err(|e| format!("loading the artifact crashed: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// The artifact of `sha` for this agent's profile and lane: from the
    /// work dir, or downloaded (resuming a part downloaded before).
    async fn artifact(&self, sha: &str, metered: bool) -> Result<Vec<u8>, String> {
        let profile = self.sandbox.profile();
        let lane = if metered { "metered" } else { "plain" };
        let dir = self.dir.join("compiled");
        let path = dir.join(format!("{sha}-{}-{lane}.cwasm", profile.short_hash()));
        if let Ok(b) = tokio::fs::read(&path).await {
            return Ok(b);
        }
        let _ = tokio::fs::create_dir_all(&dir).await;
        let part = path.with_extension("part");
        let started = std::time::Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        loop {
            match self.download_part(sha, &profile.key(), metered, &part).await {
                Ok(Some(whole_sha)) => {
                    let bytes = tokio::fs::read(&part).await.map_err(|e| format!("reading {}: {e}", part.display()))?;
                    if hex::encode(Sha256::digest(&bytes)) == whole_sha {
                        let _ = tokio::fs::rename(&part, &path).await;
                        let _ = tokio::fs::remove_file(part.with_extension("sha")).await;
                        return Ok(bytes);
                    }
                    // The master's artifact changed under a resumed download: start over.
                    let _ = tokio::fs::remove_file(&part).await;
                }
                Ok(None) => {}
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ) =>
                {
                    return Err(format!("cannot get module {sha} compiled for this agent: {}", s.message()));
                }
                Err(s) if started.elapsed() >= FETCH_PATIENCE => {
                    return Err(format!(
                        "cannot download the artifact of {sha} within {FETCH_PATIENCE:?}: {}",
                        s.message()
                    ));
                }
                Err(_) => {}
            }
            backoff.wait().await;
        }
    }

    /// One download call into `part`, from the bytes it already holds.
    /// `Ok(Some(sha))` when the whole (hashing to `sha`) is there.
    async fn download_part(
        &self,
        sha: &str,
        profile: &str,
        metered: bool,
        part: &Path,
    ) -> Result<Option<String>, tonic::Status> {
        use tokio::io::AsyncWriteExt;
        let sha_file = part.with_extension("sha");
        let have = tokio::fs::metadata(part).await.map(|m| m.len()).unwrap_or(0);
        let expect = tokio::fs::read_to_string(&sha_file).await.unwrap_or_default();
        let mut client = ArtifactsClient::new(self.channel.read().unwrap_or_else(|e| e.into_inner()).clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES);
        let req = v1::DownloadCompiledRequest {
            sha256: sha.to_string(),
            engine_profile: profile.to_string(),
            metered,
            offset: if expect.is_empty() { 0 } else { have },
            expect_sha256: expect.clone(),
        };
        let mut stream = client.download_compiled(req).await?.into_inner();
        let io = |e: std::io::Error| tonic::Status::unavailable(format!("writing {}: {e}", part.display()));
        let Some(first) = stream.message().await? else {
            return Err(tonic::Status::unavailable("the master sent nothing"));
        };
        let (whole, total) = (first.sha256.clone(), first.total);
        let mut file = if first.offset == 0 {
            tokio::fs::write(&sha_file, &whole).await.map_err(io)?;
            tokio::fs::File::create(part).await.map_err(io)?
        } else {
            if first.offset != have || whole != expect {
                let _ = tokio::fs::remove_file(&sha_file).await;
                return Err(tonic::Status::unavailable("the master resumed at another offset; starting over"));
            }
            eprintln!(
                "wasmos agent: resuming the download of module {}'s artifact at {have} of {total} bytes",
                &sha[..12.min(sha.len())]
            );
            tokio::fs::OpenOptions::new().append(true).open(part).await.map_err(io)?
        };
        let mut got = first.offset;
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            file.write_all(&c.data).await.map_err(io)?;
            got += c.data.len() as u64;
            chunk = match stream.message().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = file.flush().await;
                    return Err(e);
                }
            };
        }
        file.flush().await.map_err(io)?;
        Ok((got >= total).then_some(whole))
    }

    async fn fetch_and_prepare(&self, sha: String) -> Result<Arc<Prepared>, String> {
        if !self.sandbox.compiles() {
            return self.fetch_precompiled(sha).await;
        }
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
