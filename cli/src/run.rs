//! `wasmos run`: one task, locally, under the same limits a cluster applies.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use wasmos_model::{Limits, Outcome, OutcomeKind, format_size};
use wasmos_sandbox::{HostDir, RunRequest, Sandbox, SandboxConfig, Stdin, TaskControl};

/// Arguments of `wasmos run`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Exit status: the guest's exit code; 124 on timeout; 125 on out_of_fuel, \
out_of_memory or error; 137 when killed. With --json: 0 whenever the run was carried out.")]
pub struct RunArgs {
    /// Fuel budget (total instructions, roughly) [default: none, and fuel is
    /// not counted]
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Count fuel without a budget (identical work, identical fuel); costs
    /// about 2x on tight loops.
    #[arg(long)]
    pub meter_fuel: bool,
    /// Max linear memory plus tables (bytes, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = crate::args::size)]
    pub mem: u64,
    /// Wall-clock limit (ms, s, m, h).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = crate::args::duration)]
    pub timeout: Duration,
    /// Max bytes kept per output stream (stdout, stderr); the rest is dropped and reported.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = crate::args::size)]
    pub max_output: u64,
    /// Environment variable for the guest (repeatable); nothing is inherited.
    #[arg(long = "env", value_name = "K=V", value_parser = crate::args::key_value)]
    pub env: Vec<(String, String)>,
    /// Preopen a host directory read-write at GUEST (default: the same path). Repeatable.
    /// Without it the guest sees no filesystem.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = host_dir)]
    pub dirs: Vec<HostDir>,
    /// Print exactly one JSON object with the outcome instead of passing output through.
    #[arg(long)]
    pub json: bool,
    /// Input bytes: `run`'s input for wasmos:task components (their output goes
    /// to stdout); stdin for WASI commands. Without it, commands read the
    /// terminal's stdin and task components get empty input.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Directory of compiled modules (so a second run does not recompile).
    #[arg(long, value_name = "DIR", env = "WASMOS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the on-disk compiled-module cache.
    #[arg(long)]
    pub no_cache: bool,
    /// The module: a WASI preview1 command (.wasm or .wat) or a wasi:cli/run component.
    #[arg(value_name = "MODULE.wasm")]
    pub module: PathBuf,
    /// Arguments for the guest, after `--`. The guest's argv[0] is the module's file name.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn host_dir(s: &str) -> Result<HostDir, String> {
    let (host, guest) = match s.split_once("::") {
        Some((h, g)) => (h, g),
        None => (s, s),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("directory {s:?} is not HOST[::GUEST]; write e.g. --dir ./data::/data"));
    }
    Ok(HostDir { host: PathBuf::from(host), guest: guest.to_string(), read_only: false })
}

/// Where compiled modules are kept between runs, unless told otherwise.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wasmos").join("modules"))
}

pub fn main(args: RunArgs) -> ExitCode {
    let bytes: Arc<[u8]> = match std::fs::read(&args.module) {
        Ok(b) => b.into(),
        Err(e) => {
            eprintln!("wasmos run: cannot read {}: {e}; check the path", args.module.display());
            return ExitCode::from(2);
        }
    };
    let input = match &args.input {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("wasmos run: cannot read --input {}: {e}; check the path", p.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let cache_dir = if args.no_cache { None } else { args.cache_dir.clone().or_else(default_cache_dir) };
    let sandbox = match Sandbox::new(SandboxConfig { max_concurrent_tasks: 1, cache_dir, ..Default::default() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wasmos run: {e}");
            return ExitCode::from(125);
        }
    };
    let argv0 = args
        .module
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.module.display().to_string());
    let request = RunRequest {
        name: argv0.clone(),
        args: std::iter::once(argv0).chain(args.args.iter().cloned()).collect(),
        env: args.env.clone(),
        limits: Limits {
            fuel: args.fuel,
            mem: args.mem,
            timeout: args.timeout,
            max_output: args.max_output,
            meter_fuel: args.meter_fuel,
        },
        stdin: if input.is_some() { Stdin::Closed } else { Stdin::Inherit },
        input: input.unwrap_or_default(),
        host_dirs: args.dirs.clone(),
        passthrough: !args.json,
        ..Default::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wasmos run: cannot start the async runtime: {e}");
            return ExitCode::from(125);
        }
    };
    let outcome = runtime.block_on(async {
        let control = TaskControl::new();
        let ctrl_c = control.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                ctrl_c.kill();
            }
        });
        sandbox.run_bytes(bytes, request, &control).await
    });
    // Do not wait for a guest blocked reading stdin on a worker thread.
    runtime.shutdown_background();

    if args.json {
        println!("{}", to_json(&outcome));
        return ExitCode::SUCCESS;
    }
    eprintln!("{}", summary(&outcome));
    ExitCode::from(outcome.kind.process_exit_code(outcome.exit_code) as u8)
}

/// The `--json` object (also the base of `wasmos submit --json`).
pub fn to_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "outcome": o.kind.as_str(),
        "exit_code": o.exit_code,
        "fuel_consumed": if o.fuel_metered { serde_json::json!(o.fuel_consumed) } else { serde_json::Value::Null },
        "cpu_time_ms": (o.cpu_time.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "peak_memory_bytes": o.peak_memory_bytes,
        "wall_time_ms": (o.wall_time.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "stdout": String::from_utf8_lossy(&o.stdout),
        "stderr": String::from_utf8_lossy(&o.stderr),
        "stdout_truncated": o.stdout_truncated,
        "stderr_truncated": o.stderr_truncated,
        "message": o.message,
    })
}

/// The one-line summary printed to stderr after a run (plus the message, if any).
pub fn summary(o: &Outcome) -> String {
    let exit = o.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
    let fuel = if o.fuel_metered { format!(" fuel={}", o.fuel_consumed) } else { String::new() };
    let mut line = format!(
        "wasmos: {} exit={exit}{fuel} cpu={:.3}ms peak_mem={} wall={:.3}ms",
        o.kind,
        o.cpu_time.as_secs_f64() * 1000.0,
        human_bytes(o.peak_memory_bytes),
        o.wall_time.as_secs_f64() * 1000.0
    );
    for (name, truncated) in [("stdout", o.stdout_truncated), ("stderr", o.stderr_truncated)] {
        if truncated {
            line.push_str(&format!(" ({name} truncated)"));
        }
    }
    if let Some(m) = &o.message
        && (o.kind != OutcomeKind::Failed || o.exit_code.is_none())
    {
        line.push_str("\n  ");
        line.push_str(&m.replace('\n', "\n  "));
    }
    line
}

fn human_bytes(b: u64) -> String {
    match b {
        _ if b >= 1 << 20 && !b.is_multiple_of(1 << 20) => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        _ if b >= 1 << 10 && !b.is_multiple_of(1 << 10) => format!("{:.1}KiB", b as f64 / 1024.0),
        _ => format_size(b),
    }
}
