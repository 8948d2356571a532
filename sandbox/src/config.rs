//! Sandbox-wide settings. Every limit has a name, a unit and a default.

use std::path::PathBuf;
use std::time::Duration;

/// Default [`SandboxConfig::max_concurrent_tasks`].
pub const DEFAULT_MAX_CONCURRENT_TASKS: u32 = 1000;
/// Default [`SandboxConfig::max_task_mem`]: 4 GiB, all a 32-bit memory can address.
pub const DEFAULT_MAX_TASK_MEM: u64 = 4 << 30;
/// Default [`SandboxConfig::fuel_yield_interval`].
pub const DEFAULT_FUEL_YIELD_INTERVAL: u64 = 100_000;
/// Default [`SandboxConfig::epoch_tick`].
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);
/// Default [`SandboxConfig::cache_max_entries`].
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 256;
/// Default [`SandboxConfig::cache_max_disk_bytes`]: 1 GiB.
pub const DEFAULT_CACHE_MAX_DISK_BYTES: u64 = 1 << 30;
/// Default [`SandboxConfig::max_wasm_stack`]: 512 KiB, as wasmtime.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 << 10;
/// Default [`SandboxConfig::max_table_elements`].
pub const DEFAULT_MAX_TABLE_ELEMENTS: usize = 100_000;

/// How a [`crate::Sandbox`] is built.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Most task instances alive at once (pooling-allocator slots). Runs past
    /// this wait for a slot rather than fail. Default 1000.
    pub max_concurrent_tasks: u32,
    /// Largest `mem` a task may ask for, in bytes. Each memory slot of the pool
    /// reserves this much address space (not memory). Default 4 GiB.
    pub max_task_mem: u64,
    /// Largest table a task may have, in elements. Default 100,000.
    pub max_table_elements: usize,
    /// Fuel units a task runs between cooperative yields to the executor: the
    /// time-slice that lets thousands of tasks share a few threads. Default 100,000.
    pub fuel_yield_interval: u64,
    /// Period of the epoch ticker that enforces timeouts inside Wasm code.
    /// Default 10 ms.
    pub epoch_tick: Duration,
    /// Parent of the per-task sandbox directories. Default
    /// `$TMPDIR/wasmos-sandboxes`.
    pub sandbox_root: PathBuf,
    /// Directory for serialized compiled modules, so a restart does not
    /// recompile; `None` keeps the cache in memory only. Default `None`.
    pub cache_dir: Option<PathBuf>,
    /// Compiled modules kept in memory (LRU). Default 256.
    pub cache_max_entries: usize,
    /// Bytes of compiled modules kept on disk (LRU by last use). Default 1 GiB.
    pub cache_max_disk_bytes: u64,
    /// Wasm stack per task, in bytes; deeper recursion traps with a stack
    /// overflow. Default 512 KiB.
    pub max_wasm_stack: usize,
    /// Fuel metering. On by default and required for `fuel` limits, fuel
    /// accounting and fuel time-slicing; turning it off exists only to measure
    /// its overhead (tasks then report 0 fuel and cannot be given a budget).
    pub meter_fuel: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_concurrent_tasks: DEFAULT_MAX_CONCURRENT_TASKS,
            max_task_mem: DEFAULT_MAX_TASK_MEM,
            max_table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            fuel_yield_interval: DEFAULT_FUEL_YIELD_INTERVAL,
            epoch_tick: DEFAULT_EPOCH_TICK,
            sandbox_root: std::env::temp_dir().join("wasmos-sandboxes"),
            cache_dir: None,
            cache_max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            cache_max_disk_bytes: DEFAULT_CACHE_MAX_DISK_BYTES,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            meter_fuel: true,
        }
    }
}
