//! Sandbox-wide settings. Every limit has a name, a unit and a default.

use std::path::PathBuf;
use std::time::Duration;

/// Default [`SandboxConfig::max_concurrent_tasks`]: enough for 50,000 tasks
/// asleep at once on a small machine.
pub const DEFAULT_MAX_CONCURRENT_TASKS: u32 = 50_000;
/// Default [`SandboxConfig::max_metered_tasks`].
pub const DEFAULT_MAX_METERED_TASKS: u32 = 1_000;
/// Default [`SandboxConfig::max_task_mem`]: 1 GiB. Each memory slot reserves
/// this much address space, and 47 bits of it hold about 100,000 such slots;
/// 4 GiB (all a 32-bit memory can address) leaves room for about 25,000.
pub const DEFAULT_MAX_TASK_MEM: u64 = 1 << 30;
/// Default [`SandboxConfig::epoch_tick`].
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(1);
/// Default [`SandboxConfig::task_nice`].
pub const DEFAULT_TASK_NICE: i32 = 10;
/// Default [`SandboxConfig::cpu_slice`].
pub const DEFAULT_CPU_SLICE: Duration = Duration::from_millis(10);
/// Default [`SandboxConfig::memories_per_task`] in hundredths: 1.25 linear
/// memories per task slot on average (a core module has one, a component a few).
pub const DEFAULT_MEMORIES_PER_TASK_X100: u32 = 125;
/// Default [`SandboxConfig::tables_per_task`] in hundredths.
pub const DEFAULT_TABLES_PER_TASK_X100: u32 = 200;
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
    /// Most tasks without fuel metering alive at once (slots of the unmetered
    /// engine's pooling allocator). Runs past this wait for a slot, STARTING,
    /// rather than fail. Default 50,000.
    pub max_concurrent_tasks: u32,
    /// Most fuel-metered runs (a budget, `meter_fuel`, hosted schedulers)
    /// alive at once: slots of the metered engine's pool. Default 1,000.
    pub max_metered_tasks: u32,
    /// Linear memories in each pool, per task slot, in hundredths (125 = 1.25).
    /// A run that needs a memory when all are taken fails. Default 125.
    pub memories_per_task_x100: u32,
    /// Tables in each pool per task slot, in hundredths. Default 200.
    pub tables_per_task_x100: u32,
    /// Largest `mem` a task may ask for, in bytes. Each memory slot of the pool
    /// reserves this much address space (not memory); below 4 GiB, memory
    /// accesses carry a bounds check. Default 1 GiB.
    pub max_task_mem: u64,
    /// Largest table a task may have, in elements. Default 100,000.
    pub max_table_elements: usize,
    /// Period of the epoch ticker: how often running Wasm code checks its
    /// timeout and whether to yield the CPU. Default 1 ms.
    pub epoch_tick: Duration,
    /// Run permits: how many tasks execute Wasm at once (the cores given to
    /// tasks). Default: the machine's available parallelism.
    pub cpu_cores: usize,
    /// How `cpus` is enforced: `shares` (proportional under contention, idle
    /// shares lent) or `hard` (never more than `cpus`). Default `shares`.
    pub cpu_limit: crate::CpuLimit,
    /// Longest a run keeps the CPU while others wait. Default 10 ms.
    pub cpu_slice: Duration,
    /// Nice value of the threads that run Wasm (0..19): the kernel gives the
    /// process's own work, and other processes such as a master beside it,
    /// the CPU first when they want it. Default 10.
    pub task_nice: i32,
    /// Run tasks on the sandbox's own runtime (`cpu_cores` threads at
    /// `task_nice`) rather than the caller's. Default true.
    pub own_runtime: bool,
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
    /// What the engine runs: `None` is this machine's own code (Cranelift's
    /// target for it); `Some("pulley64")` is wasmtime's portable interpreter.
    /// Part of the [`crate::EngineProfile`] the master compiles for.
    pub target: Option<String>,
    /// Compile Wasm here. `false` runs only artifacts precompiled for this
    /// engine's profile ([`crate::Sandbox::load_precompiled`]); a build
    /// without the `compiler` feature (`wasmos-edge`) is always `false`.
    pub compile: bool,
    /// CPU features the engine's code may use: `Native` (what this CPU has)
    /// or `Baseline` (none beyond the architecture's base, so an artifact
    /// runs on every CPU of the kind). Default `Native`.
    pub cpu_features: crate::CpuFeatures,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_concurrent_tasks: DEFAULT_MAX_CONCURRENT_TASKS,
            max_metered_tasks: DEFAULT_MAX_METERED_TASKS,
            memories_per_task_x100: DEFAULT_MEMORIES_PER_TASK_X100,
            tables_per_task_x100: DEFAULT_TABLES_PER_TASK_X100,
            max_task_mem: DEFAULT_MAX_TASK_MEM,
            max_table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            epoch_tick: DEFAULT_EPOCH_TICK,
            cpu_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_limit: crate::CpuLimit::Shares,
            cpu_slice: DEFAULT_CPU_SLICE,
            task_nice: DEFAULT_TASK_NICE,
            own_runtime: true,
            sandbox_root: std::env::temp_dir().join("wasmos-sandboxes"),
            cache_dir: None,
            cache_max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            cache_max_disk_bytes: DEFAULT_CACHE_MAX_DISK_BYTES,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            target: None,
            compile: cfg!(feature = "compiler"),
            cpu_features: crate::CpuFeatures::Native,
        }
    }
}
