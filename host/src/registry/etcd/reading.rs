//! Reading ended tasks from etcd (`History`), beside the writer.

use super::*;

/// Reads ended tasks from etcd (any master may; only the leader is asked).
pub(super) struct EtcdHistory {
    pub(super) conn: Conn,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) keys: Keys,
}

impl History for EtcdHistory {
    fn get(&self, id: &str) -> Result<Option<TaskView>, RegistryError> {
        let mut client = self.conn.client();
        block(&self.rt, async {
            for key in [self.keys.live(id), self.keys.h_id(id)] {
                let resp = client.get(key.clone(), None).await.map_err(eerr("get"))?;
                let Some(kv) = resp.kvs().first() else { continue };
                let bytes = if key.contains("/h/id/") {
                    let seq = u64::from_str_radix(kv.value_str().unwrap_or(""), 16).unwrap_or(0);
                    let r = client.get(self.keys.h_task(seq), None).await.map_err(eerr("get"))?;
                    match r.kvs().first() {
                        Some(kv) => kv.value().to_vec(),
                        None => continue,
                    }
                } else {
                    kv.value().to_vec()
                };
                let rec = wasmos_proto::decode::<v1::StoredTask>(&bytes)
                    .ok_or_else(|| RegistryError(format!("task record {id:?} is damaged")))?;
                return Ok(task_from_stored(rec).ok().map(|t| t.view));
            }
            Ok(None)
        })
    }

    fn page(
        &self,
        after: u64,
        filter: &TaskFilter,
        limit: usize,
        budget: usize,
    ) -> Result<Page<TaskView>, RegistryError> {
        let mut client = self.conn.client();
        block(&self.rt, async {
            let mut page = Page::default();
            let mut last = after;
            let mut scanned = 0;
            let end = prefix_end(&format!("{}h/task/", self.keys.p));
            loop {
                let want = (limit.saturating_mul(2).clamp(64, 2048)).min(budget.max(1)) as i64;
                let from = self.keys.h_task(last.saturating_add(1));
                let resp = client
                    .get(from, Some(GetOptions::new().with_range(end.clone()).with_limit(want)))
                    .await
                    .map_err(eerr("history"))?;
                if resp.kvs().is_empty() {
                    return Ok(page);
                }
                for kv in resp.kvs() {
                    if page.rows.len() >= limit || scanned >= budget {
                        page.next = Some(last);
                        return Ok(page);
                    }
                    scanned += 1;
                    let seq = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.rsplit('/').next())
                        .and_then(|s| u64::from_str_radix(s, 16).ok());
                    last = seq.unwrap_or(last + 1);
                    let Some(rec) = wasmos_proto::decode::<v1::StoredTask>(kv.value()) else { continue };
                    let Ok(t) = task_from_stored(rec) else { continue };
                    if filter.matches(&t.view) {
                        page.rows.push(t.view);
                    }
                }
                if !resp.more() {
                    return Ok(page);
                }
            }
        })
    }
}
