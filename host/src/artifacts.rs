//! Content-addressed module store: `<dir>/<sha256>.wasm`, written atomically.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// Default [`crate::MasterConfig::max_module_bytes`]: 64 MiB.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
    #[error("module is {size} bytes, over the {max}-byte limit; shrink it or raise --max-module-size")]
    TooLarge { size: u64, max: u64 },
    #[error("upload hash mismatch: the client said {expected} but the bytes hash to {actual}; upload again")]
    HashMismatch { expected: String, actual: String },
    #[error("{0:?} is not a sha256 in hex; give 64 hex digits")]
    BadHash(String),
    #[error(
        "upload is not a wasm module (it does not start with the wasm magic 00 61 73 6d); build it for wasm32-wasip1 or wasm32-wasip2"
    )]
    NotWasm,
    #[error("no module with sha256 {0}; upload it first")]
    Missing(String),
    #[error("artifact store i/o: {0}")]
    Io(String),
}

pub fn check_hash(s: &str) -> Result<(), ArtifactError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(ArtifactError::BadHash(s.to_string()))
    }
}

/// Where modules live beside the local directory when several masters
/// share them (etcd): every upload is written there before it is
/// acknowledged, a module missing here is read from there, and collected
/// modules are deleted there too. Calls block (never on the event loop).
pub(crate) trait SharedBlobs: Send + Sync {
    /// Every module held there, with its size.
    fn list(&self) -> Result<Vec<(String, u64)>, String>;
    fn put(&self, hash: &str, bytes: &[u8]) -> Result<(), String>;
    /// `None`: not there.
    fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, String>;
    fn delete(&self, hashes: &[String]);
}

pub struct ArtifactStore {
    dir: PathBuf,
    shared: Option<Box<dyn SharedBlobs>>,
    max_bytes: u64,
    /// Modules by hash: their size and when they were last used (uploaded,
    /// downloaded, or referenced when the master last looked).
    index: RwLock<HashMap<String, (u64, SystemTime)>>,
    /// Numbers each upload's temp file: concurrent uploads of one module
    /// each write their own and rename it into place.
    uploads: AtomicU64,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore").field("dir", &self.dir).field("shared", &self.shared.is_some()).finish()
    }
}

impl ArtifactStore {
    /// Opens (creating) `dir` and indexes the modules already in it (the
    /// directory is the index: it survives restarts as it is).
    pub fn open(dir: PathBuf, max_bytes: u64) -> Result<ArtifactStore, ArtifactError> {
        std::fs::create_dir_all(&dir).map_err(|e| ArtifactError::Io(format!("creating {}: {e}", dir.display())))?;
        let mut index = HashMap::new();
        for e in std::fs::read_dir(&dir).map_err(|e| ArtifactError::Io(e.to_string()))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // An upload cut short by a crash: never acknowledged.
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if let Some(hash) = name.strip_suffix(".wasm")
                && check_hash(hash).is_ok()
            {
                // Last used, as far as a fresh start can tell: when written.
                let m = e.metadata().ok();
                let at = m.as_ref().and_then(|m| m.modified().ok()).unwrap_or_else(SystemTime::now);
                index.insert(hash.to_string(), (m.map(|m| m.len()).unwrap_or(0), at));
            }
        }
        Ok(ArtifactStore { dir, shared: None, max_bytes, index: RwLock::new(index), uploads: AtomicU64::new(0) })
    }

    /// [`ArtifactStore::open`], with the modules `shared` holds indexed too
    /// (read from there when first used).
    pub(crate) fn open_shared(
        dir: PathBuf,
        max_bytes: u64,
        shared: Box<dyn SharedBlobs>,
    ) -> Result<ArtifactStore, ArtifactError> {
        let mut store = ArtifactStore::open(dir, max_bytes)?;
        let held = shared.list().map_err(ArtifactError::Io)?;
        {
            // What etcd holds is the store; files here are a cache (one only
            // here was collected from etcd, or predates it: uploaded again).
            let mut idx = store.index.write().unwrap_or_else(|e| e.into_inner());
            let local = std::mem::take(&mut *idx);
            for (hash, size) in held {
                let at = local.get(&hash).map_or_else(SystemTime::now, |e| e.1);
                idx.insert(hash, (size, at));
            }
        }
        store.shared = Some(shared);
        Ok(store)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn size(&self, hash: &str) -> Option<u64> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).get(hash).map(|e| e.0)
    }

    /// Notes a use of a module (it is kept at least `ttl` from now).
    fn touch(&self, hash: &str) {
        if let Some(e) = self.index.write().unwrap_or_else(|e| e.into_inner()).get_mut(hash) {
            e.1 = SystemTime::now();
        }
    }

    /// How many modules the store holds, and their bytes.
    pub fn usage(&self) -> (usize, u64) {
        let idx = self.index.read().unwrap_or_else(|e| e.into_inner());
        (idx.len(), idx.values().map(|e| e.0).sum())
    }

    /// Deletes the modules not in `used` that nobody used for `ttl`; the
    /// ones in `used` count as used now. Returns how many went.
    pub fn collect(&self, used: &HashSet<String>, ttl: Duration) -> usize {
        let now = SystemTime::now();
        let gone: Vec<String> = {
            let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
            for h in used {
                if let Some(e) = idx.get_mut(h) {
                    e.1 = now;
                }
            }
            let old: Vec<String> = idx
                .iter()
                .filter(|(h, (_, at))| !used.contains(*h) && now.duration_since(*at).is_ok_and(|age| age >= ttl))
                .map(|(h, _)| h.clone())
                .collect();
            for h in &old {
                idx.remove(h);
            }
            old
        };
        for h in &gone {
            let _ = std::fs::remove_file(self.dir.join(format!("{h}.wasm")));
        }
        if let Some(shared) = &self.shared
            && !gone.is_empty()
        {
            shared.delete(&gone);
        }
        gone.len()
    }

    /// Stores `bytes` if they hash to `expected` (when given) and look like Wasm.
    /// Returns (hash, existed).
    pub fn put(&self, expected: Option<&str>, bytes: &[u8]) -> Result<(String, bool), ArtifactError> {
        if bytes.len() as u64 > self.max_bytes {
            return Err(ArtifactError::TooLarge { size: bytes.len() as u64, max: self.max_bytes });
        }
        let actual = hex::encode(Sha256::digest(bytes));
        if let Some(exp) = expected.filter(|e| !e.is_empty()) {
            check_hash(exp)?;
            if exp != actual {
                return Err(ArtifactError::HashMismatch { expected: exp.to_string(), actual });
            }
        }
        if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
            return Err(ArtifactError::NotWasm);
        }
        if self.size(&actual).is_some() {
            self.touch(&actual);
            return Ok((actual, true));
        }
        if let Some(shared) = &self.shared {
            shared.put(&actual, bytes).map_err(|e| ArtifactError::Io(format!("storing the module in etcd: {e}")))?;
        }
        self.write_local(&actual, bytes)?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(actual.clone(), (bytes.len() as u64, SystemTime::now()));
        Ok((actual, false))
    }

    /// Writes a module's file (durably, atomically).
    fn write_local(&self, actual: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        let path = self.dir.join(format!("{actual}.wasm"));
        let n = self.uploads.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{actual}.{}.{n}.tmp", std::process::id()));
        // Flushed before the rename and the reply: the registry may refer to
        // this module as soon as the upload is acknowledged.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ArtifactError::Io(format!("writing {}: {e}", path.display()))
        })
    }

    pub fn get(&self, hash: &str) -> Result<Vec<u8>, ArtifactError> {
        check_hash(hash)?;
        if self.size(hash).is_none() {
            return Err(ArtifactError::Missing(hash.to_string()));
        }
        self.touch(hash);
        match std::fs::read(self.dir.join(format!("{hash}.wasm"))) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.shared.is_some() => {
                // Uploaded to another master: read from etcd, checked, kept here.
                let shared = self.shared.as_ref().expect("checked");
                let bytes = shared
                    .get(hash)
                    .map_err(|e| ArtifactError::Io(format!("reading the module from etcd: {e}")))?
                    .ok_or_else(|| ArtifactError::Missing(hash.to_string()))?;
                if hex::encode(Sha256::digest(&bytes)) != hash {
                    return Err(ArtifactError::Io(format!("the copy of module {hash} in etcd is damaged")));
                }
                self.write_local(hash, &bytes)?;
                Ok(bytes)
            }
            r => r.map_err(|e| ArtifactError::Io(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid module that differs by `n` (a custom section).
    fn module(n: u32) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let name = format!("n{n}");
        m.push(0); // custom section
        m.push((1 + name.len()) as u8);
        m.push(name.len() as u8);
        m.extend_from_slice(name.as_bytes());
        m
    }

    /// 50 uploads at once, 25 of one module and 25 of different ones: all
    /// succeed, each module is stored once, and no temp file is left.
    #[test]
    fn concurrent_uploads_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(ArtifactStore::open(dir.path().to_path_buf(), 1 << 20).unwrap());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
        let threads: Vec<_> = (0..50u32)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let bytes = if i % 2 == 0 { module(0) } else { module(i) };
                    barrier.wait();
                    store.put(None, &bytes).map(|(h, _)| h)
                })
            })
            .collect();
        let hashes: Vec<String> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        let distinct: std::collections::HashSet<&String> = hashes.iter().collect();
        // one shared module + 25 odd-numbered ones
        assert_eq!(distinct.len(), 26);
        for h in &distinct {
            assert_eq!(store.get(h).unwrap().len() as u64, store.size(h).unwrap());
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn unused_modules_past_their_ttl_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        let (a, _) = store.put(None, &module(1)).unwrap();
        let (b, _) = store.put(None, &module(2)).unwrap();
        // Nothing is older than an hour.
        assert_eq!(store.collect(&HashSet::new(), Duration::from_secs(3600)), 0);
        // With no time to live, what is not in use goes; what is, stays.
        assert_eq!(store.collect(&HashSet::from([a.clone()]), Duration::ZERO), 1);
        assert!(store.get(&a).is_ok());
        assert_eq!(store.get(&b), Err(ArtifactError::Missing(b.clone())));
        assert!(!dir.path().join(format!("{b}.wasm")).exists());
        // An upload brings it back.
        assert_eq!(store.put(None, &module(2)).unwrap(), (b, false));
    }
}
