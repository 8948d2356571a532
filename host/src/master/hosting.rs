//! Hosted (Wasm) frameworks as the master sees them: their actors report
//! here, and their status is a column of their framework's row.

use wasmos_model::FrameworkId;

use super::Master;
use super::cmd::{Error, HostedJobs};
use super::frameworks::Kind;
use super::types::*;
use crate::registry::HostedJobRecord;

impl Master {
    /// May hosted framework `name` be deployed now? Not if one of that name
    /// runs, nor past `max_hosted_frameworks`.
    pub(super) fn hosted_check(&self, name: &str) -> Result<(), Error> {
        let running = |k: &Kind| matches!(k, Kind::Hosted(h) if h.link.as_ref().is_some_and(|l| l.is_running()));
        if self.state.frameworks.hosted_named(name).is_some_and(|(_, f)| running(&f.kind)) {
            return Err(Error::exists(format!(
                "framework {name} is already deployed; remove it first with `wasmos framework rm {name}`"
            )));
        }
        let n = self.state.frameworks.iter().filter(|(_, f)| running(&f.kind)).count();
        if n >= self.cfg.max_hosted_frameworks as usize {
            return Err(Error::exhausted(format!(
                "{n} hosted frameworks are running, the limit; remove one or raise --max-hosted-frameworks"
            )));
        }
        Ok(())
    }

    /// A hosted framework's actor started: keep how to reach and stop it.
    pub(super) fn hosted_attach(&mut self, fw: &FrameworkId, link: crate::hosted::Link) {
        match self.state.frameworks.get_mut(fw).map(|f| &mut f.kind) {
            Some(Kind::Hosted(h)) => {
                // A new instance knows none of the jobs its predecessor
                // (before a restart, or before a redeploy) was given.
                for job in h.pending_in_order() {
                    let _ = link.jobs.send(crate::hosted::job(
                        job.id.clone(),
                        &job.template,
                        job.priority,
                        job.estimated_fuel,
                    ));
                }
                if let Some(old) = h.link.replace(link) {
                    old.stop();
                }
            }
            // Torn down in the meantime.
            _ => link.stop(),
        }
    }

    /// One callback's calls, applied in order as if the framework had sent them.
    pub(super) fn hosted_calls(&mut self, fw: FrameworkId, calls: Vec<Call>, callbacks: u64) -> Vec<Result<(), Error>> {
        if let Some(f) = self.state.frameworks.get_mut(&fw)
            && let Kind::Hosted(h) = &mut f.kind
        {
            let new = callbacks.saturating_sub(h.callbacks);
            h.callbacks = callbacks;
            let name = self.metrics.prom.bounded("framework", &f.name);
            self.metrics.prom.hosted_callbacks.with_label_values(&[name.as_str()]).inc_by(new);
        }
        calls.into_iter().map(|c| self.call(fw.clone(), Ok(c))).collect()
    }

    /// A hosted scheduler broke: it stays listed as failed with the reason,
    /// and its framework is torn down (offers back, tasks killed).
    pub(super) fn hosted_failed(&mut self, fw: &FrameworkId, why: String) {
        let Some(f) = self.state.frameworks.get(fw) else { return };
        let name = self.metrics.prom.bounded("framework", &f.name);
        self.metrics.prom.hosted_failures.with_label_values(&[name.as_str()]).inc();
        let callbacks = match &f.kind {
            Kind::Hosted(h) => h.callbacks,
            _ => return,
        };
        let view = FrameworkView {
            framework_id: fw.to_string(),
            name: f.name.clone(),
            role: f.role.to_string(),
            allocated: None,
            active_tasks: 0,
            connected: false,
            hosted: true,
            status: "failed".into(),
            last_error: why,
            callbacks,
            callback_failures: 1,
        };
        self.teardown(fw);
        self.state.frameworks.remember_failed(view);
    }

    /// `wasmos framework rm NAME`: teardown (its tasks are killed), stop the actor.
    pub(super) fn hosted_remove(&mut self, name: &str) -> Result<(), Error> {
        if let Some(id) = self.state.frameworks.hosted_named(name).map(|(id, _)| id.clone()) {
            self.teardown(&id);
            return Ok(());
        }
        if self.state.frameworks.forget_failed(name) {
            return Ok(());
        }
        Err(Error::not_found(format!("no hosted framework {name:?}; list them with `wasmos framework ls`")))
    }

    /// Jobs for a hosted scheduler's `on-submit`; returns their ids.
    pub(super) fn hosted_submit(&mut self, name: &str, jobs: HostedJobs) -> Result<Vec<String>, Error> {
        if let Some(role) = self.state.frameworks.hosted_named(name).map(|(_, f)| f.role.clone()) {
            self.check_signed(&role, &jobs.template.module_sha256, &jobs.signature)?;
        }
        if self.artifacts.size(&jobs.template.module_sha256).is_none() {
            return Err(Error::precondition(format!(
                "module {:?} is not in the artifact store; upload it first",
                jobs.template.module_sha256
            )));
        }
        let (fw, link) = match self.state.frameworks.hosted_named(name).map(|(id, f)| (id, &f.kind)) {
            Some((id, Kind::Hosted(h))) => (id.clone(), h.link.as_ref().map(|l| l.jobs.clone())),
            _ => {
                if let Some(v) = self.state.frameworks.failed_named(name) {
                    return Err(Error::precondition(format!(
                        "framework {name} is {}: {}; redeploy it",
                        v.status, v.last_error
                    )));
                }
                return Err(Error::not_found(format!(
                    "no hosted framework {name:?}; deploy one with `wasmos framework deploy` or list them with `wasmos framework ls`"
                )));
            }
        };
        let jobs_tx = link.ok_or_else(|| Error::unavailable(format!("framework {name} is starting; retry shortly")))?;
        if jobs_tx.is_closed() {
            return Err(Error::unavailable("the framework's scheduler stopped; redeploy it"));
        }
        let mut ids = Vec::new();
        for _ in 0..jobs.count.max(1) {
            // Numbered by the id counter the registry keeps: unique across
            // restarts (a job id is often its task's id).
            let id = format!("{name}-job-{}", self.ids.bump());
            let job = crate::hosted::job(id.clone(), &jobs.template, jobs.priority, jobs.estimated_fuel);
            // Recorded with the reply's commit; given again after a restart
            // until a task named after it is launched.
            let rec = HostedJobRecord {
                id: id.clone(),
                framework: fw.clone(),
                template: jobs.template.clone(),
                priority: jobs.priority,
                estimated_fuel: jobs.estimated_fuel,
            };
            self.state.frameworks.add_job(&fw, std::sync::Arc::new(rec), true);
            let _ = jobs_tx.send(job);
            ids.push(id);
        }
        Ok(ids)
    }
}
