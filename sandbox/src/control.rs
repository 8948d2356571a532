//! Kill, pause and resume a running task from outside.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What the owner of a task wants it to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Run,
    Pause,
    /// Sticky: once killed, a task never runs again.
    Kill,
}

/// A handle to steer one task run. Clone it freely; all clones steer the same run.
///
/// Pausing does not lose work: the sandbox simply stops polling the task's
/// future at its next yield point (the next epoch tick), and polls it again on
/// resume. Paused time does not count toward the timeout.
#[derive(Debug, Clone)]
pub struct TaskControl {
    tx: Arc<watch::Sender<Signal>>,
    live: Arc<Live>,
}

/// What a run shows while it goes: its use so far (updated at each epoch
/// tick) and its output so far.
#[derive(Debug, Default)]
struct Live {
    fuel: std::sync::atomic::AtomicU64,
    mem: std::sync::atomic::AtomicU64,
    /// CPU ns charged so far (after each slice).
    cpu_ns: std::sync::atomic::AtomicU64,
    /// Asked to capture at the next safe point (migratable modules).
    capture: Arc<std::sync::atomic::AtomicBool>,
    /// The snapshot of a run that ended captured.
    snapshot: std::sync::Mutex<Option<crate::migrate::Snapshot>>,
    /// Set once the run has a pool slot and begins (until then it is STARTING).
    started: tokio::sync::watch::Sender<bool>,
    output: std::sync::OnceLock<(crate::output::Capture, crate::output::Capture)>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Default for TaskControl {
    fn default() -> Self {
        TaskControl::new()
    }
}

impl TaskControl {
    pub fn new() -> TaskControl {
        TaskControl { tx: Arc::new(watch::Sender::new(Signal::Run)), live: Arc::default() }
    }

    fn set(&self, s: Signal) {
        self.tx.send_if_modified(|cur| {
            if *cur == Signal::Kill || *cur == s {
                false
            } else {
                *cur = s;
                true
            }
        });
    }

    /// Asks a migratable run to end at its next safe point with a snapshot
    /// (see [`crate::migrate`]); a run that reaches none runs on.
    pub fn capture(&self) {
        self.live.capture.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn capture_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.live.capture.clone()
    }
    pub(crate) fn put_snapshot(&self, s: crate::migrate::Snapshot) {
        *self.live.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }
    /// The snapshot of a run that ended captured (once).
    pub fn take_snapshot(&self) -> Option<crate::migrate::Snapshot> {
        self.live.snapshot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Ends the task as `killed` at its next yield point.
    pub fn kill(&self) {
        self.set(Signal::Kill);
    }
    pub fn pause(&self) {
        self.set(Signal::Pause);
    }
    pub fn resume(&self) {
        self.set(Signal::Run);
    }
    pub fn signal(&self) -> Signal {
        *self.tx.borrow()
    }
    pub(crate) fn subscribe(&self) -> watch::Receiver<Signal> {
        self.tx.subscribe()
    }

    /// Fuel used so far (as of the last epoch tick; 0 without metering).
    pub fn fuel_used(&self) -> u64 {
        self.live.fuel.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Memory in use now (as of the last epoch tick).
    pub fn memory(&self) -> u64 {
        self.live.mem.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// CPU time used so far (as of the end of its last time slice).
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.live.cpu_ns.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// True once the run has its pool slot and has begun.
    pub fn has_started(&self) -> bool {
        *self.live.started.borrow()
    }

    /// Resolves once the run has its pool slot and has begun.
    pub async fn started(&self) {
        let mut rx = self.live.started.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub(crate) fn mark_started(&self) {
        self.live.started.send_replace(true);
    }

    /// Resolves once the task is killed.
    pub(crate) async fn killed(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s == Signal::Kill).await;
    }

    pub(crate) fn note_cpu(&self, total_ns: u64) {
        self.live.cpu_ns.store(total_ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// Up to `max` bytes of a stream's kept output from `offset` on, and the
    /// offset after them; empty before the run started.
    pub fn output(&self, stream: Stream, offset: usize, max: usize) -> (Vec<u8>, usize) {
        match self.live.output.get() {
            Some((out, err)) => match stream {
                Stream::Stdout => out.read_from(offset, max),
                Stream::Stderr => err.read_from(offset, max),
            },
            None => (Vec::new(), offset),
        }
    }

    pub(crate) fn attach_output(&self, stdout: crate::output::Capture, stderr: crate::output::Capture) {
        let _ = self.live.output.set((stdout, stderr));
    }

    pub(crate) fn note_use(&self, fuel: u64, mem: u64) {
        self.live.fuel.store(fuel, std::sync::atomic::Ordering::Relaxed);
        self.live.mem.store(mem, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Time a task has spent running (not paused), shared with the epoch callback.
#[derive(Debug)]
pub(crate) struct ActiveClock {
    timeout: Duration,
    /// (time accumulated in earlier running stretches, start of the current one)
    state: Mutex<(Duration, Option<Instant>)>,
}

impl ActiveClock {
    pub(crate) fn start(timeout: Duration) -> ActiveClock {
        ActiveClock { timeout, state: Mutex::new((Duration::ZERO, Some(Instant::now()))) }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, (Duration, Option<Instant>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn pause(&self) {
        let mut s = self.lock();
        if let Some(since) = s.1.take() {
            s.0 += since.elapsed();
        }
    }
    pub(crate) fn resume(&self) {
        let mut s = self.lock();
        if s.1.is_none() {
            s.1 = Some(Instant::now());
        }
    }
    pub(crate) fn active(&self) -> Duration {
        let s = self.lock();
        s.0 + s.1.map(|t| t.elapsed()).unwrap_or_default()
    }
    pub(crate) fn remaining(&self) -> Duration {
        self.timeout.saturating_sub(self.active())
    }
    pub(crate) fn expired(&self) -> bool {
        self.active() >= self.timeout
    }
}
