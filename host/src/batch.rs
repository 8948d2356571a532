//! The built-in `batch` framework: the queue behind `wasmos submit`.
//!
//! It lives inside the master (no gRPC hop) but plays by the same rules as a
//! remote framework: it only sees offers, answers with launches and declines,
//! and learns outcomes from status updates. Tasks are taken by priority (higher
//! first), FIFO within a priority; tasks whose agent was lost are retried up to
//! their attempt budget.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use wasmos_model::{Resources, Role, TaskId};

/// Default attempts per batch task (first run plus retries after a lost agent).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How many queued tasks that do not fit an offer are skipped over before the
/// offer is given up on (bounds the work per offer with a heterogeneous queue).
pub const MAX_SKIPPED_PER_OFFER: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct BatchTask {
    /// The role it was submitted to (offers in that role are its only ones).
    pub role: Role,
    pub resources: Resources,
    pub priority: i32,
    pub constraints: Vec<(String, String)>,
    pub attempts: u32,
    pub max_attempts: u32,
}

/// One role's queue: (priority, FIFO order, task).
#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<(i32, Reverse<u64>, TaskId)>,
    /// Queued tasks that started elsewhere (adopted after a master restart):
    /// skipped when their entry comes up.
    taken: HashSet<TaskId>,
    /// Offers in this role are suppressed (nothing queued).
    suppressed: bool,
}

/// The batch framework serves every role something was submitted to, each
/// with its own queue, so DRF and quota apply between the teams that share
/// `wasmos submit`: an offer in role R launches only R's tasks.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    queues: BTreeMap<Role, Queue>,
    seq: u64,
    pub tasks: HashMap<TaskId, BatchTask>,
}

impl Batch {
    /// Queues a task. True if its role is new to the batch framework (the
    /// caller subscribes the framework to it).
    pub fn enqueue(&mut self, id: TaskId, task: BatchTask) -> bool {
        self.seq += 1;
        let new = !self.queues.contains_key(&task.role);
        let q = self.queues.entry(task.role.clone()).or_insert_with(|| Queue { suppressed: true, ..Queue::default() });
        q.heap.push((task.priority, Reverse(self.seq), id.clone()));
        self.tasks.insert(id, task);
        new
    }

    /// Records a task that runs (restored after a restart) without queueing
    /// it. True if its role is new to the batch framework.
    pub fn insert_running(&mut self, id: TaskId, task: BatchTask) -> bool {
        let new = !self.queues.contains_key(&task.role);
        self.queues.entry(task.role.clone()).or_insert_with(|| Queue { suppressed: true, ..Queue::default() });
        self.tasks.insert(id, task);
        new
    }

    /// Puts a task back (after a lost agent), keeping its priority; its role.
    pub fn requeue(&mut self, id: &TaskId) -> Option<Role> {
        let t = self.tasks.get(id)?;
        self.seq += 1;
        let q = self.queues.get_mut(&t.role)?;
        q.heap.push((t.priority, Reverse(self.seq), id.clone()));
        Some(t.role.clone())
    }

    /// Queued tasks in every role.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queues.values().map(|q| q.heap.len().saturating_sub(q.taken.len())).sum()
    }

    /// The roles the batch framework serves.
    pub fn roles(&self) -> Vec<Role> {
        self.queues.keys().cloned().collect()
    }

    /// Whether something was submitted to `role` (since the master started).
    pub fn serves(&self, role: &Role) -> bool {
        self.queues.contains_key(role)
    }

    /// Roles with queued tasks whose offers are suppressed.
    pub fn to_revive(&self) -> Vec<Role> {
        self.queues
            .iter()
            .filter(|(_, q)| q.suppressed && q.heap.len() > q.taken.len())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Roles with nothing queued whose offers are not suppressed yet.
    pub fn to_suppress(&self) -> Vec<Role> {
        self.queues
            .iter()
            .filter(|(_, q)| !q.suppressed && q.heap.len() <= q.taken.len())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Marks a role's offers suppressed or revived.
    pub fn set_suppressed(&mut self, role: &Role, suppressed: bool) {
        if let Some(q) = self.queues.get_mut(role) {
            q.suppressed = suppressed;
        }
    }

    /// Removes a queued task from the queue, keeping its batch record (it runs).
    pub fn take(&mut self, id: &TaskId) {
        if let Some(q) = self.tasks.get(id).and_then(|t| self.queues.get_mut(&t.role)) {
            q.taken.insert(id.clone());
        }
    }

    /// Drops a task from the queue (killed while queued); lazily skipped on pop.
    pub fn forget(&mut self, id: &TaskId) {
        self.tasks.remove(id);
    }

    /// Picks the queued tasks of `role` to launch on an offer of `free`
    /// resources from an agent with `attributes`.
    pub fn pick(&mut self, role: &Role, free: &Resources, attributes: &BTreeMap<String, String>) -> Vec<TaskId> {
        let Some(q) = self.queues.get_mut(role) else { return Vec::new() };
        let mut left = free.clone();
        let mut picked = Vec::new();
        let mut skipped = Vec::new();
        while let Some(entry) = q.heap.pop() {
            if q.taken.remove(&entry.2) {
                continue;
            }
            // Forgotten (killed while queued), or an entry of an earlier stay.
            let Some(t) = self.tasks.get(&entry.2).filter(|t| &t.role == role) else { continue };
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
        q.heap.extend(skipped);
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(s: &str) -> Role {
        Role::new(s).unwrap()
    }

    fn task(cpus: &str, priority: i32) -> BatchTask {
        BatchTask {
            role: role("batch"),
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
        let picked = b.pick(&role("batch"), &Resources::parse("cpus:2").unwrap(), &BTreeMap::new());
        assert_eq!(picked, vec![id("b"), id("a")]);
        assert_eq!(b.queued(), 2);
        let picked = b.pick(&role("batch"), &Resources::parse("cpus:4").unwrap(), &BTreeMap::new());
        assert_eq!(picked, vec![id("big"), id("c")]);
    }

    #[test]
    fn constraints_match_agent_attributes() {
        let mut b = Batch::default();
        let mut t = task("1", 0);
        t.constraints = vec![("zone".into(), "eu".into())];
        b.enqueue(TaskId::new("x").unwrap(), t);
        let us: BTreeMap<String, String> = [("zone".to_string(), "us".to_string())].into();
        assert!(b.pick(&role("batch"), &Resources::parse("cpus:4").unwrap(), &us).is_empty());
        let eu: BTreeMap<String, String> = [("zone".to_string(), "eu".to_string())].into();
        assert_eq!(b.pick(&role("batch"), &Resources::parse("cpus:4").unwrap(), &eu).len(), 1);
    }

    #[test]
    fn each_role_has_its_own_queue() {
        let mut b = Batch::default();
        let id = |s: &str| TaskId::new(s).unwrap();
        assert!(b.enqueue(id("a1"), BatchTask { role: role("a"), ..task("1", 0) }));
        assert!(b.enqueue(id("b1"), BatchTask { role: role("b"), ..task("1", 9) }));
        assert!(!b.enqueue(id("a2"), BatchTask { role: role("a"), ..task("1", 0) }));
        assert_eq!(b.roles(), vec![role("a"), role("b")]);
        // New queues start suppressed: both have work, so both are revived.
        assert_eq!(b.to_revive(), vec![role("a"), role("b")]);
        b.set_suppressed(&role("a"), false);
        b.set_suppressed(&role("b"), false);
        // An offer in a takes only a's tasks, even though b's is first by priority.
        let picked = b.pick(&role("a"), &Resources::parse("cpus:8").unwrap(), &BTreeMap::new());
        assert_eq!(picked, vec![id("a1"), id("a2")]);
        assert_eq!(b.to_suppress(), vec![role("a")]);
        assert!(b.pick(&role("c"), &Resources::parse("cpus:8").unwrap(), &BTreeMap::new()).is_empty());
        assert_eq!(b.queued(), 1);
        // A lost task goes back to its own role's queue.
        assert_eq!(b.requeue(&id("a1")), Some(role("a")));
        assert_eq!(b.pick(&role("b"), &Resources::parse("cpus:8").unwrap(), &BTreeMap::new()), vec![id("b1")]);
        assert_eq!(b.pick(&role("a"), &Resources::parse("cpus:8").unwrap(), &BTreeMap::new()), vec![id("a1")]);
    }
}
