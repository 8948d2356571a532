//! Property tests: random clusters (agents with reservations, nested roles,
//! weights, quota), random framework behaviour over several cycles, and the
//! invariants every cycle must keep.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use wasmos_allocator::sim::{Behaviour, Scenario, SimAgent, SimFramework, simulate};
use wasmos_allocator::{AgentInfo, Allocation, Allocator, Config, Quota};
use wasmos_model::{Resources, Role, Scalar};

use crate::mock::*;

const ROLES: [&str; 5] = ["a", "b", "a/x", "a/y", "c"];
/// Roles that may carry quota (top-level, as in Mesos).
const TOP: [usize; 3] = [0, 1, 4];

/// (cpus, GiB of mem, optional reservation: role index, cpus, GiB)
type AgentSpec = (u32, u32, Option<(usize, u32, u32)>);

#[derive(Debug, Clone)]
struct Setup {
    seed: u64,
    agents: Vec<AgentSpec>,
    /// role indices per framework
    frameworks: Vec<Vec<usize>>,
    weights: Vec<u32>,
    /// (guarantee cpus, limit cpus, limit GiB) per top-level role, if any
    quotas: Vec<Option<(u32, u32, u32)>>,
    /// what frameworks do with offers, one byte per offer (cycled)
    actions: Vec<u8>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<u64>(),
        prop::collection::vec((1u32..16, 1u32..16, prop::option::of((0usize..5, 0u32..8, 0u32..8))), 1..8),
        prop::collection::vec(prop::collection::btree_set(0usize..5, 1..3), 1..6),
        prop::collection::vec(1u32..4, 5),
        prop::collection::vec(prop::option::of((0u32..6, 0u32..12, 0u32..12)), 3),
        prop::collection::vec(0u8..8, 1..32),
    )
        .prop_map(|(seed, agents, frameworks, weights, quotas, actions)| Setup {
            seed,
            agents,
            frameworks: frameworks.into_iter().map(|s| s.into_iter().collect()).collect(),
            weights,
            quotas,
            actions,
        })
}

fn build(s: &Setup) -> Allocator {
    let mut alloc = Allocator::new(Config { seed: s.seed, ..Config::default() });
    for (i, (cpus, mem, res)) in s.agents.iter().enumerate() {
        let mut info = AgentInfo::new(r(&format!("cpus:{cpus};mem:{mem}GiB")));
        if let Some((ri, rc, rm)) = res {
            // Reserve no more than the agent has.
            let part = r(&format!("cpus:{};mem:{}GiB", rc.min(cpus), rm.min(mem)));
            if !part.is_empty() {
                info = info.reserve(role(ROLES[*ri]), part);
            }
        }
        alloc.add_agent(aid(&format!("a{i}")), info).unwrap();
    }
    for (i, w) in s.weights.iter().enumerate() {
        alloc.update_weight(&role(ROLES[i]), *w as f64).unwrap();
    }
    for (q, &ri) in s.quotas.iter().zip(TOP.iter()) {
        if let Some((g, lc, lm)) = q {
            let quota = Quota::parse(&format!("cpus:{}", g.min(lc)), &format!("cpus:{lc};mem:{lm}GiB")).unwrap();
            alloc.set_quota(&role(ROLES[ri]), quota).unwrap();
        }
    }
    for (i, roles) in s.frameworks.iter().enumerate() {
        let roles: Vec<Role> = roles.iter().map(|&x| role(ROLES[x])).collect();
        alloc.add_framework(fid(&format!("f{i}")), &roles).unwrap();
    }
    alloc
}

/// `a` fits in `b`, part by part (unreserved in unreserved, each reservation in
/// the same role's).
fn fits(a: &Allocation, b: &Allocation) -> bool {
    b.unreserved.contains(&a.unreserved)
        && a.reserved.iter().all(|(role, q)| b.reserved.get(role).is_some_and(|have| have.contains(q)))
}

fn add(sum: &mut Allocation, x: &Allocation) {
    sum.unreserved.add_assign(&x.unreserved);
    for (role, q) in &x.reserved {
        sum.reserved.entry(role.clone()).or_default().add_assign(q);
    }
}

fn consumed(alloc: &Allocator, ri: usize) -> Resources {
    alloc.role_stats(&role(ROLES[ri])).map(|s| s.consumed).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_cycle_keeps_the_invariants(s in setup()) {
        let mut alloc = build(&s);
        let mut now = Duration::ZERO;
        let mut step = 0usize;
        for _cycle in 0..6 {
            let free: BTreeMap<String, Allocation> = (0..s.agents.len())
                .map(|i| (format!("a{i}"), alloc.agent_free(&aid(&format!("a{i}"))).unwrap()))
                .collect();
            let before: Vec<Resources> = TOP.iter().map(|&ri| consumed(&alloc, ri)).collect();

            let offers = alloc.allocate(now);

            // Never more than an agent's free resources, and so never the same
            // resources twice in one cycle: all offers of an agent together fit
            // in what was free on it.
            let mut per_agent: BTreeMap<String, Allocation> = BTreeMap::new();
            let mut seen = BTreeSet::new();
            for o in &offers {
                prop_assert!(!o.resources.is_empty());
                add(per_agent.entry(o.agent.to_string()).or_default(), &o.resources);
                // At most one offer per (framework, role, agent) in a cycle.
                prop_assert!(seen.insert((o.framework.clone(), o.role.clone(), o.agent.clone())));
                // Reserved resources only reach their role or its descendants.
                for reserved_for in o.resources.reserved.keys() {
                    prop_assert!(reserved_for.covers(&o.role), "{reserved_for} reached {}", o.role);
                }
            }
            for (agent, sum) in &per_agent {
                prop_assert!(fits(sum, &free[agent]), "agent {agent}: offered {sum}, free was {}", free[agent]);
            }
            // Quota limits are never exceeded: a role within its limit before
            // the cycle is within it after.
            for (k, (q, &ri)) in s.quotas.iter().zip(TOP.iter()).enumerate() {
                if let Some((_, lc, lm)) = q {
                    let after = consumed(&alloc, ri);
                    for (name, limit) in [("cpus", Scalar::units(*lc as i64)), ("mem", Scalar::units((*lm as i64) << 30))] {
                        let bound = limit.max(before[k].get(name));
                        prop_assert!(after.get(name) <= bound, "role {}: {name} {:?} > {:?}", ROLES[ri], after.get(name), bound);
                    }
                }
            }

            // Frameworks respond.
            for o in &offers {
                let act = s.actions[step % s.actions.len()];
                step += 1;
                match act {
                    0 | 1 => alloc.recover_resources(&o.framework, &o.agent, &o.role, &o.resources, None, now).unwrap(),
                    2 => alloc
                        .recover_resources(&o.framework, &o.agent, &o.role, &o.resources, Some(Duration::from_secs(2)), now)
                        .unwrap(),
                    3 => {
                        // keep the reserved part, give back the unreserved
                        let back = Allocation::from(o.resources.unreserved.clone());
                        alloc.recover_resources(&o.framework, &o.agent, &o.role, &back, None, now).unwrap();
                    }
                    4 => alloc.suppress(&o.framework, std::slice::from_ref(&o.role)).unwrap(),
                    5 => alloc.revive(&o.framework, &[]).unwrap(),
                    _ => {} // keep it all
                }
            }
            // Some tasks end: everything held on one agent comes back.
            let a = aid(&format!("a{}", step % s.agents.len()));
            for (f, ro, held) in alloc.agent_allocations(&a).unwrap() {
                alloc.recover_resources(&f, &a, &ro, &held, None, now).unwrap();
            }
            now += Duration::from_secs(1);
        }
    }

    #[test]
    fn equal_weights_and_unlimited_demand_converge_within_one_task(
        seed in any::<u64>(),
        tasks in prop::collection::vec((1u32..5, 1u32..5), 2..6),
        same_role in any::<bool>(),
        cycles in 10u64..60,
    ) {
        // One big agent and frameworks with endless demand launching one task per
        // offer: DRF always serves the lowest dominant share, so after any number
        // of cycles (while everything still fits) the shares differ by at most
        // the largest single task's dominant share.
        let total = r("cpus:1000;mem:1000GiB");
        let frameworks: Vec<SimFramework> = tasks
            .iter()
            .enumerate()
            .map(|(i, (c, m))| SimFramework {
                id: fid(&format!("f{i}")),
                role: role(&if same_role { "r".to_string() } else { format!("r{i}") }),
                behaviour: Behaviour::Tasks { task: r(&format!("cpus:{c};mem:{m}GiB")), per_offer: Some(1), max_tasks: None },
                refuse: Duration::ZERO,
            })
            .collect();
        let scenario = Scenario {
            seed,
            agents: vec![SimAgent { id: aid("big"), resources: total.clone(), reserved: BTreeMap::new() }],
            roles: BTreeMap::new(),
            frameworks,
            max_cycles: cycles,
            min_allocatable: wasmos_allocator::default_min_allocatable(),
        };
        let res = simulate(&scenario);
        let shares: Vec<f64> = res.frameworks.iter().map(|f| f.dominant_share).collect();
        let spread = shares.iter().cloned().fold(f64::MIN, f64::max) - shares.iter().cloned().fold(f64::MAX, f64::min);
        // a task of <c cpus, m GiB> is max(c/1000, m/1000) of the cluster
        let biggest = tasks.iter().map(|(c, m)| (*c).max(*m) as f64 / 1000.0).fold(0.0, f64::max);
        prop_assert!(spread <= biggest + 1e-9, "shares {shares:?} spread {spread} > one task {biggest}");
        prop_assert_eq!(res.frameworks.iter().map(|f| f.tasks).sum::<u64>(), cycles, "one task per cycle");
    }
}
