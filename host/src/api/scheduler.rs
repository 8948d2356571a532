//! `wasmos.v1.Scheduler`: remote frameworks subscribe and call.

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use wasmos_model::{FrameworkId, OfferId, Role, TaskId};
use wasmos_proto::v1;

use super::convert::{event_to_wire, filter_of, launch_from_wire};
use super::{BoxStream, bad_id};
use crate::MasterHandle;
use crate::master::cmd::{Cmd, Error};
use crate::master::types::{Call, FrameworkInfo, failover_timeout};

fn task_id(s: String) -> Result<TaskId, Error> {
    TaskId::new(s).map_err(|e| Error::invalid(e.to_string()))
}

/// A wire call in domain terms, or why it cannot be read.
fn call_from_wire(c: v1::call::Call) -> Result<Call, Error> {
    use v1::call::Call as C;
    Ok(match c {
        C::Accept(a) => Call::Accept {
            offers: a
                .offer_ids
                .into_iter()
                .map(OfferId::new)
                .collect::<Result<_, _>>()
                .map_err(|e| Error::invalid(format!("offer id: {e}")))?,
            launch: a.launch.iter().map(launch_from_wire).collect(),
            refuse: filter_of(&a.filters),
        },
        C::Decline(d) => Call::Decline {
            // Ids that are not valid cannot name an offer: skipped.
            offers: d.offer_ids.into_iter().filter_map(|o| OfferId::new(o).ok()).collect(),
            refuse: filter_of(&d.filters),
        },
        C::Kill(k) => Call::Kill(task_id(k.task_id)?),
        C::Pause(p) => Call::Pause(task_id(p.task_id)?),
        C::Resume(r) => Call::Resume(task_id(r.task_id)?),
        C::Revive(_) => Call::Revive,
        C::Suppress(_) => Call::Suppress,
        C::Acknowledge(a) => Call::Acknowledge { task_id: task_id(a.task_id)?, uuid: a.uuid },
        C::Reconcile(r) => Call::Reconcile(r.task_ids.into_iter().filter_map(|i| TaskId::new(i).ok()).collect()),
        C::Teardown(_) => Call::Teardown,
    })
}

#[tonic::async_trait]
impl v1::scheduler_server::Scheduler for MasterHandle {
    type SubscribeStream = BoxStream<v1::Event>;
    async fn subscribe(&self, r: Request<v1::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = self.caller(&r, "subscribe")?;
        let info =
            r.into_inner().framework.ok_or_else(|| Status::invalid_argument("subscribe without framework info"))?;
        let role = Role::new(if info.role.is_empty() { "default".to_string() } else { info.role.clone() })
            .map_err(|e| bad_id("framework role: ", e))?;
        let framework_id = if info.framework_id.is_empty() {
            None
        } else {
            Some(FrameworkId::new(info.framework_id).map_err(|e| bad_id("", e))?)
        };
        let info = FrameworkInfo {
            framework_id,
            name: info.name,
            role,
            failover_timeout: failover_timeout(info.failover_timeout_s),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.request(who.clone(), |reply| Cmd::Subscribe(info, tx, None, reply)).await?;
        let stream = UnboundedReceiverStream::new(rx).map(|ev| Ok(event_to_wire(ev)));
        Ok(Response::new(super::until_revoked(&who, Box::pin(stream))))
    }

    async fn call(&self, r: Request<v1::Call>) -> Result<Response<v1::CallResponse>, Status> {
        let who = self.caller(&r, "call")?;
        let call = r.into_inner();
        let fw = FrameworkId::new(call.framework_id).map_err(|e| bad_id("call framework_id: ", e))?;
        let c = match call.call {
            Some(c) => call_from_wire(c),
            None => Err(Error::invalid("empty call; set one of accept, decline, kill, ...")),
        };
        self.request(who, |reply| Cmd::Call(fw, c, reply)).await?;
        Ok(Response::new(v1::CallResponse {}))
    }
}
