//! Signed modules: a detached ed25519 signature over a module's SHA-256.
//!
//! - a key pair: the private key as hex of its PKCS#8 document (a file of
//!   mode 0600), the public key as 64 hex digits;
//! - a signature: 128 hex digits, over the 32 bytes of the module's SHA-256
//!   (so a signature is checked without the module's bytes).

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("not an ed25519 private key made by `wasmos keygen`")]
    BadKey,
    #[error("public key {0:?} is not 64 hex digits (an ed25519 key from `wasmos keygen`)")]
    BadPublicKey(String),
    #[error("the signature is not 128 hex digits (as `wasmos sign` writes)")]
    BadSignature,
    #[error("the module's SHA-256 must be 64 hex digits")]
    BadHash,
}

/// A new key pair: (private key file contents, public key).
pub fn keygen() -> (String, String) {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's random generator");
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("a key just made");
    (hex::encode(doc.as_ref()), hex::encode(pair.public_key().as_ref()))
}

/// The public key of a private key file's contents.
pub fn public_of(private: &str) -> Result<String, SignError> {
    let der = hex::decode(private.trim()).map_err(|_| SignError::BadKey)?;
    let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| SignError::BadKey)?;
    Ok(hex::encode(pair.public_key().as_ref()))
}

fn digest(sha256_hex: &str) -> Result<Vec<u8>, SignError> {
    match hex::decode(sha256_hex) {
        Ok(d) if d.len() == 32 => Ok(d),
        _ => Err(SignError::BadHash),
    }
}

/// Signs a module's SHA-256 (hex) with a private key file's contents.
pub fn sign(private: &str, sha256_hex: &str) -> Result<String, SignError> {
    let der = hex::decode(private.trim()).map_err(|_| SignError::BadKey)?;
    let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| SignError::BadKey)?;
    Ok(hex::encode(pair.sign(&digest(sha256_hex)?).as_ref()))
}

/// Checks a public key's form.
pub fn parse_public(key: &str) -> Result<String, SignError> {
    let k = key.trim().to_ascii_lowercase();
    match hex::decode(&k) {
        Ok(b) if b.len() == 32 => Ok(k),
        _ => Err(SignError::BadPublicKey(key.to_string())),
    }
}

/// Whether `signature` (hex) over `sha256_hex` verifies with one of `keys`.
pub fn verify(keys: &[String], sha256_hex: &str, signature: &str) -> Result<bool, SignError> {
    let sig = hex::decode(signature.trim()).map_err(|_| SignError::BadSignature)?;
    if sig.len() != 64 {
        return Err(SignError::BadSignature);
    }
    let msg = digest(sha256_hex)?;
    Ok(keys
        .iter()
        .any(|k| hex::decode(k).is_ok_and(|pk| UnparsedPublicKey::new(&ED25519, pk).verify(&msg, &sig).is_ok())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let (private, public) = keygen();
        assert_eq!(public_of(&private).unwrap(), public);
        let sha = "ab".repeat(32);
        let sig = sign(&private, &sha).unwrap();
        assert_eq!(verify(std::slice::from_ref(&public), &sha, &sig), Ok(true));
        let (_, other) = keygen();
        assert_eq!(verify(std::slice::from_ref(&other), &sha, &sig), Ok(false), "another key");
        assert_eq!(verify(std::slice::from_ref(&public), &"cd".repeat(32), &sig), Ok(false), "another module");
        assert_eq!(verify(&[other, public], &sha, &sig), Ok(true), "any of the keys");
        assert_eq!(verify(&[], &sha, "zz"), Err(SignError::BadSignature));
        assert!(sign("nope", &sha).is_err());
        assert!(parse_public("12").is_err());
    }
}
