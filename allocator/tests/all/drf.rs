//! Hierarchical DRF: across roles, within roles, nested roles, weights, fairness
//! over many cycles, whole-agent offers, minimum allocatable resources.

use wasmos_allocator::Config;

use crate::mock::*;

/// `n` agents of `res`, as scenario JSON.
fn agents(n: usize, res: &str) -> String {
    (0..n).map(|i| format!(r#"{{"id": "a{i}", "resources": "{res}"}}"#)).collect::<Vec<_>>().join(",")
}

#[test]
fn drf_paper_worked_example_across_roles() {
    // DRF paper, section 4: 9 CPUs and 18 GB; A's tasks need <1 CPU, 4 GB>, B's
    // <3 CPUs, 1 GB>. A task is 4/18 = 2/9 of memory (A's dominant resource) and
    // 3/9 = 1/3 of CPU (B's). DRF equalises dominant shares:
    //   A: 3 tasks = <3 CPU, 12 GB>, share 12/18 = 2/3
    //   B: 2 tasks = <6 CPU,  2 GB>, share  6/9  = 2/3
    // leaving <0 CPU, 4 GB>, where neither fits another task.
    let res = sim(r#"{
        "seed": 1,
        "agents": [{"id": "a1", "resources": "cpus:9;mem:18GiB"}],
        "frameworks": [
            {"id": "A", "role": "r1", "task": "cpus:1;mem:4GiB", "tasks_per_offer": 1},
            {"id": "B", "role": "r2", "task": "cpus:3;mem:1GiB", "tasks_per_offer": 1}
        ]
    }"#);
    check(&res, &[("A", 3, "cpus:3;mem:12GiB", 0.6667), ("B", 2, "cpus:6;mem:2GiB", 0.6667)]);
    assert!(res.settled);
    // The order of offers, one agent per cycle, lowest share first:
    //   1: A (0 = 0, A before B by name) -> A 2/9    2: B (0) -> B 1/3
    //   3: A (2/9 < 1/3) -> A 4/9                    4: B (1/3 < 4/9) -> B 2/3
    //   5: A (4/9 < 2/3) -> A 2/3; no CPU left, so nothing more fits.
    assert_eq!(res.cycles, 5);
    let r1 = res.role("r1").unwrap();
    assert_eq!(r1.allocated.to_string(), "cpus:3;mem:12GiB");
}

#[test]
fn drf_paper_worked_example_within_one_role() {
    // The same arithmetic one level down: two frameworks of one role are ordered
    // by their own dominant shares.
    let res = sim(r#"{
        "agents": [{"id": "a1", "resources": "cpus:9;mem:18GiB"}],
        "frameworks": [
            {"id": "A", "role": "r", "task": "cpus:1;mem:4GiB", "tasks_per_offer": 1},
            {"id": "B", "role": "r", "task": "cpus:3;mem:1GiB", "tasks_per_offer": 1}
        ]
    }"#);
    check(&res, &[("A", 3, "cpus:3;mem:12GiB", 0.6667), ("B", 2, "cpus:6;mem:2GiB", 0.6667)]);
    // The role holds everything but 4 GB: max(9/9, 14/18) = 1.
    assert_eq!(res.role("r").unwrap().dominant_share, 1.0);
}

#[test]
fn unreserved_drf_across_roles() {
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r1"]);
    // One framework, one agent: f1 gets it whole.
    assert_eq!(summary(&c.cycle()), ["f1@a1: cpus:2;mem:1GiB"]);

    c.framework("f2", &["r2"]).agent("a2", "cpus:1;mem:512MiB");
    // total <3 cpus, 1.5 GiB>; r1 holds <2, 1 GiB>: max(2/3, 1/1.5) = 0.67; r2 = 0.
    assert_eq!(summary(&c.cycle()), ["f2@a2: cpus:1;mem:512MiB"]);

    c.framework("f3", &["r1"]).agent("a3", "cpus:3;mem:2GiB");
    // total <6, 3.5 GiB>; r1 <2, 1>: max(2/6, 1/3.5) = 0.33; r2 <1, 0.5>: max(1/6, 0.5/3.5) = 0.17.
    assert_eq!(summary(&c.cycle()), ["f2@a3: cpus:3;mem:2GiB"]);

    c.agent("a4", "cpus:4;mem:4GiB");
    // total <10, 7.5 GiB>; r1 <2, 1>: max(0.2, 0.13) = 0.2; r2 <4, 2.5>: max(0.4, 0.33) = 0.4.
    // Within r1: f1 <2, 1> = 0.2, f3 nothing = 0, so f3.
    assert_eq!(summary(&c.cycle()), ["f3@a4: cpus:4;mem:4GiB"]);
    // r1 now holds <6, 5 GiB>: max(6/10, 5/7.5) = 0.67.
    assert!((c.role_share("r1") - 5.0 / 7.5).abs() < 1e-9);
}

#[test]
fn nested_roles_share_at_each_level() {
    // 12 agents <1 cpu, 1 GiB>; X in eng/a, Y in eng/b, Z in ops, all taking
    // whole offers. Flat DRF over three frameworks would give 4/4/4. Hierarchical
    // DRF first splits between eng and ops (6/6), then eng's 6 between a and b (3/3):
    //   X = 3/12 = 0.25, Y = 3/12 = 0.25, Z = 6/12 = 0.5.
    let res = sim(&format!(
        r#"{{"agents": [{}], "frameworks": [
            {{"id": "X", "role": "eng/a", "accept": "all"}},
            {{"id": "Y", "role": "eng/b", "accept": "all"}},
            {{"id": "Z", "role": "ops", "accept": "all"}}
        ]}}"#,
        agents(12, "cpus:1;mem:1GiB")
    ));
    check(
        &res,
        &[("X", 3, "cpus:3;mem:3GiB", 0.25), ("Y", 3, "cpus:3;mem:3GiB", 0.25), ("Z", 6, "cpus:6;mem:6GiB", 0.5)],
    );
    // eng counts its children: 6/12.
    assert_eq!(res.role("eng").unwrap().dominant_share, 0.5);
    assert_eq!(res.role("eng/a").unwrap().dominant_share, 0.25);
}

#[test]
fn role_with_own_frameworks_and_children() {
    // eng has a framework of its own (E) and a child eng/a with X; ops has Z.
    // eng vs ops splits 8 agents 4/4; inside eng, E (eng's own, Mesos's "." leaf)
    // and eng/a compete as equals: 2/2.
    let res = sim(&format!(
        r#"{{"agents": [{}], "frameworks": [
            {{"id": "E", "role": "eng", "accept": "all"}},
            {{"id": "X", "role": "eng/a", "accept": "all"}},
            {{"id": "Z", "role": "ops", "accept": "all"}}
        ]}}"#,
        agents(8, "cpus:1;mem:1GiB")
    ));
    check(
        &res,
        &[("E", 2, "cpus:2;mem:2GiB", 0.25), ("X", 2, "cpus:2;mem:2GiB", 0.25), ("Z", 4, "cpus:4;mem:4GiB", 0.5)],
    );
}

#[test]
fn coarse_grained_frameworks_get_whole_agents() {
    // Two agents <2 cpus, 1 GiB>, two roles: each framework is offered one whole
    // agent, nothing split. The first agent goes to r1 (0 = 0, r1 before r2 by
    // name); then r1 holds 2/4 = 0.5 and r2 0, so r2 gets the second.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").agent("a2", "cpus:2;mem:1GiB");
    c.framework("f1", &["r1"]).framework("f2", &["r2"]);
    let offers = c.cycle();
    assert_eq!(counts(&offers), ["f1: 1", "f2: 1"]);
    for o in &offers {
        assert_eq!(o.resources.total().to_string(), "cpus:2;mem:1GiB");
    }
}

#[test]
fn same_share_frameworks_alternate_over_many_cycles() {
    // One agent, two frameworks of one role that decline everything (no filter).
    // After each decline both shares are 0 again; the tie is broken by how many
    // allocations each has had, so the offers alternate exactly: 500 / 500.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r"]).framework("f2", &["r"]);
    let mut all = Vec::new();
    for _ in 0..1000 {
        let offers = c.cycle();
        assert_eq!(offers.len(), 1);
        c.decline(&offers, None);
        c.advance(secs(1));
        all.extend(offers);
    }
    assert_eq!(counts(&all), ["f1: 500", "f2: 500"]);
}

#[test]
fn same_share_roles_alternate_over_many_cycles() {
    // The same between roles: r1 and r2 each get half of 1000 cycles.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:2;mem:1GiB").framework("f1", &["r1"]).framework("f2", &["r2"]);
    let mut all = Vec::new();
    for _ in 0..1000 {
        let offers = c.cycle();
        c.decline(&offers, None);
        all.extend(offers);
    }
    assert_eq!(counts(&all), ["f1: 500", "f2: 500"]);
}

#[test]
fn weights_one_to_two() {
    // 30 agents <1 cpu, 1 GiB>; r2 weighs twice r1. Weighted shares n1/30/1 and
    // n2/30/2 are equal when n2 = 2 n1: r1 = 10, r2 = 20.
    let res = sim(&format!(
        r#"{{"agents": [{}], "roles": {{"r1": {{"weight": 1}}, "r2": {{"weight": 2}}}},
            "frameworks": [{{"id": "A", "role": "r1", "accept": "all"}}, {{"id": "B", "role": "r2", "accept": "all"}}]}}"#,
        agents(30, "cpus:1;mem:1GiB")
    ));
    check(&res, &[("A", 10, "cpus:10;mem:10GiB", 0.3333), ("B", 20, "cpus:20;mem:20GiB", 0.6667)]);
}

#[test]
fn weights_one_to_two_to_three() {
    // 60 agents; weights 1:2:3 -> 60 × 1/6, 2/6, 3/6 = 10, 20, 30.
    let res = sim(&format!(
        r#"{{"agents": [{}], "roles": {{"r1": {{"weight": 1}}, "r2": {{"weight": 2}}, "r3": {{"weight": 3}}}},
            "frameworks": [
                {{"id": "A", "role": "r1", "accept": "all"}},
                {{"id": "B", "role": "r2", "accept": "all"}},
                {{"id": "C", "role": "r3", "accept": "all"}}]}}"#,
        agents(60, "cpus:1;mem:1GiB")
    ));
    check(
        &res,
        &[
            ("A", 10, "cpus:10;mem:10GiB", 0.1667),
            ("B", 20, "cpus:20;mem:20GiB", 0.3333),
            ("C", 30, "cpus:30;mem:30GiB", 0.5),
        ],
    );
}

#[test]
fn weights_apply_with_tasks_on_one_agent() {
    // One agent <12 cpus, 12 GiB>, tasks <1 cpu, 1 GiB>, one per offer: each cycle
    // the lowest weighted share launches one. r2 (weight 2) ends with twice r1's:
    // 4 + 8 = 12 tasks fill the agent.
    let res = sim(r#"{
        "agents": [{"id": "a1", "resources": "cpus:12;mem:12GiB"}],
        "roles": {"r2": {"weight": 2}},
        "frameworks": [
            {"id": "A", "role": "r1", "task": "cpus:1;mem:1GiB", "tasks_per_offer": 1},
            {"id": "B", "role": "r2", "task": "cpus:1;mem:1GiB", "tasks_per_offer": 1}
        ]
    }"#);
    check(&res, &[("A", 4, "cpus:4;mem:4GiB", 0.3333), ("B", 8, "cpus:8;mem:8GiB", 0.6667)]);
}

#[test]
fn same_seed_same_offers_other_seed_other_order() {
    let run = |seed: u64| {
        let mut c = Cluster::with(Config { seed, ..Config::default() });
        for i in 0..20 {
            c.agent(&format!("a{i:02}"), "cpus:1;mem:1GiB");
        }
        c.framework("f1", &["r1"]).framework("f2", &["r2"]).framework("f3", &["r3"]);
        c.cycle().iter().map(|o| format!("{}@{}", o.framework, o.agent)).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8), "agents are shuffled by the seed");
    // Whatever the order, DRF splits 20 agents 7/7/6 (the first by name gets the odd one).
    for seed in [1, 2, 3] {
        let offers = run(seed);
        let n = |f: &str| offers.iter().filter(|o| o.starts_with(f)).count();
        assert_eq!((n("f1"), n("f2"), n("f3")), (7, 7, 6), "seed {seed}");
    }
}

#[test]
fn minimum_allocatable_resources_keep_crumbs_out() {
    // Default minimum: cpus:0.01 or mem:32MiB.
    let mut c = Cluster::new();
    c.agent("crumbs", "cpus:0.005;mem:16MiB") // neither 0.01 cpus nor 32 MiB
        .agent("cpu-only", "cpus:0.01") // exactly the cpu minimum
        .agent("mem-only", "mem:32MiB") // exactly the mem minimum
        .framework("f", &["r"]);
    assert_eq!(summary(&c.cycle()), ["f@cpu-only: cpus:0.01", "f@mem-only: mem:32MiB"]);

    // Leftovers below the minimum are not offered either: f keeps all of a1 but
    // <0.005 cpus, 16 MiB>, which stays unoffered.
    let mut c = Cluster::new();
    c.agent("a1", "cpus:1;mem:1GiB").framework("f", &["r"]);
    let offers = c.cycle();
    c.give_back(&offers[0], "cpus:0.005;mem:16MiB");
    assert!(c.cycle().is_empty());

    // A stricter minimum: whole cpus only.
    let mut c = Cluster::with(Config { min_allocatable: vec![r("cpus:1")], ..Config::default() });
    c.agent("half", "cpus:0.5;mem:8GiB").agent("one", "cpus:1;mem:1GiB").framework("f", &["r"]);
    assert_eq!(summary(&c.cycle()), ["f@one: cpus:1;mem:1GiB"]);

    // No minimum at all: anything non-empty goes.
    let mut c = Cluster::with(Config { min_allocatable: vec![], ..Config::default() });
    c.agent("tiny", "cpus:0.001").framework("f", &["r"]);
    assert_eq!(summary(&c.cycle()), ["f@tiny: cpus:0.001"]);
}
