//! The built-in `batch` framework: the queue behind `wasmos submit`.
//!
//! It lives inside the master (no gRPC hop) but plays by the same rules as a
//! remote framework: it only sees offers, answers with launches and declines,
//! and learns outcomes from status updates. Tasks are taken by priority (higher
//! first), FIFO within a priority; tasks whose agent was lost are retried up to
//! their attempt budget.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use wasmos_model::{Resources, TaskId};

/// Default attempts per batch task (first run plus retries after a lost agent).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How many queued tasks that do not fit an offer are skipped over before the
/// offer is given up on (bounds the work per offer with a heterogeneous queue).
pub const MAX_SKIPPED_PER_OFFER: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct BatchTask {
    pub resources: Resources,
    pub priority: i32,
    pub constraints: Vec<(String, String)>,
    pub attempts: u32,
    pub max_attempts: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// (priority, FIFO order, task)
    queue: BinaryHeap<(i32, Reverse<u64>, TaskId)>,
    seq: u64,
    pub tasks: HashMap<TaskId, BatchTask>,
    pub suppressed: bool,
    /// Queued tasks that started elsewhere (adopted after a master restart):
    /// skipped when their queue entry comes up.
    taken: std::collections::HashSet<TaskId>,
}

impl Batch {
    pub fn enqueue(&mut self, id: TaskId, task: BatchTask) {
        self.seq += 1;
        self.queue.push((task.priority, Reverse(self.seq), id.clone()));
        self.tasks.insert(id, task);
    }

    /// Puts a task back (after a lost agent), keeping its priority.
    pub fn requeue(&mut self, id: &TaskId) -> bool {
        let Some(t) = self.tasks.get(id) else { return false };
        self.seq += 1;
        self.queue.push((t.priority, Reverse(self.seq), id.clone()));
        true
    }

    pub fn queued(&self) -> usize {
        self.queue.len().saturating_sub(self.taken.len())
    }

    /// Removes a queued task from the queue, keeping its batch record (it runs).
    pub fn take(&mut self, id: &TaskId) {
        self.taken.insert(id.clone());
    }

    /// Drops a task from the queue (killed while queued); lazily skipped on pop.
    pub fn forget(&mut self, id: &TaskId) {
        self.tasks.remove(id);
    }

    /// Picks the queued tasks to launch on an offer of `free` resources from an
    /// agent with `attributes`.
    pub fn pick(&mut self, free: &Resources, attributes: &BTreeMap<String, String>) -> Vec<TaskId> {
        let mut left = free.clone();
        let mut picked = Vec::new();
        let mut skipped = Vec::new();
        while let Some(entry) = self.queue.pop() {
            if self.taken.remove(&entry.2) {
                continue;
            }
            let Some(t) = self.tasks.get(&entry.2) else { continue }; // forgotten
            let fits = left.contains(&t.resources)
                && t.constraints.iter().all(|(k, v)| attributes.get(k).is_some_and(|a| a == v));
            if fits {
                left.sub_assign(&t.resources);
                picked.push(entry.2);
            } else {
                skipped.push(entry);
                if skipped.len() >= MAX_SKIPPED_PER_OFFER {
                    break;
                }
            }
        }
        self.queue.extend(skipped);
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(cpus: &str, priority: i32) -> BatchTask {
        BatchTask {
            resources: Resources::parse(&format!("cpus:{cpus}")).unwrap(),
            priority,
            constraints: vec![],
            attempts: 0,
            max_attempts: 3,
        }
    }

    #[test]
    fn priority_then_fifo_and_packing() {
        let mut b = Batch::default();
        let id = |s: &str| TaskId::new(s).unwrap();
        b.enqueue(id("a"), task("1", 0));
        b.enqueue(id("b"), task("1", 5));
        b.enqueue(id("c"), task("1", 0));
        b.enqueue(id("big"), task("3", 9));
        // 2 cpus: big (priority 9) does not fit; b (5) then a (0, first in) do.
        let picked = b.pick(&Resources::parse("cpus:2").unwrap(), &BTreeMap::new());
        assert_eq!(picked, vec![id("b"), id("a")]);
        assert_eq!(b.queued(), 2);
        let picked = b.pick(&Resources::parse("cpus:4").unwrap(), &BTreeMap::new());
        assert_eq!(picked, vec![id("big"), id("c")]);
    }

    #[test]
    fn constraints_match_agent_attributes() {
        let mut b = Batch::default();
        let mut t = task("1", 0);
        t.constraints = vec![("zone".into(), "eu".into())];
        b.enqueue(TaskId::new("x").unwrap(), t);
        let us: BTreeMap<String, String> = [("zone".to_string(), "us".to_string())].into();
        assert!(b.pick(&Resources::parse("cpus:4").unwrap(), &us).is_empty());
        let eu: BTreeMap<String, String> = [("zone".to_string(), "eu".to_string())].into();
        assert_eq!(b.pick(&Resources::parse("cpus:4").unwrap(), &eu).len(), 1);
    }
}
