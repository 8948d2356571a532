//! wasmos-agent: a node daemon. It registers its resources with the master,
//! runs launched tasks in the sandbox, and reports their status updates, each
//! with a UUID, resending them until the master acknowledges them.

mod checkpoint;
mod link;
mod modules;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use wasmos_model::{OutcomeKind, Resources, TaskId};
use wasmos_proto::v1;
use wasmos_proto::v1::agent_service_client::AgentServiceClient;
use wasmos_sandbox::{InputFile, RunRequest, Sandbox, SandboxConfig, SandboxDirSpec, TaskControl};

use link::Backoff;
use modules::Modules;

/// Default [`AgentConfig::update_batch`].
pub const DEFAULT_UPDATE_BATCH: usize = 4096;
/// How long a module download keeps being retried while the master is unreachable.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(60);
/// Default [`AgentConfig::max_backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Default [`AgentConfig::checkpoint_interval`].
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("master address {0:?} is not a URL; write e.g. http://127.0.0.1:5050")]
    BadMaster(String),
    #[error("sandbox: {0}")]
    Sandbox(#[from] wasmos_sandbox::SandboxError),
    #[error("the master refused registration: {0}")]
    Refused(String),
    #[error("cannot create work dir {0}: {1}")]
    WorkDir(PathBuf, std::io::Error),
}

/// How an agent runs. Every limit has a default.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The master's URL, e.g. `http://127.0.0.1:5050`.
    pub master: String,
    /// What this agent offers. Default: the machine's cores and memory.
    pub resources: Resources,
    /// Free-form attributes (`zone=eu`), matched by task constraints.
    pub attributes: Vec<(String, String)>,
    /// Artifacts, compiled-module cache and sandbox directories live here.
    pub work_dir: PathBuf,
    pub hostname: String,
    /// Sandbox settings (pool size, cache sizes, ...).
    pub sandbox: SandboxConfig,
    /// Most status updates sent in one Update call. Default 4096.
    pub update_batch: usize,
    /// Longest wait between reconnection attempts (exponential, capped). Default 10 s.
    pub max_backoff: Duration,
    /// Keep a checkpoint in the work dir (agent id, launched tasks,
    /// unacknowledged updates) so a restarted agent resumes: it resends the
    /// updates and reports the tasks it was running as LOST. Default on.
    pub checkpoint: bool,
    /// How long checkpoint changes gather before one commit. Tasks that start
    /// and end within it never touch the disk; a crash loses at most this
    /// much (those tasks are then declared LOST by the master and retried).
    /// Default 20 ms.
    pub checkpoint_interval: Duration,
}

impl AgentConfig {
    pub fn new(master: impl Into<String>, work_dir: PathBuf) -> AgentConfig {
        let sandbox = SandboxConfig {
            cache_dir: Some(work_dir.join("cache")),
            sandbox_root: work_dir.join("sandboxes"),
            ..SandboxConfig::default()
        };
        AgentConfig {
            master: master.into(),
            resources: default_resources(),
            attributes: Vec::new(),
            hostname: hostname(),
            work_dir,
            sandbox,
            update_batch: DEFAULT_UPDATE_BATCH,
            max_backoff: DEFAULT_MAX_BACKOFF,
            checkpoint: true,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The machine's cores and physical memory.
pub fn default_resources() -> Resources {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(1 << 30);
    Resources::parse(&format!("cpus:{cores};mem:{mem}")).unwrap_or_default()
}

/// Per-process generator of status update UUIDs (random-seeded counter).
struct Uuids {
    seed: u64,
    next: AtomicU64,
}

impl Uuids {
    fn new() -> Uuids {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let seed = (t as u64) ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        Uuids { seed, next: AtomicU64::new(1) }
    }
    fn make(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.seed.to_le_bytes());
        v.extend_from_slice(&n.to_le_bytes());
        v
    }
}

struct Shared {
    cfg: AgentConfig,
    sandbox: Sandbox,
    channel: Channel,
    agent_id: Mutex<String>,
    uuids: Uuids,
    updates: mpsc::UnboundedSender<v1::TaskStatus>,
    /// Tasks running (or paused) here.
    live: Mutex<HashMap<String, Live>>,
    /// Tasks with status updates not yet acknowledged (count per task): the
    /// master must not give these up as lost when we reregister.
    unacked: Mutex<HashMap<String, usize>>,
    modules: Modules,
    checkpoint: Option<checkpoint::Checkpoint>,
}

struct Live {
    control: TaskControl,
    framework: String,
    paused: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Shared {
    fn agent_id(&self) -> String {
        self.agent_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn send_status(&self, task: &str, fw: &str, state: v1::TaskState, message: String, outcome: Option<v1::Outcome>) {
        self.send_status_with_reason(task, fw, state, "", message, outcome);
    }

    fn send_status_with_reason(
        &self,
        task: &str,
        fw: &str,
        state: v1::TaskState,
        reason: &str,
        message: String,
        outcome: Option<v1::Outcome>,
    ) {
        *self.unacked.lock().unwrap_or_else(|e| e.into_inner()).entry(task.to_string()).or_default() += 1;
        let st = v1::TaskStatus {
            task_id: task.to_string(),
            framework_id: fw.to_string(),
            agent_id: self.agent_id(),
            state: state as i32,
            uuid: self.uuids.make(),
            timestamp_ms: now_ms(),
            reason: reason.to_string(),
            message,
            outcome,
        };
        if let Some(cp) = &self.checkpoint {
            cp.update(&st);
        }
        let _ = self.updates.send(st);
    }

    fn forget_live(&self, task: &str) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(task);
    }

    /// What this agent reports when it (re)registers: the tasks it runs, and
    /// the ones whose updates the master has not acknowledged yet (so the
    /// master waits for those updates instead of giving the tasks up).
    fn known_tasks(&self) -> Vec<v1::TaskStatus> {
        let agent_id = self.agent_id();
        let mut out: Vec<v1::TaskStatus> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, l)| v1::TaskStatus {
                task_id: id.clone(),
                framework_id: l.framework.clone(),
                agent_id: agent_id.clone(),
                state: if l.paused { v1::TaskState::TaskPaused } else { v1::TaskState::TaskRunning } as i32,
                ..Default::default()
            })
            .collect();
        let seen: HashSet<String> = out.iter().map(|t| t.task_id.clone()).collect();
        for id in self.unacked.lock().unwrap_or_else(|e| e.into_inner()).keys() {
            if !seen.contains(id) {
                out.push(v1::TaskStatus {
                    task_id: id.clone(),
                    agent_id: agent_id.clone(),
                    state: v1::TaskState::TaskRunning as i32,
                    ..Default::default()
                });
            }
        }
        out
    }

    fn info(&self) -> v1::AgentInfo {
        v1::AgentInfo {
            hostname: self.cfg.hostname.clone(),
            resources: Some(wasmos_proto::resources_to_wire(&self.cfg.resources)),
            attributes: self
                .cfg
                .attributes
                .iter()
                .map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() })
                .collect(),
            wasmtime_version: Sandbox::wasmtime_version().to_string(),
            target_triple: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn client(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
            .max_decoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
    }
}

fn outcome_state(kind: OutcomeKind) -> v1::TaskState {
    match kind {
        OutcomeKind::Finished => v1::TaskState::TaskFinished,
        OutcomeKind::Failed | OutcomeKind::OutOfFuel | OutcomeKind::OutOfMemory | OutcomeKind::TimedOut => {
            v1::TaskState::TaskFailed
        }
        OutcomeKind::Killed => v1::TaskState::TaskKilled,
        OutcomeKind::Error => v1::TaskState::TaskError,
    }
}

async fn run_task(shared: Arc<Shared>, fw: String, spec: v1::TaskSpec, control: TaskControl) {
    let id = spec.task_id.clone();
    let prepared = match shared.modules.get(&spec.module_sha256).await {
        Ok(p) => p,
        Err(msg) => {
            let o = wasmos_model::Outcome::error(msg.clone());
            // Reported before it leaves `live`, so a registration in between
            // still lists the task.
            shared.send_status(&id, &fw, v1::TaskState::TaskError, msg, Some(wasmos_proto::outcome_to_wire(&o)));
            shared.forget_live(&id);
            return;
        }
    };
    shared.send_status(&id, &fw, v1::TaskState::TaskRunning, String::new(), None);
    let name = if spec.name.is_empty() { id.clone() } else { spec.name.clone() };
    let req = RunRequest {
        name: id.clone(),
        args: std::iter::once(name).chain(spec.args.iter().cloned()).collect(),
        env: spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        limits: wasmos_proto::limits_from_wire(spec.limits.as_ref()),
        sandbox_dir: SandboxDirSpec {
            enabled: spec.sandbox_dir,
            files: spec
                .files
                .iter()
                .map(|f| InputFile { path: f.path.clone(), contents: f.contents.clone() })
                .collect(),
            ..Default::default()
        },
        input: spec.input.clone(),
        context: wasmos_sandbox::TaskContext { task_id: id.clone(), attempt: 1, framework: fw.clone() },
        ..Default::default()
    };
    let outcome = shared.sandbox.run(&prepared, req, &control).await;
    let state = outcome_state(outcome.kind);
    let msg = outcome.message.clone().unwrap_or_default();
    shared.send_status(&id, &fw, state, msg, Some(wasmos_proto::outcome_to_wire(&outcome)));
    shared.forget_live(&id);
}

fn handle_command(shared: &Arc<Shared>, cmd: v1::AgentCommand) {
    use v1::agent_command::Command;
    // Marks a live task paused or not and returns its control and framework.
    let with_live = |id: &str, paused: Option<bool>| {
        let mut live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get_mut(id).map(|l| {
            if let Some(p) = paused {
                l.paused = p;
            }
            (l.control.clone(), l.framework.clone())
        })
    };
    match cmd.command {
        Some(Command::Launch(l)) => {
            for spec in l.tasks {
                if TaskId::new(spec.task_id.clone()).is_err() {
                    continue;
                }
                let control = TaskControl::new();
                {
                    let mut live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
                    if live.contains_key(&spec.task_id) {
                        // A launch resent across a failover: it already runs here.
                        continue;
                    }
                    live.insert(
                        spec.task_id.clone(),
                        Live { control: control.clone(), framework: l.framework_id.clone(), paused: false },
                    );
                }
                if let Some(cp) = &shared.checkpoint {
                    cp.launched(&spec.task_id, &l.framework_id);
                }
                tokio::spawn(run_task(shared.clone(), l.framework_id.clone(), spec, control));
            }
        }
        Some(Command::Kill(k)) => {
            if let Some((c, _)) = with_live(&k.task_id, None) {
                c.kill();
            }
        }
        Some(Command::Pause(p)) => {
            if let Some((c, fw)) = with_live(&p.task_id, Some(true)) {
                c.pause();
                shared.send_status(&p.task_id, &fw, v1::TaskState::TaskPaused, "paused".into(), None);
            }
        }
        Some(Command::Resume(r)) => {
            if let Some((c, fw)) = with_live(&r.task_id, Some(false)) {
                c.resume();
                shared.send_status(&r.task_id, &fw, v1::TaskState::TaskRunning, "resumed".into(), None);
            }
        }
        None => {}
    }
}

/// Sends status updates in batches; keeps each until the master acknowledges it.
async fn updater(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<v1::TaskStatus>) {
    let mut pending: Vec<v1::TaskStatus> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), shared.cfg.max_backoff);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(u) => pending.push(u),
                None => return,
            }
            // Let a task that just reported RUNNING finish its (often tiny)
            // run first, so RUNNING and FINISHED travel in one call.
            tokio::task::yield_now().await;
        }
        while pending.len() < shared.cfg.update_batch {
            match rx.try_recv() {
                Ok(u) => pending.push(u),
                Err(_) => break,
            }
        }
        let batch: Vec<v1::TaskStatus> = pending.iter().take(shared.cfg.update_batch).cloned().collect();
        let n = batch.len();
        let mut client = shared.client();
        let result = client.update(v1::StatusUpdates { agent_id: shared.agent_id(), updates: batch }).await;
        match result {
            Ok(acks) => {
                let acked: HashSet<Vec<u8>> = acks.into_inner().uuids.into_iter().collect();
                let mut i = 0;
                let mut done = Vec::new();
                let mut ended = Vec::new();
                let mut uuids = Vec::new();
                pending.retain(|u| {
                    i += 1;
                    let ack = i <= n && acked.contains(&u.uuid);
                    if ack {
                        done.push(u.task_id.clone());
                        uuids.push(u.uuid.clone());
                        if wasmos_proto::state_from_wire(u.state).is_some_and(|s| s.is_terminal()) {
                            ended.push(u.task_id.clone());
                        }
                    }
                    !ack
                });
                if let Some(cp) = &shared.checkpoint {
                    // A task launched again since (a retry here) keeps its
                    // entry; the check and the change happen under the live
                    // lock, which a launch takes before recording itself.
                    let live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
                    ended.retain(|t| !live.contains_key(t));
                    cp.acked(&uuids, &ended);
                }
                let mut un = shared.unacked.lock().unwrap_or_else(|e| e.into_inner());
                for t in done {
                    if let Some(c) = un.get_mut(&t) {
                        *c -= 1;
                        if *c == 0 {
                            un.remove(&t);
                        }
                    }
                }
                backoff.reset();
            }
            Err(_) => {
                // The master cannot be reached (edge agents, failover): keep
                // everything (it is in the checkpoint) and retry with capped
                // exponential backoff.
                backoff.wait().await;
            }
        }
    }
}

async fn connect(master: &str, max_backoff: Duration) -> Result<Channel, AgentError> {
    let endpoint = Endpoint::from_shared(master.to_string())
        .map_err(|_| AgentError::BadMaster(master.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut backoff = Backoff::new(Duration::from_millis(100), max_backoff);
    loop {
        match endpoint.connect().await {
            Ok(c) => return Ok(c),
            Err(_) => backoff.wait().await,
        }
    }
}

/// Registers (or reregisters) and returns the heartbeat interval.
async fn register(shared: &Shared) -> Result<Duration, tonic::Status> {
    let resp = shared
        .client()
        .register(v1::RegisterAgentRequest {
            info: Some(shared.info()),
            agent_id: shared.agent_id(),
            running_tasks: shared.known_tasks(),
        })
        .await?
        .into_inner();
    if let Some(cp) = &shared.checkpoint {
        cp.set_agent_id(&resp.agent_id);
    }
    *shared.agent_id.lock().unwrap_or_else(|e| e.into_inner()) = resp.agent_id;
    Ok(Duration::from_millis(resp.heartbeat_interval_ms.max(100)))
}

/// `pub async fn run(config, shutdown)`: a whole agent, until `shutdown`.
/// Returns the agent id it registered under.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()> + Send) -> Result<String, AgentError> {
    std::fs::create_dir_all(&cfg.work_dir).map_err(|e| AgentError::WorkDir(cfg.work_dir.clone(), e))?;
    let sandbox = Sandbox::new(cfg.sandbox.clone())?;
    let channel = connect(&cfg.master, cfg.max_backoff).await?;
    let (checkpoint, restored) = if cfg.checkpoint {
        match checkpoint::Checkpoint::open(&cfg.work_dir, cfg.checkpoint_interval) {
            Ok((c, r)) => (Some(c), r),
            Err(e) => return Err(AgentError::WorkDir(cfg.work_dir.clone(), std::io::Error::other(e))),
        }
    } else {
        (None, checkpoint::Restored::default())
    };
    let modules = Modules::new(&cfg.work_dir, channel.clone(), sandbox.clone(), cfg.max_backoff);
    let (utx, urx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        cfg,
        sandbox,
        channel,
        agent_id: Mutex::new(restored.agent_id.clone()),
        uuids: Uuids::new(),
        updates: utx,
        live: Mutex::new(HashMap::new()),
        unacked: Mutex::new(HashMap::new()),
        modules,
        checkpoint,
    });
    // Resume from the checkpoint: resend what was not acknowledged; tasks that
    // were running when the previous process ended are LOST.
    let mut ended: HashSet<String> = HashSet::new();
    for u in restored.updates {
        if wasmos_proto::state_from_wire(u.state).is_some_and(|s| s.is_terminal()) {
            ended.insert(u.task_id.clone());
        }
        *shared.unacked.lock().unwrap_or_else(|e| e.into_inner()).entry(u.task_id.clone()).or_default() += 1;
        let _ = shared.updates.send(u);
    }
    for (task, fw) in restored.tasks {
        if !ended.contains(&task) {
            shared.send_status_with_reason(
                &task,
                &fw,
                v1::TaskState::TaskLost,
                "agent_restarted",
                "the agent restarted while the task ran".into(),
                None,
            );
        }
    }
    let heartbeat = match register(&shared).await {
        Ok(h) => h,
        Err(s) if s.code() == tonic::Code::InvalidArgument => return Err(AgentError::Refused(s.message().to_string())),
        Err(_) => Duration::from_secs(1),
    };
    let updater = tokio::spawn(updater(shared.clone(), urx));
    let hb_shared = shared.clone();
    let heartbeats = tokio::spawn(async move {
        let mut t = tokio::time::interval(heartbeat);
        loop {
            t.tick().await;
            let id = hb_shared.agent_id();
            let _ = hb_shared.client().heartbeat(v1::HeartbeatRequest { agent_id: id }).await;
        }
    });
    let cmd_shared = shared.clone();
    let commands = async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), cmd_shared.cfg.max_backoff);
        loop {
            let stream = cmd_shared.client().commands(v1::AgentStreamRequest { agent_id: cmd_shared.agent_id() }).await;
            match stream {
                Ok(s) => {
                    backoff.reset();
                    let mut s = s.into_inner();
                    while let Ok(Some(cmd)) = s.message().await {
                        handle_command(&cmd_shared, cmd);
                    }
                }
                Err(st) if st.code() == tonic::Code::NotFound => {
                    // The master forgot us (it restarted, or timed us out).
                    let _ = register(&cmd_shared).await;
                }
                Err(_) => {}
            }
            backoff.wait().await;
            let _ = register(&cmd_shared).await;
        }
    };
    tokio::select! {
        _ = commands => {}
        _ = shutdown => {}
    }
    heartbeats.abort();
    updater.abort();
    let id = shared.agent_id();
    // Close the checkpoint first: the kills below are the agent's doing, not
    // the tasks' fate; after a restart these tasks are reported LOST (and
    // retried), not KILLED.
    if let Some(cp) = &shared.checkpoint {
        cp.close();
    }
    for l in shared.live.lock().unwrap_or_else(|e| e.into_inner()).values() {
        l.control.kill();
    }
    Ok(id)
}
