//! Roles: the unit of fair sharing. Names are hierarchical paths (`eng/batch`),
//! like Mesos roles: `eng/batch` is a child of `eng`, and the parent's share,
//! quota and reservations cover its children.

use std::fmt;

/// Why a string is not a valid role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("role name is empty; give a name such as \"eng\" or \"eng/batch\"")]
    Empty,
    #[error("role name is {len} bytes long; keep it at most {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error(
        "role {role:?} has an empty or '.'/'..' path segment; write segments separated by single '/', e.g. eng/batch"
    )]
    BadSegment { role: String },
    #[error("role {role:?} has a segment starting with '-'; start each segment with a letter, digit, '_' or '.'")]
    LeadingDash { role: String },
    #[error("role {role:?} contains {ch:?}; use letters, digits, '_', '-', '.' and '/' between segments")]
    BadChar { role: String, ch: char },
}

/// Longest accepted role name, in bytes.
pub const MAX_ROLE_LEN: usize = 255;

/// A validated role name: one or more segments of letters, digits, `_`, `-` and `.`,
/// separated by `/`. No segment is empty, `.` or `..`, or starts with `-`. There is no
/// `*` role: unreserved resources are simply not reserved for anyone. Cheap to
/// clone (shared), as every task carries its role.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Role(std::sync::Arc<str>);

impl Role {
    /// Validates and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Role, RoleError> {
        let s = s.into();
        if s.is_empty() {
            return Err(RoleError::Empty);
        }
        if s.len() > MAX_ROLE_LEN {
            return Err(RoleError::TooLong { len: s.len(), max: MAX_ROLE_LEN });
        }
        if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))) {
            return Err(RoleError::BadChar { role: s, ch });
        }
        for seg in s.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(RoleError::BadSegment { role: s });
            }
            if seg.starts_with('-') {
                return Err(RoleError::LeadingDash { role: s });
            }
        }
        Ok(Role(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The enclosing role: `eng` for `eng/batch`, `None` for a top-level role.
    pub fn parent(&self) -> Option<Role> {
        self.0.rsplit_once('/').map(|(p, _)| Role(p.into()))
    }

    /// Path segments, outermost first: `["eng", "batch"]`.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('/')
    }

    /// Number of segments: 1 for `eng`, 2 for `eng/batch`.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// Whether `self` is `other` or one of its ancestors (`eng` covers `eng/batch`,
    /// but not `engineering`).
    pub fn covers(&self, other: &Role) -> bool {
        other.0 == self.0
            || (other.0.len() > self.0.len()
                && other.0.starts_with(&*self.0)
                && other.0.as_bytes()[self.0.len()] == b'/')
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Role({:?})", self.0)
    }
}
impl std::str::FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Role, RoleError> {
        Role::new(s)
    }
}
impl TryFrom<String> for Role {
    type Error = RoleError;
    fn try_from(s: String) -> Result<Role, RoleError> {
        Role::new(s)
    }
}
impl From<Role> for String {
    fn from(r: Role) -> String {
        r.0.to_string()
    }
}
impl AsRef<str> for Role {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_validate() {
        for ok in ["eng", "eng/batch", "a.b_c-d/E2", "x/y/z"] {
            assert!(Role::new(ok).is_ok(), "{ok}");
        }
        for (bad, want) in [
            ("", "empty"),
            ("*", "'*'"),
            ("eng//batch", "segment"),
            ("/eng", "segment"),
            ("eng/", "segment"),
            ("eng/..", "segment"),
            ("-eng", "'-'"),
            ("eng batch", "' '"),
        ] {
            let e = Role::new(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn hierarchy() {
        let r = |s: &str| Role::new(s).unwrap();
        assert_eq!(r("eng/batch").parent(), Some(r("eng")));
        assert_eq!(r("eng").parent(), None);
        assert_eq!(r("a/b/c").depth(), 3);
        assert!(r("eng").covers(&r("eng/batch")));
        assert!(r("eng").covers(&r("eng")));
        assert!(!r("eng").covers(&r("engineering")));
        assert!(!r("eng/batch").covers(&r("eng")));
    }
}
