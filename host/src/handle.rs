//! A cheap, cloneable handle on a running master: how services and hosted
//! frameworks send it commands.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::artifacts::ArtifactStore;
use crate::master::cmd::{Cmd, Envelope, Error, Principal, Reply};
use crate::watch::WatchHub;

/// A handle on the master's event loop; serve it with [`crate::serve_with`].
#[derive(Clone)]
pub struct MasterHandle {
    pub(crate) tx: mpsc::Sender<Envelope>,
    pub(crate) watch: Arc<WatchHub>,
    pub(crate) artifacts: Arc<ArtifactStore>,
    pub(crate) sandbox: wasmos_sandbox::Sandbox,
    pub(crate) scheduler_limits: wasmos_sandbox::SchedulerLimits,
    /// Ended tasks that left the master's memory (none with the in-memory registry).
    pub(crate) history: Option<Arc<dyn crate::registry::History>>,
}

impl MasterHandle {
    /// Sends a command and waits for its answer.
    pub(crate) async fn ask<T>(&self, principal: Principal, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        if !self.send(principal, make(tx)).await {
            return Err(Error::unavailable("the master is shutting down; retry shortly"));
        }
        rx.await.map_err(|_| Error::internal("the master dropped the request"))?
    }

    /// Sends a command without waiting for an answer; false if the master's
    /// loop has stopped.
    pub(crate) async fn send(&self, principal: Principal, cmd: Cmd) -> bool {
        self.tx.send(Envelope { principal, cmd }).await.is_ok()
    }
}
