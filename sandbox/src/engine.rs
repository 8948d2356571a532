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

pub(crate) fn build_engine(cfg: &SandboxConfig) -> Result<Engine, SandboxError> {
    if cfg.max_concurrent_tasks == 0 {
        return Err(SandboxError::Config("max_concurrent_tasks must be at least 1".into()));
    }
    if cfg.max_task_mem == 0 || cfg.max_task_mem > 4 << 30 {
        return Err(SandboxError::Config(format!(
            "max_task_mem is {} bytes; give between 1 byte and 4GiB (32-bit memories)",
            cfg.max_task_mem
        )));
    }
    let n = cfg.max_concurrent_tasks;
    let mut pool = PoolingAllocationConfig::default();
    // Core instances and tables are cheap to reserve: room for every task to
    // be a big component (componentize-py/-js ones have a dozen core
    // instances). Memories reserve address space, so two per task, but never
    // fewer than one task's worth.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(MAX_INSTANCES_PER_TASK))
        .total_memories(n.saturating_mul(2).max(MAX_MEMORIES_PER_TASK))
        .total_tables(n.saturating_mul(MAX_TABLES_PER_TASK))
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
        .table_keep_resident(16 << 10);

    let mut c = Config::new();
    c.wasm_component_model(true)
        .concurrency_support(false)
        .consume_fuel(cfg.meter_fuel)
        .epoch_interruption(true)
        .max_wasm_stack(cfg.max_wasm_stack)
        .async_stack_size(cfg.max_wasm_stack + (1 << 20))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&c).map_err(|e| SandboxError::Config(format!("cannot build the wasm engine: {e:#}")))
}

/// Advances the engine's epoch every tick until dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: std::time::Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasmos-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
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
