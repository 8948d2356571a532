//! The event API: agents and frameworks coming and going, what they hold, and
//! the errors that refuse a bad event (leaving the allocator unchanged).

use wasmos_allocator::{AgentInfo, Allocation, AllocatorError};

use crate::mock::*;

#[test]
fn offered_resources_count_until_recovered() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:4GiB").framework("f", &["r"]);
    let offer = c.cycle().remove(0);
    assert_eq!(c.held("f"), "cpus:4;mem:4GiB");
    assert_eq!(c.share("f"), 1.0);
    // The framework launches a task on <1 cpu, 1 GiB> and gives the rest back.
    c.give_back(&offer, "cpus:3;mem:3GiB");
    assert_eq!(c.held("f"), "cpus:1;mem:1GiB");
    assert_eq!(c.share("f"), 0.25); // max(1/4, 1/4)
    assert_eq!(c.alloc.agent_free(&aid("a1")).unwrap().unreserved.to_string(), "cpus:3;mem:3GiB");
    let held = c.alloc.agent_allocations(&aid("a1")).unwrap();
    assert_eq!(held, vec![(fid("f"), role("r"), Allocation::from(r("cpus:1;mem:1GiB")))]);
}

#[test]
fn recovering_more_than_held_is_refused() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:4GiB").framework("f", &["r"]);
    let offer = c.cycle().remove(0);
    let e = c
        .alloc
        .recover_resources(&fid("f"), &aid("a1"), &role("r"), &Allocation::from(r("cpus:5")), None, c.now)
        .unwrap_err();
    assert!(matches!(e, AllocatorError::NotAllocated { .. }));
    let msg = e.to_string();
    assert!(msg.contains("does not hold cpus:5") && msg.contains("it holds cpus:4;mem:4GiB"), "{msg}");
    // Nothing changed: the whole offer is still held and can be given back.
    c.decline(&[offer], None);
    assert_eq!(c.held("f"), "{}");
}

#[test]
fn removing_a_framework_returns_what_it_held() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:4GiB").framework("f1", &["r"]).framework("f2", &["r"]);
    assert_eq!(counts(&c.cycle()), ["f1: 1"]);
    c.alloc.remove_framework(&fid("f1")).unwrap();
    assert_eq!(c.alloc.role_stats(&role("r")).unwrap().allocated.to_string(), "{}");
    assert_eq!(summary(&c.cycle()), ["f2@a1: cpus:4;mem:4GiB"]);
    assert!(matches!(c.alloc.remove_framework(&fid("f1")), Err(AllocatorError::UnknownFramework(_))));
}

#[test]
fn removing_an_agent_drops_its_allocations_and_reservations() {
    let mut c = Cluster::new();
    c.reserved_agent("a1", "cpus:4;mem:4GiB", &[("r1", "cpus:1")]).agent("a2", "cpus:4;mem:4GiB");
    c.framework("f", &["r2"]);
    c.cycle();
    c.alloc.remove_agent(&aid("a1")).unwrap();
    c.alloc.remove_agent(&aid("a2")).unwrap();
    assert_eq!(c.held("f"), "{}");
    assert_eq!(c.alloc.total().to_string(), "{}");
    assert_eq!(c.alloc.role_stats(&role("r1")).unwrap().consumed.to_string(), "{}");
    // The id can come back.
    c.agent("a1", "cpus:1;mem:1GiB");
    assert_eq!(summary(&c.cycle()), ["f@a1: cpus:1;mem:1GiB"]);
}

#[test]
fn updating_an_agent() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:4GiB").framework("f", &["r"]);
    let offer = c.cycle().remove(0);
    c.give_back(&offer, "cpus:2;mem:2GiB"); // f keeps <2 cpus, 2 GiB>
    // Growing: the new room is offered.
    c.alloc.update_agent(&aid("a1"), AgentInfo::new(r("cpus:8;mem:8GiB"))).unwrap();
    assert_eq!(c.alloc.total().to_string(), "cpus:8;mem:8GiB");
    assert_eq!(summary(&c.cycle()), ["f@a1: cpus:6;mem:6GiB"]);
    // Shrinking below what is held is refused.
    let e = c.alloc.update_agent(&aid("a1"), AgentInfo::new(r("cpus:1;mem:8GiB"))).unwrap_err();
    assert!(matches!(e, AllocatorError::AgentShrinksBelowUse { .. }), "{e}");
    assert_eq!(c.alloc.total().to_string(), "cpus:8;mem:8GiB");
}

#[test]
fn multi_role_frameworks_get_offers_per_role() {
    // f subscribes to r1 and r2: each role is sorted on its own, and offers say
    // which role they are for. a1 goes to r1 (0 = 0, by name), then r2 (0 < r1's).
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:2GiB").agent("a2", "cpus:2;mem:2GiB").framework("f", &["r1", "r2"]);
    let mut roles: Vec<String> = c.cycle().iter().map(|o| o.role.to_string()).collect();
    roles.sort();
    assert_eq!(roles, ["r1", "r2"]);
}

#[test]
fn dropping_a_role_keeps_what_it_holds_until_recovered() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:2GiB").framework("f", &["r1"]);
    let offer = c.cycle().remove(0);
    c.alloc.update_framework(&fid("f"), &[role("r2")]).unwrap();
    assert_eq!(c.alloc.role_stats(&role("r1")).unwrap().allocated.to_string(), "cpus:2;mem:2GiB");
    assert_eq!(c.alloc.role_stats(&role("r1")).unwrap().frameworks, 0);
    c.decline(&[offer], None);
    assert_eq!(c.alloc.role_stats(&role("r1")).unwrap().allocated.to_string(), "{}");
    // New offers are for r2.
    assert_eq!(c.cycle()[0].role, role("r2"));
}

#[test]
fn bad_events_are_refused_with_a_reason() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:1;mem:1GiB").framework("f", &["r"]);
    let cases: Vec<(AllocatorError, &str)> = vec![
        (c.alloc.add_agent(aid("a1"), AgentInfo::new(r("cpus:1"))).unwrap_err(), "already registered"),
        (c.alloc.remove_agent(&aid("nope")).unwrap_err(), "agent nope is not registered; add it first"),
        (c.alloc.add_framework(fid("f"), &[role("r")]).unwrap_err(), "already registered"),
        (c.alloc.add_framework(fid("g"), &[]).unwrap_err(), "subscribes to no role"),
        (c.alloc.update_weight(&role("r"), 0.0).unwrap_err(), "positive finite number"),
        (c.alloc.update_weight(&role("r"), f64::NAN).unwrap_err(), "positive finite number"),
        (
            c.alloc.add_allocation(&fid("f"), &aid("a1"), &role("r"), &Allocation::from(r("cpus:2"))).unwrap_err(),
            "has cpus:1;mem:1GiB free for role r; cannot allocate cpus:2",
        ),
    ];
    for (e, want) in cases {
        let msg = e.to_string();
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        assert!(msg.chars().next().unwrap().is_lowercase(), "errors are lower-case: {msg}");
    }
    // None of that changed anything.
    assert_eq!(summary(&c.cycle()), ["f@a1: cpus:1;mem:1GiB"]);
}

#[test]
fn update_agent_can_reserve_for_new_roles_and_refusals_leave_no_trace() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:4GiB").framework("f", &["r2"]);
    // Refused (the reservation is bigger than the agent): no role "ghost" appears.
    let bad = AgentInfo::new(r("cpus:4;mem:4GiB")).reserve(role("ghost"), r("cpus:8"));
    assert!(c.alloc.update_agent(&aid("a1"), bad).is_err());
    assert_eq!(c.alloc.roles(), [role("r2")]);
    // Accepted: 1 cpu now belongs to gold, so r2 is offered the other 3.
    let good = AgentInfo::new(r("cpus:4;mem:4GiB")).reserve(role("gold"), r("cpus:1"));
    c.alloc.update_agent(&aid("a1"), good).unwrap();
    assert_eq!(summary(&c.cycle()), ["f@a1: cpus:3;mem:4GiB"]);
    assert_eq!(c.alloc.role_stats(&role("gold")).unwrap().reserved.to_string(), "cpus:1");
    // Recovering reserved resources of a role nobody has is refused, and invents no role.
    let mut bogus = Allocation::default();
    bogus.reserved.insert(role("nobody"), r("cpus:1"));
    let e = c.alloc.recover_resources(&fid("f"), &aid("a1"), &role("r2"), &bogus, None, c.now).unwrap_err();
    assert!(matches!(e, AllocatorError::NotAllocated { .. }), "{e}");
    assert_eq!(c.alloc.roles(), [role("gold"), role("r2")]);
}
