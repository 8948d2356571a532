//! Modules in etcd, for every master's artifact store.

use etcd_client::{DeleteOptions, TxnOp};

use super::*;

/// Modules in etcd (`P artm/<sha>`: size, written last; `P artc/<sha>/<n>`:
/// the bytes, cut to fit a transaction): what lets any master serve a module
/// another one took. Writes are fenced like the registry's.
pub(crate) struct EtcdBlobs {
    pub conn: Conn,
    pub fence: Fence,
    pub keys: Keys,
    pub rt: tokio::runtime::Handle,
    pub limits: TxnLimits,
}

impl EtcdBlobs {
    fn manifest(&self, hash: &str) -> String {
        format!("{}artm/{hash}", self.keys.p)
    }
    fn chunks(&self, hash: &str) -> String {
        format!("{}artc/{hash}/", self.keys.p)
    }
}

impl crate::artifacts::SharedBlobs for EtcdBlobs {
    fn list(&self) -> Result<Vec<(String, u64)>, String> {
        let prefix = format!("{}artm/", self.keys.p);
        let mut client = self.conn.client();
        let (kvs, _) = block(&self.rt, range_all(&mut client, &prefix, 0)).map_err(|e| e.0)?;
        Ok(kvs
            .into_iter()
            .filter_map(|(k, v)| {
                let hash = k.strip_prefix(&prefix)?.to_string();
                Some((hash, String::from_utf8_lossy(&v).parse().ok()?))
            })
            .collect())
    }

    fn put(&self, hash: &str, bytes: &[u8]) -> Result<(), String> {
        let chunk = self.limits.max_bytes.saturating_sub(1024).max(1024);
        block(&self.rt, async {
            for (i, c) in bytes.chunks(chunk).enumerate() {
                let key = format!("{}{i:08x}", self.chunks(hash));
                fenced(&self.conn, &self.fence, vec![TxnOp::put(key, c.to_vec(), None)]).await?;
            }
            let m = TxnOp::put(self.manifest(hash), bytes.len().to_string(), None);
            fenced(&self.conn, &self.fence, vec![m]).await.map(|_| ())
        })
        .map_err(|e| e.0)
    }

    fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, String> {
        let mut client = self.conn.client();
        block(&self.rt, async {
            let m = client.get(self.manifest(hash), None).await.map_err(|e| e.to_string())?;
            if m.kvs().is_empty() {
                return Ok(None);
            }
            let (kvs, _) = range_all(&mut client, &self.chunks(hash), 0).await.map_err(|e| e.0)?;
            Ok(Some(kvs.into_iter().flat_map(|(_, v)| v).collect()))
        })
    }

    fn delete(&self, hashes: &[String]) {
        let r = block(&self.rt, async {
            for h in hashes {
                let ops = vec![
                    TxnOp::delete(self.manifest(h), None),
                    TxnOp::delete(self.chunks(h), Some(DeleteOptions::new().with_prefix())),
                ];
                fenced(&self.conn, &self.fence, ops).await?;
            }
            Ok::<(), RegistryError>(())
        });
        if let Err(e) = r {
            eprintln!("wasmos master: deleting collected modules from etcd: {e}");
        }
    }
}
