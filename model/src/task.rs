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
