//! Resources: named non-negative scalars such as `cpus:2;mem:512MiB;disk:1GiB;gpus:1`.
//!
//! Amounts are fixed-point with three decimals (like Mesos's `Value::Scalar`), held as
//! integers of thousandths so that adding and subtracting never drifts: an offer that
//! was carved out of an agent always fits back into it exactly. `mem` and `disk` are
//! in bytes and parse sizes (`512MiB`); every other resource is a plain number.

use std::fmt;

use crate::units::{format_size, parse_size};

/// Fractional cores.
pub const CPUS: &str = "cpus";
/// Bytes of linear memory plus tables.
pub const MEM: &str = "mem";
/// Bytes of sandbox directory.
pub const DISK: &str = "disk";

/// One amount, in thousandths of the resource's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Scalar(pub i64);

impl Scalar {
    pub const ZERO: Scalar = Scalar(0);
    const SCALE: i64 = 1000;

    /// From a whole number of units (`cpus`, bytes, ...).
    pub const fn units(n: i64) -> Scalar {
        Scalar(n * Self::SCALE)
    }
    /// From a float, rounded to the nearest thousandth.
    pub fn from_f64(v: f64) -> Scalar {
        Scalar((v * Self::SCALE as f64).round() as i64)
    }
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }
    /// Whole units, rounded down.
    pub fn whole(self) -> i64 {
        self.0.div_euclid(Self::SCALE)
    }
    pub fn milli(self) -> i64 {
        self.0
    }
}

/// Why a resource string or an operation on resources was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource entry {entry:?} has no ':'; write NAME:AMOUNT, e.g. cpus:2;mem:512MiB")]
    MissingColon { entry: String },
    #[error("resource name {name:?} is invalid; use lower-case letters, digits, '_' or '-'")]
    BadName { name: String },
    #[error("resource {name} is listed twice; give each resource once")]
    Duplicate { name: String },
    #[error("resource {name} has amount {amount:?}, which is not a number{hint}")]
    BadAmount { name: String, amount: String, hint: &'static str },
    #[error("resource {name} has a negative amount ({amount}); amounts must be 0 or more")]
    Negative { name: String, amount: String },
    #[error("resource {name} amount {amount} is too large")]
    TooLarge { name: String, amount: String },
}

/// A bag of named scalars. Zero amounts are not stored, so two bags with the same
/// non-zero amounts compare equal. Entries are kept sorted by name (deterministic
/// iteration and display).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Resources {
    items: Vec<(Box<str>, Scalar)>,
}

fn is_byte_resource(name: &str) -> bool {
    name == MEM || name == DISK
}

impl Resources {
    pub fn new() -> Resources {
        Resources::default()
    }

    /// Parses `cpus:2;mem:512MiB;disk:1GiB;gpus:1`. Whitespace around entries is
    /// ignored; an empty string is the empty bag.
    pub fn parse(s: &str) -> Result<Resources, ResourceError> {
        let mut r = Resources::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, amount) =
                entry.split_once(':').ok_or_else(|| ResourceError::MissingColon { entry: entry.to_string() })?;
            let (name, amount) = (name.trim(), amount.trim());
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return Err(ResourceError::BadName { name: name.to_string() });
            }
            if r.items.iter().any(|(n, _)| &**n == name) {
                return Err(ResourceError::Duplicate { name: name.to_string() });
            }
            if amount.starts_with('-') {
                return Err(ResourceError::Negative { name: name.to_string(), amount: amount.to_string() });
            }
            let value = if is_byte_resource(name) {
                let bytes = parse_size(amount).map_err(|_| ResourceError::BadAmount {
                    name: name.to_string(),
                    amount: amount.to_string(),
                    hint: " or size; write bytes or KiB/MiB/GiB/TiB, e.g. 512MiB",
                })?;
                let bytes = i64::try_from(bytes)
                    .ok()
                    .and_then(|b| b.checked_mul(Scalar::SCALE))
                    .ok_or_else(|| ResourceError::TooLarge { name: name.to_string(), amount: amount.to_string() })?;
                Scalar(bytes)
            } else {
                let v: f64 = amount.parse().map_err(|_| ResourceError::BadAmount {
                    name: name.to_string(),
                    amount: amount.to_string(),
                    hint: "; write a decimal such as 0.5",
                })?;
                if !v.is_finite() || v.abs() > 1e15 {
                    return Err(ResourceError::TooLarge { name: name.to_string(), amount: amount.to_string() });
                }
                Scalar::from_f64(v)
            };
            r.set(name, value);
        }
        Ok(r)
    }

    /// Builds a bag from (name, amount in thousandths) pairs, as they travel
    /// on the wire: names are checked as in [`Resources::parse`], negative
    /// amounts and names given twice are refused, zero amounts are dropped.
    pub fn from_milli<'a>(items: impl IntoIterator<Item = (&'a str, i64)>) -> Result<Resources, ResourceError> {
        let mut out = Resources::new();
        for (name, milli) in items {
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return Err(ResourceError::BadName { name: name.to_string() });
            }
            if milli < 0 {
                return Err(ResourceError::Negative {
                    name: name.to_string(),
                    amount: (milli as f64 / 1000.0).to_string(),
                });
            }
            if out.get(name) != Scalar::ZERO {
                return Err(ResourceError::Duplicate { name: name.to_string() });
            }
            out.set(name, Scalar(milli));
        }
        Ok(out)
    }

    /// Builder-style: `Resources::new().with(CPUS, Scalar::units(2))`.
    pub fn with(mut self, name: &str, amount: Scalar) -> Resources {
        self.set(name, amount);
        self
    }

    /// `cpus` as a float (0 when absent).
    pub fn cpus(&self) -> f64 {
        self.get(CPUS).as_f64()
    }
    /// `mem` in whole bytes (0 when absent).
    pub fn mem_bytes(&self) -> u64 {
        self.get(MEM).whole().max(0) as u64
    }
    /// `disk` in whole bytes (0 when absent).
    pub fn disk_bytes(&self) -> u64 {
        self.get(DISK).whole().max(0) as u64
    }

    pub fn get(&self, name: &str) -> Scalar {
        match self.items.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) => self.items[i].1,
            Err(_) => Scalar::ZERO,
        }
    }

    /// Sets `name` to `amount`; a zero amount removes the entry. Negative amounts are
    /// clamped to zero: a bag never holds less than nothing.
    pub fn set(&mut self, name: &str, amount: Scalar) {
        let amount = Scalar(amount.0.max(0));
        match self.items.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) if amount.0 == 0 => {
                self.items.remove(i);
            }
            Ok(i) => self.items[i].1 = amount,
            Err(_) if amount.0 == 0 => {}
            Err(i) => self.items.insert(i, (name.into(), amount)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Iterates `(name, amount)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Scalar)> + '_ {
        self.items.iter().map(|(n, v)| (&**n, *v))
    }

    /// Names present, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.items.iter().map(|(n, _)| &**n)
    }

    /// Whether every amount in `other` is available here.
    pub fn contains(&self, other: &Resources) -> bool {
        other.iter().all(|(n, v)| self.get(n) >= v)
    }

    /// `self + other`.
    pub fn add(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.add_assign(other);
        out
    }

    pub fn add_assign(&mut self, other: &Resources) {
        for (n, v) in other.iter() {
            let cur = self.get(n);
            self.set(n, Scalar(cur.0.saturating_add(v.0)));
        }
    }

    /// `self - other`, where amounts that would go negative stop at zero. Use
    /// [`Resources::checked_sub`] when that would be a bug.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.sub_assign(other);
        out
    }

    pub fn sub_assign(&mut self, other: &Resources) {
        for (n, v) in other.iter() {
            let cur = self.get(n);
            self.set(n, Scalar(cur.0 - v.0));
        }
    }

    /// `self - other`, or `None` when `other` is not contained in `self`.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        self.contains(other).then(|| self.saturating_sub(other))
    }

    /// The element-wise minimum.
    pub fn min(&self, other: &Resources) -> Resources {
        let mut out = Resources::new();
        for (n, v) in self.iter() {
            out.set(n, v.min(other.get(n)));
        }
        out
    }

    /// Only the named resources.
    pub fn filter_names(&self, names: &[&str]) -> Resources {
        let mut out = Resources::new();
        for (n, v) in self.iter().filter(|(n, _)| names.contains(n)) {
            out.set(n, v);
        }
        out
    }
}

impl fmt::Display for Resources {
    /// `cpus:2;mem:512MiB`, names in order; the empty bag prints as `{}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return f.write_str("{}");
        }
        for (i, (n, v)) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            if is_byte_resource(n) {
                write!(f, "{n}:{}", format_size(v.whole().max(0) as u64))?;
            } else {
                let mut s = format!("{:.3}", v.as_f64());
                while s.ends_with('0') {
                    s.pop();
                }
                if s.ends_with('.') {
                    s.pop();
                }
                write!(f, "{n}:{s}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resources({self})")
    }
}

impl std::str::FromStr for Resources {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, ResourceError> {
        Resources::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resources {
        Resources::parse(s).unwrap()
    }

    #[test]
    fn parse_and_display_round_trip() {
        for (input, shown) in [
            ("cpus:2;mem:512MiB", "cpus:2;mem:512MiB"),
            ("mem:1GiB; cpus:0.25", "cpus:0.25;mem:1GiB"),
            ("cpus:0.0001", "{}"), // below a thousandth: rounds to nothing
            ("gpus:1;disk:1536MiB", "disk:1536MiB;gpus:1"),
            ("mem:1000", "mem:1000"),
            ("", "{}"),
        ] {
            assert_eq!(r(input).to_string(), shown, "{input}");
            assert_eq!(r(shown.trim_start_matches("{}")), r(input));
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let cases = [
            ("cpus", "no ':'"),
            ("cpus:-1", "negative"),
            ("cpus:x", "not a number"),
            ("mem:12 parsecs", "KiB/MiB"),
            ("cpus:1;cpus:2", "twice"),
            ("CPUS:1", "invalid"),
        ];
        for (input, want) in cases {
            let e = Resources::parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn arithmetic_is_exact() {
        let agent = r("cpus:1;mem:1GiB");
        let mut left = agent.clone();
        for _ in 0..10 {
            left.sub_assign(&r("cpus:0.1;mem:100MiB"));
        }
        // 1 - 10 x 0.1 is exactly zero in thousandths (no float drift)
        assert_eq!(left.get(CPUS), Scalar::ZERO);
        assert_eq!(left.mem_bytes(), (1 << 30) - 10 * 100 * (1 << 20));
        assert!(agent.contains(&r("cpus:1")));
        assert!(!agent.contains(&r("cpus:1.001")));
        assert!(!agent.contains(&r("gpus:1")));
        assert_eq!(agent.checked_sub(&r("cpus:2")), None);
        assert_eq!(r("cpus:1").add(&r("cpus:0.5;mem:1KiB")), r("cpus:1.5;mem:1KiB"));
        assert_eq!(r("cpus:1;mem:2KiB").min(&r("cpus:3;mem:1KiB")), r("cpus:1;mem:1KiB"));
    }
}
