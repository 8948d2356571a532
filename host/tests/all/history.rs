//! Leaving it running: ended tasks leave memory but stay answerable from the
//! registry, listings page, history is collected, watches resume.

use std::time::Duration;

use tokio_stream::StreamExt;
use wasmos_proto::v1;

use crate::*;

fn submit_req(sha: &str, count: u32) -> v1::SubmitRequest {
    v1::SubmitRequest {
        template: Some(v1::TaskSpec { name: "t".into(), ..spec("", sha, "cpus:0.1;mem:16MiB") }),
        count,
        ..Default::default()
    }
}

/// Every task, walking pages of `page_size`.
async fn list_all(c: &Cluster, page_size: u32) -> (Vec<v1::TaskSummary>, usize) {
    let (mut out, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let r = c
            .operator()
            .list_tasks(v1::ListTasksRequest { page_size, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(r.tasks.len() <= page_size as usize);
        pages += 1;
        out.extend(r.tasks);
        if r.next_page_token.is_empty() {
            return (out, pages);
        }
        token = r.next_page_token;
    }
}

async fn wait_all_finished(c: &Cluster, n: usize) -> Vec<v1::TaskSummary> {
    for _ in 0..1000 {
        let (all, _) = list_all(c, 1000).await;
        if all.len() == n && all.iter().all(|t| t.state == v1::TaskState::TaskFinished as i32) {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("tasks did not all finish: {:?}", list_all(c, 1000).await.0.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_tasks_leave_memory_and_are_answered_from_the_registry() {
    let c = cluster_with(1, "cpus:4;mem:4GiB", |cfg| cfg.max_completed_tasks = 5).await;
    let sha = c.upload_wat(&echo_wat("kept")).await;
    let ids = c.operator().submit(submit_req(&sha, 30)).await.unwrap().into_inner().task_ids;
    wait_all_finished(&c, 30).await;
    // A tick (1 s) evicts all but 5 of the ended tasks from memory.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Pages of 7: 30 rows in 5 pages, in submission order, each task once.
    let (all, pages) = list_all(&c, 7).await;
    let listed: Vec<String> = all.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(listed, ids);
    assert_eq!(pages, 5);
    // The first task left memory long ago: the registry answers, output and all.
    let t = c.task(&ids[0]).await;
    assert_eq!(t.state, v1::TaskState::TaskFinished as i32);
    assert_eq!(t.outcome.unwrap().stdout, b"kept");
    assert_eq!(t.role, "batch");
    // Filters apply to both.
    let r = c
        .operator()
        .list_tasks(v1::ListTasksRequest { name_prefix: "nope".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.tasks.is_empty() && r.next_page_token.is_empty());
    let bad = c
        .operator()
        .list_tasks(v1::ListTasksRequest { page_token: "x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_registry_ended_tasks_past_the_bound_are_gone() {
    let c = cluster_with(1, "cpus:4;mem:4GiB", |cfg| {
        cfg.max_completed_tasks = 5;
        cfg.durable_registry = false;
    })
    .await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let ids = c.operator().submit(submit_req(&sha, 30)).await.unwrap().into_inner().task_ids;
    c.wait_task(ids.last().unwrap(), None).await;
    let mut held = usize::MAX;
    for _ in 0..100 {
        held = list_all(&c, 1000).await.0.len();
        if held <= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held <= 5, "{held} tasks still held");
    // Tasks end in no fixed order: any that is no longer listed is gone.
    let listed: Vec<String> = list_all(&c, 1000).await.0.into_iter().map(|t| t.task_id).collect();
    let gone = ids.iter().find(|id| !listed.contains(id)).expect("some task left memory");
    let e = c.operator().get_task(v1::GetTaskRequest { task_id: gone.clone() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_past_its_time_is_collected() {
    let c = cluster_with(1, "cpus:4;mem:4GiB", |cfg| {
        cfg.max_completed_tasks = 0;
        cfg.task_history = Duration::from_millis(200);
    })
    .await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let ids = c.operator().submit(submit_req(&sha, 10)).await.unwrap().into_inner().task_ids;
    c.wait_task(&ids[9], None).await;
    // Out of memory at the next tick, out of the registry at the writer's
    // next collection (at most a second later) once 200 ms have passed.
    for _ in 0..100 {
        if list_all(&c, 100).await.0.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(list_all(&c, 100).await.0.is_empty());
    let e = c.operator().get_task(v1::GetTaskRequest { task_id: ids[0].clone() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_any_sequence_the_ring_holds() {
    let c = cluster_with(1, "cpus:4;mem:4GiB", |cfg| cfg.watch_history = 1_000).await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let sub = c.operator().submit(submit_req(&sha, 3)).await.unwrap().into_inner();
    for id in &sub.task_ids {
        c.wait_task(id, None).await;
    }
    // From the seq the submit gave: every update of the three tasks, in order.
    let watch = |from| {
        let mut op = c.operator();
        async move {
            let req = v1::WatchRequest { framework_id: "batch".into(), from: Some(from) };
            op.watch(req).await.unwrap().into_inner()
        }
    };
    let mut w = watch(sub.watch_seq).await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
        if let Some(v1::watch_event::Event::Task(st)) = ev.event {
            seen.push((ev.seq, st.task_id, st.state));
        }
    }
    // RUNNING and FINISHED of each; sequence numbers strictly increasing
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    for id in &sub.task_ids {
        let states: Vec<i32> = seen.iter().filter(|s| &s.1 == id).map(|s| s.2).collect();
        assert_eq!(states, [v1::TaskState::TaskRunning as i32, v1::TaskState::TaskFinished as i32]);
    }
    // Resuming after the third event gives the fourth next.
    let mut w = watch(seen[2].0).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.seq, seen[3].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_past_the_ring_fails_with_the_oldest_held() {
    let c = cluster_with(1, "cpus:4;mem:4GiB", |cfg| cfg.watch_history = 4).await;
    let sha = c.upload_wat(&echo_wat("x")).await;
    let ids = c.operator().submit(submit_req(&sha, 5)).await.unwrap().into_inner().task_ids;
    for id in &ids {
        c.wait_task(id, None).await;
    }
    // 1 agent added + 10 task updates = 11 events (published once committed:
    // wait for the listing's watch_seq to say so); the ring holds the last 4.
    // A fresh registry's first start numbers after 1 << EPOCH_SHIFT.
    let base = 1u64 << wasmos_host::EPOCH_SHIFT;
    for _ in 0..200 {
        let r = c.operator().list_tasks(v1::ListTasksRequest::default()).await.unwrap().into_inner();
        if r.watch_seq == base + 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = v1::WatchRequest { framework_id: String::new(), from: Some(base + 1) };
    let e = match c.operator().watch(req).await {
        Err(e) => e,
        Ok(mut s) => s.get_mut().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(e.code(), tonic::Code::DataLoss);
    assert!(e.message().contains(&format!("the oldest held is {}", base + 8)), "{}", e.message());
    assert_eq!(wasmos_proto::watch_oldest_held(&e), Some(base + 8));
}
