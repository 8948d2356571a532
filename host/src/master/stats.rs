//! The cluster at a glance: the Operator API's `Overview` (what the
//! dashboard's first page and `wasmos top` show) and the state read at each
//! `/metrics` scrape.

use std::collections::BTreeMap;

use wasmos_model::{Resources, TaskState};

use super::Master;
use super::agents::Mode;
use super::cmd::Principal;
use super::frameworks::Kind;
use crate::metrics::{AgentSample, RoleSample, Snapshot};

/// How long a full count of tasks by state is reused.
const COUNTS_TTL: std::time::Duration = std::time::Duration::from_millis(500);

/// What `Overview` answers (see the wire message).
#[derive(Debug, Clone, Default)]
pub(crate) struct Overview {
    pub tasks_by_state: Vec<(TaskState, u64)>,
    pub agents_active: u32,
    pub agents_disconnected: u32,
    /// By mode (draining and drained agents are counted there, not above).
    pub agents_draining: u32,
    pub agents_drained: u32,
    /// Agents set not eligible for offers (whatever their mode).
    pub agents_ineligible: u32,
    pub frameworks: u32,
    pub total: Resources,
    pub allocated: Resources,
    pub offered: Resources,
    pub cycles: u64,
    pub last_cycle_ms: f64,
    pub mean_cycle_ms: f64,
    pub uptime_ms: u64,
}

impl Master {
    /// Tasks in memory by state, of the roles `who` may view. Counting walks
    /// every task: for a caller that views every role the count is reused
    /// for [`COUNTS_TTL`] (each open dashboard asks once a second).
    fn task_counts(&self, who: &Principal) -> BTreeMap<TaskState, u64> {
        let everything = match who {
            Principal::Master => true,
            Principal::Token(c) => c.grants.allows_everywhere(wasmos_security::grant::Action::View),
            Principal::Agent(_) => false,
        };
        if everything {
            let mut cache = self.counts_cache.borrow_mut();
            if let Some((at, n)) = cache.as_ref()
                && at.elapsed() < COUNTS_TTL
            {
                return n.clone();
            }
            let n = self.count_tasks(who);
            *cache = Some((std::time::Instant::now(), n.clone()));
            return n;
        }
        self.count_tasks(who)
    }

    fn count_tasks(&self, who: &Principal) -> BTreeMap<TaskState, u64> {
        let mut n: BTreeMap<TaskState, u64> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
        let mut seen: BTreeMap<&str, bool> = BTreeMap::new();
        for (_, t) in self.state.tasks.after(0) {
            let visible = *seen.entry(t.role.as_str()).or_insert_with(|| crate::auth::sees(who, t.role.as_str()));
            if visible {
                *n.entry(t.state()).or_default() += 1;
            }
        }
        n
    }

    /// (total, held by tasks and offers, in offers) over the active agents.
    fn resources(&self) -> (Resources, Resources, Resources) {
        let total = self.alloc.total();
        let mut free = Resources::new();
        for (id, _) in self.state.agents.iter() {
            if let Some(f) = self.alloc.agent_free(id) {
                free.add_assign(&f.total());
            }
        }
        let mut offered = Resources::new();
        for o in self.state.offers.iter() {
            offered.add_assign(&o.allocation.total());
        }
        (total.clone(), total.saturating_sub(&free), offered)
    }

    pub(super) fn overview(&self, who: &Principal) -> Overview {
        let (total, allocated, offered) = self.resources();
        let (mut active, mut disconnected, mut draining, mut drained, mut ineligible) = (0, 0, 0, 0, 0);
        for (_, a) in self.state.agents.iter() {
            match (a.mode, a.tx.is_some()) {
                (Mode::Active, true) => active += 1,
                (Mode::Active, false) => disconnected += 1,
                (Mode::Draining { .. }, _) => draining += 1,
                (Mode::Drained, _) => drained += 1,
            }
            if !a.eligible {
                ineligible += 1;
            }
        }
        let frameworks = self.state.frameworks.iter().filter(|(_, f)| crate::auth::sees(who, f.role.as_str())).count();
        let c = &self.metrics;
        Overview {
            tasks_by_state: self.task_counts(who).into_iter().collect(),
            agents_active: active,
            agents_disconnected: disconnected,
            agents_draining: draining,
            agents_drained: drained,
            agents_ineligible: ineligible,
            frameworks: frameworks as u32,
            total,
            allocated,
            offered,
            cycles: c.cycles,
            last_cycle_ms: c.last_cycle.as_secs_f64() * 1e3,
            mean_cycle_ms: if c.cycles == 0 { 0.0 } else { c.cycle_time.as_secs_f64() * 1e3 / c.cycles as f64 },
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    /// The state `/metrics` shows; per-agent series for at most
    /// `metrics_max_agents` agents (by id).
    pub(super) fn snapshot(&self) -> Snapshot {
        let o = self.overview(&Principal::Master);
        let mut kinds: BTreeMap<&'static str, u64> = [("batch", 0), ("remote", 0), ("hosted", 0)].into();
        for (_, f) in self.state.frameworks.iter() {
            let k = match f.kind {
                Kind::Batch => "batch",
                Kind::Remote => "remote",
                Kind::Hosted(_) => "hosted",
            };
            *kinds.entry(k).or_default() += 1;
        }
        let roles = self
            .list_roles()
            .into_iter()
            .map(|r| RoleSample {
                role: r.role.to_string(),
                weight: r.weight,
                dominant_share: r.dominant_share,
                allocated: r.allocated.unwrap_or_default(),
                reserved: r.reserved.unwrap_or_default(),
                guarantee: r.quota.as_ref().map(|q| q.guarantee.clone()).unwrap_or_default(),
                limit: r
                    .quota
                    .as_ref()
                    .map(|q| q.limit.iter().map(|(k, v)| (k.clone(), v.as_f64())).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let max = self.cfg.metrics_max_agents;
        let (agents, _) = self.list_agents(None, max);
        let agents_detail: Vec<AgentSample> = agents
            .into_iter()
            .map(|a| AgentSample {
                stats: self.state.agents.get(&a.agent_id).map(|x| x.stats.clone()).unwrap_or_default(),
                id: a.agent_id.to_string(),
                total: a.info.resources,
                allocated: a.allocated.unwrap_or_default(),
            })
            .collect();
        let agent_count = self.state.agents.iter().count() as u64;
        Snapshot {
            uptime_secs: o.uptime_ms as f64 / 1e3,
            tasks: o.tasks_by_state.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
            agents: vec![
                ("active", o.agents_active as u64),
                ("disconnected", o.agents_disconnected as u64),
                ("draining", o.agents_draining as u64),
                ("drained", o.agents_drained as u64),
                ("ineligible", o.agents_ineligible as u64),
            ],
            frameworks: kinds.into_iter().collect(),
            offers_outstanding: self.state.offers.iter().count() as u64,
            total: o.total,
            allocated: o.allocated,
            offered: o.offered,
            roles,
            agents_omitted: agent_count.saturating_sub(agents_detail.len() as u64),
            agents_detail,
        }
    }
}
