//! Runs launched tasks in the sandbox and keeps the table of tasks running
//! (or paused) here, which kill, pause and resume act on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use wasmos_model::{OutcomeKind, TaskId};
use wasmos_proto::v1;
use wasmos_sandbox::{InputFile, RunRequest, Sandbox, SandboxDirSpec, TaskControl};

use crate::Agent;

struct Live {
    control: TaskControl,
    framework: String,
    paused: bool,
    /// `--on-disconnect stop-after`: stop it once cut off this long.
    stop_after: Option<std::time::Duration>,
    /// Stopped because the agent was cut off (reported LOST, not KILLED).
    stopped_cut_off: bool,
    /// Which run of the task this is (0: a master that does not say).
    attempt: u32,
}

/// What [`Executor::enter`] found.
pub(crate) enum Enter {
    /// Entered: run it with this control.
    New(TaskControl),
    /// This very run is here already (a launch resent across a failover).
    Duplicate,
    /// An older run of the task is still here (the master gave it up while
    /// the agent was cut off, and launched the next attempt here): it was
    /// told to stop; enter again once it has left.
    Older,
}

pub(crate) struct Executor {
    sandbox: Sandbox,
    /// Tasks running (or paused) here, by id.
    live: Mutex<HashMap<String, Live>>,
    /// Fuel used by the tasks that ended here, and how many ended.
    fuel_consumed: std::sync::atomic::AtomicU64,
    tasks_ended: std::sync::atomic::AtomicU64,
    cpu_ns: std::sync::atomic::AtomicU64,
    /// Launches about to run that have not started yet, per lane (plain,
    /// metered): those ahead of a launch take the free slots before it.
    unstarted: [std::sync::atomic::AtomicUsize; 2],
}

/// A launch counted in `Executor::unstarted` until it starts or ends.
struct Unstarted<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl Unstarted<'_> {
    fn started(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for Unstarted<'_> {
    fn drop(&mut self) {
        self.started();
    }
}

impl Executor {
    pub fn new(sandbox: Sandbox) -> Executor {
        Executor {
            sandbox,
            live: Mutex::new(HashMap::new()),
            fuel_consumed: 0.into(),
            tasks_ended: 0.into(),
            cpu_ns: 0.into(),
            unstarted: Default::default(),
        }
    }

    pub(crate) fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a launched task in the table (see [`Enter`]).
    pub fn enter(&self, id: &str, framework: &str, stop_after: Option<std::time::Duration>, attempt: u32) -> Enter {
        let mut live = self.live();
        if let Some(l) = live.get(id) {
            if l.attempt != 0 && attempt > l.attempt {
                l.control.kill();
                return Enter::Older;
            }
            return Enter::Duplicate;
        }
        let control = TaskControl::new();
        let entry = Live {
            control: control.clone(),
            framework: framework.to_string(),
            paused: false,
            stop_after,
            stopped_cut_off: false,
            attempt,
        };
        live.insert(id.to_string(), entry);
        Enter::New(control)
    }

    /// The attempt of the run of `id` here (0: none, or not said).
    pub fn attempt_of(&self, id: &str) -> u32 {
        self.live().get(id).map_or(0, |l| l.attempt)
    }

    /// Running tasks' use so far, for the heartbeat (at most `max` of them).
    pub fn usage(&self, max: usize) -> Vec<v1::TaskUsage> {
        self.live()
            .iter()
            .take(max)
            .map(|(id, l)| v1::TaskUsage {
                task_id: id.clone(),
                fuel_used: l.control.fuel_used(),
                mem_bytes: l.control.memory(),
                cpu_ns: l.control.cpu_time().as_nanos() as u64,
                started: l.control.has_started(),
            })
            .collect()
    }

    /// A live task's output from `offset` on; None if it does not run here.
    fn tail(&self, id: &str, stderr: bool, offset: u64, max: u32) -> Option<(Vec<u8>, usize)> {
        let stream = if stderr { wasmos_sandbox::Stream::Stderr } else { wasmos_sandbox::Stream::Stdout };
        self.live().get(id).map(|l| l.control.output(stream, offset as usize, max as usize))
    }

    /// What the agent reports with each heartbeat.
    pub fn stats(&self) -> v1::AgentStats {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut running, mut paused, mut starting, mut mem) = (0, 0, 0, 0);
        for l in self.live().values() {
            if l.paused {
                paused += 1;
            } else if l.control.has_started() {
                running += 1;
            } else {
                starting += 1;
            }
            mem += l.control.memory();
        }
        let c = self.sandbox.cache_stats();
        let slots = self.sandbox.slot_stats();
        v1::AgentStats {
            tasks_running: running,
            tasks_paused: paused,
            tasks_starting: starting,
            slots_in_use: slots.in_use,
            slots: slots.capacity,
            cpu_waiting: slots.cpu_waiting,
            cpu_ns: self.cpu_ns.load(Relaxed),
            mem_used_bytes: mem,
            module_cache_memory_hits: c.memory_hits,
            module_cache_disk_hits: c.disk_hits,
            module_compiles: c.compiles,
            module_cache_evictions: c.evictions,
            fuel_consumed: self.fuel_consumed.load(Relaxed),
            tasks_ended: self.tasks_ended.load(Relaxed),
            updates_dropped: 0,
        }
    }

    fn forget(&self, id: &str) {
        self.live().remove(id);
    }

    /// Marks a live task paused or not and returns its control and framework.
    fn with_live(&self, id: &str, paused: Option<bool>) -> Option<(TaskControl, String)> {
        self.live().get_mut(id).map(|l| {
            if let Some(p) = paused {
                l.paused = p;
            }
            (l.control.clone(), l.framework.clone())
        })
    }

    /// The tasks running here, as registration reports them.
    pub fn live_statuses(&self, agent_id: &str) -> Vec<v1::TaskStatus> {
        self.live()
            .iter()
            .map(|(id, l)| v1::TaskStatus {
                task_id: id.clone(),
                framework_id: l.framework.clone(),
                agent_id: agent_id.to_string(),
                state: live_state(l.paused, l.control.has_started()) as i32,
                attempt: l.attempt,
                ..Default::default()
            })
            .collect()
    }

    /// Calls `f` with those of `tasks` not running here, holding the table's
    /// lock throughout. A launch enters the table before it records itself in
    /// the checkpoint, so a checkpoint change made in `f` for a task cannot
    /// undo the record of a launch of that task that `f` did not see.
    pub fn unless_live(&self, mut tasks: Vec<String>, f: impl FnOnce(&[String])) {
        let live = self.live();
        tasks.retain(|t| !live.contains_key(t));
        f(&tasks);
    }

    /// Stops the tasks whose `stop-after` the agent has now been cut off
    /// for; returns how many it stopped.
    pub fn stop_cut_off(&self, cut_off_for: std::time::Duration) -> usize {
        let mut n = 0;
        for l in self.live().values_mut() {
            if !l.stopped_cut_off && l.stop_after.is_some_and(|d| cut_off_for >= d) {
                l.stopped_cut_off = true;
                l.control.kill();
                n += 1;
            }
        }
        n
    }

    fn was_stopped_cut_off(&self, id: &str) -> bool {
        self.live().get(id).is_some_and(|l| l.stopped_cut_off)
    }

    pub fn kill_all(&self) {
        for l in self.live().values() {
            l.control.kill();
        }
    }
}

/// Carries out one command from the master.
pub(crate) fn handle(agent: &Arc<Agent>, cmd: v1::AgentCommand) {
    use v1::agent_command::Command;
    let ex = &agent.executor;
    match cmd.command {
        Some(Command::Launch(l)) => {
            for spec in l.tasks {
                if TaskId::new(spec.task_id.clone()).is_err() {
                    continue;
                }
                let stop_after = match wasmos_model::OnDisconnect::parse_lenient(&spec.on_disconnect) {
                    wasmos_model::OnDisconnect::StopAfter(d) => Some(d),
                    _ => None,
                };
                match ex.enter(&spec.task_id, &l.framework_id, stop_after, spec.attempt) {
                    Enter::New(control) => {
                        if let Some(cp) = &agent.checkpoint {
                            cp.launched(&spec.task_id, &l.framework_id);
                        }
                        tokio::spawn(run_task(agent.clone(), l.framework_id.clone(), spec, control));
                    }
                    Enter::Duplicate => {}
                    Enter::Older => {
                        tokio::spawn(launch_after_older(agent.clone(), l.framework_id.clone(), spec, stop_after));
                    }
                }
            }
        }
        Some(Command::Kill(k)) => {
            // A kill that names an attempt is for that run only.
            if (k.attempt == 0 || ex.attempt_of(&k.task_id) == k.attempt)
                && let Some((c, _)) = ex.with_live(&k.task_id, None)
            {
                c.kill();
            }
        }
        Some(Command::Pause(p)) => {
            if let Some((c, fw)) = ex.with_live(&p.task_id, Some(true)) {
                c.pause();
                agent.report(&p.task_id, &fw, v1::TaskState::TaskPaused, "paused".into(), None);
            }
        }
        Some(Command::Capture(c)) => {
            if let Some((control, _)) = ex.with_live(&c.task_id, None) {
                control.capture();
            }
        }
        Some(Command::Tail(t)) => {
            let (data, next, running) = match ex.tail(&t.task_id, t.stderr, t.offset, t.max_bytes) {
                Some((data, next)) => (data, next as u64, true),
                None => (Vec::new(), t.offset, false),
            };
            let agent = agent.clone();
            tokio::spawn(async move {
                let chunk = v1::TaskOutputChunk {
                    agent_id: agent.link.id(),
                    request_id: t.request_id,
                    data,
                    next_offset: next,
                    running,
                };
                let _ = agent.link.client().output(chunk).await;
            });
        }
        Some(Command::Resume(r)) => {
            if let Some((c, fw)) = ex.with_live(&r.task_id, Some(false)) {
                c.resume();
                agent.report(&r.task_id, &fw, live_state(false, c.has_started()), "resumed".into(), None);
            }
        }
        None => {}
    }
}

/// Most time an older run of a task has to leave before the next attempt,
/// launched here, gives up (it was killed: it leaves within an epoch tick).
const OLDER_RUN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts `spec` once the older run of the same task (told to stop) has left.
async fn launch_after_older(
    agent: Arc<Agent>,
    fw: String,
    spec: v1::TaskSpec,
    stop_after: Option<std::time::Duration>,
) {
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < OLDER_RUN_WAIT {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        match agent.executor.enter(&spec.task_id, &fw, stop_after, spec.attempt) {
            Enter::New(control) => {
                if let Some(cp) = &agent.checkpoint {
                    cp.launched(&spec.task_id, &fw);
                }
                return run_task(agent, fw, spec, control).await;
            }
            Enter::Duplicate => return,
            Enter::Older => {}
        }
    }
    let msg = format!("an older run of task {} did not stop within {OLDER_RUN_WAIT:?}", spec.task_id);
    agent.updates.report(v1::TaskStatus {
        task_id: spec.task_id.clone(),
        framework_id: fw,
        agent_id: agent.link.id(),
        state: v1::TaskState::TaskError as i32,
        message: msg.clone(),
        outcome: Some(wasmos_proto::outcome_to_wire(&wasmos_model::Outcome::error(msg))),
        attempt: spec.attempt,
        ..Default::default()
    });
}

async fn run_task(agent: Arc<Agent>, fw: String, spec: v1::TaskSpec, control: TaskControl) {
    let id = spec.task_id.clone();
    let metered = wasmos_proto::limits_from_wire(spec.limits.as_ref()).metered();
    let module = match agent.modules.get(&spec.module_sha256).await {
        Ok(p) if metered => agent.modules.ensure_metered(&p).await.map(|()| p),
        other => other,
    };
    let prepared = match module {
        Ok(p) => p,
        Err(msg) => {
            let o = wasmos_model::Outcome::error(msg.clone());
            // Reported before it leaves `live`, so a registration in between
            // still lists the task.
            agent.report(&id, &fw, v1::TaskState::TaskError, msg, Some(wasmos_proto::outcome_to_wire(&o)));
            agent.executor.forget(&id);
            return;
        }
    };
    // A task is RUNNING only once it has a sandbox slot. One that will wait
    // for a slot says STARTING first; one with a slot free says RUNNING once
    // it started (within microseconds), so an agent with room reports
    // RUNNING and the outcome, no more.
    let mut req = run_request(&spec, &fw);
    let health = spec.health.as_ref().map(|h| {
        let check = wasmos_proto::health_from_wire(h);
        let beats = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        req.heartbeats = Some(beats.clone());
        let mut dir = None;
        if matches!(check.kind, wasmos_model::HealthKind::Probe { .. }) {
            // The probe looks at the task's directory: give it one, at a
            // path known here.
            let root = &agent.executor.sandbox.config().sandbox_root;
            let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
            let d = root.join(format!("{id}-a{}-{}-{n}", spec.attempt, std::process::id()));
            req.sandbox_dir.enabled = true;
            req.sandbox_dir.path = Some(d.clone());
            dir = Some(d);
        }
        crate::health::Watch { check, beats, dir }
    });
    let mut killed_by_check: Option<String> = None;
    // A resumed run says so when it starts.
    let resumed = req.resume.as_ref().map_or(String::new(), |s| {
        format!("resumed from a capture ({} bytes of memory, fuel {} so far)", s.memory.len(), s.fuel)
    });
    let run = agent.executor.sandbox.run(&prepared, req, &control);
    tokio::pin!(run);
    let counter = &agent.executor.unstarted[metered as usize];
    let ahead = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut unstarted = Unstarted(Some(counter));
    if ahead >= agent.executor.sandbox.free_slots(metered) {
        report_live(&agent, &id, &fw, false, String::new());
    }
    let outcome = tokio::select! {
        biased;
        _ = control.started() => {
            unstarted.started();
            report_live(&agent, &id, &fw, true, resumed.clone());
            match health {
                None => run.await,
                Some(w) => {
                    let checks = crate::health::watch(&agent, &id, &fw, w, &control);
                    tokio::pin!(checks);
                    tokio::select! {
                        o = &mut run => o,
                        why = &mut checks => {
                            killed_by_check = Some(why);
                            run.await
                        }
                    }
                }
            }
        }
        // It may start and end before this looks again: RUNNING comes first.
        o = &mut run => {
            unstarted.started();
            if control.has_started() {
                report_live(&agent, &id, &fw, true, resumed.clone());
            }
            o
        }
    };
    drop(unstarted);
    let state = outcome_state(outcome.kind);
    agent.executor.fuel_consumed.fetch_add(outcome.fuel_consumed, std::sync::atomic::Ordering::Relaxed);
    agent.executor.cpu_ns.fetch_add(outcome.cpu_time.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    agent.executor.tasks_ended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wire = Some(wasmos_proto::outcome_to_wire(&outcome));
    if let Some(snap) = control.take_snapshot() {
        // Captured for a migration: the master resumes it elsewhere.
        agent.updates.report(v1::TaskStatus {
            task_id: id.clone(),
            framework_id: fw.clone(),
            agent_id: agent.link.id(),
            state: state as i32,
            reason: "migrated".into(),
            message: "captured at a safe point, to resume on another agent".into(),
            outcome: wire,
            snapshot: wasmos_proto::encode(&crate::migrate::to_wire(&snap)),
            attempt: spec.attempt,
            ..Default::default()
        });
        agent.executor.forget(&id);
        return;
    }
    if outcome.kind == OutcomeKind::Killed && agent.executor.was_stopped_cut_off(&id) {
        // `--on-disconnect stop-after`: the master declares it LOST too (and
        // a batch task is retried); this says where it ended.
        agent.updates.report(v1::TaskStatus {
            task_id: id.clone(),
            framework_id: fw.clone(),
            agent_id: agent.link.id(),
            state: v1::TaskState::TaskLost as i32,
            reason: "stopped_on_disconnect".into(),
            message: format!("stopped by its agent, cut off from the master for {:?}", agent.link.cut_off_for()),
            outcome: wire,
            attempt: spec.attempt,
            ..Default::default()
        });
        agent.executor.forget(&id);
        return;
    }
    match killed_by_check {
        // Killed by its health check (unless it ended on its own first).
        Some(why) if outcome.kind == OutcomeKind::Killed => agent.updates.report(v1::TaskStatus {
            task_id: id.clone(),
            framework_id: fw.clone(),
            agent_id: agent.link.id(),
            state: state as i32,
            reason: crate::health::REASON.into(),
            message: why,
            outcome: wire,
            healthy: Some(false),
            attempt: spec.attempt,
            ..Default::default()
        }),
        _ => agent.report(&id, &fw, state, outcome.message.clone().unwrap_or_default(), wire),
    }
    agent.executor.forget(&id);
}

/// Names of the sandbox directories of probed tasks, unique in this process.
static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// STARTING (waiting for a sandbox slot), RUNNING or PAUSED.
fn live_state(paused: bool, started: bool) -> v1::TaskState {
    match (paused, started) {
        (true, _) => v1::TaskState::TaskPaused,
        (false, true) => v1::TaskState::TaskRunning,
        (false, false) => v1::TaskState::TaskStarting,
    }
}

/// Reports a live task's state. Decided and reported under the table's lock,
/// so a pause's own PAUSED report cannot come before this one; a task paused
/// while its module was fetched starts paused and says so.
fn report_live(agent: &Agent, id: &str, fw: &str, started: bool, message: String) {
    // Under the table's lock, so a pause cannot come between the look and
    // the report (the report itself must not take the lock again).
    let live = agent.executor.live();
    let (paused, attempt) = live.get(id).map_or((false, 0), |l| (l.paused, l.attempt));
    if paused && started {
        // Its PAUSED was reported already (or is reported now, at the start).
        return;
    }
    agent.updates.report(v1::TaskStatus {
        task_id: id.to_string(),
        framework_id: fw.to_string(),
        agent_id: agent.link.id(),
        state: live_state(paused, started) as i32,
        message,
        attempt,
        ..Default::default()
    });
}

/// The sandbox's view of a launched task.
fn run_request(spec: &v1::TaskSpec, fw: &str) -> RunRequest {
    let id = spec.task_id.clone();
    let name = if spec.name.is_empty() { id.clone() } else { spec.name.clone() };
    RunRequest {
        name: id.clone(),
        args: std::iter::once(name).chain(spec.args.iter().cloned()).collect(),
        env: spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        limits: wasmos_proto::limits_from_wire(spec.limits.as_ref()),
        sandbox_dir: SandboxDirSpec {
            enabled: spec.sandbox_dir,
            files: spec
                .files
                .iter()
                .map(|f| InputFile { path: f.path.clone(), contents: f.contents.clone() })
                .collect(),
            ..Default::default()
        },
        input: spec.input.clone(),
        // A master from before `attempt` existed sends 0: that is the first run.
        context: wasmos_sandbox::TaskContext { task_id: id, attempt: spec.attempt.max(1), framework: fw.to_string() },
        cpu_weight: cpu_weight(spec.resources.as_ref()),
        resume: (!spec.resume.is_empty())
            .then(|| wasmos_proto::decode::<v1::TaskSnapshot>(&spec.resume))
            .flatten()
            .map(|s| std::sync::Arc::new(crate::migrate::from_wire(s))),
        ..Default::default()
    }
}

/// A task's CPU weight: its `cpus` in milli-cpus (at least 1); a launch that
/// names no resources weighs one core.
fn cpu_weight(r: Option<&v1::Resources>) -> u64 {
    match r.map(|r| wasmos_proto::resources_from_wire(Some(r))) {
        Some(Ok(r)) => ((r.cpus() * wasmos_sandbox::WEIGHT_ONE as f64).round() as u64).max(1),
        _ => wasmos_sandbox::WEIGHT_ONE,
    }
}

fn outcome_state(kind: OutcomeKind) -> v1::TaskState {
    match kind {
        OutcomeKind::Finished => v1::TaskState::TaskFinished,
        OutcomeKind::Failed | OutcomeKind::OutOfFuel | OutcomeKind::OutOfMemory | OutcomeKind::TimedOut => {
            v1::TaskState::TaskFailed
        }
        OutcomeKind::Killed => v1::TaskState::TaskKilled,
        OutcomeKind::Error => v1::TaskState::TaskError,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An executor for tests of the table alone (it runs nothing).
    pub(crate) fn executor() -> Executor {
        let cfg =
            wasmos_sandbox::SandboxConfig { max_concurrent_tasks: 1, max_task_mem: 1 << 20, ..Default::default() };
        Executor::new(Sandbox::new(cfg).unwrap())
    }

    #[test]
    fn a_task_enters_the_table_once_per_attempt_and_a_newer_attempt_stops_the_older_run() {
        let ex = executor();
        let Enter::New(first) = ex.enter("t", "fw", None, 1) else { panic!("entered") };
        assert!(matches!(ex.enter("t", "fw", None, 1), Enter::Duplicate), "a resent launch");
        assert!(matches!(ex.enter("t", "fw", None, 0), Enter::Duplicate), "a launch without an attempt");
        assert!(first.signal() != wasmos_sandbox::Signal::Kill);
        // Attempt 2 launched here while attempt 1 still runs: attempt 1 is
        // told to stop, and attempt 2 waits for it to leave.
        assert!(matches!(ex.enter("t", "fw", None, 2), Enter::Older));
        assert!(first.signal() == wasmos_sandbox::Signal::Kill, "the older run was told to stop");
        assert_eq!(ex.attempt_of("t"), 1);
        ex.forget("t");
        assert!(matches!(ex.enter("t", "fw", None, 2), Enter::New(_)), "launched once the older run left");
        assert_eq!(ex.attempt_of("t"), 2);
    }

    fn attempt_seen(attempt: u32) -> u32 {
        let spec = v1::TaskSpec { task_id: "t".into(), attempt, ..Default::default() };
        run_request(&spec, "fw").context.attempt
    }

    #[test]
    fn the_guest_sees_the_attempt_the_master_sent() {
        assert_eq!(attempt_seen(1), 1);
        assert_eq!(attempt_seen(3), 3);
        // An older master leaves it 0: that is the first run.
        assert_eq!(attempt_seen(0), 1);
    }
}
