//! What a framework asks to run.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Limits, Resources};

/// One Wasm module run with its arguments, environment, resources and limits,
/// as a framework (or `wasmos submit`) describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskSpec {
    /// The framework's name for the task. It is checked against the
    /// [`crate::TaskId`] rules when the master launches it, so that a bad id
    /// is reported on that task alone.
    pub task_id: String,
    pub name: String,
    /// Hex SHA-256 of the module; the module must be in the master's artifact store.
    pub module_sha256: String,
    /// argv[1..]; argv[0] is the task name.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub limits: Limits,
    /// Files written into the task's sandbox directory before it starts.
    pub files: Vec<InputFile>,
    /// Give the task a (possibly empty) sandbox directory.
    pub sandbox_dir: bool,
    /// `wasmos:task` components: `run`'s input; WASI commands: stdin.
    pub input: Vec<u8>,
    /// Set by the master at launch: 1 for the first run, more after retries
    /// (0 until then).
    pub attempt: u32,
    /// A health check its agent runs while it runs.
    pub health: Option<HealthCheck>,
    /// Made migratable (`wasmos submit --migratable`): a drain with
    /// `--migrate` may capture it at a heartbeat and resume it elsewhere.
    pub migratable: bool,
    /// What happens to the task while its agent cannot be reached.
    pub on_disconnect: OnDisconnect,
}

/// What happens to a task while its agent is cut off from the master (in the
/// spirit of Nomad's `disconnect` block). The agent always keeps running its
/// tasks unless told `StopAfter`; the policy decides what the master does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnDisconnect {
    /// The master's default: a batch task is LOST at once (and retried); a
    /// framework's task is UNREACHABLE until the agent is back, GONE after
    /// `--agent-reregister-timeout`.
    #[default]
    Default,
    /// UNREACHABLE on the master, never replaced, for as long as the agent
    /// is away; it resumes (or delivers its end) when the agent is back.
    Keep,
    /// The agent stops the task once cut off this long; the master then
    /// declares it LOST (a batch task is retried elsewhere).
    StopAfter(Duration),
    /// UNREACHABLE, then after this long LOST and (batch) replaced while the
    /// original keeps running; when the agent returns with both copies
    /// running, the replacement stays and the original is killed.
    ReplaceAfter(Duration),
    /// Text that is none of the above, kept to be refused with its words.
    Invalid(String),
}

impl OnDisconnect {
    /// `keep`, `stop-after DUR`, `replace-after DUR` (also `stop-after=DUR`,
    /// `stop-after:DUR`); empty or `default` is the default.
    pub fn parse(s: &str) -> Result<OnDisconnect, String> {
        let s = s.trim();
        if s.is_empty() || s == "default" {
            return Ok(OnDisconnect::Default);
        }
        if s == "keep" {
            return Ok(OnDisconnect::Keep);
        }
        let (word, dur) =
            s.split_once([' ', '=', ':']).map(|(w, d)| (w.trim(), d.trim())).ok_or_else(|| Self::problem(s))?;
        let d = crate::parse_duration(dur).map_err(|e| format!("on-disconnect {s:?}: {e}"))?;
        match word {
            "stop-after" => Ok(OnDisconnect::StopAfter(d)),
            "replace-after" => Ok(OnDisconnect::ReplaceAfter(d)),
            _ => Err(Self::problem(s)),
        }
    }

    /// Parses, keeping text that does not parse as [`OnDisconnect::Invalid`].
    pub fn parse_lenient(s: &str) -> OnDisconnect {
        Self::parse(s).unwrap_or_else(|_| OnDisconnect::Invalid(s.to_string()))
    }

    fn problem(s: &str) -> String {
        format!("on-disconnect {s:?} is not one of keep, stop-after DUR, replace-after DUR (e.g. stop-after 5m)")
    }

    /// Why the master must refuse it, if it must.
    pub fn problem_text(&self) -> Option<String> {
        match self {
            OnDisconnect::Invalid(s) => Some(Self::problem(s)),
            _ => None,
        }
    }
}

impl std::fmt::Display for OnDisconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnDisconnect::Default => Ok(()),
            OnDisconnect::Keep => f.write_str("keep"),
            OnDisconnect::StopAfter(d) => write!(f, "stop-after {}", crate::format_duration(*d)),
            OnDisconnect::ReplaceAfter(d) => write!(f, "replace-after {}", crate::format_duration(*d)),
            OnDisconnect::Invalid(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod on_disconnect_tests {
    use super::*;

    #[test]
    fn on_disconnect_reads_its_three_forms_and_round_trips() {
        assert_eq!(OnDisconnect::parse("").unwrap(), OnDisconnect::Default);
        assert_eq!(OnDisconnect::parse("keep").unwrap(), OnDisconnect::Keep);
        assert_eq!(OnDisconnect::parse("stop-after 5m").unwrap(), OnDisconnect::StopAfter(Duration::from_secs(300)));
        assert_eq!(
            OnDisconnect::parse("replace-after=30s").unwrap(),
            OnDisconnect::ReplaceAfter(Duration::from_secs(30))
        );
        for p in [OnDisconnect::Keep, OnDisconnect::StopAfter(Duration::from_millis(1500))] {
            assert_eq!(OnDisconnect::parse(&p.to_string()).unwrap(), p);
        }
        assert!(OnDisconnect::parse("stop-after").unwrap_err().contains("keep, stop-after DUR"));
        assert!(OnDisconnect::parse("stop-after soon").is_err());
        assert!(OnDisconnect::parse_lenient("forever").problem_text().unwrap().contains("\"forever\""));
    }
}

/// A running task's health check (Mesos's defaults): after `grace` from
/// the start, one check every `interval`; `failures` consecutive failed
/// checks kill the task with reason `health_check_failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    /// A probe's wall-clock limit.
    pub timeout: Duration,
    pub grace: Duration,
    pub failures: u32,
    pub kind: HealthKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// The guest calls `wasmos:task/context.heartbeat` (or reports
    /// progress) at least once per interval.
    Heartbeat,
    /// A WASI command (hex SHA-256 of the module) run with read-only access
    /// to the task's sandbox directory: healthy when it exits 0.
    Probe { module_sha256: String, args: Vec<String> },
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
    pub const DEFAULT_FAILURES: u32 = 3;
    /// The shortest interval (and timeout) a check may have.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
    pub const MAX_FAILURES: u32 = 1000;

    pub fn heartbeat() -> HealthCheck {
        HealthCheck {
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            grace: Self::DEFAULT_GRACE,
            failures: Self::DEFAULT_FAILURES,
            kind: HealthKind::Heartbeat,
        }
    }

    /// Refuses what cannot work, with what to do instead.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Self::MIN_INTERVAL {
            return Err(format!(
                "health check interval {:?} is too short; give at least {:?} (--health-interval)",
                self.interval,
                Self::MIN_INTERVAL
            ));
        }
        if self.timeout < Self::MIN_INTERVAL {
            return Err(format!(
                "health check timeout {:?} is too short; give at least {:?} (--health-timeout)",
                self.timeout,
                Self::MIN_INTERVAL
            ));
        }
        if self.failures == 0 || self.failures > Self::MAX_FAILURES {
            return Err(format!(
                "health check failures must be between 1 and {} (--health-failures)",
                Self::MAX_FAILURES
            ));
        }
        Ok(())
    }
}

/// A file placed in a task's sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputFile {
    pub path: String,
    pub contents: Vec<u8>,
}
