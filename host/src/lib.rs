//! wasmos-host: the master. It tracks agents and frameworks, runs the
//! allocator, sends offers, validates every launch against live state, hosts
//! the built-in `batch` framework, and serves the gRPC APIs (AgentService,
//! Scheduler, Operator, Artifacts).
//!
//! One task owns all state (`master::Master`, an event loop over a closed
//! enum of commands in domain types); `api/` only translates RPCs into
//! commands, and `registry/` stores what the tables say changed.

mod api;
mod artifacts;
mod audit;
mod auth;
mod batch;
pub mod compiled;
mod ha;
mod handle;
mod hosted;
mod master;
mod metrics;
mod registry;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use wasmos_model::Role;
use wasmos_proto::v1;

pub use artifacts::{ArtifactError, ArtifactStore, DEFAULT_MAX_MODULE_BYTES};
pub use audit::DEFAULT_AUDIT_LOG_SIZE;
pub use batch::{DEFAULT_MAX_ATTEMPTS, MAX_SKIPPED_PER_OFFER};
pub use compiled::{DEFAULT_COMPILE_WORKERS, DEFAULT_COMPILED_CACHE_BYTES};
pub use hosted::{MAX_CALLS_PER_CALLBACK, MAX_TIMER};
pub use wasmos_sandbox::SchedulerLimits;
pub use watch::{DEFAULT_WATCH_HISTORY, DEFAULT_WATCH_HISTORY_BYTES, EPOCH_SHIFT};

/// Default [`MasterConfig::max_hosted_frameworks`].
pub const DEFAULT_MAX_HOSTED_FRAMEWORKS: u32 = 64;
pub use ha::{DEFAULT_COMPACT_EVERY, DEFAULT_LEASE_TTL, EXIT_DEPOSED, HaConfig, run_ha};
pub use handle::MasterHandle;
pub use registry::etcd::{DEFAULT_TXN_LIMITS, TxnLimits};

/// Default [`MasterConfig::agent_heartbeat_interval`].
pub const DEFAULT_AGENT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default [`MasterConfig::agent_timeout`].
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default [`MasterConfig::framework_heartbeat_interval`].
pub const DEFAULT_FRAMEWORK_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default [`MasterConfig::allocation_interval`]: none beyond the natural
/// batching of the event loop (one cycle per batch of queued commands).
pub const DEFAULT_ALLOCATION_INTERVAL: Duration = Duration::ZERO;
/// Default [`MasterConfig::batch_refuse`].
pub const DEFAULT_BATCH_REFUSE: Duration = Duration::from_secs(1);
/// Default [`MasterConfig::metrics_max_agents`].
pub const DEFAULT_METRICS_MAX_AGENTS: usize = 1000;
/// Default [`MasterConfig::agent_reregister_timeout`].
pub const DEFAULT_AGENT_REREGISTER_TIMEOUT: Duration = Duration::from_secs(120);
/// Default [`MasterConfig::max_submit_count`].
pub const DEFAULT_MAX_SUBMIT_COUNT: u32 = 1_000_000;
/// Default [`MasterConfig::max_completed_tasks`].
pub const DEFAULT_MAX_COMPLETED_TASKS: usize = 10_000;
/// Default [`MasterConfig::completed_task_memory`]: 256 MiB.
pub const DEFAULT_COMPLETED_TASK_MEMORY: u64 = 256 << 20;
/// Default [`MasterConfig::completed_task_ttl`]: one hour.
pub const DEFAULT_COMPLETED_TASK_TTL: Duration = Duration::from_secs(3600);
/// Default [`MasterConfig::task_history`]: one week.
pub const DEFAULT_TASK_HISTORY: Duration = Duration::from_secs(7 * 86400);
/// Default [`MasterConfig::registry_cache`]: 64 MiB.
pub const DEFAULT_REGISTRY_CACHE: u64 = 64 << 20;
/// Default [`MasterConfig::artifact_ttl`]: one week.
pub const DEFAULT_ARTIFACT_TTL: Duration = Duration::from_secs(7 * 86400);

/// How a master runs. Every limit has a default (see the constants).
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Where the master keeps its files (today: the artifact store).
    pub state_dir: PathBuf,
    /// How often agents must heartbeat. Default 1 s.
    pub agent_heartbeat_interval: Duration,
    /// Silence after which an agent is removed and its tasks are LOST. Default 15 s.
    pub agent_timeout: Duration,
    /// After a master restart, how long agents from the registry have to
    /// reregister before their tasks are LOST (and batch tasks retried). Default 2 min.
    pub agent_reregister_timeout: Duration,
    /// Heartbeat events to remote frameworks. Default 15 s.
    pub framework_heartbeat_interval: Duration,
    /// Least time between two allocation cycles (events in between are
    /// batched into one cycle). Default 0: one cycle per batch of commands the
    /// event loop drains, which already batches under load. A cycle also runs
    /// at least once a second, so expired offer filters are re-offered.
    pub allocation_interval: Duration,
    /// Filter for resources the batch framework declines. Default 1 s (any new
    /// submission revives it).
    pub batch_refuse: Duration,
    /// Filter for remote declines that name no `refuse_seconds`. Default 5 s.
    pub default_refuse: Duration,
    /// Largest module accepted by Artifacts.Upload. Default 64 MiB.
    pub max_module_bytes: u64,
    /// Most tasks one submit may create. Default 1,000,000.
    pub max_submit_count: u32,
    /// Role of the built-in batch framework. Default `batch`.
    pub batch_role: Role,
    /// Seed of the allocator's agent shuffle.
    pub seed: u64,
    /// Keep the registry in `state_dir/registry.redb` (default), or only in
    /// memory (like Mesos's `--registry=in_memory`: faster, but a restarted
    /// master forgets everything).
    pub durable_registry: bool,
    /// Most hosted (Wasm) schedulers at once. Default 64.
    pub max_hosted_frameworks: u32,
    /// Fuel, memory and time limits of every hosted scheduler callback
    /// (defaults: 100M fuel, 64 MiB, 1 s).
    pub scheduler_limits: SchedulerLimits,
    /// Ended tasks (their framework done with them) kept in memory, most
    /// recent first; older ones are answered from the registry. Default 10,000.
    pub max_completed_tasks: usize,
    /// ... and at most about this many bytes of them (output tails count).
    /// Default 256 MiB.
    pub completed_task_memory: u64,
    /// ... and none for longer than this. Default 1 h.
    pub completed_task_ttl: Duration,
    /// Registry pages cached in memory (redb's own default is 1 GiB, which a
    /// long history would fill). Default 64 MiB.
    pub registry_cache: u64,
    /// How long the registry keeps an ended task's record (then it is
    /// deleted in the background). Default one week.
    pub task_history: Duration,
    /// Modules no queued or running task, open submission or hosted
    /// framework has used for this long are deleted. Default one week.
    pub artifact_ttl: Duration,
    /// Bytes of modules compiled for agents without a compiler kept in
    /// `state_dir/compiled` (least recently used go first). Default 2 GiB.
    pub compiled_cache_bytes: u64,
    /// Modules compiled for such agents at once (each on a blocking thread). Default 1.
    pub compile_workers: usize,
    /// Watch events kept for watchers that resume (`Watch(from)`). Default 100,000.
    pub watch_history: usize,
    /// ... and at most this many bytes of them (output tails count). Default 64 MiB.
    pub watch_history_bytes: u64,
    /// TLS on the listener (default: a cluster CA and serving certificate
    /// made under `state_dir/tls`), or plaintext.
    pub transport: Transport,
    /// The audit log (`state_dir/audit.jsonl`) is rotated to audit.jsonl.1
    /// past this size. Default 64 MiB.
    pub audit_log_size: u64,
    /// Lifetime of the client certificates agents get when they join (they
    /// renew at two thirds of it). Default a day.
    pub agent_cert_ttl: Duration,
    /// At start, revoke the `admin` token and make a new one (an operator
    /// who lost it; whoever runs the master on its state dir may). Off by
    /// default.
    pub reset_admin_token: bool,
    /// Per-agent series in `/metrics` for at most this many agents (by id);
    /// the rest are counted in `wasmos_agents_omitted_from_series`.
    pub metrics_max_agents: usize,
    /// `/metrics` answers without a token (for a scraper on a trusted
    /// network). Off by default: a token that may `view` every role.
    pub metrics_public: bool,
}

/// How the master's listener speaks.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plaintext (`--insecure`; the CLI allows it on loopback only).
    Insecure,
    Tls(TlsOptions),
}

/// TLS settings. The cluster CA under `state_dir/tls` always exists (it
/// signs agents' certificates); the serving certificate is made from it
/// unless `own` brings one.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Names and addresses the serving certificate is for, beyond
    /// localhost, 127.0.0.1 and ::1 (the listen address, the hostname,
    /// every `--advertise`).
    pub names: Vec<String>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca` (PEM contents).
    pub own: Option<OwnCert>,
    /// Time a client has to finish its handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Handshakes in flight at once; more connections are closed. Default 1,024.
    pub max_handshakes: usize,
}

impl Default for TlsOptions {
    fn default() -> TlsOptions {
        TlsOptions {
            names: Vec::new(),
            own: None,
            handshake_timeout: wasmos_security::server::DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: wasmos_security::server::DEFAULT_MAX_HANDSHAKES,
        }
    }
}

/// A serving certificate brought by the operator, and the CA clients must
/// trust to accept it.
#[derive(Clone)]
pub struct OwnCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for OwnCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnCert(..)")
    }
}

/// What a running master's TLS is: the cluster PKI, the rustls config its
/// listener uses, and the CA clients must trust.
pub(crate) struct TlsState {
    pub pki: wasmos_security::pki::Pki,
    pub server: Arc<rustls::ServerConfig>,
    pub client_ca_pem: String,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
}

impl MasterConfig {
    pub fn new(state_dir: PathBuf) -> MasterConfig {
        MasterConfig {
            state_dir,
            agent_heartbeat_interval: DEFAULT_AGENT_HEARTBEAT,
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            agent_reregister_timeout: DEFAULT_AGENT_REREGISTER_TIMEOUT,
            framework_heartbeat_interval: DEFAULT_FRAMEWORK_HEARTBEAT,
            allocation_interval: DEFAULT_ALLOCATION_INTERVAL,
            batch_refuse: DEFAULT_BATCH_REFUSE,
            default_refuse: wasmos_allocator::DEFAULT_REFUSE,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_submit_count: DEFAULT_MAX_SUBMIT_COUNT,
            batch_role: Role::new("batch").expect("valid role"),
            seed: 0,
            durable_registry: true,
            max_hosted_frameworks: DEFAULT_MAX_HOSTED_FRAMEWORKS,
            scheduler_limits: SchedulerLimits::default(),
            max_completed_tasks: DEFAULT_MAX_COMPLETED_TASKS,
            completed_task_memory: DEFAULT_COMPLETED_TASK_MEMORY,
            completed_task_ttl: DEFAULT_COMPLETED_TASK_TTL,
            task_history: DEFAULT_TASK_HISTORY,
            registry_cache: DEFAULT_REGISTRY_CACHE,
            artifact_ttl: DEFAULT_ARTIFACT_TTL,
            compiled_cache_bytes: compiled::DEFAULT_COMPILED_CACHE_BYTES,
            compile_workers: compiled::DEFAULT_COMPILE_WORKERS,
            watch_history: DEFAULT_WATCH_HISTORY,
            watch_history_bytes: DEFAULT_WATCH_HISTORY_BYTES,
            transport: Transport::Tls(TlsOptions::default()),
            audit_log_size: DEFAULT_AUDIT_LOG_SIZE,
            reset_admin_token: false,
            metrics_max_agents: DEFAULT_METRICS_MAX_AGENTS,
            metrics_public: false,
            agent_cert_ttl: wasmos_security::pki::DEFAULT_AGENT_CERT_TTL,
        }
    }
}

/// Depth of the command queue into the master's event loop.
const COMMAND_QUEUE: usize = 65_536;

/// Why a master could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Artifacts(#[from] ArtifactError),
    #[error("scheduler sandbox: {0}")]
    Sandbox(#[from] wasmos_sandbox::SandboxError),
    #[error("{0}")]
    Registry(#[from] registry::RegistryError),
    #[error("tls: {0}")]
    Tls(String),
    #[error("audit log in {0}: {1}")]
    Audit(String, std::io::Error),
}

fn tls_state(state_dir: &std::path::Path, o: &TlsOptions) -> Result<TlsState, StartError> {
    let pki = wasmos_security::pki::Pki::load_or_create(&state_dir.join("tls"), &o.names)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    // The chain ends with the CA: an agent holding only a join token finds
    // it there by the fingerprint the token carries.
    let (cert_pem, key_pem, client_ca_pem) = match &o.own {
        Some(own) => (format!("{}\n{}", own.cert_pem.trim_end(), own.ca_pem), own.key_pem.clone(), own.ca_pem.clone()),
        None => {
            (format!("{}\n{}", pki.server_pem.trim_end(), pki.ca_pem), pki.server_key_pem.clone(), pki.ca_pem.clone())
        }
    };
    let server = wasmos_security::server::ServerTls { cert_pem, key_pem, client_ca_pem: pki.ca_pem.clone() }
        .rustls_config()
        .map_err(StartError::Tls)?;
    Ok(TlsState {
        pki,
        server,
        client_ca_pem,
        handshake_timeout: o.handshake_timeout,
        max_handshakes: o.max_handshakes,
    })
}

/// Starts the master's event loop (on the current runtime) and returns a handle
/// whose services can be served with [`serve_with`].
pub fn start(cfg: MasterConfig) -> Result<MasterHandle, StartError> {
    let tls = match &cfg.transport {
        Transport::Insecure => None,
        Transport::Tls(o) => Some(Arc::new(tls_state(&cfg.state_dir, o)?)),
    };
    let opts = registry::Options { keep_recent: cfg.max_completed_tasks, cache: cfg.registry_cache as usize };
    let t0 = std::time::Instant::now();
    let registry = if cfg.durable_registry { Some(registry::open(&cfg.state_dir, opts)?) } else { None };
    if let Some((_, l)) = &registry {
        eprintln!(
            "wasmos master: registry loaded in {} ms ({} tasks live or recent, {} open submissions)",
            t0.elapsed().as_millis(),
            l.tasks.len(),
            l.submissions.len()
        );
    }
    start_with(cfg, tls, registry, None)
}

/// [`start`] with its TLS and registry already made (the HA leader's).
pub(crate) fn start_with(
    cfg: MasterConfig,
    tls: Option<Arc<TlsState>>,
    registry: Option<(Box<dyn registry::Registry>, registry::Loaded)>,
    shared_blobs: Option<Box<dyn artifacts::SharedBlobs>>,
) -> Result<MasterHandle, StartError> {
    let dir = cfg.state_dir.join("artifacts");
    let artifacts = Arc::new(match shared_blobs {
        Some(b) => ArtifactStore::open_shared(dir, cfg.max_module_bytes, b)?,
        None => ArtifactStore::open(dir, cfg.max_module_bytes)?,
    });
    let compiled = Arc::new(compiled::CompiledCache::new(
        cfg.state_dir.join("compiled"),
        cfg.compiled_cache_bytes,
        cfg.compile_workers,
    ));
    // Hosted schedulers run on the metered lane (fuel budgets per callback),
    // each charged to its own account in the fair CPU scheduler; the plain
    // lane runs nothing here.
    let sandbox = wasmos_sandbox::Sandbox::new(wasmos_sandbox::SandboxConfig {
        max_concurrent_tasks: 1,
        max_metered_tasks: cfg.max_hosted_frameworks.max(1),
        // Callbacks run in the hosted actors' own futures, not `Sandbox::run`.
        own_runtime: false,
        max_task_mem: cfg.scheduler_limits.mem.clamp(1 << 20, 4 << 30),
        ..Default::default()
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(COMMAND_QUEUE);
    let scheduler_limits = cfg.scheduler_limits;
    let epoch = registry.as_ref().map_or(0, |(_, l)| l.epoch);
    let watch = Arc::new(watch::WatchHub::new(epoch, cfg.watch_history, cfg.watch_history_bytes));
    let history = registry.as_ref().map(|(r, _)| r.history());
    let hosted_to_restart: Vec<_> = registry
        .as_ref()
        .map(|(_, l)| l.frameworks.iter().filter(|f| f.hosted.is_some()).cloned().collect())
        .unwrap_or_default();
    let audit = Arc::new(
        audit::Audit::open(&cfg.state_dir, cfg.audit_log_size)
            .map_err(|e| StartError::Audit(cfg.state_dir.display().to_string(), e))?,
    );
    let auth = Arc::new(auth::Auth::default());
    let fingerprint = tls.as_ref().and_then(|t| wasmos_security::pki::fingerprint_pem(&t.client_ca_pem));
    let agent_cert_ttl = cfg.agent_cert_ttl;
    let metrics_public = cfg.metrics_public;
    let metrics = Arc::new(metrics::Metrics::new());
    let shared = master::Shared {
        artifacts: artifacts.clone(),
        watch: watch.clone(),
        auth: auth.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
    };
    let mut master = master::Master::new(cfg, shared, registry, fingerprint);
    let admin_token = master.bootstrap_secret.take();
    tokio::spawn(master.run(rx));
    let handle = MasterHandle {
        tx,
        watch,
        artifacts,
        compiled,
        sandbox,
        scheduler_limits,
        history,
        tls,
        auth,
        audit,
        admin_token: admin_token.map(Arc::new),
        agent_cert_ttl,
        metrics,
        metrics_public,
        event_streams: Default::default(),
        epoch,
    };
    // Hosted schedulers come back from their module and config; their state
    // starts fresh (reconciliation tells them about their tasks).
    for f in hosted_to_restart {
        let h = handle.clone();
        tokio::spawn(async move {
            let info = f.hosted.unwrap_or_default();
            let req = hosted::Deploy {
                name: f.name.clone(),
                role: f.role.to_string(),
                config: info.config,
                module_sha256: info.module_sha256,
                signature: String::new(),
            };
            if let Err(e) = hosted::deploy(&h, req, Some(f.id)).await {
                eprintln!("wasmos master: cannot restart hosted framework {}: {e}", f.name);
            }
        });
    }
    Ok(handle)
}

/// Serves all four services of `handle` on `listener` until `shutdown`
/// resolves: over TLS unless the master was started `Transport::Insecure`.
pub async fn serve_with(
    handle: MasterHandle,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let tls = handle.tls.clone();
    serve_routes(tonic::service::Routes::from(routes(handle)), tls, listener, shutdown).await
}

/// Serves `routes` on `listener` (TLS with `tls`, else plaintext) until
/// `shutdown` resolves.
pub(crate) async fn serve_routes(
    routes: tonic::service::Routes,
    tls: Option<Arc<TlsState>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder().tcp_nodelay(true).accept_http1(true).add_routes(routes);
    match tls {
        Some(t) => {
            let incoming =
                wasmos_security::server::incoming(listener, t.server.clone(), t.handshake_timeout, t.max_handshakes);
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        None => router.serve_with_incoming_shutdown(incoming(listener), shutdown).await,
    }
}

/// The four gRPC services of `handle` and the HTTP side, as one router.
pub(crate) fn routes(handle: MasterHandle) -> axum::Router {
    let max = wasmos_proto::MAX_MESSAGE_BYTES;
    // The gRPC services and the dashboard, metrics and JSON API (HTTP/1.1
    // or HTTP/2) share one listener.
    let grpc = tonic::service::Routes::new(
        v1::agent_service_server::AgentServiceServer::new(handle.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        v1::scheduler_server::SchedulerServer::new(handle.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        v1::operator_server::OperatorServer::new(handle.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        v1::artifacts_server::ArtifactsServer::new(handle.clone())
            // Artifacts travel gzip-compressed to clients that accept it
            // (agents on slow links); uploads may come compressed too.
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(ha::single_master_routes(handle.epoch));
    grpc.into_axum_router().merge(api::http::router(handle))
}

/// Accepted connections with Nagle's algorithm off: the server's own
/// `tcp_nodelay` applies only to listeners it binds itself, and small
/// request/response pairs otherwise wait ~40 ms for delayed ACKs.
fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// `pub async fn run(listener, config, shutdown)`: a whole master.
pub async fn run(
    listener: TcpListener,
    cfg: MasterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let handle = start(cfg)?;
    serve_with(handle, listener, shutdown).await?;
    Ok(())
}

/// The tasks a (stopped) master's registry holds, by id, with their state
/// names: what `cargo xtask chaos` compares with the Operator API. Tasks of a
/// submission without a record of their own are `staging` (queued).
pub fn registry_tasks(state_dir: &std::path::Path) -> Result<std::collections::BTreeMap<String, String>, StartError> {
    let opts = registry::Options { keep_recent: usize::MAX, cache: DEFAULT_REGISTRY_CACHE as usize };
    let (reg, loaded) = registry::open(state_dir, opts)?;
    let mut out = std::collections::BTreeMap::new();
    for t in loaded.tasks {
        out.insert(t.view.task_id.to_string(), t.view.state.to_string());
    }
    // Ended tasks moved to the history.
    let history = reg.history();
    let mut after = 0;
    loop {
        let page = history.page(after, &Default::default(), usize::MAX, usize::MAX)?;
        for t in page.rows {
            out.entry(t.task_id.to_string()).or_insert_with(|| t.state.to_string());
        }
        match page.next {
            Some(n) if n > after => after = n,
            _ => break,
        }
    }
    for (sub, _) in loaded.submissions {
        for (_, id) in sub.task_ids() {
            out.entry(id).or_insert_with(|| "staging".to_string());
        }
    }
    Ok(out)
}
