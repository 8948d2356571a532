//! Small builders for tests: `Cluster::new().agent("a1", "cpus:4;mem:1GiB")`.

use std::time::Duration;

use wasmos_allocator::sim::{SimResult, parse_scenario, simulate};
use wasmos_allocator::{AgentInfo, Allocation, Allocator, Config, Offer, Quota};
use wasmos_model::{AgentId, FrameworkId, Resources, Role};

pub fn r(s: &str) -> Resources {
    Resources::parse(s).unwrap()
}
pub fn role(s: &str) -> Role {
    Role::new(s).unwrap()
}
pub fn aid(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}
pub fn fid(s: &str) -> FrameworkId {
    FrameworkId::new(s).unwrap()
}
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An allocator plus a simulated clock.
pub struct Cluster {
    pub alloc: Allocator,
    pub now: Duration,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::with(Config { seed: 1, ..Config::default() })
    }

    pub fn with(config: Config) -> Cluster {
        Cluster { alloc: Allocator::new(config), now: Duration::ZERO }
    }

    pub fn agent(&mut self, id: &str, res: &str) -> &mut Cluster {
        self.alloc.add_agent(aid(id), AgentInfo::new(r(res))).unwrap();
        self
    }

    /// An agent with static reservations: `&[("r1", "cpus:2")]`.
    pub fn reserved_agent(&mut self, id: &str, res: &str, reserved: &[(&str, &str)]) -> &mut Cluster {
        let mut info = AgentInfo::new(r(res));
        for (ro, rs) in reserved {
            info = info.reserve(role(ro), r(rs));
        }
        self.alloc.add_agent(aid(id), info).unwrap();
        self
    }

    pub fn framework(&mut self, id: &str, roles: &[&str]) -> &mut Cluster {
        let roles: Vec<Role> = roles.iter().map(|x| role(x)).collect();
        self.alloc.add_framework(fid(id), &roles).unwrap();
        self
    }

    pub fn quota(&mut self, ro: &str, guarantee: &str, limit: &str) -> &mut Cluster {
        self.alloc.set_quota(&role(ro), Quota::parse(guarantee, limit).unwrap()).unwrap();
        self
    }

    pub fn cycle(&mut self) -> Vec<Offer> {
        self.alloc.allocate(self.now)
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Declines every offer with `refuse` (None: no filter).
    pub fn decline(&mut self, offers: &[Offer], refuse: Option<Duration>) {
        for o in offers {
            self.alloc.recover_resources(&o.framework, &o.agent, &o.role, &o.resources, refuse, self.now).unwrap();
        }
    }

    /// Gives part of an offer back (no filter): what a framework does not use.
    pub fn give_back(&mut self, o: &Offer, part: &str) {
        self.alloc
            .recover_resources(&o.framework, &o.agent, &o.role, &Allocation::from(r(part)), None, self.now)
            .unwrap();
    }

    pub fn held(&self, fw: &str) -> String {
        self.alloc.framework_allocated(&fid(fw)).unwrap().to_string()
    }

    pub fn share(&self, fw: &str) -> f64 {
        self.alloc.framework_share(&fid(fw)).unwrap()
    }

    pub fn role_share(&self, ro: &str) -> f64 {
        self.alloc.role_stats(&role(ro)).unwrap().share
    }
}

/// Offers as `framework@agent: resources`, sorted, for compact assertions.
pub fn summary(offers: &[Offer]) -> Vec<String> {
    let mut v: Vec<String> = offers.iter().map(|o| format!("{}@{}: {}", o.framework, o.agent, o.resources)).collect();
    v.sort();
    v
}

/// Offers per framework, as `framework: count`, sorted.
pub fn counts(offers: &[Offer]) -> Vec<String> {
    let mut m = std::collections::BTreeMap::<String, usize>::new();
    for o in offers {
        *m.entry(o.framework.to_string()).or_default() += 1;
    }
    m.into_iter().map(|(k, v)| format!("{k}: {v}")).collect()
}

/// Parses and runs a scenario.
pub fn sim(json: &str) -> SimResult {
    simulate(&parse_scenario(json).unwrap_or_else(|e| panic!("bad scenario: {e}")))
}

/// Checks each framework's `(id, tasks, allocated, dominant share)`.
pub fn check(res: &SimResult, want: &[(&str, u64, &str, f64)]) {
    for (id, tasks, allocated, share) in want {
        let f = res.framework(id).unwrap_or_else(|| panic!("no framework {id}"));
        assert_eq!(
            (f.tasks, f.allocated.to_string()),
            (*tasks, allocated.to_string()),
            "framework {id} (result: {})",
            res.to_json()
        );
        assert!((f.dominant_share - share).abs() < 5e-5, "framework {id}: share {} != {share}", f.dominant_share);
    }
}
