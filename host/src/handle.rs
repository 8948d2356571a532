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
    /// Modules compiled for agents without a compiler.
    pub(crate) compiled: Arc<crate::compiled::CompiledCache>,
    pub(crate) sandbox: wasmos_sandbox::Sandbox,
    pub(crate) scheduler_limits: wasmos_sandbox::SchedulerLimits,
    /// Ended tasks that left the master's memory (none with the in-memory registry).
    pub(crate) history: Option<Arc<dyn crate::registry::History>>,
    /// The listener's TLS and the cluster PKI (None: `--insecure`).
    pub(crate) tls: Option<Arc<crate::TlsState>>,
    /// Live tokens, for authenticating calls at the edge.
    pub(crate) auth: Arc<crate::auth::Auth>,
    pub(crate) audit: Arc<crate::audit::Audit>,
    /// The admin token made at this start (a first start), if any.
    pub(crate) admin_token: Option<Arc<String>>,
    pub(crate) agent_cert_ttl: std::time::Duration,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// `/metrics` answers without a token.
    pub(crate) metrics_public: bool,
    /// Dashboard event streams open now.
    pub(crate) event_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// This master's epoch: the leader epoch on etcd, else which start of
    /// the master this is. Stamped on every agent command.
    pub(crate) epoch: u64,
}

impl MasterHandle {
    /// The CA certificate (PEM) clients must trust to reach this master;
    /// None when it serves plaintext.
    pub fn ca_pem(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.client_ca_pem.clone())
    }

    /// The secret of the `admin` token this start made (a first start, or
    /// every start of an in-memory registry): what `wasmos dev` and
    /// `wasmos master` write to the client config. None otherwise: the
    /// master keeps only its hash.
    pub fn admin_token(&self) -> Option<String> {
        self.admin_token.as_deref().cloned()
    }

    /// A join token for `uses` agents (0: any number), valid for `ttl` (zero:
    /// a day): how `wasmos dev` and tests start their agents.
    pub async fn create_join_token(&self, name: &str, uses: u32, ttl: std::time::Duration) -> Result<String, String> {
        let t = crate::master::cmd::NewToken { name: name.into(), grants: vec![], ttl, agent: true, uses };
        self.ask(Principal::Master, |r| Cmd::CreateToken(t, r)).await.map(|(secret, _)| secret).map_err(|e| e.message)
    }

    /// The cluster's name (in agents' certificates); None when plaintext.
    pub fn cluster(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.pki.cluster.clone())
    }
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
