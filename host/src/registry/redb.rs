//! The registry on disk: an embedded transactional database (redb) under
//! `--state-dir`. Records are encoded as the wire types `StoredTask`,
//! `StoredSubmission`, `StoredFramework`, `StoredAgent`, `StoredRole` and
//! `StoredReservation`, so a registry written by an earlier version loads.
//!
//! Two files. `registry.redb` holds what a restarted master needs: tasks that
//! have not ended (and, briefly, ones that just did), submissions,
//! frameworks, agents, roles, reservations; it stays small, so opening it
//! after a crash is quick. `history.redb` holds ended tasks until
//! `--task-history` passes: the writer moves them there in batches
//! ([`Redb::archive`]), each batch a quick-repair transaction (the file's
//! allocator state goes with it, so opening after a crash does not walk the
//! whole file however long the history).
//!
//! Tasks have three indexes beside their records: `live` (tasks that have
//! not ended: loaded at start), `task_seq` (listing order: history pages)
//! and `finished` (ended tasks by when they ended: moved to history oldest
//! first, and collected from there once past `--task-history`). A registry
//! without them (written before they existed) gets them built once, at open.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use wasmos_proto::v1;

use super::*;

mod reading;
use super::records::*;
use crate::master::types::{Page, TaskFilter, TaskView};
use reading::RedbHistory;

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const FRAMEWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("frameworks");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SUBMISSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("submissions");
const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
/// "agent-id role" -> StoredReservation
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
/// task id -> seq, for tasks that have not ended
const LIVE: TableDefinition<&str, u64> = TableDefinition::new("live");
/// seq -> task id, every recorded task
const TASK_SEQ: TableDefinition<u64, &str> = TableDefinition::new("task_seq");
/// (finished_at_ms, seq) -> task id, ended tasks
const FINISHED: TableDefinition<(u64, u64), &str> = TableDefinition::new("finished");
/// submission key -> how many of its tasks ended
const SUB_ENDED: TableDefinition<&str, u64> = TableDefinition::new("submission_ended");
/// Jobs given to hosted frameworks and not launched yet, by job id.
const HOSTED_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosted_jobs");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// This layout's number in META["layout"].
const LAYOUT: u64 = 2;

fn err(what: &str) -> impl Fn(String) -> RegistryError + '_ {
    move |e| RegistryError(format!("{what}: {e}"))
}

/// The redb table of a record kind.
fn def(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        Table::Frameworks => FRAMEWORKS,
        Table::Agents => AGENTS,
        Table::Submissions => SUBMISSIONS,
        Table::Roles => ROLES,
        Table::Reservations => RESERVATIONS,
        Table::HostedJobs => HOSTED_JOBS,
        Table::Tokens => TOKENS,
    }
}

pub(crate) struct Redb {
    db: Arc<Database>,
    history: Arc<Database>,
}

fn oerr(what: &'static str) -> impl Fn(::redb::TableError) -> RegistryError {
    move |e| RegistryError(format!("{what}: {e}"))
}
fn serr(what: &'static str) -> impl Fn(::redb::StorageError) -> RegistryError {
    move |e| RegistryError(format!("{what}: {e}"))
}

impl Redb {
    /// Opens (creating) `dir/registry.redb` and bumps the master epoch.
    /// `cache`: bytes of the registry's pages kept in memory.
    pub fn open(dir: &Path, cache: usize) -> Result<Redb, RegistryError> {
        std::fs::create_dir_all(dir).map_err(|e| RegistryError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("registry.redb");
        let mut db = Database::builder()
            .set_cache_size(cache / 2)
            .create(&path)
            .map_err(|e| RegistryError(format!("cannot open {}: {e}", path.display())))?;
        compact_if_worth(&mut db, &path, COMPACT_MIN_FILE)?;
        let hpath = dir.join("history.redb");
        let history = Database::builder()
            .set_cache_size(cache / 2)
            .create(&hpath)
            .map_err(|e| RegistryError(format!("cannot open {}: {e}", hpath.display())))?;
        super::history_file::open(&history)?;
        let w = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            let mut meta = w.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
            let epoch = meta.get("epoch").map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0) + 1;
            meta.insert("epoch", epoch).map_err(|e| err("meta")(e.to_string()))?;
            for (t, what) in [
                (TASKS, "tasks"),
                (FRAMEWORKS, "frameworks"),
                (AGENTS, "agents"),
                (SUBMISSIONS, "submissions"),
                (ROLES, "roles"),
                (RESERVATIONS, "reservations"),
                (HOSTED_JOBS, "hosted_jobs"),
                (TOKENS, "tokens"),
            ] {
                w.open_table(t).map_err(|e| err(what)(e.to_string()))?;
            }
            w.open_table(LIVE).map_err(oerr("live"))?;
            w.open_table(TASK_SEQ).map_err(oerr("task_seq"))?;
            w.open_table(FINISHED).map_err(oerr("finished"))?;
            w.open_table(SUB_ENDED).map_err(oerr("submission_ended"))?;
            let layout = meta.get("layout").map_err(serr("meta"))?.map(|v| v.value()).unwrap_or(0);
            if layout < LAYOUT {
                drop(meta);
                build_indexes(&w)?;
                let mut meta = w.open_table(META).map_err(oerr("meta"))?;
                meta.insert("layout", LAYOUT).map_err(serr("meta"))?;
            }
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))?;
        Ok(Redb { db: Arc::new(db), history: Arc::new(history) })
    }
}

/// Builds the task indexes of a registry written before they existed
/// (records without a listing position get one after every other).
fn build_indexes(w: &::redb::WriteTransaction) -> Result<(), RegistryError> {
    let mut rows: Vec<(String, v1::StoredTask)> = Vec::new();
    {
        let t = w.open_table(TASKS).map_err(oerr("tasks"))?;
        for row in t.iter().map_err(serr("tasks"))? {
            let (k, v) = row.map_err(serr("tasks"))?;
            if let Some(rec) = wasmos_proto::decode::<v1::StoredTask>(v.value()) {
                rows.push((k.value().to_string(), rec));
            }
        }
    }
    let mut meta = w.open_table(META).map_err(oerr("meta"))?;
    let mut next = meta.get("next_id").map_err(serr("meta"))?.map(|v| v.value()).unwrap_or(0);
    // Old order: submission time, then the number in the id.
    let number = |id: &str| id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    rows.sort_by_key(|(id, r)| (r.summary.as_ref().map(|s| s.submitted_at_ms).unwrap_or(0), number(id), id.clone()));
    let mut t = TaskTables::open(w)?;
    for (id, mut rec) in rows {
        if rec.seq == 0 {
            rec.seq = match number(&id) {
                0 => {
                    next += 1;
                    next
                }
                n => n,
            };
        }
        t.put(&id, &rec)?;
    }
    meta.insert("next_id", next).map_err(serr("meta"))?;
    Ok(())
}

/// The task tables of one write transaction, opened once.
struct TaskTables<'t> {
    tasks: ::redb::Table<'t, &'static str, &'static [u8]>,
    by_seq: ::redb::Table<'t, u64, &'static str>,
    live: ::redb::Table<'t, &'static str, u64>,
    finished: ::redb::Table<'t, (u64, u64), &'static str>,
}

impl<'t> TaskTables<'t> {
    fn open(w: &'t ::redb::WriteTransaction) -> Result<TaskTables<'t>, RegistryError> {
        Ok(TaskTables {
            tasks: w.open_table(TASKS).map_err(oerr("tasks"))?,
            by_seq: w.open_table(TASK_SEQ).map_err(oerr("task_seq"))?,
            live: w.open_table(LIVE).map_err(oerr("live"))?,
            finished: w.open_table(FINISHED).map_err(oerr("finished"))?,
        })
    }

    /// Writes a task record and files it in the indexes.
    fn put(&mut self, id: &str, rec: &v1::StoredTask) -> Result<(), RegistryError> {
        self.tasks.insert(id, wasmos_proto::encode(rec).as_slice()).map_err(serr("tasks"))?;
        self.index(id, rec)
    }

    fn index(&mut self, id: &str, rec: &v1::StoredTask) -> Result<(), RegistryError> {
        let Some(sum) = &rec.summary else { return Ok(()) };
        let ended = wasmos_proto::state_from_wire(sum.state).is_some_and(|s| s.is_terminal());
        self.by_seq.insert(rec.seq, id).map_err(serr("task_seq"))?;
        if ended {
            self.live.remove(id).map_err(serr("live"))?;
            let at = sum.finished_at_ms.max(0) as u64;
            self.finished.insert((at, rec.seq), id).map_err(serr("finished"))?;
        } else {
            self.live.insert(id, rec.seq).map_err(serr("live"))?;
        }
        Ok(())
    }
}

impl Registry for Redb {
    fn load(&mut self, keep_recent: usize) -> Result<Loaded, RegistryError> {
        let r = self.db.begin_read().map_err(|e| err("read")(e.to_string()))?;
        let mut loaded = Loaded::default();
        {
            let meta = r.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
            loaded.next_id =
                meta.get("next_id").map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0);
            loaded.epoch = meta.get("epoch").map_err(serr("meta"))?.map(|v| v.value()).unwrap_or(0);
        }
        {
            let tasks = r.open_table(TASKS).map_err(oerr("tasks"))?;
            let read = |id: &str| -> Result<Option<v1::StoredTask>, RegistryError> {
                match tasks.get(id).map_err(serr("tasks"))? {
                    Some(v) => wasmos_proto::decode(v.value())
                        .map(Some)
                        .ok_or_else(|| RegistryError(format!("task record {id:?} is damaged"))),
                    None => Ok(None),
                }
            };
            let mut ids: Vec<String> = Vec::new();
            for row in r.open_table(LIVE).map_err(oerr("live"))?.iter().map_err(serr("live"))? {
                ids.push(row.map_err(serr("live"))?.0.value().to_string());
            }
            let finished = r.open_table(FINISHED).map_err(oerr("finished"))?;
            for row in finished.iter().map_err(serr("finished"))?.rev().take(keep_recent) {
                ids.push(row.map_err(serr("finished"))?.1.value().to_string());
            }
            for id in ids {
                let Some(t) = read(&id)? else { continue };
                match task_from_stored(t) {
                    Ok(t) => loaded.tasks.push(t),
                    Err((key, why)) => skip("task", &key, why),
                }
            }
        }
        let ended = r.open_table(SUB_ENDED).map_err(oerr("submission_ended"))?;
        for table in Table::ALL {
            let t = r.open_table(def(table)).map_err(oerr(table.name()))?;
            for row in t.iter().map_err(serr(table.name()))? {
                let (k, v) = row.map_err(serr(table.name()))?;
                let n = match table {
                    Table::Submissions => {
                        ended.get(k.value()).map_err(serr("submission_ended"))?.map(|v| v.value()).unwrap_or(0) as u32
                    }
                    _ => 0,
                };
                table.decode(k.value(), v.value(), n, &mut loaded)?;
            }
        }
        let have: std::collections::HashSet<String> = loaded.tasks.iter().map(|t| t.view.task_id.to_string()).collect();
        // Open submissions' tasks that have a record but were not loaded
        // (they ended a while ago). A batch task's listing position is the
        // number in its id, so the positions of a submission are a range.
        let by_seq = r.open_table(TASK_SEQ).map_err(oerr("task_seq"))?;
        for (sub, _) in &loaded.submissions {
            let prefix = format!("task-{}-", sub.tag);
            let range = sub.first..sub.first + sub.count as u64;
            for row in by_seq.range(range.clone()).map_err(serr("task_seq"))? {
                let id = row.map_err(serr("task_seq"))?.1.value().to_string();
                if id.starts_with(&prefix) && !have.contains(&id) {
                    loaded.recorded.insert(id);
                }
            }
            // In the history a position is the task's own (seq N is task-TAG-N).
            for n in super::history_file::positions(&self.history, range)? {
                let id = format!("{prefix}{n}");
                if !have.contains(&id) {
                    loaded.recorded.insert(id);
                }
            }
        }
        Ok(loaded)
    }

    fn maintain(&self, task_history: Duration) {
        // Weak: the thread ends once nothing else holds the files (the master stopped).
        let (db, history) = (Arc::downgrade(&self.db), Arc::downgrade(&self.history));
        std::thread::Builder::new()
            .name("wasmos-history".into())
            .spawn(move || Redb::maintenance(db, history, task_history))
            .expect("spawning the history thread");
    }

    fn history(&self) -> Arc<dyn History> {
        Arc::new(RedbHistory { files: [self.db.clone(), self.history.clone()] })
    }

    fn commit(&mut self, changes: &Changes) -> Result<(), RegistryError> {
        let w = self.db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            {
                let mut tables = TaskTables::open(&w)?;
                for (id, t) in &changes.tasks {
                    tables.put(id.as_str(), &task_to_stored(t))?;
                }
            }
            let rows = rows(changes);
            for table in Table::ALL {
                let mut t = w.open_table(def(table)).map_err(oerr(table.name()))?;
                for (_, k, v) in rows.iter().filter(|(t, _, _)| *t == table) {
                    match v {
                        Some(v) => t.insert(k.as_str(), v.as_slice()).map(|_| ()),
                        None => t.remove(k.as_str()).map(|_| ()),
                    }
                    .map_err(serr(table.name()))?;
                }
            }
            {
                let mut ended = w.open_table(SUB_ENDED).map_err(oerr("submission_ended"))?;
                for (key, n) in &changes.submission_ended {
                    ended.insert(key.as_str(), *n as u64).map_err(serr("submission_ended"))?;
                }
                // After the puts: a submission may be written and closed in one group.
                let mut subs = w.open_table(SUBMISSIONS).map_err(oerr("submissions"))?;
                for key in &changes.closed_submissions {
                    subs.remove(key.as_str()).map_err(serr("submissions"))?;
                    ended.remove(key.as_str()).map_err(serr("submission_ended"))?;
                }
            }
            let mut m = w.open_table(META).map_err(|e| err("meta")(e.to_string()))?;
            m.insert("next_id", changes.next_id).map_err(|e| err("meta")(e.to_string()))?;
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))
    }
}

impl Redb {
    /// Deletes up to `max` history records of tasks that ended before
    /// `before_ms`, in one transaction; returns how many index entries went.
    pub fn collect(&self, before_ms: i64, max: usize) -> Result<usize, RegistryError> {
        super::history_file::collect(&self.history, before_ms, max)
    }

    /// Moves up to `max` of the oldest ended tasks from the main file to
    /// the history; returns how many.
    pub fn archive(&self, max: usize) -> Result<usize, RegistryError> {
        // The oldest ended tasks of the main file, as they are now.
        let batch: Vec<((u64, u64), String, Vec<u8>)> = {
            let r = self.db.begin_read().map_err(|e| err("read")(e.to_string()))?;
            let finished = r.open_table(FINISHED).map_err(oerr("finished"))?;
            let tasks = r.open_table(TASKS).map_err(oerr("tasks"))?;
            let mut out = Vec::new();
            for row in finished.iter().map_err(serr("finished"))?.take(max) {
                let (k, id) = row.map_err(serr("finished"))?;
                let id = id.value().to_string();
                let bytes =
                    tasks.get(id.as_str()).map_err(serr("tasks"))?.map(|v| v.value().to_vec()).unwrap_or_default();
                out.push((k.value(), id, bytes));
            }
            out
        };
        if batch.is_empty() {
            return Ok(0);
        }
        // First into history, durably; then out of the main file. A crash in
        // between leaves a task in both, which the next archive settles.
        let recs: Vec<(v1::StoredTask, &[u8])> = batch
            .iter()
            .filter_map(|(_, _, bytes)| Some((wasmos_proto::decode::<v1::StoredTask>(bytes)?, bytes.as_slice())))
            .collect();
        super::history_file::append(&self.history, &recs)?;
        // Not fsync'd on its own: the writer's next commit makes it durable,
        // and a crash before that leaves tasks in both files, which the next
        // archive settles.
        let mut w = self.db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        let _ = w.set_durability(::redb::Durability::None);
        {
            let mut t = TaskTables::open(&w)?;
            for (key, id, bytes) in &batch {
                t.finished.remove(*key).map_err(serr("finished"))?;
                // Unless it changed since (queued again, say).
                let same =
                    t.tasks.get(id.as_str()).map_err(serr("tasks"))?.is_some_and(|v| v.value() == bytes.as_slice());
                if same {
                    t.tasks.remove(id.as_str()).map_err(serr("tasks"))?;
                    let seq = key.1;
                    let ours = t.by_seq.get(seq).map_err(serr("task_seq"))?.is_some_and(|v| v.value() == id.as_str());
                    if ours {
                        t.by_seq.remove(seq).map_err(serr("task_seq"))?;
                    }
                }
            }
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))?;
        Ok(batch.len())
    }

    /// The history thread: moves ended tasks out of the main file a few
    /// times a second, and deletes history past `task_history` once a second.
    fn maintenance(db: std::sync::Weak<Database>, history: std::sync::Weak<Database>, task_history: Duration) {
        let mut last_collect = std::time::Instant::now();
        loop {
            std::thread::sleep(ARCHIVE_EVERY);
            let (Some(db), Some(history)) = (db.upgrade(), history.upgrade()) else { return };
            let files = Redb { db, history };
            loop {
                match files.archive(ARCHIVE_BATCH) {
                    Ok(n) if n == ARCHIVE_BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        eprintln!("wasmos master: cannot move ended tasks to the history: {e}; retrying");
                        break;
                    }
                }
            }
            if last_collect.elapsed() < COLLECT_EVERY {
                continue;
            }
            last_collect = std::time::Instant::now();
            let before = crate::master::types::now_ms() - task_history.as_millis() as i64;
            loop {
                match files.collect(before, COLLECT_BATCH) {
                    Ok(n) if n == COLLECT_BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        eprintln!("wasmos master: cannot delete old history: {e}; retrying");
                        break;
                    }
                }
            }
        }
    }
}

/// registry.redb is compacted at open when its file is at least this long...
const COMPACT_MIN_FILE: u64 = 64 << 20;

/// ...and at least half of it is free: a master that once held a long queue
/// keeps the pages it grew to (redb reuses them, never returns them) until
/// it restarts. Only the main file: what it holds is what a restart reads
/// anyway, so compacting it costs about as much as loading it; the history
/// file is bounded by `--task-history` and reuses its freed pages.
fn compact_if_worth(db: &mut Database, path: &Path, min_file: u64) -> Result<bool, RegistryError> {
    let file = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if file < min_file {
        return Ok(false);
    }
    let stats = {
        let w = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        let stats = w.stats().map_err(serr("stats"))?;
        w.abort().map_err(|e| err("abort")(e.to_string()))?;
        stats
    };
    let used = stats.allocated_pages() * stats.page_size() as u64;
    if used.saturating_mul(2) > file {
        return Ok(false);
    }
    let t0 = std::time::Instant::now();
    // Compaction moves pages down a step at a time; a few rounds get most.
    let mut rounds = 0;
    while rounds < 8 && db.compact().map_err(|e| err("compact")(e.to_string()))? {
        rounds += 1;
    }
    let after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wasmos master: compacted {} from {} to {} MiB in {} ms",
        path.display(),
        file >> 20,
        after >> 20,
        t0.elapsed().as_millis()
    );
    Ok(true)
}

/// How often ended tasks move to the history.
const ARCHIVE_EVERY: Duration = Duration::from_millis(250);
/// Most ended tasks one move takes.
const ARCHIVE_BATCH: usize = 5_000;
/// How often history past its time is looked for.
const COLLECT_EVERY: Duration = Duration::from_secs(1);
/// Most history records one deletion takes.
const COLLECT_BATCH: usize = 5_000;

#[cfg(test)]
mod tests;
