//! `wasmos submit`: upload a module (unless the master has it), queue tasks in
//! the batch framework, optionally wait for their outcomes.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmos_model::{CPUS, Limits, MEM, OutcomeKind, Resources, Scalar};
use wasmos_proto::v1;

use crate::client::{self, MasterArg, status_msg};

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The module's signature (from `wasmos sign`), for a role that
    /// requires signed modules [default: MODULE.wasm.sig when it exists]
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Cores each task reserves (fractional).
    #[arg(long, value_name = "N", default_value_t = 0.1)]
    pub cpus: f64,
    /// Memory each task reserves; also its `mem` limit.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::args::size)]
    pub mem: u64,
    /// Fuel budget per task [default: none, and fuel is not counted]
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Count each task's fuel without a budget (identical work, identical
    /// fuel); costs about 2x on tight loops. Implied by --fuel.
    #[arg(long)]
    pub meter_fuel: bool,
    /// Wall-clock limit per task.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = crate::args::duration)]
    pub timeout: Duration,
    /// Bytes kept per output stream.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = crate::args::size)]
    pub max_output: u64,
    /// Environment variable for the task (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = crate::args::key_value)]
    pub env: Vec<(String, String)>,
    /// Task name (also argv[0]) [default: the module's file name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How many identical tasks to queue.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u32,
    /// Higher runs first; FIFO within a priority.
    #[arg(long, value_name = "P", default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Only run on agents with this attribute (repeatable).
    #[arg(long = "constraint", value_name = "ATTR=VALUE", value_parser = crate::args::key_value)]
    pub constraints: Vec<(String, String)>,
    /// The role the tasks are accounted to: its share, quota, reservations
    /// and signing keys apply (needs `submit:ROLE`) [default: batch]
    #[arg(long, value_name = "ROLE", conflicts_with = "framework")]
    pub role: Option<String>,
    /// Hand the job to this hosted framework (its scheduler's on-submit)
    /// instead of the built-in batch queue.
    #[arg(long, value_name = "NAME")]
    pub framework: Option<String>,
    /// A hint for the framework: the fuel one run is expected to use (SJF orders by it).
    #[arg(long, value_name = "N")]
    pub estimated_fuel: Option<u64>,
    /// Input bytes: `run`'s input for wasmos:task components, stdin for WASI commands.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Make the tasks movable mid-run (`wasmos agent drain --migrate`): the
    /// module (a WASI preview1 command that calls the `wasmos` `heartbeat`
    /// import) gets Binaryen's asyncify, which needs `wasm-opt` here; at a
    /// heartbeat its run can be captured and resumed on another agent.
    #[arg(long, conflicts_with_all = ["input", "framework", "health_probe"])]
    pub migratable: bool,
    /// While the task's agent is cut off from the master: `keep` (never
    /// replaced; UNREACHABLE until the agent is back), `stop-after DUR` (the
    /// agent stops it after DUR cut off, then it is LOST and retried), or
    /// `replace-after DUR` (LOST and retried elsewhere after DUR; when the
    /// agent returns the original is killed). Default: a batch task is LOST
    /// and retried as soon as its agent is declared gone.
    #[arg(long, value_name = "POLICY", value_parser = on_disconnect)]
    pub on_disconnect: Option<wasmos_model::OnDisconnect>,
    /// Wait for every task to end, then print the outcomes.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: one JSON object per task (the `wasmos run --json` keys plus
    /// task_id, agent_id, state); without: one {"task_id"} object per task.
    #[arg(long)]
    pub json: bool,
    #[arg(value_name = "MODULE.wasm")]
    pub module: PathBuf,
    /// Arguments for the task, after `--`.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// A health check for each task, run by its agent while it runs.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// Heartbeat check: the task must call `wasmos:task/context.heartbeat`
    /// (core modules: import `wasmos` `heartbeat`), or report progress, at
    /// least once per --health-interval.
    #[arg(long, conflicts_with = "health_probe", help_heading = "Health check")]
    pub health_heartbeat: bool,
    /// Probe check: this WASI command runs with read-only access to the
    /// task's sandbox directory (as /); healthy when it exits 0 within
    /// --health-timeout. Arguments with --health-probe-arg.
    #[arg(long, value_name = "PROBE.wasm", help_heading = "Health check")]
    pub health_probe: Option<PathBuf>,
    /// An argument for the probe (repeatable).
    #[arg(long = "health-probe-arg", value_name = "ARG", requires = "health_probe", help_heading = "Health check")]
    pub health_probe_args: Vec<String>,
    /// Time between two checks.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = crate::args::duration, help_heading = "Health check")]
    pub health_interval: Duration,
    /// A probe's wall-clock limit.
    #[arg(long, value_name = "DUR", default_value = "20s", value_parser = crate::args::duration, help_heading = "Health check")]
    pub health_timeout: Duration,
    /// Time after the start before the first check counts.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = crate::args::duration, help_heading = "Health check")]
    pub health_grace: Duration,
    /// Consecutive failed checks that kill the task (reason health_check_failed).
    #[arg(long, value_name = "N", default_value_t = 3, help_heading = "Health check")]
    pub health_failures: u32,
}

impl HealthArgs {
    /// The check, uploading the probe module if the master lacks it.
    pub async fn check(&self, ch: &wasmos_security::client::AuthChannel) -> Result<Option<v1::HealthCheck>, String> {
        let kind = match &self.health_probe {
            Some(p) => {
                let bytes = std::fs::read(p)
                    .map_err(|e| format!("cannot read --health-probe {}: {e}; check the path", p.display()))?;
                let sha = upload(ch, &bytes).await?;
                wasmos_model::HealthKind::Probe { module_sha256: sha, args: self.health_probe_args.clone() }
            }
            None if self.health_heartbeat => wasmos_model::HealthKind::Heartbeat,
            None => return Ok(None),
        };
        let h = wasmos_model::HealthCheck {
            interval: self.health_interval,
            timeout: self.health_timeout,
            grace: self.health_grace,
            failures: self.health_failures,
            kind,
        };
        h.validate()?;
        Ok(Some(wasmos_proto::health_to_wire(&h)))
    }
}

pub fn main(args: SubmitArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(submit(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmos submit: {e}");
            ExitCode::from(2)
        }
    }
}

/// Uploads `bytes` unless the master already has them; returns the hash.
pub async fn upload(ch: &wasmos_security::client::AuthChannel, bytes: &[u8]) -> Result<String, String> {
    let sha = hex::encode(Sha256::digest(bytes));
    let mut art = client::artifacts(ch);
    let has = art.has(v1::HasRequest { sha256: sha.clone() }).await.map_err(|e| status_msg(&e))?.into_inner();
    if has.present {
        return Ok(sha);
    }
    let chunks: Vec<v1::Chunk> = bytes
        .chunks(wasmos_proto::CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| v1::Chunk {
            sha256: if i == 0 { sha.clone() } else { String::new() },
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    let chunks = if chunks.is_empty() {
        vec![v1::Chunk { sha256: sha.clone(), data: vec![], ..Default::default() }]
    } else {
        chunks
    };
    art.upload(tokio_stream::iter(chunks)).await.map_err(|e| format!("upload refused: {}", status_msg(&e)))?;
    Ok(sha)
}

async fn submit(args: SubmitArgs) -> Result<ExitCode, String> {
    if !(args.cpus >= 0.0 && args.cpus.is_finite()) {
        return Err(format!("--cpus {} is not a non-negative number", args.cpus));
    }
    let bytes = std::fs::read(&args.module)
        .map_err(|e| format!("cannot read {}: {e}; check the path", args.module.display()))?;
    let bytes = if args.migratable { crate::migratable::make(&bytes)? } else { bytes };
    let input = match &args.input {
        Some(p) => std::fs::read(p).map_err(|e| format!("cannot read --input {}: {e}", p.display()))?,
        None => Vec::new(),
    };
    let ch = args.master.connect().await?;
    let health = args.health.check(&ch).await?;
    let sha = upload(&ch, &bytes).await?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.module.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "task".into())
    });
    let resources = Resources::new().with(CPUS, Scalar::from_f64(args.cpus)).with(MEM, Scalar::units(args.mem as i64));
    let limits = Limits {
        fuel: args.fuel,
        mem: args.mem,
        timeout: args.timeout,
        max_output: args.max_output,
        meter_fuel: args.meter_fuel,
    };
    let template = v1::TaskSpec {
        task_id: String::new(),
        name,
        module_sha256: sha,
        args: args.args.clone(),
        env: args.env.iter().cloned().collect(),
        resources: Some(wasmos_proto::resources_to_wire(&resources)),
        limits: Some(wasmos_proto::limits_to_wire(&limits)),
        files: vec![],
        sandbox_dir: false,
        input,
        attempt: 0,
        signature: String::new(), // sent once, in the request
        health,
        migratable: args.migratable,
        resume: Vec::new(),
        on_disconnect: args.on_disconnect.as_ref().map(|p| p.to_string()).unwrap_or_default(),
    };
    let framework = args.framework.clone().unwrap_or_default();
    let watch_fw = if framework.is_empty() { "batch".to_string() } else { String::new() };
    let mut op = client::operator(&ch);
    let resp = op
        .submit(v1::SubmitRequest {
            template: Some(template),
            count: args.count,
            priority: args.priority,
            constraints: args
                .constraints
                .iter()
                .map(|(k, v)| v1::Attribute { key: k.clone(), value: v.clone() })
                .collect(),
            max_attempts: 0,
            framework: framework.clone(),
            estimated_fuel: args.estimated_fuel,
            role: args.role.clone().unwrap_or_default(),
            signature: crate::sign::signature_for(&args.module, args.signature.as_deref())?,
        })
        .await
        .map_err(|e| format!("submit refused: {}", status_msg(&e)))?
        .into_inner();
    if !args.wait {
        for id in &resp.task_ids {
            if args.json {
                println!("{}", serde_json::json!({ "task_id": id }));
            } else {
                println!("{id}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }

    let ids: HashSet<String> = resp.task_ids.iter().cloned().collect();
    let total = ids.len();
    let finals = wait(&mut op, &ids, &watch_fw, resp.watch_seq, |n| {
        if total > 1 && !args.json {
            draw(n, total);
        }
    })
    .await?;
    if total > 1 && !args.json {
        draw(finals.len(), total);
        eprintln!();
    }
    let mut all_finished = true;
    let mut single_exit = 0;
    for id in &resp.task_ids {
        let Some(t) = finals.get(id) else { continue };
        let state = wasmos_proto::state_from_wire(t.state).map(|s| s.to_string()).unwrap_or_default();
        let outcome = t.outcome.as_ref().and_then(wasmos_proto::outcome_from_wire);
        if outcome.as_ref().is_none_or(|o| o.kind != OutcomeKind::Finished) {
            all_finished = false;
        }
        if args.json {
            let mut obj = match &outcome {
                Some(o) => crate::run::to_json(o),
                None => serde_json::json!({
                    "outcome": null, "exit_code": null, "fuel_consumed": null, "cpu_time_ms": 0.0, "peak_memory_bytes": 0,
                    "wall_time_ms": 0.0, "stdout": "", "stderr": "", "stdout_truncated": false,
                    "stderr_truncated": false, "message": if t.message.is_empty() { None } else { Some(t.message.clone()) },
                }),
            };
            obj["task_id"] = serde_json::json!(id);
            obj["agent_id"] = serde_json::json!(t.agent_id);
            obj["state"] = serde_json::json!(state);
            println!("{obj}");
        } else {
            match &outcome {
                Some(o) => {
                    if total == 1 {
                        let _ = std::io::stdout().write_all(&o.stdout);
                        let _ = std::io::stderr().write_all(&o.stderr);
                        single_exit = o.kind.process_exit_code(o.exit_code);
                    }
                    let summary = crate::run::summary(o).replacen("wasmos: ", "", 1);
                    println!("{id}  {}  {summary}", if t.agent_id.is_empty() { "-" } else { &t.agent_id });
                }
                None => {
                    single_exit = 125;
                    println!("{id}  {state}  {}", t.message);
                }
            }
        }
    }
    Ok(if args.json || total > 1 {
        if all_finished || args.json { ExitCode::SUCCESS } else { ExitCode::from(1) }
    } else {
        ExitCode::from(single_exit as u8)
    })
}

/// How a task ended, from a watch event or a `GetTask`.
#[derive(Debug, Clone)]
struct Final {
    agent_id: String,
    state: i32,
    outcome: Option<v1::Outcome>,
    message: String,
    /// The master may have queued it again: LOST, or ended by a drain.
    requeued: bool,
}

/// Whether an end may be followed by another run of the same task: LOST
/// (retried), or killed or captured by a drain (queued elsewhere).
fn requeues(reason: &str, state: i32) -> bool {
    state == v1::TaskState::TaskLost as i32
        || (state == v1::TaskState::TaskKilled as i32 && (reason == "agent_drained" || reason == "migrated"))
}

fn ended(state: i32) -> bool {
    wasmos_proto::state_from_wire(state).is_some_and(|s| s.is_terminal())
}

/// Waits until every task in `ids` ended, following the watch from `from`
/// and resuming after the last event seen whenever the stream breaks (a
/// lagging connection, a master restart). If the master no longer holds the
/// events needed (it restarted: its numbering starts after the old one's;
/// or this fell behind its ring), it asks for each task left once and
/// follows the watch again from where it stood before asking. A LOST task may
/// be retried: it counts as ended only once the master says it still is.
async fn wait(
    op: &mut client::Operator,
    ids: &HashSet<String>,
    framework: &str,
    from: u64,
    mut progress: impl FnMut(usize),
) -> Result<HashMap<String, Final>, String> {
    let mut finals: HashMap<String, Final> = HashMap::new();
    let mut last = from;
    let mut stream: Option<tonic::Streaming<v1::WatchEvent>> = None;
    let mut polling = false;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut backoff = Duration::from_millis(100);
    loop {
        while finals.len() < ids.len() {
            if !polling && stream.is_none() {
                let req = v1::WatchRequest { framework_id: framework.to_string(), from: Some(last) };
                match op.watch(req).await {
                    Ok(s) => {
                        stream = Some(s.into_inner());
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) if e.code() == tonic::Code::DataLoss => polling = true,
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if let Some(s) = &mut stream {
                match s.message().await {
                    Ok(Some(ev)) => {
                        last = last.max(ev.seq);
                        if let Some(v1::watch_event::Event::Task(st)) = ev.event
                            && ids.contains(&st.task_id)
                        {
                            if ended(st.state) {
                                let f = Final {
                                    agent_id: st.agent_id,
                                    state: st.state,
                                    outcome: st.outcome,
                                    message: st.message,
                                    requeued: requeues(&st.reason, st.state),
                                };
                                finals.insert(st.task_id, f);
                            } else {
                                // Runs again (a LOST task retried).
                                finals.remove(&st.task_id);
                            }
                        }
                    }
                    Err(e) if e.code() == tonic::Code::DataLoss => {
                        stream = None;
                        polling = true;
                    }
                    // Ended or broke: resume from the last event seen.
                    Ok(None) | Err(_) => stream = None,
                }
            } else {
                // The events are gone (the master restarted, or this fell
                // too far behind): note where the watch stands now, ask for
                // each task left, then follow the watch again from there.
                let now = op.list_tasks(v1::ListTasksRequest { page_size: 1, ..Default::default() }).await;
                let Ok(now) = now.map(|r| r.into_inner().watch_seq) else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                };
                let left: Vec<String> = ids.iter().filter(|i| !finals.contains_key(*i)).cloned().collect();
                for id in left {
                    let t = op.get_task(v1::GetTaskRequest { task_id: id.clone() }).await;
                    if let Ok(t) = t.map(|t| t.into_inner())
                        && ended(t.state)
                    {
                        let f = Final {
                            agent_id: t.agent_id,
                            state: t.state,
                            outcome: t.outcome,
                            message: t.message,
                            requeued: t.state == v1::TaskState::TaskLost as i32,
                        };
                        finals.insert(id, f);
                    }
                }
                last = now;
                polling = false;
            }
            if last_draw.elapsed() >= Duration::from_millis(100) {
                progress(finals.len());
                last_draw = Instant::now();
            }
        }
        // A LOST task, or one killed or captured by a drain, is final only
        // if the master still has it ended (not queued again).
        let lost: Vec<String> = finals.iter().filter(|(_, f)| f.requeued).map(|(id, _)| id.clone()).collect();
        let mut again = false;
        for id in lost {
            if let Ok(t) = op.get_task(v1::GetTaskRequest { task_id: id.clone() }).await.map(|t| t.into_inner())
                && !ended(t.state)
            {
                finals.remove(&id);
                again = true;
            }
        }
        if !again {
            return Ok(finals);
        }
    }
}

fn draw(done: usize, total: usize) {
    let width = 30;
    let filled = done * width / total.max(1);
    eprint!("\r[{}{}] {done}/{total} done", "#".repeat(filled), " ".repeat(width - filled));
    let _ = std::io::stderr().flush();
}

fn on_disconnect(s: &str) -> Result<wasmos_model::OnDisconnect, String> {
    wasmos_model::OnDisconnect::parse(s)
}
