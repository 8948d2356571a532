//! Quota: guarantees met first with headroom held back; limits never exceeded,
//! even if that means splitting an agent.

use wasmos_allocator::{AllocatorError, Quota};

use crate::mock::*;

/// `n` agents named a0.. with `res`.
fn agents(c: &mut Cluster, n: usize, res: &str) {
    for i in 0..n {
        c.agent(&format!("a{i}"), res);
    }
}

/// Takes every offer whole (a coarse-grained framework).
fn accept_all(c: &mut Cluster) -> usize {
    c.cycle().len()
}

#[test]
fn guarantee_is_met_before_fair_sharing() {
    // 8 agents <1 cpu, 1 GiB>; q is guaranteed 6 cpus, r has none. Plain DRF
    // would split 4/4. Stage 1 gives q whole agents until it holds 6 cpus; stage 2
    // then orders r (0) before q (6/8) and r gets the 2 left.
    let mut c = Cluster::new();
    agents(&mut c, 8, "cpus:1;mem:1GiB");
    c.quota("q", "cpus:6", "").framework("Q", &["q"]).framework("R", &["r"]);
    assert_eq!(accept_all(&mut c), 8);
    assert_eq!(c.held("Q"), "cpus:6;mem:6GiB");
    assert_eq!(c.held("R"), "cpus:2;mem:2GiB");
}

#[test]
fn headroom_is_held_back_for_an_unmet_guarantee() {
    // q is guaranteed 6 cpus but has no framework yet. r may only take what the
    // guarantee does not need: 8 - 6 = 2 cpus. Headroom is kept only in the
    // guaranteed resource, so r still gets all the memory (mem-only offers pass
    // the mem:32MiB minimum).
    let mut c = Cluster::new();
    agents(&mut c, 8, "cpus:1;mem:1GiB");
    c.quota("q", "cpus:6", "").framework("R", &["r"]);
    assert_eq!(accept_all(&mut c), 8);
    assert_eq!(c.held("R"), "cpus:2;mem:8GiB");

    // When q's framework arrives, the 6 cpus held back are its: 6 offers of 1 cpu.
    c.framework("Q", &["q"]);
    let offers = c.cycle();
    assert_eq!(counts(&offers), ["Q: 6"]);
    assert_eq!(c.held("Q"), "cpus:6");
}

#[test]
fn guarantee_counts_reservations() {
    // q's guarantee (4 cpus) is already covered by its reservation on a1, so no
    // headroom is held back: r may take all four unreserved agents.
    let mut c = Cluster::new();
    c.reserved_agent("a1", "cpus:4;mem:4GiB", &[("q", "cpus:4;mem:4GiB")]);
    for i in 2..=5 {
        c.agent(&format!("a{i}"), "cpus:1;mem:1GiB");
    }
    c.quota("q", "cpus:4", "").framework("R", &["r"]);
    assert_eq!(accept_all(&mut c), 4);
    assert_eq!(c.held("R"), "cpus:4;mem:4GiB");
}

#[test]
fn limit_splits_an_agent() {
    // One agent <9 cpus, 18 GiB>; l is limited to <4 cpus, 8 GiB>, m is not. l
    // comes first (0 = 0, l before m by name) and gets the agent cut down to its
    // limit; the rest of the same agent goes to m in the same cycle.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:9;mem:18GiB").quota("l", "", "cpus:4;mem:8GiB");
    c.framework("L", &["l"]).framework("M", &["m"]);
    assert_eq!(summary(&c.cycle()), ["L@a1: cpus:4;mem:8GiB", "M@a1: cpus:5;mem:10GiB"]);

    // A second agent: l is at its limit, so all of it goes to m.
    c.agent("a2", "cpus:2;mem:2GiB");
    assert_eq!(summary(&c.cycle()), ["M@a2: cpus:2;mem:2GiB"]);
    assert_eq!(c.held("L"), "cpus:4;mem:8GiB");
}

#[test]
fn limit_on_one_resource_leaves_the_others_free() {
    // Only cpus are limited: l gets <4 cpus, all 18 GiB>; m the 5 cpus left.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:9;mem:18GiB").quota("l", "", "cpus:4");
    c.framework("L", &["l"]).framework("M", &["m"]);
    assert_eq!(summary(&c.cycle()), ["L@a1: cpus:4;mem:18GiB", "M@a1: cpus:5"]);
}

#[test]
fn limit_of_a_parent_covers_its_children() {
    // eng is limited to <4 cpus, 4 GiB>; its children a and b share those (2/2);
    // ops gets the other 4 of 8 agents <1 cpu, 1 GiB>.
    let mut c = Cluster::new();
    agents(&mut c, 8, "cpus:1;mem:1GiB");
    c.quota("eng", "", "cpus:4;mem:4GiB")
        .framework("A", &["eng/a"])
        .framework("B", &["eng/b"])
        .framework("O", &["ops"]);
    accept_all(&mut c);
    assert_eq!(
        (c.held("A"), c.held("B"), c.held("O")),
        ("cpus:2;mem:2GiB".into(), "cpus:2;mem:2GiB".into(), "cpus:4;mem:4GiB".into())
    );
    assert_eq!(c.alloc.role_stats(&role("eng")).unwrap().consumed.to_string(), "cpus:4;mem:4GiB");
}

#[test]
fn zero_limit_keeps_a_resource_away() {
    // A limit of 0 must be expressible (Resources drops zero amounts; Quota keeps them).
    let q = Quota::parse("", "cpus:0;mem:1GiB").unwrap();
    assert_eq!(q.limit.len(), 2);
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:4GiB");
    c.alloc.set_quota(&role("l"), q).unwrap();
    c.framework("L", &["l"]);
    assert_eq!(summary(&c.cycle()), ["L@a1: mem:1GiB"]);
}

#[test]
fn guarantee_above_limit_is_refused() {
    let mut c = Cluster::new();
    let e = c.alloc.set_quota(&role("q"), Quota::parse("cpus:8", "cpus:4").unwrap()).unwrap_err();
    assert!(matches!(e, AllocatorError::GuaranteeAboveLimit { .. }));
    let msg = e.to_string();
    assert!(msg.contains("exceeds the limit for cpus") && msg.contains("raise the limit"), "{msg}");
}
