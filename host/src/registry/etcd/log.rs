//! The write-ahead log's entries, and replaying them over the records.

use std::collections::BTreeMap;

use super::*;

/// A log entry: part `part` of `parts` of group `group`, and its ops.
#[derive(Debug, PartialEq)]
pub(crate) struct LogPart {
    pub group: (u64, u64),
    pub part: u32,
    pub parts: u32,
    pub ops: Vec<Op>,
}

const LOG_MAGIC: &[u8; 4] = b"WLG1";

impl LogPart {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 + self.ops.iter().map(op_bytes).sum::<usize>());
        b.extend_from_slice(LOG_MAGIC);
        b.extend_from_slice(&self.group.0.to_le_bytes());
        b.extend_from_slice(&self.group.1.to_le_bytes());
        b.extend_from_slice(&self.part.to_le_bytes());
        b.extend_from_slice(&self.parts.to_le_bytes());
        for (k, v) in &self.ops {
            b.extend_from_slice(&(k.len() as u32).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            match v {
                Some(v) => {
                    b.push(1);
                    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    b.extend_from_slice(v);
                }
                None => b.push(0),
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<LogPart> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Some(h)
        }
        let mut b = b;
        if take(&mut b, 4)? != LOG_MAGIC {
            return None;
        }
        let u64_ = |b: &mut &[u8]| Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?));
        let u32_ = |b: &mut &[u8]| Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?));
        let group = (u64_(&mut b)?, u64_(&mut b)?);
        let part = u32_(&mut b)?;
        let parts = u32_(&mut b)?;
        let mut ops = Vec::new();
        while !b.is_empty() {
            let n = u32_(&mut b)? as usize;
            let k = String::from_utf8(take(&mut b, n)?.to_vec()).ok()?;
            let v = match take(&mut b, 1)?[0] {
                0 => None,
                _ => {
                    let n = u32_(&mut b)? as usize;
                    Some(take(&mut b, n)?.to_vec())
                }
            };
            ops.push((k, v));
        }
        Some(LogPart { group, part, parts, ops })
    }
}

/// Splits a group's ops into log parts of at most `max_bytes` each.
pub(super) fn parts_of(group: (u64, u64), ops: Vec<Op>, max_bytes: usize) -> Vec<LogPart> {
    let mut chunks: Vec<Vec<Op>> = vec![Vec::new()];
    let mut bytes = 0;
    for op in ops {
        let b = op_bytes(&op);
        if bytes + b > max_bytes && !chunks.last().is_some_and(|c| c.is_empty()) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += b;
        chunks.last_mut().expect("one chunk").push(op);
    }
    let parts = chunks.len() as u32;
    chunks.into_iter().enumerate().map(|(i, ops)| LogPart { group, part: i as u32, parts, ops }).collect()
}

/// The state a load starts from: the records, the log over them, and the
/// recently ended tasks the log holds (`h/task/...` writes not yet applied).
#[derive(Debug, Default)]
pub(crate) struct Image {
    /// `r/...` keys (without the prefix) and values.
    pub records: BTreeMap<String, Vec<u8>>,
    /// Log entries by number.
    pub log: BTreeMap<u64, Vec<u8>>,
}

impl Image {
    /// Applies a put (`Some`) or delete of a full key under `keys`.
    pub fn apply(&mut self, keys: &Keys, key: &str, value: Option<Vec<u8>>) {
        if let Some(rest) = key.strip_prefix(&keys.records()) {
            match value {
                Some(v) => self.records.insert(rest.to_string(), v),
                None => self.records.remove(rest),
            };
        } else if let Some(n) = key.strip_prefix(&keys.log()).and_then(|n| u64::from_str_radix(n, 16).ok()) {
            match value {
                Some(v) => self.log.insert(n, v),
                None => self.log.remove(&n),
            };
        }
    }
}

/// What replaying the log gives: complete groups in order (to apply again),
/// the log numbers of everything read, and ended tasks written by them.
pub(super) struct Replay {
    pub(super) groups: Vec<Vec<Op>>,
    pub(super) last_entry: Option<u64>,
    pub(super) ended: Vec<Vec<u8>>,
}

pub(super) fn replay(keys: &Keys, image: &mut Image) -> Result<Replay, RegistryError> {
    let mut by_group: BTreeMap<(u64, u64), (u32, Vec<LogPart>, u64)> = BTreeMap::new();
    let mut order: Vec<(u64, u64)> = Vec::new();
    for (n, bytes) in &image.log {
        let part = LogPart::decode(bytes).ok_or_else(|| RegistryError(format!("log entry {n:x} is damaged")))?;
        let e = by_group.entry(part.group).or_insert_with(|| {
            order.push(part.group);
            (part.parts, Vec::new(), *n)
        });
        e.1.push(part);
    }
    let last_entry = image.log.keys().next_back().copied();
    let mut groups = Vec::new();
    let mut ended = Vec::new();
    let h_task = format!("{}h/task/", keys.p);
    for g in order {
        let (parts, mut got, _) = by_group.remove(&g).expect("listed");
        if got.len() as u32 != parts {
            eprintln!(
                "wasmos master: registry log group {}.{} is incomplete (its leader died writing it); skipping it",
                g.0, g.1
            );
            continue;
        }
        got.sort_by_key(|p| p.part);
        let ops: Vec<Op> = got.into_iter().flat_map(|p| p.ops).collect();
        for (k, v) in &ops {
            image.apply(keys, k, v.clone());
            if k.starts_with(&h_task)
                && let Some(v) = v
            {
                ended.push(v.clone());
            }
        }
        groups.push(ops);
    }
    Ok(Replay { groups, last_entry, ended })
}
