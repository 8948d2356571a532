//! Shortest job first: queued jobs run in ascending order of their
//! `--estimated-fuel` (jobs without an estimate go last, FIFO among equals).
//! Deploy with `wasmos framework deploy sjf.wasm --name sjf --role batch`,
//! then `wasmos submit --framework sjf --estimated-fuel N ...`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use wasmos_guest::{res, Call, Job, Offer, Scheduler};

struct Queued {
    /// (estimate, arrival) — smaller first
    key: Reverse<(u64, u64)>,
    job: Job,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.cmp(&o.key)
    }
}

#[derive(Default)]
struct Sjf {
    queue: BinaryHeap<Queued>,
    arrivals: u64,
}

impl Scheduler for Sjf {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Sjf::default())
    }

    fn initial_calls(&mut self) -> Vec<Call> {
        vec![Call::Suppress] // nothing to run until a job arrives
    }

    fn on_submit(&mut self, job: Job) -> Vec<Call> {
        self.arrivals += 1;
        let est = job.estimated_fuel.unwrap_or(u64::MAX);
        self.queue.push(Queued { key: Reverse((est, self.arrivals)), job });
        vec![Call::Revive]
    }

    fn on_offers(&mut self, offers: Vec<Offer>) -> Vec<Call> {
        let mut calls = Vec::new();
        for o in offers {
            let mut free = o.resources.clone();
            let mut tasks = Vec::new();
            // Strict SJF: only the shortest job may take the next slot.
            while let Some(top) = self.queue.peek() {
                if !res::fits(&free, &top.job.resources) {
                    break;
                }
                let q = self.queue.pop().expect("peeked");
                res::take(&mut free, &q.job.resources);
                tasks.push(wasmos_guest::task_for(q.job));
            }
            calls.push(wasmos_guest::launch_or_decline(o.id, tasks));
        }
        if self.queue.is_empty() {
            calls.push(Call::Suppress);
        }
        calls
    }
}

wasmos_guest::scheduler!(Sjf);
