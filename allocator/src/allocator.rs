//! The allocator's state and its events. The allocation cycle itself lives in
//! `cycle.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use wasmos_model::{AgentId, FrameworkId, Resources, Role};

use crate::qty::{Cap, Names, Qty};
use crate::rng::Rng;
use crate::types::{AgentInfo, Allocation, AllocatorError, Config, Offer, Quota, RoleStats};

pub(crate) const ROOT: u32 = 0;

/// Resources in the allocator's dense form: unreserved, plus reserved per role node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bundle {
    pub(crate) unreserved: Qty,
    pub(crate) reserved: Vec<(u32, Qty)>,
}

impl Bundle {
    pub(crate) fn total(&self) -> Qty {
        let mut t = self.unreserved.clone();
        for (_, q) in &self.reserved {
            t.add(q);
        }
        t
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.unreserved.is_zero() && self.reserved.iter().all(|(_, q)| q.is_zero())
    }

    fn reserved_for(&self, role: u32) -> Option<&Qty> {
        self.reserved.iter().find(|(r, _)| *r == role).map(|(_, q)| q)
    }

    pub(crate) fn contains(&self, o: &Bundle) -> bool {
        self.unreserved.contains(&o.unreserved)
            && o.reserved.iter().all(|(r, q)| q.is_zero() || self.reserved_for(*r).is_some_and(|mine| mine.contains(q)))
    }

    pub(crate) fn add(&mut self, o: &Bundle) {
        self.unreserved.add(&o.unreserved);
        for (r, q) in &o.reserved {
            match self.reserved.iter_mut().find(|(x, _)| x == r) {
                Some((_, mine)) => mine.add(q),
                None => self.reserved.push((*r, q.clone())),
            }
        }
    }

    /// `self -= o`; callers check [`Bundle::contains`] first.
    pub(crate) fn sub(&mut self, o: &Bundle) {
        self.unreserved.sub(&o.unreserved);
        for (r, q) in &o.reserved {
            if let Some((_, mine)) = self.reserved.iter_mut().find(|(x, _)| x == r) {
                mine.sub(q);
            }
        }
        self.reserved.retain(|(_, q)| !q.is_zero());
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RoleNode {
    pub(crate) role: Option<Role>,
    pub(crate) parent: u32,
    pub(crate) depth: u32,
    pub(crate) children: Vec<u32>,
    pub(crate) weight: f64,
    pub(crate) guarantee: Qty,
    pub(crate) limit: Cap,
    pub(crate) quota: Quota,
    /// Held by frameworks subscribed to exactly this role (reserved or not).
    pub(crate) own_alloc: Qty,
    /// Unallocated reservations for exactly this role, over all agents.
    pub(crate) own_reserved_free: Qty,
    /// All reservations for exactly this role, over all agents.
    pub(crate) own_reserved: Qty,
    /// Subtree sum of `own_alloc + own_reserved_free`: what shares and quota count.
    pub(crate) charged: Qty,
    /// Allocations made to the subtree (sorter tie-break, as in Mesos).
    pub(crate) count: u64,
    /// Allocations made to frameworks of exactly this role.
    pub(crate) own_count: u64,
    /// Frameworks subscribed to exactly this role.
    pub(crate) frameworks: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub(crate) role: u32,
    pub(crate) fixed: Qty,
    pub(crate) dynamic: Qty,
    pub(crate) free: Qty,
}

impl Reservation {
    fn total(&self) -> Qty {
        let mut t = self.fixed.clone();
        t.add(&self.dynamic);
        t
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AgentAlloc {
    pub(crate) fw: u32,
    pub(crate) role: u32,
    pub(crate) res: Bundle,
}

#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub(crate) id: AgentId,
    /// Never reused, unlike the slot: filters name agents by serial.
    pub(crate) serial: u64,
    pub(crate) active: bool,
    pub(crate) total: Qty,
    pub(crate) attributes: BTreeMap<String, String>,
    pub(crate) reservations: Vec<Reservation>,
    /// Unreserved and unallocated.
    pub(crate) free: Qty,
    pub(crate) allocs: Vec<AgentAlloc>,
}

impl Agent {
    pub(crate) fn has_free_reserved(&self) -> bool {
        self.reservations.iter().any(|r| !r.free.is_zero())
    }
    fn reservation_mut(&mut self, role: u32) -> Option<&mut Reservation> {
        self.reservations.iter_mut().find(|r| r.role == role)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) res: Bundle,
    pub(crate) expires: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct Membership {
    pub(crate) role: u32,
    /// False once the framework dropped the role but still holds resources in it.
    pub(crate) subscribed: bool,
    pub(crate) suppressed: bool,
    pub(crate) alloc: Qty,
    pub(crate) count: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Framework {
    pub(crate) id: FrameworkId,
    pub(crate) active: bool,
    pub(crate) memberships: Vec<Membership>,
    /// Keyed by (agent serial, role node).
    pub(crate) filters: HashMap<(u64, u32), Vec<Filter>>,
}

impl Framework {
    pub(crate) fn eligible(&self, m: &Membership) -> bool {
        self.active && m.subscribed && !m.suppressed
    }
    fn membership(&self, role: u32) -> Option<usize> {
        self.memberships.iter().position(|m| m.role == role)
    }
}

/// The hierarchical DRF allocator: a pure state machine. Events update its view
/// of agents, frameworks and roles; [`Allocator::allocate`] runs one allocation
/// cycle and returns offers as plain data for the master to send. Nothing here
/// reads a clock: time is an argument (any monotonic `Duration` since an epoch of
/// the caller's choosing).
///
/// Offered resources count as allocated until the master recovers them
/// ([`Allocator::recover_resources`]): on decline, on rescind, for the unused part
/// of an accepted offer, and when a task ends.
#[derive(Debug)]
pub struct Allocator {
    pub(crate) config: Config,
    pub(crate) min_alloc: Vec<Qty>,
    pub(crate) names: Names,
    pub(crate) rng: Rng,
    /// Sum of every agent's resources: the denominator of shares.
    pub(crate) total: Qty,
    pub(crate) agents: Vec<Option<Agent>>,
    free_agent_slots: Vec<u32>,
    agent_index: HashMap<AgentId, u32>,
    next_serial: u64,
    pub(crate) frameworks: Vec<Option<Framework>>,
    free_fw_slots: Vec<u32>,
    /// Ordered by id: the sorter's final tie-break.
    pub(crate) framework_index: BTreeMap<FrameworkId, u32>,
    pub(crate) roles: Vec<RoleNode>,
    /// Ordered by name: the sorter's final tie-break.
    pub(crate) role_index: BTreeMap<Role, u32>,
    pub(crate) any_limit: bool,
    pub(crate) any_guarantee: bool,
    pub(crate) any_filter: bool,
}

fn new_node(role: Option<Role>, parent: u32, depth: u32) -> RoleNode {
    RoleNode {
        role,
        parent,
        depth,
        children: Vec::new(),
        weight: 1.0,
        guarantee: Qty::default(),
        limit: Cap::unlimited(),
        quota: Quota::default(),
        own_alloc: Qty::default(),
        own_reserved_free: Qty::default(),
        own_reserved: Qty::default(),
        charged: Qty::default(),
        count: 0,
        own_count: 0,
        frameworks: 0,
    }
}

impl Default for Allocator {
    fn default() -> Allocator {
        Allocator::new(Config::default())
    }
}

impl Allocator {
    pub fn new(config: Config) -> Allocator {
        let mut names = Names::default();
        let min_alloc = config.min_allocatable.iter().map(|r| names.qty(r)).collect();
        Allocator {
            rng: Rng::new(config.seed),
            config,
            min_alloc,
            names,
            total: Qty::default(),
            agents: Vec::new(),
            free_agent_slots: Vec::new(),
            agent_index: HashMap::new(),
            next_serial: 0,
            frameworks: Vec::new(),
            free_fw_slots: Vec::new(),
            framework_index: BTreeMap::new(),
            roles: vec![new_node(None, u32::MAX, 0)],
            role_index: BTreeMap::new(),
            any_limit: false,
            any_guarantee: false,
            any_filter: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- lookups ------------------------------------------------------------

    pub(crate) fn agent(&self, slot: u32) -> &Agent {
        self.agents[slot as usize].as_ref().expect("live agent slot")
    }
    pub(crate) fn agent_mut(&mut self, slot: u32) -> &mut Agent {
        self.agents[slot as usize].as_mut().expect("live agent slot")
    }
    pub(crate) fn fw(&self, slot: u32) -> &Framework {
        self.frameworks[slot as usize].as_ref().expect("live framework slot")
    }
    pub(crate) fn fw_mut(&mut self, slot: u32) -> &mut Framework {
        self.frameworks[slot as usize].as_mut().expect("live framework slot")
    }

    fn agent_slot(&self, id: &AgentId) -> Result<u32, AllocatorError> {
        self.agent_index.get(id).copied().ok_or_else(|| AllocatorError::UnknownAgent(id.clone()))
    }
    fn fw_slot(&self, id: &FrameworkId) -> Result<u32, AllocatorError> {
        self.framework_index.get(id).copied().ok_or_else(|| AllocatorError::UnknownFramework(id.clone()))
    }

    pub(crate) fn role_name(&self, node: u32) -> &Role {
        self.roles[node as usize].role.as_ref().expect("the root is never named")
    }

    /// The node of `role`, created (with its ancestors) if new.
    pub(crate) fn role_node(&mut self, role: &Role) -> u32 {
        if let Some(&n) = self.role_index.get(role) {
            return n;
        }
        let parent = match role.parent() {
            Some(p) => self.role_node(&p),
            None => ROOT,
        };
        let n = self.roles.len() as u32;
        let depth = self.roles[parent as usize].depth + 1;
        self.roles.push(new_node(Some(role.clone()), parent, depth));
        self.roles[parent as usize].children.push(n);
        self.role_index.insert(role.clone(), n);
        n
    }

    /// Whether node `a` is node `b` or one of its ancestors.
    pub(crate) fn covers(&self, a: u32, b: u32) -> bool {
        let da = self.roles[a as usize].depth;
        let mut n = b;
        while self.roles[n as usize].depth > da {
            n = self.roles[n as usize].parent;
        }
        n == a
    }

    // ----- conversions at the edge ---------------------------------------------

    /// `a` in dense form; `None` if it names a reservation role the allocator has
    /// never seen (so nobody can hold such resources).
    fn bundle_in(&mut self, a: &Allocation) -> Option<Bundle> {
        let unreserved = self.names.qty(&a.unreserved);
        let mut reserved = Vec::new();
        for (role, r) in &a.reserved {
            if r.is_empty() {
                continue;
            }
            let node = *self.role_index.get(role)?;
            let q = self.names.qty(r);
            reserved.push((node, q));
        }
        Some(Bundle { unreserved, reserved })
    }

    pub(crate) fn bundle_out(&self, b: &Bundle) -> Allocation {
        let mut reserved = BTreeMap::new();
        for (node, q) in &b.reserved {
            if !q.is_zero() {
                reserved.insert(self.role_name(*node).clone(), self.names.resources(q));
            }
        }
        Allocation { unreserved: self.names.resources(&b.unreserved), reserved }
    }

    // ----- bookkeeping shared by events and the cycle -------------------------

    /// Adds `q` (or removes it, `sign < 0`) to `charged` of `from` and its
    /// ancestors, stopping before `stop` (exclusive; `None` runs up to the root).
    fn charge(&mut self, from: u32, stop: Option<u32>, q: &Qty, sign: i8) {
        let mut n = from;
        loop {
            if Some(n) == stop {
                break;
            }
            let node = &mut self.roles[n as usize];
            if sign > 0 {
                node.charged.add(q)
            } else {
                node.charged.sub(q)
            }
            if n == ROOT {
                break;
            }
            n = node.parent;
        }
    }

    /// Moves `b` from agent `a`'s free resources to framework `f`'s allocation in
    /// membership `mi`. The caller has checked that `b` is free.
    pub(crate) fn track_allocated(&mut self, a: u32, f: u32, mi: usize, b: &Bundle) {
        let r = self.fw(f).memberships[mi].role;
        let agent = self.agent_mut(a);
        agent.free.sub(&b.unreserved);
        for (q, x) in &b.reserved {
            agent.reservation_mut(*q).expect("reserved resources come from a reservation").free.sub(x);
        }
        match agent.allocs.iter_mut().find(|e| e.fw == f && e.role == r) {
            Some(e) => e.res.add(b),
            None => agent.allocs.push(AgentAlloc { fw: f, role: r, res: b.clone() }),
        }
        let total = b.total();
        self.fw_mut(f).memberships[mi].alloc.add(&total);
        self.roles[r as usize].own_alloc.add(&total);
        self.charge(r, None, &b.unreserved, 1);
        for (q, x) in &b.reserved {
            self.roles[*q as usize].own_reserved_free.sub(x);
            // The reservation already counted for q's subtree; now it also
            // counts for the nodes between the framework's role and q.
            self.charge(r, Some(*q), x, 1);
        }
    }

    /// The inverse of [`Allocator::track_allocated`]. The caller has checked that
    /// the framework holds `b` there.
    fn untrack_allocated(&mut self, a: u32, f: u32, mi: usize, b: &Bundle) {
        let r = self.fw(f).memberships[mi].role;
        let agent = self.agent_mut(a);
        agent.free.add(&b.unreserved);
        for (q, x) in &b.reserved {
            agent.reservation_mut(*q).expect("reserved resources come from a reservation").free.add(x);
        }
        if let Some(i) = agent.allocs.iter().position(|e| e.fw == f && e.role == r) {
            agent.allocs[i].res.sub(b);
            if agent.allocs[i].res.is_zero() {
                agent.allocs.swap_remove(i);
            }
        }
        let total = b.total();
        self.fw_mut(f).memberships[mi].alloc.sub(&total);
        self.roles[r as usize].own_alloc.sub(&total);
        self.charge(r, None, &b.unreserved, -1);
        for (q, x) in &b.reserved {
            self.roles[*q as usize].own_reserved_free.add(x);
            self.charge(r, Some(*q), x, -1);
        }
        self.drop_membership_if_unused(f, mi);
    }

    /// A membership the framework unsubscribed from goes away with its last resource.
    fn drop_membership_if_unused(&mut self, f: u32, mi: usize) {
        let m = &self.fw(f).memberships[mi];
        if !m.subscribed && m.alloc.is_zero() {
            self.fw_mut(f).memberships.swap_remove(mi);
        }
    }

    /// Adds (or removes) agent reservation totals and free parts to the role tree.
    fn track_reservation(&mut self, role: u32, total: &Qty, free: &Qty, sign: i8) {
        let node = &mut self.roles[role as usize];
        if sign > 0 {
            node.own_reserved.add(total);
            node.own_reserved_free.add(free);
        } else {
            node.own_reserved.sub(total);
            node.own_reserved_free.sub(free);
        }
        self.charge(role, None, free, sign);
    }

    // ----- agents ------------------------------------------------------------------

    /// Registers an agent. Its static reservations must fit in its resources.
    pub fn add_agent(&mut self, id: AgentId, info: AgentInfo) -> Result<(), AllocatorError> {
        if self.agent_index.contains_key(&id) {
            return Err(AllocatorError::AgentExists(id));
        }
        let mut reserved_sum = Resources::new();
        for r in info.reservations.values() {
            reserved_sum.add_assign(r);
        }
        if !info.resources.contains(&reserved_sum) {
            return Err(AllocatorError::ReservationsExceedTotal {
                agent: id,
                reserved: reserved_sum,
                total: info.resources,
            });
        }
        let total = self.names.qty(&info.resources);
        let mut free = total.clone();
        let mut reservations = Vec::new();
        for (role, r) in &info.reservations {
            if r.is_empty() {
                continue;
            }
            let node = self.role_node(role);
            let q = self.names.qty(r);
            free.sub(&q);
            self.track_reservation(node, &q, &q, 1);
            reservations.push(Reservation { role: node, fixed: q.clone(), dynamic: Qty::default(), free: q });
        }
        self.total.add(&total);
        let agent = Agent {
            id: id.clone(),
            serial: self.next_serial,
            active: true,
            total,
            attributes: info.attributes,
            reservations,
            free,
            allocs: Vec::new(),
        };
        self.next_serial += 1;
        let slot = match self.free_agent_slots.pop() {
            Some(s) => {
                self.agents[s as usize] = Some(agent);
                s
            }
            None => {
                self.agents.push(Some(agent));
                (self.agents.len() - 1) as u32
            }
        };
        self.agent_index.insert(id, slot);
        Ok(())
    }

    /// Removes an agent. Whatever frameworks held on it is gone with it (the master
    /// reports those tasks lost); filters naming it lapse.
    pub fn remove_agent(&mut self, id: &AgentId) -> Result<(), AllocatorError> {
        let slot = self.agent_slot(id)?;
        let allocs = self.agent(slot).allocs.clone();
        for e in &allocs {
            let mi = self.fw(e.fw).membership(e.role).expect("allocation has a membership");
            self.untrack_allocated(slot, e.fw, mi, &e.res);
        }
        let agent = self.agents[slot as usize].take().expect("live agent slot");
        if self.any_filter {
            for fw in self.frameworks.iter_mut().flatten() {
                fw.filters.retain(|(serial, _), _| *serial != agent.serial);
            }
        }
        for r in &agent.reservations {
            self.track_reservation(r.role, &r.total(), &r.free, -1);
        }
        self.total.sub(&agent.total);
        self.agent_index.remove(id);
        self.free_agent_slots.push(slot);
        Ok(())
    }

    /// Changes an agent's resources and static reservations (dynamic reservations
    /// and allocations stay). Refused if they no longer fit.
    pub fn update_agent(&mut self, id: &AgentId, info: AgentInfo) -> Result<(), AllocatorError> {
        let slot = self.agent_slot(id)?;
        let total = self.names.qty(&info.resources);
        // Roles new to the allocator get their nodes only once the update is
        // accepted; until then they are u32::MAX - i, which no existing
        // reservation or allocation can name.
        let mut fixed: Vec<(u32, Qty, &Role)> = Vec::new();
        for (i, (role, r)) in info.reservations.iter().enumerate() {
            if !r.is_empty() {
                let node = self.role_index.get(role).copied().unwrap_or(u32::MAX - i as u32);
                let q = self.names.qty(r);
                fixed.push((node, q, role));
            }
        }
        let agent = self.agent(slot);
        // New reservation totals per role: new static + existing dynamic.
        let mut new_res: Vec<Reservation> = Vec::new();
        for (node, q, _) in &fixed {
            new_res.push(Reservation { role: *node, fixed: q.clone(), dynamic: Qty::default(), free: Qty::default() });
        }
        for old in &agent.reservations {
            if old.dynamic.is_zero() {
                continue;
            }
            match new_res.iter_mut().find(|r| r.role == old.role) {
                Some(r) => r.dynamic = old.dynamic.clone(),
                None => new_res.push(Reservation {
                    role: old.role,
                    fixed: Qty::default(),
                    dynamic: old.dynamic.clone(),
                    free: Qty::default(),
                }),
            }
        }
        // What is allocated, per reservation role and unreserved.
        let mut alloc_unres = Qty::default();
        let mut alloc_res: Vec<(u32, Qty)> = Vec::new();
        for e in &agent.allocs {
            alloc_unres.add(&e.res.unreserved);
            for (q, x) in &e.res.reserved {
                match alloc_res.iter_mut().find(|(r, _)| r == q) {
                    Some((_, s)) => s.add(x),
                    None => alloc_res.push((*q, x.clone())),
                }
            }
        }
        let mut needed = alloc_unres.clone();
        let mut ok = true;
        for r in &mut new_res {
            let t = r.total();
            let used = alloc_res.iter().find(|(q, _)| *q == r.role).map(|(_, x)| x.clone()).unwrap_or_default();
            if !t.contains(&used) {
                ok = false;
            }
            needed.add(&t);
            r.free = t.minus(&used);
        }
        for (q, x) in &alloc_res {
            if !new_res.iter().any(|r| r.role == *q) && !x.is_zero() {
                ok = false;
                needed.add(x);
            }
        }
        if !ok || !total.contains(&needed) {
            return Err(AllocatorError::AgentShrinksBelowUse {
                agent: id.clone(),
                total: info.resources,
                needed: self.names.resources(&needed).to_string(),
            });
        }
        // Apply: create nodes for new roles, take the old reservations out of the
        // role tree, put the new in.
        for (node, _, role) in &fixed {
            if *node >= u32::MAX - fixed.len() as u32 {
                let real = self.role_node(role);
                for r in new_res.iter_mut().filter(|r| r.role == *node) {
                    r.role = real;
                }
            }
        }
        let old = std::mem::take(&mut self.agent_mut(slot).reservations);
        for r in &old {
            self.track_reservation(r.role, &r.total(), &r.free, -1);
        }
        for r in &new_res {
            self.track_reservation(r.role, &r.total(), &r.free, 1);
        }
        let mut free = total.clone();
        free.sub(&needed);
        let old_total = std::mem::replace(&mut self.agent_mut(slot).total, total.clone());
        self.total.sub(&old_total);
        self.total.add(&total);
        let agent = self.agent_mut(slot);
        agent.reservations = new_res;
        agent.free = free;
        agent.attributes = info.attributes;
        Ok(())
    }

    /// Stops offering this agent's resources (draining, maintenance) until
    /// [`Allocator::activate_agent`]. Its resources still count in the total.
    pub fn deactivate_agent(&mut self, id: &AgentId) -> Result<(), AllocatorError> {
        let slot = self.agent_slot(id)?;
        self.agent_mut(slot).active = false;
        Ok(())
    }

    pub fn activate_agent(&mut self, id: &AgentId) -> Result<(), AllocatorError> {
        let slot = self.agent_slot(id)?;
        self.agent_mut(slot).active = true;
        Ok(())
    }

    // ----- frameworks ----------------------------------------------------------

    /// Registers an active framework subscribed to `roles`.
    pub fn add_framework(&mut self, id: FrameworkId, roles: &[Role]) -> Result<(), AllocatorError> {
        if self.framework_index.contains_key(&id) {
            return Err(AllocatorError::FrameworkExists(id));
        }
        if roles.is_empty() {
            return Err(AllocatorError::NoRoles(id));
        }
        let mut memberships = Vec::new();
        for role in roles {
            let node = self.role_node(role);
            if memberships.iter().any(|m: &Membership| m.role == node) {
                continue;
            }
            self.roles[node as usize].frameworks += 1;
            memberships.push(Membership {
                role: node,
                subscribed: true,
                suppressed: false,
                alloc: Qty::default(),
                count: 0,
            });
        }
        let fw = Framework { id: id.clone(), active: true, memberships, filters: HashMap::new() };
        let slot = match self.free_fw_slots.pop() {
            Some(s) => {
                self.frameworks[s as usize] = Some(fw);
                s
            }
            None => {
                self.frameworks.push(Some(fw));
                (self.frameworks.len() - 1) as u32
            }
        };
        self.framework_index.insert(id, slot);
        Ok(())
    }

    /// Changes the roles a framework subscribes to. A dropped role in which the
    /// framework still holds resources keeps counting them until they are
    /// recovered, but gets no new offers.
    pub fn update_framework(&mut self, id: &FrameworkId, roles: &[Role]) -> Result<(), AllocatorError> {
        let f = self.fw_slot(id)?;
        if roles.is_empty() {
            return Err(AllocatorError::NoRoles(id.clone()));
        }
        let nodes: Vec<u32> = roles.iter().map(|r| self.role_node(r)).collect();
        let mut i = 0;
        while i < self.fw(f).memberships.len() {
            let m = &self.fw(f).memberships[i];
            let (role, subscribed) = (m.role, m.subscribed);
            if !nodes.contains(&role) && subscribed {
                self.roles[role as usize].frameworks -= 1;
                self.fw_mut(f).memberships[i].subscribed = false;
                let before = self.fw(f).memberships.len();
                self.drop_membership_if_unused(f, i);
                if self.fw(f).memberships.len() < before {
                    continue; // swap_remove moved another membership into i
                }
            }
            i += 1;
        }
        for node in nodes {
            match self.fw(f).membership(node) {
                Some(mi) => {
                    if !self.fw(f).memberships[mi].subscribed {
                        self.roles[node as usize].frameworks += 1;
                        self.fw_mut(f).memberships[mi].subscribed = true;
                    }
                }
                None => {
                    self.roles[node as usize].frameworks += 1;
                    self.fw_mut(f).memberships.push(Membership {
                        role: node,
                        subscribed: true,
                        suppressed: false,
                        alloc: Qty::default(),
                        count: 0,
                    });
                }
            }
        }
        let subscribed: Vec<u32> = self.fw(f).memberships.iter().filter(|m| m.subscribed).map(|m| m.role).collect();
        self.fw_mut(f).filters.retain(|(_, r), _| subscribed.contains(r));
        Ok(())
    }

    /// Removes a framework. Everything it holds goes back to the agents.
    pub fn remove_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        let f = self.fw_slot(id)?;
        for a in 0..self.agents.len() as u32 {
            let Some(agent) = &self.agents[a as usize] else { continue };
            let held: Vec<AgentAlloc> = agent.allocs.iter().filter(|e| e.fw == f).cloned().collect();
            for e in held {
                let mi = self.fw(f).membership(e.role).expect("allocation has a membership");
                self.untrack_allocated(a, f, mi, &e.res);
            }
        }
        let fw = self.frameworks[f as usize].take().expect("live framework slot");
        for m in &fw.memberships {
            if m.subscribed {
                self.roles[m.role as usize].frameworks -= 1;
            }
        }
        self.framework_index.remove(id);
        self.free_fw_slots.push(f);
        Ok(())
    }

    /// Stops offering to a framework (its scheduler disconnected) and clears its
    /// filters, as Mesos does. What it holds still counts.
    pub fn deactivate_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        let f = self.fw_slot(id)?;
        let fw = self.fw_mut(f);
        fw.active = false;
        fw.filters.clear();
        Ok(())
    }

    pub fn activate_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        let f = self.fw_slot(id)?;
        self.fw_mut(f).active = true;
        Ok(())
    }

    fn memberships_for(&mut self, f: u32, roles: &[Role]) -> Result<Vec<usize>, AllocatorError> {
        if roles.is_empty() {
            return Ok((0..self.fw(f).memberships.len()).filter(|&i| self.fw(f).memberships[i].subscribed).collect());
        }
        let mut out = Vec::new();
        for role in roles {
            let mi = self
                .role_index
                .get(role)
                .and_then(|&n| self.fw(f).membership(n))
                .filter(|&mi| self.fw(f).memberships[mi].subscribed)
                .ok_or_else(|| AllocatorError::NotSubscribed {
                    framework: self.fw(f).id.clone(),
                    role: role.clone(),
                })?;
            out.push(mi);
        }
        Ok(out)
    }

    /// Stops offers to the framework for `roles` (all its roles when empty) until
    /// it revives them.
    pub fn suppress(&mut self, id: &FrameworkId, roles: &[Role]) -> Result<(), AllocatorError> {
        let f = self.fw_slot(id)?;
        for mi in self.memberships_for(f, roles)? {
            self.fw_mut(f).memberships[mi].suppressed = true;
        }
        Ok(())
    }

    /// Resumes offers for `roles` (all when empty) and clears the framework's
    /// filters for them.
    pub fn revive(&mut self, id: &FrameworkId, roles: &[Role]) -> Result<(), AllocatorError> {
        let f = self.fw_slot(id)?;
        let mis = self.memberships_for(f, roles)?;
        let nodes: Vec<u32> = mis.iter().map(|&mi| self.fw(f).memberships[mi].role).collect();
        let fw = self.fw_mut(f);
        for mi in mis {
            fw.memberships[mi].suppressed = false;
        }
        fw.filters.retain(|(_, r), _| !nodes.contains(r));
        Ok(())
    }

    // ----- resources -----------------------------------------------------------

    /// Gives resources a framework held in `role` on `agent` back to the pool:
    /// a declined or rescinded offer, the unused part of an accepted one, or a
    /// finished task's. With `refuse` (a decline's `refuse_seconds`), the same
    /// resources of that agent are not offered to this framework in this role
    /// again before `now + refuse`, unless it revives; `None` or zero sets no
    /// filter.
    pub fn recover_resources(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        role: &Role,
        resources: &Allocation,
        refuse: Option<Duration>,
        now: Duration,
    ) -> Result<(), AllocatorError> {
        let f = self.fw_slot(framework)?;
        let a = self.agent_slot(agent)?;
        let b = self.bundle_in(resources);
        let held =
            self.role_index.get(role).copied().and_then(|r| self.fw(f).membership(r).map(|mi| (r, mi))).and_then(
                |(r, mi)| {
                    self.agent(a).allocs.iter().find(|e| e.fw == f && e.role == r).map(|e| (r, mi, e.res.clone()))
                },
            );
        let found = match (&held, b) {
            (Some((r, mi, h)), Some(b)) if h.contains(&b) => Some((*r, *mi, b)),
            _ => None,
        };
        let Some((r, mi, b)) = found else {
            let held_str = held.map(|(_, _, h)| self.bundle_out(&h).to_string()).unwrap_or_else(|| "nothing".into());
            return Err(AllocatorError::NotAllocated {
                framework: framework.clone(),
                role: role.clone(),
                agent: agent.clone(),
                requested: resources.to_string(),
                held: held_str,
            });
        };
        self.untrack_allocated(a, f, mi, &b);
        if let Some(d) = refuse.filter(|d| !d.is_zero()) {
            let serial = self.agent(a).serial;
            let expires = now.checked_add(d).unwrap_or(Duration::MAX);
            self.fw_mut(f).filters.entry((serial, r)).or_default().push(Filter { res: b, expires });
            self.any_filter = true;
        }
        Ok(())
    }

    /// Declines a whole offer: its resources come back with a filter of `refuse`
    /// (the framework's `refuse_seconds`), or [`Config::default_refuse`] (5 s)
    /// when it gave none.
    pub fn decline(&mut self, offer: &Offer, refuse: Option<Duration>, now: Duration) -> Result<(), AllocatorError> {
        let refuse = refuse.unwrap_or(self.config.default_refuse);
        self.recover_resources(&offer.framework, &offer.agent, &offer.role, &offer.resources, Some(refuse), now)
    }

    /// Marks resources as held by a framework without offering them: tasks found
    /// running when an agent or framework re-registers after a master failover.
    pub fn add_allocation(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        role: &Role,
        resources: &Allocation,
    ) -> Result<(), AllocatorError> {
        let f = self.fw_slot(framework)?;
        let a = self.agent_slot(agent)?;
        let r = *self
            .role_index
            .get(role)
            .ok_or_else(|| AllocatorError::NotSubscribed { framework: framework.clone(), role: role.clone() })?;
        let mi = self
            .fw(f)
            .membership(r)
            .ok_or_else(|| AllocatorError::NotSubscribed { framework: framework.clone(), role: role.clone() })?;
        let b = self.bundle_in(resources);
        let ag = self.agent(a);
        let mut free = Bundle { unreserved: ag.free.clone(), reserved: Vec::new() };
        for rv in &ag.reservations {
            if self.covers(rv.role, r) {
                free.reserved.push((rv.role, rv.free.clone()));
            }
        }
        let Some(b) = b.filter(|b| free.contains(b)) else {
            return Err(AllocatorError::NotAvailable {
                agent: agent.clone(),
                role: role.clone(),
                requested: resources.to_string(),
                available: self.bundle_out(&free).to_string(),
            });
        };
        self.track_allocated(a, f, mi, &b);
        Ok(())
    }

    /// Dynamically reserves unreserved, unallocated resources of `agent` for `role`.
    pub fn reserve(&mut self, agent: &AgentId, role: &Role, resources: &Resources) -> Result<(), AllocatorError> {
        let a = self.agent_slot(agent)?;
        let q = self.names.qty(resources);
        if !self.agent(a).free.contains(&q) {
            return Err(AllocatorError::NotEnoughUnreserved {
                agent: agent.clone(),
                role: role.clone(),
                requested: resources.clone(),
                available: self.names.resources(&self.agent(a).free),
            });
        }
        let node = self.role_node(role);
        let ag = self.agent_mut(a);
        ag.free.sub(&q);
        match ag.reservation_mut(node) {
            Some(r) => {
                r.dynamic.add(&q);
                r.free.add(&q);
            }
            None => ag.reservations.push(Reservation {
                role: node,
                fixed: Qty::default(),
                dynamic: q.clone(),
                free: q.clone(),
            }),
        }
        self.track_reservation(node, &q, &q, 1);
        Ok(())
    }

    /// Releases a dynamic reservation (its unallocated part) back to unreserved.
    pub fn unreserve(&mut self, agent: &AgentId, role: &Role, resources: &Resources) -> Result<(), AllocatorError> {
        let a = self.agent_slot(agent)?;
        let q = self.names.qty(resources);
        let node = self.role_index.get(role).copied();
        let avail = node
            .and_then(|n| self.agent(a).reservations.iter().find(|r| r.role == n))
            .map(|r| r.dynamic.min(&r.free))
            .unwrap_or_default();
        let Some(node) = node.filter(|_| avail.contains(&q)) else {
            return Err(AllocatorError::NotEnoughReserved {
                agent: agent.clone(),
                role: role.clone(),
                requested: resources.clone(),
                available: self.names.resources(&avail),
            });
        };
        let ag = self.agent_mut(a);
        ag.free.add(&q);
        let r = ag.reservation_mut(node).expect("checked above");
        r.dynamic.sub(&q);
        r.free.sub(&q);
        ag.reservations.retain(|r| !(r.fixed.is_zero() && r.dynamic.is_zero()));
        self.track_reservation(node, &q, &q, -1);
        Ok(())
    }

    // ----- roles ---------------------------------------------------------------

    /// Sets a role's weight (default 1). A role with weight 2 is entitled to twice
    /// the dominant share of a role with weight 1.
    pub fn update_weight(&mut self, role: &Role, weight: f64) -> Result<(), AllocatorError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(AllocatorError::BadWeight { role: role.clone(), weight });
        }
        let n = self.role_node(role);
        self.roles[n as usize].weight = weight;
        Ok(())
    }

    /// Sets a role's quota (replacing any earlier one; `Quota::default()` clears it).
    pub fn set_quota(&mut self, role: &Role, quota: Quota) -> Result<(), AllocatorError> {
        for (name, limit) in &quota.limit {
            if quota.guarantee.get(name) > *limit {
                return Err(AllocatorError::GuaranteeAboveLimit {
                    role: role.clone(),
                    resource: name.clone(),
                    guarantee: quota.guarantee.clone(),
                });
            }
        }
        let n = self.role_node(role);
        let guarantee = self.names.qty(&quota.guarantee);
        let mut limit = Cap::unlimited();
        for (name, v) in &quota.limit {
            let k = self.names.intern(name);
            limit.set(k, v.0.max(0));
        }
        let node = &mut self.roles[n as usize];
        node.guarantee = guarantee;
        node.limit = limit;
        node.quota = quota;
        self.any_limit = self.roles.iter().any(|r| !r.limit.is_unlimited());
        self.any_guarantee = self.roles.iter().any(|r| !r.guarantee.is_zero());
        Ok(())
    }

    // ----- reading the state ------------------------------------------------------

    /// The cluster's total: every registered agent's resources.
    pub fn total(&self) -> Resources {
        self.names.resources(&self.total)
    }

    pub fn has_agent(&self, id: &AgentId) -> bool {
        self.agent_index.contains_key(id)
    }

    pub fn has_framework(&self, id: &FrameworkId) -> bool {
        self.framework_index.contains_key(id)
    }

    /// An agent's unallocated resources: unreserved, and reserved per role.
    pub fn agent_free(&self, id: &AgentId) -> Option<Allocation> {
        let ag = self.agent(*self.agent_index.get(id)?);
        let b = Bundle {
            unreserved: ag.free.clone(),
            reserved: ag.reservations.iter().map(|r| (r.role, r.free.clone())).collect(),
        };
        Some(self.bundle_out(&b))
    }

    /// What frameworks hold on an agent, by framework id then role.
    pub fn agent_allocations(&self, id: &AgentId) -> Option<Vec<(FrameworkId, Role, Allocation)>> {
        let ag = self.agent(*self.agent_index.get(id)?);
        let mut out: Vec<_> = ag
            .allocs
            .iter()
            .map(|e| (self.fw(e.fw).id.clone(), self.role_name(e.role).clone(), self.bundle_out(&e.res)))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Some(out)
    }

    /// Everything a framework holds, over all its roles.
    pub fn framework_allocated(&self, id: &FrameworkId) -> Option<Resources> {
        let fw = self.fw(*self.framework_index.get(id)?);
        let mut q = Qty::default();
        for m in &fw.memberships {
            q.add(&m.alloc);
        }
        Some(self.names.resources(&q))
    }

    /// A framework's dominant share: max over resources of held / cluster total.
    pub fn framework_share(&self, id: &FrameworkId) -> Option<f64> {
        let fw = self.fw(*self.framework_index.get(id)?);
        let mut q = Qty::default();
        for m in &fw.memberships {
            q.add(&m.alloc);
        }
        Some(q.dominant_share(&self.total))
    }

    /// Every role the allocator knows (named by a framework, a reservation, a
    /// weight or a quota, and their ancestors), in name order.
    pub fn roles(&self) -> Vec<Role> {
        self.role_index.keys().cloned().collect()
    }

    /// A role's weight, quota, allocation, reservations and share.
    pub fn role_stats(&self, role: &Role) -> Option<RoleStats> {
        let n = *self.role_index.get(role)?;
        let node = &self.roles[n as usize];
        let (mut allocated, mut reserved) = (Qty::default(), Qty::default());
        let mut stack = vec![n];
        while let Some(x) = stack.pop() {
            let nx = &self.roles[x as usize];
            allocated.add(&nx.own_alloc);
            reserved.add(&nx.own_reserved);
            stack.extend(&nx.children);
        }
        Some(RoleStats {
            role: role.clone(),
            weight: node.weight,
            quota: node.quota.clone(),
            allocated: self.names.resources(&allocated),
            reserved: self.names.resources(&reserved),
            consumed: self.names.resources(&node.charged),
            share: node.charged.dominant_share(&self.total),
            frameworks: node.frameworks,
        })
    }

    /// What a framework of `role` could be offered right now on each active agent,
    /// ignoring filters and suppression: reservations of the role and its
    /// ancestors, plus unreserved resources within the role's quota limits and the
    /// headroom held back for other roles' guarantees. Agents with nothing
    /// allocatable are left out. For what-if questions (`wasmos sim` uses it to
    /// decide when nothing more can be placed).
    pub fn offerable(&self, role: &Role) -> Vec<(AgentId, Allocation)> {
        let Some(&r) = self.role_index.get(role) else {
            return Vec::new();
        };
        let hr = self.headroom();
        let mut out = Vec::new();
        for (slot, ag) in self.agents.iter().enumerate() {
            let Some(ag) = ag else { continue };
            if !ag.active {
                continue;
            }
            let mut b = self.stage2_offer(slot as u32, r, hr.as_ref());
            if let Some((b1, _)) = self.stage1_offer(slot as u32, r, hr.as_ref()) {
                // Stage 1 may give a role with an unmet guarantee more.
                b.unreserved = b.unreserved.max(&b1.unreserved);
            }
            if self.allocatable(&b) {
                out.push((ag.id.clone(), self.bundle_out(&b)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
