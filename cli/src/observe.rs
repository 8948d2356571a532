//! Looking at a running cluster from the shell: `wasmos metrics` (what
//! Prometheus scrapes), and `wasmos completion` for the shells.

use std::io::Write;
use std::process::ExitCode;

use crate::client::MasterArg;

/// Most bytes of metrics read.
const MAX_METRICS: usize = 64 << 20;

#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub master: MasterArg,
}

/// Prints the master's `/metrics` (Prometheus text format).
pub fn metrics(args: MetricsArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let got = args.master.target().and_then(|t| rt.block_on(t.http_get("/metrics", MAX_METRICS)));
    match got {
        Ok((200, body)) => {
            let _ = std::io::stdout().write_all(&body);
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            let text = String::from_utf8_lossy(&body);
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| text.trim().to_string());
            eprintln!("wasmos metrics: the master answered {code}: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("wasmos metrics: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// How often to refresh.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = crate::args::duration)]
    pub interval: std::time::Duration,
    /// Rows of tasks shown (the busiest first).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Print one frame and exit (for scripts).
    #[arg(long)]
    pub once: bool,
}

/// Running tasks read for one frame (pages of the Operator API).
const TOP_MAX_TASKS: usize = 10_000;

/// `wasmos top`: running tasks by fuel per second, with memory against its
/// limit and wall time against its timeout, and the agents; refreshed.
pub fn top(args: TopArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("wasmos top: {e}");
                return ExitCode::from(1);
            }
        };
        let mut op = crate::client::operator(&ch);
        loop {
            let frame = match top_frame(&mut op, args.limit).await {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("wasmos top: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut out = std::io::stdout();
            if !args.once {
                // Home and clear, as top(1) does.
                let _ = out.write_all(b"\x1b[H\x1b[2J");
            }
            let _ = out.write_all(frame.as_bytes());
            let _ = out.flush();
            if args.once {
                return ExitCode::SUCCESS;
            }
            tokio::select! {
                _ = tokio::time::sleep(args.interval) => {}
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            }
        }
    })
}

async fn top_frame(op: &mut crate::client::Operator, limit: usize) -> Result<String, String> {
    use std::fmt::Write as _;
    use wasmos_proto::v1;
    let msg = |e: tonic::Status| crate::client::status_msg(&e);
    let o = op.overview(v1::OverviewRequest {}).await.map_err(msg)?.into_inner();
    let mut tasks = Vec::new();
    for state in [v1::TaskState::TaskRunning, v1::TaskState::TaskPaused, v1::TaskState::TaskStarting] {
        let mut token = String::new();
        loop {
            let req =
                v1::ListTasksRequest { state: state as i32, page_size: 1000, page_token: token, ..Default::default() };
            let r = op.list_tasks(req).await.map_err(msg)?.into_inner();
            tasks.extend(r.tasks);
            if r.next_page_token.is_empty() || tasks.len() >= TOP_MAX_TASKS {
                break;
            }
            token = r.next_page_token;
        }
    }
    tasks.sort_by(|a, b| {
        b.cpu_cores
            .total_cmp(&a.cpu_cores)
            .then(b.fuel_per_sec.total_cmp(&a.fuel_per_sec))
            .then(a.task_id.cmp(&b.task_id))
    });
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let res = |r: &Option<v1::Resources>| {
        let r = wasmos_proto::resources_from_wire(r.as_ref()).unwrap_or_default();
        if r.is_empty() { "-".to_string() } else { r.to_string() }
    };
    let mut s = String::new();
    let n = |k: &str| o.tasks_by_state.get(k).copied().unwrap_or(0);
    let _ = writeln!(
        s,
        "wasmos top  {}  agents {} active, {} disconnected  tasks {} running, {} starting, {} paused, {} queued  allocated {} of {}",
        o.cluster,
        o.agents_active,
        o.agents_disconnected,
        n("running"),
        n("starting"),
        n("paused"),
        n("staging"),
        res(&o.allocated),
        res(&o.total)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<22} {:<16} {:<16} {:>6} {:>9} {:>12} {:>21} {:>17} {:<8}",
        "TASK", "NAME", "AGENT", "CPU%", "CPU", "FUEL/S", "MEM/LIMIT", "WALL/TIMEOUT", "STATE"
    );
    for t in tasks.iter().take(limit) {
        let l = wasmos_proto::limits_from_wire(t.limits.as_ref());
        let wall = if t.started_at_ms > 0 {
            std::time::Duration::from_millis((now - t.started_at_ms).max(0) as u64)
        } else {
            std::time::Duration::ZERO
        };
        let state = wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<22} {:<16} {:<16} {:>6} {:>9} {:>12} {:>21} {:>17} {:<8}",
            t.task_id,
            clip(&t.name, 16),
            clip(&t.agent_id, 16),
            format!("{:.0}", t.cpu_cores * 100.0),
            format!("{:.1}s", t.live_cpu_ns as f64 / 1e9),
            if t.live_fuel > 0 { si(t.fuel_per_sec) } else { "-".to_string() },
            format!("{}/{}", wasmos_model::format_size(round_kib(t.live_mem_bytes)), wasmos_model::format_size(l.mem)),
            format!(
                "{}/{}",
                wasmos_model::format_duration(std::time::Duration::from_secs(wall.as_secs())),
                wasmos_model::format_duration(l.timeout)
            ),
            state
        );
    }
    if tasks.len() > limit {
        let _ = writeln!(s, "... and {} more", tasks.len() - limit);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<22} {:<8} {:>6} {:>26} {:>26}", "AGENT", "STATUS", "TASKS", "ALLOCATED", "RESOURCES");
    let mut token = String::new();
    loop {
        let r = op
            .list_agents(v1::ListAgentsRequest { page_token: token, ..Default::default() })
            .await
            .map_err(msg)?
            .into_inner();
        for a in &r.agents {
            let info = a.info.clone().unwrap_or_default();
            let _ = writeln!(
                s,
                "{:<22} {:<8} {:>6} {:>26} {:>26}",
                a.agent_id,
                a.status,
                a.running_tasks,
                res(&a.allocated),
                res(&info.resources)
            );
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    Ok(s)
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).chain(['…']).collect() }
}

/// 1234567 as 1.23M.
fn si(v: f64) -> String {
    match v {
        v if v >= 1e12 => format!("{:.2}T", v / 1e12),
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Memory shown in whole KiB (so sizes print short).
fn round_kib(b: u64) -> u64 {
    b / 1024 * 1024
}

#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub master: MasterArg,
}

/// Prints where the dashboard is and the token to log in with (the one
/// this client uses: `--token`, `WASMOS_TOKEN` or the client config).
pub fn dashboard(args: DashboardArgs) -> ExitCode {
    let t = match args.master.target() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wasmos dashboard: {e}");
            return ExitCode::from(2);
        }
    };
    println!("dashboard: {}/", t.url.trim_end_matches('/'));
    match &t.token {
        Some(tok) => println!("log in with the token: {tok}"),
        None => println!("log in with a token that may view something (`wasmos token create NAME --grant view:*`)"),
    }
    if t.url.starts_with("https://") {
        println!(
            "the browser will ask about the cluster's own certificate: accept it, or trust the CA (the master's STATE_DIR/tls/ca.pem)"
        );
    }
    ExitCode::SUCCESS
}

#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// Prints a completion script: `wasmos completion bash > /etc/bash_completion.d/wasmos`,
/// `wasmos completion zsh > "${fpath[1]}/_wasmos"`, `wasmos completion fish > ~/.config/fish/completions/wasmos.fish`.
pub fn completion(args: CompletionArgs, cmd: &mut clap::Command) -> ExitCode {
    clap_complete::generate(args.shell, cmd, "wasmos", &mut std::io::stdout());
    ExitCode::SUCCESS
}
