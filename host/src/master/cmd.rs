//! Everything the services can ask of the master, in domain types: a closed
//! enum of commands, each with the caller's principal and a reply channel.

use tokio::sync::{mpsc, oneshot};
use wasmos_model::{AgentId, FrameworkId, Resources, TaskId, TaskSpec};

use super::types::*;

/// Why a command was refused. `api/` turns the kind into a gRPC code; the
/// message is lower-case and says what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    PermissionDenied,
    AlreadyExists,
    ResourceExhausted,
    Unavailable,
    Internal,
}

macro_rules! ctor {
    ($($name:ident => $kind:ident),* $(,)?) => {
        impl Error {
            $(pub fn $name(message: impl Into<String>) -> Error {
                Error { kind: ErrorKind::$kind, message: message.into() }
            })*
        }
    };
}
ctor!(
    invalid => InvalidArgument,
    not_found => NotFound,
    precondition => FailedPrecondition,
    denied => PermissionDenied,
    exists => AlreadyExists,
    exhausted => ResourceExhausted,
    unavailable => Unavailable,
    internal => Internal,
);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;
/// A framework's event stream (remote: mapped to the wire by `api/`).
pub(crate) type EventTx = mpsc::UnboundedSender<Event>;
/// An agent's command stream.
pub(crate) type CommandTx = mpsc::UnboundedSender<AgentCommand>;

/// Who sends a command. Every command is authorized once, in
/// [`authorize`]; today the cluster is open, so everyone may do everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// A caller of the gRPC APIs (not authenticated yet).
    Anonymous,
    /// The master itself: its hosted frameworks and restarts.
    Master,
}

/// A command and who sent it.
pub(crate) struct Envelope {
    pub principal: Principal,
    pub cmd: Cmd,
}

/// Everything the services can ask of the master.
pub(crate) enum Cmd {
    RegisterAgent(RegisterAgent, Reply<Registered>),
    AttachAgent(AgentId, CommandTx, Reply<()>),
    AgentUpdates(AgentId, Vec<TaskStatus>, Reply<()>),
    AgentHeartbeat(AgentId, Reply<()>),
    /// (info, events, Some if hosted by the master as a Wasm scheduler, reply)
    Subscribe(FrameworkInfo, EventTx, Option<HostedInfo>, Reply<()>),
    /// A scheduler call; `Err` if it could not be read (answered once the
    /// caller is known to be subscribed, as the wire API always did).
    Call(FrameworkId, Result<Call, Error>, Reply<()>),
    /// (after this id, at most this many): a page, and the id to continue after.
    ListAgents(Option<String>, usize, Reply<(Vec<AgentView>, Option<String>)>),
    ListFrameworks(Option<String>, usize, Reply<(Vec<FrameworkView>, Option<String>)>),
    /// Tasks in memory after a position, at most this many (see `views.rs`).
    ListTasks(TaskFilter, u64, usize, Reply<Page<TaskView>>),
    GetTask(TaskId, Reply<TaskView>),
    ListRoles(Reply<Vec<RoleView>>),
    UpdateRole(RoleUpdate, Reply<RoleView>),
    Reserve(Reservation, Reply<Resources>),
    Unreserve(Reservation, Reply<Resources>),
    Submit(Submission, Reply<Vec<TaskId>>),
    TaskAction(TaskId, TaskAction, Reply<()>),
    /// Before a deploy does the expensive work: may hosted framework NAME start?
    HostedCheck(String, Reply<()>),
    /// A hosted framework's actor runs: where its jobs go, how to stop it.
    HostedAttach(FrameworkId, crate::hosted::Link),
    /// One callback's calls from a hosted scheduler, in order, and its
    /// callback count; each call's result comes back.
    HostedCalls(FrameworkId, Vec<Call>, u64, Reply<Vec<Result<(), Error>>>),
    /// A hosted scheduler broke: record why and tear its framework down.
    HostedFailed(FrameworkId, String, Reply<()>),
    /// `wasmos framework rm NAME`.
    HostedRemove(String, Reply<()>),
    /// `wasmos submit --framework NAME`: jobs for a hosted scheduler.
    HostedSubmit(String, HostedJobs, Reply<Vec<String>>),
}

/// Jobs for a hosted scheduler's `on-submit`.
#[derive(Debug, Clone)]
pub(crate) struct HostedJobs {
    pub template: TaskSpec,
    pub count: u32,
    pub priority: i32,
    pub estimated_fuel: Option<u64>,
}

/// Whether `who` may send `cmd`. One exhaustive match, so a new command
/// cannot be added without deciding who may send it.
pub(crate) fn authorize(who: &Principal, cmd: &Cmd) -> Result<(), Error> {
    let _ = who;
    match cmd {
        Cmd::RegisterAgent(..)
        | Cmd::AttachAgent(..)
        | Cmd::AgentUpdates(..)
        | Cmd::AgentHeartbeat(..)
        | Cmd::Subscribe(..)
        | Cmd::Call(..)
        | Cmd::ListAgents(..)
        | Cmd::ListFrameworks(..)
        | Cmd::ListTasks(..)
        | Cmd::GetTask(..)
        | Cmd::ListRoles(..)
        | Cmd::UpdateRole(..)
        | Cmd::Reserve(..)
        | Cmd::Unreserve(..)
        | Cmd::Submit(..)
        | Cmd::TaskAction(..)
        | Cmd::HostedCheck(..)
        | Cmd::HostedAttach(..)
        | Cmd::HostedCalls(..)
        | Cmd::HostedFailed(..)
        | Cmd::HostedRemove(..)
        | Cmd::HostedSubmit(..) => Ok(()),
    }
}

impl Cmd {
    /// Answers a command that was not authorized.
    pub fn refuse(self, e: Error) {
        fn no<T>(r: Reply<T>, e: Error) {
            let _ = r.send(Err(e));
        }
        match self {
            Cmd::RegisterAgent(_, r) => no(r, e),
            Cmd::AttachAgent(_, _, r) => no(r, e),
            Cmd::AgentUpdates(_, _, r) => no(r, e),
            Cmd::AgentHeartbeat(_, r) => no(r, e),
            Cmd::Subscribe(_, _, _, r) => no(r, e),
            Cmd::Call(_, _, r) => no(r, e),
            Cmd::ListAgents(_, _, r) => no(r, e),
            Cmd::ListFrameworks(_, _, r) => no(r, e),
            Cmd::ListTasks(_, _, _, r) => no(r, e),
            Cmd::GetTask(_, r) => no(r, e),
            Cmd::ListRoles(r) => no(r, e),
            Cmd::UpdateRole(_, r) => no(r, e),
            Cmd::Reserve(_, r) => no(r, e),
            Cmd::Unreserve(_, r) => no(r, e),
            Cmd::Submit(_, r) => no(r, e),
            Cmd::TaskAction(_, _, r) => no(r, e),
            Cmd::HostedCheck(_, r) => no(r, e),
            Cmd::HostedAttach(_, link) => link.stop(),
            Cmd::HostedCalls(_, _, _, r) => no(r, e),
            Cmd::HostedFailed(_, _, r) => no(r, e),
            Cmd::HostedRemove(_, r) => no(r, e),
            Cmd::HostedSubmit(_, _, r) => no(r, e),
        }
    }
}
