//! Grants: `ACTION:ROLE`, where ROLE is a role, a subtree (`eng/*`: eng and
//! every role under it) or `*`. Authorization is default deny: a token may
//! do what one of its grants names, nothing else.

use std::fmt;
use std::str::FromStr;

/// What a grant allows. `Admin` allows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// List and get tasks, frameworks, agents and roles; watch; read logs.
    View,
    /// Queue tasks with `wasmos submit` in the role.
    Submit,
    /// Kill, pause and resume the role's tasks.
    Kill,
    /// Subscribe a remote framework in the role (and make its calls).
    RegisterFramework,
    /// Deploy or remove a hosted (Wasm) framework in the role.
    DeployFramework,
    /// Reserve and unreserve resources for the role.
    Reserve,
    /// Set the role's weight and quota.
    Quota,
    /// Drain agents and set their eligibility.
    Drain,
    /// Create, list and revoke tokens.
    Tokens,
    /// Everything.
    Admin,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::View,
        Action::Submit,
        Action::Kill,
        Action::RegisterFramework,
        Action::DeployFramework,
        Action::Reserve,
        Action::Quota,
        Action::Drain,
        Action::Tokens,
        Action::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Submit => "submit",
            Action::Kill => "kill",
            Action::RegisterFramework => "register_framework",
            Action::DeployFramework => "deploy_framework",
            Action::Reserve => "reserve",
            Action::Quota => "quota",
            Action::Drain => "drain",
            Action::Tokens => "tokens",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The roles a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    All,
    /// `eng/*`: eng and every role under it.
    Subtree(String),
    Role(String),
}

impl Scope {
    pub fn covers(&self, role: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Role(r) => r == role,
            Scope::Subtree(r) => role == r || role.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with('/')),
        }
    }
}

/// One `ACTION:ROLE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub action: Action,
    pub scope: Scope,
}

impl Grant {
    pub fn admin() -> Grant {
        Grant { action: Action::Admin, scope: Scope::All }
    }
    pub fn allows(&self, action: Action, role: &str) -> bool {
        (self.action == action || self.action == Action::Admin) && self.scope.covers(role)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::All => write!(f, "{}:*", self.action),
            Scope::Subtree(r) => write!(f, "{}:{r}/*", self.action),
            Scope::Role(r) => write!(f, "{}:{r}", self.action),
        }
    }
}

impl FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Grant, String> {
        let bad = |why: &str| format!("grant {s:?}: {why}; write ACTION:ROLE, e.g. submit:eng, view:eng/*, admin:*");
        let (a, r) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let action = Action::ALL
            .into_iter()
            .find(|x| x.name() == a)
            .ok_or_else(|| bad(&format!("unknown action {a:?} (one of {})", names())))?;
        let role_ok = |r: &str| {
            !r.is_empty()
                && r.split('/')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        };
        let scope = if r == "*" {
            Scope::All
        } else if let Some(base) = r.strip_suffix("/*") {
            if !role_ok(base) {
                return Err(bad("not a role"));
            }
            Scope::Subtree(base.to_string())
        } else {
            if !role_ok(r) {
                return Err(bad("not a role"));
            }
            Scope::Role(r.to_string())
        };
        Ok(Grant { action, scope })
    }
}

fn names() -> String {
    Action::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
}

/// A token's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(pub Vec<Grant>);

impl Grants {
    pub fn allows(&self, action: Action, role: &str) -> bool {
        self.0.iter().any(|g| g.allows(action, role))
    }
    /// Allowed in some role (listings filter by role afterwards).
    pub fn allows_somewhere(&self, action: Action) -> bool {
        self.0.iter().any(|g| g.action == action || g.action == Action::Admin)
    }
    /// Allowed in every role.
    pub fn allows_everywhere(&self, action: Action) -> bool {
        self.0.iter().any(|g| (g.action == action || g.action == Action::Admin) && g.scope == Scope::All)
    }
    pub fn parse(list: &[String]) -> Result<Grants, String> {
        list.iter().map(|s| s.parse()).collect::<Result<Vec<_>, _>>().map(Grants)
    }
    pub fn strings(&self) -> Vec<String> {
        self.0.iter().map(|g| g.to_string()).collect()
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no grants");
        }
        f.write_str(&self.strings().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let g: Grant = "submit:eng/*".parse().unwrap();
        assert!(g.allows(Action::Submit, "eng"));
        assert!(g.allows(Action::Submit, "eng/web"));
        assert!(!g.allows(Action::Submit, "engineering"));
        assert!(!g.allows(Action::Kill, "eng"));
        let exact: Grant = "view:a".parse().unwrap();
        assert!(
            exact.allows(Action::View, "a") && !exact.allows(Action::View, "a/b") && !exact.allows(Action::View, "b")
        );
        let admin: Grant = "admin:*".parse().unwrap();
        assert!(admin.allows(Action::Tokens, "anything"));
        for bad in ["submit", "fly:eng", "view:", "view:a//b", "view:a b"] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
        assert_eq!("register_framework:eng/*".parse::<Grant>().unwrap().to_string(), "register_framework:eng/*");
        let gs = Grants::parse(&["view:a".into(), "kill:*".into()]).unwrap();
        assert!(gs.allows_somewhere(Action::View) && !gs.allows_everywhere(Action::View));
        assert!(gs.allows_everywhere(Action::Kill));
        assert!(!gs.allows_somewhere(Action::Submit));
    }
}
