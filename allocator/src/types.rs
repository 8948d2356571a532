//! The allocator's public vocabulary: configuration, agents, offers, quota and errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use wasmos_model::{AgentId, CPUS, FrameworkId, MEM, Resources, Role, Scalar};

/// How long declined resources stay away from the framework that declined them
/// when the decline names no `refuse_seconds` (Mesos's default): 5 s.
pub const DEFAULT_REFUSE: Duration = Duration::from_secs(5);

/// Allocator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the generator that shuffles agents each cycle (as Mesos shuffles
    /// them). Default 0. The same seed and the same events give the same offers.
    pub seed: u64,
    /// An offer is made only if it holds at least one of these bundles. Default
    /// `cpus:0.01` or `mem:32MiB` (Mesos's default), which keeps crumbs out of
    /// offers. An empty list means "any non-empty offer".
    pub min_allocatable: Vec<Resources>,
    /// Filter used by [`crate::Allocator::decline`] when the framework gave no
    /// `refuse_seconds`. Default [`DEFAULT_REFUSE`] (5 s).
    pub default_refuse: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config { seed: 0, min_allocatable: default_min_allocatable(), default_refuse: DEFAULT_REFUSE }
    }
}

/// `cpus:0.01` or `mem:32MiB`.
pub fn default_min_allocatable() -> Vec<Resources> {
    vec![Resources::new().with(CPUS, Scalar(10)), Resources::new().with(MEM, Scalar::units(32 << 20))]
}

/// What an agent brings to the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentInfo {
    /// Everything the agent has, reserved or not.
    pub resources: Resources,
    /// Static reservations from the agent's configuration: a part of `resources`
    /// per role, offered only to frameworks of that role or its descendants.
    pub reservations: BTreeMap<Role, Resources>,
    /// Free-form attributes (zone, rack, ...). Kept for the master; the allocator
    /// does not filter on them.
    pub attributes: BTreeMap<String, String>,
}

impl AgentInfo {
    /// An agent with `resources` and nothing reserved.
    pub fn new(resources: Resources) -> AgentInfo {
        AgentInfo { resources, ..AgentInfo::default() }
    }

    /// Builder-style: reserves `resources` for `role` (a static reservation).
    pub fn reserve(mut self, role: Role, resources: Resources) -> AgentInfo {
        let r = self.reservations.entry(role).or_default();
        r.add_assign(&resources);
        self
    }
}

/// Resources of one agent as the allocator hands them out: unreserved ones, plus
/// reserved ones labelled with the role they are reserved for (the offer's role
/// or one of its ancestors). Offers carry one; the master gives the part a
/// framework does not use back with [`crate::Allocator::recover_resources`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub unreserved: Resources,
    pub reserved: BTreeMap<Role, Resources>,
}

impl Allocation {
    /// Everything, reserved or not, as one bag.
    pub fn total(&self) -> Resources {
        let mut t = self.unreserved.clone();
        for r in self.reserved.values() {
            t.add_assign(r);
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.unreserved.is_empty() && self.reserved.values().all(Resources::is_empty)
    }
}

impl From<Resources> for Allocation {
    /// All unreserved.
    fn from(unreserved: Resources) -> Allocation {
        Allocation { unreserved, reserved: BTreeMap::new() }
    }
}

impl fmt::Display for Allocation {
    /// `cpus:2;mem:1GiB`, then `+ eng:(cpus:1)` for each reservation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        if !self.unreserved.is_empty() || self.reserved.is_empty() {
            write!(f, "{}", self.unreserved)?;
            first = false;
        }
        for (role, r) in &self.reserved {
            if !first {
                f.write_str(" + ")?;
            }
            write!(f, "{role}:({r})")?;
            first = false;
        }
        Ok(())
    }
}

/// One agent's resources offered to one framework for one of its roles. Offered
/// resources count as allocated (toward shares and quota) until the master
/// recovers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub framework: FrameworkId,
    pub role: Role,
    pub agent: AgentId,
    pub resources: Allocation,
}

/// A role's quota. The guarantee is satisfied first each cycle (and unreserved
/// headroom is held back from other roles until it can be); the limit is never
/// exceeded by unreserved allocations. Both count the role's consumption: what
/// its frameworks (and its descendants') hold plus its unallocated reservations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    pub guarantee: Resources,
    /// Upper bound per resource name; a name absent here is unlimited. A map (not
    /// [`Resources`]) so that a limit of zero can be written.
    pub limit: BTreeMap<String, Scalar>,
}

impl Quota {
    /// Parses a guarantee and a limit written as resource strings
    /// (`"cpus:2"`, `"cpus:4;mem:8GiB"`); in the limit, `cpus:0` means "none".
    pub fn parse(guarantee: &str, limit: &str) -> Result<Quota, wasmos_model::ResourceError> {
        Ok(Quota { guarantee: Resources::parse(guarantee)?, limit: parse_limit(limit)? })
    }
}

/// Parses `cpus:4;mem:8GiB` into a per-name limit, keeping zero amounts (which
/// [`Resources`] would drop).
pub fn parse_limit(s: &str) -> Result<BTreeMap<String, Scalar>, wasmos_model::ResourceError> {
    let mut out = BTreeMap::new();
    // Parse the whole string once so duplicates and syntax are checked as usual.
    let all = Resources::parse(s)?;
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let name = entry.split_once(':').map(|(n, _)| n.trim()).unwrap_or(entry);
        out.insert(name.to_string(), all.get(name));
    }
    Ok(out)
}

/// A role's standing, for operators and `wasmos sim`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleStats {
    pub role: Role,
    pub weight: f64,
    pub quota: Quota,
    /// Held by frameworks of this role and its descendants (offered or in use).
    pub allocated: Resources,
    /// Reserved for this role and its descendants, allocated or not.
    pub reserved: Resources,
    /// What shares and quota count: `allocated` plus unallocated reservations.
    pub consumed: Resources,
    /// Dominant share of `consumed` over the cluster's total (not divided by weight).
    pub share: f64,
    /// Frameworks subscribed to exactly this role.
    pub frameworks: usize,
}

/// Why an allocator event was refused. Refusals leave the allocator unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocatorError {
    #[error("agent {0} is already registered; remove it first or use update_agent")]
    AgentExists(AgentId),
    #[error("agent {0} is not registered; add it first")]
    UnknownAgent(AgentId),
    #[error("framework {0} is already registered; remove it first or use update_framework")]
    FrameworkExists(FrameworkId),
    #[error("framework {0} is not registered; add it first")]
    UnknownFramework(FrameworkId),
    #[error("framework {0} subscribes to no role; give it at least one")]
    NoRoles(FrameworkId),
    #[error("framework {framework} is not subscribed to role {role}; subscribe it with update_framework first")]
    NotSubscribed { framework: FrameworkId, role: Role },
    #[error(
        "agent {agent}: reservations ({reserved}) exceed its resources ({total}); reserve at most what the agent has"
    )]
    ReservationsExceedTotal { agent: AgentId, reserved: Resources, total: Resources },
    #[error(
        "agent {agent} has only {available} unreserved and unallocated; cannot reserve {requested} for role {role}"
    )]
    NotEnoughUnreserved { agent: AgentId, role: Role, requested: Resources, available: Resources },
    #[error(
        "agent {agent} has only {available} dynamically reserved for role {role} and unallocated; cannot unreserve {requested}"
    )]
    NotEnoughReserved { agent: AgentId, role: Role, requested: Resources, available: Resources },
    #[error(
        "framework {framework} does not hold {requested} in role {role} on agent {agent} (it holds {held}); recover only what was offered or allocated"
    )]
    NotAllocated { framework: FrameworkId, role: Role, agent: AgentId, requested: String, held: String },
    #[error("agent {agent} has {available} free for role {role}; cannot allocate {requested}")]
    NotAvailable { agent: AgentId, role: Role, requested: String, available: String },
    #[error(
        "agent {agent}: new resources {total} do not cover what is allocated or reserved on it ({needed}); recover or unreserve first"
    )]
    AgentShrinksBelowUse { agent: AgentId, total: Resources, needed: String },
    #[error("weight {weight} for role {role} is invalid; use a positive finite number such as 1 or 2.5")]
    BadWeight { role: Role, weight: f64 },
    #[error(
        "quota of role {role}: guarantee {guarantee} exceeds the limit for {resource}; raise the limit or lower the guarantee"
    )]
    GuaranteeAboveLimit { role: Role, resource: String, guarantee: Resources },
}
