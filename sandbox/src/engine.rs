//! The one wasmtime `Engine` of a process, its pooling allocator and its epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::{SandboxConfig, SandboxError};

/// Core instances, memories and tables one task may create. A wasip1 core module
/// needs one of each; a component built with the preview1 adapter needs a few
/// (main module, adapter, shims).
pub(crate) const MAX_INSTANCES_PER_TASK: u32 = 16;
pub(crate) const MAX_MEMORIES_PER_TASK: u32 = 4;
pub(crate) const MAX_TABLES_PER_TASK: u32 = 8;

/// Builds the engine of one lane: `metered` compiles fuel counting into
/// every module (for budgets and deterministic accounting); the other lane
/// relies on epochs alone. `slots` is the lane's pool size in task slots.
pub(crate) fn build_engine(cfg: &SandboxConfig, slots: u32, metered: bool) -> Result<Engine, SandboxError> {
    if slots == 0 {
        return Err(SandboxError::Config(format!(
            "{} must be at least 1",
            if metered { "max_metered_tasks" } else { "max_concurrent_tasks" }
        )));
    }
    if cfg.max_task_mem < 64 << 10 || cfg.max_task_mem > 4 << 30 {
        return Err(SandboxError::Config(format!(
            "max_task_mem is {} bytes; give between 64KiB (one wasm page) and 4GiB (32-bit memories)",
            cfg.max_task_mem
        )));
    }
    let n = slots;
    let per = |x100: u32, min: u32| ((n as u64 * x100.max(100) as u64 / 100) as u32).max(min);
    let mut pool = PoolingAllocationConfig::default();
    // Core instances are only counted, so every task may be a big component
    // (componentize-py/-js ones have a dozen). Memories and tables reserve
    // address space: `memories_per_task_x100` of them per slot, never fewer
    // than one task's worth.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(MAX_INSTANCES_PER_TASK))
        .total_memories(per(cfg.memories_per_task_x100, MAX_MEMORIES_PER_TASK))
        .total_tables(per(cfg.tables_per_task_x100, MAX_TABLES_PER_TASK))
        .total_stacks(n)
        .max_core_instances_per_component(MAX_INSTANCES_PER_TASK)
        .max_memories_per_component(MAX_MEMORIES_PER_TASK)
        .max_tables_per_component(MAX_TABLES_PER_TASK)
        .max_memories_per_module(1)
        .max_tables_per_module(2)
        .table_elements(cfg.max_table_elements)
        .max_memory_size(cfg.max_task_mem as usize)
        // Keep a little of each slot resident: re-instantiating a small task
        // then touches no fresh pages.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10)
        // A stack is given back to the kernel when its task ends (and so
        // never shows the next task what the last one left): with tens of
        // thousands of pooled stacks, those a long-running agent ever touched
        // would otherwise stay resident, growing RSS long after the peak.
        .async_stack_keep_resident(0)
        // Reuse the slots a module used before, least recently used first,
        // so the slots ever touched are as many as ran at once, not all of them.
        .max_unused_warm_slots(0);

    let profile = crate::EngineProfile::of(cfg);
    let mut c = code_config(&profile, metered);
    if let Some(t) = &cfg.target {
        c.target(t).map_err(|e| {
            SandboxError::Config(format!("unknown engine target {t:?}: {e}; give pulley64 or leave it out"))
        })?;
    }
    c.async_stack_zeroing(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&c).map_err(|e| {
        SandboxError::Config(format!(
            "cannot build the wasm engine for {n} task slots of {} MiB: {e:#}; lower --max-tasks or --max-task-mem, \
             or raise vm.max_map_count",
            cfg.max_task_mem >> 20
        ))
    })
}

/// Every setting that shapes compiled code, for one lane of an engine of
/// `profile`: an agent's own engine and the master's precompiler for it
/// both start here, so their artifacts fit (wasmtime checks the rest).
pub(crate) fn code_config(profile: &crate::EngineProfile, metered: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .concurrency_support(false)
        .consume_fuel(metered)
        .epoch_interruption(true)
        .memory_reservation(profile.max_task_mem.next_power_of_two())
        .max_wasm_stack(profile.max_wasm_stack)
        .async_stack_size(profile.max_wasm_stack + (1 << 20));
    c
}

/// Memory mappings the pools of `cfg` may need at most (each stack has a
/// guard page; each live memory is split into its accessible part and the rest).
pub fn map_count_needed(cfg: &SandboxConfig) -> u64 {
    let slots = cfg.max_concurrent_tasks as u64 + cfg.max_metered_tasks as u64;
    let memories = slots * cfg.memories_per_task_x100.max(100) as u64 / 100;
    2 * slots + 3 * memories + 16_384
}

/// Plain-lane slots that fit under the kernel's current `vm.max_map_count`
/// (the metered lane's as configured); 0 when not even those fit.
pub fn slots_within_map_count(cfg: &SandboxConfig) -> u32 {
    let Some(limit) =
        std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return cfg.max_concurrent_tasks;
    };
    let mut lo = 0u32;
    let mut hi = cfg.max_concurrent_tasks;
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let probe = SandboxConfig { max_concurrent_tasks: mid, ..cfg.clone() };
        if map_count_needed(&probe) <= limit { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// The kernel's limit on memory mappings per process, and raises it to what
/// `cfg` needs when it is lower and this process may (root). Returns
/// `(before, after)` when it raised it.
pub fn ensure_map_count(cfg: &SandboxConfig) -> Result<Option<(u64, u64)>, SandboxError> {
    const PATH: &str = "/proc/sys/vm/max_map_count";
    let need = map_count_needed(cfg);
    let Ok(now) = std::fs::read_to_string(PATH) else { return Ok(None) };
    let Ok(now) = now.trim().parse::<u64>() else { return Ok(None) };
    if now >= need {
        return Ok(None);
    }
    match std::fs::write(PATH, need.to_string()) {
        Ok(()) => Ok(Some((now, need))),
        Err(e) => Err(SandboxError::Config(format!(
            "{} task slots need up to {need} memory mappings but vm.max_map_count is {now} and cannot be raised \
             here ({e}); run `sysctl -w vm.max_map_count={need}` as root, or lower --max-tasks",
            cfg.max_concurrent_tasks as u64 + cfg.max_metered_tasks as u64
        ))),
    }
}

/// Advances the engines' epochs every tick until dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engines: Vec<Engine>, tick: std::time::Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasmos-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engines.iter().for_each(Engine::increment_epoch);
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
