//! Identifiers. Each is a validated string newtype so an agent id can never be
//! passed where a task id is expected.

use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id is empty; give a non-empty name")]
    Empty { kind: &'static str },
    #[error("{kind} id is {len} bytes long; keep it at most {max} bytes")]
    TooLong { kind: &'static str, len: usize, max: usize },
    #[error("{kind} id {id:?} contains {ch:?}; use letters, digits, '-', '_', '.', ':' or '/' only")]
    BadChar { kind: &'static str, id: String, ch: char },
}

/// Longest accepted identifier, in bytes.
pub const MAX_ID_LEN: usize = 255;

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len: s.len(), max: MAX_ID_LEN });
    }
    if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))) {
        return Err(IdError::BadChar { kind, id: s.to_string(), ch });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// An agent (node daemon).
    AgentId, "agent"
);
id_type!(
    /// A framework (tenant with a role).
    FrameworkId, "framework"
);
id_type!(
    /// A task (one run of one Wasm module or component).
    TaskId, "task"
);
id_type!(
    /// An offer of one agent's resources to one framework.
    OfferId, "offer"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert!(AgentId::new("agent-1").is_ok());
        assert!(TaskId::new("eng/batch:42").is_ok());
        assert_eq!(TaskId::new("").unwrap_err(), IdError::Empty { kind: "task" });
        let e = FrameworkId::new("a b").unwrap_err().to_string();
        assert!(e.contains("' '"), "{e}");
        assert!(OfferId::new("x".repeat(256)).is_err());
    }
}
