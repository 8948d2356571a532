//! Roles through the Operator API: weights, quota and dynamic reservations
//! change what the allocator offers, at once; refused requests change nothing.
//! (That they survive a master restart is tested with real processes in the
//! CLI's recovery tests.)

use std::time::Duration;

use tonic::Code;
use wasmos_proto::v1;

use crate::*;

fn submit_req(sha: &str, count: u32, res: &str) -> v1::SubmitRequest {
    v1::SubmitRequest {
        template: Some(v1::TaskSpec { name: "t".into(), ..spec("", sha, res) }),
        count,
        ..Default::default()
    }
}

async fn role(c: &Cluster, name: &str) -> Option<v1::RoleSummary> {
    c.operator()
        .list_roles(v1::ListRolesRequest {})
        .await
        .unwrap()
        .into_inner()
        .roles
        .into_iter()
        .find(|r| r.role == name)
}

async fn agent_id(c: &Cluster) -> String {
    c.operator().list_agents(v1::ListAgentsRequest::default()).await.unwrap().into_inner().agents[0].agent_id.clone()
}

fn reserve_req(agent: &str, role: &str, res: &str) -> v1::ReserveRequest {
    v1::ReserveRequest { agent_id: agent.into(), role: role.into(), resources: resources(res) }
}

/// True if the task is still queued after `wait` (offers come every ~50 ms here).
async fn still_queued(c: &Cluster, id: &str, wait: Duration) -> bool {
    tokio::time::sleep(wait).await;
    c.task(id).await.state == v1::TaskState::TaskStaging as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_keeps_resources_from_other_roles_until_released() {
    let c = cluster(1, "cpus:2;mem:2GiB").await;
    let agent = agent_id(&c).await;
    let r = c.operator().reserve(reserve_req(&agent, "eng", "cpus:2")).await.unwrap().into_inner();
    assert_eq!(r.reserved, resources("cpus:2"));
    let eng = role(&c, "eng").await.expect("the role exists once something is reserved for it");
    assert_eq!(eng.reserved, resources("cpus:2"));

    // The batch framework (role "batch") cannot use eng's cpus.
    let sha = c.upload_wat(&echo_wat("ran")).await;
    let id =
        c.operator().submit(submit_req(&sha, 1, "cpus:1;mem:64MiB")).await.unwrap().into_inner().task_ids[0].clone();
    assert!(still_queued(&c, &id, Duration::from_millis(800)).await, "{:?}", c.task(&id).await);

    let r = c.operator().unreserve(reserve_req(&agent, "eng", "cpus:2")).await.unwrap().into_inner();
    assert_eq!(r.reserved, Some(v1::Resources::default()));
    let t = c.wait_task(&id, None).await;
    assert_eq!(t.state, v1::TaskState::TaskFinished as i32, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_limit_caps_a_role_and_raising_it_takes_effect_at_once() {
    let c = cluster(1, "cpus:4;mem:4GiB").await;
    let resp = c
        .operator()
        .update_role(v1::UpdateRoleRequest {
            role: "batch".into(),
            quota_limit: resources("cpus:1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let q = resp.role.unwrap().quota.unwrap();
    assert_eq!(q.limit, resources("cpus:1"));

    let sha = c.upload_wat(SPIN).await;
    let ids = c.operator().submit(submit_req(&sha, 2, "cpus:1;mem:64MiB")).await.unwrap().into_inner().task_ids;
    // One runs; the other waits for quota although the agent has room.
    let first = c.wait_task(&ids[0], Some(v1::TaskState::TaskRunning)).await;
    assert_eq!(first.state, v1::TaskState::TaskRunning as i32);
    assert!(still_queued(&c, &ids[1], Duration::from_millis(800)).await, "{:?}", c.task(&ids[1]).await);

    c.operator()
        .update_role(v1::UpdateRoleRequest {
            role: "batch".into(),
            quota_limit: resources("cpus:2"),
            ..Default::default()
        })
        .await
        .unwrap();
    c.wait_task(&ids[1], Some(v1::TaskState::TaskRunning)).await;
    for id in &ids {
        c.operator().kill_task(v1::TaskActionRequest { task_id: id.clone() }).await.unwrap();
        c.wait_task(id, Some(v1::TaskState::TaskKilled)).await;
    }
}

/// `wasmos submit --role`: the batch framework serves each role from its own
/// queue, and each role's quota, share and listing count its own tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_framework_accounts_each_submit_to_its_role() {
    let c = cluster(1, "cpus:4;mem:4GiB").await;
    let mut op = c.operator();
    op.update_role(v1::UpdateRoleRequest { role: "a".into(), quota_limit: resources("cpus:1"), ..Default::default() })
        .await
        .unwrap();
    let sha = c.upload_wat(SPIN).await;
    let to = |role: &str, count| v1::SubmitRequest { role: role.into(), ..submit_req(&sha, count, "cpus:1;mem:64MiB") };
    let a = op.submit(to("a", 2)).await.unwrap().into_inner().task_ids;
    let running = c.wait_task(&a[0], Some(v1::TaskState::TaskRunning)).await;
    assert_eq!(running.role, "a", "{running:?}");
    assert_eq!(running.framework_id, "batch");
    // a's limit holds a's second task back though the agent has room...
    assert!(still_queued(&c, &a[1], Duration::from_millis(800)).await, "{:?}", c.task(&a[1]).await);
    // ...and does not hold back b's or the default role's.
    let b = op.submit(to("b", 2)).await.unwrap().into_inner().task_ids;
    let d = op.submit(submit_req(&sha, 1, "cpus:1;mem:64MiB")).await.unwrap().into_inner().task_ids;
    for id in b.iter().chain(&d) {
        c.wait_task(id, Some(v1::TaskState::TaskRunning)).await;
    }
    assert_eq!(c.task(&b[0]).await.role, "b");
    assert_eq!(c.task(&d[0]).await.role, "batch");
    assert_eq!(c.task(&a[1]).await.state, v1::TaskState::TaskStaging as i32);
    // Each role's allocation is its own tasks'.
    for (r, cpus) in [("a", "cpus:1"), ("b", "cpus:2"), ("batch", "cpus:1")] {
        let got = role(&c, r).await.unwrap_or_else(|| panic!("role {r} listed"));
        let cpus_of = |x: &Option<v1::Resources>| wasmos_proto::resources_from_wire(x.as_ref()).unwrap().get("cpus");
        assert_eq!(cpus_of(&got.allocated), cpus_of(&resources(cpus)), "{r}: {got:?}");
    }
    let listed = op
        .list_tasks(v1::ListTasksRequest { role: "b".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(listed.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), b);
    // Killing one of b's tasks frees b's share, not another role's; raising
    // a's limit lets its queued task run.
    op.kill_task(v1::TaskActionRequest { task_id: b[0].clone() }).await.unwrap();
    c.wait_task(&b[0], Some(v1::TaskState::TaskKilled)).await;
    op.update_role(v1::UpdateRoleRequest { role: "a".into(), quota_limit: resources("cpus:2"), ..Default::default() })
        .await
        .unwrap();
    c.wait_task(&a[1], Some(v1::TaskState::TaskRunning)).await;
    // A bad role is refused before anything is queued.
    let e = op.submit(to("no good", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("role \"no good\""), "{e:?}");
    for id in a.iter().chain(&b[1..]).chain(&d) {
        op.kill_task(v1::TaskActionRequest { task_id: id.clone() }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_role_and_reservation_requests_are_refused_and_change_nothing() {
    let c = cluster(1, "cpus:2;mem:2GiB").await;
    let agent = agent_id(&c).await;
    let mut op = c.operator();
    op.update_role(v1::UpdateRoleRequest {
        role: "eng".into(),
        weight: Some(2.0),
        quota_guarantee: resources("cpus:1"),
        ..Default::default()
    })
    .await
    .unwrap();

    let refused = [
        (v1::UpdateRoleRequest { role: "eng".into(), weight: Some(0.0), ..Default::default() }, "weight"),
        (v1::UpdateRoleRequest { role: "eng".into(), weight: Some(f64::NAN), ..Default::default() }, "weight"),
        (
            v1::UpdateRoleRequest {
                role: "eng".into(),
                weight: Some(5.0),
                quota_limit: resources("cpus:0.5"),
                ..Default::default()
            },
            "exceeds the limit",
        ),
        (v1::UpdateRoleRequest { role: "no spaces".into(), weight: Some(1.0), ..Default::default() }, "role"),
    ];
    for (req, needle) in refused {
        let e = op.update_role(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(e.message().contains(needle), "{e:?}");
        assert!(e.message().starts_with(|c: char| c.is_lowercase()), "lower-case: {e:?}");
    }
    // Nothing of the refused requests was applied.
    let eng = role(&c, "eng").await.unwrap();
    assert_eq!(eng.weight, 2.0);
    assert_eq!(eng.quota.unwrap().guarantee, resources("cpus:1"));

    let e = op.reserve(reserve_req("agent-nope", "eng", "cpus:1")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = op.reserve(reserve_req(&agent, "eng", "cpus:3")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("unreserved and unallocated"), "{e:?}");
    let e = op
        .reserve(v1::ReserveRequest { agent_id: agent.clone(), role: "eng".into(), resources: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = op.unreserve(reserve_req(&agent, "eng", "cpus:1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(role(&c, "eng").await.unwrap().reserved, Some(v1::Resources::default()));
}
