//! The tokens table: bearer tokens by name, each with the SHA-256 of its
//! secret (never the secret), its grants and expiry. Rows change on create
//! and revoke, and are marked for the registry then. Every live token is
//! published to `auth::Auth`, where the gRPC edge authenticates calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use wasmos_security::grant::{Grant, Grants};

use super::Master;
use super::cmd::{Error, JoinRequest, Joined, NewToken, Principal, TokenView};
use super::types::now_ms;
use crate::auth::{Auth, Caller};
use crate::registry::{TokenKind, TokenRecord};
use wasmos_model::AgentId;

/// Longest token name.
pub(crate) const MAX_TOKEN_NAME: usize = 64;
/// Most tokens at once.
pub(crate) const MAX_TOKENS: usize = 10_000;
/// The token made at a first start (`admin:*`).
pub(crate) const BOOTSTRAP_NAME: &str = "admin";
/// How long a join token is valid when made without `--ttl`: a day.
pub(crate) const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(86_400);

#[derive(Debug, Default)]
pub(crate) struct Tokens {
    rows: BTreeMap<String, TokenRecord>,
    changed: Vec<(String, Option<TokenRecord>)>,
    auth: Arc<Auth>,
    /// Join tokens by the hash of their secret (they call nothing).
    joins: HashMap<[u8; 32], String>,
    /// What join tokens carry so agents trust the right master (zeros over
    /// plaintext).
    ca_fingerprint: String,
}

fn caller(r: &TokenRecord) -> Option<Arc<Caller>> {
    match &r.kind {
        TokenKind::Bearer => {
            // Stored grants were checked when made; one that no longer parses is dropped.
            let grants = Grants(r.grants.iter().filter_map(|g| g.parse::<Grant>().ok()).collect());
            Some(Arc::new(Caller::new(r.name.clone(), grants, r.expires_at_ms)))
        }
        TokenKind::Agent { agent_id } => Some(Arc::new(Caller::agent(r.name.clone(), agent_id.clone()))),
        TokenKind::Join { .. } => None,
    }
}

fn view(r: &TokenRecord) -> TokenView {
    TokenView {
        name: r.name.clone(),
        grants: r.grants.clone(),
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        created_by: r.created_by.clone(),
        kind: match r.kind {
            TokenKind::Bearer => "bearer",
            TokenKind::Join { .. } => "join",
            TokenKind::Agent { .. } => "agent",
        },
        uses_left: match r.kind {
            TokenKind::Join { uses_left } => uses_left,
            _ => None,
        },
        agent_id: match &r.kind {
            TokenKind::Agent { agent_id } => Some(agent_id.clone()),
            _ => None,
        },
    }
}

impl Tokens {
    pub fn new(auth: Arc<Auth>, ca_fingerprint: Option<String>) -> Tokens {
        Tokens { auth, ca_fingerprint: ca_fingerprint.unwrap_or_else(|| "0".repeat(64)), ..Default::default() }
    }

    /// Publishes a row where calls are authenticated (or joins looked up).
    fn publish(&mut self, r: &TokenRecord) {
        if let TokenKind::Agent { agent_id } = &r.kind {
            self.auth.admit_agent(agent_id.clone());
        }
        match caller(r) {
            Some(c) => self.auth.insert(r.secret_sha256, c),
            None => {
                self.joins.insert(r.secret_sha256, r.name.clone());
            }
        }
    }

    pub fn restore(&mut self, records: Vec<TokenRecord>) {
        for r in records {
            self.publish(&r);
            self.rows.insert(r.name.clone(), r);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn take_changed(&mut self) -> Vec<(String, Option<TokenRecord>)> {
        std::mem::take(&mut self.changed)
    }

    /// Makes a token; returns its secret (the only time it exists outside
    /// the caller's hands).
    fn create(&mut self, t: &NewToken, created_by: String) -> Result<(String, TokenView), Error> {
        let name = t.name.trim();
        if name.is_empty()
            || name.len() > MAX_TOKEN_NAME
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(Error::invalid(format!(
                "token name {name:?} is invalid; use up to {MAX_TOKEN_NAME} letters, digits and -_.@"
            )));
        }
        if self.rows.contains_key(name) {
            return Err(Error::exists(format!("a token named {name} exists; pick another name or revoke it first")));
        }
        if self.rows.len() >= MAX_TOKENS {
            return Err(Error::exhausted(format!("{MAX_TOKENS} tokens exist; revoke some first")));
        }
        let (secret, kind, grants, ttl) = if t.agent {
            if !t.grants.is_empty() {
                return Err(Error::invalid("a join token carries no grants; drop --grant"));
            }
            let kind = TokenKind::Join { uses_left: (t.uses > 0).then_some(t.uses) };
            let ttl = if t.ttl.is_zero() { DEFAULT_JOIN_TTL } else { t.ttl };
            (wasmos_security::token::new_join(&self.ca_fingerprint), kind, Vec::new(), ttl)
        } else {
            let grants = Grants::parse(&t.grants).map_err(Error::invalid)?;
            if grants.0.is_empty() {
                return Err(Error::invalid(
                    "a token needs at least one --grant ACTION:ROLE, e.g. --grant submit:batch (or --agent for a join token)",
                ));
            }
            (wasmos_security::token::new_bearer(), TokenKind::Bearer, grants.strings(), t.ttl)
        };
        let now = now_ms();
        let rec = TokenRecord {
            name: name.to_string(),
            secret_sha256: wasmos_security::token::hash(&secret),
            grants,
            created_at_ms: now,
            expires_at_ms: if ttl.is_zero() { 0 } else { now + ttl.as_millis() as i64 },
            created_by,
            kind,
        };
        self.publish(&rec);
        self.changed.push((rec.name.clone(), Some(rec.clone())));
        let v = view(&rec);
        self.rows.insert(rec.name.clone(), rec);
        Ok((secret, v))
    }

    /// Revokes a token; `Some(agent)` when it was an agent's identity.
    fn revoke(&mut self, name: &str) -> Result<Option<AgentId>, Error> {
        let Some(rec) = self.rows.remove(name) else {
            return Err(Error::not_found(format!("no token named {name}; list them with `wasmos token ls`")));
        };
        self.auth.revoke(&rec.secret_sha256);
        self.joins.remove(&rec.secret_sha256);
        self.changed.push((name.to_string(), None));
        if let TokenKind::Agent { agent_id } = &rec.kind {
            self.auth.revoke_agent(agent_id);
            return Ok(Some(agent_id.clone()));
        }
        Ok(None)
    }

    /// An agent joins: the join token must exist, be in date and have uses
    /// left (one is used). Over plaintext the agent gets a secret of its own.
    fn join(&mut self, req: &JoinRequest, fresh_id: impl FnOnce() -> AgentId) -> Result<Joined, Error> {
        let name = self.joins.get(&req.token_sha256).cloned().ok_or_else(|| {
            Error::unauthenticated("unknown or revoked join token; make one with `wasmos token create NAME --agent`")
        })?;
        let rec = self.rows.get_mut(&name).ok_or_else(|| Error::internal("a join token without its row"))?;
        if rec.expires_at_ms > 0 && now_ms() >= rec.expires_at_ms {
            return Err(Error::unauthenticated(format!(
                "join token {name} expired; make a new one with `wasmos token create NAME --agent`"
            )));
        }
        if let TokenKind::Join { uses_left: Some(n) } = &mut rec.kind {
            if *n == 0 {
                return Err(Error::unauthenticated(format!(
                    "join token {name} is used up; make a new one with `wasmos token create NAME --agent`"
                )));
            }
            *n -= 1;
            self.changed.push((name.clone(), Some(rec.clone())));
        }
        let agent_id = fresh_id();
        // Every joined agent has a row, `agent@ID`: revoking it (`wasmos
        // token revoke agent@ID`) refuses the agent's certificate from then
        // on. Over TLS the certificate is the credential and the row's
        // secret is thrown away; over plaintext the secret is the agent's.
        let s = wasmos_security::token::new_bearer();
        let rec = TokenRecord {
            name: format!("agent@{agent_id}"),
            secret_sha256: wasmos_security::token::hash(&s),
            grants: Vec::new(),
            created_at_ms: now_ms(),
            expires_at_ms: 0,
            created_by: format!("join:{name}"),
            kind: TokenKind::Agent { agent_id: agent_id.clone() },
        };
        self.publish(&rec);
        self.changed.push((rec.name.clone(), Some(rec.clone())));
        self.rows.insert(rec.name.clone(), rec);
        let secret = (!req.over_tls).then_some(s);
        Ok(Joined { agent_id, secret })
    }

    fn list(&self) -> Vec<TokenView> {
        self.rows.values().map(view).collect()
    }
}

impl Master {
    pub(super) fn create_token(&mut self, who: &Principal, t: NewToken) -> Result<(String, TokenView), Error> {
        self.tokens.create(&t, who.label())
    }

    /// Revokes a token. An agent's (`agent@ID`) leaves the cluster at once:
    /// its tasks are LOST or UNREACHABLE, as if it had died, and its
    /// certificate is refused from then on.
    pub(super) fn revoke_token(&mut self, name: &str) -> Result<(), Error> {
        if let Some(agent) = self.tokens.revoke(name)? {
            self.remove_agent(&agent, "agent_revoked", format!("agent {agent}'s identity was revoked ({name})"));
        }
        Ok(())
    }

    pub(super) fn list_tokens(&self) -> Vec<TokenView> {
        self.tokens.list()
    }

    pub(super) fn join(&mut self, req: &JoinRequest) -> Result<Joined, Error> {
        let ids = &mut self.ids;
        self.tokens.join(req, || AgentId::new(ids.fresh("agent")).expect("valid id"))
    }

    /// `--reset-admin-token`: the `admin` token is revoked (its open streams
    /// end) and made again; the new secret goes to the client config.
    pub(super) fn reset_admin_token(&mut self) -> Option<String> {
        if self.tokens.revoke(BOOTSTRAP_NAME).is_ok() {
            eprintln!("wasmos master: --reset-admin-token: the old admin token is revoked");
        }
        self.make_admin_token("master (--reset-admin-token)")
    }

    /// At a start with no token at all (a first start, or the in-memory
    /// registry): an `admin:*` token, whose secret goes to the client config.
    pub(super) fn bootstrap_token(&mut self) -> Option<String> {
        if !self.tokens.is_empty() {
            return None;
        }
        self.make_admin_token("master")
    }

    /// The `admin` token (`admin:*`, no expiry); its secret.
    fn make_admin_token(&mut self, created_by: &str) -> Option<String> {
        let t = NewToken {
            name: BOOTSTRAP_NAME.into(),
            grants: vec!["admin:*".into()],
            ttl: Default::default(),
            agent: false,
            uses: 0,
        };
        self.tokens.create(&t, created_by.into()).ok().map(|(secret, _)| secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke_never_keep_the_secret() {
        let auth = Arc::new(Auth::default());
        let mut t = Tokens::new(auth.clone(), None);
        let new = |name: &str, grants: &[&str]| NewToken {
            name: name.into(),
            grants: grants.iter().map(|s| s.to_string()).collect(),
            ttl: Default::default(),
            agent: false,
            uses: 0,
        };
        let (secret, v) = t.create(&new("ci", &["submit:batch", "view:*"]), "token:admin".into()).unwrap();
        assert_eq!(v.grants, vec!["submit:batch", "view:*"]);
        let changed = t.take_changed();
        assert_eq!(changed.len(), 1);
        let rec = changed[0].1.clone().unwrap();
        assert_eq!(rec.secret_sha256, wasmos_security::token::hash(&secret));
        assert!(!format!("{rec:?}").contains(&secret[5..]), "the record holds no secret");
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        assert_eq!(auth.authenticate(&md).unwrap().name, "ci");
        assert_eq!(
            t.create(&new("ci", &["view:*"]), String::new()).unwrap_err().kind,
            super::super::cmd::ErrorKind::AlreadyExists
        );
        assert!(t.create(&new("x", &[]), String::new()).is_err());
        assert!(t.create(&new("bad name", &["view:*"]), String::new()).is_err());
        assert!(t.create(&new("y", &["fly:*"]), String::new()).is_err());
        t.revoke("ci").unwrap();
        assert_eq!(auth.authenticate(&md).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(t.revoke("ci").is_err());
        assert_eq!(t.take_changed(), vec![("ci".to_string(), None)]);
    }

    #[test]
    fn join_tokens_are_used_up_and_give_plaintext_agents_a_secret() {
        let auth = Arc::new(Auth::default());
        let mut t = Tokens::new(auth.clone(), Some("ab".repeat(32)));
        let join = NewToken { name: "edge".into(), grants: vec![], ttl: Default::default(), agent: true, uses: 1 };
        let (secret, v) = t.create(&join, "token:admin".into()).unwrap();
        assert_eq!((v.kind, v.uses_left), ("join", Some(1)));
        assert!(v.expires_at_ms > 0, "a join token expires by default");
        let (hash, fp) = wasmos_security::token::parse_join(&secret).unwrap();
        assert_eq!(fp, "ab".repeat(32));
        // A join token calls nothing.
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        assert!(auth.authenticate(&md).is_err());
        let req = JoinRequest { token_sha256: hash, over_tls: false };
        let joined = t.join(&req, || AgentId::new("agent-1").unwrap()).unwrap();
        assert_eq!(joined.agent_id.as_str(), "agent-1");
        let s = joined.secret.expect("plaintext: a secret");
        assert_eq!(auth.get(&wasmos_security::token::hash(&s)).unwrap().agent.as_ref().unwrap().as_str(), "agent-1");
        let again = t.join(&req, || AgentId::new("agent-2").unwrap()).unwrap_err();
        assert!(again.message.contains("used up"), "{}", again.message);
        let unknown = JoinRequest { token_sha256: [7; 32], over_tls: true };
        assert_eq!(
            t.join(&unknown, || AgentId::new("x").unwrap()).unwrap_err().kind,
            super::super::cmd::ErrorKind::Unauthenticated
        );
        assert!(
            t.create(&NewToken { grants: vec!["view:*".into()], name: "j2".into(), ..join }, String::new()).is_err()
        );
    }
}
