//! The scenario simulator behind `wasmos sim`: the allocator on a cluster
//! described in JSON, with simulated frameworks that accept offers, so anyone can
//! ask "what would DRF give these tenants?" without a cluster. The format is
//! described in `allocator/README.md`.
//!
//! [`parse_scenario`] reads and validates a scenario (unknown fields, bad resource
//! strings, negative amounts and unknown roles are errors naming the field);
//! [`simulate`] runs it; [`SimResult::to_json`] gives the `--json` output.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use wasmos_model::{AgentId, FrameworkId, Resources, Role, Scalar};

use crate::Allocator;
use crate::types::{AgentInfo, Allocation, Config, DEFAULT_REFUSE, Quota, default_min_allocatable, parse_limit};

/// Default `max_cycles`: 1000.
pub const DEFAULT_MAX_CYCLES: u64 = 1000;

/// Simulated time between two allocation cycles: 1 s.
pub const CYCLE_INTERVAL: Duration = Duration::from_secs(1);

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub seed: u64,
    pub agents: Vec<SimAgent>,
    pub roles: BTreeMap<Role, SimRole>,
    pub frameworks: Vec<SimFramework>,
    pub max_cycles: u64,
    pub min_allocatable: Vec<Resources>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimAgent {
    pub id: AgentId,
    pub resources: Resources,
    pub reserved: BTreeMap<Role, Resources>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimRole {
    pub weight: f64,
    pub quota: Quota,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimFramework {
    pub id: FrameworkId,
    pub role: Role,
    pub behaviour: Behaviour,
    /// Filter put on declined resources; 0 (the default) sets none.
    pub refuse: Duration,
}

/// What a simulated framework does with an offer.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Launch tasks of size `task`: at most `per_offer` per offer (`None`: as
    /// many as fit), at most `max_tasks` in all (`None`: no end); decline the rest.
    Tasks { task: Resources, per_offer: Option<u64>, max_tasks: Option<u64> },
    /// Take every offer whole (a coarse-grained framework); each counts as one task.
    AcceptAll,
}

/// A malformed scenario: `path` names the field (`frameworks[1].task`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

impl std::error::Error for ScenarioError {}

fn err(path: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError { path: path.into(), message: message.into() }
}

// ----- the JSON as written -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    seed: u64,
    agents: Vec<RawAgent>,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    frameworks: Vec<RawFramework>,
    #[serde(default)]
    max_cycles: Option<u64>,
    #[serde(default)]
    min_allocatable: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    resources: String,
    #[serde(default)]
    reserved: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    quota_guarantee: Option<String>,
    #[serde(default)]
    quota_limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFramework {
    id: String,
    role: String,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    tasks_per_offer: Option<u64>,
    #[serde(default)]
    max_tasks: Option<u64>,
    #[serde(default)]
    accept: Option<String>,
    #[serde(default)]
    refuse_seconds: Option<f64>,
}

fn resources(path: &str, s: &str) -> Result<Resources, ScenarioError> {
    Resources::parse(s).map_err(|e| err(path, e.to_string()))
}

fn role(path: &str, s: &str) -> Result<Role, ScenarioError> {
    Role::new(s).map_err(|e| err(path, e.to_string()))
}

/// Reads and validates a scenario.
pub fn parse_scenario(json: &str) -> Result<Scenario, ScenarioError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let raw: RawScenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            // The root, or a place inside broken JSON: the line and column say more.
            path.clear();
        }
        let mut msg = inner.to_string();
        if msg.starts_with("unknown field") {
            msg.push_str("; fix the spelling or remove it (the format is in allocator/README.md)");
        } else if msg.starts_with("missing field") {
            msg.push_str("; add it (the format is in allocator/README.md)");
        } else if inner.is_syntax() || inner.is_eof() {
            msg = format!("not valid JSON: {msg}; fix the syntax");
        }
        err(path, msg)
    })?;

    let mut agents = Vec::new();
    let mut agent_ids = BTreeSet::new();
    for (i, a) in raw.agents.iter().enumerate() {
        let p = format!("agents[{i}]");
        let id = AgentId::new(a.id.clone()).map_err(|e| err(format!("{p}.id"), e.to_string()))?;
        if !agent_ids.insert(id.clone()) {
            return Err(err(format!("{p}.id"), format!("agent {id} is listed twice; give each agent its own id")));
        }
        let res = resources(&format!("{p}.resources"), &a.resources)?;
        let mut reserved = BTreeMap::new();
        let mut sum = Resources::new();
        for (r, s) in &a.reserved {
            let rp = format!("{p}.reserved.{r}");
            let q = resources(&rp, s)?;
            sum.add_assign(&q);
            reserved.insert(role(&rp, r)?, q);
        }
        if !res.contains(&sum) {
            return Err(err(
                format!("{p}.reserved"),
                format!("reservations ({sum}) exceed the agent's resources ({res}); reserve at most what it has"),
            ));
        }
        agents.push(SimAgent { id, resources: res, reserved });
    }

    let mut roles = BTreeMap::new();
    for (name, r) in &raw.roles {
        let p = format!("roles.{name}");
        let rl = role(&p, name)?;
        let weight = r.weight.unwrap_or(1.0);
        if !(weight.is_finite() && weight > 0.0) {
            return Err(err(
                format!("{p}.weight"),
                format!("{weight} is not a valid weight; use a positive number such as 1 or 2.5"),
            ));
        }
        let guarantee = match &r.quota_guarantee {
            Some(s) => resources(&format!("{p}.quota_guarantee"), s)?,
            None => Resources::new(),
        };
        let limit = match &r.quota_limit {
            Some(s) => parse_limit(s).map_err(|e| err(format!("{p}.quota_limit"), e.to_string()))?,
            None => BTreeMap::new(),
        };
        for (res_name, l) in &limit {
            if guarantee.get(res_name) > *l {
                return Err(err(
                    format!("{p}.quota_guarantee"),
                    format!(
                        "guarantee {guarantee} is above the quota_limit for {res_name}; raise the limit or lower the guarantee"
                    ),
                ));
            }
        }
        roles.insert(rl, SimRole { weight, quota: Quota { guarantee, limit } });
    }

    let mut frameworks = Vec::new();
    let mut fw_ids = BTreeSet::new();
    for (i, f) in raw.frameworks.iter().enumerate() {
        let p = format!("frameworks[{i}]");
        let id = FrameworkId::new(f.id.clone()).map_err(|e| err(format!("{p}.id"), e.to_string()))?;
        if !fw_ids.insert(id.clone()) {
            return Err(err(
                format!("{p}.id"),
                format!("framework {id} is listed twice; give each framework its own id"),
            ));
        }
        let rl = role(&format!("{p}.role"), &f.role)?;
        let behaviour = match (&f.task, &f.accept) {
            (Some(_), Some(_)) => {
                return Err(err(format!("{p}.accept"), "give either \"task\" or \"accept\": \"all\", not both"));
            }
            (None, None) => {
                return Err(err(
                    p.as_str(),
                    "says neither what to launch nor what to accept; add \"task\": \"cpus:1;mem:1GiB\" or \"accept\": \"all\"",
                ));
            }
            (None, Some(a)) => {
                if a != "all" {
                    return Err(err(
                        format!("{p}.accept"),
                        format!("{a:?} is not understood; the only value is \"all\""),
                    ));
                }
                for (field, set) in
                    [("tasks_per_offer", f.tasks_per_offer.is_some()), ("max_tasks", f.max_tasks.is_some())]
                {
                    if set {
                        return Err(err(
                            format!("{p}.{field}"),
                            "applies only to frameworks with a \"task\"; remove it or replace \"accept\" with a task",
                        ));
                    }
                }
                Behaviour::AcceptAll
            }
            (Some(t), None) => {
                let task = resources(&format!("{p}.task"), t)?;
                if task.is_empty() {
                    return Err(err(format!("{p}.task"), "asks for nothing; give a size such as cpus:1;mem:1GiB"));
                }
                if f.tasks_per_offer == Some(0) {
                    return Err(err(format!("{p}.tasks_per_offer"), "must be at least 1; use null for as many as fit"));
                }
                Behaviour::Tasks { task, per_offer: f.tasks_per_offer, max_tasks: f.max_tasks }
            }
        };
        let refuse = match f.refuse_seconds {
            None => Duration::ZERO,
            Some(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(err(
                    format!("{p}.refuse_seconds"),
                    format!("{s} is not a valid number of seconds; use 0 or more, e.g. 5"),
                ));
            }
        };
        frameworks.push(SimFramework { id, role: rl, behaviour, refuse });
    }

    // Every reserved role must be one somebody can use: listed under "roles", or
    // a framework's role or one of its ancestors.
    let mut known: BTreeSet<Role> = roles.keys().cloned().collect();
    for f in &frameworks {
        let mut r = Some(f.role.clone());
        while let Some(x) = r {
            r = x.parent();
            known.insert(x);
        }
    }
    for (i, a) in agents.iter().enumerate() {
        for r in a.reserved.keys() {
            if !known.contains(r) {
                return Err(err(
                    format!("agents[{i}].reserved.{r}"),
                    format!("role {r} is not defined; list it under \"roles\" or give a framework that role"),
                ));
            }
        }
    }

    let min_allocatable = match &raw.min_allocatable {
        None => default_min_allocatable(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, s)| resources(&format!("min_allocatable[{i}]"), s))
            .collect::<Result<_, _>>()?,
    };
    if raw.max_cycles == Some(0) {
        return Err(err("max_cycles", "must be at least 1"));
    }
    Ok(Scenario {
        seed: raw.seed,
        agents,
        roles,
        frameworks,
        max_cycles: raw.max_cycles.unwrap_or(DEFAULT_MAX_CYCLES),
        min_allocatable,
    })
}

// ----- running it ----------------------------------------------------------------

/// One framework's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkResult {
    pub id: FrameworkId,
    pub role: Role,
    pub tasks: u64,
    pub allocated: Resources,
    pub dominant_share: f64,
}

/// One role's outcome (its subtree included).
#[derive(Debug, Clone, PartialEq)]
pub struct RoleResult {
    pub role: Role,
    pub weight: f64,
    /// Held by the role's frameworks.
    pub allocated: Resources,
    /// Reserved for the role, used or not.
    pub reserved: Resources,
    /// Dominant share of allocated plus unused reservations (what DRF counts).
    pub dominant_share: f64,
}

/// What a simulation ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    /// Allocation cycles run.
    pub cycles: u64,
    /// True when it stopped because nothing more could be placed; false when it
    /// ran out of `max_cycles` first.
    pub settled: bool,
    pub total: Resources,
    /// In scenario order.
    pub frameworks: Vec<FrameworkResult>,
    /// In name order.
    pub roles: Vec<RoleResult>,
}

/// Resources as the JSON output writes them: `cpus:2;mem:1GiB`, or `""` for none.
fn res_str(r: &Resources) -> String {
    if r.is_empty() { String::new() } else { r.to_string() }
}

/// Shares are reported to four decimals.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

impl SimResult {
    /// `{"cycles": N, "settled": true, "frameworks": {"A": {"role": ..., "tasks": 3,
    /// "allocated": "cpus:3;mem:12GiB", "dominant_share": 0.6667}, ...},
    /// "roles": {"r1": {"weight": 1.0, "allocated": ..., "reserved": ...,
    /// "dominant_share": ...}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut fws = serde_json::Map::new();
        for f in &self.frameworks {
            fws.insert(
                f.id.to_string(),
                serde_json::json!({
                    "role": f.role.as_str(),
                    "tasks": f.tasks,
                    "allocated": res_str(&f.allocated),
                    "dominant_share": round4(f.dominant_share),
                }),
            );
        }
        let mut roles = serde_json::Map::new();
        for r in &self.roles {
            roles.insert(
                r.role.to_string(),
                serde_json::json!({
                    "weight": r.weight,
                    "allocated": res_str(&r.allocated),
                    "reserved": res_str(&r.reserved),
                    "dominant_share": round4(r.dominant_share),
                }),
            );
        }
        serde_json::json!({
            "cycles": self.cycles,
            "settled": self.settled,
            "total": res_str(&self.total),
            "frameworks": fws,
            "roles": roles,
        })
    }

    pub fn framework(&self, id: &str) -> Option<&FrameworkResult> {
        self.frameworks.iter().find(|f| f.id.as_str() == id)
    }

    pub fn role(&self, role: &str) -> Option<&RoleResult> {
        self.roles.iter().find(|r| r.role.as_str() == role)
    }
}

struct Running {
    tasks: u64,
    done: bool,
}

/// Takes one `task` out of `left`, reserved resources first; `None` if it does
/// not fit.
fn take_task(left: &mut Allocation, task: &Resources) -> Option<Allocation> {
    if !left.total().contains(task) {
        return None;
    }
    let mut used = Allocation::default();
    for (name, need) in task.iter() {
        let mut need = need.0;
        for (role, r) in left.reserved.iter_mut() {
            let take = need.min(r.get(name).0);
            if take > 0 {
                r.set(name, Scalar(r.get(name).0 - take));
                let u = used.reserved.entry(role.clone()).or_default();
                u.set(name, Scalar(u.get(name).0 + take));
                need -= take;
            }
        }
        if need > 0 {
            left.unreserved.set(name, Scalar(left.unreserved.get(name).0 - need));
            used.unreserved.set(name, Scalar(used.unreserved.get(name).0 + need));
        }
    }
    left.reserved.retain(|_, r| !r.is_empty());
    Some(used)
}

/// Builds the allocator a scenario describes.
pub fn build_allocator(s: &Scenario) -> Allocator {
    let mut alloc = Allocator::new(Config {
        seed: s.seed,
        min_allocatable: s.min_allocatable.clone(),
        default_refuse: DEFAULT_REFUSE,
    });
    for a in &s.agents {
        let info =
            AgentInfo { resources: a.resources.clone(), reservations: a.reserved.clone(), ..AgentInfo::default() };
        alloc.add_agent(a.id.clone(), info).expect("validated scenario: agents are unique and fit");
    }
    for (role, r) in &s.roles {
        alloc.update_weight(role, r.weight).expect("validated scenario: weights are positive");
        alloc.set_quota(role, r.quota.clone()).expect("validated scenario: guarantees fit in limits");
    }
    for f in &s.frameworks {
        alloc.add_framework(f.id.clone(), std::slice::from_ref(&f.role)).expect("validated scenario: unique ids");
    }
    alloc
}

/// Runs allocation cycles 1 s of simulated time apart until no framework that
/// still wants something could be offered a place for it, or `max_cycles`.
///
/// Each offer goes to its simulated framework at once: a task framework launches
/// as many tasks as it may and fit (taking reserved resources first), declines
/// the rest with its `refuse_seconds` filter (default 0: offered again next
/// cycle), and suppresses offers once it reached `max_tasks`; an accept-all
/// framework keeps the whole offer.
pub fn simulate(s: &Scenario) -> SimResult {
    let mut alloc = build_allocator(s);
    let mut state: BTreeMap<FrameworkId, Running> =
        s.frameworks.iter().map(|f| (f.id.clone(), Running { tasks: 0, done: false })).collect();
    let by_id: BTreeMap<&FrameworkId, &SimFramework> = s.frameworks.iter().map(|f| (&f.id, f)).collect();
    let mut now = Duration::ZERO;
    let mut cycles = 0;
    let mut settled = false;
    while cycles < s.max_cycles {
        cycles += 1;
        for offer in alloc.allocate(now) {
            let spec = by_id[&offer.framework];
            let run = state.get_mut(&offer.framework).expect("offers go to known frameworks");
            match &spec.behaviour {
                Behaviour::AcceptAll => run.tasks += 1,
                Behaviour::Tasks { task, per_offer, max_tasks } => {
                    let mut allowed = per_offer.unwrap_or(u64::MAX);
                    if let Some(m) = max_tasks {
                        allowed = allowed.min(m.saturating_sub(run.tasks));
                    }
                    let mut left = offer.resources.clone();
                    let mut launched = 0;
                    while launched < allowed && take_task(&mut left, task).is_some() {
                        launched += 1;
                    }
                    run.tasks += launched;
                    if !left.is_empty() {
                        alloc
                            .recover_resources(
                                &offer.framework,
                                &offer.agent,
                                &offer.role,
                                &left,
                                Some(spec.refuse),
                                now,
                            )
                            .expect("declining part of a fresh offer");
                    }
                    if max_tasks.is_some_and(|m| run.tasks >= m) && !run.done {
                        run.done = true;
                        alloc.suppress(&offer.framework, &[]).expect("known framework");
                    }
                }
            }
        }
        now += CYCLE_INTERVAL;
        if !can_place_more(&alloc, s, &state) {
            settled = true;
            break;
        }
    }
    let frameworks = s
        .frameworks
        .iter()
        .map(|f| FrameworkResult {
            id: f.id.clone(),
            role: f.role.clone(),
            tasks: state[&f.id].tasks,
            allocated: alloc.framework_allocated(&f.id).unwrap_or_default(),
            dominant_share: alloc.framework_share(&f.id).unwrap_or(0.0),
        })
        .collect();
    let roles = alloc
        .roles()
        .iter()
        .filter_map(|r| alloc.role_stats(r))
        .map(|st| RoleResult {
            role: st.role,
            weight: st.weight,
            allocated: st.allocated,
            reserved: st.reserved,
            dominant_share: st.share,
        })
        .collect();
    SimResult { cycles, settled, total: alloc.total(), frameworks, roles }
}

/// What a role could be offered, per agent, and the largest amount of each
/// resource on any one agent (a task bigger than that fits nowhere).
struct Room {
    per_agent: Vec<Resources>,
    largest: Resources,
}

impl Room {
    fn of(alloc: &Allocator, role: &Role) -> Room {
        let per_agent: Vec<Resources> = alloc.offerable(role).into_iter().map(|(_, a)| a.total()).collect();
        let mut largest = Resources::new();
        for r in &per_agent {
            for (name, amount) in r.iter() {
                if amount > largest.get(name) {
                    largest.set(name, amount);
                }
            }
        }
        Room { per_agent, largest }
    }

    fn fits(&self, task: &Resources) -> bool {
        self.largest.contains(task) && self.per_agent.iter().any(|a| a.contains(task))
    }
}

/// Whether some framework that still wants something could be offered room
/// for it. Each role's room is worked out once per call (with the totals,
/// not the allocations, of each agent), and each distinct task size is
/// checked once per role.
fn can_place_more(alloc: &Allocator, s: &Scenario, state: &BTreeMap<FrameworkId, Running>) -> bool {
    let mut rooms: BTreeMap<&Role, Room> = BTreeMap::new();
    let mut checked: std::collections::HashSet<(&Role, String)> = std::collections::HashSet::new();
    for f in &s.frameworks {
        if state[&f.id].done {
            continue;
        }
        let room = rooms.entry(&f.role).or_insert_with(|| Room::of(alloc, &f.role));
        let fits = match &f.behaviour {
            Behaviour::AcceptAll => !room.per_agent.is_empty(),
            Behaviour::Tasks { task, .. } => checked.insert((&f.role, task.to_string())) && room.fits(task),
        };
        if fits {
            return true;
        }
    }
    false
}
