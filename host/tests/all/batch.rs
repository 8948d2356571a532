//! The built-in batch framework through the Operator API.

use std::time::Duration;

use wasmos_proto::v1;

use crate::*;

fn submit_req(sha: &str, count: u32, res: &str) -> v1::SubmitRequest {
    v1::SubmitRequest {
        template: Some(v1::TaskSpec { name: "t".into(), ..spec("", sha, res) }),
        count,
        priority: 0,
        constraints: vec![],
        max_attempts: 0,
        framework: String::new(),
        estimated_fuel: None,
        role: String::new(),
        signature: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_offer_launch_running_finished() {
    let c = cluster(1, "cpus:2;mem:2GiB").await;
    let sha = c.upload_wat(&echo_wat("hi from the cluster")).await;
    let ids = c.operator().submit(submit_req(&sha, 3, "cpus:0.5;mem:64MiB")).await.unwrap().into_inner().task_ids;
    assert_eq!(ids.len(), 3);
    for id in &ids {
        let t = c.wait_task(id, None).await;
        assert_eq!(t.state, v1::TaskState::TaskFinished as i32, "{t:?}");
        let o = t.outcome.unwrap();
        assert_eq!(o.stdout, b"hi from the cluster");
        assert_eq!(o.exit_code, Some(0));
        assert!(o.cpu_time_ms > 0.0, "{o:?}");
        assert!(!o.fuel_metered && o.fuel_consumed == 0, "no budget: fuel is not counted");
        assert!(!t.agent_id.is_empty());
        assert_eq!(t.framework_id, "batch");
        // timestamps in order
        assert!(t.submitted_at_ms > 0 && t.submitted_at_ms <= t.started_at_ms && t.started_at_ms <= t.finished_at_ms);
    }
    // the resources came back: nothing allocated
    let agents = c.operator().list_agents(v1::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
    assert_eq!(agents[0].running_tasks, 0);
    let list = c
        .operator()
        .list_tasks(v1::ListTasksRequest {
            state: v1::TaskState::TaskFinished as i32,
            framework_id: "batch".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.tasks.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_larger_than_the_cluster_drains() {
    // 0.5 cpu each on 1 cpu: at most 2 at a time; 40 tasks must all finish.
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let ids = c.operator().submit(submit_req(&sha, 40, "cpus:0.5;mem:64MiB")).await.unwrap().into_inner().task_ids;
    for id in &ids {
        assert_eq!(c.wait_task(id, None).await.state, v1::TaskState::TaskFinished as i32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_pause_and_resume_a_running_task() {
    let c = cluster(1, "cpus:2;mem:2GiB").await;
    let sha = c.upload_wat(SPIN).await;
    let id =
        c.operator().submit(submit_req(&sha, 1, "cpus:1;mem:64MiB")).await.unwrap().into_inner().task_ids.remove(0);
    c.wait_task(&id, Some(v1::TaskState::TaskRunning)).await;
    let req = || v1::TaskActionRequest { task_id: id.clone() };
    c.operator().pause_task(req()).await.unwrap();
    c.wait_task(&id, Some(v1::TaskState::TaskPaused)).await;
    c.operator().resume_task(req()).await.unwrap();
    c.wait_task(&id, Some(v1::TaskState::TaskRunning)).await;
    c.operator().kill_task(req()).await.unwrap();
    let t = c.wait_task(&id, None).await;
    assert_eq!(t.state, v1::TaskState::TaskKilled as i32, "{t:?}");
    assert_eq!(t.outcome.unwrap().kind, v1::OutcomeKind::OutcomeKilled as i32);
    // a second kill is refused with a clear message, and the master stays up
    let e = c.operator().kill_task(req()).await.unwrap_err();
    assert!(e.message().contains("already ended"), "{e}");
    let e = c.operator().kill_task(v1::TaskActionRequest { task_id: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_can_be_killed_and_bad_submits_are_refused() {
    // No room for the task (2 cpus asked of a 1-cpu agent): it stays queued.
    let c = cluster(1, "cpus:1;mem:1GiB").await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let id =
        c.operator().submit(submit_req(&sha, 1, "cpus:2;mem:64MiB")).await.unwrap().into_inner().task_ids.remove(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.task(&id).await.state, v1::TaskState::TaskStaging as i32);
    c.operator().kill_task(v1::TaskActionRequest { task_id: id.clone() }).await.unwrap();
    assert_eq!(c.wait_task(&id, None).await.state, v1::TaskState::TaskKilled as i32);

    let e = c.operator().submit(submit_req(&"0".repeat(64), 1, "cpus:1")).await.unwrap_err();
    assert!(e.message().contains("upload it first"), "{e}");
    let e = c.operator().submit(submit_req(&sha, 1, "")).await.unwrap_err();
    assert!(e.message().contains("no resources"), "{e}");
    // uploads that are not wasm are refused with a reason
    let mut art = v1::artifacts_client::ArtifactsClient::new(c.channel.clone());
    let e = art
        .upload(tokio_stream::iter(vec![v1::Chunk {
            sha256: String::new(),
            data: b"#!/bin/sh".to_vec(),
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("not a wasm module"), "{e}");
    let e = art
        .upload(tokio_stream::iter(vec![v1::Chunk {
            sha256: "ab".repeat(32),
            data: wat::parse_str(SPIN).unwrap(),
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert!(e.message().contains("hash mismatch"), "{e}");
    // and the master is still serving
    assert_eq!(c.operator().list_agents(v1::ListAgentsRequest::default()).await.unwrap().into_inner().agents.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_pick_agents_by_attribute() {
    let c = cluster(2, "cpus:2;mem:1GiB").await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let mut req = submit_req(&sha, 6, "cpus:0.1;mem:32MiB");
    req.constraints = vec![v1::Attribute { key: "index".into(), value: "1".into() }];
    let ids = c.operator().submit(req).await.unwrap().into_inner().task_ids;
    let agents = c.operator().list_agents(v1::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
    let wanted = agents
        .iter()
        .find(|a| a.info.as_ref().unwrap().attributes.iter().any(|x| x.key == "index" && x.value == "1"))
        .unwrap()
        .agent_id
        .clone();
    for id in ids {
        let t = c.wait_task(&id, None).await;
        assert_eq!(t.agent_id, wanted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_lost_agent_are_retried_elsewhere() {
    let c = cluster_with(2, "cpus:1;mem:1GiB", |cfg| {
        cfg.agent_heartbeat_interval = Duration::from_millis(100);
        cfg.agent_timeout = Duration::from_millis(500);
    })
    .await;
    let sha = c.upload_wat(SPIN).await;
    let id =
        c.operator().submit(submit_req(&sha, 1, "cpus:1;mem:64MiB")).await.unwrap().into_inner().task_ids.remove(0);
    let first = c.wait_task(&id, Some(v1::TaskState::TaskRunning)).await;
    let agents = c.operator().list_agents(v1::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
    let idx = agents.iter().position(|a| a.agent_id == first.agent_id).unwrap();
    // agents are listed sorted by id; hostnames say which test agent it is
    let host = agents[idx].info.as_ref().unwrap().hostname.clone();
    let n: usize = host.trim_start_matches("test-agent-").parse().unwrap();
    c.stop_agent(n);
    // After the agent times out the task is LOST, requeued, and runs on the other agent.
    let mut t = c.task(&id).await;
    for _ in 0..500 {
        t = c.task(&id).await;
        if t.state == v1::TaskState::TaskRunning as i32 && t.agent_id != first.agent_id {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.state, v1::TaskState::TaskRunning as i32, "{t:?}");
    assert_ne!(t.agent_id, first.agent_id);
    assert_eq!(t.attempt, 2);
    assert!(t.message.contains("retrying after"), "{t:?}");
    let agents = c.operator().list_agents(v1::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
    assert_eq!(agents.len(), 1, "the lost agent is gone");
    c.operator().kill_task(v1::TaskActionRequest { task_id: id.clone() }).await.unwrap();
    assert_eq!(c.wait_task(&id, None).await.state, v1::TaskState::TaskKilled as i32);
}
