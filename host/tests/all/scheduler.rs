//! A remote framework written against the Scheduler API, in the test.

use std::time::Duration;

use tonic::Streaming;
use wasmos_proto::v1;
use wasmos_proto::v1::event::Event as E;

use crate::*;

pub struct Framework {
    pub id: String,
    pub events: Streaming<v1::Event>,
    client: v1::scheduler_client::SchedulerClient<wasmos_security::client::AuthChannel>,
}

impl Framework {
    pub async fn subscribe(c: &Cluster, name: &str, role: &str) -> Framework {
        let mut client = c.scheduler();
        let mut events = client
            .subscribe(v1::SubscribeRequest {
                framework: Some(v1::FrameworkInfo {
                    framework_id: String::new(),
                    name: name.into(),
                    role: role.into(),
                    failover_timeout_s: 0.0,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let first = events.message().await.unwrap().unwrap();
        let Some(E::Subscribed(s)) = first.event else { panic!("first event is not SUBSCRIBED: {first:?}") };
        assert!(s.heartbeat_interval_ms > 0);
        Framework { id: s.framework_id, events, client }
    }

    /// The next event other than a heartbeat (10 s at most).
    pub async fn next(&mut self) -> E {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), self.events.message())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .expect("stream open");
            match ev.event {
                Some(E::Heartbeat(_)) | None => continue,
                Some(e) => return e,
            }
        }
    }

    pub async fn offers(&mut self) -> Vec<v1::Offer> {
        loop {
            if let E::Offers(o) = self.next().await {
                return o.offers;
            }
        }
    }

    pub async fn update(&mut self) -> v1::TaskStatus {
        loop {
            if let E::Update(u) = self.next().await {
                return u.status.unwrap();
            }
        }
    }

    pub async fn call(&mut self, call: v1::call::Call) -> Result<(), tonic::Status> {
        self.client.call(v1::Call { framework_id: self.id.clone(), call: Some(call) }).await.map(|_| ())
    }

    pub async fn accept(&mut self, offers: &[&v1::Offer], launch: Vec<v1::TaskSpec>) {
        self.call(v1::call::Call::Accept(v1::call::Accept {
            offer_ids: offers.iter().map(|o| o.offer_id.clone()).collect(),
            launch,
            filters: Some(v1::Filters { refuse_seconds: Some(0.0) }),
        }))
        .await
        .unwrap();
    }

    /// Declines (with no filter) the offers of the next event if it is
    /// offers within `wait`; returns the agents they named.
    pub async fn decline_offers_within(&mut self, wait: Duration) -> Vec<String> {
        let Ok(E::Offers(o)) = tokio::time::timeout(wait, self.next()).await else { return Vec::new() };
        for o in &o.offers {
            let decline = v1::call::Decline {
                offer_ids: vec![o.offer_id.clone()],
                filters: Some(v1::Filters { refuse_seconds: Some(0.0) }),
            };
            self.call(v1::call::Call::Decline(decline)).await.unwrap();
        }
        o.offers.into_iter().map(|o| o.agent_id).collect()
    }

    pub async fn ack(&mut self, st: &v1::TaskStatus) {
        if !st.uuid.is_empty() {
            self.call(v1::call::Call::Acknowledge(v1::call::Acknowledge {
                agent_id: st.agent_id.clone(),
                task_id: st.task_id.clone(),
                uuid: st.uuid.clone(),
            }))
            .await
            .unwrap();
        }
    }
}

fn state(s: &v1::TaskStatus) -> v1::TaskState {
    v1::TaskState::try_from(s.state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_offer_launch_update_acknowledge_reconcile() {
    let c = cluster(1, "cpus:2;mem:1GiB").await;
    let sha = c.upload_wat(&echo_wat("remote")).await;
    let mut fw = Framework::subscribe(&c, "remote-test", "eng/remote").await;
    let offers = fw.offers().await;
    assert_eq!(offers.len(), 1);
    let o = &offers[0];
    let offered = wasmos_proto::resources_from_wire(o.resources.as_ref()).unwrap();
    assert_eq!(offered.to_string(), "cpus:2;mem:1GiB");
    fw.accept(&[o], vec![spec("r-1", &sha, "cpus:1;mem:64MiB"), spec("r-2", &sha, "cpus:1;mem:64MiB")]).await;
    let mut finished = 0;
    while finished < 2 {
        let st = fw.update().await;
        assert!(st.task_id == "r-1" || st.task_id == "r-2");
        assert_eq!(st.framework_id, fw.id);
        assert_eq!(st.uuid.len(), 16, "agent updates carry a uuid");
        match state(&st) {
            v1::TaskState::TaskRunning => {}
            v1::TaskState::TaskFinished => {
                assert_eq!(st.outcome.as_ref().unwrap().stdout, b"remote");
                finished += 1;
            }
            other => panic!("unexpected {other:?}: {st:?}"),
        }
        fw.ack(&st).await;
    }
    // Implicit reconciliation: every non-terminal task (none left) ...
    fw.call(v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: vec![] })).await.unwrap();
    // ... and explicit: the latest state of named tasks, even unknown ones.
    fw.call(v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: vec!["r-1".into(), "ghost".into()] }))
        .await
        .unwrap();
    let a = fw.update().await;
    let b = fw.update().await;
    assert_eq!(
        (a.task_id.as_str(), state(&a), a.reason.as_str()),
        ("r-1", v1::TaskState::TaskFinished, "reconciliation")
    );
    assert_eq!((b.task_id.as_str(), state(&b)), ("ghost", v1::TaskState::TaskLost));
    // Visible through the Operator API too.
    let t = c.task("r-1").await;
    assert_eq!(t.framework_id, fw.id);
    assert_eq!(t.state, v1::TaskState::TaskFinished as i32);
    let fws = c.operator().list_frameworks(v1::ListFrameworksRequest::default()).await.unwrap().into_inner().frameworks;
    assert!(fws.iter().any(|f| f.framework_id == fw.id && f.role == "eng/remote" && f.connected && !f.hosted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_sees_the_attempt_in_its_task_spec() {
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    let sha = c.upload(guest("primes")).await;
    let mut fw = Framework::subscribe(&c, "retrying", "retrying").await;
    let offers = fw.offers().await;
    let mut s = spec("third-try", &sha, "cpus:0.5;mem:64MiB");
    s.input = b"100".to_vec();
    s.attempt = 3;
    fw.accept(&[&offers[0]], vec![s]).await;
    loop {
        let st = fw.update().await;
        fw.ack(&st).await;
        match state(&st) {
            v1::TaskState::TaskRunning => {}
            v1::TaskState::TaskFinished => {
                let o = st.outcome.unwrap();
                assert_eq!(o.stdout, b"25 primes below 100\n");
                // primes logs `wasmos:task/context` attempt to stderr.
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(err.contains("counting primes below 100 (attempt 3)"), "{err}");
                return;
            }
            other => panic!("unexpected {other:?}: {st:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_launches_are_refused_with_state_and_reason() {
    let c = cluster(1, "cpus:2;mem:1GiB").await;
    let sha = c.upload_wat(SPIN).await;
    let mut fw = Framework::subscribe(&c, "bad", "bad").await;
    let offers = fw.offers().await;
    let o = offers[0].clone();
    // One call: a task that fits, one too big for what is left, a duplicate
    // id, an unknown module and a malformed id.
    fw.accept(
        &[&o],
        vec![
            spec("ok-1", &sha, "cpus:1;mem:64MiB"),
            spec("too-big", &sha, "cpus:1.5;mem:64MiB"),
            spec("ok-1", &sha, "cpus:0.1;mem:1MiB"),
            spec("no-module", &"0".repeat(64), "cpus:0.1;mem:1MiB"),
            spec("bad id!", &sha, "cpus:0.1;mem:1MiB"),
        ],
    )
    .await;
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 5 {
        let st = fw.update().await;
        let key = if st.task_id == "ok-1" && state(&st) == v1::TaskState::TaskError {
            "dup".to_string()
        } else {
            st.task_id.clone()
        };
        fw.ack(&st).await;
        seen.entry(key).or_insert((state(&st), st.reason.clone(), st.message.clone()));
    }
    assert_eq!(seen["ok-1"].0, v1::TaskState::TaskRunning);
    assert_eq!(seen["too-big"].0, v1::TaskState::TaskError);
    assert_eq!(seen["too-big"].1, "insufficient_resources");
    assert_eq!(seen["dup"].1, "duplicate_task_id");
    assert_eq!(seen["no-module"].1, "unknown_module");
    assert_eq!(seen["bad id!"].1, "invalid_task_id");
    for (_, (_, _, msg)) in seen.iter() {
        assert!(msg.is_empty() || msg.chars().next().unwrap().is_lowercase() || msg.starts_with("task"), "{msg}");
    }
    // A stale offer (already used above): every task is dropped.
    fw.accept(&[&o], vec![spec("late", &sha, "cpus:0.1;mem:1MiB")]).await;
    let st = loop {
        let st = fw.update().await;
        if st.task_id == "late" {
            break st;
        }
    };
    assert_eq!((state(&st), st.reason.as_str()), (v1::TaskState::TaskDropped, "invalid_offers"));
    // Calls for unknown frameworks are refused; the master stays up.
    let mut client = c.scheduler();
    let e = client.call(v1::Call { framework_id: "nobody".into(), call: None }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // The good task runs; teardown kills it.
    fw.call(v1::call::Call::Teardown(v1::call::Teardown {})).await.unwrap();
    let t = c.wait_task("ok-1", None).await;
    assert_eq!(t.state, v1::TaskState::TaskKilled as i32);
}

/// Accepts one task per offer, declining the rest with no filter, forever.
async fn greedy(mut fw: Framework, sha: String, tag: &'static str) {
    let mut n = 0;
    loop {
        match fw.next().await {
            E::Offers(o) => {
                for offer in o.offers {
                    n += 1;
                    fw.accept(&[&offer], vec![spec(&format!("{tag}-{n}"), &sha, "cpus:0.5;mem:64MiB")]).await;
                }
            }
            E::Update(u) => {
                let st = u.status.unwrap();
                fw.ack(&st).await;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frameworks_in_two_roles_get_drf_fair_shares() {
    // 2 agents x 2 cpus = 4 cpus; tasks of 0.5 cpu that run until killed:
    // 8 slots. DRF over roles a and b (weight 1 each): 4 tasks each,
    // dominant shares 2/4 = 0.5 and 0.5.
    let c = cluster(2, "cpus:2;mem:4GiB").await;
    let sha = c.upload_wat(SPIN).await;
    let a = Framework::subscribe(&c, "a", "team-a").await;
    let b = Framework::subscribe(&c, "b", "team-b").await;
    let (ida, idb) = (a.id.clone(), b.id.clone());
    let ha = tokio::spawn(greedy(a, sha.clone(), "a"));
    let hb = tokio::spawn(greedy(b, sha, "b"));
    let count = |tasks: &[v1::TaskSummary], fw: &str| {
        tasks.iter().filter(|t| t.framework_id == fw && t.state == v1::TaskState::TaskRunning as i32).count()
    };
    let mut last = (0, 0);
    for _ in 0..500 {
        let tasks = c.operator().list_tasks(v1::ListTasksRequest::default()).await.unwrap().into_inner().tasks;
        last = (count(&tasks, &ida), count(&tasks, &idb));
        if last.0 + last.1 == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, (4, 4), "running tasks per framework");
    // (Role shares from ListRoles also count outstanding offers of leftover
    // memory, so they are not compared here; the roles are listed, each with
    // its framework.)
    let roles = c.operator().list_roles(v1::ListRolesRequest {}).await.unwrap().into_inner().roles;
    for (role, fw) in [("team-a", &ida), ("team-b", &idb)] {
        let r = roles.iter().find(|r| r.role == role).expect("role listed");
        assert_eq!(&r.frameworks, &vec![fw.clone()]);
        assert!(r.dominant_share >= 0.5, "{r:?}");
    }
    ha.abort();
    hb.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_updates_are_reconciled_and_redelivered_on_failover() {
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let mut fw = Framework::subscribe(&c, "forgetful", "forgetful").await;
    let offers = fw.offers().await;
    fw.accept(&[&offers[0]], vec![spec("f-1", &sha, "cpus:0.5;mem:64MiB")]).await;
    // Read the updates but acknowledge none.
    let fin = loop {
        let st = fw.update().await;
        if state(&st) == v1::TaskState::TaskFinished {
            break st;
        }
    };
    // Implicit reconciliation still reports the unacknowledged terminal task.
    fw.call(v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: vec![] })).await.unwrap();
    let r = fw.update().await;
    assert_eq!(
        (r.task_id.as_str(), state(&r), r.reason.as_str()),
        ("f-1", v1::TaskState::TaskFinished, "reconciliation")
    );

    // Fail over: a new connection with the same id gets the update again.
    let id = fw.id.clone();
    drop(fw);
    let mut client = c.scheduler();
    let mut events = client
        .subscribe(v1::SubscribeRequest {
            framework: Some(v1::FrameworkInfo {
                framework_id: id.clone(),
                name: "again".into(),
                role: "forgetful".into(),
                failover_timeout_s: 0.0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut fw = Framework {
        id: id.clone(),
        events: {
            let first = events.message().await.unwrap().unwrap();
            assert!(matches!(first.event, Some(E::Subscribed(_))));
            events
        },
        client,
    };
    let again = fw.update().await;
    assert_eq!((again.task_id.as_str(), &again.uuid), ("f-1", &fin.uuid));
    fw.ack(&again).await;
    // Acknowledged: implicit reconciliation has nothing left to say, which the
    // explicit answer for an unknown id (sent after it) proves.
    fw.call(v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: vec![] })).await.unwrap();
    fw.call(v1::call::Call::Reconcile(v1::call::Reconcile { task_ids: vec!["marker".into()] })).await.unwrap();
    assert_eq!(fw.update().await.task_id, "marker");

    // Teardown is final: the id cannot subscribe again.
    fw.call(v1::call::Call::Teardown(v1::call::Teardown {})).await.unwrap();
    let e = c
        .scheduler()
        .subscribe(v1::SubscribeRequest {
            framework: Some(v1::FrameworkInfo {
                framework_id: id,
                name: "x".into(),
                role: "forgetful".into(),
                failover_timeout_s: 0.0,
            }),
        })
        .await
        .expect_err("refused");
    assert!(e.message().contains("torn down"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_resources_come_back_when_the_filter_expires() {
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    let mut fw = Framework::subscribe(&c, "picky", "picky").await;
    let offers = fw.offers().await;
    let t0 = std::time::Instant::now();
    fw.call(v1::call::Call::Decline(v1::call::Decline {
        offer_ids: vec![offers[0].offer_id.clone()],
        filters: Some(v1::Filters { refuse_seconds: Some(0.3) }),
    }))
    .await
    .unwrap();
    // No other event happens in the cluster; the offer must still come back.
    let again = fw.offers().await;
    assert_eq!(again.len(), 1);
    assert!(t0.elapsed() >= Duration::from_millis(300), "not before the filter expires: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_silent_agent_become_unreachable_then_gone() {
    use v1::TaskState::*;
    let c = cluster_with(1, "cpus:1;mem:1GiB", |cfg| {
        cfg.agent_heartbeat_interval = Duration::from_millis(100);
        cfg.agent_timeout = Duration::from_millis(400);
        cfg.agent_reregister_timeout = Duration::from_millis(800);
    })
    .await;
    let sha = c.upload_wat(SPIN).await;
    let mut fw = Framework::subscribe(&c, "partition-aware", "p").await;
    let offers = fw.offers().await;
    fw.accept(&[&offers[0]], vec![spec("p-1", &sha, "cpus:0.5;mem:16MiB")]).await;
    loop {
        let st = fw.update().await;
        fw.ack(&st).await;
        if state(&st) == TaskRunning {
            break;
        }
    }
    c.stop_agent(0);
    // Silent past agent_timeout: UNREACHABLE (not terminal) ...
    let st = fw.update().await;
    assert_eq!((st.task_id.as_str(), state(&st), st.reason.as_str()), ("p-1", TaskUnreachable, "agent_lost"));
    assert_eq!(c.task("p-1").await.state, TaskUnreachable as i32);
    // ... and GONE (terminal) when it does not come back within agent_reregister_timeout.
    let st = fw.update().await;
    assert_eq!((st.task_id.as_str(), state(&st), st.reason.as_str()), ("p-1", TaskGone, "agent_gone"));
    assert!(wasmos_proto::state_from_wire(c.task("p-1").await.state).unwrap().is_terminal());
}

/// A framework that fails over before its old connection is seen closed
/// (here: still open) gets the resources its old connection held offered
/// again: the new connection knows nothing of the old offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_of_the_old_connection_are_offered_again_at_failover() {
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    let mut old = Framework::subscribe(&c, "quick", "quick").await;
    let held = old.offers().await;
    assert_eq!(held.len(), 1);
    let mut client = c.scheduler();
    let mut events = client
        .subscribe(v1::SubscribeRequest {
            framework: Some(v1::FrameworkInfo {
                framework_id: old.id.clone(),
                name: "quick".into(),
                role: "quick".into(),
                failover_timeout_s: 60.0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let offered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.message().await.unwrap().unwrap().event {
                Some(E::Offers(o)) => return o.offers,
                _ => continue,
            }
        }
    })
    .await
    .expect("the old connection's resources offered to the new one");
    assert_eq!(offered[0].agent_id, held[0].agent_id);
    assert_ne!(offered[0].offer_id, held[0].offer_id);
    drop(old);
}

/// Sleeps `secs` seconds in one `poll_oneoff`.
fn sleeper_wat(secs: u64) -> String {
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (i64.store (i32.const 104) (i64.const 1))
            (i32.store8 (i32.const 112) (i32.const 0))
            (i32.store (i32.const 120) (i32.const 1))
            (i64.store (i32.const 128) (i64.const {}))
            (i64.store (i32.const 136) (i64.const 0))
            (i32.store16 (i32.const 144) (i32.const 0))
            (drop (call $poll (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300)))))"#,
        secs * 1_000_000_000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_framework_is_told_of_a_drain_and_gets_no_offers_from_a_draining_or_ineligible_agent() {
    let c = cluster(2, "cpus:1;mem:1GiB").await;
    let sha = c.upload_wat(&sleeper_wat(60)).await;
    let mut fw = Framework::subscribe(&c, "drained", "eng").await;
    let offers = fw.offers().await;
    let x = offers[0].agent_id.clone();
    fw.accept(&[&offers[0]], vec![spec("d-1", &sha, "cpus:0.5;mem:64MiB")]).await;
    c.wait_task("d-1", Some(v1::TaskState::TaskRunning)).await;

    // Only a token that may drain everywhere may drain.
    let viewer = c
        .operator()
        .create_token(v1::CreateTokenRequest {
            name: "viewer".into(),
            grants: vec!["view:*".into(), "drain:eng".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let ch = Target { url: c.url.clone(), ca_pem: None, identity: None, token: Some(viewer) }.connect().await.unwrap();
    let req = v1::DrainAgentRequest { agent_id: x.clone(), deadline_ms: Some(3_600_000), ..Default::default() };
    let denied = v1::operator_client::OperatorClient::new(ch).drain_agent(req.clone()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let bad =
        c.operator().drain_agent(v1::DrainAgentRequest { agent_id: "nope".into(), ..req.clone() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound, "{bad:?}");

    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let a = c.operator().drain_agent(req).await.unwrap().into_inner();
    assert_eq!((a.mode.as_str(), a.status.as_str()), ("draining", "draining"));
    assert!(a.drain_deadline_ms >= t0 + 3_590_000, "{a:?}");
    // The framework hears which of its tasks must move, and by when; from
    // then on no offer names the draining agent.
    // (Offers made before the drain may still arrive ahead of its event.)
    let mut offered_x_after = false;
    let drain = loop {
        if let E::Drain(d) = fw.next().await {
            break d;
        }
    };
    assert_eq!((drain.agent_id.as_str(), drain.task_ids.as_slice()), (x.as_str(), &["d-1".to_string()][..]));
    assert_eq!(drain.deadline_ms, a.drain_deadline_ms);
    // A failover hears of it again: the new connection may have missed it.
    let mut events = c
        .scheduler()
        .subscribe(v1::SubscribeRequest {
            framework: Some(v1::FrameworkInfo {
                framework_id: fw.id.clone(),
                name: "drained".into(),
                role: "eng".into(),
                failover_timeout_s: 0.0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let again = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
        if let Some(E::Drain(d)) = ev.event {
            break d;
        }
    };
    assert_eq!(again, drain);
    fw.events = events;
    fw.call(v1::call::Call::Revive(v1::call::Revive {})).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        offered_x_after |= fw.decline_offers_within(Duration::from_millis(200)).await.contains(&x);
    }
    assert!(!offered_x_after, "a draining agent is offered to no one");
    assert_eq!(c.task("d-1").await.state, v1::TaskState::TaskRunning as i32, "no deadline yet: it runs on");

    // Undrained, it is offered again; set ineligible, it is not.
    let a = c.operator().undrain_agent(v1::AgentRequest { agent_id: x.clone() }).await.unwrap().into_inner();
    assert_eq!(a.mode, "active");
    let mut back = false;
    for _ in 0..50 {
        back |= fw.decline_offers_within(Duration::from_millis(200)).await.contains(&x);
        if back {
            break;
        }
    }
    assert!(back, "an undrained agent is offered again");
    let a = c
        .operator()
        .set_eligibility(v1::EligibilityRequest { agent_id: x.clone(), eligible: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.status.as_str(), a.eligible), ("ineligible", false));
    let gone = c.operator().mark_gone(v1::AgentRequest { agent_id: x.clone() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::FailedPrecondition, "only a drained agent may be marked gone: {gone:?}");
    // Force: the deadline is now; the remote framework's task is killed.
    let a = c
        .operator()
        .drain_agent(v1::DrainAgentRequest { agent_id: x.clone(), force: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.mode, "draining");
    let t = c.wait_task("d-1", None).await;
    assert_eq!(
        (t.state, t.message.as_str()),
        (v1::TaskState::TaskKilled as i32, "killed at its agent's drain deadline")
    );
}
