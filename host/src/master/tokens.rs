//! The tokens table: bearer tokens by name, each with the SHA-256 of its
//! secret (never the secret), its grants and expiry. Rows change on create
//! and revoke, and are marked for the registry then. Every live token is
//! published to `auth::Auth`, where the gRPC edge authenticates calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmos_security::grant::{Grant, Grants};

use super::Master;
use super::cmd::{Error, NewToken, Principal, TokenView};
use super::types::now_ms;
use crate::auth::{Auth, Caller};
use crate::registry::TokenRecord;

/// Longest token name.
pub(crate) const MAX_TOKEN_NAME: usize = 64;
/// Most tokens at once.
pub(crate) const MAX_TOKENS: usize = 10_000;
/// The token made at a first start (`admin:*`).
pub(crate) const BOOTSTRAP_NAME: &str = "admin";

#[derive(Debug, Default)]
pub(crate) struct Tokens {
    rows: BTreeMap<String, TokenRecord>,
    changed: Vec<(String, Option<TokenRecord>)>,
    auth: Arc<Auth>,
}

fn caller(r: &TokenRecord) -> Arc<Caller> {
    // Stored grants were checked when made; one that no longer parses is dropped.
    let grants = Grants(r.grants.iter().filter_map(|g| g.parse::<Grant>().ok()).collect());
    Arc::new(Caller::new(r.name.clone(), grants, r.expires_at_ms))
}

fn view(r: &TokenRecord) -> TokenView {
    TokenView {
        name: r.name.clone(),
        grants: r.grants.clone(),
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        created_by: r.created_by.clone(),
    }
}

impl Tokens {
    pub fn new(auth: Arc<Auth>) -> Tokens {
        Tokens { auth, ..Default::default() }
    }

    pub fn restore(&mut self, records: Vec<TokenRecord>) {
        for r in records {
            self.auth.insert(r.secret_sha256, caller(&r));
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
        let grants = Grants::parse(&t.grants).map_err(Error::invalid)?;
        if grants.0.is_empty() {
            return Err(Error::invalid("a token needs at least one --grant ACTION:ROLE, e.g. --grant submit:batch"));
        }
        let secret = wasmos_security::token::new_bearer();
        let now = now_ms();
        let rec = TokenRecord {
            name: name.to_string(),
            secret_sha256: wasmos_security::token::hash(&secret),
            grants: grants.strings(),
            created_at_ms: now,
            expires_at_ms: if t.ttl.is_zero() { 0 } else { now + t.ttl.as_millis() as i64 },
            created_by,
        };
        self.auth.insert(rec.secret_sha256, caller(&rec));
        self.changed.push((rec.name.clone(), Some(rec.clone())));
        let v = view(&rec);
        self.rows.insert(rec.name.clone(), rec);
        Ok((secret, v))
    }

    fn revoke(&mut self, name: &str) -> Result<(), Error> {
        let Some(rec) = self.rows.remove(name) else {
            return Err(Error::not_found(format!("no token named {name}; list them with `wasmos token ls`")));
        };
        self.auth.revoke(&rec.secret_sha256);
        self.changed.push((name.to_string(), None));
        Ok(())
    }

    fn list(&self) -> Vec<TokenView> {
        self.rows.values().map(view).collect()
    }
}

impl Master {
    pub(super) fn create_token(&mut self, who: &Principal, t: NewToken) -> Result<(String, TokenView), Error> {
        self.tokens.create(&t, who.label())
    }

    pub(super) fn revoke_token(&mut self, name: &str) -> Result<(), Error> {
        self.tokens.revoke(name)
    }

    pub(super) fn list_tokens(&self) -> Vec<TokenView> {
        self.tokens.list()
    }

    /// At a start with no token at all (a first start, or the in-memory
    /// registry): an `admin:*` token, whose secret goes to the client config.
    pub(super) fn bootstrap_token(&mut self) -> Option<String> {
        if !self.tokens.is_empty() {
            return None;
        }
        let t = NewToken { name: BOOTSTRAP_NAME.into(), grants: vec!["admin:*".into()], ttl: Default::default() };
        self.tokens.create(&t, "master".into()).ok().map(|(secret, _)| secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke_never_keep_the_secret() {
        let auth = Arc::new(Auth::default());
        let mut t = Tokens::new(auth.clone());
        let new = |name: &str, grants: &[&str]| NewToken {
            name: name.into(),
            grants: grants.iter().map(|s| s.to_string()).collect(),
            ttl: Default::default(),
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
}
