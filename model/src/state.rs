//! Task states, Mesos style.

use std::fmt;

/// Where a task is in its lifecycle:
/// `STAGING → STARTING → RUNNING → {FINISHED, FAILED, KILLED, ERROR, LOST}`, with
/// `KILLING` between RUNNING and KILLED and `PAUSED` ↔ RUNNING. A task whose
/// agent stopped answering is `UNREACHABLE` (not terminal: the agent may come
/// back and the task resume being tracked) and `GONE` (terminal) when the
/// agent does not come back in time. `DROPPED` (terminal) is a launch the
/// master refused before it reached an agent because its offers were invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Staging,
    Starting,
    Running,
    Paused,
    Killing,
    Finished,
    Failed,
    Killed,
    Error,
    Lost,
    Unreachable,
    Gone,
    Dropped,
}

impl TaskState {
    pub const ALL: [TaskState; 13] = [
        TaskState::Staging,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Paused,
        TaskState::Killing,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Error,
        TaskState::Lost,
        TaskState::Unreachable,
        TaskState::Gone,
        TaskState::Dropped,
    ];

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Lost
                | TaskState::Gone
                | TaskState::Dropped
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Staging => "staging",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Paused => "paused",
            TaskState::Killing => "killing",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
            TaskState::Error => "error",
            TaskState::Lost => "lost",
            TaskState::Unreachable => "unreachable",
            TaskState::Gone => "gone",
            TaskState::Dropped => "dropped",
        }
    }

    /// Whether the lifecycle allows moving from `self` to `next`.
    // A table of transitions reads better as a match than as `matches!`.
    #[allow(clippy::match_like_matches_macro)]
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        if self.is_terminal() {
            return false;
        }
        match (self, next) {
            (_, Lost | Error) => true,
            (Unreachable, Gone | Running | Paused | Killing | Killed | Finished | Failed) => true,
            (Staging | Starting | Running | Paused | Killing, Unreachable) => true,
            // A launch can be refused (dropped), paused or killed before its
            // agent reports it running.
            (Staging, Starting | Running | Paused | Killing | Failed | Killed | Dropped) => true,
            // STARTING: on its agent, waiting for a sandbox slot.
            (Starting, Running | Paused | Killing | Failed | Killed | Finished) => true,
            (Running, Paused | Killing | Finished | Failed | Killed) => true,
            (Paused, Running | Starting | Killing | Killed) => true,
            (Killing, Killed | Finished | Failed) => true,
            _ => false,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let lower = lower.strip_prefix("task_").unwrap_or(&lower);
        TaskState::ALL.into_iter().find(|t| t.as_str() == lower).ok_or_else(|| {
            format!("unknown task state {s:?}; use one of {}", TaskState::ALL.map(|t| t.as_str()).join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final() {
        for t in TaskState::ALL.into_iter().filter(|t| t.is_terminal()) {
            for n in TaskState::ALL {
                assert!(!t.can_become(n), "{t} -> {n}");
            }
        }
        assert!(TaskState::Running.can_become(TaskState::Paused));
        assert!(TaskState::Paused.can_become(TaskState::Running));
        assert!(TaskState::Staging.can_become(TaskState::Dropped));
        assert!(!TaskState::Running.can_become(TaskState::Dropped));
        assert!(!TaskState::Killing.can_become(TaskState::Running));
        assert!(TaskState::Unreachable.can_become(TaskState::Running));
        assert!(TaskState::Dropped.is_terminal());
        assert_eq!("TASK_RUNNING".parse::<TaskState>(), Ok(TaskState::Running));
        assert!("nope".parse::<TaskState>().unwrap_err().contains("finished"));
    }
}
