//! wasmos-agent: a node daemon. It registers its resources with the master,
//! runs launched tasks in the sandbox, and reports their status updates, each
//! with a UUID, resending them until the master acknowledges them.
//!
//! Its parts: `link` (the connection, registration, heartbeats, the command
//! stream), `executor` (tasks in the sandbox), `updates` (the one owner of
//! unacknowledged updates), `modules` (fetched and compiled once per hash),
//! `checkpoint` (what survives a restart). This file wires them together.

mod checkpoint;
mod executor;
mod health;
mod identity;
mod link;
mod migrate;
mod modules;
mod updates;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmos_model::Resources;
use wasmos_proto::v1;
use wasmos_sandbox::{Sandbox, SandboxConfig};

use checkpoint::Checkpoint;
use executor::Executor;
use link::Link;
use modules::Modules;
use updates::Updates;

/// Default [`AgentConfig::update_batch`].
pub const DEFAULT_UPDATE_BATCH: usize = 4096;
/// How long a module download keeps being retried while the master is unreachable.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(60);
/// Default [`AgentConfig::max_backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Default [`AgentConfig::max_spool_bytes`].
pub const DEFAULT_MAX_SPOOL_BYTES: u64 = 64 << 20;
/// Default [`AgentConfig::checkpoint_interval`].
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadMaster(String),
    #[error("sandbox: {0}")]
    Sandbox(#[from] wasmos_sandbox::SandboxError),
    #[error("the master refused this agent: {0}")]
    Refused(String),
    #[error("cannot join: {0}")]
    Join(String),
    #[error("cannot create work dir {0}: {1}")]
    WorkDir(PathBuf, std::io::Error),
}

/// How an agent runs. Every limit has a default.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The master's URL, e.g. `https://127.0.0.1:5050` (`http://` for an
    /// `--insecure` master).
    pub master: String,
    /// The CA certificate (PEM) the master's certificate must chain to;
    /// without it, the join token's fingerprint picks the CA the master
    /// presents.
    pub ca_pem: Option<String>,
    /// The join token (`wasmos token create NAME --agent`), used once: the
    /// identity it gets is kept in `work_dir/identity`.
    pub join_token: Option<String>,
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
    /// Most bytes of undelivered status updates kept (in memory and in the
    /// checkpoint) while the master cannot be reached. Past it the oldest
    /// non-final updates are dropped, then the oldest of any kind; every drop
    /// is counted and reported to the master when the agent is back.
    /// Default 64 MiB.
    pub max_spool_bytes: u64,
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
            ca_pem: None,
            join_token: None,
            resources: default_resources(),
            attributes: Vec::new(),
            hostname: hostname(),
            work_dir,
            sandbox,
            update_batch: DEFAULT_UPDATE_BATCH,
            max_backoff: DEFAULT_MAX_BACKOFF,
            checkpoint: true,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            max_spool_bytes: DEFAULT_MAX_SPOOL_BYTES,
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
        // Whole MiB, so that it reads as such (`mem:23.5GiB`, not KiB).
        .map(|kib| kib / 1024 * (1 << 20))
        .unwrap_or(1 << 30);
    Resources::parse(&format!("cpus:{cores};mem:{mem}")).unwrap_or_default()
}

/// One running agent; its tasks and loops share it.
struct Agent {
    cfg: AgentConfig,
    link: Link,
    modules: Modules,
    executor: Executor,
    updates: Updates,
    /// The launched tasks and the agent id are recorded here; `updates`
    /// records the updates through its own handle.
    checkpoint: Option<Checkpoint>,
}

impl Agent {
    /// Reports a task's new state to the master.
    /// Reports an update of `task`, with the attempt of its run here. Takes
    /// the executor's table lock: never call it holding that lock.
    fn report(&self, task: &str, fw: &str, state: v1::TaskState, message: String, outcome: Option<v1::Outcome>) {
        self.updates.report(v1::TaskStatus {
            task_id: task.to_string(),
            framework_id: fw.to_string(),
            agent_id: self.link.id(),
            state: state as i32,
            message,
            outcome,
            attempt: self.executor.attempt_of(task),
            ..Default::default()
        });
    }

    /// Resumes from the checkpoint: resends what was not acknowledged, and
    /// reports the tasks that were running when the previous process ended
    /// as LOST.
    fn resume(&self, restored: checkpoint::Restored) {
        let ended: HashSet<String> = restored
            .updates
            .iter()
            .filter(|u| wasmos_proto::state_from_wire(u.state).is_some_and(|s| s.is_terminal()))
            .map(|u| u.task_id.clone())
            .collect();
        self.updates.resend(restored.updates);
        for (task, fw) in restored.tasks {
            if !ended.contains(&task) {
                self.updates.report(v1::TaskStatus {
                    task_id: task,
                    framework_id: fw,
                    agent_id: self.link.id(),
                    state: v1::TaskState::TaskLost as i32,
                    reason: "agent_restarted".into(),
                    message: "the agent restarted while the task ran".into(),
                    ..Default::default()
                });
            }
        }
    }
}

/// Stops the tasks launched with `--on-disconnect stop-after DUR` once the
/// agent has been cut off from the master for DUR.
async fn disconnect_guard(agent: Arc<Agent>) {
    let mut t = tokio::time::interval(Duration::from_millis(250));
    loop {
        t.tick().await;
        let cut = agent.link.cut_off_for();
        if cut.is_zero() {
            continue;
        }
        let n = agent.executor.stop_cut_off(cut);
        if n > 0 {
            eprintln!(
                "wasmos agent: cut off from the master for {cut:?}: stopped {n} task(s) (--on-disconnect stop-after)"
            );
        }
    }
}

/// `pub async fn run(config, shutdown)`: a whole agent, until `shutdown`.
/// Returns the agent id it registered under.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()> + Send) -> Result<String, AgentError> {
    std::fs::create_dir_all(&cfg.work_dir).map_err(|e| AgentError::WorkDir(cfg.work_dir.clone(), e))?;
    let mut cfg = cfg;
    match wasmos_sandbox::ensure_map_count(&cfg.sandbox) {
        Ok(Some((before, after))) => eprintln!(
            "wasmos agent: raised vm.max_map_count from {before} to {after} for {} task slots",
            cfg.sandbox.max_concurrent_tasks as u64 + cfg.sandbox.max_metered_tasks as u64
        ),
        Ok(None) => {}
        // Not ours to raise (not root, a read-only /proc): as many slots as
        // the kernel's limit allows, and say how to get the rest.
        Err(e) => {
            let fit = wasmos_sandbox::slots_within_map_count(&cfg.sandbox);
            if fit == 0 {
                return Err(e.into());
            }
            eprintln!("wasmos agent: {e}; running with {fit} task slots instead");
            cfg.sandbox.max_concurrent_tasks = fit;
        }
    }
    let sandbox = Sandbox::new(cfg.sandbox.clone())?;
    let identity = identity::obtain(&cfg).await?;
    let target = identity.target(&cfg.master, cfg.ca_pem.clone());
    let channel: link::SharedChannel = Arc::new(std::sync::RwLock::new(Link::connect(&target, cfg.max_backoff).await?));
    let (checkpoint, restored) = if cfg.checkpoint {
        match Checkpoint::open(&cfg.work_dir, cfg.checkpoint_interval) {
            Ok((c, r)) => (Some(c), r),
            Err(e) => return Err(AgentError::WorkDir(cfg.work_dir.clone(), std::io::Error::other(e))),
        }
    } else {
        (None, checkpoint::Restored::default())
    };
    let agent = Arc::new(Agent {
        link: Link::new(channel.clone(), identity.agent_id.clone()),
        modules: Modules::new(&cfg.work_dir, channel, sandbox.clone(), cfg.max_backoff),
        executor: Executor::new(sandbox),
        updates: Updates::new(checkpoint.clone(), cfg.max_spool_bytes),
        checkpoint,
        cfg,
    });
    agent.resume(restored);
    let heartbeat = match link::register(&agent).await {
        Ok(h) => h,
        Err(s) if matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::Unauthenticated) => {
            return Err(AgentError::Refused(s.message().to_string()));
        }
        Err(_) => Duration::from_secs(1),
    };
    let updater = tokio::spawn(updates::send(agent.clone()));
    let renewer = tokio::spawn(identity::renew(agent.clone(), identity));
    agent.link.set_heartbeat(heartbeat);
    let heartbeats = tokio::spawn(link::heartbeats(agent.clone(), heartbeat));
    let guard = tokio::spawn(disconnect_guard(agent.clone()));
    let refused = tokio::select! {
        why = link::commands(agent.clone()) => Some(why),
        _ = shutdown => None,
    };
    heartbeats.abort();
    guard.abort();
    updater.abort();
    renewer.abort();
    let id = agent.link.id();
    // Close the checkpoint first: the kills below are the agent's doing, not
    // the tasks' fate; after a restart these tasks are reported LOST (and
    // retried), not KILLED.
    if let Some(cp) = &agent.checkpoint {
        cp.close();
    }
    agent.executor.kill_all();
    match refused {
        Some(why) => Err(AgentError::Refused(why)),
        None => Ok(id),
    }
}
