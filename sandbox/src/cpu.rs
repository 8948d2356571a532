//! A weighted fair CPU scheduler for tasks and hosted schedulers.
//!
//! Every run of Wasm code is wrapped in a [`Fair`] future. Before each poll
//! (one time slice) the run takes one of the sandbox's `cores` run permits;
//! after it, the thread CPU time the poll used is charged to the run's
//! [`Account`] as virtual runtime (`ns * 1000 / weight`, weight in
//! milli-cpus, as in Linux CFS) and the permit goes to the waiting run with
//! the least virtual runtime. So under contention each run gets CPU in
//! proportion to its `cpus`; a run that waits on a host call, a sleep or a
//! pause holds no permit, so idle shares are lent to the others. In hard
//! mode a token bucket also caps each run at its `cpus` even when the agent
//! is idle.
//!
//! Slices end by epoch interruption: the engine's epoch ticks every
//! millisecond and the store's epoch callback asks [`Account::should_yield`];
//! when a waiter has less virtual runtime (by more than a granularity), the
//! slice is over (then always: runs that have not asked for a core yet, and
//! the executor's other work, get their turn), or the hard-mode budget is
//! spent, the Wasm code yields to the executor (`UpdateDeadline::Yield`) and
//! the poll returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One core, in the milli-cpu units of a weight.
pub const WEIGHT_ONE: u64 = 1000;
/// Virtual runtime a waiter must be behind the running run by before it
/// preempts it mid-slice (a guard against switching on every tick).
const GRANULARITY_NS: u64 = 1_000_000;
/// Hard mode: the most CPU time a run may save up while it waits, as time
/// at its full share.
const HARD_BURST: Duration = Duration::from_millis(20);

/// How CPU shares are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuLimit {
    /// Work-conserving: under contention CPU is split in proportion to
    /// `cpus`; a share nobody uses is lent to the others.
    #[default]
    Shares,
    /// A task never gets more than its `cpus`, even on an idle agent.
    Hard,
}

impl std::str::FromStr for CpuLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shares" => Ok(CpuLimit::Shares),
            "hard" => Ok(CpuLimit::Hard),
            other => Err(format!("unknown cpu limit `{other}`; use `shares` or `hard`")),
        }
    }
}

impl std::fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuLimit::Shares => "shares",
            CpuLimit::Hard => "hard",
        })
    }
}

/// The epoch callback's answer when a run should give up its core: it joins
/// the queue for its next turn at its virtual runtime now, then yields to the
/// executor through `tokio::task::yield_now` (at the back of the run queue; a
/// plain wake would put it in the worker's LIFO slot and poll it again at
/// once, before runs that have not asked for a core yet). Its [`Fair`] then
/// gives back the permit, which goes to the least-served waiter, itself
/// included.
pub(crate) fn yield_turn(acct: &Arc<Account>) -> wasmtime::UpdateDeadline {
    let acct = acct.clone();
    wasmtime::UpdateDeadline::YieldCustom(
        1,
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                acct.cpu.requeue(&acct, cx.waker());
                Poll::Ready(())
            })
            .await;
            tokio::task::yield_now().await;
        }),
    )
}

/// Lowers the calling thread's scheduling priority by `nice` (0: leave it),
/// so the kernel runs a process's control work (an agent's gRPC, the master
/// beside it) before tenant Wasm when both want the CPU. Best effort.
pub(crate) fn renice_this_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: plain syscalls on the calling thread's own id; no memory is passed.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, nice.clamp(-20, 19));
    }
}

/// CPU time used by the calling thread, in nanoseconds.
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// The run permits of one sandbox and the queue of runs waiting for one.
#[derive(Debug)]
pub(crate) struct Cpu {
    cores: usize,
    limit: CpuLimit,
    slice_ns: u64,
    st: Mutex<St>,
    /// Engines whose epoch is bumped when a run queues at the front, so the
    /// runs on the cores check at once whether to make way (rather than at
    /// the next tick of the ticker).
    kick: std::sync::OnceLock<Vec<wasmtime::Engine>>,
}

#[derive(Debug, Default)]
struct St {
    /// Permits held (by runs in a poll, or handed to a woken waiter).
    running: usize,
    /// Waiters by (virtual runtime, arrival).
    queue: BTreeMap<(u64, u64), u64>,
    /// A waiter's place in `queue` and how to wake it, by account id (no
    /// waker yet: a run that arrived and has not been polled).
    waiting: HashMap<u64, ((u64, u64), Option<Waker>)>,
    /// Waiters handed a permit that have not yet polled.
    granted: HashSet<u64>,
    /// Grows monotonically: where a run that was idle re-enters.
    min_vr: u64,
    seq: u64,
    next_id: u64,
}

impl Cpu {
    pub(crate) fn new(cores: usize, limit: CpuLimit, slice: Duration) -> Cpu {
        Cpu {
            cores: cores.max(1),
            limit,
            slice_ns: slice.as_nanos().clamp(100_000, u64::MAX as u128) as u64,
            st: Mutex::new(St::default()),
            kick: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn kick_engines(&self, engines: Vec<wasmtime::Engine>) {
        let _ = self.kick.set(engines);
    }

    /// A run queued at the front: the runs on the cores look now.
    fn kick(&self, st: &St, key: (u64, u64)) {
        if st.queue.keys().next() == Some(&key) {
            self.kick.get().into_iter().flatten().for_each(wasmtime::Engine::increment_epoch);
        }
    }

    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn cores(&self) -> usize {
        self.cores
    }

    /// Runs waiting for a permit now.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    /// A new account for one run, weighted by `cpus` in milli-cpus.
    pub(crate) fn account(self: &Arc<Cpu>, weight: u64, live: Option<crate::TaskControl>) -> Arc<Account> {
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            st.next_id
        };
        let weight = weight.max(1);
        Arc::new(Account {
            cpu: self.clone(),
            id,
            weight,
            vr: AtomicU64::new(0),
            slice_start: AtomicU64::new(0),
            budget_ns: AtomicI64::new(i64::MAX),
            total_ns: AtomicU64::new(0),
            live,
        })
    }

    /// Takes a permit for `acct` or queues it; true when it may run now.
    fn acquire(&self, acct: &Account, waker: &Waker) -> bool {
        let mut st = self.lock();
        if st.granted.remove(&acct.id) {
            return true;
        }
        if let Some((_, w)) = st.waiting.get_mut(&acct.id) {
            if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *w = Some(waker.clone());
            }
            return false;
        }
        // A run that was idle (new, asleep, paused) re-enters just ahead of the
        // least-served waiter: it cannot bank CPU it did not use.
        let vr = acct.vr.load(Relaxed).max(st.min_vr.saturating_sub(GRANULARITY_NS));
        acct.vr.store(vr, Relaxed);
        if st.running < self.cores && st.queue.is_empty() {
            st.running += 1;
            return true;
        }
        st.seq += 1;
        let key = (vr, st.seq);
        st.queue.insert(key, acct.id);
        st.waiting.insert(acct.id, (key, Some(waker.clone())));
        self.kick(&st, key);
        false
    }

    /// A run about to start (it has its sandbox slot) queues before its first
    /// poll: the runs on the cores see it at their next tick and make way, so
    /// it is not left behind them in the executor's queue.
    pub(crate) fn arrive(&self, acct: &Account) {
        let mut st = self.lock();
        if st.waiting.contains_key(&acct.id) || st.granted.contains(&acct.id) {
            return;
        }
        let vr = acct.vr.load(Relaxed).max(st.min_vr.saturating_sub(GRANULARITY_NS));
        acct.vr.store(vr, Relaxed);
        if st.running < self.cores && st.queue.is_empty() {
            st.running += 1;
            st.granted.insert(acct.id);
            return;
        }
        st.seq += 1;
        let key = (vr, st.seq);
        st.queue.insert(key, acct.id);
        st.waiting.insert(acct.id, (key, None));
        self.kick(&st, key);
    }

    /// A run at the end of its slice (still holding its permit) queues for
    /// its next turn, at the virtual runtime it has now.
    fn requeue(&self, acct: &Account, waker: &Waker) {
        let used = thread_cpu_ns().saturating_sub(acct.slice_start.load(Relaxed));
        let vr = acct.vr.load(Relaxed).saturating_add(used.saturating_mul(WEIGHT_ONE) / acct.weight);
        let mut st = self.lock();
        if st.waiting.contains_key(&acct.id) || st.granted.contains(&acct.id) {
            return;
        }
        st.seq += 1;
        let key = (vr, st.seq);
        st.queue.insert(key, acct.id);
        st.waiting.insert(acct.id, (key, Some(waker.clone())));
    }

    /// Gives back the permit of run `id` after a poll, its virtual runtime now
    /// `vr`. Should the next turn be its own (it queued at the end of its
    /// slice), it is not woken here: its yield already rescheduled it.
    fn release(&self, id: u64, vr: u64) {
        let wake = {
            let mut st = self.lock();
            st.running = st.running.saturating_sub(1);
            let front = st.queue.keys().next().map(|k| k.0).unwrap_or(u64::MAX);
            st.min_vr = st.min_vr.max(vr.min(front));
            self.grant(&mut st, Some(id))
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// Hands free permits to the front waiters; returns whom to wake (all
    /// but `quiet`).
    fn grant(&self, st: &mut St, quiet: Option<u64>) -> Vec<Waker> {
        let mut wake = Vec::new();
        while st.running < self.cores {
            let Some((_, id)) = st.queue.pop_first() else { break };
            if let Some((_, w)) = st.waiting.remove(&id) {
                st.granted.insert(id);
                st.running += 1;
                if let Some(w) = w.filter(|_| Some(id) != quiet) {
                    wake.push(w);
                }
            }
        }
        wake
    }

    /// Takes a run out of the queue, and gives back a permit it was handed.
    pub(crate) fn withdraw(&self, acct: &Account) {
        self.withdraw_id(acct.id);
    }

    fn withdraw_id(&self, id: u64) {
        let wake = {
            let mut st = self.lock();
            if let Some((key, _)) = st.waiting.remove(&id) {
                st.queue.remove(&key);
            }
            if st.granted.remove(&id) {
                st.running = st.running.saturating_sub(1);
                self.grant(&mut st, None)
            } else {
                Vec::new()
            }
        };
        wake.into_iter().for_each(Waker::wake);
    }
}

/// One run's CPU account: what it has used and where it stands in the queue.
/// Shared between the run's [`Fair`] future and its store's epoch callback.
#[derive(Debug)]
pub(crate) struct Account {
    cpu: Arc<Cpu>,
    id: u64,
    /// Milli-cpus.
    weight: u64,
    /// Virtual runtime, ns.
    vr: AtomicU64,
    /// The thread's CPU clock when the current poll began.
    slice_start: AtomicU64,
    /// Hard mode: CPU ns this poll may use before it must yield.
    budget_ns: AtomicI64,
    total_ns: AtomicU64,
    live: Option<crate::TaskControl>,
}

impl Account {
    /// CPU time charged so far.
    pub(crate) fn total(&self) -> Duration {
        Duration::from_nanos(self.total_ns.load(Relaxed))
    }

    /// Called at each epoch tick from inside the poll: should the Wasm code
    /// yield now?
    pub(crate) fn should_yield(&self) -> bool {
        let used = thread_cpu_ns().saturating_sub(self.slice_start.load(Relaxed));
        if used as i64 >= self.budget_ns.load(Relaxed) {
            return true;
        }
        // At the end of a slice, always: the executor may have runs that
        // have not asked for a core yet (new ones, woken ones), and other work.
        if used >= self.cpu.slice_ns {
            return true;
        }
        let mine = self.vr.load(Relaxed).saturating_add(used.saturating_mul(WEIGHT_ONE) / self.weight);
        let st = self.cpu.lock();
        st.queue.keys().next().is_some_and(|&(front, _)| front.saturating_add(GRANULARITY_NS) < mine)
    }

    fn charge(&self, ns: u64) {
        self.vr.fetch_add(ns.saturating_mul(WEIGHT_ONE) / self.weight, Relaxed);
        let total = self.total_ns.fetch_add(ns, Relaxed) + ns;
        if let Some(c) = &self.live {
            c.note_cpu(total);
        }
    }
}

/// Hard mode's token bucket: CPU ns a run may still use.
#[derive(Debug)]
struct Bucket {
    tokens: i64,
    last: Instant,
}

/// A future whose every poll is one fairly scheduled slice on a run permit.
pub(crate) struct Fair<F> {
    inner: Pin<Box<F>>,
    acct: Arc<Account>,
    bucket: Option<Bucket>,
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F> Fair<F> {
    pub(crate) fn new(inner: F, acct: Arc<Account>) -> Fair<F> {
        let bucket = (acct.cpu.limit == CpuLimit::Hard).then(|| Bucket { tokens: 0, last: Instant::now() });
        Fair { inner: Box::pin(inner), acct, bucket, throttle: None }
    }

    /// Leaves the queue (a paused run must not hold or wait for a permit).
    pub(crate) fn withdraw(&mut self) {
        self.acct.cpu.withdraw_id(self.acct.id);
    }
}

impl<F> Drop for Fair<F> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl Drop for Account {
    /// A run that ends anywhere leaves the queue and gives back a permit it
    /// was handed.
    fn drop(&mut self) {
        self.cpu.withdraw_id(self.id);
    }
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Some(sleep) = &mut this.throttle {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.throttle = None;
        }
        let weight = this.acct.weight;
        if let Some(b) = &mut this.bucket {
            let now = Instant::now();
            let earned = (now - b.last).as_nanos() as u64 * weight / WEIGHT_ONE;
            let cap = (HARD_BURST.as_nanos() as u64 * weight / WEIGHT_ONE) as i64;
            b.tokens = b.tokens.saturating_add(earned as i64).min(cap);
            b.last = now;
            if b.tokens <= 0 {
                // Out of its share: it neither holds nor waits for a core.
                this.acct.cpu.withdraw_id(this.acct.id);
                let wait = Duration::from_nanos((-b.tokens) as u64 * WEIGHT_ONE / weight + 1);
                let mut sleep = Box::pin(tokio::time::sleep(wait));
                if sleep.as_mut().poll(cx).is_pending() {
                    this.throttle = Some(sleep);
                    return Poll::Pending;
                }
            }
            this.acct.budget_ns.store(b.tokens.max(1), Relaxed);
        }
        if !this.acct.cpu.acquire(&this.acct, cx.waker()) {
            return Poll::Pending;
        }
        let start = thread_cpu_ns();
        this.acct.slice_start.store(start, Relaxed);
        let r = this.inner.as_mut().poll(cx);
        let used = thread_cpu_ns().saturating_sub(start);
        this.acct.charge(used);
        if let Some(b) = &mut this.bucket {
            b.tokens = b.tokens.saturating_sub(used as i64);
        }
        this.acct.cpu.release(this.acct.id, this.acct.vr.load(Relaxed));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Relaxed);
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let f = Arc::new(Flag(false.into()));
        (f.clone(), Waker::from(f))
    }

    #[test]
    fn the_least_served_waiter_gets_the_next_permit() {
        let cpu = Arc::new(Cpu::new(1, CpuLimit::Shares, Duration::from_millis(10)));
        let (a, b, c) = (cpu.account(1000, None), cpu.account(1000, None), cpu.account(1000, None));
        let (_, wa) = waker();
        assert!(cpu.acquire(&a, &wa));
        b.vr.store(5_000_000, Relaxed);
        c.vr.store(2_000_000, Relaxed);
        let (fb, wb) = waker();
        let (fc, wc) = waker();
        assert!(!cpu.acquire(&b, &wb));
        assert!(!cpu.acquire(&c, &wc));
        assert_eq!(cpu.waiting(), 2);
        a.charge(1_000_000);
        cpu.release(a.id, a.vr.load(Relaxed));
        assert!(fc.0.load(Relaxed) && !fb.0.load(Relaxed), "c has run less, so it goes first");
        assert!(cpu.acquire(&c, &wc), "the permit was handed to c");
        // A paused waiter leaves the queue; a withdrawn grant passes on.
        cpu.withdraw_id(b.id);
        assert_eq!(cpu.waiting(), 0);
        cpu.release(c.id, c.vr.load(Relaxed));
        assert!(cpu.acquire(&a, &wa), "a free permit and nobody waiting");
    }

    #[test]
    fn charges_are_weighted_by_cpus() {
        let cpu = Arc::new(Cpu::new(2, CpuLimit::Shares, Duration::from_millis(10)));
        let small = cpu.account(250, None);
        let big = cpu.account(750, None);
        small.charge(3_000_000);
        big.charge(3_000_000);
        assert_eq!(small.vr.load(Relaxed), 12_000_000);
        assert_eq!(big.vr.load(Relaxed), 4_000_000);
        assert_eq!(small.total(), Duration::from_millis(3));
    }

    #[test]
    fn a_run_that_was_idle_cannot_bank_cpu() {
        let cpu = Arc::new(Cpu::new(1, CpuLimit::Shares, Duration::from_millis(10)));
        let a = cpu.account(1000, None);
        let (_, w) = waker();
        assert!(cpu.acquire(&a, &w));
        a.charge(50_000_000);
        cpu.release(a.id, a.vr.load(Relaxed));
        let late = cpu.account(1000, None);
        assert!(cpu.acquire(&late, &w));
        assert_eq!(late.vr.load(Relaxed), 50_000_000 - GRANULARITY_NS);
    }
}
