//! What a framework asks to run.

use std::collections::BTreeMap;

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
}

/// A file placed in a task's sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputFile {
    pub path: String,
    pub contents: Vec<u8>,
}
