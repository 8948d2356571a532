//! The scenario format and the simulator: validation errors name the field;
//! results come out as the documented JSON.

use wasmos_allocator::sim::{parse_scenario, simulate};

use crate::mock::*;

const DRF: &str = r#"{
    "seed": 1,
    "agents": [{"id": "a1", "resources": "cpus:9;mem:18GiB"}],
    "roles": {"r1": {"weight": 1.0, "quota_guarantee": "cpus:2", "quota_limit": "cpus:4"}},
    "frameworks": [
        {"id": "A", "role": "r1", "task": "cpus:1;mem:4GiB", "tasks_per_offer": 1, "max_tasks": null},
        {"id": "B", "role": "r2", "task": "cpus:3;mem:1GiB"}
    ],
    "max_cycles": 1000
}"#;

#[test]
fn the_issue_example_parses_and_runs() {
    // The example from the issue: r1 is limited to 4 cpus, which does not bind
    // here (A stops at 3 by DRF), and guaranteed 2, which A gets at once. B
    // launches as many tasks as fit in each offer.
    let res = simulate(&parse_scenario(DRF).unwrap());
    assert!(res.settled);
    let j = res.to_json();
    assert_eq!(j["frameworks"]["A"]["tasks"], 3);
    assert_eq!(j["frameworks"]["A"]["allocated"], "cpus:3;mem:12GiB");
    assert_eq!(j["frameworks"]["A"]["dominant_share"], 0.6667);
    assert_eq!(j["frameworks"]["B"]["tasks"], 2);
    assert_eq!(j["roles"]["r1"]["allocated"], "cpus:3;mem:12GiB");
    assert_eq!(j["roles"]["r2"]["dominant_share"], 0.6667);
    assert_eq!(j["roles"]["r2"]["reserved"], "");
    assert!(j["cycles"].as_u64().unwrap() >= 1);
}

#[test]
fn accept_all_takes_whole_offers() {
    let res = sim(
        r#"{"agents": [{"id": "a1", "resources": "cpus:2;mem:1GiB"}, {"id": "a2", "resources": "cpus:2;mem:1GiB"}],
        "frameworks": [{"id": "S", "role": "spark", "accept": "all"}]}"#,
    );
    check(&res, &[("S", 2, "cpus:4;mem:2GiB", 1.0)]);
    assert_eq!(res.cycles, 1);
}

#[test]
fn max_tasks_and_tasks_per_offer() {
    // 4 tasks at most, 2 per offer: two cycles.
    let res = sim(r#"{"agents": [{"id": "a1", "resources": "cpus:16;mem:16GiB"}],
        "frameworks": [{"id": "A", "role": "r", "task": "cpus:1;mem:1GiB", "tasks_per_offer": 2, "max_tasks": 4}]}"#);
    check(&res, &[("A", 4, "cpus:4;mem:4GiB", 0.25)]);
    assert_eq!(res.cycles, 2);
    // tasks_per_offer omitted (or null): as many as fit in one offer.
    let res = sim(r#"{"agents": [{"id": "a1", "resources": "cpus:16;mem:16GiB"}],
        "frameworks": [{"id": "A", "role": "r", "task": "cpus:3;mem:1GiB"}]}"#);
    check(&res, &[("A", 5, "cpus:15;mem:5GiB", 0.9375)]);
    assert_eq!(res.cycles, 1);
}

#[test]
fn reservations_in_a_scenario() {
    // a1's 4 cpus are reserved for "gold"; G (gold) uses them first, then shares
    // the unreserved a2 with S by DRF.
    let res = sim(r#"{
        "agents": [
            {"id": "a1", "resources": "cpus:4;mem:4GiB", "reserved": {"gold": "cpus:4;mem:4GiB"}},
            {"id": "a2", "resources": "cpus:4;mem:4GiB"}
        ],
        "frameworks": [
            {"id": "G", "role": "gold", "task": "cpus:1;mem:1GiB"},
            {"id": "S", "role": "silver", "task": "cpus:1;mem:1GiB"}
        ]
    }"#);
    // gold starts at 4/8 = 0.5 (its reservation), so silver gets all of a2.
    check(&res, &[("G", 4, "cpus:4;mem:4GiB", 0.5), ("S", 4, "cpus:4;mem:4GiB", 0.5)]);
    assert_eq!(res.role("gold").unwrap().reserved.to_string(), "cpus:4;mem:4GiB");
}

#[test]
fn refuse_seconds_breaks_a_livelock() {
    // X's role weighs 10, so X stays first in line (weighted share 0.6/10 = 0.06
    // after one task) although its <6 cpus> task no longer fits; with 0-second
    // filters X is offered the same leftovers every cycle and Y, which could use
    // them, waits: the run ends at max_cycles without settling (as Mesos would
    // behave with refuse_seconds = 0).
    let scenario = |refuse: u32| {
        format!(
            r#"{{"agents": [{{"id": "a1", "resources": "cpus:10;mem:10GiB"}}],
                "roles": {{"rx": {{"weight": 10}}}},
                "frameworks": [
                    {{"id": "X", "role": "rx", "task": "cpus:6;mem:1GiB", "tasks_per_offer": 1, "refuse_seconds": {refuse}}},
                    {{"id": "Y", "role": "ry", "task": "cpus:1;mem:1GiB", "tasks_per_offer": 1}}],
                "max_cycles": 50}}"#
        )
    };
    let res = sim(&scenario(0));
    assert!(!res.settled);
    assert_eq!(res.cycles, 50);
    check(&res, &[("X", 1, "cpus:6;mem:1GiB", 0.6), ("Y", 1, "cpus:1;mem:1GiB", 0.1)]);
    // With a 5 s filter X steps aside and Y fills the 3 cpus left.
    let res = sim(&scenario(5));
    assert!(res.settled);
    check(&res, &[("X", 1, "cpus:6;mem:1GiB", 0.6), ("Y", 4, "cpus:4;mem:4GiB", 0.4)]);
}

/// `(scenario, field path, words the message must contain)`.
fn bad(json: &str, path: &str, words: &[&str]) {
    let e = parse_scenario(json).expect_err(json);
    assert_eq!(e.path, path, "{e}");
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "{msg:?} should contain {w:?}");
    }
}

const AGENT: &str = r#"{"id": "a1", "resources": "cpus:1;mem:1GiB"}"#;

#[test]
fn malformed_scenarios_name_the_field() {
    let fw = |extra: &str| format!(r#"{{"agents": [{AGENT}], "frameworks": [{{"id": "A", "role": "r", {extra}}}]}}"#);
    bad(
        &fw(r#""task": "cpus:1", "tasks_per_ofer": 1"#),
        "frameworks[0].tasks_per_ofer",
        &["unknown field", "fix the spelling"],
    );
    bad(r#"{"agents": [], "frameworks": [], "sead": 1}"#, "sead", &["unknown field `sead`"]);
    bad(&fw(r#""task": "cpus:one""#), "frameworks[0].task", &["not a number"]);
    bad(&fw(r#""task": "cpus:-1""#), "frameworks[0].task", &["negative amount", "0 or more"]);
    bad(&fw(r#""task": "cpus""#), "frameworks[0].task", &["no ':'"]);
    bad(&fw(r#""task": "cpus:1", "max_tasks": -1"#), "frameworks[0].max_tasks", &["invalid value: integer `-1`"]);
    bad(&fw(r#""task": "cpus:1", "refuse_seconds": -2"#), "frameworks[0].refuse_seconds", &["0 or more"]);
    bad(&fw(r#""task": "cpus:1", "tasks_per_offer": 0"#), "frameworks[0].tasks_per_offer", &["at least 1"]);
    bad(&fw(r#""task": "cpus:1", "accept": "all""#), "frameworks[0].accept", &["not both"]);
    bad(&fw(r#""accept": "some""#), "frameworks[0].accept", &["only value is \"all\""]);
    bad(&fw(r#""accept": "all", "max_tasks": 2"#), "frameworks[0].max_tasks", &["only to frameworks with a \"task\""]);
    bad(&fw(r#""weight": 1"#), "frameworks[0].weight", &["unknown field"]);
    bad(
        &format!(r#"{{"agents": [{AGENT}], "frameworks": [{{"id": "A", "role": "r"}}]}}"#),
        "frameworks[0]",
        &["neither", "\"accept\": \"all\""],
    );
    bad(
        r#"{"agents": [{"id": "a1", "resources": "cpus:1", "reserved": {"ghost": "cpus:1"}}], "frameworks": []}"#,
        "agents[0].reserved.ghost",
        &["role ghost is not defined", "list it under \"roles\""],
    );
    bad(
        r#"{"agents": [{"id": "a1", "resources": "cpus:1", "reserved": {"r": "cpus:2"}}], "roles": {"r": {}}, "frameworks": []}"#,
        "agents[0].reserved",
        &["exceed the agent's resources"],
    );
    bad(
        r#"{"agents": [{"id": "a1", "resources": "mem:-5GiB"}], "frameworks": []}"#,
        "agents[0].resources",
        &["negative"],
    );
    bad(r#"{"agents": [{"id": "a 1", "resources": "cpus:1"}], "frameworks": []}"#, "agents[0].id", &["' '"]);
    bad(&format!(r#"{{"agents": [{AGENT}, {AGENT}], "frameworks": []}}"#), "agents[1].id", &["listed twice"]);
    bad(r#"{"agents": [], "roles": {"r": {"weight": -1}}, "frameworks": []}"#, "roles.r.weight", &["positive number"]);
    bad(
        r#"{"agents": [], "roles": {"r": {"quota_limit": "cpus:x"}}, "frameworks": []}"#,
        "roles.r.quota_limit",
        &["not a number"],
    );
    bad(
        r#"{"agents": [], "roles": {"r": {"quota_guarantee": "cpus:4", "quota_limit": "cpus:2"}}, "frameworks": []}"#,
        "roles.r.quota_guarantee",
        &["above the quota_limit for cpus"],
    );
    bad(r#"{"agents": [], "roles": {"bad role": {}}, "frameworks": []}"#, "roles.bad role", &["' '"]);
    bad(
        r#"{"agents": [], "frameworks": [{"id": "A", "role": "", "accept": "all"}]}"#,
        "frameworks[0].role",
        &["empty"],
    );
    bad(r#"{"frameworks": []}"#, "", &["missing field `agents`", "add it"]);
    bad(r#"{"agents": [}"#, "", &["not valid JSON", "line 1"]);
    bad(r#"{"agents": [], "frameworks": [], "max_cycles": 0}"#, "max_cycles", &["at least 1"]);
}

#[test]
fn roles_not_listed_get_weight_one_and_no_quota() {
    let s =
        parse_scenario(r#"{"agents": [], "frameworks": [{"id": "A", "role": "eng/batch", "accept": "all"}]}"#).unwrap();
    assert!(s.roles.is_empty());
    let res = simulate(&s);
    // eng/batch and its parent eng both appear, each with weight 1.
    let names: Vec<String> = res.roles.iter().map(|r| format!("{}={}", r.role, r.weight)).collect();
    assert_eq!(names, ["eng=1", "eng/batch=1"]);
}
