//! Every reason a validation gives, table by table, on tables built by hand
//! (no sockets, no wasmtime).

use std::time::Duration;

use wasmos_allocator::{Allocation, Quota};
use wasmos_model::{AgentId, FrameworkId, OfferId, Resources, Role, TaskId, TaskSpec, TaskState};

use super::*;
use crate::master::agents::Agent;
use crate::master::cmd::ErrorKind;
use crate::master::frameworks::{Framework, Hosted, Kind};
use crate::master::offers::OfferRec;
use crate::master::roles::Roles;
use crate::master::tasks::Task;

const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn res(s: &str) -> Resources {
    Resources::parse(s).unwrap()
}
fn fw(s: &str) -> FrameworkId {
    FrameworkId::new(s).unwrap()
}
fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}
fn tid(s: &str) -> TaskId {
    TaskId::new(s).unwrap()
}
fn offer(s: &str) -> OfferId {
    OfferId::new(s).unwrap()
}
fn role(s: &str) -> Role {
    Role::new(s).unwrap()
}

/// Frameworks `batch` and `fw-a` (role eng); agents `agent-1` and `agent-2`;
/// offers `o-1` (agent-1, cpus:2;mem:1GiB), `o-2` (agent-1, cpus:1) and
/// `o-3` (agent-2, cpus:1), all held by fw-a.
fn state() -> State {
    let mut s = State::default();
    s.frameworks.insert(fw("batch"), Framework::new("batch".into(), role("batch"), Kind::Batch, Duration::ZERO), false);
    s.frameworks.insert(fw("fw-a"), Framework::new("a".into(), role("eng"), Kind::Remote, Duration::ZERO), true);
    for a in ["agent-1", "agent-2"] {
        let info = AgentInfo { resources: res("cpus:4;mem:4GiB"), ..Default::default() };
        s.agents.insert(agent(a), Agent::new(info));
    }
    for (o, a, r) in [("o-1", "agent-1", "cpus:2;mem:1GiB"), ("o-2", "agent-1", "cpus:1"), ("o-3", "agent-2", "cpus:1")]
    {
        let rec = OfferRec {
            framework: fw("fw-a"),
            agent: agent(a),
            role: role("eng"),
            allocation: Allocation::from(res(r)),
        };
        s.add_offer(offer(o), rec);
    }
    s
}

fn spec(id: &str, r: &str) -> TaskSpec {
    TaskSpec { task_id: id.into(), name: id.into(), module_sha256: SHA.into(), resources: res(r), ..Default::default() }
}

fn add_task(s: &mut State, id: &str, owner: &str, on: Option<&str>) {
    let seq = s.tasks.len() as u64 + 1;
    s.tasks.insert(
        tid(id),
        Task::new(fw(owner), wasmos_model::Role::new("r").unwrap(), std::sync::Arc::new(spec(id, "cpus:1")), 0),
        seq,
        true,
    );
    s.frameworks.add_task(&fw(owner), &tid(id));
    if let Some(a) = on {
        s.place(&tid(id), Some(agent(a)), None);
    }
}

fn has(sha: &str) -> bool {
    sha == SHA || sha == UNSIGNED
}

/// A module the role's signature check refuses.
const UNSIGNED: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

fn signed(role: &Role, sha: &str, sig: &str) -> Result<(), String> {
    if sha == UNSIGNED && sig.is_empty() { Err(format!("role {role} requires signed modules")) } else { Ok(()) }
}

/// The (reason, message) of each refused step, and the ids launched.
fn outcome(p: &AcceptPlan) -> (Vec<(&'static str, String)>, Vec<String>) {
    let mut refused = Vec::new();
    let mut launched = Vec::new();
    for s in &p.steps {
        match s {
            Step::Refuse { reason, message, .. } => refused.push((*reason, message.clone())),
            Step::Launch { id, .. } => launched.push(id.to_string()),
        }
    }
    (refused, launched)
}

fn launches(specs: Vec<TaskSpec>) -> Vec<Launch> {
    specs.into_iter().map(Launch::from).collect()
}

#[test]
fn accept_launches_what_fits_and_returns_the_rest() {
    let s = state();
    let plan = accept(
        &s,
        &fw("batch"),
        &fw("fw-a"),
        &[offer("o-1"), offer("o-2")],
        launches(vec![spec("t1", "cpus:1;mem:512MiB"), spec("t2", "cpus:1.5")]),
        has,
        signed,
    );
    // pool: cpus 2 + 1 = 3, mem 1 GiB; t1 and t2 take cpus 2.5, mem 512 MiB.
    assert_eq!(outcome(&plan), (vec![], vec!["t1".to_string(), "t2".to_string()]));
    assert_eq!(plan.target, Some(Target { agent: agent("agent-1"), role: role("eng") }));
    assert_eq!(plan.leftover.total(), res("cpus:0.5;mem:512MiB"));
    assert_eq!(plan.recover, vec![offer("o-1"), offer("o-2")]);
}

#[test]
fn accept_with_stale_foreign_or_spread_offers_drops_every_task() {
    let s = state();
    for (offers, message) in [
        (vec![offer("o-9")], STALE_OFFERS),
        (vec![], STALE_OFFERS),
        (vec![offer("o-1"), offer("o-3")], OFFERS_SPAN_AGENTS),
    ] {
        let plan = accept(&s, &fw("batch"), &fw("fw-a"), &offers, launches(vec![spec("t1", "cpus:1")]), has, signed);
        assert_eq!(plan.target, None);
        let Step::Refuse { state, reason, message: m, record, .. } = &plan.steps[0] else { panic!("launched") };
        assert_eq!((*state, *reason, m.as_str(), *record), (TaskState::Dropped, "invalid_offers", message, true));
        // Only the framework's own offers go back.
        assert!(plan.recover.iter().all(|o| offers.contains(o)));
    }
    // Another framework's offer is not this one's.
    let plan = accept(&s, &fw("batch"), &fw("fw-b"), &[offer("o-1")], vec![], has, signed);
    assert_eq!((plan.target, plan.recover), (None, vec![]));
}

#[test]
fn accept_checks_each_task_on_its_own() {
    let mut s = state();
    add_task(&mut s, "taken", "fw-a", Some("agent-1"));
    let mut bad_res = Launch::from(spec("t-badres", "cpus:1"));
    bad_res.resources_error = Some("resource X is invalid".into());
    let launch = vec![
        Launch::from(spec("bad id", "cpus:1")),
        Launch::from(spec("taken", "cpus:1")),
        Launch::from(TaskSpec { module_sha256: "b".repeat(64), ..spec("t-nomod", "cpus:1") }),
        Launch::from(TaskSpec { module_sha256: UNSIGNED.into(), ..spec("t-unsigned", "cpus:1") }),
        Launch {
            signature: "ab".into(),
            ..Launch::from(TaskSpec { module_sha256: UNSIGNED.into(), ..spec("t-signed", "cpus:0.5") })
        },
        bad_res,
        Launch::from(spec("t-empty", "")),
        Launch::from(spec("t-ok", "cpus:2")),
        Launch::from(spec("t-ok", "cpus:0.1")),
        Launch::from(spec("t-big", "cpus:1.5")),
    ];
    let plan = accept(&s, &fw("batch"), &fw("fw-a"), &[offer("o-1"), offer("o-2")], launch, has, signed);
    let (refused, launched) = outcome(&plan);
    let reasons: Vec<&str> = refused.iter().map(|r| r.0).collect();
    assert_eq!(
        reasons,
        [
            "invalid_task_id",
            "duplicate_task_id",
            "unknown_module",
            "unsigned_module",
            "invalid_resources",
            "invalid_resources",
            "duplicate_task_id",
            "insufficient_resources",
        ]
    );
    assert!(refused[0].1.contains("' '"), "{}", refused[0].1);
    assert_eq!(refused[1].1, "task id taken is already in use; pick a unique id");
    assert_eq!(refused[2].1, format!("module {:?} is not in the artifact store; upload it first", "b".repeat(64)));
    assert_eq!(refused[3].1, "role eng requires signed modules");
    assert_eq!(refused[4].1, "resource X is invalid");
    assert_eq!(refused[5].1, "task asks for no resources; give it at least cpus or mem");
    // pool cpus 3, mem 1 GiB; t-signed takes 0.5, t-ok 2; t-big needs 1.5 of the 0.5 left.
    assert_eq!(refused[7].1, "task needs cpus:1.5, more than is left of the offer (cpus:0.5;mem:1GiB)");
    assert_eq!(launched, ["t-signed", "t-ok"]);
    // Bad and reused ids are only reported; new ones are recorded.
    let records: Vec<bool> = plan
        .steps
        .iter()
        .filter_map(|s| if let Step::Refuse { record, .. } = s { Some(*record) } else { None })
        .collect();
    assert_eq!(records, [false, false, true, true, true, true, false, true]);
}

#[test]
fn accept_by_batch_launches_its_queued_tasks() {
    let mut s = state();
    add_task(&mut s, "q1", "batch", None);
    let rec = OfferRec {
        framework: fw("batch"),
        agent: agent("agent-1"),
        role: role("batch"),
        allocation: Allocation::from(res("cpus:1")),
    };
    s.add_offer(offer("o-b"), rec);
    let plan =
        accept(&s, &fw("batch"), &fw("batch"), &[offer("o-b")], launches(vec![spec("q1", "cpus:1")]), has, signed);
    assert!(matches!(&plan.steps[0], Step::Launch { queued: true, .. }));
}

#[test]
fn take_uses_reserved_parts_first() {
    let mut pool = Allocation::from(res("cpus:2"));
    pool.reserved.insert(role("eng"), res("cpus:1"));
    // need 1.5: 1 reserved + 0.5 unreserved; left: 1.5 unreserved.
    let got = take(&mut pool, &res("cpus:1.5")).unwrap();
    assert_eq!(got.reserved.get(&role("eng")), Some(&res("cpus:1")));
    assert_eq!(got.unreserved, res("cpus:0.5"));
    assert_eq!(pool.total(), res("cpus:1.5"));
    assert!(take(&mut pool, &res("cpus:2")).is_none());
}

fn check_err<T: std::fmt::Debug>(r: Result<T, Error>, kind: ErrorKind, message: &str) {
    let e = r.unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (kind, message));
}

#[test]
fn callers_must_be_subscribed() {
    let s = state();
    assert!(caller(&s, &fw("batch"), &fw("fw-a")).is_ok());
    for f in ["batch", "fw-zz"] {
        check_err(
            caller(&s, &fw("batch"), &fw(f)),
            ErrorKind::NotFound,
            &format!("framework {f} is not subscribed; subscribe first"),
        );
    }
}

#[test]
fn subscribe_rules() {
    let mut s = state();
    let info = |id: Option<&str>, r: &str| FrameworkInfo {
        framework_id: id.map(fw),
        name: String::new(),
        role: role(r),
        failover_timeout: Duration::ZERO,
    };
    let b = fw("batch");
    assert_eq!(subscribe(&s, &b, &info(None, "eng"), false), Ok(None));
    assert_eq!(subscribe(&s, &b, &info(Some("fw-a"), "eng"), false), Ok(Some(fw("fw-a"))));
    assert_eq!(subscribe(&s, &b, &info(Some("fw-new"), "eng"), false), Ok(Some(fw("fw-new"))));
    check_err(
        subscribe(&s, &b, &info(Some("batch"), "eng"), false),
        ErrorKind::InvalidArgument,
        "framework id \"batch\" is reserved for the built-in framework",
    );
    check_err(
        subscribe(&s, &b, &info(Some("fw-a"), "ops"), false),
        ErrorKind::InvalidArgument,
        "framework fw-a is subscribed in role eng; resubscribe with that role",
    );
    check_err(
        subscribe(&s, &b, &info(Some("fw-a"), "eng"), true),
        ErrorKind::FailedPrecondition,
        "framework fw-a is hosted by the master; manage it with `wasmos framework`",
    );
    let hosted = Kind::Hosted(Hosted::new(HostedInfo::default()));
    s.frameworks.insert(fw("fw-h"), Framework::new("h".into(), role("eng"), hosted, Duration::ZERO), true);
    check_err(
        subscribe(&s, &b, &info(Some("fw-h"), "eng"), false),
        ErrorKind::FailedPrecondition,
        "framework fw-h is hosted by the master; manage it with `wasmos framework`",
    );
    s.frameworks.remove(&fw("fw-a"));
    check_err(
        subscribe(&s, &b, &info(Some("fw-a"), "eng"), false),
        ErrorKind::FailedPrecondition,
        "framework fw-a was torn down; subscribe without a framework_id to start a new one",
    );
}

#[test]
fn acknowledgements() {
    let mut s = state();
    add_task(&mut s, "t1", "fw-a", Some("agent-1"));
    let mut st = TaskStatus::master(&tid("t1"), &fw("fw-a"), None, TaskState::Running, "", String::new());
    st.uuid = vec![7];
    s.frameworks.get_mut(&fw("fw-a")).unwrap().unacked.insert(tid("t1"), st);
    assert_eq!(acknowledge(&s, &fw("fw-a"), &tid("t1"), &[7]), Ok(Ack::Latest { ended: false }));
    assert_eq!(acknowledge(&s, &fw("fw-a"), &tid("t1"), &[6]), Ok(Ack::Duplicate));
    check_err(
        acknowledge(&s, &fw("fw-a"), &tid("nope"), &[7]),
        ErrorKind::NotFound,
        "framework fw-a has no task nope to acknowledge",
    );
}

#[test]
fn task_actions() {
    let mut s = state();
    add_task(&mut s, "queued", "batch", None);
    add_task(&mut s, "running", "fw-a", Some("agent-2"));
    add_task(&mut s, "done", "fw-a", Some("agent-2"));
    s.tasks.set_state(&tid("done"), TaskState::Failed).unwrap();
    let a = |t: &str, act, owner: Option<&str>| task_action(&s, &tid(t), act, owner.map(fw).as_ref());
    assert_eq!(a("queued", TaskAction::Kill, None), Ok(None));
    assert_eq!(a("running", TaskAction::Pause, Some("fw-a")), Ok(Some(agent("agent-2"))));
    check_err(a("nope", TaskAction::Kill, None), ErrorKind::NotFound, "no task nope; list tasks with `wasmos tasks`");
    check_err(
        a("running", TaskAction::Kill, Some("batch")),
        ErrorKind::PermissionDenied,
        "task running belongs to another framework",
    );
    check_err(a("done", TaskAction::Kill, None), ErrorKind::FailedPrecondition, "task done already ended (failed)");
    check_err(
        a("queued", TaskAction::Resume, None),
        ErrorKind::FailedPrecondition,
        "task queued is not running yet; pause and resume apply to running tasks",
    );
}

#[test]
fn submissions() {
    let ok = Submission {
        template: spec("", "cpus:1"),
        resources_error: None,
        count: 10,
        priority: 0,
        constraints: vec![],
        max_attempts: 0,
        signature: String::new(),
        role: None,
    };
    assert!(submit(&ok, 10, has).is_ok());
    check_err(
        submit(&ok, 9, has),
        ErrorKind::InvalidArgument,
        "count 10 is over the limit of 9 tasks per submit; submit in parts",
    );
    let nomod =
        Submission { template: TaskSpec { module_sha256: "c".repeat(64), ..ok.template.clone() }, ..ok.clone() };
    check_err(
        submit(&nomod, 10, has),
        ErrorKind::FailedPrecondition,
        &format!("module {:?} is not in the artifact store; upload it first", "c".repeat(64)),
    );
    let bad = Submission { resources_error: Some("resource Q is invalid".into()), ..ok.clone() };
    check_err(submit(&bad, 10, has), ErrorKind::InvalidArgument, "resource Q is invalid");
    let empty = Submission { template: spec("", ""), ..ok };
    check_err(
        submit(&empty, 10, has),
        ErrorKind::InvalidArgument,
        "task asks for no resources; give it --cpus or --mem",
    );
}

#[test]
fn agents_must_offer_something() {
    assert!(register_agent(&AgentInfo { resources: res("cpus:1"), ..Default::default() }).is_ok());
    check_err(
        register_agent(&AgentInfo::default()),
        ErrorKind::InvalidArgument,
        "agent offers no resources; give it e.g. --resources cpus:2;mem:4GiB",
    );
}

#[test]
fn role_updates() {
    let u = |w: Option<f64>, g: &str, l: &str| RoleUpdate {
        role: role("eng"),
        weight: w,
        clear_quota: false,
        guarantee: Some(res(g)),
        limit: Some(wasmos_allocator::parse_limit(l).unwrap()),
        signers: None,
    };
    let next = update_role(None, &u(Some(2.0), "cpus:1", "cpus:2;gpus:0")).unwrap();
    assert_eq!(next.weight, 2.0);
    assert_eq!(next.quota, Quota::parse("cpus:1", "cpus:2;gpus:0").unwrap());
    // Absent fields stay; clear_quota drops the quota first.
    let keep = RoleUpdate::new(role("eng"));
    assert_eq!(update_role(Some(&next), &keep).unwrap(), next);
    let clear = RoleUpdate { clear_quota: true, ..RoleUpdate::new(role("eng")) };
    assert_eq!(update_role(Some(&next), &clear).unwrap().quota, Quota::default());
    for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        check_err(
            update_role(None, &u(Some(w), "", "")),
            ErrorKind::InvalidArgument,
            &format!("weight {w} for role eng is invalid; use a positive number such as 1 or 2.5"),
        );
    }
    // guarantee cpus 3 > limit cpus 2.
    check_err(
        update_role(None, &u(None, "cpus:3", "cpus:2")),
        ErrorKind::InvalidArgument,
        "role eng: quota guarantee cpus:3 exceeds the limit for cpus; raise --limit or lower --guarantee",
    );
    let stored = RoleSettings { weight: f64::INFINITY, ..Default::default() };
    check_err(role_weight(&role("eng"), &stored), ErrorKind::InvalidArgument, "weight inf for role eng is invalid");
    assert_eq!(role_weight(&role("eng"), &RoleSettings { weight: 0.0, ..Default::default() }), Ok(1.0));
}

#[test]
fn reservations() {
    let s = state();
    let mut roles = Roles::default();
    let r = |a: &str, x: &str| Reservation { agent: agent(a), role: role("eng"), resources: res(x) };
    assert_eq!(reservation(&s, &roles, false, true, &r("agent-1", "cpus:1")), Ok(ReservePlan::Live));
    check_err(
        reservation(&s, &roles, false, true, &r("agent-1", "")),
        ErrorKind::InvalidArgument,
        "nothing to reserve; give resources, e.g. cpus:1;mem:1GiB",
    );
    check_err(
        reservation(&s, &roles, false, false, &r("agent-1", "")),
        ErrorKind::InvalidArgument,
        "nothing to unreserve; give resources, e.g. cpus:1;mem:1GiB",
    );
    check_err(
        reservation(&s, &roles, false, true, &r("agent-9", "cpus:1")),
        ErrorKind::NotFound,
        "no agent agent-9; list agents with `wasmos agents`",
    );
    check_err(
        reservation(&s, &roles, true, true, &r("agent-9", "cpus:1")),
        ErrorKind::FailedPrecondition,
        "agent agent-9 has not reregistered since the master restarted; retry when `wasmos agents` lists it",
    );
    // A recorded reservation on an agent that is away: only the record changes.
    roles.restore_reservation((agent("agent-9"), role("eng")), res("cpus:2"));
    assert_eq!(reservation(&s, &roles, true, false, &r("agent-9", "cpus:1")), Ok(ReservePlan::RecordOnly));
    check_err(
        reservation(&s, &roles, true, false, &r("agent-9", "cpus:3")),
        ErrorKind::FailedPrecondition,
        "agent agent-9 has only cpus:2 reserved for role eng; cannot unreserve cpus:3",
    );
    // One the allocator could not take when its agent came back.
    roles.restore_reservation((agent("agent-1"), role("eng")), res("cpus:2"));
    roles.mark_unapplied((agent("agent-1"), role("eng")));
    check_err(
        reservation(&s, &roles, false, true, &r("agent-1", "cpus:1")),
        ErrorKind::FailedPrecondition,
        "the reservation for role eng on agent agent-1 is recorded but not applied (the agent came back with less free); unreserve it first",
    );
    assert_eq!(reservation(&s, &roles, false, false, &r("agent-1", "cpus:1")), Ok(ReservePlan::RecordOnly));
}

#[test]
fn illegal_moves_are_refused_by_the_table() {
    let mut s = state();
    add_task(&mut s, "t", "fw-a", Some("agent-1"));
    s.tasks.set_state(&tid("t"), TaskState::Running).unwrap();
    s.tasks.set_state(&tid("t"), TaskState::Finished).unwrap();
    let e = s.tasks.set_state(&tid("t"), TaskState::Running).unwrap_err();
    assert_eq!((e.from, e.to), (TaskState::Finished, TaskState::Running));
    assert_eq!(s.tasks.get(&tid("t")).unwrap().state(), TaskState::Finished);
}

#[test]
fn each_launch_of_a_queued_task_carries_its_attempt() {
    let mut s = state();
    add_task(&mut s, "q", "batch", None);
    s.tasks.next_attempt(&tid("q")).unwrap();
    assert_eq!(s.tasks.get(&tid("q")).unwrap().attempt, 1);
    // LOST on its agent, then queued again: the next launch is attempt 2.
    s.place(&tid("q"), Some(agent("agent-1")), None);
    s.tasks.set_state(&tid("q"), TaskState::Lost).unwrap();
    s.tasks.requeue(&tid("q"), "retrying".into());
    assert!(s.tasks.get(&tid("q")).unwrap().is_queued());
    s.tasks.next_attempt(&tid("q")).unwrap();
    assert_eq!(s.tasks.get(&tid("q")).unwrap().attempt, 2);
}
