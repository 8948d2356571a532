//! `wasmos master`, `wasmos agent` and `wasmos dev` (a master plus agents in
//! one process, over the same gRPC protocol on loopback).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use wasmos_host::MasterConfig;
use wasmos_model::{Resources, Scalar};

/// One `k=v` of `--attributes k=v,...` (clap splits at the commas).
fn attribute(p: &str) -> Result<(String, String), String> {
    match p.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("attribute {p:?} is not k=v; write e.g. --attributes zone=eu,rack=r1")),
    }
}

pub(crate) fn default_state_dir(what: &str) -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("wasmos")
        .join(what)
}

/// Master settings shared by `master` and `dev`.
#[derive(clap::Args, Debug, Clone)]
pub struct MasterOpts {
    /// Address the gRPC API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5050")]
    pub listen: SocketAddr,
    /// Where the master keeps its files (artifacts) [default: ~/.local/state/wasmos/master]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often agents heartbeat.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = crate::args::duration)]
    pub agent_heartbeat: Duration,
    /// Silence after which an agent is removed and its tasks are LOST.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = crate::args::duration)]
    pub agent_timeout: Duration,
    /// After a master restart, how long agents from the registry have to
    /// reregister before their tasks are LOST.
    #[arg(long, value_name = "DUR", default_value = "2m", value_parser = crate::args::duration)]
    pub agent_reregister_timeout: Duration,
    /// Most hosted (Wasm) schedulers at once.
    #[arg(long, value_name = "N", default_value_t = wasmos_host::DEFAULT_MAX_HOSTED_FRAMEWORKS)]
    pub max_hosted_frameworks: u32,
    /// Fuel each hosted scheduler callback may use.
    #[arg(long, value_name = "N", default_value_t = wasmos_sandbox::DEFAULT_CALLBACK_FUEL)]
    pub scheduler_fuel: u64,
    /// Memory (plus tables) a hosted scheduler may hold.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::args::size)]
    pub scheduler_mem: u64,
    /// Wall-clock limit of one hosted scheduler callback.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = crate::args::duration)]
    pub scheduler_timeout: Duration,
    /// Least time between allocation cycles (events in between are batched).
    #[arg(long, value_name = "DUR", default_value = "0ms", value_parser = crate::args::duration)]
    pub allocation_interval: Duration,
    /// Where the registry lives: `file` (state-dir/registry.redb, survives
    /// restarts) or `in-memory` (faster; a restart forgets everything).
    #[arg(long, value_name = "KIND", default_value = "file", value_parser = ["file", "in-memory"])]
    pub registry: String,
    /// Largest module the artifact store accepts.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::args::size)]
    pub max_module_size: u64,
    /// Ended tasks kept in memory (their framework done with them); older
    /// ones are answered from the registry.
    #[arg(long, value_name = "N", default_value_t = wasmos_host::DEFAULT_MAX_COMPLETED_TASKS)]
    pub max_completed_tasks: usize,
    /// Most memory the ended tasks kept in memory may hold (their output
    /// tails count); past it the oldest leave first.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = crate::args::size)]
    pub completed_task_memory: u64,
    /// Longest an ended task stays in memory.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = crate::args::duration)]
    pub completed_task_ttl: Duration,
    /// Registry pages cached in memory.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::args::size)]
    pub registry_cache: u64,
    /// How long the registry keeps an ended task (then it is deleted in the
    /// background).
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = crate::args::duration)]
    pub task_history: Duration,
    /// Modules no queued or running task, open submission or hosted
    /// framework used for this long are deleted from the artifact store.
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = crate::args::duration)]
    pub artifact_ttl: Duration,
    /// Watch events kept so a watcher that falls behind or reconnects can
    /// resume after the last one it saw (`Watch(from)`).
    #[arg(long, value_name = "N", default_value_t = wasmos_host::DEFAULT_WATCH_HISTORY)]
    pub watch_history: usize,
    /// Most memory the kept watch events may hold (output tails count).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::args::size)]
    pub watch_history_bytes: u64,
    /// Most disk the cache of modules compiled for edge agents (one artifact
    /// per module and engine profile, in STATE_DIR/compiled) may hold; past
    /// it the least recently used leave first.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = crate::args::size)]
    pub compiled_cache_bytes: u64,
    /// Modules compiled for edge agents at once (each compile takes a core;
    /// the same module and profile asked twice compiles once).
    #[arg(long, value_name = "N", default_value_t = wasmos_host::DEFAULT_COMPILE_WORKERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub compile_workers: u32,
    /// Write the URL the master serves on to PATH once it listens (for
    /// scripts; with `--listen 127.0.0.1:0` it names the port picked).
    ///
    /// Written atomically (a temp file renamed into place), so a reader sees
    /// the whole URL or no file; it is left in place when the master stops.
    #[arg(long, value_name = "PATH")]
    pub url_file: Option<PathBuf>,
    /// Serve plaintext gRPC instead of TLS. Refused unless --listen is a
    /// loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// A name or address clients reach this master by, added to its TLS
    /// certificate (repeatable; localhost, 127.0.0.1, ::1, the listen
    /// address and the hostname are always in it).
    #[arg(long, value_name = "NAME")]
    pub advertise: Vec<String>,
    /// Serve this certificate (PEM) instead of one made from the cluster CA
    /// in STATE_DIR/tls (needs --tls-key and --tls-ca).
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) --tls-cert chains to: what clients must trust.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Time a client has to finish its TLS handshake.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = crate::args::duration)]
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in flight at once; connections beyond it are closed.
    #[arg(long, value_name = "N", default_value_t = wasmos_security::server::DEFAULT_MAX_HANDSHAKES)]
    pub max_tls_handshakes: usize,
    /// Lifetime of the client certificate an agent gets when it joins (it
    /// renews it at two thirds of that).
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = crate::args::duration)]
    pub agent_cert_ttl: Duration,
    /// The audit log (STATE_DIR/audit.jsonl) moves to audit.jsonl.1 past this size.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::args::size)]
    pub audit_log_size: u64,
    /// Where the client config (the master URL, its CA certificate and the
    /// admin token) is written on first start, mode 0600 [default:
    /// $WASMOS_CONFIG, else ~/.config/wasmos/config.json]
    #[arg(long, value_name = "PATH")]
    pub client_config: Option<PathBuf>,
    /// Write no client config (the admin token made at a first start is
    /// then printed once).
    #[arg(long, conflicts_with = "client_config")]
    pub no_client_config: bool,
    /// Revoke the `admin` token and make a new one, written to the client
    /// config (or printed with --no-client-config): for an operator who lost
    /// it. Only whoever can start the master on its state dir can.
    #[arg(long)]
    pub reset_admin_token: bool,
}

impl MasterOpts {
    /// The URL local clients reach the master by (the listen address; a
    /// wildcard listen address means 127.0.0.1, or the first --advertise).
    fn url(&self, bound: SocketAddr) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        if bound.ip().is_unspecified() {
            match self.advertise.first() {
                Some(name) => format!("{scheme}://{name}:{}", bound.port()),
                None => format!("{scheme}://127.0.0.1:{}", bound.port()),
            }
        } else {
            format!("{scheme}://{bound}")
        }
    }

    fn transport(&self) -> Result<wasmos_host::Transport, String> {
        if self.insecure {
            if !self.listen.ip().is_loopback() {
                return Err(format!(
                    "--insecure is refused on {}: plaintext is allowed on a loopback address only; drop --insecure (TLS is made for you) or listen on 127.0.0.1",
                    self.listen
                ));
            }
            return Ok(wasmos_host::Transport::Insecure);
        }
        let mut names = self.advertise.clone();
        if !self.listen.ip().is_unspecified() {
            names.push(self.listen.ip().to_string());
        }
        names.push(wasmos_agent::hostname());
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let own = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(c), Some(k), Some(ca)) => {
                Some(wasmos_host::OwnCert { cert_pem: read(c)?, key_pem: read(k)?, ca_pem: read(ca)? })
            }
            _ => None,
        };
        Ok(wasmos_host::Transport::Tls(wasmos_host::TlsOptions {
            names,
            own,
            handshake_timeout: self.tls_handshake_timeout,
            max_handshakes: self.max_tls_handshakes,
        }))
    }

    /// Where the client config goes, unless --no-client-config.
    fn client_config_path(&self) -> Option<PathBuf> {
        if self.no_client_config {
            return None;
        }
        self.client_config.clone().or_else(wasmos_security::client::config_path)
    }

    fn config(&self, default_dir: &str) -> Result<MasterConfig, String> {
        let mut cfg = MasterConfig::new(self.state_dir.clone().unwrap_or_else(|| default_state_dir(default_dir)));
        cfg.transport = self.transport()?;
        cfg.audit_log_size = self.audit_log_size;
        cfg.reset_admin_token = self.reset_admin_token;
        cfg.agent_cert_ttl = self.agent_cert_ttl;
        cfg.agent_heartbeat_interval = self.agent_heartbeat;
        cfg.agent_timeout = self.agent_timeout;
        cfg.allocation_interval = self.allocation_interval;
        cfg.max_module_bytes = self.max_module_size;
        cfg.durable_registry = self.registry == "file";
        cfg.agent_reregister_timeout = self.agent_reregister_timeout;
        cfg.max_hosted_frameworks = self.max_hosted_frameworks;
        cfg.max_completed_tasks = self.max_completed_tasks;
        cfg.completed_task_memory = self.completed_task_memory;
        cfg.completed_task_ttl = self.completed_task_ttl;
        cfg.task_history = self.task_history;
        cfg.registry_cache = self.registry_cache;
        cfg.artifact_ttl = self.artifact_ttl;
        cfg.watch_history = self.watch_history;
        cfg.watch_history_bytes = self.watch_history_bytes;
        cfg.compiled_cache_bytes = self.compiled_cache_bytes;
        cfg.compile_workers = self.compile_workers as usize;
        cfg.scheduler_limits = wasmos_host::SchedulerLimits {
            fuel_per_callback: self.scheduler_fuel,
            mem: self.scheduler_mem,
            timeout: self.scheduler_timeout,
        };
        Ok(cfg)
    }
}

/// Writes the client config: with the admin token when this start made one
/// (a first start), else only when there is none yet (URL and CA). Says where.
fn write_client_config(cmd: &str, path: Option<PathBuf>, url: &str, handle: &wasmos_host::MasterHandle) {
    let Some(path) = path else {
        if let Some(t) = handle.admin_token() {
            // Nowhere else to put it: the operator must see it once.
            eprintln!("wasmos {cmd}: admin token (shown once, keep it): {t}");
        }
        return;
    };
    let token = handle.admin_token();
    if token.is_none() && path.exists() {
        return;
    }
    let config = wasmos_security::client::ClientConfig {
        master: url.to_string(),
        ca_pem: handle.ca_pem(),
        token: token.clone(),
    };
    match config.write(&path) {
        Ok(()) if token.is_some() => eprintln!(
            "wasmos {cmd}: client config (master URL, {}admin token) written to {}",
            if config.ca_pem.is_some() { "CA certificate, " } else { "" },
            path.display()
        ),
        Ok(()) => eprintln!(
            "wasmos {cmd}: client config (master URL, CA certificate; no token: the admin token was made at the first start) written to {}",
            path.display()
        ),
        Err(e) => {
            eprintln!("wasmos {cmd}: warning: no client config: {e}; clients need --master, --ca-cert and --token")
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct MasterArgs {
    #[command(flatten)]
    pub opts: MasterOpts,
    #[command(flatten)]
    pub ha: HaOpts,
}

/// Several masters on etcd (high availability).
#[derive(clap::Args, Debug, Clone)]
pub struct HaOpts {
    /// Run as one of several masters sharing the registry on etcd, at these
    /// client URLs (comma-separated): they elect a leader, the others follow
    /// and answer with its address. Without it: one master, registry in
    /// STATE_DIR (redb).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The URL clients and agents reach this master by (with --etcd;
    /// followers name it as the leader's): https://HOST:PORT [default: the
    /// listen address, or the first --advertise name with its port]
    #[arg(long = "advertise-url", value_name = "URL", requires = "etcd")]
    pub advertise_url: Option<String>,
    /// This cluster's key prefix in etcd (several clusters may share one etcd).
    #[arg(long, value_name = "PREFIX", default_value = "/wasmos/", requires = "etcd")]
    pub etcd_prefix: String,
    /// The leader's etcd lease: a leader that dies is replaced about this
    /// long after (etcd rounds it up to 1.5 of its --election-timeout).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = crate::args::duration, requires = "etcd")]
    pub etcd_lease_ttl: Duration,
    /// etcd's CA certificate (PEM), for https:// etcd URLs.
    #[arg(long, value_name = "FILE", requires = "etcd")]
    pub etcd_ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for etcd (needs --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Most operations in one etcd transaction (etcd's --max-txn-ops, default 128).
    #[arg(long, value_name = "N", default_value_t = wasmos_host::DEFAULT_TXN_LIMITS.max_ops, requires = "etcd")]
    pub etcd_max_txn_ops: usize,
    /// Most bytes in one etcd transaction (below etcd's --max-request-bytes, default 1.5 MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = crate::args::size, requires = "etcd")]
    pub etcd_max_txn_bytes: u64,
    /// The leader compacts etcd's history this often, to the revision of
    /// one period before (0: never; then give etcd --auto-compaction-retention,
    /// or its database fills up).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = crate::args::duration, requires = "etcd")]
    pub etcd_compact_every: Duration,
}

impl HaOpts {
    fn config(&self, url: &str) -> Result<wasmos_host::HaConfig, String> {
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        if self.etcd_max_txn_ops < 4 {
            return Err("--etcd-max-txn-ops must be at least 4".into());
        }
        if self.etcd_max_txn_bytes < 4096 {
            return Err("--etcd-max-txn-bytes must be at least 4KiB".into());
        }
        let advertise = self.advertise_url.clone().unwrap_or_else(|| url.to_string());
        if !advertise.starts_with("https://") && !advertise.starts_with("http://") {
            return Err(format!("--advertise-url {advertise:?} is not a URL; write e.g. https://10.0.0.5:5050"));
        }
        Ok(wasmos_host::HaConfig {
            endpoints: self.etcd.iter().map(|e| crate::client::with_scheme_http(e)).collect(),
            advertise,
            prefix: self.etcd_prefix.clone(),
            lease_ttl: self.etcd_lease_ttl,
            etcd_ca_pem: self.etcd_ca_cert.as_ref().map(read).transpose()?,
            etcd_identity: match (&self.etcd_cert, &self.etcd_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
            txn_limits: wasmos_host::TxnLimits {
                max_ops: self.etcd_max_txn_ops,
                max_bytes: self.etcd_max_txn_bytes as usize,
            },
            compact_every: self.etcd_compact_every,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The master's URL [env: WASMOS_MASTER] [default: the client config's, else https://127.0.0.1:5050]
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// The CA certificate (PEM file) the master's certificate must chain to
    /// [env: WASMOS_CA_CERT] [default: the client config's, else the one the
    /// join token names]
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// A join token (`wasmos token create NAME --agent` on the master), used
    /// at the first start: the agent's identity (its id and certificate) is
    /// then kept in --work-dir/identity.
    #[arg(long, value_name = "TOKEN", env = "WASMOS_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// Resources to offer [default: the machine's cores and memory]
    #[arg(long, value_name = "RES", value_parser = crate::args::resources)]
    pub resources: Option<Resources>,
    /// Attributes, matched by `submit --constraint`.
    #[arg(long, value_name = "k=v,...", value_delimiter = ',', value_parser = attribute)]
    pub attributes: Vec<(String, String)>,
    /// Where artifacts, the compiled-module cache and task sandboxes live
    /// [default: ~/.local/state/wasmos/agent]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Most status updates sent to the master in one call.
    #[arg(long, value_name = "N", default_value_t = wasmos_agent::DEFAULT_UPDATE_BATCH)]
    pub update_batch: usize,
    /// Longest wait between retries while the master cannot be reached
    /// (exponential backoff, capped here).
    #[arg(long, value_name = "DUR", value_parser = crate::args::duration, default_value = "10s")]
    pub max_backoff: Duration,
    /// Most bytes of undelivered status updates kept while the master is
    /// unreachable; past it the oldest are dropped and counted (reported
    /// when the agent reconnects, as agent_updates_dropped_total).
    #[arg(long, value_name = "SIZE", value_parser = crate::args::size, default_value = "64MiB")]
    pub max_spool: u64,
    /// How long checkpoint changes (launched tasks, unacknowledged updates)
    /// gather before one commit to the work dir; a crash loses at most this
    /// much, and those tasks are retried.
    #[arg(long, value_name = "DUR", value_parser = crate::args::duration, default_value = "20ms")]
    pub checkpoint_interval: Duration,
    /// Keep no checkpoint: a restarted agent comes back as a new agent and
    /// the master declares its tasks LOST after a grace period.
    #[arg(long)]
    pub no_checkpoint: bool,
}

/// How an agent's sandbox is sized and shares its CPU.
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Most tasks alive at once without fuel metering: slots of the sandbox's
    /// pool. A launch past them waits on the agent, STARTING, for a slot.
    /// (`wasmos dev` splits them among its agents.)
    #[arg(long, value_name = "N", default_value_t = wasmos_sandbox::DEFAULT_MAX_CONCURRENT_TASKS)]
    pub max_tasks: u32,
    /// Most fuel-metered tasks alive at once (those with --fuel or
    /// --meter-fuel): slots of the second, metered pool.
    #[arg(long, value_name = "N", default_value_t = wasmos_sandbox::DEFAULT_MAX_METERED_TASKS)]
    pub max_metered_tasks: u32,
    /// Largest --mem a task may have. Every memory slot of the pools reserves
    /// this much address space (47 bits hold about 100,000 slots of 1GiB);
    /// 64KiB to 4GiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::args::size, default_value = "1GiB")]
    pub max_task_mem: u64,
    /// Linear memories in the pools per task slot (a core module has one, a
    /// component a few); a task that finds none free fails.
    #[arg(long, value_name = "X", default_value_t = 1.25)]
    pub memories_per_task: f64,
    /// Tables in the pools per task slot.
    #[arg(long, value_name = "X", default_value_t = 2.0)]
    pub tables_per_task: f64,
    /// Wasm stack per task; deeper recursion traps with a stack overflow.
    #[arg(long, value_name = "SIZE", value_parser = crate::args::size, default_value = "512KiB")]
    pub max_wasm_stack: u64,
    /// How a task's `cpus` holds: `shares` (CPU in proportion to cpus under
    /// contention, idle CPU lent to others) or `hard` (never more than cpus).
    #[arg(long, value_name = "MODE", default_value_t = wasmos_sandbox::CpuLimit::Shares)]
    pub cpu_limit: wasmos_sandbox::CpuLimit,
    /// Tasks executing Wasm at once [default: the cpus offered, rounded up, at
    /// most the machine's cores]
    #[arg(long, value_name = "N")]
    pub cpu_cores: Option<usize>,
    /// Longest a task keeps a core while others wait for one.
    #[arg(long, value_name = "DUR", value_parser = crate::args::duration, default_value = "10ms")]
    pub cpu_slice: Duration,
    /// Nice value of the threads that run tasks (0 to 19; 0 leaves them as
    /// the agent): the agent's own work and other processes get the CPU first.
    #[arg(long, value_name = "N", default_value_t = wasmos_sandbox::DEFAULT_TASK_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub task_nice: i32,
    /// Run tasks on the agent's own runtime threads instead of dedicated
    /// ones (no handoff per task; Wasm then competes with the agent's gRPC).
    #[arg(long)]
    pub shared_runtime: bool,
}

impl SandboxArgs {
    /// Applies the flags to an agent's sandbox config; `share` divides the
    /// slots among agents in one process.
    fn apply(&self, cfg: &mut wasmos_sandbox::SandboxConfig, offered: &Resources, share: u32) {
        let share = share.max(1);
        cfg.max_concurrent_tasks = (self.max_tasks / share).max(1);
        cfg.max_metered_tasks = (self.max_metered_tasks / share).max(1);
        cfg.max_task_mem = self.max_task_mem;
        cfg.memories_per_task_x100 = (self.memories_per_task * 100.0).round().clamp(100.0, 10_000.0) as u32;
        cfg.tables_per_task_x100 = (self.tables_per_task * 100.0).round().clamp(100.0, 10_000.0) as u32;
        cfg.max_wasm_stack = self.max_wasm_stack.clamp(64 << 10, 64 << 20) as usize;
        cfg.cpu_limit = self.cpu_limit;
        cfg.cpu_slice = self.cpu_slice;
        cfg.task_nice = self.task_nice;
        cfg.own_runtime = !self.shared_runtime;
        let machine = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        cfg.cpu_cores = self.cpu_cores.unwrap_or_else(|| (offered.cpus().ceil() as usize).clamp(1, machine)).max(1);
    }
}

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Agents to start in this process.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub agents: u32,
    /// Resources of each agent [default: the machine's cores and memory, split evenly]
    #[arg(long, value_name = "RES", value_parser = crate::args::resources)]
    pub agent_resources: Option<Resources>,
    /// How long each agent's checkpoint changes gather before one commit.
    #[arg(long, value_name = "DUR", value_parser = crate::args::duration, default_value = "20ms")]
    pub checkpoint_interval: Duration,
    /// Agents keep no checkpoint (their tasks are not recovered after a restart).
    #[arg(long)]
    pub no_checkpoint: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub opts: MasterOpts,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `--url-file`: `url` and a newline, written to a temp file beside `path`
/// and renamed over it, so a script polling for `path` never reads half a URL.
fn write_url_file(path: &Path, url: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{url}\n")).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write --url-file {}: {e}; check that its directory exists and is writable", path.display())
    })
}

/// Binds `--listen` and reads the master's flags: the listener, the URL
/// local clients reach it by, the config; or the exit code after saying why.
async fn listen(cmd: &str, opts: &MasterOpts) -> Result<(tokio::net::TcpListener, String, MasterConfig), ExitCode> {
    let listener = tokio::net::TcpListener::bind(opts.listen).await.map_err(|e| {
        eprintln!("wasmos {cmd}: cannot listen on {}: {e}; pick another --listen", opts.listen);
        ExitCode::from(2)
    })?;
    // The bound address: with port 0 the one the system picked.
    let url = opts.url(listener.local_addr().unwrap_or(opts.listen));
    let cfg = opts.config(cmd).map_err(|e| {
        eprintln!("wasmos {cmd}: {e}");
        ExitCode::from(2)
    })?;
    if opts.insecure {
        eprintln!("wasmos {cmd}: warning: --insecure: plaintext, anyone on this host can read the traffic");
    }
    Ok((listener, url, cfg))
}

pub fn master(args: MasterArgs) -> ExitCode {
    runtime().block_on(async {
        let (listener, url, cfg) = match listen("master", &args.opts).await {
            Ok(x) => x,
            Err(code) => return code,
        };
        eprintln!("wasmos master: listening on {url} (state in {})", cfg.state_dir.display());
        if !args.ha.etcd.is_empty() {
            return master_ha(&args, listener, url, cfg).await;
        }
        let handle = match wasmos_host::start(cfg) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("wasmos master: {e}");
                return ExitCode::from(1);
            }
        };
        write_client_config("master", args.opts.client_config_path(), &url, &handle);
        if let Some(Err(e)) = args.opts.url_file.as_deref().map(|p| write_url_file(p, &url)) {
            eprintln!("wasmos master: {e}");
            return ExitCode::from(2);
        }
        match wasmos_host::serve_with(handle, listener, ctrl_c()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wasmos master: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// `wasmos master --etcd ...`: one of several masters.
async fn master_ha(args: &MasterArgs, listener: tokio::net::TcpListener, url: String, cfg: MasterConfig) -> ExitCode {
    if args.opts.registry != "file" {
        eprintln!(
            "wasmos master: --registry in-memory and --etcd exclude each other: with --etcd the registry is etcd"
        );
        return ExitCode::from(2);
    }
    let ha = match args.ha.config(&url) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("wasmos master: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Err(e)) = args.opts.url_file.as_deref().map(|p| write_url_file(p, &url)) {
        eprintln!("wasmos master: {e}");
        return ExitCode::from(2);
    }
    let (path, advertise) = (args.opts.client_config_path(), ha.advertise.clone());
    let elected = Box::new(move |h: &wasmos_host::MasterHandle| write_client_config("master", path, &advertise, h));
    match wasmos_host::run_ha(listener, cfg, ha, elected, ctrl_c()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmos master: {e}");
            ExitCode::from(1)
        }
    }
}

pub fn agent(args: AgentArgs) -> ExitCode {
    let work_dir = args.work_dir.clone().unwrap_or_else(|| default_state_dir("agent"));
    let target =
        crate::client::MasterArg { master: args.master.clone(), ca_cert: args.ca_cert.clone(), token: None }.target();
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wasmos agent: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = wasmos_agent::AgentConfig::new(target.url.clone(), work_dir);
    cfg.ca_pem = target.ca_pem;
    cfg.join_token = args.join.clone();
    if let Some(r) = args.resources {
        cfg.resources = r;
    }
    cfg.attributes = args.attributes.clone();
    args.sandbox.apply(&mut cfg.sandbox, &cfg.resources, 1);
    cfg.update_batch = args.update_batch.max(1);
    cfg.max_backoff = args.max_backoff;
    cfg.max_spool_bytes = args.max_spool;
    cfg.checkpoint_interval = args.checkpoint_interval;
    cfg.checkpoint = !args.no_checkpoint;
    eprintln!("wasmos agent: offering {} to {}", cfg.resources, cfg.master);
    runtime().block_on(async {
        match wasmos_agent::run(cfg, ctrl_c()).await {
            Ok(id) => {
                eprintln!("wasmos agent: {id} stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wasmos agent: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// The machine's resources split evenly across `n` agents.
fn share(n: u32) -> Resources {
    let all = wasmos_agent::default_resources();
    let mut out = Resources::new();
    for (name, v) in all.iter() {
        let mut each = v.milli() / n.max(1) as i64;
        if name == wasmos_model::MEM {
            // whole MiB, so tables stay readable
            each -= each % ((1i64 << 20) * 1000);
        }
        out.set(name, Scalar(each));
    }
    out
}

pub fn dev(args: DevArgs) -> ExitCode {
    if args.agents == 0 {
        eprintln!("wasmos dev: --agents must be at least 1");
        return ExitCode::from(2);
    }
    let rt = runtime();
    rt.block_on(async {
        let (listener, url, cfg) = match listen("dev", &args.opts).await {
            Ok(x) => x,
            Err(code) => return code,
        };
        let state_dir = cfg.state_dir.clone();
        let handle = match wasmos_host::start(cfg) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("wasmos dev: {e}");
                return ExitCode::from(1);
            }
        };
        write_client_config("dev", args.opts.client_config_path(), &url, &handle);
        let ca_pem = handle.ca_pem();
        // The agents join like any other: with a join token, used once each
        // (later starts find their identity in their work dirs).
        let join = match handle
            .create_join_token(&format!("dev-agents-{}", std::process::id()), args.agents, Duration::from_secs(600))
            .await
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("wasmos dev: {e}");
                return ExitCode::from(1);
            }
        };
        // Before the agents start: nothing else runs yet if it cannot be written.
        if let Some(Err(e)) = args.opts.url_file.as_deref().map(|p| write_url_file(p, &url)) {
            eprintln!("wasmos dev: {e}");
            return ExitCode::from(2);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut stop = stop_rx.clone();
        let server = tokio::spawn(wasmos_host::serve_with(handle, listener, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        let resources = args.agent_resources.clone().unwrap_or_else(|| share(args.agents));
        let mut agents = Vec::new();
        for i in 0..args.agents {
            let mut cfg = wasmos_agent::AgentConfig::new(url.clone(), state_dir.join(format!("agent-{i}")));
            cfg.ca_pem = ca_pem.clone();
            cfg.join_token = Some(join.clone());
            cfg.resources = resources.clone();
            cfg.hostname = format!("{}-dev{i}", wasmos_agent::hostname());
            cfg.checkpoint_interval = args.checkpoint_interval;
            cfg.checkpoint = !args.no_checkpoint;
            args.sandbox.apply(&mut cfg.sandbox, &resources, args.agents);
            let mut stop = stop_rx.clone();
            agents.push(tokio::spawn(wasmos_agent::run(cfg, async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
        }
        eprintln!(
            "wasmos dev: master on {url} with {} agent(s) of {resources} (state in {})",
            args.agents,
            state_dir.display()
        );
        eprintln!("  next: wasmos submit --wait target/guests/hello.wasm -- world");
        eprintln!("        wasmos tasks    (Ctrl-C stops the cluster)");
        eprintln!("        the dashboard: {url}/  (`wasmos dashboard` prints the token to log in with)");
        ctrl_c().await;
        let _ = stop_tx.send(true);
        for a in agents {
            let _ = a.await;
        }
        let _ = server.await;
        ExitCode::SUCCESS
    })
}
