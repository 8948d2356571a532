//! The soak's workload: several clients, each on its own connection and
//! paced to its share of `--rate`, submitting batch jobs of mixed sizes,
//! failing and timing-out tasks, and jobs for a hosted framework; a pacer
//! feeding the remote framework; and the latency probe. Every task a submit
//! acknowledged goes into the `Ledger` with the way it must end.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmos_model::{OutcomeKind, Resources, TaskState};
use wasmos_proto::v1;
use wasmos_security::client::AuthChannel as Channel;

use crate::common::{History, Rng, connect, op};

pub const NOOP: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
pub const TRAP: &str = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;
pub const SPIN: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;

/// Every task asks for this much (agents offer `cpus:8;mem:8GiB` each).
pub const TASK_RESOURCES: &str = "cpus:0.01;mem:8MiB";
/// The timing-out tasks' limit; each spins a core this long.
const SPIN_TIMEOUT_MS: u64 = 50;
/// Batch submissions may be retried this often after a lost agent, so a
/// task that is LOST at the end had far more faults than the soak injects.
const MAX_ATTEMPTS: u32 = 10;

/// Shares of `--rate`, counted in tasks; batch jobs of mixed sizes take the rest.
pub const FAILING_SHARE: f64 = 0.02;
pub const TIMING_OUT_SHARE: f64 = 0.002;
/// Timing-out tasks burn CPU for their whole timeout: at most this many a second.
pub const TIMING_OUT_MAX_RATE: f64 = 5.0;
pub const HOSTED_SHARE: f64 = 0.04;
pub const REMOTE_SHARE: f64 = 0.04;
/// Batch clients in parallel, each on its own connection.
pub const BATCH_CLIENTS: usize = 4;
/// Batch job sizes and how often each is picked.
const SIZES: [(u32, f64); 4] = [(1, 0.4), (10, 0.3), (100, 0.2), (1000, 0.1)];
/// How long the latency probe waits for one task before giving up on it,
/// and the pause between two probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_GAP: Duration = Duration::from_millis(20);
/// Above the load's batch jobs (priority 0).
const PROBE_PRIORITY: i32 = 10;

/// What a task is, and so how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Batch jobs of N tasks (`hello` or `noop`): FINISHED.
    Batch(u32),
    /// Traps (`unreachable`): FAILED with outcome `failed`.
    Failing,
    /// Loops until its timeout: FAILED with outcome `timed_out`.
    TimingOut,
    /// A job for the hosted SJF framework: FINISHED, LOST when its agent
    /// died, or DROPPED when its launch raced the offer's rescind (an agent
    /// removed): the SJF example does not retry either, as the soak's remote
    /// framework does not.
    Hosted,
    /// The latency probe's single no-op tasks: FINISHED.
    Probe,
}

impl Kind {
    pub fn label(self) -> String {
        match self {
            Kind::Batch(n) => format!("batch x{n}"),
            Kind::Failing => "failing (trap)".into(),
            Kind::TimingOut => "timing out".into(),
            Kind::Hosted => "hosted (sjf)".into(),
            Kind::Probe => "latency probe".into(),
        }
    }

    /// Whether a task of this kind may end so.
    pub fn accepts(self, state: Option<TaskState>, outcome: Option<OutcomeKind>) -> bool {
        match self {
            Kind::Batch(_) | Kind::Probe => state == Some(TaskState::Finished),
            Kind::Failing => state == Some(TaskState::Failed) && outcome == Some(OutcomeKind::Failed),
            Kind::TimingOut => state == Some(TaskState::Failed) && outcome == Some(OutcomeKind::TimedOut),
            Kind::Hosted => matches!(state, Some(TaskState::Finished | TaskState::Lost | TaskState::Dropped)),
        }
    }
}

/// Every acknowledged task and how it must end; what was refused.
#[derive(Debug, Default)]
pub struct Ledger {
    pub expected: HashMap<String, Kind>,
    pub per_kind: BTreeMap<Kind, u64>,
    /// Submits that got an error (the master was away): not acknowledged,
    /// so not expected; whatever they started is ignored.
    pub refused: u64,
    /// Ids the master handed out twice (two submits got the same task id),
    /// how many and the first few.
    pub duplicates: (u64, Vec<String>),
}

impl Ledger {
    fn add(&mut self, ids: Vec<String>, kind: Kind) {
        *self.per_kind.entry(kind).or_default() += ids.len() as u64;
        for id in ids {
            if self.expected.insert(id.clone(), kind).is_some() {
                self.duplicates.0 += 1;
                if self.duplicates.1.len() < 3 {
                    self.duplicates.1.push(id);
                }
            }
        }
    }
}

/// The modules the load runs, by SHA-256.
#[derive(Debug, Clone)]
pub struct Modules {
    pub hello: String,
    pub noop: String,
    pub trap: String,
    pub spin: String,
}

impl Modules {
    /// Uploads hello.wasm from the guests and the three WAT modules.
    pub async fn upload(ch: &Channel, hello: Vec<u8>) -> Modules {
        let mut art = v1::artifacts_client::ArtifactsClient::new(ch.clone());
        let mut shas = Vec::new();
        let wat = |s: &str| wat::parse_str(s).expect("valid WAT");
        for bytes in [hello, wat(NOOP), wat(TRAP), wat(SPIN)] {
            let sha = hex::encode(Sha256::digest(&bytes));
            art.upload(tokio_stream::iter(vec![v1::Chunk { sha256: sha.clone(), data: bytes, ..Default::default() }]))
                .await
                .expect("upload");
            shas.push(sha);
        }
        let [hello, noop, trap, spin] = shas.try_into().unwrap();
        Modules { hello, noop, trap, spin }
    }
}

/// What every client shares.
pub struct Load {
    pub url: String,
    pub modules: Modules,
    pub hosted: String,
    pub ledger: Mutex<Ledger>,
    /// What the watch saw; told of every acknowledged task.
    pub history: Arc<Mutex<History>>,
    pub start: Instant,
    pub stop_at: Instant,
}

impl Load {
    fn request(&self, name: &str, sha: &str, count: u32, timeout_ms: u64) -> v1::SubmitRequest {
        v1::SubmitRequest {
            template: Some(v1::TaskSpec {
                name: name.into(),
                module_sha256: sha.into(),
                resources: Some(wasmos_proto::resources_to_wire(&Resources::parse(TASK_RESOURCES).unwrap())),
                limits: Some(v1::Limits {
                    mem_bytes: 8 << 20,
                    timeout_ms,
                    max_output_bytes: 4096,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            count,
            max_attempts: MAX_ATTEMPTS,
            ..Default::default()
        }
    }

    /// Submits; records the acknowledged ids as `kind`, or counts a refusal.
    async fn submit(&self, ch: &Channel, req: v1::SubmitRequest, kind: Kind) -> Option<Vec<String>> {
        match op(ch).submit(req).await {
            Ok(r) => {
                let ids = r.into_inner().task_ids;
                self.ledger.lock().unwrap().add(ids.clone(), kind);
                self.history.lock().unwrap().acked(&ids);
                Some(ids)
            }
            Err(_) => {
                self.ledger.lock().unwrap().refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.stop_at
    }
}

/// Paces one client to `rate` tasks a second: a job of n tasks starts at its
/// slot and moves the next slot n/rate later. A client that fell behind
/// catches up at most one second's worth at once.
struct Pacer {
    rate: f64,
    next: Instant,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer { rate: rate.max(0.001), next: Instant::now() }
    }
    async fn take(&mut self, n: u32) {
        let now = Instant::now();
        self.next = self.next.max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
        tokio::time::sleep_until(self.next.into()).await;
        self.next += Duration::from_secs_f64(n as f64 / self.rate);
    }
}

/// The job size for a uniform `u` in [0, 1), by the weights of SIZES.
fn pick_size(mut u: f64) -> u32 {
    for (size, weight) in SIZES {
        if u < weight {
            return size;
        }
        u -= weight;
    }
    SIZES[0].0
}

/// A batch client: jobs of 1, 10, 100 or 1000 hello or no-op tasks.
pub async fn batch_client(load: Arc<Load>, rate: f64, seed: u64) {
    let ch = connect(&load.url).await;
    let mut rng = Rng::new(seed);
    let mut pacer = Pacer::new(rate);
    while load.running() {
        let size = pick_size(rng.unit());
        let (name, sha) = if rng.below(2) == 0 { ("hello", &load.modules.hello) } else { ("noop", &load.modules.noop) };
        pacer.take(size).await;
        if !load.running() {
            break;
        }
        load.submit(&ch, load.request(name, sha, size, 60_000), Kind::Batch(size)).await;
    }
}

/// A client for tasks that must not finish: ones that trap, or ones that
/// loop until their timeout; jobs of 1 to 10.
pub async fn bad_client(load: Arc<Load>, kind: Kind, rate: f64, seed: u64) {
    let ch = connect(&load.url).await;
    let mut rng = Rng::new(seed);
    let mut pacer = Pacer::new(rate);
    while load.running() {
        let size = 1 + rng.below(10) as u32;
        pacer.take(size).await;
        if !load.running() {
            break;
        }
        let req = match kind {
            Kind::TimingOut => load.request("spin", &load.modules.spin, size, SPIN_TIMEOUT_MS),
            _ => load.request("trap", &load.modules.trap, size, 60_000),
        };
        load.submit(&ch, req, kind).await;
    }
}

/// A client of the hosted SJF framework: jobs of 1 or 10 no-op tasks with a
/// random fuel estimate, so the scheduler has something to order.
pub async fn hosted_client(load: Arc<Load>, rate: f64, seed: u64) {
    let ch = connect(&load.url).await;
    let mut rng = Rng::new(seed);
    let mut pacer = Pacer::new(rate);
    while load.running() {
        let size = if rng.below(2) == 0 { 1 } else { 10 };
        pacer.take(size).await;
        if !load.running() {
            break;
        }
        let mut req = load.request("noop", &load.modules.noop, size, 60_000);
        req.framework = load.hosted.clone();
        req.estimated_fuel = Some(1 + rng.below(1_000_000) as u64);
        load.submit(&ch, req, Kind::Hosted).await;
    }
}

/// Raises the remote framework's `want` at `rate` tasks a second.
pub async fn remote_pacer(load: Arc<Load>, want: Arc<AtomicUsize>, rate: f64) {
    let mut pacer = Pacer::new(rate);
    while load.running() {
        pacer.take(10).await;
        if load.running() {
            want.fetch_add(10, Ordering::SeqCst);
        }
    }
}

/// One latency sample: when its task was submitted (s since the start) and
/// how long until its FINISHED showed on the watch (ms).
pub type Latency = (f64, f64);

/// The latency probe: one no-op task at a time, timed from Submit to its
/// FINISHED on a watch of the batch framework. Its tasks go ahead of the
/// batch queue (priority PROBE_PRIORITY), so it measures the way through
/// master, registry and agent, not the length of the queue the load's
/// 1000-task jobs make (which depends on the seed more than on the master).
/// A probe whose watch broke
/// (the master restarted) or that took longer than 30 s is counted as
/// interrupted, not as a sample; its task is checked at the end like all.
pub async fn probe(load: Arc<Load>, samples: Arc<Mutex<Vec<Latency>>>, interrupted: Arc<AtomicU64>) {
    let ch = connect(&load.url).await;
    let mut watch: Option<tonic::Streaming<v1::WatchEvent>> = None;
    while load.running() {
        if watch.is_none() {
            match op(&ch).watch(v1::WatchRequest { framework_id: "batch".into(), from: None }).await {
                Ok(s) => watch = Some(s.into_inner()),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let t0 = Instant::now();
        let mut req = load.request("noop", &load.modules.noop, 1, 60_000);
        req.priority = PROBE_PRIORITY;
        let Some(ids) = load.submit(&ch, req, Kind::Probe).await else {
            watch = None;
            continue;
        };
        let Some(w) = watch.as_mut() else { continue };
        match tokio::time::timeout(PROBE_TIMEOUT, finished(w, &ids[0])).await {
            Ok(true) => {
                let at = (t0 - load.start).as_secs_f64();
                samples.lock().unwrap().push((at, t0.elapsed().as_secs_f64() * 1000.0));
            }
            Ok(false) | Err(_) => {
                interrupted.fetch_add(1, Ordering::Relaxed);
                watch = None;
            }
        }
        tokio::time::sleep(PROBE_GAP).await;
    }
}

/// Waits for `id`'s FINISHED on `w` (a LOST before it is retried); false
/// when the stream ends.
async fn finished(w: &mut tonic::Streaming<v1::WatchEvent>, id: &str) -> bool {
    while let Ok(Some(ev)) = w.message().await {
        if let Some(v1::watch_event::Event::Task(t)) = ev.event
            && t.task_id == id
            && wasmos_proto::state_from_wire(t.state) == Some(wasmos_model::TaskState::Finished)
        {
            return true;
        }
    }
    false
}
