//! A running task's health check (Mesos's `HealthCheck`, simplified): after
//! the grace period, one check per interval; a heartbeat check passes when
//! the guest called `heartbeat` (or reported progress) since the previous
//! check, a probe check when a small WASI command, given read-only access to
//! the task's sandbox directory, exits 0 within the timeout. The first
//! healthy verdict after a start or an unhealthy one, and every unhealthy
//! one, go to the master as RUNNING updates with `healthy` set; after
//! `failures` consecutive failures the task is killed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmos_model::{HealthCheck, HealthKind, Limits, OutcomeKind};
use wasmos_proto::v1;
use wasmos_sandbox::{HostDir, RunRequest, Signal, TaskControl};

use crate::Agent;

/// The reason a task killed by its health check ends with.
pub(crate) const REASON: &str = "health_check_failed";

/// Memory a probe may use.
const PROBE_MEM: u64 = 64 << 20;
/// Bytes of a probe's output kept as the check's message.
const PROBE_MESSAGE_BYTES: usize = 256;

/// What one task's checks need.
pub(crate) struct Watch {
    pub check: HealthCheck,
    pub beats: Arc<AtomicU64>,
    /// The task's sandbox directory (probes look at it read-only).
    pub dir: Option<PathBuf>,
}

/// Checks a running task until it ends. Returns only once it killed the
/// task: why (the message its terminal update carries).
pub(crate) async fn watch(agent: &Arc<Agent>, id: &str, fw: &str, w: Watch, control: &TaskControl) -> String {
    let c = &w.check;
    tokio::time::sleep(c.grace).await;
    let mut last = w.beats.load(Ordering::Relaxed);
    let mut failures = 0u32;
    let mut healthy: Option<bool> = None;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + c.interval, c.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if control.signal() == Signal::Pause {
            // A paused task cannot beat; it is checked again once resumed.
            last = w.beats.load(Ordering::Relaxed);
            continue;
        }
        let (ok, msg) = match &c.kind {
            HealthKind::Heartbeat => {
                let now = w.beats.load(Ordering::Relaxed);
                let ok = now != last;
                last = now;
                (ok, if ok { "heartbeat".to_string() } else { format!("no heartbeat in {:?}", c.interval) })
            }
            HealthKind::Probe { module_sha256, args } => {
                // The timeout bounds the whole probe, its wait for a
                // sandbox slot included.
                let run = probe(agent, id, module_sha256, args, c, w.dir.as_ref());
                match tokio::time::timeout(c.timeout, run).await {
                    Ok(r) => r,
                    Err(_) => (
                        false,
                        format!("probe did not finish within {:?} (waiting for a sandbox slot counts)", c.timeout),
                    ),
                }
            }
        };
        if control.signal() == Signal::Pause {
            // Paused while it was checked: no verdict.
            continue;
        }
        if ok {
            failures = 0;
            if healthy != Some(true) {
                healthy = Some(true);
                report(agent, id, fw, true, msg);
            }
            continue;
        }
        failures += 1;
        healthy = Some(false);
        let msg = format!("health check failed ({failures} of {} in a row): {msg}", c.failures);
        report(agent, id, fw, false, msg.clone());
        if failures >= c.failures {
            control.kill();
            return msg;
        }
    }
}

fn report(agent: &Agent, id: &str, fw: &str, healthy: bool, message: String) {
    agent.updates.report(v1::TaskStatus {
        task_id: id.to_string(),
        framework_id: fw.to_string(),
        agent_id: agent.link.id(),
        state: v1::TaskState::TaskRunning as i32,
        reason: if healthy { "health_check_passed" } else { "health_check_failed" }.into(),
        message,
        healthy: Some(healthy),
        attempt: agent.executor.attempt_of(id),
        ..Default::default()
    });
}

/// Runs the probe once: (passed, what it said).
async fn probe(
    agent: &Arc<Agent>,
    id: &str,
    sha: &str,
    args: &[String],
    c: &HealthCheck,
    dir: Option<&PathBuf>,
) -> (bool, String) {
    let prepared = match agent.modules.get(sha).await {
        Ok(p) => p,
        Err(e) => return (false, format!("probe module {sha}: {e}")),
    };
    let req = RunRequest {
        name: format!("{id}-probe"),
        args: std::iter::once("probe".to_string()).chain(args.iter().cloned()).collect(),
        limits: Limits { timeout: c.timeout, mem: PROBE_MEM, ..Limits::default() },
        host_dirs: dir
            .filter(|d| d.is_dir())
            .map(|d| HostDir { host: d.clone(), guest: "/".into(), read_only: true })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let o = agent.executor.sandbox().run(&prepared, req, &TaskControl::new()).await;
    let said = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        let start = s.len().saturating_sub(PROBE_MESSAGE_BYTES);
        let start = (start..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
        s[start..].to_string()
    };
    let out = if o.stdout.is_empty() { said(&o.stderr) } else { said(&o.stdout) };
    match o.kind {
        OutcomeKind::Finished => (true, if out.is_empty() { "probe exited 0".into() } else { out }),
        OutcomeKind::TimedOut => (false, format!("probe timed out after {:?}", c.timeout)),
        _ => {
            let mut m = format!("probe {}", o.kind.as_str());
            if let Some(code) = o.exit_code {
                m.push_str(&format!(" (exit {code})"));
            }
            if let Some(why) = o.message.as_deref().filter(|w| !w.is_empty()) {
                m.push_str(": ");
                m.push_str(&why.chars().take(PROBE_MESSAGE_BYTES).collect::<String>());
            }
            if !out.is_empty() {
                m.push_str("; said: ");
                m.push_str(&out);
            }
            (false, m)
        }
    }
}
