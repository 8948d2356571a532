//! `wasmos tasks|agents|frameworks|logs|kill|pause|resume`: the Operator API
//! as tables (or JSON lines for scripts).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use wasmos_model::TaskState;
use wasmos_proto::v1;

use crate::client::{self, MasterArg, fail, res, rfc3339, rt, status_msg};
use crate::listing::{ListArgs, Listing};

fn state(s: &str) -> Result<TaskState, String> {
    s.parse()
}

#[derive(clap::Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// Only tasks in this state (staging, running, finished, failed, ...).
    #[arg(long, value_name = "S", value_parser = state)]
    pub state: Option<TaskState>,
    /// Only this framework's tasks.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
    /// Only tasks accounted to this role.
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// Only tasks placed on this agent.
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// Only tasks whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub name: Option<String>,
    /// At most this many rows (oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Rows fetched per request (the master caps it at 10,000).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub page_size: u32,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The task's id, or any unique prefix of it.
    pub task: String,
    /// Keep printing its output as it comes (asked of its agent every
    /// --interval while it runs), until it ends.
    #[arg(long, short)]
    pub follow: bool,
    /// With --follow: how often to ask.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = crate::args::duration)]
    pub interval: Duration,
    /// Print only its stderr (to stdout).
    #[arg(long)]
    pub stderr: bool,
    /// Only the last N lines of each stream.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

/// Most ids an ambiguous prefix lists.
const MAX_MATCHES: usize = 10;
/// Rows asked for per page when resolving a prefix.
const RESOLVE_PAGE: u32 = 1000;

/// The full id of the task `id` names: itself, or the one task whose id
/// starts with it. An ambiguous prefix lists (some of) its matches.
pub async fn resolve(op: &mut client::Operator, id: &str) -> Result<String, String> {
    match op.get_task(v1::GetTaskRequest { task_id: id.to_string() }).await {
        Ok(t) => return Ok(t.into_inner().task_id),
        Err(e) if e.code() != tonic::Code::NotFound => return Err(status_msg(&e)),
        Err(_) => {}
    }
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let req = v1::ListTasksRequest {
            id_prefix: id.to_string(),
            page_size: RESOLVE_PAGE,
            page_token: token,
            ..Default::default()
        };
        let r = op.list_tasks(req).await.map_err(|e| status_msg(&e))?.into_inner();
        found.extend(r.tasks.into_iter().map(|t| t.task_id));
        if found.len() > MAX_MATCHES || r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    match found.len() {
        0 => Err(format!("no task {id:?}; list tasks with `wasmos tasks`")),
        1 => Ok(found.remove(0)),
        n => {
            let more = if n > MAX_MATCHES { ", ..." } else { "" };
            found.truncate(MAX_MATCHES);
            Err(format!("task id prefix {id:?} is ambiguous: {}{more}; give more of it", found.join(", ")))
        }
    }
}

/// The last `n` lines of `b` (all of it without `n`).
fn tail(b: &[u8], n: Option<usize>) -> &[u8] {
    let Some(n) = n else { return b };
    let body = b.strip_suffix(b"\n").unwrap_or(b);
    let mut cut = 0;
    for (seen, (i, _)) in body.iter().enumerate().rev().filter(|(_, c)| **c == b'\n').enumerate() {
        if seen + 1 == n {
            cut = i + 1;
            break;
        }
    }
    if n == 0 { &b[b.len()..] } else { &b[cut..] }
}

#[derive(clap::Args, Debug)]
pub struct TaskArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The task's id, or any unique prefix of it.
    pub task: String,
}

fn task_json(t: &v1::TaskSummary) -> serde_json::Value {
    let o = t.outcome.as_ref();
    serde_json::json!({
        "task_id": t.task_id,
        "name": t.name,
        "framework": t.framework_id,
        "role": t.role,
        "agent_id": if t.agent_id.is_empty() { None } else { Some(&t.agent_id) },
        "state": wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()),
        "outcome": o.and_then(|o| wasmos_proto::outcome_kind_from_wire(o.kind)).map(|k| k.to_string()),
        "exit_code": o.and_then(|o| o.exit_code),
        "fuel_consumed": o.filter(|o| o.fuel_metered).map(|o| o.fuel_consumed),
        "cpu_time_ms": o.map(|o| o.cpu_time_ms),
        "peak_memory_bytes": o.map(|o| o.peak_memory_bytes),
        "attempt": t.attempt,
        "resources": res(&t.resources),
        "message": if t.message.is_empty() { None } else { Some(&t.message) },
        "submitted_at": rfc3339(t.submitted_at_ms),
        "started_at": rfc3339(t.started_at_ms),
        "finished_at": rfc3339(t.finished_at_ms),
        "healthy": t.healthy,
        "health_message": if t.health_message.is_empty() { None } else { Some(&t.health_message) },
    })
}

fn task_row(t: &v1::TaskSummary) -> Vec<String> {
    let o = t.outcome.as_ref();
    vec![
        t.task_id.clone(),
        t.name.clone(),
        t.framework_id.clone(),
        t.role.clone(),
        if t.agent_id.is_empty() { "-".into() } else { t.agent_id.clone() },
        wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default(),
        o.and_then(|o| wasmos_proto::outcome_kind_from_wire(o.kind)).map(|k| k.to_string()).unwrap_or("-".into()),
        o.and_then(|o| o.exit_code).map(|c| c.to_string()).unwrap_or("-".into()),
        rfc3339(t.finished_at_ms).unwrap_or("-".into()),
    ]
}

const TASKS: Listing<v1::TaskSummary> = Listing {
    cmd: "tasks",
    header: &["TASK", "NAME", "FRAMEWORK", "ROLE", "AGENT", "STATE", "OUTCOME", "EXIT", "FINISHED"],
    row: task_row,
    json: task_json,
};

pub fn tasks(args: TasksArgs) -> ExitCode {
    let req = v1::ListTasksRequest {
        state: args.state.map(|s| wasmos_proto::state_to_wire(s) as i32).unwrap_or(0),
        framework_id: args.framework.clone().unwrap_or_default(),
        role: args.role.clone().unwrap_or_default(),
        agent_id: args.agent.clone().unwrap_or_default(),
        name_prefix: args.name.clone().unwrap_or_default(),
        page_size: args.page_size,
        ..Default::default()
    };
    rt().block_on(TASKS.show_pages(&args.master, args.json, args.limit, |mut op, token| {
        let req = v1::ListTasksRequest { page_token: token, ..req.clone() };
        async move { op.list_tasks(req).await.map(|r| r.into_inner()).map(|r| (r.tasks, r.next_page_token)) }
    }))
}

fn agent_json(a: &v1::AgentSummary) -> serde_json::Value {
    let info = a.info.clone().unwrap_or_default();
    serde_json::json!({
        "agent_id": a.agent_id, "hostname": info.hostname, "resources": res(&info.resources),
        "allocated": res(&a.allocated), "status": a.status, "tasks": a.running_tasks,
        "attributes": info.attributes.iter().map(|x| format!("{}={}", x.key, x.value)).collect::<Vec<_>>(),
        "wasmtime": info.wasmtime_version, "target": info.target_triple,
        "registered_at": rfc3339(a.registered_at_ms),
        "tasks_live": a.tasks_live, "tasks_starting": a.tasks_starting,
        "slots_in_use": a.slots_in_use, "slots": info.task_slots,
        "cpu_cores": info.cpu_cores, "cpu_limit": info.cpu_limit, "cpu_waiting": a.cpu_waiting, "updates_dropped": a.updates_dropped,
        "mode": a.mode, "eligible": a.eligible, "drain_deadline": rfc3339(a.drain_deadline_ms),
    })
}

fn agent_row(a: &v1::AgentSummary) -> Vec<String> {
    let info = a.info.clone().unwrap_or_default();
    vec![
        a.agent_id.clone(),
        info.hostname,
        res(&info.resources),
        res(&a.allocated),
        a.running_tasks.to_string(),
        format!("{}/{}", a.slots_in_use, info.task_slots),
        if a.tasks_starting > 0 { a.tasks_starting.to_string() } else { "-".into() },
        if info.cpu_limit.is_empty() { "-".into() } else { format!("{}x{}", info.cpu_cores, info.cpu_limit) },
        a.status.clone(),
        info.wasmtime_version,
    ]
}

const AGENTS: Listing<v1::AgentSummary> = Listing {
    cmd: "agents",
    header: &["AGENT", "HOSTNAME", "RESOURCES", "ALLOCATED", "TASKS", "SLOTS", "STARTING", "CPU", "STATUS", "WASMTIME"],
    row: agent_row,
    json: agent_json,
};

pub fn agents(args: ListArgs) -> ExitCode {
    rt().block_on(AGENTS.show_pages(&args.master, args.json, None, |mut op, page_token| async move {
        let r = op.list_agents(v1::ListAgentsRequest { page_token, page_size: 0 }).await?.into_inner();
        Ok((r.agents, r.next_page_token))
    }))
}

fn framework_json(f: &v1::FrameworkSummary) -> serde_json::Value {
    serde_json::json!({
        "framework_id": f.framework_id, "name": f.name, "role": f.role,
        "allocated": res(&f.allocated), "active_tasks": f.active_tasks,
        "connected": f.connected, "hosted": f.hosted,
    })
}

fn framework_row(f: &v1::FrameworkSummary) -> Vec<String> {
    vec![
        f.framework_id.clone(),
        f.name.clone(),
        f.role.clone(),
        res(&f.allocated),
        f.active_tasks.to_string(),
        f.connected.to_string(),
        if f.hosted { "hosted".into() } else { "remote".into() },
    ]
}

const FRAMEWORKS: Listing<v1::FrameworkSummary> = Listing {
    cmd: "frameworks",
    header: &["FRAMEWORK", "NAME", "ROLE", "ALLOCATED", "ACTIVE", "CONNECTED", "KIND"],
    row: framework_row,
    json: framework_json,
};

pub fn frameworks(args: ListArgs) -> ExitCode {
    rt().block_on(FRAMEWORKS.show_pages(&args.master, args.json, None, |mut op, page_token| async move {
        let r = op.list_frameworks(v1::ListFrameworksRequest { page_token, page_size: 0 }).await?.into_inner();
        Ok((r.frameworks, r.next_page_token))
    }))
}

pub fn logs(args: LogsArgs) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("logs", e),
        };
        let mut op = client::operator(&ch);
        let id = match resolve(&mut op, &args.task).await {
            Ok(id) => id,
            Err(e) => return fail("logs", e),
        };
        if args.follow {
            return follow(&mut op, &id, &args).await;
        }
        let t = match op.get_task(v1::GetTaskRequest { task_id: id.clone() }).await {
            Ok(t) => t.into_inner(),
            Err(e) => return fail("logs", status_msg(&e)),
        };
        match &t.outcome {
            Some(o) if args.stderr => {
                let _ = std::io::stdout().write_all(tail(&o.stderr, args.tail));
            }
            Some(o) => {
                let _ = std::io::stdout().write_all(tail(&o.stdout, args.tail));
                let _ = std::io::stderr().write_all(tail(&o.stderr, args.tail));
                for (name, cut) in [("stdout", o.stdout_truncated), ("stderr", o.stderr_truncated)] {
                    if cut {
                        eprintln!("wasmos logs: {name} was truncated at the task's max_output");
                    }
                }
            }
            None if wasmos_proto::state_from_wire(t.state).is_some_and(|s| !s.is_terminal()) => {
                eprintln!(
                    "wasmos logs: task {} is {}; its whole output comes when it ends (--follow shows it as it comes)",
                    t.task_id,
                    wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default()
                );
            }
            None => eprintln!("wasmos logs: task {} ended without output: {}", t.task_id, t.message),
        }
        ExitCode::SUCCESS
    })
}

/// `logs --follow`: each stream's output as it comes, until the task ends.
async fn follow(op: &mut client::Operator, id: &str, args: &LogsArgs) -> ExitCode {
    let streams: &[bool] = if args.stderr { &[true] } else { &[false, true] };
    let mut offsets = [0u64; 2];
    // --tail applies to what is there when following starts (its first
    // answer, at most MAX_OUTPUT_CHUNK bytes).
    let mut first = [true; 2];
    loop {
        let mut running = false;
        for &stderr in streams {
            let req = v1::TaskOutputRequest {
                task_id: id.to_string(),
                stderr,
                offset: offsets[stderr as usize],
                max_bytes: 0,
            };
            match op.task_output(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let data = if first[stderr as usize] { tail(&r.data, args.tail) } else { &r.data[..] };
                    first[stderr as usize] = false;
                    let _ = if stderr && !args.stderr {
                        std::io::stderr().write_all(data)
                    } else {
                        let mut out = std::io::stdout();
                        out.write_all(data).and_then(|_| out.flush())
                    };
                    offsets[stderr as usize] = r.next_offset;
                    running |= r.running;
                    if !r.running && r.truncated {
                        let name = if stderr { "stderr" } else { "stdout" };
                        eprintln!("wasmos logs: {name} was truncated at the task's max_output");
                    }
                }
                // Its agent is slow or away: ask again.
                Err(e) if e.code() == tonic::Code::Unavailable => running = true,
                Err(e) => return fail("logs", status_msg(&e)),
            }
        }
        if !running {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// What `kill`, `pause` and `resume` ask the master to do to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAction {
    Kill,
    Pause,
    Resume,
}

impl TaskAction {
    /// The command's name, as in `wasmos kill: sent to task-1`.
    fn name(self) -> &'static str {
        match self {
            TaskAction::Kill => "kill",
            TaskAction::Pause => "pause",
            TaskAction::Resume => "resume",
        }
    }
}

pub fn action(args: TaskArgs, action: TaskAction) -> ExitCode {
    let name = action.name();
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail(name, e),
        };
        let mut op = client::operator(&ch);
        let id = match resolve(&mut op, &args.task).await {
            Ok(id) => id,
            Err(e) => return fail(name, e),
        };
        let req = v1::TaskActionRequest { task_id: id.clone() };
        let r = match action {
            TaskAction::Kill => op.kill_task(req).await,
            TaskAction::Pause => op.pause_task(req).await,
            TaskAction::Resume => op.resume_task(req).await,
        };
        match r {
            Ok(_) => {
                eprintln!("wasmos {name}: sent to {id}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(name, status_msg(&e)),
        }
    })
}

#[derive(clap::Args, Debug)]
pub struct TaskDetailArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The task's id, or any unique prefix of it.
    pub task: String,
    /// One JSON object (the `tasks --json` keys, its limits and its events).
    #[arg(long)]
    pub json: bool,
}

/// `wasmos task TASK`: spec, limits against use, placement, attempts and
/// the task's history.
pub fn detail(args: TaskDetailArgs) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("task", e),
        };
        let mut op = client::operator(&ch);
        let t = match resolve(&mut op, &args.task).await {
            Ok(id) => match op.get_task(v1::GetTaskRequest { task_id: id }).await {
                Ok(t) => t.into_inner(),
                Err(e) => return fail("task", status_msg(&e)),
            },
            Err(e) => return fail("task", e),
        };
        let limits = wasmos_proto::limits_from_wire(t.limits.as_ref());
        let o = t.outcome.as_ref();
        let events: Vec<(String, String, String, String)> = std::iter::once((
            rfc3339(t.submitted_at_ms).unwrap_or_default(),
            "submitted".to_string(),
            String::new(),
            String::new(),
        ))
        .chain(t.events.iter().map(|e| {
            let on = if e.agent_id.is_empty() { String::new() } else { format!("on {}", e.agent_id) };
            let message = match (e.message.is_empty(), on.is_empty()) {
                (true, _) => on,
                (false, true) => e.message.clone(),
                (false, false) => format!("{} ({on})", e.message),
            };
            (
                rfc3339(e.at_ms).unwrap_or_default(),
                wasmos_proto::state_from_wire(e.state).map(|s| s.to_string()).unwrap_or_default(),
                e.reason.clone(),
                message,
            )
        }))
        .collect();
        if args.json {
            let mut v = task_json(&t);
            v["limits"] = serde_json::json!({
                "fuel": limits.fuel, "mem_bytes": limits.mem, "timeout_ms": limits.timeout.as_millis() as u64,
                "max_output_bytes": limits.max_output, "meter_fuel": limits.meter_fuel,
            });
            v["args"] = serde_json::json!(t.args);
            v["events"] = serde_json::Value::Array(
                events
                    .iter()
                    .map(|(at, s, r, m)| serde_json::json!({"at": at, "state": s, "reason": r, "message": m}))
                    .collect(),
            );
            println!("{v}");
            return ExitCode::SUCCESS;
        }
        let state = wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default();
        let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
        println!("task        {}  ({state})", t.task_id);
        println!("name        {}", t.name);
        println!("framework   {}  role {}", t.framework_id, t.role);
        println!("agent       {}  attempt {}", dash(&t.agent_id), t.attempt);
        println!("module      {}", t.module_sha256);
        println!("resources   {}", res(&t.resources));
        if !t.args.is_empty() {
            println!("args        {}", t.args.join(" "));
        }
        if !t.env_keys.is_empty() {
            println!("env         {}", t.env_keys.join(", "));
        }
        if !t.message.is_empty() {
            println!("message     {}", t.message);
        }
        if let Some(h) = &t.health {
            let h = wasmos_proto::health_from_wire(h);
            let kind = match &h.kind {
                wasmos_model::HealthKind::Heartbeat => "heartbeat".to_string(),
                wasmos_model::HealthKind::Probe { module_sha256, .. } => {
                    format!("probe {}", &module_sha256[..12.min(module_sha256.len())])
                }
            };
            let verdict = match t.healthy {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "not checked yet",
            };
            println!(
                "health      {verdict}  ({kind} every {}, grace {}, {} failures kill it)",
                wasmos_model::format_duration(h.interval),
                wasmos_model::format_duration(h.grace),
                h.failures
            );
            if !t.health_message.is_empty() {
                println!("last check  {}", t.health_message);
            }
        }
        println!();
        println!("{:<12}{:>16}  {:>16}", "", "USED", "LIMIT");
        let fuel_limit = limits
            .fuel
            .map(|f| f.to_string())
            .unwrap_or_else(|| if limits.meter_fuel { "unlimited" } else { "not counted" }.into());
        let used = |f: &dyn Fn(&v1::Outcome) -> String| o.map(f).unwrap_or_else(|| "-".into());
        let cpus = wasmos_proto::resources_from_wire(t.resources.as_ref()).map(|r| r.cpus()).unwrap_or(0.0);
        let live_cpu = (t.live_cpu_ns > 0).then(|| format!("{:.3}s so far", t.live_cpu_ns as f64 / 1e9));
        let cpu_used = match (o, live_cpu) {
            (Some(o), _) => format!("{:.3}ms", o.cpu_time_ms),
            (None, Some(l)) => l,
            (None, None) => "-".into(),
        };
        println!("{:<12}{:>16}  {:>16}", "cpu time", cpu_used, format!("{cpus} cpus (share)"));
        let fuel_used = |o: &v1::Outcome| if o.fuel_metered { o.fuel_consumed.to_string() } else { "-".into() };
        println!("{:<12}{:>16}  {:>16}", "fuel", used(&fuel_used), fuel_limit);
        println!(
            "{:<12}{:>16}  {:>16}",
            "memory",
            used(&|o| human_bytes(o.peak_memory_bytes)),
            human_bytes(limits.mem)
        );
        println!(
            "{:<12}{:>16}  {:>16}",
            "wall time",
            used(&|o| format!("{:.3}ms", o.wall_time_ms)),
            wasmos_model::format_duration(limits.timeout)
        );
        if let Some(o) = o {
            let kind = wasmos_proto::outcome_kind_from_wire(o.kind).map(|k| k.to_string()).unwrap_or_default();
            let exit = o.exit_code.map(|c| format!(" exit={c}")).unwrap_or_default();
            println!();
            println!("outcome     {kind}{exit}");
        }
        println!();
        println!("{:<26}{:<12}{:<24}MESSAGE", "TIME", "STATE", "REASON");
        for (at, s, r, m) in events {
            println!("{at:<26}{s:<12}{:<24}{m}", dash(&r));
        }
        ExitCode::SUCCESS
    })
}

/// Bytes for people: `1.06 MiB`.
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.2} {}", units[u]) }
}
