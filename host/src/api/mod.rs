//! The gRPC edge: the only place that names tonic or `wasmos_proto::v1`
//! request and response types. One file per service; each turns wire
//! requests into domain commands and domain answers into wire responses.

mod agent;
mod artifacts;
pub(crate) mod convert;
pub(crate) mod http;
mod operator;
mod scheduler;

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::Status;

use crate::MasterHandle;
use crate::master::cmd::{Cmd, Principal, Reply};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl MasterHandle {
    /// [`MasterHandle::ask`] for a gRPC caller, answering with a status.
    pub(crate) async fn request<T>(&self, who: Principal, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, Status> {
        self.ask(who, make).await.map_err(convert::status_of)
    }

    /// The token a request carries, checked; an UNAUTHENTICATED status
    /// (written to the audit log, as `method`) otherwise.
    pub(crate) fn caller<T>(&self, r: &tonic::Request<T>, method: &str) -> Result<Principal, Status> {
        match self.auth.authenticate(r.metadata()) {
            Ok(c) => Ok(Principal::Token(c)),
            Err(s) => {
                self.audit.refused("unauthenticated", method, "", "", s.message());
                self.metrics.refused.with_label_values(&["unauthenticated"]).inc();
                Err(s)
            }
        }
    }

    /// Checked at the edge (work the loop does not do itself): `action` in
    /// `role`, written to the audit log either way.
    pub(crate) fn check(
        &self,
        who: &Principal,
        action: wasmos_security::grant::Action,
        object: &str,
        role: &str,
    ) -> Result<(), Status> {
        match crate::auth::allow(who, action, role) {
            Ok(()) => {
                self.audit.allowed(&who.label(), action.name(), object, role);
                Ok(())
            }
            Err(e) => {
                self.audit.refused(&who.label(), action.name(), object, role, &e.message);
                Err(convert::status_of(e))
            }
        }
    }
}

/// Ends `stream` with UNAUTHENTICATED once `who`'s token is revoked or
/// expires (open streams included: a revocation takes effect at once).
fn until_revoked<T: Send + 'static>(who: &Principal, stream: BoxStream<T>) -> BoxStream<T> {
    use tokio_stream::StreamExt;
    let Principal::Token(c) = who else { return stream };
    let name = c.name.clone();
    let c = c.clone();
    let gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move { c.gone().await });
    Box::pin(futures_util::stream::unfold(Some((stream, gone, name)), |st| async move {
        let (mut s, mut gone, name) = st?;
        tokio::select! {
            item = s.next() => item.map(|i| (i, Some((s, gone, name)))),
            () = &mut gone => {
                let e = Status::unauthenticated(format!("token {name} was revoked or expired; this stream is closed"));
                Some((Err(e), None))
            }
        }
    }))
}

/// A malformed id in a request.
fn bad_id(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}{e}"))
}
