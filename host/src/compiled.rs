//! The master's compile service for agents without a compiler (`wasmos-edge`):
//! a module is compiled once per (module, engine profile, lane) — on the
//! first launch on an agent of that kind — and the artifact is kept in
//! `state_dir/compiled` (LRU by bytes, `--compiled-cache-bytes`) and served
//! to every agent of the kind. Compiles run on blocking threads, at most
//! `--compile-workers` at once; concurrent asks for one artifact share one
//! compile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore};
use wasmos_sandbox::{EngineProfile, Precompiler};

use crate::artifacts::ArtifactStore;

/// Default `--compiled-cache-bytes`.
pub const DEFAULT_COMPILED_CACHE_BYTES: u64 = 2 << 30;
/// Default `--compile-workers`.
pub const DEFAULT_COMPILE_WORKERS: usize = 1;

/// One compiled artifact, in wasmos's envelope.
#[derive(Debug)]
pub struct Compiled {
    pub bytes: Vec<u8>,
    /// SHA-256 (hex) of `bytes`: a resumed download continues only if it still matches.
    pub sha256: String,
}

impl AsRef<[u8]> for Compiled {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

type Cell = Arc<OnceCell<Result<Arc<Compiled>, String>>>;

/// Counters for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct CompileStats {
    pub compiles: AtomicU64,
    pub cache_hits: AtomicU64,
    pub failures: AtomicU64,
    /// Artifact bytes sent to agents (before transport compression).
    pub bytes_sent: AtomicU64,
}

pub struct CompiledCache {
    dir: PathBuf,
    max_bytes: u64,
    pre: Precompiler,
    workers: Arc<Semaphore>,
    inflight: Mutex<HashMap<String, Cell>>,
    pub stats: CompileStats,
}

impl std::fmt::Debug for CompiledCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCache").field("dir", &self.dir).field("max_bytes", &self.max_bytes).finish()
    }
}

impl CompiledCache {
    pub fn new(dir: PathBuf, max_bytes: u64, workers: usize) -> CompiledCache {
        CompiledCache {
            dir,
            max_bytes,
            pre: Precompiler::default(),
            workers: Arc::new(Semaphore::new(workers.max(1))),
            inflight: Mutex::new(HashMap::new()),
            stats: CompileStats::default(),
        }
    }

    fn path(&self, module: &str, profile: &EngineProfile, metered: bool) -> PathBuf {
        let lane = if metered { "metered" } else { "plain" };
        self.dir.join(format!("{module}-{}-{lane}.cwasm", profile.short_hash()))
    }

    /// The artifact of `module` for `profile`'s `metered` or plain lane: from
    /// the disk cache, or compiled now (once, however many ask at once).
    pub async fn get(
        self: &Arc<Self>,
        store: &Arc<ArtifactStore>,
        module: &str,
        profile: &EngineProfile,
        metered: bool,
    ) -> Result<Arc<Compiled>, String> {
        let path = self.path(module, profile, metered);
        let key = path.to_string_lossy().into_owned();
        let cell = self.inflight.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let r = cell
            .get_or_init(|| {
                let (this, store, module, profile) = (self.clone(), store.clone(), module.to_string(), profile.clone());
                async move {
                    let permit = this.workers.clone().acquire_owned().await.map_err(|e| e.to_string())?;
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        this.load_or_compile(&store, &module, &profile, metered, &path)
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("compiling crashed: {e}")))
                }
            })
            .await
            .clone();
        // Served from disk next time; a failure is not remembered.
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        if r.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn load_or_compile(
        &self,
        store: &ArtifactStore,
        module: &str,
        profile: &EngineProfile,
        metered: bool,
        path: &Path,
    ) -> Result<Arc<Compiled>, String> {
        if let Ok(bytes) = std::fs::read(path) {
            touch(path);
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            let sha256 = hex::encode(Sha256::digest(&bytes));
            return Ok(Arc::new(Compiled { bytes, sha256 }));
        }
        let wasm = store.get(module).map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        let bytes = self.pre.precompile(profile, metered, module, &wasm).map_err(|e| match e {
            wasmos_sandbox::SandboxError::Config(m)
            | wasmos_sandbox::SandboxError::InvalidModule(m)
            | wasmos_sandbox::SandboxError::UnsupportedImport(m) => m,
        })?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "wasmos master: compiled module {} for {} ({} lane): {} bytes of wasm -> {} in {:?}",
            &module[..12.min(module.len())],
            profile.target,
            if metered { "metered" } else { "plain" },
            wasm.len(),
            bytes.len(),
            started.elapsed()
        );
        self.store(path, &bytes);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Arc::new(Compiled { bytes, sha256 }))
    }

    /// Writes atomically, then trims the directory to `max_bytes` (least
    /// recently used first). A failure costs only a later recompile.
    fn store(&self, path: &Path, bytes: &[u8]) {
        if std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, p) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}
