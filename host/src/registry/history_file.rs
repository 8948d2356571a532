//! `history.redb`: ended tasks, keyed by their listing position (`seq`), so
//! that what the history thread writes is appends at one end of the tree and
//! deletions at the other. Keyed by task id (as the main file is), every
//! insert and every deletion touched a leaf page somewhere in a tree of
//! gigabytes: at 5,000 tasks/s with a few million tasks held, the disk
//! saturated (the first 35-minute soak). A batch task's id names its
//! position (`task-TAG-N` has seq N), so only other tasks need an id index.

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::RegistryError;
use wasmos_proto::v1;

/// seq → the task's `StoredTask` record.
const BY_SEQ: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
/// Task id → seq, for tasks whose id does not end in `-{seq}`.
const IDS: TableDefinition<&str, u64> = TableDefinition::new("history_ids");
/// (finished at ms, seq): what is due for deletion first.
const ENDED: TableDefinition<(u64, u64), ()> = TableDefinition::new("history_ended");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// 1: the first layout, keyed by task id (the main file's tables).
const LAYOUT: u64 = 2;
// The first layout's tables (the main file's), deleted once moved over.
const OLD_TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const OLD_SEQ: TableDefinition<u64, &str> = TableDefinition::new("task_seq");
const OLD_LIVE: TableDefinition<&str, u64> = TableDefinition::new("live");
const OLD_FINISHED: TableDefinition<(u64, u64), &str> = TableDefinition::new("finished");

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> RegistryError {
    move |e| RegistryError(format!("history {what}: {e}"))
}

/// Whether `id` names position `seq` (a batch task's `task-TAG-N`).
fn id_names_seq(id: &str, seq: u64) -> bool {
    id.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok()) == Some(seq)
}

fn ended_at(rec: &v1::StoredTask) -> Option<u64> {
    let s = rec.summary.as_ref()?;
    let ended = wasmos_proto::state_from_wire(s.state).is_some_and(|s| s.is_terminal());
    ended.then(|| s.finished_at_ms.max(0) as u64)
}

fn id_of(rec: &v1::StoredTask) -> &str {
    rec.summary.as_ref().map_or("", |s| s.task_id.as_str())
}

/// Creates the tables, and moves a history of the first layout over (once).
pub(super) fn open(db: &Database) -> Result<(), RegistryError> {
    let mut w = db.begin_write().map_err(err("begin"))?;
    w.set_quick_repair(true);
    let layout = {
        w.open_table(BY_SEQ).map_err(err("open"))?;
        w.open_table(IDS).map_err(err("open"))?;
        w.open_table(ENDED).map_err(err("open"))?;
        let meta = w.open_table(META).map_err(err("open"))?;
        meta.get("layout").map_err(err("meta"))?.map(|v| v.value()).unwrap_or(0)
    };
    if layout < LAYOUT {
        let moved = convert(&w)?;
        if moved > 0 {
            eprintln!(
                "wasmos master: moved {moved} ended tasks of history.redb to its new layout (by listing position)"
            );
        }
        w.open_table(META).map_err(err("meta"))?.insert("layout", LAYOUT).map_err(err("meta"))?;
    }
    w.commit().map_err(err("commit"))?;
    Ok(())
}

fn convert(w: &WriteTransaction) -> Result<u64, RegistryError> {
    let exists = w.list_tables().map_err(err("tables"))?.any(|t| t.name() == "tasks");
    if !exists {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let old = w.open_table(OLD_TASKS).map_err(err("open"))?;
        let mut t = Tables::open(w)?;
        for row in old.iter().map_err(err("read"))? {
            let (_, v) = row.map_err(err("read"))?;
            if let Some(rec) = wasmos_proto::decode::<v1::StoredTask>(v.value()) {
                t.put(&rec, v.value())?;
                moved += 1;
            }
        }
    }
    w.delete_table(OLD_TASKS).map_err(err("delete"))?;
    w.delete_table(OLD_SEQ).map_err(err("delete"))?;
    w.delete_table(OLD_LIVE).map_err(err("delete"))?;
    w.delete_table(OLD_FINISHED).map_err(err("delete"))?;
    Ok(moved)
}

struct Tables<'t> {
    by_seq: ::redb::Table<'t, u64, &'static [u8]>,
    ids: ::redb::Table<'t, &'static str, u64>,
    ended: ::redb::Table<'t, (u64, u64), ()>,
}

impl<'t> Tables<'t> {
    fn open(w: &'t WriteTransaction) -> Result<Tables<'t>, RegistryError> {
        Ok(Tables {
            by_seq: w.open_table(BY_SEQ).map_err(err("open"))?,
            ids: w.open_table(IDS).map_err(err("open"))?,
            ended: w.open_table(ENDED).map_err(err("open"))?,
        })
    }

    /// Files an ended task (a record of the same position is replaced: a
    /// task queued again ends again under its seq).
    fn put(&mut self, rec: &v1::StoredTask, bytes: &[u8]) -> Result<(), RegistryError> {
        let Some(at) = ended_at(rec) else { return Ok(()) };
        if let Some(old) = self.by_seq.insert(rec.seq, bytes).map_err(err("insert"))?
            && let Some(old) = wasmos_proto::decode::<v1::StoredTask>(old.value())
            && let Some(old_at) = ended_at(&old)
        {
            self.ended.remove((old_at, old.seq)).map_err(err("insert"))?;
        }
        self.ended.insert((at, rec.seq), ()).map_err(err("insert"))?;
        let id = id_of(rec);
        if !id_names_seq(id, rec.seq) {
            self.ids.insert(id, rec.seq).map_err(err("insert"))?;
        }
        Ok(())
    }
}

/// Writes ended tasks (`StoredTask` bytes) in one quick-repair transaction.
pub(super) fn append(db: &Database, recs: &[(v1::StoredTask, &[u8])]) -> Result<(), RegistryError> {
    let mut w = db.begin_write().map_err(err("begin"))?;
    w.set_quick_repair(true);
    {
        let mut t = Tables::open(&w)?;
        for (rec, bytes) in recs {
            t.put(rec, bytes)?;
        }
    }
    w.commit().map_err(err("commit"))
}

/// Deletes up to `max` tasks that ended before `before_ms`; returns how many.
pub(super) fn collect(db: &Database, before_ms: i64, max: usize) -> Result<usize, RegistryError> {
    let mut w = db.begin_write().map_err(err("begin"))?;
    w.set_quick_repair(true);
    let n;
    {
        let mut t = Tables::open(&w)?;
        let due: Vec<(u64, u64)> = t
            .ended
            .range(..(before_ms.max(0) as u64, 0))
            .map_err(err("read"))?
            .take(max)
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()
            .map_err(err("read"))?;
        n = due.len();
        for (at, seq) in due {
            t.ended.remove((at, seq)).map_err(err("delete"))?;
            let rec = t.by_seq.remove(seq).map_err(err("delete"))?;
            if let Some(rec) = rec.and_then(|v| wasmos_proto::decode::<v1::StoredTask>(v.value())) {
                let id = id_of(&rec);
                if !id_names_seq(id, seq) {
                    t.ids.remove(id).map_err(err("delete"))?;
                }
            }
        }
    }
    w.commit().map_err(err("commit"))?;
    Ok(n)
}

/// The ended task `id`, if the history has it.
pub(super) fn get(db: &Database, id: &str) -> Result<Option<v1::StoredTask>, RegistryError> {
    let r = db.begin_read().map_err(err("read"))?;
    let by_seq = r.open_table(BY_SEQ).map_err(err("open"))?;
    let seq = id.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok());
    let read = |seq: u64| -> Result<Option<v1::StoredTask>, RegistryError> {
        let Some(v) = by_seq.get(seq).map_err(err("read"))? else { return Ok(None) };
        let rec = wasmos_proto::decode::<v1::StoredTask>(v.value())
            .ok_or_else(|| RegistryError(format!("history record of {id:?} is damaged")))?;
        Ok((id_of(&rec) == id).then_some(rec))
    };
    if let Some(seq) = seq
        && let Some(rec) = read(seq)?
    {
        return Ok(Some(rec));
    }
    let ids = r.open_table(IDS).map_err(err("open"))?;
    match ids.get(id).map_err(err("read"))? {
        Some(seq) => read(seq.value()),
        None => Ok(None),
    }
}

/// Up to `budget` records after position `after`, in order: (seq, record).
pub(super) fn scan(db: &Database, after: u64, budget: usize) -> Result<Vec<(u64, v1::StoredTask)>, RegistryError> {
    let r = db.begin_read().map_err(err("read"))?;
    let by_seq = r.open_table(BY_SEQ).map_err(err("open"))?;
    let mut out = Vec::new();
    for row in by_seq.range(after.saturating_add(1)..).map_err(err("read"))?.take(budget) {
        let (seq, v) = row.map_err(err("read"))?;
        if let Some(rec) = wasmos_proto::decode::<v1::StoredTask>(v.value()) {
            out.push((seq.value(), rec));
        }
    }
    Ok(out)
}

/// The positions in `range` the history holds (for open submissions: their
/// tasks recorded there; a position belongs to one task only).
pub(super) fn positions(db: &Database, range: std::ops::Range<u64>) -> Result<Vec<u64>, RegistryError> {
    let r = db.begin_read().map_err(err("read"))?;
    let by_seq = r.open_table(BY_SEQ).map_err(err("open"))?;
    let mut out = Vec::new();
    for row in by_seq.range(range).map_err(err("read"))? {
        out.push(row.map_err(err("read"))?.0.value());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ::redb::ReadableTableMetadata;

    use super::*;

    fn rec(id: &str, seq: u64, finished_at_ms: i64) -> (v1::StoredTask, Vec<u8>) {
        let r = v1::StoredTask {
            summary: Some(v1::TaskSummary {
                task_id: id.into(),
                state: v1::TaskState::TaskFinished as i32,
                finished_at_ms,
                ..Default::default()
            }),
            seq,
            ..Default::default()
        };
        let bytes = wasmos_proto::encode(&r);
        (r, bytes)
    }

    /// Batch tasks are found by the position their id names, others by the
    /// id index; collection takes both out, oldest first.
    #[test]
    fn found_by_position_or_by_id_and_collected_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("h.redb")).unwrap();
        open(&db).unwrap();
        let recs = [rec("task-ab-1", 1, 100), rec("remote-7", 2, 200), rec("task-ab-3", 3, 300)];
        let refs: Vec<_> = recs.iter().map(|(r, b)| (r.clone(), b.as_slice())).collect();
        append(&db, &refs).unwrap();
        assert_eq!(get(&db, "task-ab-1").unwrap().unwrap().seq, 1);
        assert_eq!(get(&db, "remote-7").unwrap().unwrap().seq, 2);
        // A batch-looking id whose position holds another task: not it.
        assert!(get(&db, "task-zz-3").unwrap().is_none());
        assert_eq!(scan(&db, 1, 10).unwrap().iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(positions(&db, 0..3).unwrap(), [1, 2]);
        assert_eq!(collect(&db, 250, 10).unwrap(), 2);
        assert!(get(&db, "remote-7").unwrap().is_none());
        assert!(get(&db, "task-ab-1").unwrap().is_none());
        assert_eq!(get(&db, "task-ab-3").unwrap().unwrap().seq, 3);
        let r = db.begin_read().unwrap();
        assert!(r.open_table(IDS).unwrap().is_empty().unwrap(), "the id index went with its task");
    }

    /// A history of the first layout (keyed by id) is moved over at open.
    #[test]
    fn the_first_layout_is_moved_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("h.redb")).unwrap();
        {
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(OLD_TASKS).unwrap();
                for (id, seq) in [("task-ab-1", 1), ("remote-7", 2)] {
                    t.insert(id, rec(id, seq, 100).1.as_slice()).unwrap();
                }
                w.open_table(OLD_SEQ).unwrap();
                w.open_table(OLD_FINISHED).unwrap();
            }
            w.commit().unwrap();
        }
        open(&db).unwrap();
        assert_eq!(get(&db, "remote-7").unwrap().unwrap().seq, 2);
        assert_eq!(get(&db, "task-ab-1").unwrap().unwrap().seq, 1);
        let r = db.begin_read().unwrap();
        assert!(!r.list_tables().unwrap().any(|t| t.name() == "tasks"));
        // Opening again moves nothing twice.
        drop(r);
        open(&db).unwrap();
        assert_eq!(scan(&db, 0, 10).unwrap().len(), 2);
    }
}
