//! Reading the task history from its own read transactions, beside the
//! writer (for `GetTask` and listings).

use super::*;

/// Reads the task history from its own read transactions, beside the writer:
/// the main file (tasks that just ended) and the history file.
pub(super) struct RedbHistory {
    pub(super) files: [Arc<Database>; 2],
}

/// Ended tasks of one file after `after`, as [`History::page`] describes.
fn page_of(
    db: &Database,
    after: u64,
    filter: &TaskFilter,
    limit: usize,
    budget: usize,
) -> Result<Page<TaskView>, RegistryError> {
    let r = db.begin_read().map_err(|e| err("read")(e.to_string()))?;
    let tasks = r.open_table(TASKS).map_err(oerr("tasks"))?;
    let by_seq = r.open_table(TASK_SEQ).map_err(oerr("task_seq"))?;
    let mut page = Page::default();
    let mut last = after;
    for (scanned, row) in by_seq.range(after.saturating_add(1)..).map_err(serr("task_seq"))?.enumerate() {
        if page.rows.len() >= limit || scanned >= budget {
            page.next = Some(last);
            return Ok(page);
        }
        let (seq, id) = row.map_err(serr("task_seq"))?;
        last = seq.value();
        let Some(v) = tasks.get(id.value()).map_err(serr("tasks"))? else { continue };
        let Some(rec) = wasmos_proto::decode::<v1::StoredTask>(v.value()) else { continue };
        let Ok(t) = task_from_stored(rec) else { continue };
        // Only ended tasks: the master's memory is the word on the others.
        if t.view.state.is_terminal() && filter.matches(&t.view) {
            page.rows.push(t.view);
        }
    }
    Ok(page)
}

/// [`page_of`] for the history file (records by position).
fn history_page(
    db: &Database,
    after: u64,
    filter: &TaskFilter,
    limit: usize,
    budget: usize,
) -> Result<Page<TaskView>, RegistryError> {
    let mut page = Page::default();
    let mut last = after;
    let mut scanned = 0;
    loop {
        // Read in slices, so a page of a few rows costs a few reads.
        let slice = super::history_file::scan(db, last, limit.saturating_mul(2).clamp(64, 4096).min(budget.max(1)))?;
        if slice.is_empty() {
            return Ok(page);
        }
        for (seq, rec) in slice {
            if page.rows.len() >= limit || scanned >= budget {
                page.next = Some(last);
                return Ok(page);
            }
            scanned += 1;
            last = seq;
            let Ok(t) = task_from_stored(rec) else { continue };
            if filter.matches(&t.view) {
                page.rows.push(t.view);
            }
        }
    }
}

impl History for RedbHistory {
    fn get(&self, id: &str) -> Result<Option<TaskView>, RegistryError> {
        let r = self.files[0].begin_read().map_err(|e| err("read")(e.to_string()))?;
        let tasks = r.open_table(TASKS).map_err(oerr("tasks"))?;
        let rec = match tasks.get(id).map_err(serr("tasks"))? {
            Some(v) => Some(
                wasmos_proto::decode::<v1::StoredTask>(v.value())
                    .ok_or_else(|| RegistryError(format!("task record {id:?} is damaged")))?,
            ),
            None => super::history_file::get(&self.files[1], id)?,
        };
        Ok(rec.and_then(|rec| task_from_stored(rec).ok()).map(|t| t.view))
    }

    fn page(
        &self,
        after: u64,
        filter: &TaskFilter,
        limit: usize,
        budget: usize,
    ) -> Result<Page<TaskView>, RegistryError> {
        let main = page_of(&self.files[0], after, filter, limit, budget)?;
        let history = history_page(&self.files[1], after, filter, limit, budget)?;
        Ok(Page::merge(main, history, limit))
    }
}
