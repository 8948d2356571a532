//! Validation as pure functions over a read-only view of the master's
//! tables (Mesos `validation.cpp` style): each returns a plan or an error
//! with the reason the caller sees, and changes nothing. The master acts only
//! on what these let through. Unit tests: `validate_tests.rs`.

use std::collections::HashSet;
use std::sync::Arc;

use wasmos_allocator::Allocation;
use wasmos_model::{AgentId, FrameworkId, OfferId, Resources, Role, TaskId, TaskSpec, TaskState};

use super::State;
use super::cmd::Error;
use super::types::*;

/// Where an accepted set of offers lands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub agent: AgentId,
    pub role: Role,
}

/// One task of an ACCEPT, in the order the framework gave them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Launch `spec` as `id`, holding `allocation` of the offers. `queued`:
    /// a queued batch task (its row exists).
    Launch { id: TaskId, spec: Arc<TaskSpec>, allocation: Allocation, queued: bool },
    /// Refuse it with `state` (ERROR or DROPPED) and `reason`. `record`: keep
    /// the refused task in the table (its id is valid and new).
    Refuse {
        task_id: String,
        spec: Arc<TaskSpec>,
        state: TaskState,
        reason: &'static str,
        message: String,
        record: bool,
    },
}

/// What an ACCEPT does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AcceptPlan {
    /// The offers' agent and role; `None` when the offers are invalid (every
    /// task is then dropped).
    pub target: Option<Target>,
    /// The framework's offers named by the call: used up (valid call) or
    /// given back (invalid call).
    pub recover: Vec<OfferId>,
    pub steps: Vec<Step>,
    /// What is left of the offers: back to the allocator with the filter.
    pub leftover: Allocation,
}

/// Takes `need` out of `pool`: reserved parts first, then unreserved.
pub(crate) fn take(pool: &mut Allocation, need: &Resources) -> Option<Allocation> {
    if !pool.total().contains(need) {
        return None;
    }
    let mut left = need.clone();
    let mut out = Allocation::default();
    for (role, r) in pool.reserved.iter_mut() {
        let part = r.min(&left);
        if !part.is_empty() {
            r.sub_assign(&part);
            left.sub_assign(&part);
            out.reserved.entry(role.clone()).or_default().add_assign(&part);
        }
    }
    pool.reserved.retain(|_, r| !r.is_empty());
    pool.unreserved.sub_assign(&left);
    out.unreserved = left;
    Some(out)
}

fn merge(into: &mut Allocation, more: &Allocation) {
    into.unreserved.add_assign(&more.unreserved);
    for (role, r) in &more.reserved {
        into.reserved.entry(role.clone()).or_default().add_assign(r);
    }
}

pub(crate) const STALE_OFFERS: &str =
    "offer is unknown, stale, already used or not this framework's; wait for new offers";
pub(crate) const OFFERS_SPAN_AGENTS: &str = "offers span more than one agent; accept offers of one agent per call";

/// ACCEPT, checked against live state (Mesos v1 semantics): stale or foreign
/// offers, or offers of several agents, drop every task (`invalid_offers`);
/// otherwise each task is checked on its own, in order: its id
/// (`invalid_task_id`, `duplicate_task_id`), its module (`unknown_module`),
/// its signature where the offer's role requires signed modules
/// (`unsigned_module`; queued batch tasks were checked at submit), its
/// resources (`invalid_resources`) and whether it fits what is left
/// (`insufficient_resources`).
pub(crate) fn accept(
    state: &State,
    batch: &FrameworkId,
    fw: &FrameworkId,
    offers: &[OfferId],
    launch: Vec<Launch>,
    has_module: impl Fn(&str) -> bool,
    mut signed: impl FnMut(&Role, &str, &str) -> Result<(), String>,
) -> AcceptPlan {
    let is_batch = fw == batch;
    let mine = |o: &OfferId| state.offers.get(o).filter(|r| &r.framework == fw);
    let valid = !offers.is_empty() && offers.iter().all(|o| mine(o).is_some());
    let one_agent = valid && offers.iter().all(|o| mine(o).map(|r| &r.agent) == mine(&offers[0]).map(|r| &r.agent));
    if !valid || !one_agent {
        let msg = if !valid { STALE_OFFERS } else { OFFERS_SPAN_AGENTS };
        let mut seen: HashSet<TaskId> = HashSet::new();
        let steps = launch
            .into_iter()
            .map(|l| {
                let record = TaskId::new(l.task_id.clone()).is_ok_and(|t| {
                    seen.insert(t.clone()) && state.tasks.get(&t).is_none_or(|k| is_batch && k.agent().is_none())
                });
                Step::Refuse {
                    task_id: l.task_id,
                    spec: l.spec,
                    state: TaskState::Dropped,
                    reason: "invalid_offers",
                    message: msg.to_string(),
                    record,
                }
            })
            .collect();
        let recover = offers.iter().filter(|o| mine(o).is_some()).cloned().collect();
        return AcceptPlan { target: None, recover, steps, leftover: Allocation::default() };
    }
    let mut pool = Allocation::default();
    for o in offers {
        merge(&mut pool, &mine(o).expect("checked above").allocation);
    }
    let first = mine(&offers[0]).expect("checked above");
    let target = Target { agent: first.agent.clone(), role: first.role.clone() };
    let mut planned: HashSet<TaskId> = HashSet::new();
    let mut steps = Vec::with_capacity(launch.len());
    for Launch { task_id, spec, resources_error, signature } in launch {
        let tid = match TaskId::new(task_id.clone()) {
            Ok(t) => t,
            Err(e) => {
                let step = Step::Refuse {
                    task_id,
                    spec,
                    state: TaskState::Error,
                    reason: "invalid_task_id",
                    message: e.to_string(),
                    record: false,
                };
                steps.push(step);
                continue;
            }
        };
        let refuse = |spec: Arc<TaskSpec>, reason: &'static str, message: String, record: bool| Step::Refuse {
            task_id: tid.to_string(),
            spec,
            state: TaskState::Error,
            reason,
            message,
            record,
        };
        let existing = state.tasks.get(&tid);
        let queued = is_batch && !planned.contains(&tid) && existing.is_some_and(|t| t.is_queued());
        // A refusal is kept in the table when the id is new (or a queued
        // batch task's own).
        let record = !planned.contains(&tid) && existing.is_none_or(|t| is_batch && t.agent().is_none());
        if (existing.is_some() || planned.contains(&tid)) && !queued {
            let msg = format!("task id {tid} is already in use; pick a unique id");
            steps.push(refuse(spec, "duplicate_task_id", msg, record));
            continue;
        }
        planned.insert(tid.clone());
        if !has_module(&spec.module_sha256) {
            let msg = format!("module {:?} is not in the artifact store; upload it first", spec.module_sha256);
            steps.push(refuse(spec, "unknown_module", msg, record));
            continue;
        }
        if let Some(msg) = health_problem(spec.health.as_ref(), &has_module) {
            steps.push(refuse(spec, "invalid_health_check", msg, record));
            continue;
        }
        if let Some(msg) = migratable_problem(&spec) {
            steps.push(refuse(spec, "invalid_migratable", msg, record));
            continue;
        }
        if let Some(msg) = spec.on_disconnect.problem_text() {
            steps.push(refuse(spec, "invalid_on_disconnect", msg, record));
            continue;
        }
        if let Some(wasmos_model::HealthCheck { kind: wasmos_model::HealthKind::Probe { module_sha256, .. }, .. }) =
            &spec.health
            && let Err(msg) = signed(&target.role, module_sha256, "")
        {
            let msg = format!("health probe: {msg}");
            steps.push(refuse(spec, "unsigned_module", msg, record));
            continue;
        }
        if !queued && let Err(msg) = signed(&target.role, &spec.module_sha256, &signature) {
            steps.push(refuse(spec, "unsigned_module", msg, record));
            continue;
        }
        if let Some(e) = resources_error {
            steps.push(refuse(spec, "invalid_resources", e, record));
            continue;
        }
        if spec.resources.is_empty() {
            let msg = "task asks for no resources; give it at least cpus or mem".to_string();
            steps.push(refuse(spec, "invalid_resources", msg, record));
            continue;
        }
        let Some(allocation) = take(&mut pool, &spec.resources) else {
            let msg = format!("task needs {}, more than is left of the offer ({})", spec.resources, pool.total());
            steps.push(refuse(spec, "insufficient_resources", msg, record));
            continue;
        };
        steps.push(Step::Launch { id: tid, spec, allocation, queued });
    }
    AcceptPlan { target: Some(target), recover: offers.to_vec(), steps, leftover: pool }
}

/// A scheduler call must come from a subscribed framework (not `batch`).
pub(crate) fn caller(state: &State, batch: &FrameworkId, fw: &FrameworkId) -> Result<(), Error> {
    if fw == batch || !state.frameworks.contains(fw) {
        return Err(Error::not_found(format!("framework {fw} is not subscribed; subscribe first")));
    }
    Ok(())
}

/// SUBSCRIBE: the id to take over (`Some`), or `None` for a new framework.
pub(crate) fn subscribe(
    state: &State,
    batch: &FrameworkId,
    info: &FrameworkInfo,
    hosted: bool,
) -> Result<Option<FrameworkId>, Error> {
    let Some(id) = &info.framework_id else { return Ok(None) };
    if id == batch {
        return Err(Error::invalid("framework id \"batch\" is reserved for the built-in framework"));
    }
    if state.frameworks.is_torn_down(id) {
        return Err(Error::precondition(format!(
            "framework {id} was torn down; subscribe without a framework_id to start a new one"
        )));
    }
    if let Some(f) = state.frameworks.get(id) {
        if f.is_hosted() != hosted {
            return Err(Error::precondition(format!(
                "framework {id} is hosted by the master; manage it with `wasmos framework`"
            )));
        }
        if f.role != info.role {
            return Err(Error::invalid(format!(
                "framework {id} is subscribed in role {}; resubscribe with that role",
                f.role
            )));
        }
    }
    Ok(Some(id.clone()))
}

/// What an ACKNOWLEDGE does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// The latest update of the task: forget it (and the task, if it ended).
    Latest { ended: bool },
    /// An older or repeated one: at-least-once delivery makes these normal.
    Duplicate,
}

pub(crate) fn acknowledge(state: &State, fw: &FrameworkId, tid: &TaskId, uuid: &[u8]) -> Result<Ack, Error> {
    let f = state.frameworks.get(fw).ok_or_else(|| Error::not_found(format!("framework {fw} is not subscribed")))?;
    match f.unacked.get(tid) {
        Some(st) if st.uuid == uuid => {
            Ok(Ack::Latest { ended: state.tasks.get(tid).is_some_and(|t| t.state().is_terminal()) })
        }
        Some(_) | None if f.has_task(tid) || state.tasks.contains(tid) => Ok(Ack::Duplicate),
        _ => Err(Error::not_found(format!("framework {fw} has no task {tid} to acknowledge"))),
    }
}

/// Kill, pause or resume: the agent the task runs on, or `None` for a kill
/// of a task still queued.
pub(crate) fn task_action(
    state: &State,
    tid: &TaskId,
    action: TaskAction,
    owner: Option<&FrameworkId>,
) -> Result<Option<AgentId>, Error> {
    let task = state
        .tasks
        .get(tid)
        .ok_or_else(|| Error::not_found(format!("no task {tid}; list tasks with `wasmos tasks`")))?;
    if owner.is_some_and(|o| o != &task.framework) {
        return Err(Error::denied(format!("task {tid} belongs to another framework")));
    }
    if task.state().is_terminal() {
        return Err(Error::precondition(format!("task {tid} already ended ({})", task.state())));
    }
    match (action, task.agent()) {
        (TaskAction::Kill, None) => Ok(None),
        (_, None) => {
            Err(Error::precondition(format!("task {tid} is not running yet; pause and resume apply to running tasks")))
        }
        (_, Some(a)) => Ok(Some(a.clone())),
    }
}

/// `wasmos submit` into the batch framework.
pub(crate) fn submit(s: &Submission, max_count: u32, has_module: impl Fn(&str) -> bool) -> Result<(), Error> {
    if !has_module(&s.template.module_sha256) {
        return Err(Error::precondition(format!(
            "module {:?} is not in the artifact store; upload it first",
            s.template.module_sha256
        )));
    }
    if let Some(e) = &s.resources_error {
        return Err(Error::invalid(e.clone()));
    }
    if let Some(msg) = health_problem(s.template.health.as_ref(), &has_module) {
        return Err(Error::invalid(msg));
    }
    if let Some(msg) = migratable_problem(&s.template) {
        return Err(Error::invalid(msg));
    }
    if let Some(msg) = s.template.on_disconnect.problem_text() {
        return Err(Error::invalid(msg));
    }
    if s.template.resources.is_empty() {
        return Err(Error::invalid("task asks for no resources; give it --cpus or --mem"));
    }
    let count = s.count.max(1);
    if count > max_count {
        return Err(Error::invalid(format!(
            "count {count} is over the limit of {max_count} tasks per submit; submit in parts"
        )));
    }
    Ok(())
}

/// What is wrong with a task's health check, if anything: its numbers, or
/// a probe module the artifact store does not have.
fn health_problem(h: Option<&wasmos_model::HealthCheck>, has_module: &impl Fn(&str) -> bool) -> Option<String> {
    let h = h?;
    if let Err(e) = h.validate() {
        return Some(e);
    }
    match &h.kind {
        wasmos_model::HealthKind::Probe { module_sha256, .. } if !has_module(module_sha256) => {
            Some(format!("health probe module {module_sha256:?} is not in the artifact store; upload it first"))
        }
        _ => None,
    }
}

/// A migratable task carries no state besides its memory and output: no
/// input, no files, no directory (a probe check needs one).
fn migratable_problem(s: &wasmos_model::TaskSpec) -> Option<String> {
    if !s.migratable {
        return None;
    }
    let probe = matches!(&s.health, Some(h) if matches!(h.kind, wasmos_model::HealthKind::Probe { .. }));
    (!s.input.is_empty() || !s.files.is_empty() || s.sandbox_dir || probe).then(|| {
        "a migratable task may have no input, files, sandbox directory or probe check (they would not move with it); drop --migratable or them".to_string()
    })
}

/// An agent must offer something.
pub(crate) fn register_agent(info: &AgentInfo) -> Result<(), Error> {
    if info.resources.is_empty() {
        return Err(Error::invalid("agent offers no resources; give it e.g. --resources cpus:2;mem:4GiB"));
    }
    if info.precompiled_only {
        // It runs only what this master compiles for it: the master must be able to.
        let p = wasmos_sandbox::EngineProfile::parse(&info.engine_profile)
            .map_err(|e| Error::invalid(format!("agent without a compiler sent no usable engine profile: {e}")))?;
        wasmos_sandbox::Precompiler::check(&p)
            .map_err(|e| Error::invalid(format!("this master cannot compile for the agent's engine ({p}): {e}")))?;
    }
    Ok(())
}

/// A role's settings after `u`, checked whole before anything changes.
pub(crate) fn update_role(current: Option<&RoleSettings>, u: &RoleUpdate) -> Result<RoleSettings, Error> {
    let role = &u.role;
    let mut next = current.cloned().unwrap_or_default();
    if let Some(w) = u.weight {
        if !(w.is_finite() && w > 0.0) {
            return Err(Error::invalid(format!(
                "weight {w} for role {role} is invalid; use a positive number such as 1 or 2.5"
            )));
        }
        next.weight = w;
    }
    if u.clear_quota {
        next.quota = Default::default();
    }
    if let Some(keys) = &u.signers {
        next.signers = keys
            .iter()
            .map(|k| wasmos_security::sign::parse_public(k).map_err(|e| Error::invalid(e.to_string())))
            .collect::<Result<_, _>>()?;
    }
    if let Some(g) = &u.guarantee {
        next.quota.guarantee = g.clone();
    }
    if let Some(l) = &u.limit {
        next.quota.limit = l.clone();
    }
    for (name, limit) in &next.quota.limit {
        if next.quota.guarantee.get(name) > *limit {
            return Err(Error::invalid(format!(
                "role {role}: quota guarantee {} exceeds the limit for {name}; raise --limit or lower --guarantee",
                next.quota.guarantee
            )));
        }
    }
    role_weight(role, &next)?;
    Ok(next)
}

/// The weight the allocator gets for stored settings (0 means the default, 1).
pub(crate) fn role_weight(role: &Role, s: &RoleSettings) -> Result<f64, Error> {
    let weight = if s.weight > 0.0 { s.weight } else { 1.0 };
    if !weight.is_finite() {
        return Err(Error::invalid(format!("weight {weight} for role {role} is invalid")));
    }
    Ok(weight)
}

/// How a RESERVE or UNRESERVE goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReservePlan {
    /// The agent is registered and the allocator holds the reservation.
    Live,
    /// The agent is away (or the reservation could not be applied): only the
    /// record changes.
    RecordOnly,
}

/// RESERVE (`reserve`) or UNRESERVE, before the allocator is asked.
pub(crate) fn reservation(
    state: &State,
    roles: &super::roles::Roles,
    recovering: bool,
    reserve: bool,
    r: &Reservation,
) -> Result<ReservePlan, Error> {
    let verb = if reserve { "reserve" } else { "unreserve" };
    let (agent, role, res) = (&r.agent, &r.role, &r.resources);
    if res.is_empty() {
        return Err(Error::invalid(format!("nothing to {verb}; give resources, e.g. cpus:1;mem:1GiB")));
    }
    let key = (agent.clone(), role.clone());
    let unapplied = roles.is_unapplied(&key);
    // The allocator holds the recorded reservation only if the agent is
    // registered and it could be applied.
    let registered = state.agents.contains(agent) && !unapplied;
    if reserve && unapplied {
        return Err(Error::precondition(format!(
            "the reservation for role {role} on agent {agent} is recorded but not applied (the agent came back with less free); unreserve it first"
        )));
    }
    if !registered
        && !reserve
        && let Some(held) = roles.reserved(&key)
    {
        if !held.contains(res) {
            return Err(Error::precondition(format!(
                "agent {agent} has only {held} reserved for role {role}; cannot unreserve {res}"
            )));
        }
        return Ok(ReservePlan::RecordOnly);
    }
    if !registered {
        if recovering {
            return Err(Error::precondition(format!(
                "agent {agent} has not reregistered since the master restarted; retry when `wasmos agents` lists it"
            )));
        }
        return Err(Error::not_found(format!("no agent {agent}; list agents with `wasmos agents`")));
    }
    Ok(ReservePlan::Live)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
