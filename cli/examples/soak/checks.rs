//! The soak's end checks: drain, every acknowledged task ended as its kind
//! must, and the remote framework saw its own tasks end.

use super::*;

/// Waits until no acknowledged task is left in a non-terminal state and the
/// remote framework saw every task it launched end.
pub async fn drain(url: &str, load: &Load, remote: &Remote) -> Result<(), String> {
    let t0 = Instant::now();
    let open_states = [
        TaskState::Staging,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Paused,
        TaskState::Killing,
        TaskState::Unreachable,
    ];
    let mut last_report = Instant::now();
    loop {
        let ch = connect(url).await;
        let mut open = 0usize;
        let mut ok = true;
        for st in open_states {
            let req = v1::ListTasksRequest { state: wasmos_proto::state_to_wire(st) as i32, ..Default::default() };
            let mut tasks = Vec::new();
            ok &= common::list_pages(&ch, req, |t| tasks.push(t.task_id)).await.is_ok();
            let ledger = load.ledger.lock().unwrap();
            open += tasks.iter().filter(|id| ledger.expected.contains_key(*id)).count();
        }
        let remote_open = remote.launched().saturating_sub(remote.ended());
        if ok && open == 0 && remote_open == 0 {
            println!("soak: drained in {:.1?}", t0.elapsed());
            return Ok(());
        }
        if t0.elapsed() > DRAIN_TIMEOUT {
            return Err(format!(
                "{open} acknowledged task(s) still not ended and {remote_open} remote one(s) not seen ending {:?} after the load stopped",
                DRAIN_TIMEOUT
            ));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("soak: draining: {open} task(s) not ended yet, {remote_open} remote");
            last_report = Instant::now();
            // As a framework should now and then: ask about what it has not
            // seen end (a refused launch, an update missed across a failover).
            if remote_open > 0 {
                remote.reconcile.notify_one();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the final listing showed.
#[derive(Default)]
pub struct Ends {
    /// Every listed task's state, to compare with the registry file.
    pub api: BTreeMap<String, String>,
    /// When each listed task ended (ms since the epoch; 0: not ended).
    pub ended_at_ms: HashMap<String, i64>,
    /// Tasks run more than once (attempt > 1).
    pub attempts: HashMap<String, u32>,
    /// How the acknowledged tasks of each kind ended.
    pub by_kind: BTreeMap<Kind, BTreeMap<String, u64>>,
}

/// The master's `--task-history` from the soak's master arguments, in ms
/// (the master's default, a week, when not given).
pub fn task_history_ms(master_args: &[String]) -> i64 {
    let given = master_args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--task-history") {
        Some(rest) if rest.starts_with('=') => Some(rest[1..].to_string()),
        Some("") => master_args.get(i + 1).cloned(),
        _ => None,
    });
    given.and_then(|v| wasmos_model::parse_duration(&v).ok()).map_or(7 * 86_400_000, |d| d.as_millis() as i64)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Most tasks looked up one by one (GetTask) when the listing lacks them.
const MAX_GET_TASK: usize = 1000;

/// Every acknowledged task ended as its kind must: from the final listing
/// (walking pages), else GetTask, else its last terminal event on the watch.
/// Failures are grouped (kind and problem, a count, a few ids).
pub async fn check_tasks(url: &str, load: &Load, history: &Mutex<History>, failures: &mut Vec<String>) -> Ends {
    let (mut expected, duplicates) = {
        let mut ledger = load.ledger.lock().unwrap();
        (std::mem::take(&mut ledger.expected), ledger.duplicates.clone())
    };
    if duplicates.0 > 0 {
        failures.push(format!(
            "{} task id(s) acknowledged twice, by two different submits, e.g. {}",
            duplicates.0,
            duplicates.1.join(", ")
        ));
    }
    let mut ends = Ends::default();
    let mut problems = Problems::default();
    let ch = connect(url).await;
    let mut listed = Vec::new();
    if let Err(e) = common::list_pages(&ch, v1::ListTasksRequest::default(), |t| listed.push(t)).await {
        failures.push(format!("the final listing failed: {e}"));
    }
    for t in listed {
        ends.api.insert(t.task_id.clone(), common::state_name(t.state));
        ends.ended_at_ms.insert(t.task_id.clone(), t.finished_at_ms);
        if t.attempt > 1 {
            ends.attempts.insert(t.task_id.clone(), t.attempt);
        }
        if let Some(kind) = expected.remove(&t.task_id) {
            let end = End { state: t.state, outcome: t.outcome.as_ref().map_or(0, |o| o.kind), attempt: t.attempt };
            ends.judge(&mut problems, kind, &t.task_id, end, "");
        }
    }
    let mut left: Vec<(String, Kind)> = expected.into_iter().collect();
    left.sort();
    for (i, (id, kind)) in left.into_iter().enumerate() {
        if i < MAX_GET_TASK
            && let Ok(t) = op(&ch).get_task(v1::GetTaskRequest { task_id: id.clone() }).await
        {
            let t = t.into_inner();
            let end = End { state: t.state, outcome: t.outcome.as_ref().map_or(0, |o| o.kind), attempt: t.attempt };
            ends.judge(&mut problems, kind, &id, end, " (from GetTask)");
            continue;
        }
        let seen = history.lock().unwrap().last_end(&id);
        match seen {
            Some((state, outcome)) => {
                let end = End { state, outcome, attempt: 0 };
                ends.judge(&mut problems, kind, &id, end, " (not listed; its last event on the watch)");
            }
            None => problems.add(format!("{} acknowledged but missing (not listed, no end seen)", kind.label()), id),
        }
    }
    for (problem, (n, ids)) in problems.0 {
        failures.push(format!("{n} task(s): {problem}; e.g. {}", ids.join(", ")));
    }
    ends
}

/// How a task ended (wire values).
struct End {
    state: i32,
    outcome: i32,
    attempt: u32,
}

/// Failures by kind of problem: how many, and the first few task ids.
#[derive(Default)]
struct Problems(BTreeMap<String, (u64, Vec<String>)>);

impl Problems {
    fn add(&mut self, problem: String, id: String) {
        let p = self.0.entry(problem).or_default();
        p.0 += 1;
        if p.1.len() < 3 {
            p.1.push(id);
        }
    }
}

impl Ends {
    /// Counts how a `kind` task ended; a problem unless the kind accepts it.
    fn judge(&mut self, problems: &mut Problems, kind: Kind, id: &str, end: End, how: &str) {
        let state = common::state_name(end.state);
        *self.by_kind.entry(kind).or_default().entry(state.clone()).or_default() += 1;
        let outcome = wasmos_proto::outcome_kind_from_wire(end.outcome);
        if !kind.accepts(wasmos_proto::state_from_wire(end.state), outcome) {
            let outcome = outcome.map(|o| o.to_string()).unwrap_or_else(|| "-".into());
            problems.add(
                format!("{} ended as {state} (outcome {outcome}){how}", kind.label()),
                format!("{id} (attempt {})", end.attempt),
            );
        }
    }
}

/// The remote framework saw every task it launched end, as FINISHED, or as
/// LOST (its agent died; a remote framework retries itself, this one does
/// not) or DROPPED (launched on an offer the restarted master no longer knew).
pub fn check_remote(remote: &Remote, failures: &mut Vec<String>) {
    let ended = remote.ended.lock().unwrap();
    let (mut missing, mut bad) = (Vec::new(), Vec::new());
    for i in 1..=remote.launched() {
        let id = format!("remote-{i}");
        match ended.get(&id).map(|s| wasmos_proto::state_from_wire(*s)) {
            None => missing.push(id),
            Some(Some(TaskState::Finished | TaskState::Lost | TaskState::Dropped)) => {}
            Some(other) => bad.push(format!("{id} ({other:?})")),
        }
    }
    if !missing.is_empty() {
        failures.push(format!(
            "remote framework never saw {} of its tasks end, e.g. {}",
            missing.len(),
            missing[..missing.len().min(3)].join(", ")
        ));
    }
    if !bad.is_empty() {
        failures.push(format!("{} remote task(s) ended badly, e.g. {}", bad.len(), bad[..bad.len().min(3)].join(", ")));
    }
    let unknown = remote.unknown_after_accept.lock().unwrap();
    if !unknown.is_empty() {
        failures.push(format!(
            "{} remote task(s) whose Accept the master answered OK were unknown to it later, e.g. {}",
            unknown.len(),
            unknown[..unknown.len().min(3)].join(", ")
        ));
    }
}

/// Watch resumptions across a master restart, and gaps, this many seconds
/// apart at most are reconciled once.
const RECONCILE_POLL: Duration = Duration::from_secs(1);
/// GetTask calls in flight at once while reconciling.
const RECONCILE_PARALLEL: usize = 16;

/// After each master restart (or gap) the watch resumed across: asks for
/// every acknowledged task not yet seen ending (GetTask), as a watching
/// client must. The old master may have committed an end and died before
/// its event went out; the history drops such a task after --task-history,
/// and by the end of a long run nothing would show how it ended. Runs until
/// aborted; returns nothing, counts into `learnt`.
pub async fn reconcile_after_restarts(
    url: String,
    watch: Arc<common::WatchStats>,
    history: Arc<Mutex<History>>,
    learnt: Arc<AtomicU64>,
) {
    let breaks = || watch.restarts.load(Ordering::Relaxed) + watch.gaps.load(Ordering::Relaxed);
    let mut seen = breaks();
    loop {
        tokio::time::sleep(RECONCILE_POLL).await;
        let now = breaks();
        if now == seen {
            continue;
        }
        seen = now;
        let open = history.lock().unwrap().open();
        let n = reconcile(&url, open, &history).await;
        learnt.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            println!(
                "soak: after the watch resumed across a restart, {n} acknowledged task end(s) it had missed learnt by GetTask"
            );
        }
    }
}

/// GetTask for each of `ids`; the terminal ones go into the history as
/// learnt. Returns how many.
async fn reconcile(url: &str, ids: Vec<String>, history: &Arc<Mutex<History>>) -> u64 {
    let ch = connect(url).await;
    let chunk = ids.len().div_ceil(RECONCILE_PARALLEL).max(1);
    let mut workers = Vec::new();
    for part in ids.chunks(chunk).map(<[String]>::to_vec) {
        let (ch, history) = (ch.clone(), history.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            for id in part {
                let Ok(t) = op(&ch).get_task(v1::GetTaskRequest { task_id: id.clone() }).await else { continue };
                let t = t.into_inner();
                if common::is_terminal(t.state) {
                    history.lock().unwrap().learnt(&id, t.state, t.outcome.as_ref().map_or(0, |o| o.kind));
                    n += 1;
                }
            }
            n
        }));
    }
    let mut n = 0;
    for w in workers {
        n += w.await.unwrap_or(0);
    }
    n
}
