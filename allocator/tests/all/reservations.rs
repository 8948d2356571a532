//! Static and dynamic reservations: offered only to their role and its
//! descendants, and counted toward the role's share.

use wasmos_allocator::AllocatorError;

use crate::mock::*;

#[test]
fn reserved_resources_go_only_to_their_role() {
    // a1 has <4 cpus, 4 GiB>, half reserved for r1. r1's share counts the
    // reservation (2/4 = 0.5) so r2 (0) goes first and gets only the unreserved
    // half; r1's framework then gets its reservation.
    let mut c = Cluster::new();
    c.reserved_agent("a1", "cpus:4;mem:4GiB", &[("r1", "cpus:2;mem:2GiB")]);
    c.framework("f1", &["r1"]).framework("f2", &["r2"]);
    assert_eq!(summary(&c.cycle()), ["f1@a1: r1:(cpus:2;mem:2GiB)", "f2@a1: cpus:2;mem:2GiB"]);
}

#[test]
fn reserved_resources_count_toward_share() {
    // a1 <4 cpus, 4 GiB> is wholly reserved for r1; a2 and a3 <2 cpus, 2 GiB> are
    // unreserved. Total 8 cpus: r1 starts at 4/8 = 0.5 without holding anything,
    // so r2 gets both unreserved agents (0 < 0.5, then 2/8 = 0.25 < 0.5), whatever
    // the agent order. Were reservations not counted, r1 (0) would take one.
    for seed in 0..8 {
        let mut c = Cluster::with(wasmos_allocator::Config { seed, ..Default::default() });
        c.reserved_agent("a1", "cpus:4;mem:4GiB", &[("r1", "cpus:4;mem:4GiB")])
            .agent("a2", "cpus:2;mem:2GiB")
            .agent("a3", "cpus:2;mem:2GiB");
        c.framework("f1", &["r1"]).framework("f2", &["r2"]);
        assert!((c.role_share("r1") - 0.5).abs() < 1e-9, "unallocated reservation counts: 4/8");
        assert_eq!(
            summary(&c.cycle()),
            ["f1@a1: r1:(cpus:4;mem:4GiB)", "f2@a2: cpus:2;mem:2GiB", "f2@a3: cpus:2;mem:2GiB"],
            "seed {seed}"
        );
    }
}

#[test]
fn reservation_of_a_parent_reaches_its_children() {
    // Reserved for eng: offered to eng/batch's framework, never to ops's.
    let mut c = Cluster::new();
    c.reserved_agent("a1", "cpus:2;mem:2GiB", &[("eng", "cpus:2;mem:2GiB")]);
    c.framework("ops", &["ops"]);
    assert!(c.cycle().is_empty(), "ops may not have eng's reservation");
    c.framework("batch", &["eng/batch"]);
    let offers = c.cycle();
    assert_eq!(summary(&offers), ["batch@a1: eng:(cpus:2;mem:2GiB)"]);
    assert_eq!(offers[0].role, role("eng/batch"));
    // eng's consumption is unchanged by the allocation (the reservation already
    // counted); eng/batch's now includes it.
    assert_eq!(c.alloc.role_stats(&role("eng")).unwrap().consumed.to_string(), "cpus:2;mem:2GiB");
    assert_eq!(c.alloc.role_stats(&role("eng/batch")).unwrap().consumed.to_string(), "cpus:2;mem:2GiB");
}

#[test]
fn reservation_of_a_child_does_not_reach_its_parent() {
    let mut c = Cluster::new();
    c.reserved_agent("a1", "cpus:2;mem:2GiB", &[("eng/batch", "cpus:1;mem:1GiB")]);
    c.framework("eng", &["eng"]);
    assert_eq!(summary(&c.cycle()), ["eng@a1: cpus:1;mem:1GiB"]);
}

#[test]
fn dynamic_reserve_and_unreserve() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:4GiB").framework("f2", &["r2"]);
    c.alloc.reserve(&aid("a1"), &role("r1"), &r("cpus:1;mem:1GiB")).unwrap();
    // r2 gets only the unreserved <3, 3 GiB>.
    let offers = c.cycle();
    assert_eq!(summary(&offers), ["f2@a1: cpus:3;mem:3GiB"]);
    c.decline(&offers, None);

    // Reserving more than is unreserved and free is refused, naming what is there.
    let e = c.alloc.reserve(&aid("a1"), &role("r1"), &r("cpus:4")).unwrap_err();
    assert!(matches!(e, AllocatorError::NotEnoughUnreserved { .. }));
    assert!(e.to_string().contains("has only cpus:3;mem:3GiB unreserved"), "{e}");

    // Unreserving gives it back to everyone.
    c.alloc.unreserve(&aid("a1"), &role("r1"), &r("cpus:1;mem:1GiB")).unwrap();
    assert_eq!(summary(&c.cycle()), ["f2@a1: cpus:4;mem:4GiB"]);
    assert_eq!(c.alloc.role_stats(&role("r1")).unwrap().consumed.to_string(), "{}");
}

#[test]
fn static_reservations_cannot_be_unreserved() {
    let mut c = Cluster::new();
    c.reserved_agent("a1", "cpus:4;mem:4GiB", &[("r1", "cpus:2")]);
    let e = c.alloc.unreserve(&aid("a1"), &role("r1"), &r("cpus:1")).unwrap_err();
    assert!(matches!(e, AllocatorError::NotEnoughReserved { .. }), "{e}");
}

#[test]
fn reservations_must_fit_the_agent() {
    let mut c = Cluster::new();
    let info = wasmos_allocator::AgentInfo::new(r("cpus:2")).reserve(role("r1"), r("cpus:3"));
    let e = c.alloc.add_agent(aid("a1"), info).unwrap_err();
    assert!(e.to_string().contains("exceed its resources"), "{e}");
    assert!(!c.alloc.has_agent(&aid("a1")), "a refused event leaves nothing behind");
}
