//! Shortest remaining time first, with preemption by pause/resume.
//!
//! At most `active` tasks run at once (config `active=N`, default 1). When a
//! job arrives whose estimated fuel is below the remaining estimate of a
//! running task, that task is paused (the agent stops polling it: no work is
//! lost) and the short job takes its place; paused tasks resume, shortest
//! remaining first, as others end. Remaining time is estimated as
//! `estimated_fuel - running_ms * fuel_per_ms` (config `fuel_per_ms=N`,
//! default 500000).

use std::collections::HashSet;

use wasmos_guest::{res, Call, Job, Offer, Scheduler, TaskState, TaskStatus};

struct Run {
    id: String,
    estimate: u64,
    ran_ms: u64,
    /// When it last started or resumed running; `None` while paused or launching.
    since: Option<u64>,
    paused: bool,
}

struct Srtf {
    active: usize,
    fuel_per_ms: u64,
    queue: Vec<Job>,
    runs: Vec<Run>,
    launching: HashSet<String>,
}

fn estimate(job: &Job) -> u64 {
    job.estimated_fuel.unwrap_or(u64::MAX / 2)
}

impl Srtf {
    fn remaining(&self, r: &Run, now: u64) -> u64 {
        let ran = r.ran_ms + r.since.map(|s| now.saturating_sub(s)).unwrap_or(0);
        r.estimate.saturating_sub(ran.saturating_mul(self.fuel_per_ms))
    }

    fn active_now(&self) -> usize {
        self.runs.iter().filter(|r| !r.paused).count() + self.launching.len()
    }

    /// Preempts while the shortest queued job beats the longest running task.
    fn preempt(&mut self, now: u64) -> Vec<Call> {
        let mut calls = Vec::new();
        while self.active_now() >= self.active {
            let Some(shortest) = self.queue.first().map(estimate) else { break };
            let victim = self
                .runs
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.paused && r.since.is_some())
                .max_by_key(|(_, r)| self.remaining(r, now))
                .map(|(i, r)| (i, self.remaining(r, now)));
            match victim {
                Some((i, rem)) if shortest < rem => {
                    let r = &mut self.runs[i];
                    r.ran_ms += r.since.take().map(|s| now.saturating_sub(s)).unwrap_or(0);
                    r.paused = true;
                    wasmos_guest::host::info(&format!("preempting {} ({rem} fuel left) for a {shortest}-fuel job", r.id));
                    calls.push(Call::Pause(r.id.clone()));
                }
                _ => break,
            }
        }
        calls
    }

    /// Resumes paused tasks while there is room and no queued job is shorter.
    fn resume(&mut self, now: u64) -> Vec<Call> {
        let mut calls = Vec::new();
        while self.active_now() < self.active {
            let best = self
                .runs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.paused)
                .min_by_key(|(_, r)| self.remaining(r, now))
                .map(|(i, r)| (i, self.remaining(r, now)));
            let Some((i, rem)) = best else { break };
            if self.queue.first().is_some_and(|j| estimate(j) < rem) {
                break;
            }
            let r = &mut self.runs[i];
            r.paused = false;
            r.since = Some(now);
            calls.push(Call::Resume(r.id.clone()));
        }
        calls
    }
}

impl Scheduler for Srtf {
    fn init(config: &str) -> Result<Self, String> {
        let active = match wasmos_guest::config_value(config, "active") {
            Some(v) => v.parse().map_err(|_| format!("active={v} is not a number"))?,
            None => 1,
        };
        let fuel_per_ms = match wasmos_guest::config_value(config, "fuel_per_ms") {
            Some(v) => v.parse().map_err(|_| format!("fuel_per_ms={v} is not a number"))?,
            None => 500_000,
        };
        if active == 0 {
            return Err("active must be at least 1".into());
        }
        Ok(Srtf { active, fuel_per_ms, queue: Vec::new(), runs: Vec::new(), launching: HashSet::new() })
    }

    fn initial_calls(&mut self) -> Vec<Call> {
        vec![Call::Suppress]
    }

    fn on_submit(&mut self, job: Job) -> Vec<Call> {
        let pos = self.queue.partition_point(|j| estimate(j) <= estimate(&job));
        self.queue.insert(pos, job);
        let mut calls = self.preempt(wasmos_guest::host::now_ms());
        calls.push(Call::Revive);
        calls
    }

    fn on_offers(&mut self, offers: Vec<Offer>) -> Vec<Call> {
        let mut calls = Vec::new();
        for o in offers {
            let mut free = o.resources.clone();
            let mut tasks = Vec::new();
            while self.active_now() < self.active {
                let Some(job) = self.queue.first() else { break };
                if !res::fits(&free, &job.resources) {
                    break;
                }
                let job = self.queue.remove(0);
                res::take(&mut free, &job.resources);
                self.launching.insert(job.id.clone());
                self.runs.push(Run { id: job.id.clone(), estimate: estimate(&job), ran_ms: 0, since: None, paused: false });
                tasks.push(wasmos_guest::task_for(job));
            }
            calls.push(wasmos_guest::launch_or_decline(o.id, tasks));
        }
        if self.queue.is_empty() {
            calls.push(Call::Suppress);
        }
        calls
    }

    fn on_update(&mut self, status: TaskStatus) -> Vec<Call> {
        let now = wasmos_guest::host::now_ms();
        match status.state {
            TaskState::Running => {
                if self.launching.remove(&status.task_id) {
                    if let Some(r) = self.runs.iter_mut().find(|r| r.id == status.task_id) {
                        r.since = Some(now);
                    }
                }
                Vec::new()
            }
            TaskState::Finished
            | TaskState::Failed
            | TaskState::Killed
            | TaskState::Error
            | TaskState::Lost
            | TaskState::Dropped => {
                self.launching.remove(&status.task_id);
                self.runs.retain(|r| r.id != status.task_id);
                let mut calls = self.resume(now);
                if !self.queue.is_empty() && self.active_now() < self.active {
                    calls.push(Call::Revive);
                }
                calls
            }
            _ => Vec::new(),
        }
    }
}

wasmos_guest::scheduler!(Srtf);
