//! Compiled-module cache: in memory (`InstancePre`, LRU by count) and on disk
//! (serialized artifacts, LRU by bytes), both keyed by the SHA-256 of the bytes
//! the user gave us.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::Prepared;

/// SHA-256 of a module's bytes: the key of every cache and of artifacts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    pub fn of(bytes: &[u8]) -> ModuleHash {
        ModuleHash(Sha256::digest(bytes).into())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({})", &self.to_hex()[..12])
    }
}

/// Cache hit/miss counters (for tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub compiles: u64,
    pub evictions: u64,
}

#[derive(Debug)]
struct Lru {
    map: HashMap<ModuleHash, (Arc<Prepared>, u64)>,
    clock: u64,
    stats: CacheStats,
}

#[derive(Debug)]
pub(crate) struct ModuleCache {
    lru: Mutex<Lru>,
    max_entries: usize,
    dir: Option<PathBuf>,
    max_disk_bytes: u64,
    /// Distinguishes artifacts of engines with different settings/versions.
    engine_tag: String,
}

impl ModuleCache {
    pub(crate) fn new(
        engine: &wasmtime::Engine,
        max_entries: usize,
        dir: Option<PathBuf>,
        max_disk_bytes: u64,
    ) -> Self {
        #[allow(unused_mut)]
        let mut h = std::collections::hash_map::DefaultHasher::new();
        #[cfg(feature = "compiler")]
        engine.precompile_compatibility_hash().hash(&mut h);
        // Without a compiler the disk cache holds nothing (artifacts are the
        // agent's, under its work dir).
        #[cfg(not(feature = "compiler"))]
        let _ = engine;
        ModuleCache {
            lru: Mutex::new(Lru { map: HashMap::new(), clock: 0, stats: CacheStats::default() }),
            max_entries: max_entries.max(1),
            dir,
            max_disk_bytes,
            engine_tag: format!("{:016x}", h.finish()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    pub(crate) fn get(&self, hash: &ModuleHash) -> Option<Arc<Prepared>> {
        let mut lru = self.lock();
        lru.clock += 1;
        let now = lru.clock;
        let hit = lru.map.get_mut(hash).map(|(p, t)| {
            *t = now;
            p.clone()
        });
        if hit.is_some() {
            lru.stats.memory_hits += 1;
        }
        hit
    }

    pub(crate) fn insert(&self, prepared: Arc<Prepared>) {
        let mut lru = self.lock();
        lru.clock += 1;
        let now = lru.clock;
        lru.map.insert(prepared.hash, (prepared, now));
        while lru.map.len() > self.max_entries {
            let oldest = lru.map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    lru.map.remove(&k);
                    lru.stats.evictions += 1;
                }
                None => break,
            }
        }
    }

    pub(crate) fn note_compile(&self) {
        self.lock().stats.compiles += 1;
    }
    pub(crate) fn note_disk_hit(&self) {
        self.lock().stats.disk_hits += 1;
    }

    /// Where the serialized artifact for `hash` lives, if there is a disk cache.
    pub(crate) fn disk_path(&self, hash: &ModuleHash, component: bool) -> Option<PathBuf> {
        let kind = if component { "component" } else { "module" };
        self.dir.as_ref().map(|d| d.join(format!("{}-{}.{kind}.cwasm", hash.to_hex(), self.engine_tag)))
    }

    /// Marks a disk artifact as just used (LRU order is by modification time).
    pub(crate) fn touch(path: &Path) {
        if let Ok(f) = std::fs::File::options().append(true).open(path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Writes an artifact atomically (temp file + rename), then trims the disk
    /// cache to its byte budget. Failures only cost a later recompile.
    pub(crate) fn store(&self, path: &Path, bytes: &[u8]) {
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact"),
            std::process::id()
        ));
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_ok() {
            self.trim_disk(dir);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn trim_disk(&self, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
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
        for (_, len, path) in files {
            if total <= self.max_disk_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                self.lock().stats.evictions += 1;
            }
        }
    }
}
