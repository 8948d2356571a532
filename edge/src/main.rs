//! `wasmos-edge`: an agent for small machines. It carries wasmtime's runtime
//! but no compiler: the master compiles every module for this agent's engine
//! profile (its target, CPU features and settings) and the agent downloads
//! and runs the artifact. An artifact built for anything else is refused.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wasmos_model::Resources;
use wasmos_model::{parse_duration, parse_size};

/// Defaults sized for a small machine (a full `wasmos agent` reserves more).
const EDGE_MAX_TASKS: u32 = 256;
const EDGE_MAX_METERED_TASKS: u32 = 32;

#[derive(Parser, Debug)]
#[command(
    name = "wasmos-edge",
    version,
    about = "A wasmos agent without a compiler: it runs only modules the master compiled for it"
)]
struct Args {
    /// The master's URL(s), comma-separated for several masters.
    #[arg(long, value_name = "URL", env = "WASMOS_MASTER", default_value = "https://127.0.0.1:5050")]
    master: String,
    /// The CA certificate (PEM file) the master's certificate must chain to
    /// [default: the one the join token names].
    #[arg(long, value_name = "FILE", env = "WASMOS_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// A join token (`wasmos token create NAME --agent`), used at the first
    /// start; the identity it gets is kept in --work-dir/identity.
    #[arg(long, value_name = "TOKEN", env = "WASMOS_JOIN_TOKEN", hide_env_values = true)]
    join: Option<String>,
    /// Resources to offer [default: the machine's cores and memory].
    #[arg(long, value_name = "RES", value_parser = resources)]
    resources: Option<Resources>,
    /// Attributes, matched by `submit --constraint` (`arch` and `compiler=no`
    /// are added by the master unless given).
    #[arg(long, value_name = "k=v,...", value_delimiter = ',', value_parser = attribute)]
    attributes: Vec<(String, String)>,
    /// Where artifacts, the checkpoint and task sandboxes live.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/wasmos-edge")]
    work_dir: PathBuf,
    /// Most tasks alive at once without fuel metering (pool slots).
    #[arg(long, value_name = "N", default_value_t = EDGE_MAX_TASKS)]
    max_tasks: u32,
    /// Most fuel-metered tasks alive at once.
    #[arg(long, value_name = "N", default_value_t = EDGE_MAX_METERED_TASKS)]
    max_metered_tasks: u32,
    /// Largest --mem a task may have (64KiB to 4GiB). Part of the engine
    /// profile the master compiles for.
    #[arg(long, value_name = "SIZE", value_parser = size, default_value = "256MiB")]
    max_task_mem: u64,
    /// Wasm stack per task. Part of the engine profile.
    #[arg(long, value_name = "SIZE", value_parser = size, default_value = "512KiB")]
    max_wasm_stack: u64,
    /// Tasks executing Wasm at once [default: the machine's cores].
    #[arg(long, value_name = "N")]
    cpu_cores: Option<usize>,
    /// How a task's `cpus` holds: `shares` (CPU in proportion to cpus under
    /// contention, idle CPU lent to others) or `hard` (never more than cpus).
    #[arg(long, value_name = "MODE", default_value_t = wasmos_sandbox::CpuLimit::Shares)]
    cpu_limit: wasmos_sandbox::CpuLimit,
    /// What the engine runs: `native` (machine code for this CPU, compiled
    /// by the master) or `pulley64` (wasmtime's portable interpreter, for a
    /// CPU Cranelift cannot compile for; slower).
    #[arg(long, value_name = "TARGET", default_value = "native")]
    target: String,
    /// CPU features the master may compile in: `native` (this CPU's) or
    /// `baseline` (the architecture's base: one artifact for every CPU of the kind).
    #[arg(long, value_name = "MODE", default_value = "native")]
    cpu_features: wasmos_sandbox::CpuFeatures,
    /// Longest wait between reconnection attempts (exponential backoff with jitter, capped here).
    #[arg(long, value_name = "DUR", value_parser = duration, default_value = "10s")]
    max_backoff: Duration,
    /// Most bytes of undelivered status updates kept while the master is
    /// unreachable; past it the oldest are dropped and counted (reported
    /// when the agent reconnects).
    #[arg(long, value_name = "SIZE", value_parser = size, default_value = "64MiB")]
    max_spool: u64,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}
fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}
fn resources(s: &str) -> Result<Resources, String> {
    let r = Resources::parse(s).map_err(|e| e.to_string())?;
    if r.is_empty() {
        return Err("resources are empty; give e.g. cpus:2;mem:1GiB".into());
    }
    Ok(r)
}
/// One `k=v` of `--attributes k=v,...` (clap splits at the commas).
fn attribute(p: &str) -> Result<(String, String), String> {
    match p.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("attribute {p:?} is not k=v; write e.g. --attributes zone=eu,rack=r1")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = wasmos_agent::AgentConfig::new(args.master.clone(), args.work_dir.clone());
    if let Some(ca) = &args.ca_cert {
        match std::fs::read_to_string(ca) {
            Ok(pem) => cfg.ca_pem = Some(pem),
            Err(e) => {
                eprintln!("wasmos-edge: cannot read --ca-cert {}: {e}", ca.display());
                return ExitCode::from(2);
            }
        }
    }
    cfg.join_token = args.join.clone();
    if let Some(r) = args.resources {
        cfg.resources = r;
    }
    cfg.attributes = args.attributes.clone();
    let sb = &mut cfg.sandbox;
    sb.compile = false;
    sb.max_concurrent_tasks = args.max_tasks.max(1);
    sb.max_metered_tasks = args.max_metered_tasks.max(1);
    sb.max_task_mem = args.max_task_mem;
    sb.max_wasm_stack = args.max_wasm_stack as usize;
    sb.cpu_features = args.cpu_features;
    sb.cache_dir = None;
    if let Some(n) = args.cpu_cores {
        sb.cpu_cores = n.max(1);
    }
    sb.cpu_limit = args.cpu_limit;
    match args.target.as_str() {
        "native" => sb.target = None,
        "pulley64" => sb.target = Some("pulley64".into()),
        t => {
            eprintln!("wasmos-edge: unknown --target {t:?}; give native or pulley64");
            return ExitCode::from(2);
        }
    }
    cfg.max_backoff = args.max_backoff;
    cfg.max_spool_bytes = args.max_spool;
    eprintln!(
        "wasmos-edge: offering {} to {} (engine {})",
        cfg.resources,
        cfg.master,
        wasmos_sandbox::EngineProfile::of(&cfg.sandbox)
    );
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wasmos-edge: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match wasmos_agent::run(cfg, stop).await {
            Ok(id) => {
                eprintln!("wasmos-edge: {id} stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wasmos-edge: {e}");
                ExitCode::from(1)
            }
        }
    })
}
