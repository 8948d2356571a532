//! Who is calling: bearer tokens checked against the live token table, and
//! the one place that says whether a caller may take an action in a role.
//!
//! The master's loop owns the tokens (`master/tokens.rs`: created, revoked,
//! recorded in the registry); it publishes each live token here, keyed by
//! the SHA-256 of its secret, so that the gRPC edge can authenticate a call
//! without a round trip through the loop. Revoking removes the entry and
//! signals every stream opened with the token, which then ends.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use wasmos_security::grant::{Action, Grants};

use crate::master::cmd::Error;

/// A token that authenticated a call.
#[derive(Debug)]
pub(crate) struct Caller {
    pub name: String,
    pub grants: Grants,
    /// An agent's secret (over an `--insecure` master): the agent it names.
    pub agent: Option<wasmos_model::AgentId>,
    /// 0: never.
    pub expires_at_ms: i64,
    revoked: watch::Sender<bool>,
}

impl Caller {
    pub fn new(name: String, grants: Grants, expires_at_ms: i64) -> Caller {
        Caller { name, grants, agent: None, expires_at_ms, revoked: watch::channel(false).0 }
    }

    /// An agent's secret: it speaks for that agent only.
    pub fn agent(name: String, agent: wasmos_model::AgentId) -> Caller {
        Caller {
            name,
            grants: Grants::default(),
            agent: Some(agent),
            expires_at_ms: 0,
            revoked: watch::channel(false).0,
        }
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms > 0 && now_ms >= self.expires_at_ms
    }

    /// Resolves when the token is revoked (or expires, checked each second).
    pub async fn gone(&self) {
        let mut rx = self.revoked.subscribe();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            if *rx.borrow() || self.expired(crate::master::types::now_ms()) {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }
}

/// Who sends a command.
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    /// A bearer token.
    Token(Arc<Caller>),
    /// An agent, by its client certificate (or, over an `--insecure`
    /// master, the secret it got when it joined).
    Agent(wasmos_model::AgentId),
    /// The master itself: its hosted frameworks and restarts.
    Master,
}

impl Principal {
    /// How the audit log names it.
    pub fn label(&self) -> String {
        match self {
            Principal::Token(c) => format!("token:{}", c.name),
            Principal::Agent(id) => format!("agent:{id}"),
            Principal::Master => "master".into(),
        }
    }
}

/// The live tokens by the hash of their secret.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    by_hash: RwLock<HashMap<[u8; 32], Arc<Caller>>>,
    /// Agents admitted by a join and not revoked: a certificate naming any
    /// other agent id is refused, though the CA signed it.
    agents: RwLock<std::collections::HashSet<wasmos_model::AgentId>>,
}

impl Auth {
    pub fn insert(&self, hash: [u8; 32], caller: Arc<Caller>) {
        self.by_hash.write().unwrap_or_else(|e| e.into_inner()).insert(hash, caller);
    }

    /// Removes the token and ends its open streams.
    pub fn revoke(&self, hash: &[u8; 32]) {
        if let Some(c) = self.by_hash.write().unwrap_or_else(|e| e.into_inner()).remove(hash) {
            let _ = c.revoked.send(true);
        }
    }

    pub fn admit_agent(&self, id: wasmos_model::AgentId) {
        self.agents.write().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    pub fn revoke_agent(&self, id: &wasmos_model::AgentId) {
        self.agents.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Whether an agent's identity is admitted (joined, not revoked).
    pub fn admits_agent(&self, id: &wasmos_model::AgentId) -> bool {
        self.agents.read().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<Caller>> {
        self.by_hash.read().unwrap_or_else(|e| e.into_inner()).get(hash).cloned()
    }

    /// The caller a request's `authorization: Bearer ...` names; an
    /// UNAUTHENTICATED status (never echoing the secret) otherwise.
    pub fn authenticate(&self, md: &tonic::metadata::MetadataMap) -> Result<Arc<Caller>, tonic::Status> {
        use tonic::Status;
        let Some(v) = md.get("authorization") else {
            return Err(Status::unauthenticated(
                "this call needs a token: pass --token or set WASMOS_TOKEN (`wasmos dev` and a master's first start write one to the client config)",
            ));
        };
        let text = v.to_str().unwrap_or("");
        let Some(secret) = text.strip_prefix("Bearer ").map(str::trim) else {
            return Err(Status::unauthenticated("the authorization header must be `Bearer TOKEN`"));
        };
        let hash = wasmos_security::token::parse_bearer(secret)
            .map_err(|_| Status::unauthenticated("this is not a wasmos token (wsmt_ and 64 hex digits); check --token, WASMOS_TOKEN or the client config"))?;
        let caller = self.get(&hash).ok_or_else(|| {
            Status::unauthenticated("unknown or revoked token; ask an admin for a new one (`wasmos token create`)")
        })?;
        if caller.agent.is_some() {
            return Err(Status::unauthenticated(format!(
                "{} is an agent's secret; it only speaks the agent protocol",
                caller.name
            )));
        }
        if caller.expired(crate::master::types::now_ms()) {
            return Err(Status::unauthenticated(format!(
                "token {} expired; ask an admin for a new one (`wasmos token create`)",
                caller.name
            )));
        }
        Ok(caller)
    }
}

/// Whether `who` may take `action` in `role`; a PERMISSION_DENIED error that
/// names the token, the action, the role and what the token has.
pub(crate) fn allow(who: &Principal, action: Action, role: &str) -> Result<(), Error> {
    match who {
        Principal::Master => Ok(()),
        Principal::Agent(id) => {
            Err(Error::denied(format!("agent {id} may not {action} in role {role}; use a token with {action}:{role}")))
        }
        Principal::Token(c) if c.grants.allows(action, role) => Ok(()),
        Principal::Token(c) => Err(Error::denied(format!(
            "token {} may not {action} in role {role} (it has {}); ask an admin for a token with {action}:{role}",
            c.name, c.grants
        ))),
    }
}

/// Whether `who` may take `action` in some role (listings then show only
/// the roles it may see).
pub(crate) fn allow_somewhere(who: &Principal, action: Action) -> Result<(), Error> {
    match who {
        Principal::Master => Ok(()),
        Principal::Token(c) if c.grants.allows_somewhere(action) => Ok(()),
        Principal::Token(c) => Err(Error::denied(format!(
            "token {} may not {action} anywhere (it has {}); ask an admin for a token with {action}:ROLE",
            c.name, c.grants
        ))),
        Principal::Agent(id) => Err(Error::denied(format!("agent {id} may not {action}; use a token"))),
    }
}

/// Whether `who` sees role `role`'s tasks, frameworks and events.
pub(crate) fn sees(who: &Principal, role: &str) -> bool {
    match who {
        Principal::Master => true,
        Principal::Token(c) => c.grants.allows(Action::View, role),
        Principal::Agent(_) => false,
    }
}
