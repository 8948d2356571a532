//! How a task run ended: a closed set of outcomes plus what was measured.

use std::fmt;
use std::time::Duration;

/// The seven ways a task run can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Exit code 0 (or a component's `run` returned `ok`).
    Finished,
    /// Non-zero exit, or a guest trap (the message says which).
    Failed,
    /// The `fuel` budget ran out.
    OutOfFuel,
    /// A memory or table grow past `mem` was refused and the guest then trapped,
    /// or the module's initial memory alone exceeds `mem`.
    OutOfMemory,
    /// The wall-clock `timeout` passed.
    TimedOut,
    /// Someone killed the task.
    Killed,
    /// The run could not be carried out: invalid module, unsupported import, bad
    /// spec, missing artifact. Never the guest's own doing.
    Error,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 7] = [
        OutcomeKind::Finished,
        OutcomeKind::Failed,
        OutcomeKind::OutOfFuel,
        OutcomeKind::OutOfMemory,
        OutcomeKind::TimedOut,
        OutcomeKind::Killed,
        OutcomeKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Finished => "finished",
            OutcomeKind::Failed => "failed",
            OutcomeKind::OutOfFuel => "out_of_fuel",
            OutcomeKind::OutOfMemory => "out_of_memory",
            OutcomeKind::TimedOut => "timed_out",
            OutcomeKind::Killed => "killed",
            OutcomeKind::Error => "error",
        }
    }

    /// The exit status `wasmos run` uses for this outcome, given the guest's own
    /// exit code: the guest's code for finished/failed (1 for a trap), 124 on
    /// timeout, 125 on out_of_fuel/out_of_memory/error, 137 on kill.
    pub fn process_exit_code(self, guest_exit: Option<i32>) -> i32 {
        match self {
            OutcomeKind::Finished => 0,
            OutcomeKind::Failed => match guest_exit {
                Some(c) if c != 0 => c & 0xff,
                _ => 1,
            },
            OutcomeKind::TimedOut => 124,
            OutcomeKind::OutOfFuel | OutcomeKind::OutOfMemory | OutcomeKind::Error => 125,
            OutcomeKind::Killed => 137,
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a task run reports, whatever its outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub kind: OutcomeKind,
    /// The guest's exit code when it exited (0 for finished); `None` after a trap,
    /// a limit or a kill.
    pub exit_code: Option<i32>,
    /// Fuel units consumed; 0 unless the run counted fuel (`fuel_metered`).
    pub fuel_consumed: u64,
    /// Whether the run counted fuel (it had a budget or `meter_fuel`).
    #[serde(default)]
    pub fuel_metered: bool,
    /// CPU time the run used (thread CPU clock, summed over its time slices).
    #[serde(default)]
    pub cpu_time: Duration,
    /// Peak bytes of linear memory plus tables held at once.
    pub peak_memory_bytes: u64,
    pub wall_time: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Trap text (with wasm backtrace), error text, or a note on a refused grow.
    pub message: Option<String>,
}

impl Outcome {
    /// An `error` outcome: the run could not be carried out.
    pub fn error(message: impl Into<String>) -> Outcome {
        Outcome {
            kind: OutcomeKind::Error,
            exit_code: None,
            fuel_consumed: 0,
            fuel_metered: false,
            cpu_time: Duration::ZERO,
            peak_memory_bytes: 0,
            wall_time: Duration::ZERO,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            message: Some(message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        use OutcomeKind::*;
        assert_eq!(Finished.process_exit_code(Some(0)), 0);
        assert_eq!(Failed.process_exit_code(Some(3)), 3);
        assert_eq!(Failed.process_exit_code(None), 1);
        assert_eq!(TimedOut.process_exit_code(None), 124);
        assert_eq!(OutOfFuel.process_exit_code(None), 125);
        assert_eq!(Error.process_exit_code(None), 125);
        assert_eq!(Killed.process_exit_code(None), 137);
        assert_eq!(OutOfMemory.to_string(), "out_of_memory");
    }
}
