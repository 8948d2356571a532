//! The watch hub: every event the master publishes gets the next sequence
//! number, goes into a bounded ring (by count and by bytes), and out to live
//! watchers. A watcher resumes after any sequence number the ring still
//! holds, so falling behind or reconnecting loses nothing within the ring.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::master::types::WatchEvent;

/// Default [`crate::MasterConfig::watch_history`]: events kept for resuming watchers.
pub const DEFAULT_WATCH_HISTORY: usize = 100_000;
/// Default [`crate::MasterConfig::watch_history_bytes`]: 64 MiB.
pub const DEFAULT_WATCH_HISTORY_BYTES: u64 = 64 << 20;
/// Events buffered per live watcher before it must catch up from the ring.
const LIVE_BUFFER: usize = 16_384;

/// One published event and its sequence number.
pub(crate) type Sequenced = Arc<(u64, WatchEvent)>;

/// Roughly what an event holds on to (its output tails dominate).
fn weight(ev: &WatchEvent) -> u64 {
    let tails = match ev {
        WatchEvent::Task(st, _) => st.outcome.as_ref().map(|o| o.stdout.len() + o.stderr.len()).unwrap_or(0),
        _ => 0,
    };
    256 + tails as u64
}

struct Ring {
    last: u64,
    events: VecDeque<Sequenced>,
    bytes: u64,
}

/// Why a watcher cannot resume where it asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone {
    /// The oldest sequence number still held (the next one when none is):
    /// resuming after `oldest - 1` gets everything still held.
    pub oldest: u64,
}

/// How far apart the sequence numbers of two master incarnations start: the
/// first event after the registry's epoch E is numbered
/// `(E << EPOCH_SHIFT) + 1`, so numbers never repeat across restarts (2^40
/// events each), and a watcher resuming with a number from before a restart
/// is told it is gone.
pub const EPOCH_SHIFT: u32 = 40;

pub(crate) struct WatchHub {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Sequenced>,
    max_events: usize,
    max_bytes: u64,
}

impl WatchHub {
    /// `epoch`: the registry's (bumped at every start); numbering starts
    /// after `epoch << EPOCH_SHIFT`.
    pub fn new(epoch: u64, max_events: usize, max_bytes: u64) -> WatchHub {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let last = epoch << EPOCH_SHIFT;
        WatchHub { ring: Mutex::new(Ring { last, events: VecDeque::new(), bytes: 0 }), live, max_events, max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers and publishes one event. Sent under the ring's lock, so live
    /// watchers see events in sequence order whoever publishes them.
    pub fn publish(&self, ev: WatchEvent) {
        let mut r = self.lock();
        r.last += 1;
        let w = weight(&ev);
        let e: Sequenced = Arc::new((r.last, ev));
        r.events.push_back(e.clone());
        r.bytes += w;
        while r.events.len() > self.max_events.max(1) || (r.bytes > self.max_bytes && r.events.len() > 1) {
            if let Some(old) = r.events.pop_front() {
                r.bytes -= weight(&old.1);
            }
        }
        let _ = self.live.send(e);
    }

    /// The sequence number of the newest event (before the first: where
    /// this incarnation's numbering starts).
    pub fn current(&self) -> u64 {
        self.lock().last
    }

    /// Events after `from` still held, and a live receiver for what comes
    /// next (taken together, so nothing falls in between). `from: None`:
    /// only what comes next.
    pub fn follow(&self, from: Option<u64>) -> Result<(Vec<Sequenced>, broadcast::Receiver<Sequenced>), Gone> {
        let r = self.lock();
        let rx = self.live.subscribe();
        let Some(from) = from else { return Ok((Vec::new(), rx)) };
        let oldest = r.events.front().map(|e| e.0).unwrap_or(r.last + 1);
        if from + 1 < oldest {
            return Err(Gone { oldest });
        }
        // Sequence numbers are consecutive in the ring.
        let skip = (from + 1).saturating_sub(oldest) as usize;
        Ok((r.events.iter().skip(skip).cloned().collect(), rx))
    }

    #[cfg(test)]
    fn held(&self) -> (usize, u64) {
        let r = self.lock();
        (r.events.len(), r.bytes)
    }
}

#[cfg(test)]
mod tests {
    use wasmos_model::AgentId;

    use super::*;

    fn ev(n: u64) -> WatchEvent {
        WatchEvent::AgentRemoved(AgentId::new(format!("agent-{n}")).unwrap())
    }

    fn seqs(v: &[Sequenced]) -> Vec<u64> {
        v.iter().map(|e| e.0).collect()
    }

    #[test]
    fn resumes_after_any_held_sequence() {
        let hub = WatchHub::new(0, 3, u64::MAX);
        for n in 1..=5 {
            hub.publish(ev(n));
        }
        // ring holds 3, 4, 5
        assert_eq!(hub.current(), 5);
        assert_eq!(seqs(&hub.follow(Some(2)).unwrap().0), [3, 4, 5]);
        assert_eq!(seqs(&hub.follow(Some(4)).unwrap().0), [5]);
        assert_eq!(seqs(&hub.follow(Some(5)).unwrap().0), Vec::<u64>::new());
        assert_eq!(hub.follow(Some(1)).unwrap_err(), Gone { oldest: 3 });
        assert!(hub.follow(None).unwrap().0.is_empty());
    }

    #[test]
    fn live_events_follow_the_backlog() {
        let hub = WatchHub::new(0, 10, u64::MAX);
        hub.publish(ev(1));
        let (backlog, mut rx) = hub.follow(Some(0)).unwrap();
        hub.publish(ev(2));
        assert_eq!(seqs(&backlog), [1]);
        assert_eq!(rx.try_recv().unwrap().0, 2);
    }

    /// A restarted master (next epoch) numbers after every earlier number:
    /// a watcher resuming from before the restart is told what it can have.
    #[test]
    fn numbers_of_a_new_incarnation_come_after_the_old_ones() {
        let old = WatchHub::new(1, 10, u64::MAX);
        old.publish(ev(1));
        let last_seen = old.current();
        let new = WatchHub::new(2, 10, u64::MAX);
        assert!(new.current() > last_seen);
        new.publish(ev(2));
        let first = new.current();
        assert_eq!(new.follow(Some(last_seen)).unwrap_err(), Gone { oldest: first });
        assert_eq!(seqs(&new.follow(Some(first - 1)).unwrap().0), [first]);
        // Nothing held yet: the next number.
        assert_eq!(WatchHub::new(3, 10, u64::MAX).follow(Some(last_seen)).unwrap_err(), Gone { oldest: (3 << 40) + 1 });
    }

    #[test]
    fn bounded_by_bytes() {
        // each event weighs 256 bytes: 600 bytes hold two
        let hub = WatchHub::new(0, 100, 600);
        for n in 1..=5 {
            hub.publish(ev(n));
        }
        assert_eq!(hub.held(), (2, 512));
        assert_eq!(hub.follow(Some(2)).unwrap_err(), Gone { oldest: 4 });
    }
}
