//! The allocation cycle.
//!
//! Shape (as in Mesos's hierarchical allocator): agents are shuffled with the
//! seeded generator; stage 1 walks them and offers to roles whose quota guarantee
//! is not yet met; stage 2 walks them again and offers to every role in
//! hierarchical DRF order. For each agent the role tree is walked depth-first,
//! children ordered by weighted dominant share, then allocation count, then
//! name; within a role, frameworks are ordered the same way by their own share.
//! The first framework that is not filtered gets everything its role may take
//! from the agent (reservations of the role and its ancestors, plus unreserved
//! resources cut to the role's quota limits and to the headroom kept for other
//! roles' guarantees).
//!
//! Cost: the orderings are built once per cycle as ordered sets keyed by
//! `(share, count, name rank)` — O(F log F + R log R). An allocation changes the
//! share of one framework and of its role's ancestors only, so after each agent
//! just those keys are removed and re-inserted — O(log F + depth · log R) —
//! instead of re-sorting everything per agent. Agents with nothing free are
//! skipped in O(1), and subtrees that cannot use an agent (no unreserved left and
//! no reservation of theirs) are not entered. One cycle is therefore
//! O(A · (log F + depth · log R)) plus the frameworks skipped because of filters.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::allocator::{Allocator, Bundle, ROOT};
use crate::qty::{Cap, Qty};
use crate::types::Offer;

/// Unreserved resources held back so unmet guarantees can still be met.
#[derive(Debug, Clone)]
pub(crate) struct Headroom {
    /// Unreserved, unallocated resources over all agents.
    pub(crate) available: Qty,
    /// What unmet guarantees still need.
    pub(crate) required: Qty,
}

impl Headroom {
    /// How much unreserved may go to roles without taking from `required`:
    /// `available - required` for resources something is required of.
    pub(crate) fn surplus(&self) -> Option<Cap> {
        if self.required.is_zero() {
            return None;
        }
        let mut cap = Cap::unlimited();
        for (k, &req) in self.required.0.iter().enumerate() {
            if req > 0 {
                cap.set(k, (self.available.get(k) - req).max(0));
            }
        }
        Some(cap)
    }
}

/// Key of an entry in a role node's ordering: a child subtree, or the node's
/// own frameworks (`own`, Mesos's virtual "." leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EKey {
    share: u64,
    count: u64,
    rank: u32,
    own: bool,
    node: u32,
}

/// Key of a framework in its role's ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FKey {
    share: u64,
    count: u64,
    rank: u32,
    fw: u32,
    mi: u32,
}

/// Non-negative floats order like their bit patterns.
fn share_bits(share: f64) -> u64 {
    debug_assert!(share >= 0.0);
    share.to_bits()
}

/// The cycle's orderings: one ordered set per role node for its entries, one per
/// role for its eligible frameworks, and the current key of everything in them.
struct Order {
    entries: Vec<BTreeSet<EKey>>,
    fws: Vec<BTreeSet<FKey>>,
    child_key: Vec<Option<EKey>>,
    own_key: Vec<Option<EKey>>,
    rank: Vec<u32>,
    fw_rank: Vec<u32>,
    fkeys: Vec<Vec<Option<FKey>>>,
}

impl Order {
    fn build(al: &Allocator) -> Order {
        let nr = al.roles.len();
        let mut rank = vec![0u32; nr];
        for (i, &n) in al.role_index.values().enumerate() {
            rank[n as usize] = i as u32 + 1;
        }
        let mut fw_rank = vec![0u32; al.frameworks.len()];
        for (i, &f) in al.framework_index.values().enumerate() {
            fw_rank[f as usize] = i as u32;
        }
        let mut order = Order {
            entries: vec![BTreeSet::new(); nr],
            fws: vec![BTreeSet::new(); nr],
            child_key: vec![None; nr],
            own_key: vec![None; nr],
            rank,
            fw_rank,
            fkeys: al
                .frameworks
                .iter()
                .map(|f| f.as_ref().map_or(Vec::new(), |f| vec![None; f.memberships.len()]))
                .collect(),
        };
        let mut own_live = vec![0u32; nr];
        for (f, fw) in al.frameworks.iter().enumerate() {
            let Some(fw) = fw else { continue };
            for (mi, m) in fw.memberships.iter().enumerate() {
                if fw.eligible(m) {
                    let key = order.fkey(al, f as u32, mi);
                    order.fws[m.role as usize].insert(key);
                    order.fkeys[f][mi] = Some(key);
                    own_live[m.role as usize] += 1;
                }
            }
        }
        let mut live = own_live.clone();
        for (n, &own) in own_live.iter().enumerate().skip(1) {
            if own > 0 {
                let mut p = al.roles[n].parent;
                while p != u32::MAX {
                    live[p as usize] += own;
                    p = al.roles[p as usize].parent;
                }
            }
        }
        for n in 1..nr as u32 {
            if own_live[n as usize] > 0 {
                let k = order.own_ekey(al, n);
                order.entries[n as usize].insert(k);
                order.own_key[n as usize] = Some(k);
            }
            if live[n as usize] > 0 {
                let k = order.child_ekey(al, n);
                order.entries[al.roles[n as usize].parent as usize].insert(k);
                order.child_key[n as usize] = Some(k);
            }
        }
        order
    }

    fn fkey(&self, al: &Allocator, f: u32, mi: usize) -> FKey {
        let m = &al.fw(f).memberships[mi];
        FKey {
            share: share_bits(m.alloc.dominant_share(&al.total)),
            count: m.count,
            rank: self.fw_rank[f as usize],
            fw: f,
            mi: mi as u32,
        }
    }

    fn own_ekey(&self, al: &Allocator, n: u32) -> EKey {
        let node = &al.roles[n as usize];
        let len = node.own_alloc.0.len().max(node.own_reserved_free.0.len());
        let mut share = 0.0f64;
        for k in 0..len {
            let t = al.total.get(k);
            let v = node.own_alloc.get(k) + node.own_reserved_free.get(k);
            if t > 0 && v > 0 {
                share = share.max(v as f64 / t as f64);
            }
        }
        EKey {
            share: share_bits(share / node.weight),
            count: node.own_count,
            rank: self.rank[n as usize],
            own: true,
            node: n,
        }
    }

    fn child_ekey(&self, al: &Allocator, n: u32) -> EKey {
        let node = &al.roles[n as usize];
        EKey {
            share: share_bits(node.charged.dominant_share(&al.total) / node.weight),
            count: node.count,
            rank: self.rank[n as usize],
            own: false,
            node: n,
        }
    }

    /// Re-keys what the last agent's allocations changed.
    fn refresh(&mut self, al: &Allocator, touched: &mut Touched) {
        touched.fws.sort_unstable();
        touched.fws.dedup();
        for &(f, mi) in &touched.fws {
            let role = al.fw(f).memberships[mi as usize].role as usize;
            if let Some(old) = self.fkeys[f as usize][mi as usize] {
                self.fws[role].remove(&old);
                let new = self.fkey(al, f, mi as usize);
                self.fws[role].insert(new);
                self.fkeys[f as usize][mi as usize] = Some(new);
            }
        }
        let mut nodes = Vec::new();
        for &r in &touched.roles {
            let mut n = r;
            while n != ROOT {
                nodes.push(n);
                n = al.roles[n as usize].parent;
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        for n in nodes {
            if let Some(old) = self.own_key[n as usize] {
                self.entries[n as usize].remove(&old);
                let new = self.own_ekey(al, n);
                self.entries[n as usize].insert(new);
                self.own_key[n as usize] = Some(new);
            }
            if let Some(old) = self.child_key[n as usize] {
                let p = al.roles[n as usize].parent as usize;
                self.entries[p].remove(&old);
                let new = self.child_ekey(al, n);
                self.entries[p].insert(new);
                self.child_key[n as usize] = Some(new);
            }
        }
        touched.fws.clear();
        touched.roles.clear();
    }
}

#[derive(Default)]
struct Touched {
    fws: Vec<(u32, u32)>,
    roles: Vec<u32>,
}

/// Offers made so far in this cycle, merged per (framework, role, agent).
#[derive(Default)]
struct Sink {
    offers: Vec<(u32, u32, u32, Bundle)>,
    index: HashMap<(u32, u32, u32), usize>,
}

impl Sink {
    fn push(&mut self, f: u32, r: u32, a: u32, b: Bundle, merge: bool) {
        if merge || !self.index.is_empty() {
            if let Some(&i) = self.index.get(&(f, r, a)) {
                self.offers[i].3.add(&b);
                return;
            }
            if merge {
                self.index.insert((f, r, a), self.offers.len());
            }
        }
        self.offers.push((f, r, a, b));
    }
}

impl Allocator {
    /// Runs one allocation cycle at time `now` and returns the offers, in the
    /// order they were made. Offered resources count as allocated from here on.
    /// The order is a pure function of the seed and the events so far.
    pub fn allocate(&mut self, now: Duration) -> Vec<Offer> {
        if self.any_filter {
            self.expire_filters(now);
        }
        let mut agents: Vec<u32> = (0..self.agents.len() as u32)
            .filter(|&s| {
                self.agents[s as usize]
                    .as_ref()
                    .is_some_and(|a| a.active && (!a.free.is_zero() || a.has_free_reserved()))
            })
            .collect();
        self.rng.shuffle(&mut agents);
        let mut order = Order::build(self);
        let mut hr = self.headroom();
        let mut sink = Sink::default();
        let mut touched = Touched::default();
        if self.any_guarantee {
            for &a in &agents {
                self.stage1_agent(&order, a, hr.as_mut(), &mut sink, now, &mut touched);
                if !touched.fws.is_empty() {
                    order.refresh(self, &mut touched);
                }
            }
            // Spread out stage 1's bias toward the front of the list, as Mesos does.
            self.rng.shuffle(&mut agents);
        }
        for &a in &agents {
            self.stage2_agent(&order, a, hr.as_mut(), &mut sink, now, &mut touched);
            if !touched.fws.is_empty() {
                order.refresh(self, &mut touched);
            }
        }
        sink.offers
            .into_iter()
            .map(|(f, r, a, b)| Offer {
                framework: self.fw(f).id.clone(),
                role: self.role_name(r).clone(),
                agent: self.agent(a).id.clone(),
                resources: self.bundle_out(&b),
            })
            .collect()
    }

    fn expire_filters(&mut self, now: Duration) {
        let mut any = false;
        for fw in self.frameworks.iter_mut().flatten() {
            fw.filters.retain(|_, v| {
                v.retain(|f| f.expires > now);
                !v.is_empty()
            });
            any |= !fw.filters.is_empty();
        }
        self.any_filter = any;
    }

    /// Whether framework `f` refused (at least) `b` on agent `a` in role `r`
    /// with a filter still running.
    fn filtered(&self, f: u32, a: u32, r: u32, b: &Bundle, now: Duration) -> bool {
        let fw = self.fw(f);
        if fw.filters.is_empty() {
            return false;
        }
        let serial = self.agent(a).serial;
        fw.filters.get(&(serial, r)).is_some_and(|v| v.iter().any(|flt| flt.expires > now && flt.res.contains(b)))
    }

    /// Whether `b` holds at least one of the minimum allocatable bundles.
    pub(crate) fn allocatable(&self, b: &Bundle) -> bool {
        if b.is_zero() {
            return false;
        }
        if self.min_alloc.is_empty() {
            return true;
        }
        self.min_alloc.iter().any(|alt| {
            alt.0.iter().enumerate().all(|(k, &v)| {
                v == 0 || b.unreserved.get(k) + b.reserved.iter().map(|(_, q)| q.get(k)).sum::<i64>() >= v
            })
        })
    }

    fn allocatable_qty(&self, q: &Qty) -> bool {
        if q.is_zero() {
            return false;
        }
        self.min_alloc.is_empty() || self.min_alloc.iter().any(|alt| q.contains(alt))
    }

    /// The room left under the quota limits of `r` and its ancestors.
    fn limit_room(&self, r: u32) -> Cap {
        let mut cap = Cap::unlimited();
        let mut n = r;
        while n != ROOT {
            let node = &self.roles[n as usize];
            if !node.limit.is_unlimited() {
                cap.tighten(&node.limit.room(&node.charged));
            }
            n = node.parent;
        }
        cap
    }

    /// What unmet guarantees need, per the role tree: a node needs the larger of
    /// its own unmet guarantee and what its children need together.
    fn required(&self, n: u32) -> Qty {
        let node = &self.roles[n as usize];
        let mut sum = Qty::default();
        for &c in &node.children {
            sum.add(&self.required(c));
        }
        if !node.guarantee.is_zero() {
            sum = sum.max(&node.guarantee.minus(&node.charged));
        }
        sum
    }

    pub(crate) fn headroom(&self) -> Option<Headroom> {
        if !self.any_guarantee {
            return None;
        }
        let mut available = Qty::default();
        for ag in self.agents.iter().flatten() {
            available.add(&ag.free);
        }
        Some(Headroom { available, required: self.required(ROOT) })
    }

    /// The unmet guarantee that allocations to role `r` make progress on: the
    /// largest unmet guarantee of `r` and its ancestors, per resource.
    fn unmet_guarantee(&self, r: u32) -> Qty {
        let mut u = Qty::default();
        let mut n = r;
        while n != ROOT {
            let node = &self.roles[n as usize];
            if !node.guarantee.is_zero() {
                u = u.max(&node.guarantee.minus(&node.charged));
            }
            n = node.parent;
        }
        u
    }

    fn reservations_for(&self, a: u32, r: u32) -> Vec<(u32, Qty)> {
        self.agent(a)
            .reservations
            .iter()
            .filter(|rv| !rv.free.is_zero() && self.covers(rv.role, r))
            .map(|rv| (rv.role, rv.free.clone()))
            .collect()
    }

    /// Stage 2's offer of agent `a` to role `r`: every reservation of `r` and its
    /// ancestors, plus unreserved resources cut to quota limits and headroom.
    pub(crate) fn stage2_offer(&self, a: u32, r: u32, hr: Option<&Headroom>) -> Bundle {
        let ag = self.agent(a);
        let mut unreserved = ag.free.clone();
        if self.any_limit {
            unreserved.cap(&self.limit_room(r));
        }
        if let Some(s) = hr.and_then(Headroom::surplus) {
            unreserved.cap(&s);
        }
        let reserved = if ag.reservations.is_empty() { Vec::new() } else { self.reservations_for(a, r) };
        Bundle { unreserved, reserved }
    }

    /// Stage 1's offer of agent `a` to role `r`, and the part of it that counts
    /// toward unmet guarantees; `None` when it makes no progress on them.
    pub(crate) fn stage1_offer(&self, a: u32, r: u32, hr: Option<&Headroom>) -> Option<(Bundle, Qty)> {
        let unmet = self.unmet_guarantee(r);
        if unmet.is_zero() {
            return None;
        }
        let free = &self.agent(a).free;
        let room = if self.any_limit { self.limit_room(r) } else { Cap::unlimited() };
        let mut guaranteed = free.min(&unmet);
        guaranteed.cap(&room);
        if guaranteed.is_zero() {
            return None;
        }
        let mut additional = free.minus(&guaranteed);
        additional.cap(&room.room(&guaranteed));
        if let Some(s) = hr.and_then(Headroom::surplus) {
            additional.cap(&s);
        }
        let mut unreserved = guaranteed.clone();
        unreserved.add(&additional);
        Some((Bundle { unreserved, reserved: self.reservations_for(a, r) }, guaranteed))
    }

    fn record(&mut self, a: u32, f: u32, mi: u32, b: &Bundle, touched: &mut Touched) {
        self.track_allocated(a, f, mi as usize, b);
        let r = self.fw(f).memberships[mi as usize].role;
        self.fw_mut(f).memberships[mi as usize].count += 1;
        self.roles[r as usize].own_count += 1;
        let mut n = r;
        while n != ROOT {
            self.roles[n as usize].count += 1;
            n = self.roles[n as usize].parent;
        }
        touched.fws.push((f, mi));
        touched.roles.push(r);
    }

    fn stage1_agent(
        &mut self,
        order: &Order,
        a: u32,
        mut hr: Option<&mut Headroom>,
        sink: &mut Sink,
        now: Duration,
        touched: &mut Touched,
    ) {
        if self.agent(a).free.is_zero() {
            return;
        }
        // Roles with unmet guarantees and someone to offer to, in DRF order.
        let mut quota_roles: Vec<(EKey, u32)> = (1..self.roles.len() as u32)
            .filter(|&n| !self.roles[n as usize].guarantee.is_zero())
            .filter_map(|n| order.child_key[n as usize].map(|k| (k, n)))
            .collect();
        quota_roles.sort_unstable();
        for (_, g) in quota_roles {
            let node = &self.roles[g as usize];
            if node.guarantee.minus(&node.charged).is_zero() {
                continue;
            }
            let mut stack = vec![order.entries[g as usize].iter()];
            while let Some(it) = stack.last_mut() {
                if self.agent(a).free.is_zero() {
                    return;
                }
                let Some(e) = it.next() else {
                    stack.pop();
                    continue;
                };
                if !e.own {
                    stack.push(order.entries[e.node as usize].iter());
                    continue;
                }
                let r = e.node;
                for fk in &order.fws[r as usize] {
                    let Some((b, guaranteed)) = self.stage1_offer(a, r, hr.as_deref()) else { break };
                    if !self.allocatable(&b) {
                        break;
                    }
                    if self.filtered(fk.fw, a, r, &b, now) {
                        continue;
                    }
                    self.record(a, fk.fw, fk.mi, &b, touched);
                    if let Some(h) = hr.as_deref_mut() {
                        h.required.sub_saturating(&guaranteed);
                        h.available.sub(&b.unreserved);
                    }
                    sink.push(fk.fw, r, a, b, true);
                }
            }
        }
    }

    fn stage2_agent(
        &mut self,
        order: &Order,
        a: u32,
        mut hr: Option<&mut Headroom>,
        sink: &mut Sink,
        now: Duration,
        touched: &mut Touched,
    ) {
        let mut useful = self.allocatable_qty(&self.agent(a).free);
        let mut stack = vec![order.entries[ROOT as usize].iter()];
        while let Some(it) = stack.last_mut() {
            let Some(e) = it.next() else {
                stack.pop();
                continue;
            };
            let ag = self.agent(a);
            if !useful && !ag.has_free_reserved() {
                return;
            }
            if !e.own {
                let c = e.node;
                // Without usable unreserved resources, only subtrees related to
                // one of this agent's reservations can get anything.
                if useful
                    || ag
                        .reservations
                        .iter()
                        .any(|rv| !rv.free.is_zero() && (self.covers(c, rv.role) || self.covers(rv.role, c)))
                {
                    stack.push(order.entries[c as usize].iter());
                }
                continue;
            }
            let r = e.node;
            let mut b = self.stage2_offer(a, r, hr.as_deref());
            if !self.allocatable(&b) {
                continue;
            }
            for fk in &order.fws[r as usize] {
                if self.filtered(fk.fw, a, r, &b, now) {
                    continue;
                }
                self.record(a, fk.fw, fk.mi, &b, touched);
                if let Some(h) = hr.as_deref_mut() {
                    h.available.sub(&b.unreserved);
                }
                sink.push(fk.fw, r, a, b, false);
                useful = self.allocatable_qty(&self.agent(a).free);
                b = self.stage2_offer(a, r, hr.as_deref());
                if !self.allocatable(&b) {
                    break;
                }
            }
        }
    }
}
