//! The agent's checkpoint under `--work-dir`: its id and the status updates
//! it holds while the master cannot be reached. After an agent restart it
//! reregisters under the same id and resends those updates; tasks that were
//! running when the process died are not reported by it, and the master
//! declares them LOST after a short grace period (their framework then
//! retries them). Launches are not recorded: the launch path must not wait
//! for the disk.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use wasmos_proto::v1;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// uuid (hex) -> encoded TaskStatus
const UPDATES: TableDefinition<&str, &[u8]> = TableDefinition::new("updates");

pub(crate) struct Checkpoint {
    db: Database,
}

/// What the checkpoint held at start-up.
#[derive(Default)]
pub(crate) struct Restored {
    pub agent_id: String,
    pub updates: Vec<v1::TaskStatus>,
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<(Checkpoint, Restored), String> {
        let path = dir.join("checkpoint.redb");
        let db = Database::create(&path).map_err(|x| format!("cannot open {}: {x}", path.display()))?;
        {
            let w = db.begin_write().map_err(e)?;
            w.open_table(META).map_err(e)?;
            w.open_table(UPDATES).map_err(e)?;
            w.commit().map_err(e)?;
        }
        let mut r = Restored::default();
        {
            let t = db.begin_read().map_err(e)?;
            let meta = t.open_table(META).map_err(e)?;
            r.agent_id = meta.get("agent_id").map_err(e)?.map(|v| v.value().to_string()).unwrap_or_default();
            for row in t.open_table(UPDATES).map_err(e)?.iter().map_err(e)? {
                let (_, v) = row.map_err(e)?;
                if let Some(st) = wasmos_proto::decode::<v1::TaskStatus>(v.value()) {
                    r.updates.push(st);
                }
            }
        }
        // Resend in the order they were made (uuids end with a counter per process,
        // timestamps order across processes).
        r.updates.sort_by_key(|u| u.timestamp_ms);
        Ok((Checkpoint { db }, r))
    }

    pub fn set_agent_id(&self, id: &str) -> Result<(), String> {
        let w = self.db.begin_write().map_err(e)?;
        w.open_table(META).map_err(e)?.insert("agent_id", id).map_err(e)?;
        w.commit().map_err(e)
    }

    /// Makes updates durable before they are sent.
    pub fn save_updates(&self, ups: &[&v1::TaskStatus]) -> Result<(), String> {
        if ups.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(e)?;
        {
            let mut t = w.open_table(UPDATES).map_err(e)?;
            for u in ups {
                t.insert(hex::encode(&u.uuid).as_str(), wasmos_proto::encode(*u).as_slice()).map_err(e)?;
            }
        }
        w.commit().map_err(e)
    }

    /// Forgets acknowledged updates.
    pub fn acked(&self, uuids: &[Vec<u8>]) -> Result<(), String> {
        let w = self.db.begin_write().map_err(e)?;
        {
            let mut t = w.open_table(UPDATES).map_err(e)?;
            for u in uuids {
                t.remove(hex::encode(u).as_str()).map_err(e)?;
            }
        }
        w.commit().map_err(e)
    }
}
