//! Hosted schedulers: one long-lived `wasmos:scheduler` component instance per
//! framework, in its own store (its memory is its state). Every callback runs
//! under a fuel budget, a memory cap and a wall-clock limit; after any failure
//! the instance is poisoned and refuses further calls. Its callbacks run on the
//! metered lane and are charged to its own CPU account in the sandbox's fair
//! scheduler, so a scheduler that burns its whole budget on every callback
//! gets no more CPU than any other while others wait.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use crate::cpu::Fair;
use crate::limiter::MemLimiter;
use crate::output::{Capture, Passthrough};
use crate::run::{TaskData, Wasi};
use crate::worlds::scheduler::wasmos::scheduler::types::{Call, Job, LogLevel, Offer, TaskStatus};
use crate::worlds::scheduler::{Scheduler, SchedulerPre};
use crate::{Sandbox, SandboxError};

/// Default [`SchedulerLimits::fuel_per_callback`]: 100 million units.
pub const DEFAULT_CALLBACK_FUEL: u64 = 100_000_000;
/// Default [`SchedulerLimits::mem`]: 64 MiB.
pub const DEFAULT_SCHEDULER_MEM: u64 = 64 << 20;
/// Default [`SchedulerLimits::timeout`]: 1 s.
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Limits applied to every callback of a hosted scheduler.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerLimits {
    /// Fuel one callback may use. Default 100,000,000.
    pub fuel_per_callback: u64,
    /// Memory + tables the instance may hold in all. Default 64 MiB.
    pub mem: u64,
    /// Wall-clock limit of one callback. Default 1 s.
    pub timeout: Duration,
}

impl Default for SchedulerLimits {
    fn default() -> Self {
        SchedulerLimits {
            fuel_per_callback: DEFAULT_CALLBACK_FUEL,
            mem: DEFAULT_SCHEDULER_MEM,
            timeout: DEFAULT_CALLBACK_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackErrorKind {
    OutOfFuel,
    OutOfMemory,
    TimedOut,
    Trap,
    /// The instance failed before and refuses further calls.
    Poisoned,
}

/// Why a callback failed. After one, the scheduler is done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{callback}: {message}")]
pub struct CallbackError {
    pub kind: CallbackErrorKind,
    pub callback: &'static str,
    pub message: String,
}

pub struct SchedulerInstance {
    store: Store<TaskData>,
    acct: Arc<crate::cpu::Account>,
    bindings: Scheduler,
    limits: SchedulerLimits,
    poisoned: Option<String>,
    /// Callbacks made, and fuel they used in all.
    pub callbacks: u64,
    pub fuel_used: u64,
    /// Log lines of the last callback: (level, message).
    pub logs: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for SchedulerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerInstance")
            .field("callbacks", &self.callbacks)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

fn level(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

impl Sandbox {
    /// Compiles and instantiates a `wasmos:scheduler` component. Blocking
    /// compile runs on a blocking thread. The instance keeps one pool slot.
    pub async fn instantiate_scheduler(
        &self,
        bytes: Arc<[u8]>,
        limits: SchedulerLimits,
    ) -> Result<SchedulerInstance, SandboxError> {
        if !(bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[6..8] == [1, 0] && bytes[4..6] != [1, 0]) {
            return Err(SandboxError::InvalidModule(
                "a scheduler must be a component of the wasmos:scheduler world (not a core module); \
                 build it with the guest SDK or componentize it with wit-component"
                    .into(),
            ));
        }
        let lane = &self.inner.metered;
        let engine = lane.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| SandboxError::InvalidModule(format!("compiling the scheduler crashed: {e}")))?
            .map_err(|e| SandboxError::InvalidModule(format!("scheduler is not a valid component: {e:#}")))?;
        let ipre = lane.linkers.component.instantiate_pre(&component).map_err(|e| {
            SandboxError::UnsupportedImport(format!(
                "unsupported import: {e:#}; a scheduler may import only wasmos:scheduler/host and WASI 0.2"
            ))
        })?;
        let pre = SchedulerPre::new(ipre).map_err(|e| {
            SandboxError::UnsupportedImport(format!(
                "component does not implement the wasmos:scheduler world ({e:#}); export init, on-offers, on-update, \
                 on-submit, on-rescind and on-timer"
            ))
        })?;
        let mut b = WasiCtxBuilder::new();
        // Scheduler stdout/stderr are kept small and discarded: use host.log.
        b.stdout(Capture::new(0, Passthrough::None))
            .stderr(Capture::new(0, Passthrough::None))
            .allow_tcp(false)
            .allow_udp(false);
        let data = TaskData {
            wasi: Wasi::P2 { ctx: b.build(), table: ResourceTable::new() },
            limiter: MemLimiter::new(limits.mem, 16, 8, 4),
            context: crate::TaskContext::default(),
            progress: None,
            heartbeats: None,
            migration: Default::default(),
            log_to: None,
            sched_logs: Vec::new(),
        };
        let mut store = Store::new(&lane.engine, data);
        store.limiter(|d| &mut d.limiter);
        let _ = store.set_fuel(limits.fuel_per_callback);
        let acct = self.inner.cpu.account(crate::WEIGHT_ONE, None);
        let cb_acct = acct.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if cb_acct.should_yield() { crate::cpu::yield_turn(&cb_acct) } else { UpdateDeadline::Continue(1) })
        });
        let instantiate = Fair::new(pre.instantiate_async(&mut store), acct.clone());
        let bindings = match tokio::time::timeout(limits.timeout, instantiate).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(SandboxError::InvalidModule(format!("cannot instantiate the scheduler: {e:#}"))),
            Err(_) => return Err(SandboxError::InvalidModule("instantiating the scheduler timed out".into())),
        };
        Ok(SchedulerInstance {
            store,
            acct,
            bindings,
            limits,
            poisoned: None,
            callbacks: 0,
            fuel_used: 0,
            logs: Vec::new(),
        })
    }
}

impl SchedulerInstance {
    /// CPU time its callbacks used in all.
    pub fn cpu_time(&self) -> Duration {
        self.acct.total()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn before(&mut self, callback: &'static str) -> Result<(), CallbackError> {
        if let Some(why) = &self.poisoned {
            return Err(CallbackError { kind: CallbackErrorKind::Poisoned, callback, message: why.clone() });
        }
        self.logs.clear();
        let _ = self.store.set_fuel(self.limits.fuel_per_callback);
        Ok(())
    }

    fn after<T>(
        &mut self,
        callback: &'static str,
        r: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, CallbackError> {
        self.callbacks += 1;
        let left = self.store.get_fuel().unwrap_or(0);
        self.fuel_used += self.limits.fuel_per_callback.saturating_sub(left);
        self.logs =
            std::mem::take(&mut self.store.data_mut().sched_logs).into_iter().map(|(l, m)| (level(l), m)).collect();
        let err = match r {
            Ok(Ok(v)) => return Ok(v),
            Err(_) => CallbackError {
                kind: CallbackErrorKind::TimedOut,
                callback,
                message: format!("did not return within {:?}", self.limits.timeout),
            },
            Ok(Err(e)) => {
                let refused = self.store.data().limiter.refused.clone();
                match (e.downcast_ref::<Trap>(), refused) {
                    (Some(Trap::OutOfFuel), _) => CallbackError {
                        kind: CallbackErrorKind::OutOfFuel,
                        callback,
                        message: format!("used its whole budget of {} fuel", self.limits.fuel_per_callback),
                    },
                    (_, Some(r)) => CallbackError { kind: CallbackErrorKind::OutOfMemory, callback, message: r },
                    _ => CallbackError {
                        kind: CallbackErrorKind::Trap,
                        callback,
                        message: format!("{:#}", e.root_cause()),
                    },
                }
            }
        };
        self.poisoned = Some(err.to_string());
        Err(err)
    }

    pub async fn init(&mut self, config: &str) -> Result<Result<Vec<Call>, String>, CallbackError> {
        self.before("init")?;
        let r = tokio::time::timeout(
            self.limits.timeout,
            Fair::new(self.bindings.call_init(&mut self.store, config), self.acct.clone()),
        )
        .await;
        self.after("init", r)
    }

    pub async fn on_offers(&mut self, offers: &[Offer]) -> Result<Vec<Call>, CallbackError> {
        self.before("on-offers")?;
        let r = tokio::time::timeout(
            self.limits.timeout,
            Fair::new(self.bindings.call_on_offers(&mut self.store, offers), self.acct.clone()),
        )
        .await;
        self.after("on-offers", r)
    }

    pub async fn on_update(&mut self, status: &TaskStatus) -> Result<Vec<Call>, CallbackError> {
        self.before("on-update")?;
        let r = tokio::time::timeout(
            self.limits.timeout,
            Fair::new(self.bindings.call_on_update(&mut self.store, status), self.acct.clone()),
        )
        .await;
        self.after("on-update", r)
    }

    pub async fn on_submit(&mut self, job: &Job) -> Result<Vec<Call>, CallbackError> {
        self.before("on-submit")?;
        let r = tokio::time::timeout(
            self.limits.timeout,
            Fair::new(self.bindings.call_on_submit(&mut self.store, job), self.acct.clone()),
        )
        .await;
        self.after("on-submit", r)
    }

    pub async fn on_rescind(&mut self, offer_id: &str) -> Result<Vec<Call>, CallbackError> {
        self.before("on-rescind")?;
        let r = tokio::time::timeout(
            self.limits.timeout,
            Fair::new(self.bindings.call_on_rescind(&mut self.store, offer_id), self.acct.clone()),
        )
        .await;
        self.after("on-rescind", r)
    }

    pub async fn on_timer(&mut self) -> Result<Vec<Call>, CallbackError> {
        self.before("on-timer")?;
        let r = tokio::time::timeout(
            self.limits.timeout,
            Fair::new(self.bindings.call_on_timer(&mut self.store), self.acct.clone()),
        )
        .await;
        self.after("on-timer", r)
    }
}
