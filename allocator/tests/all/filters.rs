//! Offer filters (`refuse_seconds`), revive, suppress, and (de)activation.

use wasmos_allocator::Allocation;

use crate::mock::*;

#[test]
fn declined_resources_stay_away_until_the_filter_expires() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r"]);
    let offers = c.cycle();
    c.decline(&offers, Some(secs(10))); // filter until t = 0 + 10 s
    c.advance(secs(5));
    assert!(c.cycle().is_empty(), "t = 5 s < 10 s: filtered");
    c.advance(secs(4));
    assert!(c.cycle().is_empty(), "t = 9 s < 10 s: filtered");
    c.advance(secs(1));
    assert_eq!(summary(&c.cycle()), ["f1@a1: cpus:2;mem:1GiB"], "t = 10 s: expired");
}

#[test]
fn decline_without_refuse_seconds_filters_for_five_seconds() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r"]);
    let offers = c.cycle();
    c.alloc.decline(&offers[0], None, c.now).unwrap();
    c.advance(secs(4));
    assert!(c.cycle().is_empty(), "t = 4 s < 5 s (the default)");
    c.advance(secs(1));
    assert_eq!(c.cycle().len(), 1, "t = 5 s: expired");
}

#[test]
fn a_filter_binds_only_the_framework_that_declined() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r"]).framework("f2", &["r"]);
    let offers = c.cycle();
    assert_eq!(counts(&offers), ["f1: 1"]); // 0 = 0, f1 before f2 by name
    c.decline(&offers, Some(secs(60)));
    assert_eq!(counts(&c.cycle()), ["f2: 1"]);
}

#[test]
fn a_filter_covers_only_offers_it_contains() {
    // f keeps <2 cpus, 1 GiB> of a1 for a task and declines the other half for
    // 60 s. The same half is filtered; once the task ends the agent offers
    // <4 cpus, 2 GiB>, which is more than was refused, so it is offered again.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:4;mem:2GiB").framework("f", &["r"]);
    let offer = c.cycle().remove(0);
    let half = Allocation::from(r("cpus:2;mem:1GiB"));
    c.alloc.recover_resources(&fid("f"), &aid("a1"), &role("r"), &half, Some(secs(60)), c.now).unwrap();
    c.advance(secs(1));
    assert!(c.cycle().is_empty());
    c.alloc.recover_resources(&offer.framework, &offer.agent, &offer.role, &half, None, c.now).unwrap();
    assert_eq!(summary(&c.cycle()), ["f@a1: cpus:4;mem:2GiB"]);
}

#[test]
fn revive_clears_filters() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r"]);
    let offers = c.cycle();
    c.decline(&offers, Some(secs(3600)));
    assert!(c.cycle().is_empty());
    c.alloc.revive(&fid("f1"), &[]).unwrap();
    assert_eq!(c.cycle().len(), 1);
}

#[test]
fn suppress_stops_offers_until_revive() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").agent("a2", "cpus:2;mem:1GiB");
    c.framework("f1", &["r1"]).framework("f2", &["r2"]);
    c.alloc.suppress(&fid("f1"), &[]).unwrap();
    // f1 is out of the sorting: f2 gets both agents.
    let offers = c.cycle();
    assert_eq!(counts(&offers), ["f2: 2"]);
    c.decline(&offers, None);
    c.alloc.revive(&fid("f1"), &[role("r1")]).unwrap();
    assert_eq!(counts(&c.cycle()), ["f1: 1", "f2: 1"]);
}

#[test]
fn suppress_and_revive_work_per_role() {
    // f subscribes to r1 and r2; suppressing r1 leaves offers for r2 only.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").agent("a2", "cpus:2;mem:1GiB").framework("f", &["r1", "r2"]);
    c.alloc.suppress(&fid("f"), &[role("r1")]).unwrap();
    let offers = c.cycle();
    assert_eq!(offers.len(), 2);
    assert!(offers.iter().all(|o| o.role == role("r2")));
    // Suppressing a role the framework does not have is an error that says so.
    let e = c.alloc.suppress(&fid("f"), &[role("r3")]).unwrap_err().to_string();
    assert!(e.contains("not subscribed to role r3"), "{e}");
}

#[test]
fn deactivated_frameworks_and_agents_get_no_offers() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r"]);
    c.alloc.deactivate_framework(&fid("f1")).unwrap();
    assert!(c.cycle().is_empty());
    c.alloc.activate_framework(&fid("f1")).unwrap();
    c.alloc.deactivate_agent(&aid("a1")).unwrap();
    assert!(c.cycle().is_empty());
    c.alloc.activate_agent(&aid("a1")).unwrap();
    assert_eq!(c.cycle().len(), 1);
}

#[test]
fn deactivating_a_framework_clears_its_filters() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r"]);
    let offers = c.cycle();
    c.decline(&offers, Some(secs(3600)));
    c.alloc.deactivate_framework(&fid("f1")).unwrap();
    c.alloc.activate_framework(&fid("f1")).unwrap();
    assert_eq!(c.cycle().len(), 1);
}
