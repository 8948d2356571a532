//! The soak's faults, again and again at seeded moments: `kill -9` the
//! master and restart it on the same state, `kill -9` an agent and restart
//! it, SIGSTOP an agent past the agent timeout then SIGCONT it, and drop the
//! remote framework's connection and resubscribe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Proc, Remote, Rng, wait_up};

/// The processes under test.
pub struct Cluster {
    pub master: Proc,
    pub agents: Vec<Proc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillMaster,
    KillAgent(usize),
    StopAgent(usize),
    DropFramework,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillMaster => "kill-master",
            Fault::KillAgent(_) => "kill-agent",
            Fault::StopAgent(_) => "stop-agent",
            Fault::DropFramework => "drop-framework",
        }
    }
}

/// `n` faults of random kinds at moments drawn uniformly from 10% to 90% of
/// `duration` (so the first quarter warms up mostly undisturbed and the
/// last faults have time to heal before the load stops), in time order.
pub fn schedule(rng: &mut Rng, n: usize, duration: Duration, agents: usize) -> Vec<(Duration, Fault)> {
    let mut plan: Vec<(Duration, Fault)> = (0..n)
        .map(|_| {
            let at = duration.mul_f64(0.1 + 0.8 * rng.unit());
            let fault = match rng.below(4) {
                0 => Fault::KillMaster,
                1 => Fault::KillAgent(rng.below(agents)),
                2 => Fault::StopAgent(rng.below(agents)),
                _ => Fault::DropFramework,
            };
            (at, fault)
        })
        .collect();
    plan.sort_by_key(|(at, _)| *at);
    plan
}

/// Which process a fault restarted: its memory starts over, so the growth
/// check leaves out the samples right after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarted {
    Master,
    Agent(usize),
}

/// One injected fault, for the log, faults.csv and the plot.
#[derive(Debug, Clone)]
pub struct Injected {
    /// Seconds since the load started: when it began and when it was over
    /// (the restarted master answering, the stopped agent continued).
    pub t: f64,
    pub end: f64,
    pub fault: Fault,
    pub detail: String,
    pub restarted: Option<Restarted>,
}

/// The remote framework while it runs: stopped and started again by the
/// DropFramework fault and at the end. Like a real framework it
/// resubscribes, under its id, whenever its connection ends on its own (the
/// master was killed).
pub struct RemoteCtl {
    remote: Remote,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<String>,
}

impl RemoteCtl {
    pub fn start(remote: Remote, framework_id: String) -> RemoteCtl {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let r = remote.clone();
        let task = tokio::spawn(async move {
            let mut id = framework_id;
            loop {
                id = r.clone().run(id, rx.clone()).await;
                if *rx.borrow() {
                    return id;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        RemoteCtl { remote, stop, task }
    }

    /// Drops its connection; returns its framework id.
    pub async fn stop(self) -> String {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

pub struct Injector {
    pub cluster: Arc<Mutex<Cluster>>,
    pub url: String,
    /// Bumped at every master restart (the watch recorder starts afresh).
    pub master_epoch: Arc<AtomicU64>,
    pub remote: tokio::sync::Mutex<Option<RemoteCtl>>,
    /// How long a SIGSTOP lasts: past the master's agent timeout.
    pub stop_for: Duration,
    pub start: Instant,
    pub log: Arc<Mutex<Vec<Injected>>>,
}

impl Injector {
    /// Injects each fault of `plan` at its moment (or, when the one before
    /// took longer, right after it), logging each as it happens.
    pub async fn run(&self, plan: Vec<(Duration, Fault)>) {
        for (at, fault) in plan {
            tokio::time::sleep_until((self.start + at).into()).await;
            let t = self.start.elapsed().as_secs_f64();
            let (detail, restarted) = self.inject(fault).await;
            let end = self.start.elapsed().as_secs_f64();
            println!("soak: t={t:7.1}s fault {}: {detail}", fault.name());
            self.log.lock().unwrap().push(Injected { t, end, fault, detail, restarted });
        }
    }

    async fn inject(&self, fault: Fault) -> (String, Option<Restarted>) {
        match fault {
            Fault::KillMaster => {
                self.cluster.lock().unwrap().master.restart();
                self.master_epoch.fetch_add(1, Ordering::SeqCst);
                let detail = match wait_up(&self.url, Duration::from_secs(120)).await {
                    Some(d) => format!("kill -9 master, restarted on its state: answering after {d:.2?}"),
                    None => "kill -9 master, restarted on its state: NOT answering after 120 s".into(),
                };
                (detail, Some(Restarted::Master))
            }
            Fault::KillAgent(i) => {
                self.cluster.lock().unwrap().agents[i].restart();
                (format!("kill -9 agent {i}, restarted on its work dir"), Some(Restarted::Agent(i)))
            }
            Fault::StopAgent(i) => {
                self.cluster.lock().unwrap().agents[i].signal("-STOP");
                tokio::time::sleep(self.stop_for).await;
                self.cluster.lock().unwrap().agents[i].signal("-CONT");
                (format!("SIGSTOP agent {i} for {:?} (past the agent timeout), SIGCONT", self.stop_for), None)
            }
            Fault::DropFramework => {
                let mut slot = self.remote.lock().await;
                let Some(ctl) = slot.take() else { return ("no remote framework running".into(), None) };
                let remote = ctl.remote.clone();
                let fid = ctl.stop().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                *slot = Some(RemoteCtl::start(remote, fid.clone()));
                (format!("remote framework {fid} disconnected, resubscribed after 0.5 s"), None)
            }
        }
    }
}
