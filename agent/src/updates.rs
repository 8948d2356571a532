//! Status updates, from the moment a task reports one until the master
//! acknowledges it. [`Updates`] is their one owner: the queue the sender
//! works through (which also says which tasks still have updates out, for
//! registration) and the checkpoint records of each update.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use wasmos_proto::v1;

use crate::Agent;
use crate::checkpoint::Checkpoint;
use crate::executor::Executor;
use crate::link::Backoff;

/// Per-process generator of status update UUIDs (random-seeded counter).
struct Uuids {
    seed: u64,
    next: AtomicU64,
}

impl Uuids {
    fn new() -> Uuids {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let seed = (t as u64) ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        Uuids { seed, next: AtomicU64::new(1) }
    }
    fn make(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.seed.to_le_bytes());
        v.extend_from_slice(&n.to_le_bytes());
        v
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Every update not yet acknowledged, oldest first. New ones join at the
/// back; only the sender removes them, from the front batch it sent. So the
/// tasks named in the queue are exactly those with unacknowledged updates,
/// which the master must not give up as lost when the agent reregisters.
pub(crate) struct Updates {
    queue: Mutex<VecDeque<v1::TaskStatus>>,
    /// Woken when the queue gets something.
    added: Notify,
    uuids: Uuids,
    /// Holds every update in `queue` (it writes a little later, see `checkpoint.rs`).
    checkpoint: Option<Checkpoint>,
    /// Encoded bytes of the updates in `queue` (changed under its lock).
    bytes: AtomicU64,
    /// Most `bytes` kept ([`crate::AgentConfig::max_spool_bytes`]).
    max_bytes: u64,
    /// Updates dropped because the spool was full (reported with heartbeats).
    pub dropped: AtomicU64,
}

impl Updates {
    pub fn new(checkpoint: Option<Checkpoint>, max_bytes: u64) -> Updates {
        Updates {
            queue: Mutex::new(VecDeque::new()),
            added: Notify::new(),
            uuids: Uuids::new(),
            checkpoint,
            bytes: AtomicU64::new(0),
            max_bytes,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<v1::TaskStatus>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an update; when the spool is then over its bytes, drops the
    /// oldest updates that are not a task's end (a later update supersedes
    /// them), then strips the oldest ends of their output (the end itself
    /// still arrives: the master never waits for a task the agent forgot),
    /// and only then drops the oldest updates of any kind; never the one just
    /// queued. Every drop and strip is counted (and reaches the checkpoint).
    fn push(&self, st: v1::TaskStatus) {
        let (dropped, stripped) = {
            let mut q = self.lock();
            let len = wasmos_proto::encoded_len(&st) as u64;
            q.push_back(st);
            let mut total = self.bytes.fetch_add(len, Ordering::Relaxed) + len;
            let mut dropped = Vec::new();
            let mut stripped = Vec::new();
            while total > self.max_bytes && q.len() > 1 {
                let last = q.len() - 1;
                if let Some(i) = q.iter().take(last).position(|u| !is_final(u)) {
                    let Some(u) = q.remove(i) else { break };
                    let l = wasmos_proto::encoded_len(&u) as u64;
                    total -= l;
                    self.bytes.fetch_sub(l, Ordering::Relaxed);
                    dropped.push(u.uuid);
                } else if let Some(u) = q.iter_mut().take(last).find(|u| !is_stripped(u)) {
                    let before = wasmos_proto::encoded_len(u) as u64;
                    strip(u);
                    let after = wasmos_proto::encoded_len(u) as u64;
                    // (An end with no output may grow by the note: counted too.)
                    total = total - before + after;
                    self.bytes.fetch_sub(before, Ordering::Relaxed);
                    self.bytes.fetch_add(after, Ordering::Relaxed);
                    stripped.push(u.clone());
                } else {
                    let Some(u) = q.pop_front() else { break };
                    let l = wasmos_proto::encoded_len(&u) as u64;
                    total -= l;
                    self.bytes.fetch_sub(l, Ordering::Relaxed);
                    dropped.push(u.uuid);
                }
            }
            (dropped, stripped)
        };
        if let Some(cp) = &self.checkpoint {
            for u in &stripped {
                cp.update(u);
            }
        }
        let lost = dropped.len() + stripped.len();
        if lost > 0 {
            let before = self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            let after = before + lost as u64;
            // Said once, then at each power of two: never silent, never a flood.
            if before == 0 || before.leading_zeros() != after.leading_zeros() {
                eprintln!(
                    "wasmos agent: the spool of undelivered status updates is full ({} bytes, --max-spool); \
                     {after} update(s) dropped or stripped of their output so far, oldest first",
                    self.max_bytes
                );
            }
            if let Some(cp) = &self.checkpoint
                && !dropped.is_empty()
            {
                cp.acked(&dropped, &[]);
            }
        }
        self.added.notify_one();
    }

    /// A new update: gets a UUID and the time, goes to the checkpoint and is
    /// queued for the master.
    pub fn report(&self, mut st: v1::TaskStatus) {
        st.uuid = self.uuids.make();
        st.timestamp_ms = now_ms();
        if let Some(cp) = &self.checkpoint {
            cp.update(&st);
        }
        self.push(st);
    }

    /// Updates restored from the checkpoint (so already in it), sent again.
    pub fn resend(&self, restored: Vec<v1::TaskStatus>) {
        for st in restored {
            self.push(st);
        }
    }

    /// What this agent reports when it (re)registers: the tasks it runs
    /// (`live`), and after them, as RUNNING, the other tasks with updates in
    /// the queue (so the master waits for those updates instead of giving the
    /// tasks up).
    pub fn known_tasks(&self, agent_id: &str, mut live: Vec<v1::TaskStatus>) -> Vec<v1::TaskStatus> {
        let mut seen: HashSet<String> = live.iter().map(|t| t.task_id.clone()).collect();
        let q = self.lock();
        for u in q.iter() {
            if seen.insert(u.task_id.clone()) {
                live.push(v1::TaskStatus {
                    task_id: u.task_id.clone(),
                    agent_id: agent_id.to_string(),
                    state: v1::TaskState::TaskRunning as i32,
                    attempt: u.attempt,
                    ..Default::default()
                });
            }
        }
        live
    }

    /// Waits until the queue holds something.
    async fn wait(&self) {
        while self.lock().is_empty() {
            // `notify_one` keeps a permit when nobody waits: nothing is missed
            // between the check and this wait.
            self.added.notified().await;
        }
    }

    /// The first `max` updates of the queue.
    /// The oldest updates, at most `max` and `UPDATE_BATCH_BYTES` (at least one).
    fn front(&self, max: usize) -> Vec<v1::TaskStatus> {
        let q = self.lock();
        let mut bytes = 0;
        let mut out = Vec::new();
        for u in q.iter().take(max) {
            bytes += wasmos_proto::encoded_len(u);
            if !out.is_empty() && bytes > UPDATE_BATCH_BYTES {
                break;
            }
            out.push(u.clone());
        }
        out
    }

    /// Drops the acknowledged updates among the first `sent` and returns
    /// whether some of those `sent` are still unacknowledged. A task whose
    /// final update is acknowledged leaves the checkpoint with it unless it
    /// was launched here again since.
    fn acked(&self, sent: usize, acked: &HashSet<Vec<u8>>, executor: &Executor) -> bool {
        let (done, left) = {
            let mut q = self.lock();
            let n = sent.min(q.len());
            let (done, kept): (Vec<_>, Vec<_>) = q.drain(..n).partition(|u| acked.contains(&u.uuid));
            let freed: u64 = done.iter().map(|u| wasmos_proto::encoded_len(u) as u64).sum();
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            let left = !kept.is_empty();
            for u in kept.into_iter().rev() {
                q.push_front(u);
            }
            (done, left)
        };
        if let Some(cp) = &self.checkpoint {
            let ended = done
                .iter()
                .filter(|u| wasmos_proto::state_from_wire(u.state).is_some_and(|s| s.is_terminal()))
                .map(|u| u.task_id.clone())
                .collect();
            let uuids: Vec<Vec<u8>> = done.into_iter().map(|u| u.uuid).collect();
            executor.unless_live(ended, |ended| cp.acked(&uuids, ended));
        }
        left
    }
}

/// What an end stripped of its output says instead (short: it is kept).
pub(crate) const STRIPPED: &str = "output dropped: agent spool full";

fn is_stripped(u: &v1::TaskStatus) -> bool {
    u.message == STRIPPED
}

/// An end without its output: the state, the outcome's kind and numbers stay.
fn strip(u: &mut v1::TaskStatus) {
    u.message = STRIPPED.into();
    u.snapshot.clear();
    if let Some(o) = &mut u.outcome {
        o.stdout_truncated |= !o.stdout.is_empty();
        o.stderr_truncated |= !o.stderr.is_empty();
        o.stdout.clear();
        o.stderr.clear();
        o.message = None;
    }
}

fn is_final(u: &v1::TaskStatus) -> bool {
    wasmos_proto::state_from_wire(u.state).is_some_and(|s| s.is_terminal())
}

/// Most bytes of updates in one Update call (outputs and snapshots make
/// some updates large; the master takes up to `MAX_MESSAGE_BYTES`).
const UPDATE_BATCH_BYTES: usize = 4 << 20;

/// Sends the queued updates in batches (at most `update_batch` per Update
/// call) until the agent stops; an update leaves the queue only once the
/// master acknowledges it.
pub(crate) async fn send(agent: Arc<Agent>) {
    let updates = &agent.updates;
    let mut backoff = Backoff::new(Duration::from_millis(50), agent.cfg.max_backoff);
    // Some of the last batch are not acknowledged: send again without waiting.
    let mut unfinished = false;
    loop {
        if !unfinished {
            updates.wait().await;
            // Let a task that just reported RUNNING finish its (often tiny)
            // run first, so RUNNING and FINISHED travel in one call.
            tokio::task::yield_now().await;
        }
        let batch = updates.front(agent.cfg.update_batch);
        let n = batch.len();
        let result = agent.link.client().update(v1::StatusUpdates { agent_id: agent.link.id(), updates: batch }).await;
        match result {
            Ok(acks) => {
                let acked: HashSet<Vec<u8>> = acks.into_inner().uuids.into_iter().collect();
                unfinished = updates.acked(n, &acked, &agent.executor);
                agent.link.contact();
                backoff.reset();
            }
            Err(_) => {
                // The master cannot be reached (edge agents, failover): keep
                // everything (it is in the checkpoint) and retry with capped
                // exponential backoff.
                unfinished = true;
                backoff.wait().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::tests::executor;
    use v1::TaskState::{TaskFinished as Finished, TaskRunning as Running};

    fn status(task: &str, state: v1::TaskState) -> v1::TaskStatus {
        v1::TaskStatus { task_id: task.into(), agent_id: "a1".into(), state: state as i32, ..Default::default() }
    }

    fn queued(u: &Updates) -> Vec<(String, i32)> {
        u.front(usize::MAX).into_iter().map(|s| (s.task_id, s.state)).collect()
    }

    fn acks(sent: &[v1::TaskStatus], which: &[usize]) -> HashSet<Vec<u8>> {
        which.iter().map(|&i| sent[i].uuid.clone()).collect()
    }

    #[test]
    fn acknowledged_updates_leave_the_rest_stay_in_order_and_count_for_registration() {
        let (ex, u) = (executor(), Updates::new(None, u64::MAX));
        for (t, s) in [("a", Running), ("b", Running), ("a", Finished), ("b", Finished)] {
            u.report(status(t, s));
        }
        let sent = u.front(3);
        assert_eq!(sent.len(), 3);
        // The master acknowledges a's two updates but not b's RUNNING.
        assert!(u.acked(3, &acks(&sent, &[0, 2]), &ex), "b RUNNING is still out");
        assert_eq!(queued(&u), [("b".into(), Running as i32), ("b".into(), Finished as i32)]);
        // Registration: b (not running here any more) is reported once, as RUNNING.
        let known = u.known_tasks("a1", vec![]);
        assert_eq!(known.iter().map(|t| (t.task_id.as_str(), t.state)).collect::<Vec<_>>(), [("b", Running as i32)]);
        let sent = u.front(10);
        assert!(!u.acked(2, &acks(&sent, &[0, 1]), &ex), "all acknowledged");
        assert!(queued(&u).is_empty());
        assert!(u.known_tasks("a1", vec![]).is_empty());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_non_final_updates_first_and_counts_them() {
        let one = wasmos_proto::encoded_len(&v1::TaskStatus {
            uuid: vec![0; 16],
            timestamp_ms: now_ms(),
            ..status("a", Running)
        }) as u64;
        // Room for about four updates.
        let u = Updates::new(None, one * 4 + one / 2);
        for (t, s) in [("a", Running), ("a", Finished), ("b", Running), ("c", Running), ("b", Finished), ("d", Running)]
        {
            u.report(status(t, s));
        }
        // a RUNNING went first, then b RUNNING: both superseded by their ends.
        assert_eq!(
            queued(&u),
            [
                ("a".into(), Finished as i32),
                ("c".into(), Running as i32),
                ("b".into(), Finished as i32),
                ("d".into(), Running as i32)
            ]
        );
        assert_eq!(u.dropped.load(Ordering::Relaxed), 2);
        // Only ends left: the oldest are stripped of their output first (the
        // end still arrives; counted), never the newest update.
        let end = |t: &str| v1::TaskStatus {
            outcome: Some(v1::Outcome { stdout: vec![b'x'; 200], stderr: vec![b'y'; 50], ..Default::default() }),
            ..status(t, Finished)
        };
        let full =
            wasmos_proto::encoded_len(&v1::TaskStatus { uuid: vec![0; 16], timestamp_ms: now_ms(), ..end("a") }) as u64;
        let u = Updates::new(None, full * 2 + 20);
        for t in ["a", "b", "c"] {
            u.report(end(t));
        }
        let q = u.front(10);
        assert_eq!(q.iter().map(|s| s.task_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"], "every end kept");
        assert!(
            q[..2].iter().all(|s| s.message == STRIPPED
                && s.outcome.as_ref().is_some_and(|o| o.stdout.is_empty() && o.stdout_truncated))
        );
        assert_eq!(q[2].outcome.as_ref().unwrap().stdout.len(), 200, "the newest untouched");
        assert_eq!(u.dropped.load(Ordering::Relaxed), 2);
        assert!(u.bytes.load(Ordering::Relaxed) <= full * 2 + 20);
        // Ends already stripped and still too many: the oldest goes.
        let u = Updates::new(None, 1);
        for t in ["a", "b"] {
            u.report(status(t, Finished));
        }
        assert_eq!(queued(&u), [("b".into(), Finished as i32)]);
    }

    #[test]
    fn an_ended_task_leaves_the_checkpoint_unless_it_runs_here_again() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, _) = Checkpoint::open(dir.path(), Duration::from_millis(1)).unwrap();
        let (ex, u) = (executor(), Updates::new(Some(cp.clone()), u64::MAX));
        cp.launched("once", "fw");
        cp.launched("again", "fw");
        u.report(status("once", Finished));
        u.report(status("again", Finished));
        u.report(status("kept", Running));
        // "again" is launched here again before its first run's end is acknowledged.
        assert!(matches!(ex.enter("again", "fw", None, 2), crate::executor::Enter::New(_)));
        let sent = u.front(3);
        assert!(u.acked(3, &acks(&sent, &[0, 1]), &ex));
        cp.close();
        let (_cp, r) = Checkpoint::open(dir.path(), Duration::from_millis(1)).unwrap();
        assert_eq!(r.tasks, [("again".to_string(), "fw".to_string())]);
        let left: Vec<&str> = r.updates.iter().map(|s| s.task_id.as_str()).collect();
        assert_eq!(left, ["kept"]);
    }
}
