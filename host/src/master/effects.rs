//! What a batch of commands does to the outside world, in order: agent
//! commands leave after the batch (before its commit), replies and watch
//! events that depend on the commit leave after it.

use std::sync::Arc;

use wasmos_model::AgentId;

use super::cmd::{Error, Reply};
use super::types::{AgentCommand, WatchEvent};
use crate::watch::WatchHub;

pub(crate) struct Effects {
    /// Replies (and watch events) held back until this batch is committed.
    deferred: Vec<Box<dyn FnOnce() + Send>>,
    /// Agent commands held back until the end of this batch.
    outbox: Vec<(AgentId, AgentCommand)>,
    watch: Arc<WatchHub>,
}

impl Effects {
    pub fn new(watch: Arc<WatchHub>) -> Effects {
        Effects { deferred: Vec::new(), outbox: Vec::new(), watch }
    }

    /// Answers once this batch's registry changes are committed.
    pub fn reply_after_commit<T: Send + 'static>(&mut self, reply: Reply<T>, r: Result<T, Error>) {
        self.deferred.push(Box::new(move || {
            let _ = reply.send(r);
        }));
    }

    /// Publishes a watch event now.
    pub fn publish(&self, ev: WatchEvent) {
        self.watch.publish(ev);
    }

    /// Publishes a watch event once this batch is committed.
    pub fn publish_after_commit(&mut self, ev: WatchEvent) {
        let watch = self.watch.clone();
        self.deferred.push(Box::new(move || watch.publish(ev)));
    }

    /// Queues a command for an agent; it leaves at the end of this batch.
    pub fn send_agent(&mut self, agent: &AgentId, cmd: AgentCommand) {
        self.outbox.push((agent.clone(), cmd));
    }

    /// The agent commands of this batch.
    pub fn take_outbox(&mut self) -> Vec<(AgentId, AgentCommand)> {
        std::mem::take(&mut self.outbox)
    }

    /// The held replies of this batch.
    pub fn take_deferred(&mut self) -> Vec<Box<dyn FnOnce() + Send>> {
        std::mem::take(&mut self.deferred)
    }
}
