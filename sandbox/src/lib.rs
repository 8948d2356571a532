//! wasmos-sandbox: runs one Wasm task under hard limits.
//!
//! The only crate that knows wasmtime. One [`Sandbox`] per process holds two
//! engines (Cranelift, pooling allocator, epoch interruption, async): the
//! plain lane, and the metered lane that also counts fuel; their WASI linkers
//! and compiled-module caches; and the fair CPU scheduler ([`cpu`]).
//! [`Sandbox::run`] takes a prepared module plus a [`RunRequest`] and always
//! returns an [`Outcome`]: a guest can only ever harm itself.
//!
//! Isolation, the Wasm way:
//! - `mem`: linear memories plus tables may not grow past the limit; a refused
//!   `memory.grow` returns -1 in the guest, and a trap after a refusal is
//!   reported as `out_of_memory`.
//! - `cpus`: a weight. Runs take turns on [`SandboxConfig::cpu_cores`] run
//!   permits in slices ended by epoch ticks; the run with the least
//!   CPU time charged per `cpus` goes next (or, with [`CpuLimit::Hard`], no
//!   run exceeds its `cpus`). Every outcome reports the CPU time used.
//! - `fuel`: an optional budget. Only runs with a budget or `meter_fuel` run
//!   on the metered engine and report fuel; the rest pay no fuel counting.
//! - `timeout`: running (not paused) wall-clock time, enforced by epoch
//!   interruption inside Wasm and by a timer while the task waits in a host call.
//! - filesystem: none, unless the request asks for a sandbox directory (created
//!   lazily, preopened as `/`) or — for local runs only — host directories.
//! - no network, no inherited environment, stdin closed unless asked for.
//! - output: bounded per stream; the excess is dropped and flagged.

// Without a compiler nothing is compiled, so nothing goes to the disk cache.
#[cfg_attr(not(feature = "compiler"), allow(dead_code))]
mod cache;
mod config;
mod control;
mod cpu;
mod engine;
mod fs;
mod limiter;
pub mod migrate;
mod output;
mod precompiled;
mod run;
#[cfg(feature = "compiler")]
mod scheduler;
mod worlds;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;
use wasmtime::Engine;

pub use cache::{CacheStats, ModuleHash};
pub use config::*;
pub use control::{Signal, Stream, TaskControl};
pub use cpu::{CpuLimit, WEIGHT_ONE};
pub use engine::{ensure_map_count, map_count_needed, slots_within_map_count};
pub use fs::{InputFile, SandboxDirSpec};
pub use output::Passthrough;
pub use precompiled::*;
#[cfg(feature = "compiler")]
pub use scheduler::{
    CallbackError, CallbackErrorKind, DEFAULT_CALLBACK_FUEL, DEFAULT_CALLBACK_TIMEOUT, DEFAULT_SCHEDULER_MEM,
    SchedulerInstance, SchedulerLimits,
};
/// The `wasmos:scheduler` types (offers, calls, statuses, jobs) as plain Rust data.
pub mod sched {
    pub use crate::worlds::scheduler::wasmos::scheduler::types::*;
}
pub use wasmos_model::{Limits, Outcome, OutcomeKind};

/// Errors from building a sandbox or preparing a module. Running a task never
/// returns an error: it returns an [`Outcome`] (possibly of kind `error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    #[error("{0}")]
    InvalidModule(String),
    #[error("{0}")]
    UnsupportedImport(String),
}

/// Whether a binary is a core module or a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A core module using WASI preview1, entered through `_start`.
    Core,
    /// A component exporting `wasi:cli/run`.
    Component,
    /// A component of the `wasmos:task` world: `run(input) -> result<output, string>`.
    TaskComponent,
}

/// What a task learns about itself through `wasmos:task/context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext {
    pub task_id: String,
    pub attempt: u32,
    pub framework: String,
}

impl Default for TaskContext {
    fn default() -> Self {
        TaskContext { task_id: "local".into(), attempt: 1, framework: "local".into() }
    }
}

/// What a task reads on stdin.
#[derive(Debug, Clone, Default)]
pub enum Stdin {
    /// Closed (end of file at once). The default.
    #[default]
    Closed,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// The host process's own stdin (local runs only).
    Inherit,
}

/// A host directory preopened into a local run (`wasmos run --dir`). Cluster
/// tasks never get these, only their own sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDir {
    pub host: PathBuf,
    pub guest: String,
    /// Preopened read-only (a health probe looking at a task's directory).
    pub read_only: bool,
}

/// Everything about one run except the module.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// A label for logs and the sandbox directory name (the task id in a cluster).
    pub name: String,
    /// The full argv, including argv\[0\] (by convention the module's file name).
    pub args: Vec<String>,
    /// The whole environment; nothing is inherited from the host.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub stdin: Stdin,
    pub sandbox_dir: SandboxDirSpec,
    /// Local runs only: host directories to preopen read-write.
    pub host_dirs: Vec<HostDir>,
    /// Echo stdout/stderr to the host's own as they are written (still captured).
    pub passthrough: bool,
    /// Input bytes: `run`'s argument for `wasmos:task` components; stdin for
    /// WASI commands (unless `stdin` says otherwise).
    pub input: Vec<u8>,
    /// Task id, attempt and framework, for `wasmos:task/context`.
    pub context: TaskContext,
    /// Where `report-progress` stores its latest value (`f32::to_bits`).
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU32>>,
    /// Counts the guest's heartbeats (`wasmos:task/context.heartbeat`,
    /// `wasmos::heartbeat` for core modules) and progress reports.
    pub heartbeats: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Resume this captured run (a migratable core module) instead of
    /// starting afresh.
    pub resume: Option<std::sync::Arc<migrate::Snapshot>>,
    /// The run's CPU weight in milli-cpus (its `cpus` × 1000); 0 means one core.
    pub cpu_weight: u64,
}

/// A module compiled, linked and ready to instantiate (held by the cache).
/// Compiled for the plain lane at once and for the metered lane on its first
/// metered run.
pub struct Prepared {
    pub hash: ModuleHash,
    pub kind: ModuleKind,
    pub(crate) pre: run::Pre,
    /// The Wasm, to compile for the metered lane later; `None` for a
    /// precompiled artifact (the metered lane's comes separately).
    pub(crate) bytes: Option<Arc<[u8]>>,
    pub(crate) metered: tokio::sync::OnceCell<Result<run::Pre, SandboxError>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("hash", &self.hash).field("kind", &self.kind).finish()
    }
}

/// The sandbox: one engine, its linkers, its module cache. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
    /// The runtime tasks execute on: its own worker threads (`cpu_cores` of
    /// them), so that Wasm keeping every core busy never delays the caller's
    /// own work (an agent's gRPC streams, heartbeats). Held only here, not by
    /// the runs, and shut down when the last clone goes.
    rt: Arc<WasmRuntime>,
}

struct WasmRuntime(Option<tokio::runtime::Runtime>);

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Scheduler ticks between two looks at timers and I/O on the Wasm runtime
/// (tokio's default is 61: with every worker busy in 10 ms slices, a sleeping
/// task would wake up to 0.6 s late).
const WASM_RT_EVENT_INTERVAL: u32 = 4;

pub(crate) struct Inner {
    pub(crate) cfg: SandboxConfig,
    pub(crate) plain: Lane,
    pub(crate) metered: Lane,
    pub(crate) cpu: Arc<cpu::Cpu>,
    _ticker: engine::EpochTicker,
}

/// One engine with its linkers, module cache and pool slots.
pub(crate) struct Lane {
    pub(crate) engine: Engine,
    pub(crate) linkers: run::Linkers,
    pub(crate) cache: cache::ModuleCache,
    pub(crate) slots: Semaphore,
    pub(crate) capacity: u32,
}

impl Lane {
    fn new(cfg: &SandboxConfig, slots: u32, metered: bool) -> Result<Lane, SandboxError> {
        let engine = engine::build_engine(cfg, slots, metered)?;
        let linkers = run::Linkers::new(&engine)?;
        let cache =
            cache::ModuleCache::new(&engine, cfg.cache_max_entries, cfg.cache_dir.clone(), cfg.cache_max_disk_bytes);
        Ok(Lane { engine, linkers, cache, slots: Semaphore::new(slots as usize), capacity: slots })
    }

    fn in_use(&self) -> u32 {
        self.capacity - self.slots.available_permits() as u32
    }
}

/// What the sandbox holds now, for heartbeats and `wasmos agents`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// Pool slots in use, both lanes.
    pub in_use: u32,
    /// Pool slots in all, both lanes.
    pub capacity: u32,
    /// Runs waiting for a run permit (CPU) now.
    pub cpu_waiting: u32,
    /// Run permits (cores given to tasks).
    pub cpu_cores: u32,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("cfg", &self.inner.cfg).finish()
    }
}

impl Sandbox {
    /// Builds both engines, their pooling allocators (which reserve address
    /// space for every slot up front) and starts the epoch ticker.
    pub fn new(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
        if cfg.cpu_cores == 0 {
            return Err(SandboxError::Config("cpu_cores must be at least 1".into()));
        }
        let plain = Lane::new(&cfg, cfg.max_concurrent_tasks, false)?;
        let metered = Lane::new(&cfg, cfg.max_metered_tasks, true)?;
        let ticker = engine::EpochTicker::start(vec![plain.engine.clone(), metered.engine.clone()], cfg.epoch_tick);
        let cpu = Arc::new(cpu::Cpu::new(cfg.cpu_cores, cfg.cpu_limit, cfg.cpu_slice));
        cpu.kick_engines(vec![plain.engine.clone(), metered.engine.clone()]);
        let nice = cfg.task_nice;
        let rt = if cfg.own_runtime {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.cpu_cores)
                .thread_name("wasmos-wasm")
                .event_interval(WASM_RT_EVENT_INTERVAL)
                .on_thread_start(move || cpu::renice_this_thread(nice))
                .enable_all()
                .build()
                .map_err(|e| SandboxError::Config(format!("cannot start the task runtime: {e}")))?;
            Some(rt)
        } else {
            None
        };
        Ok(Sandbox {
            inner: Arc::new(Inner { cfg, plain, metered, cpu, _ticker: ticker }),
            rt: Arc::new(WasmRuntime(rt)),
        })
    }

    /// Pool slots free now on that lane.
    pub fn free_slots(&self, metered: bool) -> usize {
        let lane = if metered { &self.inner.metered } else { &self.inner.plain };
        lane.slots.available_permits()
    }

    /// Pool slots and run permits in use.
    pub fn slot_stats(&self) -> SlotStats {
        let i = &self.inner;
        SlotStats {
            in_use: i.plain.in_use() + i.metered.in_use(),
            capacity: i.plain.capacity + i.metered.capacity,
            cpu_waiting: i.cpu.waiting() as u32,
            cpu_cores: i.cpu.cores() as u32,
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.cfg
    }

    /// wasmtime's version, as agents report it on registration.
    pub fn wasmtime_version() -> &'static str {
        "48.0.8"
    }

    pub fn cache_stats(&self) -> CacheStats {
        let (a, b) = (self.inner.plain.cache.stats(), self.inner.metered.cache.stats());
        CacheStats {
            memory_hits: a.memory_hits + b.memory_hits,
            disk_hits: a.disk_hits + b.disk_hits,
            compiles: a.compiles + b.compiles,
            evictions: a.evictions + b.evictions,
        }
    }

    /// Validates, compiles (or fetches from the memory/disk cache) and links a
    /// module or component. Blocking: compiling can take a while, so async
    /// callers should use [`Sandbox::prepare_async`].
    pub fn prepare(&self, bytes: &[u8]) -> Result<Arc<Prepared>, SandboxError> {
        run::prepare(&self.inner, bytes)
    }

    /// [`Sandbox::prepare`] on a blocking thread, unless the module is already
    /// in the memory cache.
    pub async fn prepare_async(&self, bytes: Arc<[u8]>) -> Result<Arc<Prepared>, SandboxError> {
        let hash = ModuleHash::of(&bytes);
        if let Some(p) = self.inner.plain.cache.get(&hash) {
            return Ok(p);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.prepare(&bytes))
            .await
            .unwrap_or_else(|e| Err(SandboxError::InvalidModule(format!("module compilation crashed: {e}"))))
    }

    /// This sandbox's engine profile: what precompiled artifacts must be built for.
    pub fn profile(&self) -> EngineProfile {
        EngineProfile::of(&self.inner.cfg)
    }

    /// Whether this sandbox compiles Wasm itself ([`SandboxConfig::compile`]).
    pub fn compiles(&self) -> bool {
        self.inner.cfg.compile
    }

    /// The module `hash` from an artifact precompiled for this sandbox's
    /// plain lane (its envelope and code are checked; blocking: run it off
    /// the async threads for large artifacts).
    pub fn load_precompiled(&self, hash: ModuleHash, artifact: &[u8]) -> Result<Arc<Prepared>, SandboxError> {
        if let Some(p) = self.inner.plain.cache.get(&hash) {
            return Ok(p);
        }
        let (kind, pre) = run::load_precompiled(&self.inner, &hash, false, artifact)?;
        let prepared = Arc::new(Prepared { hash, kind, pre, bytes: None, metered: tokio::sync::OnceCell::new() });
        self.inner.plain.cache.insert(prepared.clone());
        Ok(prepared)
    }

    /// Gives a precompiled module its metered lane's artifact.
    pub fn load_precompiled_metered(&self, module: &Arc<Prepared>, artifact: &[u8]) -> Result<(), SandboxError> {
        if module.metered.initialized() {
            return Ok(());
        }
        let (_, pre) = run::load_precompiled(&self.inner, &module.hash, true, artifact)?;
        let _ = module.metered.set(Ok(pre));
        Ok(())
    }

    /// Whether a prepared module can run on the metered lane now, without
    /// compiling or loading anything.
    pub fn has_metered(&self, module: &Prepared) -> bool {
        module.metered.initialized()
    }

    /// Compiles a prepared module for the metered lane too (as its first
    /// metered run would), so that a caller can finish compiling before it
    /// says the run started.
    pub async fn prepare_metered(&self, module: &Arc<Prepared>) -> Result<(), SandboxError> {
        run::metered_pre(&self.inner, module).await.map(|_| ())
    }

    /// Runs a prepared module to its end. Never panics or errors on guest
    /// behaviour; the [`Outcome`] says what happened.
    /// On the sandbox's own runtime; a run that can start at once (a free
    /// slot, its code compiled) queues for a core before it is first polled.
    pub async fn run(&self, module: &Arc<Prepared>, req: RunRequest, control: &TaskControl) -> Outcome {
        let inner = self.inner.clone();
        let weight = if req.cpu_weight == 0 { WEIGHT_ONE } else { req.cpu_weight };
        let acct = inner.cpu.account(weight, Some(control.clone()));
        let metered = req.limits.metered();
        let lane = if metered { &inner.metered } else { &inner.plain };
        if lane.slots.available_permits() > 0 && (!metered || module.metered.initialized()) {
            inner.cpu.arrive(&acct);
        }
        let Some(rt) = self.rt.0.as_ref() else { return run::run(&inner, module, req, control, acct).await };
        let (module, control) = (module.clone(), control.clone());
        let run = rt.spawn(async move { run::run(&inner, &module, req, &control, acct).await });
        run.await.unwrap_or_else(|e| Outcome::error(format!("the task's run crashed: {e}; this is a bug in wasmos")))
    }

    /// Prepares `bytes` and runs them; a module that cannot be prepared gives
    /// an `error` outcome.
    pub async fn run_bytes(&self, bytes: Arc<[u8]>, req: RunRequest, control: &TaskControl) -> Outcome {
        let started = std::time::Instant::now();
        match self.prepare_async(bytes).await {
            Ok(p) => self.run(&p, req, control).await,
            Err(e) => {
                let mut o = Outcome::error(e.to_string());
                o.wall_time = started.elapsed();
                o
            }
        }
    }
}
