//! Value parsers shared by the subcommands' flags (sizes, durations, K=V).

use std::time::Duration;

use wasmos_model::{Resources, parse_duration, parse_size};

/// `64MiB`, `1GiB`, `4096`.
pub fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// `500ms`, `30s`, `2m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// `K=V` (the value may be empty or contain `=`).
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not K=V; write e.g. --env NAME=value")),
    }
}

/// `cpus:2;mem:4GiB` (not empty).
pub fn resources(s: &str) -> Result<Resources, String> {
    let r = Resources::parse(s).map_err(|e| e.to_string())?;
    if r.is_empty() {
        return Err("resources are empty; give e.g. cpus:2;mem:4GiB".into());
    }
    Ok(r)
}
