//! Keeps N replicas of a task running (config `replicas=N`, default 2;
//! `backoff_ms=B`, default 200; `max_parallel=P`, default 1). Each job
//! submitted with `wasmos submit --framework service MODULE` defines one
//! service; replicas that end, for any reason (a failed health check too),
//! are restarted after an exponential backoff (B, 2B, 4B, ... capped at
//! 30 s), reset after a replica has run 10 s.
//!
//! When a replica's agent drains (an update with `drain-deadline-ms`), the
//! service starts a replacement elsewhere first and stops the old replica
//! only once the replacement runs (and is healthy, when the service has a
//! health check), at most P moves at a time: it never runs fewer than N
//! replicas because of a drain.

use wasmos_guest::{res, Call, Job, Offer, Scheduler, TaskSpec, TaskState, TaskStatus};

struct Service {
    template: Job,
    /// Replicas launched and not ended: (task id, launched at).
    running: Vec<(String, u64)>,
    launched: u64,
    failures: u32,
    not_before: u64,
    /// Replicas on a draining agent, waiting for a replacement.
    to_move: Vec<String>,
    /// (old replica, its replacement) while the replacement starts.
    moving: Vec<(String, String)>,
    /// Old replicas replaced and being stopped: their end restarts nothing.
    retiring: Vec<String>,
}

struct Services {
    replicas: usize,
    backoff_ms: u64,
    max_parallel: usize,
    services: Vec<Service>,
}

const MAX_BACKOFF_MS: u64 = 30_000;
const HEALTHY_MS: u64 = 10_000;

impl Service {
    /// Replicas counted against N: running, and not retiring.
    fn serving(&self) -> usize {
        self.running.iter().filter(|(id, _)| !self.retiring.contains(id)).count()
    }
    fn wants_replica(&self, replicas: usize, now: u64) -> bool {
        self.serving() < replicas && now >= self.not_before
    }
    fn wants_move(&self, max_parallel: usize) -> bool {
        !self.to_move.is_empty() && self.moving.len() < max_parallel
    }
    fn next_task(&mut self, now: u64) -> TaskSpec {
        self.launched += 1;
        let mut t = wasmos_guest::task_for(self.template.clone());
        t.task_id = format!("{}-{}", self.template.id, self.launched);
        self.running.push((t.task_id.clone(), now));
        t
    }
}

impl Services {
    fn wanted(&self, now: u64) -> bool {
        self.services.iter().any(|s| s.wants_replica(self.replicas, now) || s.wants_move(self.max_parallel))
    }
}

impl Scheduler for Services {
    fn init(config: &str) -> Result<Self, String> {
        let num = |key: &str, default: u64| -> Result<u64, String> {
            match wasmos_guest::config_value(config, key) {
                Some(v) => v.parse().map_err(|_| format!("{key}={v} is not a number")),
                None => Ok(default),
            }
        };
        let replicas = num("replicas", 2)? as usize;
        if replicas == 0 || replicas > 1000 {
            return Err("replicas must be between 1 and 1000".into());
        }
        let max_parallel = num("max_parallel", 1)? as usize;
        if max_parallel == 0 {
            return Err("max_parallel must be at least 1".into());
        }
        Ok(Services { replicas, backoff_ms: num("backoff_ms", 200)?.max(1), max_parallel, services: Vec::new() })
    }

    fn initial_calls(&mut self) -> Vec<Call> {
        vec![Call::Suppress]
    }

    fn on_submit(&mut self, job: Job) -> Vec<Call> {
        wasmos_guest::host::info(&format!("service {} wants {} replicas", job.id, self.replicas));
        self.services.push(Service {
            template: job,
            running: Vec::new(),
            launched: 0,
            failures: 0,
            not_before: 0,
            to_move: Vec::new(),
            moving: Vec::new(),
            retiring: Vec::new(),
        });
        vec![Call::Revive]
    }

    fn on_offers(&mut self, offers: Vec<Offer>) -> Vec<Call> {
        let now = wasmos_guest::host::now_ms();
        let mut calls = Vec::new();
        for o in offers {
            let mut free = o.resources.clone();
            let mut tasks: Vec<TaskSpec> = Vec::new();
            for s in self.services.iter_mut() {
                // Replacements for replicas on draining agents first.
                while s.wants_move(self.max_parallel) && res::fits(&free, &s.template.resources) {
                    res::take(&mut free, &s.template.resources);
                    let old = s.to_move.remove(0);
                    let t = s.next_task(now);
                    wasmos_guest::host::info(&format!("replica {old} is on a draining agent: starting {}", t.task_id));
                    s.moving.push((old, t.task_id.clone()));
                    tasks.push(t);
                }
                while s.wants_replica(self.replicas, now) && res::fits(&free, &s.template.resources) {
                    res::take(&mut free, &s.template.resources);
                    tasks.push(s.next_task(now));
                }
            }
            calls.push(wasmos_guest::launch_or_decline(o.id, tasks));
        }
        if !self.wanted(now) {
            calls.push(Call::Suppress);
        }
        calls
    }

    fn on_update(&mut self, status: TaskStatus) -> Vec<Call> {
        let now = wasmos_guest::host::now_ms();
        let mut calls = Vec::new();
        let id = &status.task_id;
        if status.drain_deadline_ms.is_some() {
            for s in self.services.iter_mut() {
                let ours = s.running.iter().any(|(r, _)| r == id);
                let known = s.to_move.contains(id) || s.moving.iter().any(|(o, _)| o == id) || s.retiring.contains(id);
                if ours && !known {
                    s.to_move.push(id.clone());
                    calls.push(Call::Revive);
                }
            }
            return calls;
        }
        if status.state == TaskState::Running {
            // A replacement runs (and, when the service has a health check,
            // is healthy): stop the replica it replaces.
            for s in self.services.iter_mut() {
                let ready = s.template.health.is_none() || status.healthy == Some(true);
                if !ready {
                    continue;
                }
                if let Some(pos) = s.moving.iter().position(|(_, new)| new == id) {
                    let (old, _) = s.moving.remove(pos);
                    wasmos_guest::host::info(&format!("{id} runs: stopping {old}"));
                    s.retiring.push(old.clone());
                    calls.push(Call::Kill(old));
                }
            }
            if self.wanted(now) {
                calls.push(Call::Revive);
            }
            return calls;
        }
        let ended = matches!(
            status.state,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Error | TaskState::Lost | TaskState::Dropped
        );
        if !ended {
            return calls;
        }
        for s in self.services.iter_mut() {
            let Some(pos) = s.running.iter().position(|(r, _)| r == id) else { continue };
            let (_, started) = s.running.remove(pos);
            if let Some(p) = s.retiring.iter().position(|r| r == id) {
                // Replaced: nothing to restart.
                s.retiring.remove(p);
                continue;
            }
            // It ended before it was moved (killed at the drain's deadline),
            // or its replacement ended before it ran: the usual restart.
            s.to_move.retain(|r| r != id);
            if let Some(p) = s.moving.iter().position(|(_, new)| new == id) {
                let (old, _) = s.moving.remove(p);
                s.to_move.push(old);
            }
            s.moving.retain(|(old, _)| old != id);
            if now.saturating_sub(started) >= HEALTHY_MS {
                s.failures = 0;
            }
            let delay = (self.backoff_ms << s.failures.min(20)).min(MAX_BACKOFF_MS);
            s.failures += 1;
            s.not_before = now + delay;
            let why = if status.reason.is_empty() { format!("{:?}", status.state) } else { status.reason.clone() };
            wasmos_guest::host::info(&format!("replica {id} ended ({why}); restarting in {delay} ms"));
            calls.push(Call::SetTimer(delay));
        }
        calls
    }

    fn on_timer(&mut self) -> Vec<Call> {
        let now = wasmos_guest::host::now_ms();
        let mut calls = Vec::new();
        if self.wanted(now) {
            calls.push(Call::Revive);
        }
        // Re-arm for services still backing off.
        if let Some(next) = self
            .services
            .iter()
            .filter(|s| s.serving() < self.replicas && s.not_before > now)
            .map(|s| s.not_before)
            .min()
        {
            calls.push(Call::SetTimer(next - now));
        }
        calls
    }
}

wasmos_guest::scheduler!(Services);
