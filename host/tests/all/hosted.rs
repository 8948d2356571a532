//! Frameworks whose scheduler is a Wasm component hosted by the master
//! (guests built by `cargo xtask guests`).

use std::collections::HashMap;
use std::time::Duration;

use wasmos_proto::v1;

use crate::*;

async fn deploy(c: &Cluster, name: &str, module: &str, role: &str, config: &str) -> Result<String, tonic::Status> {
    let sha = c.upload(guest(module)).await;
    c.operator()
        .deploy_framework(v1::DeployRequest {
            name: name.into(),
            role: role.into(),
            config: config.into(),
            module_sha256: sha,
            signature: String::new(),
        })
        .await
        .map(|r| r.into_inner().framework_id)
}

fn job(framework: &str, sha: &str, input: &str, estimated_fuel: Option<u64>) -> v1::SubmitRequest {
    v1::SubmitRequest {
        template: Some(v1::TaskSpec {
            name: "primes".into(),
            module_sha256: sha.into(),
            resources: resources("cpus:1;mem:64MiB"),
            input: input.as_bytes().to_vec(),
            ..Default::default()
        }),
        count: 1,
        priority: 0,
        constraints: vec![],
        max_attempts: 0,
        framework: framework.into(),
        estimated_fuel,
        role: String::new(),
        signature: String::new(),
    }
}

async fn frameworks(c: &Cluster) -> HashMap<String, v1::FrameworkSummary> {
    let list =
        c.operator().list_frameworks(v1::ListFrameworksRequest::default()).await.unwrap().into_inner().frameworks;
    list.into_iter().map(|f| (f.name.clone(), f)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sjf_completes_a_mixed_backlog_shortest_first() {
    // One slot (cpus:1, each job cpus:1): jobs queue while a long one runs.
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    deploy(&c, "sjf", "sjf", "batch", "").await.unwrap();
    let primes = c.upload(guest("primes")).await;
    let mut watch = c.operator().watch(v1::WatchRequest::default()).await.unwrap().into_inner();
    let blocker =
        c.operator().submit(job("sjf", &primes, "300000", None)).await.unwrap().into_inner().task_ids.remove(0);
    // wait until the blocker runs, then queue four jobs out of order
    loop {
        if let Some(v1::watch_event::Event::Task(st)) = watch.message().await.unwrap().unwrap().event
            && st.task_id == blocker
            && st.state == v1::TaskState::TaskRunning as i32
        {
            break;
        }
    }
    let mut by_estimate = Vec::new();
    for est in [4_000_000u64, 1_000_000, 3_000_000, 2_000_000] {
        let id =
            c.operator().submit(job("sjf", &primes, "20000", Some(est))).await.unwrap().into_inner().task_ids.remove(0);
        by_estimate.push((est, id));
    }
    let mut started = Vec::new();
    let mut finished = 0;
    while finished < 5 {
        let ev =
            tokio::time::timeout(Duration::from_secs(30), watch.message()).await.expect("progress").unwrap().unwrap();
        if let Some(v1::watch_event::Event::Task(st)) = ev.event {
            if st.state == v1::TaskState::TaskRunning as i32 && st.task_id != blocker {
                started.push(st.task_id.clone());
            }
            if st.state == v1::TaskState::TaskFinished as i32 {
                assert_eq!(
                    st.outcome.as_ref().unwrap().stdout,
                    if st.task_id == blocker {
                        b"25997 primes below 300000\n".to_vec()
                    } else {
                        b"2262 primes below 20000\n".to_vec()
                    }
                );
                finished += 1;
            }
            assert_ne!(st.state, v1::TaskState::TaskFailed as i32, "{st:?}");
        }
    }
    by_estimate.sort();
    let expected: Vec<String> = by_estimate.into_iter().map(|(_, id)| id).collect();
    assert_eq!(started, expected, "jobs start in ascending estimated fuel");
    let f = &frameworks(&c).await["sjf"];
    assert!(f.hosted && f.status == "active" && f.callbacks > 0, "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_schedulers_fail_alone() {
    let c = cluster_with(1, "cpus:2;mem:1GiB", |cfg| {
        cfg.scheduler_limits.fuel_per_callback = 20_000_000;
        cfg.scheduler_limits.mem = 16 << 20;
    })
    .await;
    deploy(&c, "good", "sjf", "good", "").await.unwrap();
    for mode in ["loop", "bomb", "trap", "garbage"] {
        deploy(&c, &format!("bad-{mode}"), "hostile", &format!("bad-{mode}"), mode).await.unwrap();
    }
    // Each hostile scheduler meets an offer, breaks, and is failed.
    let mut fws = frameworks(&c).await;
    for _ in 0..500 {
        fws = frameworks(&c).await;
        if ["loop", "bomb", "trap", "garbage"].iter().all(|m| fws[&format!("bad-{m}")].status == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (mode, want) in [("loop", "fuel"), ("bomb", "mem limit"), ("trap", "unreachable"), ("garbage", "invalid call")]
    {
        let f = &fws[&format!("bad-{mode}")];
        assert_eq!(f.status, "failed", "{f:?}");
        assert!(f.last_error.contains(want), "{mode}: {}", f.last_error);
        assert_eq!(f.callback_failures, 1);
    }
    // The master and the healthy framework carry on.
    let primes = c.upload(guest("primes")).await;
    let id = c.operator().submit(job("good", &primes, "1000", Some(1))).await.unwrap().into_inner().task_ids.remove(0);
    let t = c.wait_task(&id, None).await;
    assert_eq!(t.state, v1::TaskState::TaskFinished as i32, "{t:?}");
    assert_eq!(t.outcome.unwrap().stdout, b"168 primes below 1000\n");
    assert_eq!(frameworks(&c).await["good"].status, "active");
    // A failed framework takes no jobs, and says why.
    let e = c.operator().submit(job("bad-loop", &primes, "1", None)).await.unwrap_err();
    assert!(e.message().contains("failed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deploys_are_refused_with_reasons() {
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    let cases = [
        ("hello", "", "must be a component"),
        ("hello-component", "", "does not implement the wasmos:scheduler world"),
        ("hostile", "nonsense", "refused its config"),
    ];
    for (module, config, want) in cases {
        let e = deploy(&c, "x", module, "r", config).await.unwrap_err();
        assert!(e.message().contains(want), "{module}: {e}");
    }
    deploy(&c, "once", "sjf", "r", "").await.unwrap();
    let e = deploy(&c, "once", "sjf", "r", "").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let e = deploy(&c, "batch", "sjf", "r", "").await.unwrap_err();
    assert!(e.message().contains("taken"), "{e}");
    let sha = c.upload(guest("primes")).await;
    let e = c.operator().submit(job("nobody", &sha, "1", None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // remove tears it down; it can then be deployed again
    c.operator().remove_framework(v1::RemoveFrameworkRequest { name: "once".into() }).await.unwrap();
    deploy(&c, "once", "sjf", "r", "").await.unwrap();
}

/// Collects task events of the given ids until `done` says stop (30 s max).
async fn events_until(
    watch: &mut tonic::Streaming<v1::WatchEvent>,
    mut done: impl FnMut(&v1::TaskStatus) -> bool,
) -> Vec<(String, v1::TaskState)> {
    let mut seen = Vec::new();
    loop {
        let ev =
            tokio::time::timeout(Duration::from_secs(30), watch.message()).await.expect("progress").unwrap().unwrap();
        if let Some(v1::watch_event::Event::Task(st)) = ev.event {
            seen.push((st.task_id.clone(), v1::TaskState::try_from(st.state).unwrap()));
            if done(&st) {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtf_preempts_a_long_task_and_resumes_it_without_losing_work() {
    use v1::TaskState::*;
    let c = cluster(1, "cpus:2;mem:1GiB").await;
    deploy(&c, "srtf", "srtf", "batch", "active=1").await.unwrap();
    let primes = c.upload(guest("primes")).await;
    let mut watch = c.operator().watch(v1::WatchRequest::default()).await.unwrap().into_inner();
    let long = c
        .operator()
        .submit(job("srtf", &primes, "300000", Some(1 << 40)))
        .await
        .unwrap()
        .into_inner()
        .task_ids
        .remove(0);
    events_until(&mut watch, |st| st.task_id == long && st.state == TaskRunning as i32).await;
    let short = c
        .operator()
        .submit(job("srtf", &primes, "20000", Some(1_000_000)))
        .await
        .unwrap()
        .into_inner()
        .task_ids
        .remove(0);
    let seen = events_until(&mut watch, |st| st.task_id == long && st.state == TaskFinished as i32).await;
    let order: Vec<(String, v1::TaskState)> = seen.into_iter().filter(|(_, s)| *s != TaskStaging).collect();
    let expected = vec![
        (long.clone(), TaskPaused),
        (short.clone(), TaskRunning),
        (short.clone(), TaskFinished),
        (long.clone(), TaskRunning),
        (long.clone(), TaskFinished),
    ];
    assert_eq!(order, expected);
    // No work lost: the preempted run used exactly the fuel of an undisturbed one.
    let preempted = c.task(&long).await.outcome.unwrap();
    assert_eq!(preempted.stdout, b"25997 primes below 300000\n");
    let mut req = job("", &primes, "300000", None);
    req.framework = String::new();
    // Counting fuel, as the framework's jobs with an estimate do.
    req.template.as_mut().unwrap().limits.get_or_insert_default().meter_fuel = true;
    let reference = c.operator().submit(req).await.unwrap().into_inner().task_ids.remove(0);
    let reference = c.wait_task(&reference, None).await.outcome.unwrap();
    assert!(preempted.fuel_metered && preempted.fuel_consumed > 0, "{preempted:?}");
    assert_eq!(preempted.fuel_consumed, reference.fuel_consumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_keeps_replicas_running_and_restarts_a_dead_one() {
    let c = cluster(1, "cpus:2;mem:1GiB").await;
    let fw = deploy(&c, "svc", "service", "web", "replicas=2,backoff_ms=50").await.unwrap();
    let spin = c.upload_wat(SPIN).await;
    let mut req = job("svc", &spin, "", None);
    req.template.as_mut().unwrap().resources = resources("cpus:0.1;mem:16MiB");
    c.operator().submit(req).await.unwrap();
    let running = |c: &Cluster| {
        let c = c.operator();
        let fw = fw.clone();
        async move {
            let mut c = c;
            let tasks = c
                .list_tasks(v1::ListTasksRequest { framework_id: fw, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .tasks;
            let live: Vec<String> = tasks
                .iter()
                .filter(|t| t.state == v1::TaskState::TaskRunning as i32)
                .map(|t| t.task_id.clone())
                .collect();
            (live, tasks.len())
        }
    };
    let mut state = (vec![], 0);
    for _ in 0..500 {
        state = running(&c).await;
        if state.0.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state.0.len(), 2, "two replicas running: {state:?}");
    let victim = state.0[0].clone();
    c.operator().kill_task(v1::TaskActionRequest { task_id: victim.clone() }).await.unwrap();
    for _ in 0..500 {
        state = running(&c).await;
        if state.0.len() == 2 && state.1 == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((state.0.len(), state.1), (2, 3), "a third replica replaced the killed one: {state:?}");
    assert!(!state.0.contains(&victim));
    assert_eq!(c.task(&victim).await.state, v1::TaskState::TaskKilled as i32);
    c.operator().remove_framework(v1::RemoveFrameworkRequest { name: "svc".into() }).await.unwrap();
}
