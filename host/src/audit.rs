//! The audit log: one JSON line per mutating command and per denied or
//! unauthenticated call, in `--state-dir`/audit.jsonl: time, principal,
//! action, object, role, decision, reason. Never a secret: tokens appear by
//! name, messages pass through `token::redact`.
//!
//! Lines go to a writer thread over a bounded channel (the event loop never
//! waits for the disk; if the channel is full the line is counted as
//! dropped and the next line that gets through says how many were). The
//! file is rotated to audit.jsonl.1 when it passes `max_bytes`.
//!
//! Logged: submits, kills/pauses/resumes, role and quota changes,
//! reservations, framework subscriptions, their launches (Accept with
//! tasks), kills and teardowns, hosted deploys and removals, token
//! creation and revocation. Agents' own protocol (registration, updates,
//! heartbeats) and a framework's declines, acknowledgements and
//! reconciliations are not, unless denied.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use crate::auth::Principal;
use crate::master::State;
use crate::master::cmd::{Cmd, Error};
use crate::master::types::{Call, TaskAction, now_ms};

/// Default [`crate::MasterConfig::audit_log_size`]: 64 MiB before rotation.
pub const DEFAULT_AUDIT_LOG_SIZE: u64 = 64 << 20;
/// Lines waiting for the writer thread at most.
const QUEUE: usize = 65_536;

#[derive(Debug)]
pub(crate) struct Audit {
    tx: mpsc::SyncSender<String>,
    dropped: AtomicU64,
}

#[derive(serde::Serialize)]
struct Line<'a> {
    time: String,
    principal: &'a str,
    action: &'a str,
    object: &'a str,
    role: &'a str,
    decision: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Audit {
    /// Appends to `dir/audit.jsonl` from a thread of its own.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Audit> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.jsonl");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new().name("wasmos-audit".into()).spawn(move || writer(path, file, rx, max_bytes))?;
        Ok(Audit { tx, dropped: AtomicU64::new(0) })
    }

    fn write(&self, principal: &str, action: &str, object: &str, role: &str, denied: Option<&str>) {
        let reason = denied.map(wasmos_security::token::redact).unwrap_or_default();
        let line = Line {
            time: wasmos_model::rfc3339_ms(now_ms()),
            principal,
            action,
            object,
            role,
            decision: if denied.is_some() { "deny" } else { "allow" },
            reason: &reason,
            dropped_before: self.dropped.swap(0, Ordering::Relaxed),
        };
        let text = serde_json::to_string(&line).expect("serializable");
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(text) {
            self.dropped.fetch_add(line.dropped_before + 1, Ordering::Relaxed);
        }
    }

    /// A command the loop authorized (`denied`: refused, and why).
    pub fn command(&self, who: &Principal, cmd: &Cmd, state: &State, denied: Option<&Error>) {
        let Some((action, object, role)) = describe(cmd, state) else {
            if let Some(e) = denied {
                self.write(&who.label(), "call", "", "", Some(&e.message));
            }
            return;
        };
        self.write(&who.label(), action, &object, &role, denied.map(|e| e.message.as_str()));
    }

    /// A call refused at the edge: no or a bad token, or a check done there.
    pub fn refused(&self, principal: &str, action: &str, object: &str, role: &str, reason: &str) {
        self.write(principal, action, object, role, Some(reason));
    }

    /// A call allowed at the edge (hosted deploys and removals).
    pub fn allowed(&self, principal: &str, action: &str, object: &str, role: &str) {
        self.write(principal, action, object, role, None);
    }
}

/// (action, object, role) of a command worth logging when allowed.
fn describe(cmd: &Cmd, state: &State) -> Option<(&'static str, String, String)> {
    let fw_role =
        |id: &wasmos_model::FrameworkId| state.frameworks.get(id).map(|f| f.role.to_string()).unwrap_or_default();
    let task_role = |id: &wasmos_model::TaskId| state.tasks.get(id).map(|t| fw_role(&t.framework)).unwrap_or_default();
    Some(match cmd {
        Cmd::Submit(s, _) => ("submit", format!("{} x{}", s.template.name, s.count.max(1)), "batch".to_string()),
        Cmd::TaskAction(id, a, _) => (
            match a {
                TaskAction::Kill => "kill",
                TaskAction::Pause => "pause",
                TaskAction::Resume => "resume",
            },
            id.to_string(),
            task_role(id),
        ),
        Cmd::UpdateRole(u, _) => ("quota", u.role.to_string(), u.role.to_string()),
        Cmd::Reserve(r, _) => ("reserve", format!("{} {}", r.agent, r.resources), r.role.to_string()),
        Cmd::Unreserve(r, _) => ("unreserve", format!("{} {}", r.agent, r.resources), r.role.to_string()),
        Cmd::Subscribe(info, _, hosted, _) => (
            if hosted.is_some() { "subscribe_hosted" } else { "subscribe" },
            info.framework_id.as_ref().map(|f| f.to_string()).unwrap_or_else(|| info.name.clone()),
            info.role.to_string(),
        ),
        Cmd::Call(fw, Ok(call), _) => {
            let role = fw_role(fw);
            match call {
                Call::Accept { launch, .. } if !launch.is_empty() => {
                    ("launch", format!("{fw}: {} task(s)", launch.len()), role)
                }
                Call::Kill(t) => ("kill", format!("{fw}: {t}"), role),
                Call::Pause(t) => ("pause", format!("{fw}: {t}"), role),
                Call::Resume(t) => ("resume", format!("{fw}: {t}"), role),
                Call::Teardown => ("teardown", fw.to_string(), role),
                _ => return None,
            }
        }
        Cmd::HostedSubmit(name, jobs, _) => {
            ("submit", format!("{name}: {} x{}", jobs.template.name, jobs.count.max(1)), {
                state.frameworks.hosted_named(name).map(|(_, f)| f.role.to_string()).unwrap_or_default()
            })
        }
        Cmd::CreateToken(t, _) => ("token_create", t.name.clone(), t.grants.join(",")),
        Cmd::RevokeToken(name, _) => ("token_revoke", name.clone(), String::new()),
        Cmd::Join(..) => ("agent_join", String::new(), String::new()),
        Cmd::HostedRemove(name, _) => ("framework_remove", name.clone(), String::new()),
        Cmd::Maintain(id, op, _) => {
            use crate::master::cmd::Maintenance as M;
            let what = match op {
                M::Drain { force: true, .. } => "agent_drain_force".to_string(),
                M::Drain { migrate: true, deadline, .. } => format!("agent_drain_migrate deadline {deadline:?}"),
                M::Drain { deadline: Some(d), .. } => format!("agent_drain deadline {d:?}"),
                M::Drain { deadline: None, .. } => "agent_drain".to_string(),
                M::Undrain => "agent_undrain".to_string(),
                M::Eligible(on) => format!("agent_eligibility {}", if *on { "on" } else { "off" }),
                M::MarkGone => "agent_mark_gone".to_string(),
            };
            ("drain", format!("{id}: {what}"), String::new())
        }
        Cmd::RegisterAgent(..)
        | Cmd::AttachAgent(..)
        | Cmd::AgentUpdates(..)
        | Cmd::AgentHeartbeat(..)
        | Cmd::Call(..)
        | Cmd::ListAgents(..)
        | Cmd::ListFrameworks(..)
        | Cmd::ListTasks(..)
        | Cmd::GetTask(..)
        | Cmd::TaskOutput(..)
        | Cmd::AgentOutput(..)
        | Cmd::ListRoles(..)
        | Cmd::Overview(..)
        | Cmd::Snapshot(..)
        | Cmd::ListTokens(..)
        | Cmd::HostedCheck(..)
        | Cmd::HostedAttach(..)
        | Cmd::HostedCalls(..)
        | Cmd::HostedFailed(..) => return None,
    })
}

fn writer(path: PathBuf, file: std::fs::File, rx: mpsc::Receiver<String>, max_bytes: u64) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::new(file);
    // Block for one line, then take what else is queued, then flush.
    while let Ok(first) = rx.recv() {
        let mut lines = vec![first];
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
            if lines.len() >= 4096 {
                break;
            }
        }
        for l in lines {
            if size >= max_bytes {
                let _ = out.flush();
                let rotated = path.with_extension("jsonl.1");
                let _ = std::fs::rename(&path, &rotated);
                match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                    Ok(f) => {
                        out = std::io::BufWriter::new(f);
                        size = 0;
                    }
                    Err(e) => {
                        eprintln!("wasmos master: audit log {}: {e}", path.display());
                        return;
                    }
                }
            }
            size += l.len() as u64 + 1;
            let _ = out.write_all(l.as_bytes()).and_then(|()| out.write_all(b"\n"));
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path(), 1200).unwrap();
        let t = wasmos_security::token::new_bearer();
        for i in 0..10 {
            a.refused("token:ci", "submit", &format!("x{i}"), "eng", &format!("bad token {t}"));
        }
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let old = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
        let all: Vec<serde_json::Value> =
            old.lines().chain(now.lines()).map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all[3]["object"], "x3");
        assert_eq!(all[3]["decision"], "deny");
        assert!(!old.contains(&t[9..]) && !now.contains(&t[9..]), "no secret in the audit log");
    }
}
