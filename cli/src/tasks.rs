//! `wasmos tasks|agents|frameworks|logs|kill|pause|resume`: the Operator API
//! as tables (or JSON lines for scripts).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use wasmos_model::TaskState;
use wasmos_proto::v1;

use crate::client::{self, MasterArg, fail, res, rfc3339, rt, status_msg, table};

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
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub master: MasterArg,
    pub task: String,
    /// Wait for the task to end, then print its output.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(clap::Args, Debug)]
pub struct TaskArgs {
    #[command(flatten)]
    pub master: MasterArg,
    pub task: String,
}

pub fn task_json(t: &v1::TaskSummary) -> serde_json::Value {
    let o = t.outcome.as_ref();
    serde_json::json!({
        "task_id": t.task_id,
        "name": t.name,
        "framework": t.framework_id,
        "agent_id": if t.agent_id.is_empty() { None } else { Some(&t.agent_id) },
        "state": wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()),
        "outcome": o.and_then(|o| wasmos_proto::outcome_kind_from_wire(o.kind)).map(|k| k.to_string()),
        "exit_code": o.and_then(|o| o.exit_code),
        "fuel_consumed": o.map(|o| o.fuel_consumed),
        "peak_memory_bytes": o.map(|o| o.peak_memory_bytes),
        "attempt": t.attempt,
        "resources": res(&t.resources),
        "message": if t.message.is_empty() { None } else { Some(&t.message) },
        "submitted_at": rfc3339(t.submitted_at_ms),
        "started_at": rfc3339(t.started_at_ms),
        "finished_at": rfc3339(t.finished_at_ms),
    })
}

pub fn tasks(args: TasksArgs) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("tasks", e),
        };
        let req = v1::ListTasksRequest {
            state: args.state.map(|s| wasmos_proto::state_to_wire(s) as i32).unwrap_or(0),
            framework_id: args.framework.clone().unwrap_or_default(),
            limit: 0,
        };
        let list = match client::operator(&ch).list_tasks(req).await {
            Ok(l) => l.into_inner(),
            Err(e) => return fail("tasks", status_msg(&e)),
        };
        let mut out = std::io::stdout().lock();
        if args.json {
            for t in &list.tasks {
                let _ = writeln!(out, "{}", task_json(t));
            }
            return ExitCode::SUCCESS;
        }
        let mut rows = vec![
            ["TASK", "NAME", "FRAMEWORK", "AGENT", "STATE", "OUTCOME", "EXIT", "FINISHED"].map(String::from).to_vec(),
        ];
        for t in &list.tasks {
            let o = t.outcome.as_ref();
            rows.push(vec![
                t.task_id.clone(),
                t.name.clone(),
                t.framework_id.clone(),
                if t.agent_id.is_empty() { "-".into() } else { t.agent_id.clone() },
                wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default(),
                o.and_then(|o| wasmos_proto::outcome_kind_from_wire(o.kind))
                    .map(|k| k.to_string())
                    .unwrap_or("-".into()),
                o.and_then(|o| o.exit_code).map(|c| c.to_string()).unwrap_or("-".into()),
                rfc3339(t.finished_at_ms).unwrap_or("-".into()),
            ]);
        }
        let _ = out.write_all(table(&rows).as_bytes());
        ExitCode::SUCCESS
    })
}

pub fn agents(args: ListArgs) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("agents", e),
        };
        let list = match client::operator(&ch).list_agents(v1::ListAgentsRequest {}).await {
            Ok(l) => l.into_inner(),
            Err(e) => return fail("agents", status_msg(&e)),
        };
        if args.json {
            for a in &list.agents {
                let info = a.info.clone().unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({
                        "agent_id": a.agent_id, "hostname": info.hostname, "resources": res(&info.resources),
                        "allocated": res(&a.allocated), "status": a.status, "tasks": a.running_tasks,
                        "attributes": info.attributes.iter().map(|x| format!("{}={}", x.key, x.value)).collect::<Vec<_>>(),
                        "wasmtime": info.wasmtime_version, "target": info.target_triple,
                        "registered_at": rfc3339(a.registered_at_ms),
                    })
                );
            }
            return ExitCode::SUCCESS;
        }
        let mut rows = vec![["AGENT", "HOSTNAME", "RESOURCES", "ALLOCATED", "TASKS", "STATUS", "WASMTIME"].map(String::from).to_vec()];
        for a in &list.agents {
            let info = a.info.clone().unwrap_or_default();
            rows.push(vec![
                a.agent_id.clone(),
                info.hostname,
                res(&info.resources),
                res(&a.allocated),
                a.running_tasks.to_string(),
                a.status.clone(),
                info.wasmtime_version,
            ]);
        }
        print!("{}", table(&rows));
        ExitCode::SUCCESS
    })
}

pub fn frameworks(args: ListArgs) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("frameworks", e),
        };
        let list = match client::operator(&ch).list_frameworks(v1::ListFrameworksRequest {}).await {
            Ok(l) => l.into_inner(),
            Err(e) => return fail("frameworks", status_msg(&e)),
        };
        if args.json {
            for f in &list.frameworks {
                println!(
                    "{}",
                    serde_json::json!({
                        "framework_id": f.framework_id, "name": f.name, "role": f.role,
                        "allocated": res(&f.allocated), "active_tasks": f.active_tasks,
                        "connected": f.connected, "hosted": f.hosted,
                    })
                );
            }
            return ExitCode::SUCCESS;
        }
        let mut rows =
            vec![["FRAMEWORK", "NAME", "ROLE", "ALLOCATED", "ACTIVE", "CONNECTED", "KIND"].map(String::from).to_vec()];
        for f in &list.frameworks {
            rows.push(vec![
                f.framework_id.clone(),
                f.name.clone(),
                f.role.clone(),
                res(&f.allocated),
                f.active_tasks.to_string(),
                f.connected.to_string(),
                if f.hosted { "hosted".into() } else { "remote".into() },
            ]);
        }
        print!("{}", table(&rows));
        ExitCode::SUCCESS
    })
}

pub fn logs(args: LogsArgs) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("logs", e),
        };
        let mut op = client::operator(&ch);
        loop {
            let t = match op.get_task(v1::GetTaskRequest { task_id: args.task.clone() }).await {
                Ok(t) => t.into_inner(),
                Err(e) => return fail("logs", status_msg(&e)),
            };
            let terminal = wasmos_proto::state_from_wire(t.state).is_some_and(|s| s.is_terminal());
            if terminal || !args.follow {
                match &t.outcome {
                    Some(o) => {
                        let _ = std::io::stdout().write_all(&o.stdout);
                        let _ = std::io::stderr().write_all(&o.stderr);
                        for (name, cut) in [("stdout", o.stdout_truncated), ("stderr", o.stderr_truncated)] {
                            if cut {
                                eprintln!("wasmos logs: {name} was truncated at the task's max_output");
                            }
                        }
                    }
                    None if !terminal => {
                        eprintln!(
                            "wasmos logs: task {} is {}; output is available when it ends (use --follow)",
                            t.task_id,
                            wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default()
                        );
                    }
                    None => eprintln!("wasmos logs: task {} ended without output: {}", t.task_id, t.message),
                }
                return ExitCode::SUCCESS;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

pub fn action(args: TaskArgs, which: &str) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail(which, e),
        };
        let mut op = client::operator(&ch);
        let req = v1::TaskActionRequest { task_id: args.task.clone() };
        let r = match which {
            "kill" => op.kill_task(req).await,
            "pause" => op.pause_task(req).await,
            _ => op.resume_task(req).await,
        };
        match r {
            Ok(_) => {
                eprintln!("wasmos {which}: sent to {}", args.task);
                ExitCode::SUCCESS
            }
            Err(e) => fail(which, status_msg(&e)),
        }
    })
}
