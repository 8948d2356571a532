//! wasmos-guest: what a guest author imports.
//!
//! Two WIT worlds, generated with `wit-bindgen` from the same `wit/` files the
//! host uses, plus a thin ergonomic layer:
//!
//! - a **task** is a function `fn(Vec<u8>) -> Result<Vec<u8>, String>`, exported
//!   with [`task!`]; it may call [`context`] (task id, attempt, framework,
//!   progress, log). Build it for `wasm32-wasip2` as a `cdylib`.
//! - a **scheduler** is a struct implementing [`Scheduler`], exported with
//!   [`scheduler!`]; the master hosts it and calls its callbacks, which return
//!   [`Call`]s. Build it for `wasm32-wasip2` as a `cdylib`.
//!
//! A complete task:
//!
//! ```ignore
//! fn shout(input: Vec<u8>) -> Result<Vec<u8>, String> {
//!     wasmos_guest::context::log("shouting");
//!     Ok(input.to_ascii_uppercase())
//! }
//! wasmos_guest::task!(shout);
//! ```
//!
//! A complete scheduler (first come, first served; one task per job):
//!
//! ```ignore
//! use wasmos_guest::{Call, Job, Offer, Scheduler, res};
//!
//! #[derive(Default)]
//! struct Fifo { queue: std::collections::VecDeque<Job> }
//!
//! impl Scheduler for Fifo {
//!     fn init(_config: &str) -> Result<Self, String> { Ok(Fifo::default()) }
//!     fn on_submit(&mut self, job: Job) -> Vec<Call> { self.queue.push_back(job); vec![Call::Revive] }
//!     fn on_offers(&mut self, offers: Vec<Offer>) -> Vec<Call> {
//!         offers.into_iter().map(|o| {
//!             let mut free = o.resources.clone();
//!             let mut tasks = Vec::new();
//!             while let Some(job) = self.queue.front() {
//!                 if !res::fits(&free, &job.resources) { break; }
//!                 res::take(&mut free, &job.resources);
//!                 tasks.push(wasmos_guest::task_for(self.queue.pop_front().unwrap()));
//!             }
//!             wasmos_guest::launch_or_decline(o.id, tasks)
//!         }).collect()
//!     }
//! }
//! wasmos_guest::scheduler!(Fifo);
//! ```

#![allow(clippy::all)]

/// Raw bindings of the `wasmos:task` world.
pub mod task {
    wit_bindgen::generate!({
        path: "../wit/task",
        world: "task",
        pub_export_macro: true,
        export_macro_name: "export_task",
        default_bindings_module: "wasmos_guest::task",
    });
}

/// Raw bindings of the `wasmos:scheduler` world.
pub mod scheduler {
    wit_bindgen::generate!({
        path: "../wit/scheduler",
        world: "scheduler",
        pub_export_macro: true,
        export_macro_name: "export_scheduler",
        default_bindings_module: "wasmos_guest::scheduler",
    });
}

/// What a task can ask the host: its id, attempt, framework; progress; logs.
pub mod context {
    pub use crate::task::wasmos::task::context::{attempt, framework, heartbeat, log, report_progress, task_id};
}

/// Scheduler-side host functions: logging and the master's clock.
pub mod host {
    pub use crate::scheduler::wasmos::scheduler::host::{log, now_ms};
    pub use crate::scheduler::wasmos::scheduler::types::LogLevel;

    pub fn info(msg: &str) {
        log(LogLevel::Info, msg);
    }
}

pub use scheduler::wasmos::scheduler::types::{
    Call, Decline, Job, Launch, Limits, Offer, Outcome, Scalar, TaskSpec, TaskState, TaskStatus,
};

/// Resource arithmetic on `list<scalar>` (thousandths; mem in bytes).
pub mod res {
    use crate::Scalar;

    pub fn get(r: &[Scalar], name: &str) -> i64 {
        r.iter().filter(|s| s.name == name).map(|s| s.milli).sum()
    }

    /// Whether `need` fits in `free`.
    pub fn fits(free: &[Scalar], need: &[Scalar]) -> bool {
        need.iter().all(|n| get(free, &n.name) >= n.milli)
    }

    /// `free -= need` (amounts stop at zero).
    pub fn take(free: &mut Vec<Scalar>, need: &[Scalar]) {
        for n in need {
            if let Some(f) = free.iter_mut().find(|f| f.name == n.name) {
                f.milli = (f.milli - n.milli).max(0);
            }
        }
    }

    /// `cpus` in cores and `mem` in bytes, as scalars.
    pub fn cpus_mem(cpus: f64, mem_bytes: u64) -> Vec<Scalar> {
        vec![
            Scalar { name: "cpus".into(), milli: (cpus * 1000.0).round() as i64 },
            Scalar { name: "mem".into(), milli: mem_bytes as i64 * 1000 },
        ]
    }
}

/// `key=value,key=value` configs (what the example frameworks take): the value
/// of `key`, if present.
pub fn config_value<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    config.split(',').filter_map(|kv| kv.split_once('=')).find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim())
}

/// The task that runs a job as submitted (task id = job id, so
/// `wasmos submit --wait` can follow it).
pub fn task_for(job: Job) -> TaskSpec {
    TaskSpec {
        task_id: job.id,
        name: job.name,
        module_sha256: job.module_sha256,
        args: job.args,
        env: job.env,
        resources: job.resources,
        limits: job.limits,
        input: job.payload,
        health: job.health,
    }
}

/// Launches `tasks` on one offer, or declines it (5 s filter) when empty.
pub fn launch_or_decline(offer_id: String, tasks: Vec<TaskSpec>) -> Call {
    if tasks.is_empty() {
        Call::Decline(Decline { offer_ids: vec![offer_id], refuse_seconds: Some(5.0) })
    } else {
        Call::Launch(Launch { offer_ids: vec![offer_id], tasks, refuse_seconds: Some(1.0) })
    }
}

/// A framework's scheduler. One instance lives for the framework's lifetime
/// (its memory is its state); every callback returns the calls to make.
/// Defaults: decline offers, ignore everything else.
pub trait Scheduler: Sized + 'static {
    /// Called once with the `--config` of `wasmos framework deploy`.
    fn init(config: &str) -> Result<Self, String>;
    fn on_offers(&mut self, offers: Vec<Offer>) -> Vec<Call> {
        offers.into_iter().map(|o| launch_or_decline(o.id, vec![])).collect()
    }
    fn on_update(&mut self, _status: TaskStatus) -> Vec<Call> {
        Vec::new()
    }
    fn on_submit(&mut self, _job: Job) -> Vec<Call> {
        Vec::new()
    }
    fn on_rescind(&mut self, _offer_id: String) -> Vec<Call> {
        Vec::new()
    }
    fn on_timer(&mut self) -> Vec<Call> {
        Vec::new()
    }
    /// Calls to make right after init (e.g. a first timer).
    fn initial_calls(&mut self) -> Vec<Call> {
        Vec::new()
    }
}

/// Exports `fn(Vec<u8>) -> Result<Vec<u8>, String>` as a `wasmos:task` component.
#[macro_export]
macro_rules! task {
    ($f:path) => {
        struct __WasmosTask;
        impl $crate::task::Guest for __WasmosTask {
            fn run(input: ::std::vec::Vec<u8>) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $f(input)
            }
        }
        $crate::task::export_task!(__WasmosTask with_types_in $crate::task);
    };
}

/// Exports a [`Scheduler`] implementation as a `wasmos:scheduler` component.
#[macro_export]
macro_rules! scheduler {
    ($t:ty) => {
        ::std::thread_local! {
            static __WASMOS_STATE: ::std::cell::RefCell<::std::option::Option<$t>> = const { ::std::cell::RefCell::new(None) };
        }
        fn __wasmos_with(f: impl FnOnce(&mut $t) -> ::std::vec::Vec<$crate::Call>) -> ::std::vec::Vec<$crate::Call> {
            __WASMOS_STATE.with(|s| match s.borrow_mut().as_mut() {
                Some(st) => f(st),
                None => ::std::vec::Vec::new(),
            })
        }
        struct __WasmosScheduler;
        impl $crate::scheduler::Guest for __WasmosScheduler {
            fn init(config: ::std::string::String) -> ::std::result::Result<::std::vec::Vec<$crate::Call>, ::std::string::String> {
                let mut st = <$t as $crate::Scheduler>::init(&config)?;
                let calls = $crate::Scheduler::initial_calls(&mut st);
                __WASMOS_STATE.with(|s| *s.borrow_mut() = Some(st));
                Ok(calls)
            }
            fn on_offers(offers: ::std::vec::Vec<$crate::Offer>) -> ::std::vec::Vec<$crate::Call> {
                __wasmos_with(|s| $crate::Scheduler::on_offers(s, offers))
            }
            fn on_update(status: $crate::TaskStatus) -> ::std::vec::Vec<$crate::Call> {
                __wasmos_with(|s| $crate::Scheduler::on_update(s, status))
            }
            fn on_submit(job: $crate::Job) -> ::std::vec::Vec<$crate::Call> {
                __wasmos_with(|s| $crate::Scheduler::on_submit(s, job))
            }
            fn on_rescind(offer_id: ::std::string::String) -> ::std::vec::Vec<$crate::Call> {
                __wasmos_with(|s| $crate::Scheduler::on_rescind(s, offer_id))
            }
            fn on_timer() -> ::std::vec::Vec<$crate::Call> {
                __wasmos_with(|s| $crate::Scheduler::on_timer(s))
            }
        }
        $crate::scheduler::export_scheduler!(__WasmosScheduler with_types_in $crate::scheduler);
    };
}
