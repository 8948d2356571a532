//! Sizes (`512MiB`), durations (`30s`) and task limits.

use std::time::Duration;

/// Default `mem` limit of a task: 256 MiB of linear memory plus tables.
pub const DEFAULT_MEM: u64 = 256 << 20;
/// Default wall-clock `timeout` of a task: 60 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_output` per stream (stdout, stderr): 1 MiB.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;

/// Why a size or duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("size {0:?} is not valid; write bytes or a number with KiB/MiB/GiB/TiB (also KB/MB/GB), e.g. 64MiB")]
    BadSize(String),
    #[error("duration {0:?} is not valid; write a number with ms, s, m, h or d, e.g. 500ms, 30s or 7d")]
    BadDuration(String),
}

/// Parses `1024`, `64KiB`, `1.5GiB`, `512MB`, `2g`. Binary and decimal units are
/// both read as binary (as Mesos and most operators expect for memory).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(UnitError::BadSize(s.to_string())),
    };
    if num.is_empty() {
        return Err(UnitError::BadSize(s.to_string()));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| UnitError::BadSize(s.to_string()));
    }
    let f: f64 = num.parse().map_err(|_| UnitError::BadSize(s.to_string()))?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(UnitError::BadSize(s.to_string()));
    }
    Ok(v.round() as u64)
}

/// Formats bytes with the largest binary unit that divides them exactly, so the
/// result parses back to the same number: `512MiB`, `1536KiB`, `1000`.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        let m = 1u64 << shift;
        if bytes >= m && bytes.is_multiple_of(m) {
            return format!("{}{unit}", bytes / m);
        }
    }
    bytes.to_string()
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `7d`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs_per: f64 = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(UnitError::BadDuration(s.to_string())),
    };
    let f: f64 = num.parse().map_err(|_| UnitError::BadDuration(s.to_string()))?;
    let secs = f * secs_per;
    if !secs.is_finite() || !(0.0..=10.0 * 365.0 * 86400.0).contains(&secs) {
        return Err(UnitError::BadDuration(s.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `250ms`, `30s`, `2m`, `1.5s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// The hard limits of one task run. Every field has a default (see the constants).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Total instruction budget; `None` = unlimited.
    pub fuel: Option<u64>,
    /// Max bytes of linear memory plus tables. Default [`DEFAULT_MEM`].
    pub mem: u64,
    /// Wall-clock limit, not counting time spent paused. Default [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// Max bytes kept per output stream; the rest is dropped and reported as
    /// truncated. Default [`DEFAULT_MAX_OUTPUT`].
    pub max_output: u64,
    /// Count fuel even without a budget (deterministic accounting: identical
    /// work, identical fuel). A budget implies it. Off by default: counting
    /// fuel makes tight loops about twice as slow.
    #[serde(default)]
    pub meter_fuel: bool,
}

impl Limits {
    /// Whether the run counts fuel.
    pub fn metered(&self) -> bool {
        self.fuel.is_some() || self.meter_fuel
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: None,
            mem: DEFAULT_MEM,
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
            meter_fuel: false,
        }
    }
}

impl Limits {
    /// Limits as they travel on the wire and through WIT: a zero `mem`,
    /// `timeout_ms` or `max_output` means the default.
    pub fn or_defaults(fuel: Option<u64>, mem: u64, timeout_ms: u64, max_output: u64) -> Limits {
        let d = Limits::default();
        Limits {
            fuel,
            mem: if mem == 0 { d.mem } else { mem },
            timeout: if timeout_ms == 0 { d.timeout } else { Duration::from_millis(timeout_ms) },
            max_output: if max_output == 0 { d.max_output } else { max_output },
            meter_fuel: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, n) in [
            ("0", 0),
            ("1024", 1024),
            ("64KiB", 64 << 10),
            ("64kb", 64 << 10),
            ("1.5GiB", 3 << 29),
            ("256 MiB", 256 << 20),
            ("2g", 2 << 30),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["", "MiB", "-1", "12 parsecs", "1.2.3MiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for n in [0u64, 1000, 1024, 1536 << 10, 256 << 20, 5 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(256 << 20), "256MiB");
    }

    #[test]
    fn durations() {
        for (s, ms) in
            [("500ms", 500), ("30s", 30_000), ("2m", 120_000), ("1.5s", 1500), ("7", 7000), ("2d", 172_800_000)]
        {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "s", "-1s", "10 fortnights"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("ms, s, m, h or d"), "{e}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds
/// (`2026-11-18T11:06:40.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod rfc3339_tests {
    #[test]
    fn with_millis() {
        assert_eq!(super::rfc3339_ms(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(super::rfc3339_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(super::rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
