//! The gRPC edge: the only place that names tonic or `wasmos_proto::v1`
//! request and response types. One file per service; each turns wire
//! requests into domain commands and domain answers into wire responses.

mod agent;
mod artifacts;
pub(crate) mod convert;
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
    pub(crate) async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, Status> {
        self.ask(Principal::Anonymous, make).await.map_err(convert::status_of)
    }
}

/// A malformed id in a request.
fn bad_id(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}{e}"))
}
