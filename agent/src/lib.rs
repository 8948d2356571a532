//! wasmos-agent: a node daemon. It registers its resources with the master,
//! runs launched tasks in the sandbox, and reports their status updates, each
//! with a UUID, resending them until the master acknowledges them.

//!
//! Its parts: `link` (the connection, registration, heartbeats, the command
//! stream), `executor` (tasks in the sandbox), `modules` (fetched and
//! compiled once per hash), `checkpoint` (what survives a restart). This
//! file wires them together.

mod checkpoint;
mod executor;
mod link;
mod modules;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use wasmos_model::Resources;
use wasmos_proto::v1;
use wasmos_sandbox::{Sandbox, SandboxConfig};

use checkpoint::Checkpoint;
use executor::Executor;
use link::{Backoff, Link};
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

/// One running agent; its tasks and loops share it.
struct Agent {
    cfg: AgentConfig,
    link: Link,
    modules: Modules,
    executor: Executor,
    uuids: Uuids,
    updates: mpsc::UnboundedSender<v1::TaskStatus>,
    /// Tasks with status updates not yet acknowledged (count per task): the
    /// master must not give these up as lost when we reregister.
    unacked: Mutex<HashMap<String, usize>>,
    checkpoint: Option<Checkpoint>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Agent {
    /// Reports a task's new state to the master.
    fn report(&self, task: &str, fw: &str, state: v1::TaskState, message: String, outcome: Option<v1::Outcome>) {
        self.report_with_reason(task, fw, state, "", message, outcome);
    }

    fn report_with_reason(
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
            agent_id: self.link.id(),
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

    /// What this agent reports when it (re)registers: the tasks it runs, and
    /// the ones whose updates the master has not acknowledged yet (so the
    /// master waits for those updates instead of giving the tasks up).
    fn known_tasks(&self, agent_id: &str) -> Vec<v1::TaskStatus> {
        let mut out = self.executor.live_statuses(agent_id);
        let seen: HashSet<String> = out.iter().map(|t| t.task_id.clone()).collect();
        for id in self.unacked.lock().unwrap_or_else(|e| e.into_inner()).keys() {
            if !seen.contains(id) {
                out.push(v1::TaskStatus {
                    task_id: id.clone(),
                    agent_id: agent_id.to_string(),
                    state: v1::TaskState::TaskRunning as i32,
                    ..Default::default()
                });
            }
        }
        out
    }
}

/// Sends status updates in batches; keeps each until the master acknowledges it.
async fn updater(agent: Arc<Agent>, mut rx: mpsc::UnboundedReceiver<v1::TaskStatus>) {
    let mut pending: Vec<v1::TaskStatus> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), agent.cfg.max_backoff);
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
        while pending.len() < agent.cfg.update_batch {
            match rx.try_recv() {
                Ok(u) => pending.push(u),
                Err(_) => break,
            }
        }
        let batch: Vec<v1::TaskStatus> = pending.iter().take(agent.cfg.update_batch).cloned().collect();
        let n = batch.len();
        let mut client = agent.link.client();
        let result = client.update(v1::StatusUpdates { agent_id: agent.link.id(), updates: batch }).await;
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
                if let Some(cp) = &agent.checkpoint {
                    // A task launched again since (a retry here) keeps its entry.
                    agent.executor.unless_live(ended, |ended| cp.acked(&uuids, ended));
                }
                let mut un = agent.unacked.lock().unwrap_or_else(|e| e.into_inner());
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

/// `pub async fn run(config, shutdown)`: a whole agent, until `shutdown`.
/// Returns the agent id it registered under.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()> + Send) -> Result<String, AgentError> {
    std::fs::create_dir_all(&cfg.work_dir).map_err(|e| AgentError::WorkDir(cfg.work_dir.clone(), e))?;
    let sandbox = Sandbox::new(cfg.sandbox.clone())?;
    let channel = Link::connect(&cfg.master, cfg.max_backoff).await?;
    let (checkpoint, restored) = if cfg.checkpoint {
        match Checkpoint::open(&cfg.work_dir, cfg.checkpoint_interval) {
            Ok((c, r)) => (Some(c), r),
            Err(e) => return Err(AgentError::WorkDir(cfg.work_dir.clone(), std::io::Error::other(e))),
        }
    } else {
        (None, checkpoint::Restored::default())
    };
    let (utx, urx) = mpsc::unbounded_channel();
    let agent = Arc::new(Agent {
        link: Link::new(channel.clone(), restored.agent_id.clone()),
        modules: Modules::new(&cfg.work_dir, channel, sandbox.clone(), cfg.max_backoff),
        executor: Executor::new(sandbox),
        uuids: Uuids::new(),
        updates: utx,
        unacked: Mutex::new(HashMap::new()),
        checkpoint,
        cfg,
    });
    // Resume from the checkpoint: resend what was not acknowledged; tasks that
    // were running when the previous process ended are LOST.
    let mut ended: HashSet<String> = HashSet::new();
    for u in restored.updates {
        if wasmos_proto::state_from_wire(u.state).is_some_and(|s| s.is_terminal()) {
            ended.insert(u.task_id.clone());
        }
        *agent.unacked.lock().unwrap_or_else(|e| e.into_inner()).entry(u.task_id.clone()).or_default() += 1;
        let _ = agent.updates.send(u);
    }
    for (task, fw) in restored.tasks {
        if !ended.contains(&task) {
            agent.report_with_reason(
                &task,
                &fw,
                v1::TaskState::TaskLost,
                "agent_restarted",
                "the agent restarted while the task ran".into(),
                None,
            );
        }
    }
    let heartbeat = match link::register(&agent).await {
        Ok(h) => h,
        Err(s) if s.code() == tonic::Code::InvalidArgument => return Err(AgentError::Refused(s.message().to_string())),
        Err(_) => Duration::from_secs(1),
    };
    let updater = tokio::spawn(updater(agent.clone(), urx));
    let heartbeats = tokio::spawn(link::heartbeats(agent.clone(), heartbeat));
    tokio::select! {
        _ = link::commands(agent.clone()) => {}
        _ = shutdown => {}
    }
    heartbeats.abort();
    updater.abort();
    let id = agent.link.id();
    // Close the checkpoint first: the kills below are the agent's doing, not
    // the tasks' fate; after a restart these tasks are reported LOST (and
    // retried), not KILLED.
    if let Some(cp) = &agent.checkpoint {
        cp.close();
    }
    agent.executor.kill_all();
    Ok(id)
}
