//! Prometheus metrics, served at `/metrics` in the text format (names
//! prefixed `wasmos_`, base units: seconds, bytes, cores).
//!
//! Two kinds: counters and histograms the master updates as it works
//! ([`Metrics`], shared with the registry writer and the hosted-framework
//! actors), and gauges (and agents' own counters) read from its state at each
//! scrape ([`Snapshot`], rendered into a registry made for that scrape).

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use wasmos_model::Resources;

/// Latency buckets (seconds): 100 µs to 10 min.
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];
/// Run-time buckets (seconds): 1 ms to a day.
const RUN_TIME: &[f64] =
    &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 86_400.0];
/// Records per registry commit.
const RECORDS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16_384.0, 65_536.0];

/// Counters and histograms updated as the master works.
pub(crate) struct Metrics {
    registry: Registry,
    pub tasks_submitted: IntCounter,
    pub tasks_launched: IntCounter,
    /// By terminal state and reason.
    pub tasks_ended: IntCounterVec,
    /// From an agent's update being sent (its timestamp) to the master applying it.
    pub status_update_delay: Histogram,
    /// Submitted (or first known) to RUNNING.
    pub launch_latency: Histogram,
    /// RUNNING to its end.
    pub run_time: Histogram,
    pub allocation_cycle: Histogram,
    pub registry_commit: Histogram,
    pub registry_commit_records: Histogram,
    /// By framework (name): a hosted scheduler's callbacks, and its failures.
    pub hosted_callbacks: IntCounterVec,
    pub hosted_failures: IntCounterVec,
    /// By kind: calls refused by authorization, or unauthenticated.
    pub refused: IntCounterVec,
    /// The children the event loop bumps on every task, resolved once:
    /// `status_updates_total` by source, `offers_total` by event.
    pub updates_from_agent: IntCounter,
    pub updates_from_master: IntCounter,
    pub offers_sent: IntCounter,
    pub offers_accepted: IntCounter,
    pub offers_declined: IntCounter,
    pub offers_rescinded: IntCounter,
    /// Label values seen per free-text label (reasons, framework names).
    seen: std::sync::Mutex<std::collections::HashMap<&'static str, std::collections::HashSet<String>>>,
}

/// Distinct values a free-text label (a task's end reason, a hosted
/// framework's name) takes before the rest count as `other`: what an agent
/// or a deployer sends cannot grow the series without bound.
pub(crate) const MAX_LABEL_VALUES: usize = 100;

fn registry() -> Registry {
    Registry::new_custom(Some("wasmos".into()), None).expect("a valid prefix")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = registry();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("a valid metric");
                registry.register(Box::new(m.clone())).expect("registered once");
                m
            }};
        }
        let counter = |n: &str, h: &str| IntCounter::new(n, h);
        let counters = |n: &str, h: &str, l: &[&str]| IntCounterVec::new(Opts::new(n, h), l);
        let hist = |n: &str, h: &str, b: &[f64]| Histogram::with_opts(HistogramOpts::new(n, h).buckets(b.to_vec()));
        let offers = reg!(counters(
            "offers_total",
            "Offers by what happened to them: sent, accepted, declined, rescinded.",
            &["event"]
        ));
        let status_updates = reg!(counters(
            "status_updates_total",
            "Task status updates applied, by source (agent or master).",
            &["source"]
        ));
        Metrics {
            updates_from_agent: status_updates.with_label_values(&["agent"]),
            updates_from_master: status_updates.with_label_values(&["master"]),
            offers_sent: offers.with_label_values(&["sent"]),
            offers_accepted: offers.with_label_values(&["accepted"]),
            offers_declined: offers.with_label_values(&["declined"]),
            offers_rescinded: offers.with_label_values(&["rescinded"]),

            tasks_submitted: reg!(counter("tasks_submitted_total", "Tasks queued by submits to the batch framework.")),
            tasks_launched: reg!(counter("tasks_launched_total", "Task launches sent to agents (each attempt).")),
            tasks_ended: reg!(counters(
                "tasks_ended_total",
                "Tasks that reached a terminal state, by state and reason.",
                &["state", "reason"]
            )),
            status_update_delay: reg!(hist(
                "status_update_delay_seconds",
                "From an agent sending a status update to the master applying it.",
                LATENCY
            )),
            launch_latency: reg!(hist(
                "task_launch_latency_seconds",
                "From a task's submission to its first RUNNING.",
                LATENCY
            )),
            run_time: reg!(hist("task_run_seconds", "From RUNNING to a task's end.", RUN_TIME)),
            allocation_cycle: reg!(hist("allocation_cycle_seconds", "One allocation cycle, offers included.", LATENCY)),
            registry_commit: reg!(hist("registry_commit_seconds", "One registry commit (group commit).", LATENCY)),
            registry_commit_records: reg!(hist(
                "registry_commit_records",
                "Records written by one registry commit.",
                RECORDS
            )),
            hosted_callbacks: reg!(counters(
                "hosted_callbacks_total",
                "Callbacks into hosted (Wasm) schedulers, by framework name.",
                &["framework"]
            )),
            hosted_failures: reg!(counters(
                "hosted_failures_total",
                "Hosted schedulers failed (trapped, out of fuel or time, bad calls), by framework name.",
                &["framework"]
            )),
            refused: reg!(counters(
                "calls_refused_total",
                "Calls refused: denied by a grant, or unauthenticated.",
                &["kind"]
            )),
            registry,
            seen: Default::default(),
        }
    }

    /// `value` as a value of the free-text label `label`, or `other` past
    /// [`MAX_LABEL_VALUES`] distinct ones.
    pub fn bounded(&self, label: &'static str, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let set = seen.entry(label).or_default();
        if set.contains(value) || (set.len() < MAX_LABEL_VALUES && set.insert(value.to_string())) {
            value.to_string()
        } else {
            "other".to_string()
        }
    }

    /// The text exposition of everything: these counters and `snap`'s gauges.
    pub fn render(&self, snap: &Snapshot) -> String {
        let scrape = registry();
        snap.register(&scrape);
        let mut families = self.registry.gather();
        families.extend(scrape.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        // Cannot fail: writing to a Vec, names checked at registration.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// An agent's own numbers, from its heartbeats.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AgentStats {
    pub tasks_running: u32,
    pub tasks_paused: u32,
    pub mem_used_bytes: u64,
    pub cache_memory_hits: u64,
    pub cache_disk_hits: u64,
    pub compiles: u64,
    pub cache_evictions: u64,
    pub fuel_consumed: u64,
    pub tasks_ended: u64,
    /// Launched there, waiting for a sandbox slot.
    pub tasks_starting: u32,
    /// Sandbox pool slots in use and in all.
    pub slots_in_use: u32,
    pub slots: u32,
    /// Runs waiting for a run permit (CPU) at the heartbeat.
    pub cpu_waiting: u32,
    /// CPU time of the tasks that ended there.
    pub cpu_ns: u64,
    /// Status updates it dropped because its spool was full while cut off.
    pub updates_dropped: u64,
    /// Its running tasks' use: (task, fuel so far, memory now, CPU ns so
    /// far). Taken out into the tasks when the heartbeat arrives.
    pub usage: Vec<(String, u64, u64, u64)>,
}

/// One agent at a scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentSample {
    pub id: String,
    pub total: Resources,
    pub allocated: Resources,
    pub stats: AgentStats,
}

/// One role at a scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoleSample {
    pub role: String,
    pub weight: f64,
    pub dominant_share: f64,
    pub allocated: Resources,
    pub reserved: Resources,
    pub guarantee: Resources,
    /// Per resource (a zero limit forbids it; absent: unlimited).
    pub limit: Vec<(String, f64)>,
}

/// The master's state as gauges, read at a scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub uptime_secs: f64,
    /// Tasks in memory by state name.
    pub tasks: Vec<(&'static str, u64)>,
    pub agents: Vec<(&'static str, u64)>,
    pub frameworks: Vec<(&'static str, u64)>,
    pub offers_outstanding: u64,
    pub total: Resources,
    pub allocated: Resources,
    pub offered: Resources,
    pub roles: Vec<RoleSample>,
    /// Every agent, unless there are more than the per-agent series bound.
    pub agents_detail: Vec<AgentSample>,
    /// Agents left out of the per-agent series (over the bound).
    pub agents_omitted: u64,
}

/// Adds gauges (and agents' counters) for one scrape.
struct Scrape<'a> {
    reg: &'a Registry,
}

impl Scrape<'_> {
    fn gauges(&self, name: &str, help: &str, labels: &[&str], rows: impl IntoIterator<Item = (Vec<String>, f64)>) {
        let Ok(g) = prometheus::GaugeVec::new(Opts::new(name, help), labels) else { return };
        for (l, v) in rows {
            let l: Vec<&str> = l.iter().map(String::as_str).collect();
            if let Ok(m) = g.get_metric_with_label_values(&l) {
                m.set(v);
            }
        }
        let _ = self.reg.register(Box::new(g));
    }

    /// A counter whose value something else keeps (an agent's own count).
    fn counters(&self, name: &str, help: &str, labels: &[&str], rows: impl IntoIterator<Item = (Vec<String>, f64)>) {
        let Ok(c) = prometheus::CounterVec::new(Opts::new(name, help), labels) else { return };
        for (l, v) in rows {
            let l: Vec<&str> = l.iter().map(String::as_str).collect();
            if let Ok(m) = c.get_metric_with_label_values(&l) {
                m.inc_by(v.max(0.0));
            }
        }
        let _ = self.reg.register(Box::new(c));
    }
}

/// (labels + resource, amount in base units) of every resource in `r`, and
/// zero for the cluster's others (`names`).
fn per_resource(prefix: &[String], r: &Resources, names: &[String]) -> Vec<(Vec<String>, f64)> {
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.extend(r.names().filter(|n| !names.iter().any(|x| x == n)));
    all.into_iter()
        .map(|name| {
            let mut l = prefix.to_vec();
            l.push(name.to_string());
            (l, r.get(name).as_f64())
        })
        .collect()
}

impl Snapshot {
    fn register(&self, reg: &Registry) {
        let s = Scrape { reg };
        let names: Vec<String> = self.total.names().map(String::from).collect();
        let per_resource = |prefix: &[String], r: &Resources| per_resource(prefix, r, &names);
        let one = |v: f64| vec![(Vec::new(), v)];
        let build = vec![(
            vec![env!("CARGO_PKG_VERSION").to_string(), wasmos_sandbox::Sandbox::wasmtime_version().to_string()],
            1.0,
        )];
        s.gauges("build_info", "The master's version and its wasmtime's (always 1).", &["version", "wasmtime"], build);
        s.gauges("uptime_seconds", "Since the master started.", &[], one(self.uptime_secs));
        let named =
            |v: &[(&'static str, u64)]| v.iter().map(|(k, n)| (vec![k.to_string()], *n as f64)).collect::<Vec<_>>();
        s.gauges(
            "tasks",
            "Tasks the master holds in memory, by state (ended ones until they leave for the history).",
            &["state"],
            named(&self.tasks),
        );
        s.gauges("agents", "Agents by status.", &["status"], named(&self.agents));
        s.gauges("frameworks", "Frameworks by kind (batch, remote, hosted).", &["kind"], named(&self.frameworks));
        s.gauges("offers_outstanding", "Offers sent and not yet answered.", &[], one(self.offers_outstanding as f64));
        let res_help = "cpus in cores, mem and disk in bytes";
        s.gauges(
            "cluster_resources",
            &format!("Resources of all active agents ({res_help})."),
            &["resource"],
            per_resource(&[], &self.total),
        );
        s.gauges(
            "cluster_allocated",
            &format!("Resources held by tasks and outstanding offers ({res_help})."),
            &["resource"],
            per_resource(&[], &self.allocated),
        );
        s.gauges(
            "cluster_offered",
            &format!("Resources in outstanding offers ({res_help})."),
            &["resource"],
            per_resource(&[], &self.offered),
        );
        let roles = |f: &dyn Fn(&RoleSample) -> &Resources| {
            self.roles.iter().flat_map(|r| per_resource(std::slice::from_ref(&r.role), f(r))).collect::<Vec<_>>()
        };
        s.gauges(
            "role_allocated",
            &format!("Resources a role's subtree holds ({res_help})."),
            &["role", "resource"],
            roles(&|r| &r.allocated),
        );
        s.gauges(
            "role_reserved",
            &format!("Resources reserved for a role on registered agents ({res_help})."),
            &["role", "resource"],
            roles(&|r| &r.reserved),
        );
        s.gauges(
            "role_quota_guarantee",
            &format!("A role's quota guarantee ({res_help})."),
            &["role", "resource"],
            roles(&|r| &r.guarantee),
        );
        let limits = self.roles.iter().flat_map(|r| r.limit.iter().map(|(k, v)| (vec![r.role.clone(), k.clone()], *v)));
        s.gauges(
            "role_quota_limit",
            &format!("A role's quota limit ({res_help}); absent: unlimited."),
            &["role", "resource"],
            limits.collect::<Vec<_>>(),
        );
        let by_role = |f: &dyn Fn(&RoleSample) -> f64| {
            self.roles.iter().map(|r| (vec![r.role.clone()], f(r))).collect::<Vec<_>>()
        };
        s.gauges(
            "role_dominant_share",
            "A role's weighted dominant share (DRF).",
            &["role"],
            by_role(&|r| r.dominant_share),
        );
        s.gauges("role_weight", "A role's weight.", &["role"], by_role(&|r| r.weight));
        let agents = |f: &dyn Fn(&AgentSample) -> &Resources| {
            self.agents_detail.iter().flat_map(|a| per_resource(std::slice::from_ref(&a.id), f(a))).collect::<Vec<_>>()
        };
        s.gauges(
            "agent_resources",
            &format!("An agent's resources ({res_help})."),
            &["agent", "resource"],
            agents(&|a| &a.total),
        );
        s.gauges(
            "agent_allocated",
            &format!("Resources held on an agent by tasks and offers ({res_help})."),
            &["agent", "resource"],
            agents(&|a| &a.allocated),
        );
        let per_agent = |f: &dyn Fn(&AgentStats) -> f64| {
            self.agents_detail.iter().map(|a| (vec![a.id.clone()], f(&a.stats))).collect::<Vec<_>>()
        };
        s.gauges(
            "agent_memory_used_bytes",
            "Memory the tasks running on an agent use now (linear memories and tables), as it reports.",
            &["agent"],
            per_agent(&|a| a.mem_used_bytes as f64),
        );
        s.gauges(
            "agent_tasks_running",
            "Tasks running on an agent (sandbox instances in use), as it reports.",
            &["agent"],
            per_agent(&|a| a.tasks_running as f64),
        );
        s.gauges(
            "agent_tasks_paused",
            "Tasks paused on an agent, as it reports.",
            &["agent"],
            per_agent(&|a| a.tasks_paused as f64),
        );
        s.gauges(
            "agent_tasks_starting",
            "Tasks launched on an agent that wait for a sandbox slot, as it reports.",
            &["agent"],
            per_agent(&|a| a.tasks_starting as f64),
        );
        s.gauges(
            "agent_sandbox_slots_in_use",
            "Sandbox pool slots in use on an agent (tasks alive there), as it reports.",
            &["agent"],
            per_agent(&|a| a.slots_in_use as f64),
        );
        s.gauges(
            "agent_sandbox_slots",
            "Sandbox pool slots an agent has in all.",
            &["agent"],
            per_agent(&|a| a.slots as f64),
        );
        s.gauges(
            "agent_cpu_waiting",
            "Runs waiting for a core on an agent at its last heartbeat (CPU contention).",
            &["agent"],
            per_agent(&|a| a.cpu_waiting as f64),
        );
        s.counters(
            "agent_task_cpu_seconds_total",
            "CPU time used by the tasks that ended on an agent.",
            &["agent"],
            per_agent(&|a| a.cpu_ns as f64 / 1e9),
        );
        s.counters(
            "agent_updates_dropped_total",
            "Status updates an agent dropped (oldest first) because its spool was full while cut off from the master.",
            &["agent"],
            per_agent(&|a| a.updates_dropped as f64),
        );
        let cache = self.agents_detail.iter().flat_map(|a| {
            [
                (vec![a.id.clone(), "memory_hit".into()], a.stats.cache_memory_hits as f64),
                (vec![a.id.clone(), "disk_hit".into()], a.stats.cache_disk_hits as f64),
                (vec![a.id.clone(), "compile".into()], a.stats.compiles as f64),
                (vec![a.id.clone(), "eviction".into()], a.stats.cache_evictions as f64),
            ]
        });
        s.counters(
            "agent_module_cache_total",
            "An agent's module cache: hits in memory or on disk, compiles (misses), evictions.",
            &["agent", "event"],
            cache.collect::<Vec<_>>(),
        );
        s.counters(
            "agent_fuel_consumed_total",
            "Fuel used by the tasks that ended on an agent.",
            &["agent"],
            per_agent(&|a| a.fuel_consumed as f64),
        );
        s.counters(
            "agent_tasks_ended_total",
            "Tasks that ended on an agent.",
            &["agent"],
            per_agent(&|a| a.tasks_ended as f64),
        );
        s.gauges(
            "agents_omitted_from_series",
            "Agents left out of the per-agent series (past --metrics-max-agents).",
            &[],
            one(self.agents_omitted as f64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_the_prefix() {
        let m = Metrics::new();
        m.tasks_ended.with_label_values(&["finished", "exited"]).inc();
        m.allocation_cycle.observe(0.002);
        let snap = Snapshot {
            tasks: vec![("running", 3)],
            total: Resources::parse("cpus:2;mem:1GiB").unwrap(),
            roles: vec![RoleSample { role: "eng".into(), weight: 2.0, ..Default::default() }],
            ..Default::default()
        };
        let text = m.render(&snap);
        assert!(text.contains("wasmos_tasks_ended_total{reason=\"exited\",state=\"finished\"} 1"), "{text}");
        assert!(text.contains("wasmos_tasks{state=\"running\"} 3"), "{text}");
        assert!(text.contains("wasmos_cluster_resources{resource=\"mem\"} 1073741824"), "{text}");
        assert!(text.contains("wasmos_role_weight{role=\"eng\"} 2"), "{text}");
        assert!(text.contains("wasmos_allocation_cycle_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        // A second scrape registers its gauges afresh.
        assert_eq!(m.render(&snap), text);
    }
}
