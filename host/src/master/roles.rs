//! Roles: operator settings (weight, quota) and dynamic reservations, kept
//! in the registry and given to the allocator.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use wasmos_model::{AgentId, Resources, Role};

use super::Master;
use super::cmd::Error;
use super::types::*;
use super::validate::{self, ReservePlan};

/// Changed role settings (`None`: back to the defaults).
pub(crate) type RoleChanges = Vec<(Role, Option<RoleSettings>)>;
/// Changed reservations (`None`: released).
pub(crate) type ReservationChanges = Vec<((AgentId, Role), Option<Resources>)>;

/// Roles whose weight or quota an operator set (the rest have defaults), and
/// dynamic reservations by (agent, role), with what changed since the last commit.
#[derive(Default)]
pub(crate) struct Roles {
    settings: BTreeMap<Role, RoleSettings>,
    reservations: BTreeMap<(AgentId, Role), Resources>,
    /// Recorded reservations the allocator does not hold (their agent came
    /// back with less free than they need); retried every tick.
    unapplied: BTreeSet<(AgentId, Role)>,
    changed_roles: BTreeSet<Role>,
    changed_reservations: BTreeSet<(AgentId, Role)>,
    /// Modules (SHA-256) whose signature by one of the role's keys the master
    /// verified (a submit, a deploy, a launch that carried one): a framework
    /// may launch them in that role without sending the signature again.
    /// Forgotten when the role's keys change; at most [`MAX_VERIFIED`] each.
    verified: BTreeMap<Role, HashSet<String>>,
}

/// Verified modules remembered per role (past it, the set starts over and
/// launches must carry their signature again until resubmitted).
pub(crate) const MAX_VERIFIED: usize = 65_536;

impl Roles {
    pub fn settings(&self, role: &Role) -> Option<&RoleSettings> {
        self.settings.get(role)
    }
    pub fn reserved(&self, key: &(AgentId, Role)) -> Option<&Resources> {
        self.reservations.get(key)
    }
    pub fn is_unapplied(&self, key: &(AgentId, Role)) -> bool {
        self.unapplied.contains(key)
    }
    /// The allocator could not take a recorded reservation; true if it was
    /// not marked so before.
    pub fn mark_unapplied(&mut self, key: (AgentId, Role)) -> bool {
        self.unapplied.insert(key)
    }
    pub fn set(&mut self, role: Role, s: RoleSettings) {
        if self.settings.get(&role).map(|o| &o.signers) != Some(&s.signers) {
            self.verified.remove(&role);
        }
        self.changed_roles.insert(role.clone());
        self.settings.insert(role, s);
    }
    /// Restores a record without marking it changed.
    pub fn restore_settings(&mut self, role: Role, s: RoleSettings) {
        self.settings.insert(role, s);
    }
    pub fn restore_reservation(&mut self, key: (AgentId, Role), r: Resources) {
        self.reservations.insert(key, r);
    }
    fn add_reservation(&mut self, key: (AgentId, Role), r: &Resources) {
        self.changed_reservations.insert(key.clone());
        self.reservations.entry(key).or_default().add_assign(r);
    }
    fn sub_reservation(&mut self, key: &(AgentId, Role), r: &Resources) {
        self.changed_reservations.insert(key.clone());
        if let Some(held) = self.reservations.get_mut(key) {
            held.sub_assign(r);
            if held.is_empty() {
                self.reservations.remove(key);
                self.unapplied.remove(key);
            }
        }
    }
    /// `agent`'s recorded reservations.
    fn on_agent(&self, agent: &AgentId) -> Vec<(Role, Resources)> {
        self.reservations
            .iter()
            .filter(|((a, _), _)| a == agent)
            .map(|((_, r), res)| (r.clone(), res.clone()))
            .collect()
    }
    pub fn take_changed(&mut self) -> (RoleChanges, ReservationChanges) {
        let roles = std::mem::take(&mut self.changed_roles)
            .into_iter()
            .map(|r| {
                let s = self.settings.get(&r).cloned();
                (r, s)
            })
            .collect();
        let res = std::mem::take(&mut self.changed_reservations)
            .into_iter()
            .map(|k| {
                let r = self.reservations.get(&k).cloned();
                (k, r)
            })
            .collect();
        (roles, res)
    }
}

impl Master {
    /// Gives the allocator a role's weight and quota.
    pub(super) fn apply_role(&mut self, role: &Role, s: &RoleSettings) -> Result<(), Error> {
        let weight = validate::role_weight(role, s)?;
        self.alloc.set_quota(role, s.quota.clone()).map_err(|e| Error::invalid(e.to_string()))?;
        self.alloc.update_weight(role, weight).map_err(|e| Error::invalid(e.to_string()))
    }

    /// A module for `role` must carry a signature by one of the role's keys,
    /// if it has any. Checked before anything is queued or compiled; a module
    /// that verifies is remembered for the role's launches.
    pub(super) fn check_signed(&mut self, role: &Role, sha256: &str, signature: &str) -> Result<(), Error> {
        self.roles.verify(role, sha256, signature)
    }

    pub(super) fn update_role(&mut self, u: RoleUpdate) -> Result<RoleView, Error> {
        let next = validate::update_role(self.roles.settings(&u.role), &u)?;
        self.apply_role(&u.role, &next)?;
        self.roles.set(u.role.clone(), next);
        self.cycle_due = true;
        Ok(self.role_view(&u.role))
    }

    /// Reserves (or unreserves) part of an agent for a role, and records it.
    pub(super) fn reserve(&mut self, r: Reservation, reserve: bool) -> Result<Resources, Error> {
        let recovering = self.recovery.recovering.contains_key(&r.agent);
        let plan = validate::reservation(&self.state, &self.roles, recovering, reserve, &r)?;
        let key = (r.agent.clone(), r.role.clone());
        let (agent, role, res) = (&r.agent, &r.role, &r.resources);
        if reserve {
            if let Err(e) = self.alloc.reserve(agent, role, res) {
                // Outstanding offers may hold the resources: rescind the
                // agent's offers (as Mesos does) and try once more, but only
                // if that would make room.
                let held = self.state.offers.on_agent(agent);
                let mut could = self.alloc.agent_free(agent).map(|f| f.unreserved).unwrap_or_default();
                for o in &held {
                    if let Some(rec) = self.state.offers.get(o) {
                        could.add_assign(&rec.allocation.unreserved);
                    }
                }
                if !could.contains(res) {
                    return Err(Error::precondition(format!("{e}; free it up or reserve less")));
                }
                for o in held {
                    self.rescind(&o);
                }
                self.alloc
                    .reserve(agent, role, res)
                    .map_err(|e| Error::precondition(format!("{e}; free it up or reserve less")))?;
            }
            self.roles.add_reservation(key.clone(), res);
        } else {
            if plan == ReservePlan::Live {
                self.alloc.unreserve(agent, role, res).map_err(|e| Error::precondition(e.to_string()))?;
            }
            self.roles.sub_reservation(&key, res);
        }
        self.cycle_due = true;
        Ok(self.roles.reserved(&key).cloned().unwrap_or_default())
    }

    /// Gives a (re)registered agent its recorded dynamic reservations back. One
    /// that no longer fits (the agent came back smaller) is kept on record and
    /// reported, not dropped.
    pub(super) fn apply_reservations(&mut self, agent: &AgentId) {
        for (role, res) in self.roles.on_agent(agent) {
            let key = (agent.clone(), role.clone());
            match self.alloc.reserve(agent, &role, &res) {
                Ok(()) => {
                    self.roles.unapplied.remove(&key);
                }
                Err(e) => {
                    if self.roles.mark_unapplied(key) {
                        eprintln!(
                            "wasmos master: cannot apply the reservation of {res} for role {role} on agent {agent} yet: {e}; retrying as resources free up"
                        );
                    }
                }
            }
        }
    }

    /// Tries the recorded reservations that did not fit when their agent registered.
    pub(super) fn retry_unapplied(&mut self) {
        for (agent, role) in std::mem::take(&mut self.roles.unapplied) {
            let Some(res) = self.roles.reservations.get(&(agent.clone(), role.clone())).cloned() else { continue };
            if !self.alloc.has_agent(&agent) || self.alloc.reserve(&agent, &role, &res).is_err() {
                self.roles.unapplied.insert((agent, role));
            } else {
                self.cycle_due = true;
            }
        }
    }
}

impl Roles {
    /// See [`Master::check_signed`].
    fn verify(&mut self, role: &Role, sha256: &str, signature: &str) -> Result<(), Error> {
        let Some(keys) = self.settings(role).map(|s| &s.signers).filter(|k| !k.is_empty()) else {
            return Ok(());
        };
        if signature.trim().is_empty() {
            return Err(Error::denied(format!(
                "role {role} requires modules signed by one of its keys and module {sha256} comes unsigned; sign it with `wasmos sign MODULE.wasm --key KEY` (submit and deploy then send MODULE.wasm.sig)"
            )));
        }
        match wasmos_security::sign::verify(keys, sha256, signature) {
            Ok(true) => {
                let set = self.verified.entry(role.clone()).or_default();
                if set.len() >= MAX_VERIFIED {
                    set.clear();
                }
                set.insert(sha256.to_string());
                Ok(())
            }
            Ok(false) => Err(Error::denied(format!(
                "the signature of module {sha256} does not verify with any key of role {role}; sign it with a key the role trusts (`wasmos roles --json` lists them)"
            ))),
            Err(e) => Err(Error::invalid(e.to_string())),
        }
    }

    /// A launch of a framework's own in `role`: its module is signed by one of
    /// the role's keys (the launch carries the signature, or the master
    /// verified one for it before), if the role requires it.
    pub(super) fn launch_signed(&mut self, role: &Role, sha256: &str, signature: &str) -> Result<(), String> {
        if signature.trim().is_empty() && self.verified.get(role).is_some_and(|v| v.contains(sha256)) {
            return Ok(());
        }
        self.verify(role, sha256, signature).map_err(|e| {
            if signature.trim().is_empty() {
                format!(
                    "role {role} requires modules signed by one of its keys and this launch of module {sha256} carries no signature; send the module's `wasmos sign` signature in the task spec's signature field, or submit the module once with its .sig"
                )
            } else {
                e.message
            }
        })
    }
}
