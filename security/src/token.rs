//! Bearer tokens and join tokens: what a secret looks like, and its hash
//! (the only thing the master stores).
//!
//! - operator and framework tokens: `wsmt_` and 64 hex digits (256 random
//!   bits), sent as `authorization: Bearer wsmt_...`;
//! - agent join tokens: `wsmj_`, 64 hex digits, `.`, and the SHA-256 of the
//!   cluster CA (64 hex digits), so an agent given only the token trusts the
//!   right master on first contact.
//!
//! A secret of 256 random bits needs no slow hash: SHA-256 is enough to make
//! the stored hash useless for logging in.

use sha2::{Digest, Sha256};

const TOKEN_PREFIX: &str = "wsmt_";
const JOIN_PREFIX: &str = "wsmj_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "this is not a wasmos token (they start with wsmt_ and have 64 hex digits); check --token, WASMOS_TOKEN or the client config"
    )]
    Malformed,
    #[error("this is not a join token (wsmj_<64 hex>.<64 hex>); make one with `wasmos token create NAME --agent`")]
    MalformedJoin,
}

/// A new bearer token secret.
pub fn new_bearer() -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(crate::pki::random::<32>()))
}

/// A new join token secret carrying the CA's fingerprint.
pub fn new_join(ca_fingerprint: &str) -> String {
    format!("{JOIN_PREFIX}{}.{ca_fingerprint}", hex::encode(crate::pki::random::<32>()))
}

/// The stored hash of a secret (of its secret part, for a join token).
pub fn hash(secret: &str) -> [u8; 32] {
    let secret = secret.split('.').next().unwrap_or(secret);
    Sha256::digest(secret.as_bytes()).into()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a bearer token's form; its hash if it is one.
pub fn parse_bearer(s: &str) -> Result<[u8; 32], TokenError> {
    match s.strip_prefix(TOKEN_PREFIX) {
        Some(rest) if is_hex64(rest) => Ok(hash(s)),
        _ => Err(TokenError::Malformed),
    }
}

/// A join token's hash and the CA fingerprint it carries.
pub fn parse_join(s: &str) -> Result<([u8; 32], String), TokenError> {
    let rest = s.strip_prefix(JOIN_PREFIX).ok_or(TokenError::MalformedJoin)?;
    let (secret, fp) = rest.split_once('.').ok_or(TokenError::MalformedJoin)?;
    if !is_hex64(secret) || !is_hex64(fp) {
        return Err(TokenError::MalformedJoin);
    }
    Ok((hash(s), fp.to_ascii_lowercase()))
}

/// Replaces every token-looking word in `text` by its first characters and
/// `…`: for messages that might echo what a client sent.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("wsm").filter(|_| !rest.is_empty()) {
        out.push_str(&rest[..i]);
        let word_end = rest[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .map_or(rest.len(), |e| i + e);
        let word = &rest[i..word_end];
        if word.starts_with(TOKEN_PREFIX) || word.starts_with(JOIN_PREFIX) {
            out.push_str(&word[..word.len().min(9)]);
            out.push('…');
        } else {
            out.push_str(word);
        }
        rest = &rest[word_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_hashes() {
        let t = new_bearer();
        assert_eq!(parse_bearer(&t).unwrap(), hash(&t));
        assert_ne!(hash(&t), hash(&new_bearer()));
        assert_eq!(parse_bearer("wsmt_abc"), Err(TokenError::Malformed));
        assert_eq!(parse_bearer("Bearer x"), Err(TokenError::Malformed));
        let fp = "ab".repeat(32);
        let j = new_join(&fp);
        let (h, got) = parse_join(&j).unwrap();
        assert_eq!(got, fp);
        assert_eq!(h, hash(j.split('.').next().unwrap()));
        assert!(parse_join(&t).is_err());
    }

    #[test]
    fn redaction() {
        let t = new_bearer();
        let r = redact(&format!("token {t} refused; wsm is fine"));
        assert!(!r.contains(&t[9..]), "{r}");
        assert!(r.starts_with("token wsmt_"), "{r}");
        assert!(r.ends_with("refused; wsm is fine"), "{r}");
    }
}
