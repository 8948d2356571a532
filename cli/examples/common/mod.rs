//! What the fault-injection examples share (`chaos.rs`, `soak.rs`, each
//! including this file with `#[path]`): processes that can be killed,
//! stopped and restarted, Operator API helpers (a listing that walks pages),
//! a watch recorder that reconnects, a remote framework, faults, and the
//! invariant checks over what the watch saw.

// Each example uses its own part of this file.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmos_model::{Resources, TaskState};
use wasmos_proto::v1;
use wasmos_security::client::{AuthChannel as Channel, Target};

/// How many primes are below `n` (what the `primes` guest prints for `n`).
pub fn primes_below(n: u64) -> u64 {
    // A sieve: the same count as the guest's trial division, quick for any n.
    let n = n as usize;
    if n < 3 {
        return 0;
    }
    let mut composite = vec![false; n];
    let mut count = 0;
    for k in 2..n {
        if !composite[k] {
            count += 1;
            let mut m = k * k;
            while m < n {
                composite[m] = true;
                m += k;
            }
        }
    }
    count
}

pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

// ---------------------------------------------------------------- processes

/// A `wasmos` child process; killed with SIGKILL when dropped.
pub struct Proc {
    child: Child,
    bin: PathBuf,
    pub argv: Vec<String>,
    /// Where its stderr goes (appended, so restarts add to one file).
    log: Option<PathBuf>,
}

impl Proc {
    pub fn spawn(bin: &Path, argv: &[String], log: Option<&Path>) -> Proc {
        let stderr = log
            .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok())
            .map(Stdio::from)
            .unwrap_or_else(Stdio::null);
        let child = Command::new(bin)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn");
        Proc { child, bin: bin.to_path_buf(), argv: argv.to_vec(), log: log.map(Path::to_path_buf) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// `kill -9`, then the same command line again (same state or work dir).
    pub fn restart(&mut self) {
        self.kill9();
        *self = Proc::spawn(&self.bin.clone(), &self.argv.clone(), self.log.clone().as_deref());
    }

    /// Whether it has exited (reaped if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Its exit code, once it exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// Starts it again (same command line) if it exited; true if it did.
    pub fn respawn_if_exited(&mut self) -> bool {
        if !self.exited() {
            return false;
        }
        *self = Proc::spawn(&self.bin.clone(), &self.argv.clone(), self.log.clone().as_deref());
        true
    }

    /// Sends a signal by name, e.g. `-STOP`, `-CONT`.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Resident memory of a process in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// CPU time a process has used so far (user + system), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after
    // its closing parenthesis): state is the 1st, utime the 12th, stime the 13th.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    // Clock ticks of 1/100 s (USER_HZ on Linux).
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The share of the last 10 s in which every task of the machine waited for
/// I/O (`full avg10` of /proc/pressure/io), in %: high when something else
/// on the machine is writing hard, which stalls the registry's fsyncs.
pub fn io_pressure() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/io").ok()?;
    let full = text.lines().find(|l| l.starts_with("full"))?;
    full.split_whitespace().find_map(|f| f.strip_prefix("avg10="))?.parse().ok()
}

/// A small seeded generator (SplitMix64): the same seed gives the same run
/// of numbers, so a soak's faults and load mix replay.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

// ---------------------------------------------------------------- the API

/// The client config the master under test writes at its first start
/// (`--client-config`: URL, CA, admin token); set once by the example.
static TRUST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Clients read the master's client config at `path` (when first needed:
/// the master writes it as it starts).
pub fn trust(path: &Path) {
    let _ = TRUST.set(path.to_path_buf());
}

/// The client config, once the master wrote it.
pub fn client_config() -> Option<wasmos_security::client::ClientConfig> {
    TRUST.get().and_then(|p| wasmos_security::client::ClientConfig::read(p).ok().flatten())
}

fn target(url: &str) -> Target {
    let c = client_config().unwrap_or_default();
    Target { url: url.to_string(), ca_pem: c.ca_pem, identity: None, token: c.token }
}

/// A join token for any number of agents (they are restarted on their work
/// dirs, where they keep the identity they got).
pub async fn join_token(url: &str) -> String {
    let req = v1::CreateTokenRequest { name: "agents".into(), agent: true, ..Default::default() };
    op(&connect(url).await).create_token(req).await.expect("a join token").into_inner().secret
}

/// Connects once; None if the master does not answer.
pub async fn try_connect(url: &str) -> Option<Channel> {
    target(url).connect().await.ok()
}

pub async fn connect(url: &str) -> Channel {
    loop {
        if let Some(c) = try_connect(url).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn op(ch: &Channel) -> v1::operator_client::OperatorClient<Channel> {
    v1::operator_client::OperatorClient::new(ch.clone()).max_decoding_message_size(1 << 30)
}

/// Every task `req` selects, walking pages until the reply's token is empty
/// (a master that does not page answers everything with an empty token).
pub async fn list_pages(
    ch: &Channel,
    mut req: v1::ListTasksRequest,
    mut each: impl FnMut(v1::TaskSummary),
) -> Result<(), tonic::Status> {
    let mut client = op(ch);
    let mut seen_tokens = HashSet::new();
    loop {
        let reply = client.list_tasks(req.clone()).await?.into_inner();
        reply.tasks.into_iter().for_each(&mut each);
        if reply.next_page_token.is_empty() {
            return Ok(());
        }
        if !seen_tokens.insert(reply.next_page_token.clone()) {
            return Err(tonic::Status::internal(format!("page token {:?} came back twice", reply.next_page_token)));
        }
        req.page_token = reply.next_page_token;
    }
}

/// All tasks, or None when the master cannot be reached.
pub async fn list(url: &str) -> Option<Vec<v1::TaskSummary>> {
    let ch = try_connect(url).await?;
    let mut tasks = Vec::new();
    list_pages(&ch, v1::ListTasksRequest::default(), |t| tasks.push(t)).await.ok()?;
    Some(tasks)
}

/// How long until the master answers a task listing (one row asked for, so
/// the answer is quick however many tasks it holds); None: not within `timeout`.
pub async fn wait_up(url: &str, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let one = v1::ListTasksRequest { limit: 1, page_size: 1, ..Default::default() };
    while t0.elapsed() < timeout {
        if let Some(ch) = try_connect(url).await
            && op(&ch).list_tasks(one.clone()).await.is_ok()
        {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Waits until `n` agents are registered (at most `timeout`).
pub async fn wait_agents(ch: &Channel, n: usize, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        let agents = op(ch).list_agents(v1::ListAgentsRequest::default()).await;
        if agents.map(|r| r.into_inner().agents.len()).unwrap_or(0) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub fn is_terminal(state: i32) -> bool {
    wasmos_proto::state_from_wire(state).is_some_and(|s| s.is_terminal())
}

pub fn state_name(state: i32) -> String {
    wasmos_proto::state_from_wire(state).map(|s| s.to_string()).unwrap_or_else(|| format!("state {state}"))
}

// ---------------------------------------------------------------- watching

/// What the watch recorder noticed about its own connection.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Streams opened (the first, then one per reconnect).
    pub connects: AtomicU64,
    /// Times the master said the recorder fell behind (DATA_LOSS) or a
    /// resumed stream skipped sequence numbers: events were missed.
    pub gaps: AtomicU64,
    /// Master restarts the recorder resumed across from the new master's
    /// first event.
    pub restarts: AtomicU64,
}

/// Records every task event the master publishes, reconnecting across
/// restarts. After a broken stream it asks to resume after the last sequence
/// number it saw (`WatchRequest.from`; a master without resume ignores it);
/// after `master_epoch` changed (the master was restarted) it starts from
/// now, since a new process may number its events anew.
pub fn watch_all(
    url: String,
    master_epoch: Arc<AtomicU64>,
    mut on_task: impl FnMut(v1::TaskStatus) + Send + 'static,
) -> Arc<WatchStats> {
    let stats = Arc::new(WatchStats::default());
    let out = stats.clone();
    tokio::spawn(async move {
        let mut last_seq = 0u64;
        let mut epoch = master_epoch.load(Ordering::SeqCst);
        loop {
            let ch = connect(&url).await;
            // Across a master restart too, resume from the last event seen:
            // the new master's numbers come after the old one's, so it
            // answers DATA_LOSS with the oldest it holds, and the recorder
            // takes everything the new master published from there.
            let from = (last_seq > 0).then_some(last_seq);
            match op(&ch).watch(v1::WatchRequest { framework_id: String::new(), from }).await {
                Err(e) if e.code() == tonic::Code::DataLoss => {
                    resume_after_loss(&e, &mut last_seq, &mut epoch, &master_epoch, &stats)
                }
                Err(_) => {}
                Ok(s) => {
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                    let mut s = s.into_inner();
                    loop {
                        match s.message().await {
                            Ok(Some(ev)) => {
                                if ev.seq != 0 {
                                    if ev.seq <= last_seq {
                                        continue; // replayed: seen already
                                    }
                                    if from.is_some() && last_seq > 0 && ev.seq > last_seq + 1 {
                                        stats.gaps.fetch_add(1, Ordering::Relaxed);
                                    }
                                    last_seq = ev.seq;
                                }
                                if let Some(v1::watch_event::Event::Task(t)) = ev.event {
                                    on_task(t);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                if e.code() == tonic::Code::DataLoss {
                                    resume_after_loss(&e, &mut last_seq, &mut epoch, &master_epoch, &stats);
                                }
                                break;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    out
}

/// After DATA_LOSS: resume from the oldest event the master holds. A gap,
/// unless the master restarted since and holds all it published (its first
/// number after the restart): then only what the old master published after
/// the last event seen and before it died can be missing (published after
/// commit: the soak asks for those tasks by GetTask after each restart).
fn resume_after_loss(
    e: &tonic::Status,
    last_seq: &mut u64,
    epoch: &mut u64,
    master_epoch: &AtomicU64,
    stats: &WatchStats,
) {
    let now_epoch = master_epoch.load(Ordering::SeqCst);
    let restarted = now_epoch != *epoch;
    *epoch = now_epoch;
    match wasmos_proto::watch_oldest_held(e) {
        Some(oldest) if oldest > 0 => {
            let first_of_incarnation = (oldest - 1) & ((1u64 << wasmos_host::EPOCH_SHIFT) - 1) == 0;
            if restarted && first_of_incarnation {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.gaps.fetch_add(1, Ordering::Relaxed);
            }
            *last_seq = oldest - 1;
        }
        _ => {
            stats.gaps.fetch_add(1, Ordering::Relaxed);
            *last_seq = 0;
        }
    }
}

/// Every status update the watch showed, reduced to what the invariants
/// need: each UUID (a UUID twice means an update applied twice), how often
/// each task reached a terminal state and the last one. With `keep_events`,
/// the events themselves too, to print a failing task's history.
#[derive(Debug, Default)]
pub struct History {
    uuids: HashSet<u128>,
    /// Per task, by a hash of its id (compact for millions of tasks): its
    /// terminal events and the last one's state and outcome kind (wire
    /// values). Ids that ended more than once are kept by name below.
    terminal: HashMap<u64, (u32, i32, i32)>,
    /// Per task (by the same hash), the highest attempt an event named,
    /// when more than 1.
    attempts: HashMap<u64, u32>,
    repeated: HashMap<String, u32>,
    dup_uuids: Vec<(String, Vec<u8>)>,
    pub events: u64,
    pub finished: u64,
    events_kept: Option<Vec<v1::TaskStatus>>,
    /// Acknowledged tasks not yet seen ending (a superset: an id whose end
    /// came before its acknowledgement may stay; `reconcile` drops it).
    open: HashSet<String>,
    /// Ends learnt by asking (GetTask) after a master restart, for tasks
    /// whose end event the old master committed but did not get out.
    asked: HashMap<u64, (i32, i32)>,
}

/// Failures of one kind listed one by one; past this, only counted.
const MAX_LISTED: usize = 10;

fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl History {
    pub fn new(keep_events: bool) -> History {
        History { events_kept: keep_events.then(Vec::new), ..Default::default() }
    }

    pub fn record(&mut self, e: v1::TaskStatus) {
        self.events += 1;
        if !e.uuid.is_empty() {
            let mut b = [0u8; 16];
            let n = e.uuid.len().min(16);
            b[..n].copy_from_slice(&e.uuid[..n]);
            if !self.uuids.insert(u128::from_le_bytes(b)) {
                self.dup_uuids.push((e.task_id.clone(), e.uuid.clone()));
            }
        }
        let state = wasmos_proto::state_from_wire(e.state);
        if e.attempt > 1 {
            let a = self.attempts.entry(id_hash(&e.task_id)).or_default();
            *a = (*a).max(e.attempt);
        }
        if state == Some(TaskState::Finished) {
            self.finished += 1;
        }
        // Answers to an explicit reconciliation repeat a known state.
        if state.is_some_and(|s| s.is_terminal()) && e.reason != "reconciliation" {
            self.open.remove(&e.task_id);
            let end = self.terminal.entry(id_hash(&e.task_id)).or_default();
            *end = (end.0 + 1, e.state, e.outcome.as_ref().map_or(0, |o| o.kind));
            if end.0 > 1 {
                self.repeated.insert(e.task_id.clone(), end.0);
            }
        }
        if let Some(kept) = &mut self.events_kept {
            kept.push(e);
        }
    }

    /// The events themselves (with `keep_events`; else none).
    pub fn events_kept(&self) -> &[v1::TaskStatus] {
        self.events_kept.as_deref().unwrap_or_default()
    }

    /// Tasks seen reaching a terminal state.
    pub fn ended(&self) -> usize {
        self.terminal.len()
    }

    /// The last terminal state and outcome kind (wire values) seen for `id`
    /// on the watch, else learnt by asking.
    pub fn last_end(&self, id: &str) -> Option<(i32, i32)> {
        let h = id_hash(id);
        self.terminal.get(&h).map(|(_, state, outcome)| (*state, *outcome)).or_else(|| self.asked.get(&h).copied())
    }

    /// Tasks a submit acknowledged: open until their end is seen.
    pub fn acked(&mut self, ids: &[String]) {
        for id in ids {
            let h = id_hash(id);
            if !self.terminal.contains_key(&h) && !self.asked.contains_key(&h) {
                self.open.insert(id.clone());
            }
        }
    }

    /// Acknowledged tasks whose end was neither seen nor learnt.
    pub fn open(&mut self) -> Vec<String> {
        let (terminal, asked) = (&self.terminal, &self.asked);
        self.open.retain(|id| !terminal.contains_key(&id_hash(id)) && !asked.contains_key(&id_hash(id)));
        self.open.iter().cloned().collect()
    }

    /// An end learnt by GetTask (not counted as an end event: the watch may
    /// still deliver it, and then it counts once).
    pub fn learnt(&mut self, id: &str, state: i32, outcome: i32) {
        self.open.remove(id);
        self.asked.insert(id_hash(id), (state, outcome));
    }

    /// The invariants over the watch stream: no UUID twice; no task ends
    /// more often than it had attempts (`attempts(id)`: a batch task lost
    /// with attempts left is retried, LOST then its final state).
    pub fn check(&self, attempts: impl Fn(&str) -> u32) -> Vec<String> {
        let mut failures = Vec::new();
        for (task, uuid) in &self.dup_uuids {
            failures.push(format!(
                "status update {} of task {task} applied twice{}",
                hex::encode(uuid),
                self.history_of(task)
            ));
        }
        let mut repeated: Vec<_> = self.repeated.iter().collect();
        repeated.sort();
        let mut more = 0;
        for (id, n) in repeated {
            let seen = self.attempts.get(&id_hash(id)).copied().unwrap_or(1);
            let allowed = attempts(id).max(seen).max(1);
            if *n <= allowed {
                continue;
            }
            if failures.len() >= MAX_LISTED {
                more += 1;
                continue;
            }
            failures.push(format!(
                "task {id} reached a terminal state {n} times (attempts: {allowed}){}",
                self.history_of(id)
            ));
        }
        if more > 0 {
            failures.push(format!("{more} more task(s) reached a terminal state more often than they had attempts"));
        }
        failures
    }

    fn history_of(&self, id: &str) -> String {
        let Some(kept) = &self.events_kept else { return String::new() };
        let history: Vec<String> = kept
            .iter()
            .filter(|e| e.task_id == id)
            .map(|e| {
                format!(
                    "{}:{}:{}:{}:{}",
                    wasmos_proto::state_from_wire(e.state).map(|s| s.to_string()).unwrap_or_default(),
                    e.reason,
                    hex::encode(&e.uuid).get(..18).unwrap_or(""),
                    e.agent_id,
                    e.timestamp_ms % 100000
                )
            })
            .collect();
        format!(": {}", history.join(" "))
    }
}

// ---------------------------------------------------------------- a remote framework

/// A remote framework's settings, and what it shares with the test that
/// drives it. Its tasks are `remote-1`, `remote-2`, ...
#[derive(Clone)]
pub struct Remote {
    pub url: String,
    pub name: String,
    pub module_sha: String,
    pub resources: Resources,
    /// Most tasks launched on one offer.
    pub per_offer: usize,
    /// How many tasks to launch in all; may be raised while it runs.
    pub want: Arc<AtomicUsize>,
    /// Tasks launched so far (`remote-1 ..= launched`).
    pub launched: Arc<Mutex<usize>>,
    /// Tasks seen ending, with their terminal state (wire value).
    pub ended: Arc<Mutex<HashMap<String, i32>>>,
    /// Tasks whose Accept the master answered OK.
    pub accepted: Arc<Mutex<HashSet<String>>>,
    /// Accepted tasks that reconciliation later said the master does not know.
    pub unknown_after_accept: Arc<Mutex<Vec<String>>>,
    /// Calls the master refused, by message (the first few kinds).
    pub call_errors: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Ends learned only through reconciliation.
    pub reconciled: Arc<AtomicUsize>,
    /// Asks the framework to reconcile every task it has not seen end (as a
    /// framework should now and then: an update can be missed across a
    /// failover, and a launch the master refused is never heard of again).
    pub reconcile: Arc<tokio::sync::Notify>,
}

impl Remote {
    pub fn new(url: &str, name: &str, module_sha: &str, resources: &str, per_offer: usize, want: usize) -> Remote {
        Remote {
            url: url.to_string(),
            name: name.to_string(),
            module_sha: module_sha.to_string(),
            resources: Resources::parse(resources).unwrap(),
            per_offer,
            want: Arc::new(AtomicUsize::new(want)),
            launched: Arc::new(Mutex::new(0)),
            ended: Arc::new(Mutex::new(HashMap::new())),
            accepted: Arc::default(),
            unknown_after_accept: Arc::default(),
            call_errors: Arc::default(),
            reconciled: Arc::default(),
            reconcile: Arc::default(),
        }
    }

    /// Notes a refused call (a bounded number of kinds, each counted).
    fn call_failed(&self, what: &str, e: &tonic::Status) {
        let mut errors = self.call_errors.lock().unwrap();
        let key = format!("{what}: {:?}: {}", e.code(), e.message().chars().take(120).collect::<String>());
        if errors.len() < 20 || errors.contains_key(&key) {
            *errors.entry(key).or_default() += 1;
        }
    }

    /// Every task launched and not seen ending.
    fn open_tasks(&self) -> Vec<String> {
        let n = *self.launched.lock().unwrap();
        let ended = self.ended.lock().unwrap();
        (1..=n).map(|i| format!("remote-{i}")).filter(|t| !ended.contains_key(t)).collect()
    }

    pub fn launched(&self) -> usize {
        *self.launched.lock().unwrap()
    }

    pub fn ended(&self) -> usize {
        self.ended.lock().unwrap().len()
    }

    /// Subscribes (as `id` when resubscribing), launches `want` tasks,
    /// acknowledges updates; returns its framework id when told to stop or
    /// when its connection ends.
    pub async fn run(self, id: String, mut stop: tokio::sync::watch::Receiver<bool>) -> String {
        let ch = connect(&self.url).await;
        let mut client = v1::scheduler_client::SchedulerClient::new(ch);
        let info = v1::FrameworkInfo {
            framework_id: id.clone(),
            name: self.name.clone(),
            role: "remote".into(),
            failover_timeout_s: 600.0,
        };
        let mut events = match client.subscribe(v1::SubscribeRequest { framework: Some(info) }).await {
            Ok(s) => s.into_inner(),
            Err(_) => return id,
        };
        let mut fid = id;
        loop {
            // (The select only picks; what it picked is done after it, so
            // nothing of `stop`'s borrow is held across an await.)
            let ev = tokio::select! {
                _ = stop.wait_for(|s| *s) => None,
                _ = self.reconcile.notified() => Some(None),
                ev = events.message() => Some(Some(ev)),
            };
            let ev = match ev {
                None => return fid,
                Some(Some(ev)) => ev,
                Some(None) => {
                    let open = self.open_tasks();
                    if !open.is_empty() {
                        let call = v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: open });
                        if let Err(e) = client.call(v1::Call { framework_id: fid.clone(), call: Some(call) }).await {
                            self.call_failed("reconcile", &e);
                        }
                    }
                    continue;
                }
            };
            let Ok(Some(ev)) = ev else { return fid };
            match ev.event {
                Some(v1::event::Event::Subscribed(s)) => {
                    fid = s.framework_id;
                    // After a reconnect, ask explicitly about every task launched and
                    // not yet seen ending: ones the master never recorded (its
                    // accept was not acknowledged) come back as LOST.
                    let open = self.open_tasks();
                    if !open.is_empty() {
                        let call = v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: open });
                        if let Err(e) = client.call(v1::Call { framework_id: fid.clone(), call: Some(call) }).await {
                            self.call_failed("reconcile", &e);
                        }
                    }
                }
                Some(v1::event::Event::Offers(o)) => {
                    for offer in o.offers {
                        let tasks = self.tasks_for(&offer);
                        let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
                        let (what, call) = if tasks.is_empty() {
                            let filters = Some(v1::Filters { refuse_seconds: Some(1.0) });
                            (
                                "decline",
                                v1::call::Call::Decline(v1::call::Decline { offer_ids: vec![offer.offer_id], filters }),
                            )
                        } else {
                            let accept =
                                v1::call::Accept { offer_ids: vec![offer.offer_id], launch: tasks, filters: None };
                            ("accept", v1::call::Call::Accept(accept))
                        };
                        match client.call(v1::Call { framework_id: fid.clone(), call: Some(call) }).await {
                            Ok(_) => self.accepted.lock().unwrap().extend(ids),
                            Err(e) => self.call_failed(what, &e),
                        }
                    }
                }
                Some(v1::event::Event::Update(u)) => {
                    let Some(st) = u.status else { continue };
                    if is_terminal(st.state) {
                        let first = self.ended.lock().unwrap().insert(st.task_id.clone(), st.state).is_none();
                        if first && st.reason == "reconciliation" {
                            self.reconciled.fetch_add(1, Ordering::Relaxed);
                            if st.message == "the master knows no such task"
                                && self.accepted.lock().unwrap().contains(&st.task_id)
                            {
                                self.unknown_after_accept.lock().unwrap().push(st.task_id.clone());
                            }
                        }
                    }
                    if !st.uuid.is_empty() {
                        let ack = v1::call::Call::Acknowledge(v1::call::Acknowledge {
                            agent_id: st.agent_id,
                            task_id: st.task_id,
                            uuid: st.uuid,
                        });
                        let _ = client.call(v1::Call { framework_id: fid.clone(), call: Some(ack) }).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// The next tasks to launch on `offer`: as many as are wanted, fit and
    /// `per_offer` allows.
    fn tasks_for(&self, offer: &v1::Offer) -> Vec<v1::TaskSpec> {
        let mut free = wasmos_proto::resources_from_wire(offer.resources.as_ref()).unwrap_or_default();
        let want = self.want.load(Ordering::SeqCst);
        let mut n = self.launched.lock().unwrap();
        let mut tasks = Vec::new();
        while *n < want && tasks.len() < self.per_offer && free.contains(&self.resources) {
            free.sub_assign(&self.resources);
            *n += 1;
            tasks.push(v1::TaskSpec {
                task_id: format!("remote-{}", *n),
                name: "hello.wasm".into(),
                module_sha256: self.module_sha.clone(),
                resources: Some(wasmos_proto::resources_to_wire(&self.resources)),
                ..Default::default()
            });
        }
        tasks
    }
}

// ---------------------------------------------------------------- end checks

/// The registry file opens (the master stopped) and holds the state the
/// Operator API showed for each task.
pub fn check_registry(state_dir: &Path, api: &std::collections::BTreeMap<String, String>) -> Option<String> {
    match wasmos_host::registry_tasks(state_dir) {
        Ok(reg) => {
            let mismatched: Vec<_> = api.iter().filter(|(id, st)| reg.get(*id) != Some(st)).take(5).collect();
            (!mismatched.is_empty()).then(|| {
                format!(
                    "registry disagrees with the Operator API for {} task(s), e.g. {mismatched:?}",
                    mismatched.len()
                )
            })
        }
        Err(e) => Some(format!("registry does not open: {e}")),
    }
}
