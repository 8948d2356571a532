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
    Unauthenticated,
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
    unauthenticated => Unauthenticated,
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

pub(crate) use crate::auth::Principal;

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
    AgentHeartbeat(AgentId, crate::metrics::AgentStats, Reply<()>),
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
    /// A task's output from an offset on (stderr?, offset, most bytes): a
    /// running task's is asked of its agent.
    TaskOutput(TaskId, bool, u64, u32, Reply<OutputView>),
    /// An agent's answer to a `Tail` command: (request, output).
    AgentOutput(AgentId, u64, OutputView, Reply<()>),
    ListRoles(Reply<Vec<RoleView>>),
    /// The cluster at a glance, as the caller may view it.
    Overview(Reply<super::stats::Overview>),
    /// The state `/metrics` shows (the caller may view every role).
    Snapshot(Reply<crate::metrics::Snapshot>),
    UpdateRole(RoleUpdate, Reply<RoleView>),
    Reserve(Reservation, Reply<Resources>),
    Unreserve(Reservation, Reply<Resources>),
    Submit(Submission, Reply<Vec<TaskId>>),
    TaskAction(TaskId, TaskAction, Reply<()>),
    /// Before a deploy does the expensive work: may hosted framework NAME
    /// start (and, when deployed by an operator, is its module signed as
    /// its role requires: role, module, signature)?
    HostedCheck(String, Option<(wasmos_model::Role, String, String)>, Reply<()>),
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
    /// `wasmos token create`: the secret (shown once) and the token.
    CreateToken(NewToken, Reply<(String, TokenView)>),
    ListTokens(Reply<Vec<TokenView>>),
    RevokeToken(String, Reply<()>),
    /// An agent joins with a join token (by the hash of its secret): its new
    /// id, and over plaintext a secret for it.
    Join(JoinRequest, Reply<Joined>),
    /// Drain, undrain, eligibility, mark gone: the agent as it is after.
    Maintain(AgentId, Maintenance, Reply<AgentView>),
}

/// What an operator does to an agent (grant `drain:*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Maintenance {
    /// Deadline from now (none: no deadline); force: the deadline is now.
    /// migrate: capture migratable batch tasks and resume them elsewhere.
    Drain {
        deadline: Option<std::time::Duration>,
        force: bool,
        migrate: bool,
    },
    Undrain,
    Eligible(bool),
    MarkGone,
}

#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    pub token_sha256: [u8; 32],
    /// Over TLS the agent gets a certificate (signed at the edge); over
    /// plaintext a secret.
    pub over_tls: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub agent_id: AgentId,
    pub secret: Option<String>,
}

/// A token to make: its name, grants (`ACTION:ROLE`) and lifetime.
#[derive(Debug, Clone)]
pub(crate) struct NewToken {
    pub name: String,
    pub grants: Vec<String>,
    /// Zero: no expiry (join tokens: `DEFAULT_JOIN_TTL`).
    pub ttl: std::time::Duration,
    /// A join token for agents.
    pub agent: bool,
    /// Join tokens: how many agents may join; 0: any number.
    pub uses: u32,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone)]
pub(crate) struct TokenView {
    pub name: String,
    pub grants: Vec<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub created_by: String,
    /// bearer, join or agent.
    pub kind: &'static str,
    pub uses_left: Option<u32>,
    pub agent_id: Option<AgentId>,
}

/// Jobs for a hosted scheduler's `on-submit`.
#[derive(Debug, Clone)]
pub(crate) struct HostedJobs {
    pub template: TaskSpec,
    pub count: u32,
    pub priority: i32,
    pub estimated_fuel: Option<u64>,
    /// The module's signature (hex), for roles that require one.
    pub signature: String,
}

/// Whether `who` may send `cmd`. One exhaustive match, so a new command
/// cannot be added without deciding who may send it. Default deny: a token
/// may do what one of its grants names (`auth::allow`); agents may only
/// speak the agent protocol; the master itself (hosted frameworks,
/// restarts) may do everything. Listings need `view` somewhere and show
/// only the roles the token sees (filtered where the rows are read).
pub(crate) fn authorize(who: &Principal, cmd: &Cmd, state: &super::State) -> Result<(), Error> {
    use crate::auth::{allow, allow_somewhere};
    use wasmos_security::grant::Action;
    let role_of_task = |id: &TaskId| state.tasks.get(id).map(|t| t.role.as_str());
    let role_of_framework = |id: &FrameworkId| state.frameworks.get(id).map(|f| f.role.to_string());
    match cmd {
        // An agent speaks only for itself: the id its certificate names.
        Cmd::RegisterAgent(r, _) => match (who, &r.agent_id) {
            (Principal::Agent(me), Some(id)) if me == id => Ok(()),
            (Principal::Agent(me), _) => Err(Error::denied(format!(
                "agent {me} may register only as itself, not as {}",
                r.agent_id.as_ref().map_or("a new agent".to_string(), |i| i.to_string())
            ))),
            (Principal::Master, _) => Ok(()),
            (Principal::Token(c), _) => Err(not_an_agent(c)),
        },
        Cmd::AttachAgent(id, ..)
        | Cmd::AgentUpdates(id, ..)
        | Cmd::AgentHeartbeat(id, ..)
        | Cmd::AgentOutput(id, ..) => match who {
            Principal::Agent(me) if me == id => Ok(()),
            Principal::Agent(me) => Err(Error::denied(format!("agent {me} may not speak for agent {id}"))),
            Principal::Master => Ok(()),
            Principal::Token(c) => Err(not_an_agent(c)),
        },
        // The join token is the credential; checked by the command itself.
        Cmd::Join(..) => Ok(()),
        // Metrics name every role: a token that may view them all.
        Cmd::Snapshot(..) => match who {
            Principal::Master => Ok(()),
            Principal::Token(c) if c.grants.allows_everywhere(Action::View) => Ok(()),
            _ => Err(Error::denied(format!(
                "{} may not read the metrics: they need a token with view:* (or start the master with --metrics-public)",
                who.label()
            ))),
        },
        Cmd::Subscribe(info, _, _, _) => allow(who, Action::RegisterFramework, info.role.as_str()),
        // An unknown framework gets the usual answer from the call itself.
        Cmd::Call(fw, _, _) => match role_of_framework(fw) {
            Some(role) => allow(who, Action::RegisterFramework, &role),
            None => allow_somewhere(who, Action::RegisterFramework),
        },
        Cmd::ListAgents(..) | Cmd::ListFrameworks(..) | Cmd::ListTasks(..) | Cmd::ListRoles(..) | Cmd::Overview(..) => {
            allow_somewhere(who, Action::View)
        }
        // A task the token may not see is as good as absent.
        Cmd::GetTask(id, _) | Cmd::TaskOutput(id, ..) => match role_of_task(id) {
            Some(role) if !crate::auth::sees(who, role) => {
                Err(Error::not_found(format!("no task {id}; list tasks with `wasmos tasks`")))
            }
            _ => allow_somewhere(who, Action::View),
        },
        Cmd::UpdateRole(u, _) => allow(who, Action::Quota, u.role.as_str()),
        Cmd::Reserve(r, _) | Cmd::Unreserve(r, _) => allow(who, Action::Reserve, r.role.as_str()),
        Cmd::Submit(s, _) => match &s.role {
            Some(role) => allow(who, Action::Submit, role.as_str()),
            None => {
                let batch = FrameworkId::new("batch").expect("valid id");
                allow(who, Action::Submit, &role_of_framework(&batch).unwrap_or_else(|| "batch".into()))
            }
        },
        Cmd::TaskAction(id, _, _) => match role_of_task(id) {
            Some(role) => allow(who, Action::Kill, role),
            None => allow_somewhere(who, Action::Kill),
        },
        Cmd::HostedSubmit(name, _, _) => match state.frameworks.hosted_named(name) {
            Some((_, f)) => allow(who, Action::Submit, f.role.as_str()),
            None => allow_somewhere(who, Action::Submit),
        },
        // Deploy and remove are checked at the edge (`deploy_framework` on
        // the role) before the master does the work; these come from the
        // hosted machinery itself.
        Cmd::HostedRemove(name, _) => match who {
            Principal::Master => Ok(()),
            _ => {
                let role = state
                    .frameworks
                    .hosted_named(name)
                    .map(|(_, f)| f.role.to_string())
                    .or_else(|| state.frameworks.failed_named(name).map(|v| v.role.to_string()));
                match role {
                    Some(r) => allow(who, Action::DeployFramework, &r),
                    None => allow_somewhere(who, Action::DeployFramework),
                }
            }
        },
        Cmd::HostedCheck(..) | Cmd::HostedAttach(..) | Cmd::HostedCalls(..) | Cmd::HostedFailed(..) => match who {
            Principal::Master => Ok(()),
            _ => Err(Error::denied("only the master drives hosted frameworks")),
        },
        Cmd::CreateToken(t, _) => {
            allow_somewhere(who, Action::Tokens)?;
            // No token may make one that can do more than itself.
            if let Principal::Token(c) = who {
                for g in &t.grants {
                    let g: wasmos_security::grant::Grant = g.parse().map_err(Error::invalid)?;
                    if !covers(&c.grants, &g) {
                        return Err(Error::denied(format!(
                            "token {} may not grant {g}, which it does not have itself (it has {})",
                            c.name, c.grants
                        )));
                    }
                }
            }
            Ok(())
        }
        Cmd::ListTokens(..) | Cmd::RevokeToken(..) => allow_somewhere(who, Action::Tokens),
        // Agents serve every role: only a token that may drain everywhere.
        Cmd::Maintain(..) => match who {
            Principal::Master => Ok(()),
            Principal::Token(c) if c.grants.allows_everywhere(Action::Drain) => Ok(()),
            _ => Err(Error::denied(format!(
                "{} may not drain agents or set their eligibility: that needs a token with drain:*",
                who.label()
            ))),
        },
    }
}

fn not_an_agent(c: &crate::auth::Caller) -> Error {
    Error::denied(format!("token {} is not an agent; agents speak the agent protocol with their certificate", c.name))
}

/// Whether `have` allows everything grant `g` allows.
fn covers(have: &wasmos_security::grant::Grants, g: &wasmos_security::grant::Grant) -> bool {
    use wasmos_security::grant::{Action, Scope};
    have.0.iter().any(|h| {
        (h.action == Action::Admin || h.action == g.action)
            && match (&h.scope, &g.scope) {
                (Scope::All, _) => true,
                (Scope::Subtree(a), Scope::Subtree(b) | Scope::Role(b)) => {
                    h.scope.covers(b) && (a == b || b.starts_with(&format!("{a}/")))
                }
                (Scope::Role(a), Scope::Role(b)) => a == b,
                _ => false,
            }
    })
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
            Cmd::AgentHeartbeat(_, _, r) => no(r, e),
            Cmd::Subscribe(_, _, _, r) => no(r, e),
            Cmd::Call(_, _, r) => no(r, e),
            Cmd::ListAgents(_, _, r) => no(r, e),
            Cmd::ListFrameworks(_, _, r) => no(r, e),
            Cmd::ListTasks(_, _, _, r) => no(r, e),
            Cmd::GetTask(_, r) => no(r, e),
            Cmd::TaskOutput(_, _, _, _, r) => no(r, e),
            Cmd::AgentOutput(_, _, _, r) => no(r, e),
            Cmd::ListRoles(r) => no(r, e),
            Cmd::Overview(r) => no(r, e),
            Cmd::Snapshot(r) => no(r, e),
            Cmd::UpdateRole(_, r) => no(r, e),
            Cmd::Reserve(_, r) => no(r, e),
            Cmd::Unreserve(_, r) => no(r, e),
            Cmd::Submit(_, r) => no(r, e),
            Cmd::TaskAction(_, _, r) => no(r, e),
            Cmd::HostedCheck(_, _, r) => no(r, e),
            Cmd::HostedAttach(_, link) => link.stop(),
            Cmd::HostedCalls(_, _, _, r) => no(r, e),
            Cmd::HostedFailed(_, _, r) => no(r, e),
            Cmd::HostedRemove(_, r) => no(r, e),
            Cmd::HostedSubmit(_, _, r) => no(r, e),
            Cmd::CreateToken(_, r) => no(r, e),
            Cmd::ListTokens(r) => no(r, e),
            Cmd::RevokeToken(_, r) => no(r, e),
            Cmd::Join(_, r) => no(r, e),
            Cmd::Maintain(_, _, r) => no(r, e),
        }
    }
}
