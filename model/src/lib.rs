//! wasmos-model: the shared vocabulary of wasmos.
//!
//! Plain data and pure functions only: ids, [`Resources`] arithmetic and parsing
//! (`cpus:2;mem:512MiB`), sizes and durations as users type them, task limits,
//! task states and outcomes. Nothing here touches tokio, tonic, prost, wasmtime
//! or the clock, so every other crate (and the pure allocator) can depend on it.

mod ids;
mod outcome;
mod resources;
mod role;
mod state;
mod task;
mod units;

pub use ids::{AgentId, FrameworkId, IdError, OfferId, TaskId};
pub use outcome::{Outcome, OutcomeKind};
pub use resources::{CPUS, DISK, MEM, ResourceError, Resources, Scalar};
pub use role::{MAX_ROLE_LEN, Role, RoleError};
pub use state::TaskState;
pub use task::{HealthCheck, HealthKind, InputFile, OnDisconnect, TaskSpec};
pub use units::{
    DEFAULT_MAX_OUTPUT, DEFAULT_MEM, DEFAULT_TIMEOUT, Limits, UnitError, format_duration, format_size, parse_duration,
    parse_size, rfc3339_ms,
};
