//! Soak test, run by `cargo xtask soak`: a real `wasmos master` (durable
//! registry) and N `wasmos agent` processes on loopback under a sustained
//! mixed load at a fixed rate (load.rs), faults again and again at seeded
//! moments (faults.rs), and every `--sample-every` the master's and agents'
//! memory and open files, the registry's size, the event loop's lag and the
//! task latency written to soak.csv. At the end: the chaos suite's
//! invariants, and a verdict (verdict.rs) that fails if memory or disk keeps
//! growing after warm-up or p99 latency drifts up. Exits non-zero, saying
//! why, when anything fails.
//!
//! Usage: soak --wasmos PATH --guests DIR --out DIR --duration-s S --rate R
//!   --agents N --faults-per-minute F --seed S --sample-every-s S
//!   --growth-tolerance X --growth-floor-mib M --settle-s S --p99-ratio X
//!   --p99-floor-ms M [--master-arg ARG]...
//! (`cargo xtask soak --help` documents each, with its default.)

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmos_model::TaskState;
use wasmos_proto::v1;

#[path = "soak/checks.rs"]
mod checks;
#[path = "common/mod.rs"]
mod common;
#[path = "soak/faults.rs"]
mod faults;
#[path = "soak/load.rs"]
mod load;
#[path = "soak/verdict.rs"]
mod verdict;

use checks::{check_remote, check_tasks, drain, now_ms, task_history_ms};
use common::{History, Proc, Remote, Rng, arg, connect, op};
use faults::{Cluster, Fault, Injector, RemoteCtl, Restarted};
use load::{Kind, Latency, Load};
use verdict::{Sample, Tolerances};

/// What each agent offers: room for 800 tasks of load::TASK_RESOURCES.
const AGENT_RESOURCES: &str = "cpus:8;mem:8GiB";
/// The master declares a silent agent gone after this; a SIGSTOP lasts longer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
const STOP_FOR: Duration = Duration::from_millis(4500);
/// After the load stops, how long every task may take to end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The hosted framework's name.
const HOSTED: &str = "soak-sjf";

struct Config {
    wasmos: PathBuf,
    guests: PathBuf,
    out: PathBuf,
    duration: Duration,
    rate: f64,
    agents: usize,
    faults_per_minute: f64,
    seed: u64,
    sample_every: Duration,
    tol: Tolerances,
    master_args: Vec<String>,
    /// Keep every watch event, to print a failing task's history.
    keep_events: bool,
}

impl Config {
    fn from_args() -> Config {
        let args: Vec<String> = std::env::args().collect();
        let need = |name: &str| arg(&args, name).unwrap_or_else(|| panic!("{name} is required"));
        let num = |name: &str| -> f64 { need(name).parse().unwrap_or_else(|_| panic!("{name}: not a number")) };
        Config {
            wasmos: PathBuf::from(need("--wasmos")),
            guests: PathBuf::from(need("--guests")),
            out: PathBuf::from(need("--out")),
            duration: Duration::from_secs_f64(num("--duration-s")),
            rate: num("--rate"),
            agents: num("--agents") as usize,
            faults_per_minute: num("--faults-per-minute"),
            seed: need("--seed").parse().expect("--seed: an unsigned integer"),
            sample_every: Duration::from_secs_f64(num("--sample-every-s")),
            tol: Tolerances {
                growth: num("--growth-tolerance"),
                growth_floor: num("--growth-floor-mib") * 1024.0 * 1024.0,
                settle_s: num("--settle-s"),
                p99_ratio: num("--p99-ratio"),
                p99_floor_ms: num("--p99-floor-ms"),
            },
            master_args: args.windows(2).filter(|w| w[0] == "--master-arg").map(|w| w[1].clone()).collect(),
            keep_events: args.iter().any(|a| a == "--keep-events"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // All processes are owned by `soak()` and killed when it returns, also
    // when a check failed: only then does the exit code say so.
    let ok = soak(Config::from_args()).await;
    std::process::exit(if ok { 0 } else { 1 });
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn soak(cfg: Config) -> bool {
    let logs = cfg.out.join("logs");
    std::fs::create_dir_all(&logs).expect("create --out");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let state = dir.path().join("master");
    let client_config = dir.path().join("client.json");
    common::trust(&client_config);
    let ca_file = state.join("tls").join("ca.pem");
    let timeout = format!("{}ms", AGENT_TIMEOUT.as_millis());
    let listen = format!("127.0.0.1:{port}");
    let mut master_argv = strings(&[
        "master",
        "--listen",
        &listen,
        "--state-dir",
        state.to_str().unwrap(),
        "--agent-heartbeat",
        "250ms",
        "--agent-timeout",
        &timeout,
        "--client-config",
        client_config.to_str().unwrap(),
    ]);
    master_argv.extend(cfg.master_args.iter().cloned());
    println!(
        "soak: seed {} (replay with --seed {}), {:?} at {} tasks/s, {} agents, {} faults/min; out {}",
        cfg.seed,
        cfg.seed,
        cfg.duration,
        cfg.rate,
        cfg.agents,
        cfg.faults_per_minute,
        cfg.out.display()
    );
    let master = Proc::spawn(&cfg.wasmos, &master_argv, Some(&logs.join("master.log")));
    if common::wait_up(&url, Duration::from_secs(60)).await.is_none() {
        println!("soak: the master did not answer within 60 s; see {}", logs.join("master.log").display());
        return false;
    }
    let join = common::join_token(&url).await;
    let agents: Vec<Proc> = (0..cfg.agents)
        .map(|i| {
            let work = dir.path().join(format!("agent-{i}"));
            let argv = strings(&[
                "agent",
                "--master",
                &url,
                "--resources",
                AGENT_RESOURCES,
                "--work-dir",
                work.to_str().unwrap(),
                "--ca-cert",
                ca_file.to_str().unwrap(),
                "--join",
                &join,
            ]);
            Proc::spawn(&cfg.wasmos, &argv, Some(&logs.join(format!("agent-{i}.log"))))
        })
        .collect();
    let cluster = Arc::new(Mutex::new(Cluster { master, agents }));
    let ch = connect(&url).await;
    if !common::wait_agents(&ch, cfg.agents, Duration::from_secs(60)).await {
        println!("soak: {} agents did not register within 60 s; see {}", cfg.agents, logs.display());
        return false;
    }
    let master_epoch = Arc::new(AtomicU64::new(0));
    let history = Arc::new(Mutex::new(History::new(cfg.keep_events)));
    let recorder = history.clone();
    let watch = common::watch_all(url.clone(), master_epoch.clone(), move |t| recorder.lock().unwrap().record(t));

    // Modules, and the hosted framework.
    let guest = |name: &str| {
        std::fs::read(cfg.guests.join(name)).unwrap_or_else(|e| panic!("{name}: {e}; run `cargo xtask guests`"))
    };
    let modules = load::Modules::upload(&ch, guest("hello.wasm")).await;
    let sjf = guest("sjf.wasm");
    let sjf_sha = hex::encode(Sha256::digest(&sjf));
    v1::artifacts_client::ArtifactsClient::new(ch.clone())
        .upload(tokio_stream::iter(vec![v1::Chunk { sha256: sjf_sha.clone(), data: sjf, ..Default::default() }]))
        .await
        .expect("upload sjf.wasm");
    let deploy = v1::DeployRequest {
        name: HOSTED.into(),
        role: "hosted".into(),
        config: String::new(),
        module_sha256: sjf_sha,
        signature: String::new(),
    };
    op(&ch).deploy_framework(deploy).await.expect("deploy the hosted framework");

    // The load, the probe and the faults.
    let start = Instant::now();
    let load = Arc::new(Load {
        url: url.clone(),
        modules: modules.clone(),
        hosted: HOSTED.into(),
        ledger: Mutex::new(load::Ledger::default()),
        history: history.clone(),
        start,
        stop_at: start + cfg.duration,
    });
    let remote = Remote::new(&url, "soak-remote", &modules.hello, load::TASK_RESOURCES, 100, 0);
    let r = cfg.rate;
    let failing = r * load::FAILING_SHARE;
    let timing_out = (r * load::TIMING_OUT_SHARE).min(load::TIMING_OUT_MAX_RATE);
    let (hosted, remote_rate) = (r * load::HOSTED_SHARE, r * load::REMOTE_SHARE);
    let batch = (r - failing - timing_out - hosted - remote_rate).max(0.0) / load::BATCH_CLIENTS as f64;
    let mut clients = Vec::new();
    for i in 0..load::BATCH_CLIENTS {
        clients.push(tokio::spawn(load::batch_client(load.clone(), batch, cfg.seed ^ (i as u64 + 1))));
    }
    clients.push(tokio::spawn(load::bad_client(load.clone(), Kind::Failing, failing, cfg.seed ^ 101)));
    clients.push(tokio::spawn(load::bad_client(load.clone(), Kind::TimingOut, timing_out, cfg.seed ^ 102)));
    clients.push(tokio::spawn(load::hosted_client(load.clone(), hosted, cfg.seed ^ 103)));
    clients.push(tokio::spawn(load::remote_pacer(load.clone(), remote.want.clone(), remote_rate)));
    let latency = Arc::new(Mutex::new(Vec::<Latency>::new()));
    let interrupted = Arc::new(AtomicU64::new(0));
    clients.push(tokio::spawn(load::probe(load.clone(), latency.clone(), interrupted.clone())));

    let mut rng = Rng::new(cfg.seed);
    let n_faults = (cfg.faults_per_minute * cfg.duration.as_secs_f64() / 60.0).round() as usize;
    let plan = faults::schedule(&mut rng, n_faults, cfg.duration, cfg.agents);
    let fault_log = Arc::new(Mutex::new(Vec::new()));
    let injector = Arc::new(Injector {
        cluster: cluster.clone(),
        url: url.clone(),
        master_epoch: master_epoch.clone(),
        remote: tokio::sync::Mutex::new(Some(RemoteCtl::start(remote.clone(), String::new()))),
        stop_for: STOP_FOR,
        start,
        log: fault_log.clone(),
    });
    let learnt = Arc::new(AtomicU64::new(0));
    let reconciler =
        tokio::spawn(checks::reconcile_after_restarts(url.clone(), watch.clone(), history.clone(), learnt.clone()));
    let faults_task = {
        let injector = injector.clone();
        tokio::spawn(async move { injector.run(plan).await })
    };

    // Samples until the load stops.
    let mut csv = std::fs::File::create(cfg.out.join("soak.csv")).expect("create soak.csv");
    writeln!(csv, "{}", verdict::csv_header(cfg.agents)).unwrap();
    let mut samples = Vec::new();
    let mut taken = 0;
    let mut cpu = CpuMeter::default();
    let mut next = start + cfg.sample_every;
    while next <= load.stop_at + Duration::from_millis(100) {
        tokio::time::sleep_until(next.into()).await;
        next += cfg.sample_every;
        let s =
            sample(&state, &ch, &cluster, &load, &history, &latency, &mut taken, &mut cpu, &fault_log, &remote).await;
        writeln!(csv, "{}", s.csv_row()).unwrap();
        println!("{}", progress(&s));
        samples.push(s);
    }
    drop(csv);
    for c in clients {
        let _ = c.await;
    }
    let _ = faults_task.await;

    // Drain: every acknowledged task ends, the remote framework sees its own end.
    let drained = drain(&url, &load, &remote).await;
    reconciler.abort();
    if let Some(ctl) = injector.remote.lock().await.take() {
        ctl.stop().await;
    }

    // The invariants.
    let mut failures = Vec::new();
    if let Err(e) = drained {
        failures.push(e);
    }
    let ends = check_tasks(&url, &load, &history, &mut failures).await;
    check_remote(&remote, &mut failures);
    let gaps = watch.gaps.load(Ordering::Relaxed);
    let attempts = ends.attempts;
    failures.extend(history.lock().unwrap().check(|id| attempts.get(id).copied().unwrap_or(1)));
    cluster.lock().unwrap().master.kill9();
    // The history may have dropped what ended longer than --task-history ago
    // between the listing and the kill: those are not compared.
    let kept_from = now_ms() - task_history_ms(&cfg.master_args) + 5_000;
    let comparable: BTreeMap<String, String> = ends
        .api
        .iter()
        .filter(|(id, _)| ends.ended_at_ms.get(*id).is_none_or(|&at| at == 0 || at >= kept_from))
        .map(|(id, st)| (id.clone(), st.clone()))
        .collect();
    failures.extend(common::check_registry(&state, &comparable));

    // The verdict.
    let faults = fault_log.lock().unwrap().clone();
    write_faults(&cfg.out, &faults);
    let latency = latency.lock().unwrap().clone();
    write_latency(&cfg.out, &latency);
    let d = cfg.duration.as_secs_f64();
    let restarts_of =
        |who: Restarted| -> Vec<f64> { faults.iter().filter(|f| f.restarted == Some(who)).map(|f| f.t).collect() };
    let mut growth = vec![verdict::growth(
        "master RSS",
        &samples.iter().map(|s| (s.t, s.master_rss.map(|v| v as f64))).collect::<Vec<_>>(),
        d / 2.0,
        &restarts_of(Restarted::Master),
        &cfg.tol,
    )];
    // The highest RSS an agent never restarted reached: the level a
    // restarted one may grow back to (see `verdict::warming_up_to_peers`).
    let peer_level = (0..cfg.agents)
        .filter(|i| restarts_of(Restarted::Agent(*i)).is_empty())
        .flat_map(|i| samples.iter().filter_map(move |s| s.agents[i].0.map(|v| v as f64)))
        .reduce(f64::max);
    for i in 0..cfg.agents {
        let restarts = restarts_of(Restarted::Agent(i));
        let mut g = verdict::growth(
            &format!("agent {i} RSS"),
            &samples.iter().map(|s| (s.t, s.agents[i].0.map(|v| v as f64))).collect::<Vec<_>>(),
            d / 2.0,
            &restarts,
            &cfg.tol,
        );
        if !restarts.is_empty() {
            verdict::warming_up_to_peers(&mut g, peer_level, &cfg.tol);
        }
        growth.push(g);
    }
    growth.push(verdict::growth(
        "registry",
        &samples.iter().map(|s| (s.t, s.registry.map(|v| v as f64))).collect::<Vec<_>>(),
        d / 2.0,
        &[],
        &cfg.tol,
    ));
    let disruptive: Vec<(f64, f64)> =
        faults.iter().filter(|f| f.fault != Fault::DropFramework).map(|f| (f.t, f.end)).collect();
    let drift = verdict::drift(&latency, d, cfg.sample_every.as_secs_f64(), &disruptive, &cfg.tol);
    let mut why = Vec::new();
    for g in growth.iter().filter(|g| g.failed) {
        why.push(format!(
            "{} keeps growing after warm-up: {:+.1} MiB over the last half ({:+.1}% of its mean; tolerance {}% and {:.0} MiB)",
            g.name,
            g.growth / 1048576.0,
            100.0 * g.growth / g.mean,
            100.0 * cfg.tol.growth,
            cfg.tol.growth_floor / 1048576.0
        ));
    }
    if drift.failed {
        why.push(format!(
            "p99 latency drifted up: {:.1} ms in the last quarter vs {:.1} ms in the second (median of each {:?} interval's p99; allowed: x{} or +{} ms)",
            drift.q4.unwrap_or(0.0),
            drift.q2.unwrap_or(0.0),
            cfg.sample_every,
            cfg.tol.p99_ratio,
            cfg.tol.p99_floor_ms
        ));
    }
    if !failures.is_empty() {
        why.push(format!("{} invariant failure(s), listed above", failures.len()));
    }

    // The summary.
    let mut out = Vec::new();
    let ledger = load.ledger.lock().unwrap();
    let acked: u64 = ledger.per_kind.values().sum::<u64>() + remote.launched() as u64;
    out.push("soak summary".to_string());
    out.push(format!(
        "  seed {}; {:.0} s of load at a target of {} tasks/s: {acked} tasks acknowledged, {:.0} tasks/s achieved",
        cfg.seed,
        d,
        cfg.rate,
        acked as f64 / d
    ));
    out.push("  tasks per kind:".into());
    for (kind, n) in &ledger.per_kind {
        let ended = ends.by_kind.get(kind).cloned().unwrap_or_default();
        out.push(format!("    {:<16} {n:>9}   ended: {}", kind.label(), states_line(&ended)));
    }
    out.push(format!("    {:<16} {:>9}   ended: {}", "remote", remote.launched(), remote_states(&remote)));
    let reconciled = remote.reconciled.load(Ordering::Relaxed);
    if reconciled > 0 {
        out.push(format!("    (remote: {reconciled} end(s) learned only by reconciliation)"));
    }
    for (error, n) in remote.call_errors.lock().unwrap().iter() {
        out.push(format!("    remote framework call refused {n}x: {error}"));
    }
    out.push(format!("  submits refused while the master was away: {}", ledger.refused));
    drop(ledger);
    out.push(format!("  faults injected: {}", faults.len()));
    for kind in ["kill-master", "kill-agent", "stop-agent", "drop-framework"] {
        let n = faults.iter().filter(|f| f.fault.name() == kind).count();
        out.push(format!("    {kind:<15} {n}"));
    }
    let (events, finished) = {
        let h = history.lock().unwrap();
        (h.events, h.finished)
    };
    out.push(format!(
        "  watch: {events} status events, {finished} FINISHED; {} (re)connects, {} resumed across a master restart, {} gap(s) where events were missed",
        watch.connects.load(Ordering::Relaxed),
        watch.restarts.load(Ordering::Relaxed),
        gaps
    ));
    out.push(format!(
        "  ends the watch missed at a master kill, learnt by GetTask after the restart: {}",
        learnt.load(Ordering::Relaxed)
    ));
    out.push(format!(
        "  latency probe: {} samples, {} interrupted by faults, {} left out as overlapping a fault; p99 (median over the intervals of a quarter) second quarter {} ms ({} intervals), last quarter {} ms ({} intervals)",
        latency.len(),
        interrupted.load(Ordering::Relaxed),
        drift.left_out,
        fmt_ms(drift.q2),
        drift.n2,
        fmt_ms(drift.q4),
        drift.n4
    ));
    out.push(format!(
        "  memory and disk (first sample, last sample; least-squares slope over the last half, from t={:.0}s):",
        d / 2.0
    ));
    for g in &growth {
        out.push(format!("    {}", g.line()));
    }
    // What each task costs: the slope over the last half per task a second
    // acknowledged there.
    let half: Vec<&Sample> = samples.iter().filter(|s| s.t >= d / 2.0).collect();
    if let (Some(a), Some(b)) = (half.first(), half.last())
        && b.t > a.t
        && b.submitted > a.submitted
    {
        let rate = (b.submitted - a.submitted) as f64 / (b.t - a.t);
        let per_task = |name: &str| growth.iter().find(|g| g.name == name).map_or(0.0, |g| g.slope_per_s / rate);
        out.push(format!(
            "  per task acknowledged over the last half ({rate:.0} tasks/s): master RSS {:+.0} bytes, registry on disk {:+.0} bytes",
            per_task("master RSS"),
            per_task("registry")
        ));
    }
    let recoveries: Vec<String> =
        faults.iter().filter(|f| f.fault == Fault::KillMaster).map(|f| format!("{:.2} s", f.end - f.t)).collect();
    if !recoveries.is_empty() {
        out.push(format!("  master answering after kill -9 and restart: {}", recoveries.join(", ")));
    }
    if let (Some(a), Some(b)) = (samples.first(), samples.last()) {
        out.push(format!(
            "  open fds, master: {} -> {}; agents: {}",
            fmt_n(a.master_fds),
            fmt_n(b.master_fds),
            (0..cfg.agents)
                .map(|i| format!("{} -> {}", fmt_n(a.agents[i].1), fmt_n(b.agents[i].1)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if failures.is_empty() {
        out.push("  invariants: all hold".into());
    } else {
        out.push("  invariants FAILED:".into());
        for f in failures.iter().take(30) {
            out.push(format!("    - {f}"));
        }
        if failures.len() > 30 {
            out.push(format!("    ... and {} more", failures.len() - 30));
        }
    }
    if why.is_empty() {
        out.push("verdict: PASS".into());
        out.push("1 passed, 0 failed".into());
    } else {
        out.push("verdict: FAIL".into());
        for w in &why {
            out.push(format!("  - {w}"));
        }
        out.push("0 passed, 1 failed".into());
    }
    let text = out.join("\n");
    println!("{text}");
    let _ = std::fs::write(cfg.out.join("summary.txt"), text + "\n");
    why.is_empty()
}

/// One sample of everything soak.csv holds.
#[allow(clippy::too_many_arguments)]
async fn sample(
    state: &Path,
    ch: &wasmos_security::client::AuthChannel,
    cluster: &Mutex<Cluster>,
    load: &Load,
    history: &Mutex<History>,
    latency: &Mutex<Vec<Latency>>,
    taken: &mut usize,
    cpu: &mut CpuMeter,
    faults: &Mutex<Vec<faults::Injected>>,
    remote: &Remote,
) -> Sample {
    let (master, agents): (u32, Vec<u32>) = {
        let c = cluster.lock().unwrap();
        (c.master.pid(), c.agents.iter().map(Proc::pid).collect())
    };
    let t0 = Instant::now();
    let lag = tokio::time::timeout(Duration::from_secs(5), op(ch).list_agents(v1::ListAgentsRequest::default())).await;
    let lag_ms = matches!(lag, Ok(Ok(_))).then(|| t0.elapsed().as_secs_f64() * 1000.0);
    let window: Vec<f64> = {
        let all = latency.lock().unwrap();
        let w = all[*taken..].iter().map(|s| s.1).collect();
        *taken = all.len();
        w
    };
    let window = verdict::sorted(window);
    // Both files: registry.redb (what a restart reads) and history.redb
    // (ended tasks, kept for --task-history).
    let files: Vec<_> =
        ["registry.redb", "history.redb"].iter().filter_map(|f| std::fs::metadata(state.join(f)).ok()).collect();
    let registry = (!files.is_empty()).then_some(&files);
    let (submitted, finished) = {
        let ledger = load.ledger.lock().unwrap();
        (ledger.per_kind.values().sum::<u64>() + remote.launched() as u64, history.lock().unwrap().finished)
    };
    Sample {
        t: load.start.elapsed().as_secs_f64(),
        master_rss: common::rss_bytes(master),
        master_fds: common::open_fds(master),
        agents: agents.iter().map(|p| (common::rss_bytes(*p), common::open_fds(*p))).collect(),
        master_cpu: cpu.percent(master),
        agents_cpu: agents.iter().map(|p| cpu.percent(*p)).collect(),
        soak_cpu: cpu.percent(std::process::id()),
        io_pressure: common::io_pressure(),
        registry: registry.map(|fs| fs.iter().map(|m| m.blocks() * 512).sum()),
        registry_file: registry.map(|fs| fs.iter().map(|m| m.len()).sum()),
        lag_ms,
        p50_ms: verdict::percentile(&window, 0.5),
        p99_ms: verdict::percentile(&window, 0.99),
        lat_n: window.len(),
        submitted,
        finished,
        faults: faults.lock().unwrap().len(),
    }
}

/// CPU use of processes between two samples, by pid (a restarted process
/// has a new pid, so its first sample has none).
#[derive(Default)]
struct CpuMeter(HashMap<u32, (Duration, Instant)>);

impl CpuMeter {
    /// % of one core `pid` used since it was last asked about.
    fn percent(&mut self, pid: u32) -> Option<f64> {
        let now = (common::cpu_time(pid)?, Instant::now());
        let before = self.0.insert(pid, now)?;
        let wall = (now.1 - before.1).as_secs_f64();
        (wall > 0.0).then(|| 100.0 * (now.0.saturating_sub(before.0)).as_secs_f64() / wall)
    }
}

fn fmt_mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1}", b as f64 / 1048576.0)).unwrap_or_else(|| "-".into())
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn fmt_n(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn progress(s: &Sample) -> String {
    let agents: Vec<String> = s.agents.iter().map(|a| fmt_mib(a.0)).collect();
    format!(
        "soak: t={:7.1}s master {:>7} MiB {:>4} fds {:>4}% cpu | agents {} MiB | soak {:>4}% cpu | registry {:>7} MiB | lag {:>7} ms | p50 {:>7} p99 {:>8} ms ({}) | submitted {} finished {}",
        s.t,
        fmt_mib(s.master_rss),
        fmt_n(s.master_fds),
        fmt_pct(s.master_cpu),
        agents.join("/"),
        fmt_pct(s.soak_cpu),
        fmt_mib(s.registry),
        fmt_ms(s.lag_ms),
        fmt_ms(s.p50_ms),
        fmt_ms(s.p99_ms),
        s.lat_n,
        s.submitted,
        s.finished
    )
}

fn states_line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "-".into();
    }
    counts.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ")
}

fn remote_states(remote: &Remote) -> String {
    let mut counts = BTreeMap::new();
    for s in remote.ended.lock().unwrap().values() {
        *counts.entry(common::state_name(*s)).or_default() += 1;
    }
    states_line(&counts)
}

/// faults.csv: when each fault was injected (s since the load started).
fn write_faults(out: &Path, faults: &[faults::Injected]) {
    let mut text = String::from("t_s,fault,detail\n");
    for f in faults {
        text.push_str(&format!("{:.1},{},\"{}\"\n", f.t, f.fault.name(), f.detail.replace('"', "'")));
    }
    let _ = std::fs::write(out.join("faults.csv"), text);
}

/// latency.csv: every probe sample (submitted at, s; latency, ms).
fn write_latency(out: &Path, latency: &[Latency]) {
    let mut text = String::from("t_s,latency_ms\n");
    for (t, ms) in latency {
        text.push_str(&format!("{t:.3},{ms:.3}\n"));
    }
    let _ = std::fs::write(out.join("latency.csv"), text);
}
