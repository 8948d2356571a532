//! Keeps N replicas of a task running (config `replicas=N`, default 2;
//! `backoff_ms=B`, default 200). Each job submitted with
//! `wasmos submit --framework service MODULE` defines one service; replicas
//! that end, for any reason, are restarted after an exponential backoff
//! (B, 2B, 4B, ... capped at 30 s), reset after a replica has run 10 s.

use wasmos_guest::{res, Call, Job, Offer, Scheduler, TaskSpec, TaskState, TaskStatus};

struct Service {
    template: Job,
    running: Vec<(String, u64)>,
    launched: u64,
    failures: u32,
    not_before: u64,
}

struct Services {
    replicas: usize,
    backoff_ms: u64,
    services: Vec<Service>,
}

const MAX_BACKOFF_MS: u64 = 30_000;
const HEALTHY_MS: u64 = 10_000;

impl Services {
    fn wanted(&self, now: u64) -> bool {
        self.services.iter().any(|s| s.running.len() < self.replicas && now >= s.not_before)
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
        Ok(Services { replicas, backoff_ms: num("backoff_ms", 200)?.max(1), services: Vec::new() })
    }

    fn initial_calls(&mut self) -> Vec<Call> {
        vec![Call::Suppress]
    }

    fn on_submit(&mut self, job: Job) -> Vec<Call> {
        wasmos_guest::host::info(&format!("service {} wants {} replicas", job.id, self.replicas));
        self.services.push(Service { template: job, running: Vec::new(), launched: 0, failures: 0, not_before: 0 });
        vec![Call::Revive]
    }

    fn on_offers(&mut self, offers: Vec<Offer>) -> Vec<Call> {
        let now = wasmos_guest::host::now_ms();
        let mut calls = Vec::new();
        for o in offers {
            let mut free = o.resources.clone();
            let mut tasks: Vec<TaskSpec> = Vec::new();
            for s in self.services.iter_mut() {
                while s.running.len() < self.replicas && now >= s.not_before && res::fits(&free, &s.template.resources) {
                    res::take(&mut free, &s.template.resources);
                    s.launched += 1;
                    let mut t = wasmos_guest::task_for(s.template.clone());
                    t.task_id = format!("{}-{}", s.template.id, s.launched);
                    s.running.push((t.task_id.clone(), now));
                    tasks.push(t);
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
        let ended = matches!(
            status.state,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Error | TaskState::Lost | TaskState::Dropped
        );
        if !ended {
            return Vec::new();
        }
        let now = wasmos_guest::host::now_ms();
        let mut calls = Vec::new();
        for s in self.services.iter_mut() {
            let Some(pos) = s.running.iter().position(|(id, _)| *id == status.task_id) else { continue };
            let (_, started) = s.running.remove(pos);
            if now.saturating_sub(started) >= HEALTHY_MS {
                s.failures = 0;
            }
            let delay = (self.backoff_ms << s.failures.min(20)).min(MAX_BACKOFF_MS);
            s.failures += 1;
            s.not_before = now + delay;
            wasmos_guest::host::info(&format!("replica {} ended ({:?}); restarting in {delay} ms", status.task_id, status.state));
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
        if let Some(next) = self.services.iter().filter(|s| s.running.len() < self.replicas && s.not_before > now).map(|s| s.not_before).min() {
            calls.push(Call::SetTimer(next - now));
        }
        calls
    }
}

wasmos_guest::scheduler!(Services);
