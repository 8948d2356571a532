//! The `mem` limit: linear memories plus tables of one task, counted together.

use wasmtime::ResourceLimiter;

/// Bytes charged per table element (wasmtime stores one pointer per element).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Counts the bytes a task's memories and tables hold and refuses growth past
/// `limit`. A refused `memory.grow` returns -1 inside the guest, as the spec
/// says; the refusal is remembered so a later trap is reported as
/// `out_of_memory`.
#[derive(Debug)]
pub(crate) struct MemLimiter {
    limit: u64,
    used: u64,
    peak: u64,
    /// Bytes granted by the last successful `*_growing` call, undone if the
    /// grow then fails for another reason (declared maximum, OS refusal).
    last_grant: u64,
    /// Description of the first refused grow, if any.
    pub(crate) refused: Option<String>,
    max_instances: usize,
    max_tables: usize,
    max_memories: usize,
}

impl MemLimiter {
    pub(crate) fn new(limit: u64, max_instances: usize, max_tables: usize, max_memories: usize) -> Self {
        MemLimiter { limit, used: 0, peak: 0, last_grant: 0, refused: None, max_instances, max_tables, max_memories }
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak
    }

    /// Memory (linear memories and tables) in use now.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    fn grow(&mut self, what: &str, current_bytes: u64, desired_bytes: u64) -> bool {
        let delta = desired_bytes.saturating_sub(current_bytes);
        let want = self.used.saturating_add(delta);
        if want > self.limit {
            if self.refused.is_none() {
                self.refused = Some(format!(
                    "{what} grow from {current_bytes} to {desired_bytes} bytes refused: the task would hold \
                     {want} bytes, over its mem limit of {} bytes; raise --mem if it needs more",
                    self.limit
                ));
            }
            self.last_grant = 0;
            return false;
        }
        self.used = want;
        self.peak = self.peak.max(self.used);
        self.last_grant = delta;
        true
    }

    fn undo_last(&mut self) {
        self.used = self.used.saturating_sub(self.last_grant);
        self.last_grant = 0;
    }
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow("memory", current as u64, desired as u64))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let b = TABLE_ELEMENT_BYTES as u64;
        Ok(self.grow("table", current as u64 * b, desired as u64 * b))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last();
        Ok(())
    }

    fn instances(&self) -> usize {
        self.max_instances
    }
    fn tables(&self) -> usize {
        self.max_tables
    }
    fn memories(&self) -> usize {
        self.max_memories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_memories_and_tables_together() {
        let mut l = MemLimiter::new(100, 10, 10, 10);
        assert!(l.memory_growing(0, 64, None).unwrap());
        assert!(l.table_growing(0, 4, None).unwrap()); // 4 x 8 = 32 bytes: 96 in all
        assert!(!l.memory_growing(64, 72, None).unwrap()); // 104 > 100
        assert!(l.refused.as_deref().unwrap().contains("over its mem limit of 100 bytes"));
        assert!(l.memory_growing(64, 68, None).unwrap()); // exactly 100
        l.memory_grow_failed(wasmtime::format_err!("declared maximum")).unwrap();
        assert_eq!(l.used, 96);
        assert_eq!(l.peak(), 100);
    }
}
