//! Host bindings of the `wasmos:task` and `wasmos:scheduler` WIT worlds
//! (the same `wit/` files the guest SDK generates its side from).

pub(crate) mod task {
    wasmtime::component::bindgen!({
        path: "../wit/task",
        world: "task",
        exports: { default: async },
    });
}

pub(crate) mod scheduler {
    wasmtime::component::bindgen!({
        path: "../wit/scheduler",
        world: "scheduler",
        exports: { default: async },
    });
}

use std::sync::atomic::Ordering;

use crate::run::TaskData;

impl task::wasmos::task::context::Host for TaskData {
    fn task_id(&mut self) -> String {
        self.context.task_id.clone()
    }
    fn attempt(&mut self) -> u32 {
        self.context.attempt
    }
    fn framework(&mut self) -> String {
        self.context.framework.clone()
    }
    fn report_progress(&mut self, fraction: f32) {
        let f = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        if let Some(p) = &self.progress {
            p.store(f.to_bits(), Ordering::Relaxed);
        }
        self.beat();
    }
    fn heartbeat(&mut self) {
        self.beat();
    }
    fn log(&mut self, message: String) {
        if let Some(c) = &self.log_to {
            let mut line = message.into_bytes();
            line.push(b'\n');
            c.push_bytes(&line);
        }
    }
}

impl scheduler::wasmos::scheduler::types::Host for TaskData {}

impl scheduler::wasmos::scheduler::host::Host for TaskData {
    fn log(&mut self, level: scheduler::wasmos::scheduler::types::LogLevel, message: String) {
        // Bounded: a chatty scheduler cannot grow the master's memory.
        if self.sched_logs.len() < MAX_LOG_LINES_PER_CALLBACK {
            let mut m = message;
            m.truncate(MAX_LOG_LINE_BYTES);
            self.sched_logs.push((level, m));
        }
    }
    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// Log lines kept per callback (the rest are dropped).
pub const MAX_LOG_LINES_PER_CALLBACK: usize = 100;
/// Bytes kept per log line.
pub const MAX_LOG_LINE_BYTES: usize = 4096;
