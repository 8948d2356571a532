//! The registry on etcd (`wasmos master --etcd`): what several masters share,
//! of which the leader alone writes.
//!
//! Every key is under the cluster's prefix `P` (`--etcd-prefix`, default
//! `/wasmos/`):
//!
//! - `P log/<n>`: the write-ahead log. Each group of batches the writer
//!   commits is one log entry, in one etcd transaction **fenced** on the
//!   leader key: it applies only while `create_revision(leader key)` is the
//!   one this master won the election with, so a deposed leader (paused,
//!   partitioned, slow) can never write once another was elected. A group
//!   larger than `--etcd-max-txn-bytes` is cut into parts, several per
//!   transaction up to `--etcd-max-txn-ops`; a group counts only when all
//!   its parts are there (a leader that died between two parts left a
//!   group nobody acknowledged, which the next load skips and deletes).
//! - `P r/...`: the records, one key each (`r/live/<task id>`,
//!   `r/<table>/<key>`, `r/subend/<submission>`, `r/meta/next_id`). The
//!   leader's checkpointer applies logged groups to them in order, a few
//!   times a second, in fenced transactions bounded the same way, then
//!   deletes the log below what it applied. Re-applying a group is harmless
//!   (every op is a whole record or a removal), so a load replays whatever
//!   log is left over the records.
//! - `P h/...`: ended tasks (`h/task/<seq>`, by listing position, `h/id/<id>`
//!   and `h/fin/<ended ms>/<seq>`), written by the checkpointer like records
//!   and deleted past `--task-history`.
//! - `P meta/epoch`: the leader epoch (bumped by each new leader, fenced);
//!   `P meta/commit`: `EPOCH URL`, rewritten by every log write, so etcd's
//!   history shows which master wrote in which epoch.
//! - `P election/...`: the candidates' keys (etcd's election API), and
//!   `P ca/...`: the cluster CA all masters share.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use wasmos_proto::v1;

use super::records::{Table, task_from_stored, task_to_stored};
use super::*;
use crate::master::types::{Page, TaskFilter, TaskView};

/// One write: a key and its new value (`None`: delete it).
pub(crate) type Op = (String, Option<Vec<u8>>);

/// How big one etcd transaction may be (etcd's own limits are
/// `--max-txn-ops`, default 128, and `--max-request-bytes`, default 1.5 MiB).
#[derive(Debug, Clone, Copy)]
pub struct TxnLimits {
    pub max_ops: usize,
    pub max_bytes: usize,
}

/// Default [`TxnLimits`]: within etcd's defaults.
pub const DEFAULT_TXN_LIMITS: TxnLimits = TxnLimits { max_ops: 128, max_bytes: 1 << 20 };

/// What makes this master the one that may write: the leader key it won
/// the election with.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    pub key: Vec<u8>,
    pub rev: i64,
}

impl Fence {
    fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev)
    }
}

fn eerr(what: &str) -> impl Fn(etcd_client::Error) -> RegistryError + '_ {
    move |e| RegistryError(format!("etcd {what}: {e}"))
}

/// Says a fenced transaction did not apply: another master leads now.
pub(crate) const DEPOSED: &str = "this master is no longer the leader (another was elected)";

mod blobs;
mod conn;
mod log;
mod reading;
#[cfg(test)]
mod tests;

pub(crate) use blobs::EtcdBlobs;
pub(crate) use conn::{Conn, prefix_end, range_all};
use conn::{RANGE_PAGE, apply, fenced, op_bytes};
pub(crate) use log::Image;
#[cfg(test)]
use log::LogPart;
use log::{parts_of, replay};
use reading::EtcdHistory;

fn hex16(n: u64) -> String {
    format!("{n:016x}")
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub p: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let mut p = prefix.to_string();
        if !p.ends_with('/') {
            p.push('/');
        }
        Keys { p }
    }
    pub fn records(&self) -> String {
        format!("{}r/", self.p)
    }
    pub fn log(&self) -> String {
        format!("{}log/", self.p)
    }
    fn log_entry(&self, n: u64) -> String {
        format!("{}log/{}", self.p, hex16(n))
    }
    fn live(&self, id: &str) -> String {
        format!("{}r/live/{id}", self.p)
    }
    fn table(&self, t: Table, key: &str) -> String {
        format!("{}r/{}/{key}", self.p, t.name())
    }
    fn subend(&self, key: &str) -> String {
        format!("{}r/subend/{key}", self.p)
    }
    fn next_id(&self) -> String {
        format!("{}r/meta/next_id", self.p)
    }
    fn h_task(&self, seq: u64) -> String {
        format!("{}h/task/{}", self.p, hex16(seq))
    }
    fn h_id(&self, id: &str) -> String {
        format!("{}h/id/{id}", self.p)
    }
    fn h_fin(&self, ms: u64, seq: u64) -> String {
        format!("{}h/fin/{}/{}", self.p, hex16(ms), hex16(seq))
    }
    pub fn epoch(&self) -> String {
        format!("{}meta/epoch", self.p)
    }
    pub fn commit(&self) -> String {
        format!("{}meta/commit", self.p)
    }
    pub fn leader_since(&self) -> String {
        format!("{}meta/leader", self.p)
    }
    pub fn election(&self) -> String {
        format!("{}election", self.p)
    }
    pub fn ca(&self, what: &str) -> String {
        format!("{}ca/{what}", self.p)
    }
}

/// The writes of one group of changes, in order.
pub(crate) fn ops_of(keys: &Keys, c: &Changes) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::new();
    if c.ids_moved {
        ops.push((keys.next_id(), Some(c.next_id.to_string().into_bytes())));
    }
    for (t, k, v) in super::records::rows(c) {
        ops.push((keys.table(t, &k), v));
    }
    for (id, t) in &c.tasks {
        let rec = wasmos_proto::encode(&task_to_stored(t));
        if t.view.state.is_terminal() {
            let seq = t.view.seq;
            let ms = t.view.finished_at_ms.max(0) as u64;
            ops.push((keys.h_task(seq), Some(rec)));
            ops.push((keys.h_id(id.as_str()), Some(hex16(seq).into_bytes())));
            ops.push((keys.h_fin(ms, seq), Some(id.as_str().as_bytes().to_vec())));
            ops.push((keys.live(id.as_str()), None));
        } else {
            ops.push((keys.live(id.as_str()), Some(rec)));
        }
    }
    for (key, n) in &c.submission_ended {
        ops.push((keys.subend(key), Some(n.to_string().into_bytes())));
    }
    for key in &c.closed_submissions {
        ops.push((keys.table(Table::Submissions, key), None));
        ops.push((keys.subend(key), None));
    }
    ops
}

/// The registry's log writer and checkpointer state (shared with the
/// maintenance thread).
struct Shared {
    conn: Conn,
    rt: tokio::runtime::Handle,
    keys: Keys,
    fence: Fence,
    limits: TxnLimits,
    /// Groups logged and not yet applied to the records: (last log entry, ops).
    pending: Mutex<VecDeque<(u64, Vec<Op>)>>,
    /// Log entries below this may go once applied (incomplete groups a
    /// load skipped).
    garbage_below: Mutex<Option<u64>>,
}

pub(crate) struct Etcd {
    shared: Arc<Shared>,
    epoch: u64,
    /// `EPOCH URL`: what every log write stamps in `meta/commit`.
    stamp: Vec<u8>,
    next_entry: u64,
    next_group: u64,
    /// The image a load was made from (a follower's warm copy), if any.
    image: Option<Image>,
}

impl Etcd {
    /// The registry of the leader that won with `fence` in `epoch`;
    /// `image`: a warm copy to load from instead of reading etcd.
    pub fn new(
        conn: Conn,
        prefix: &str,
        fence: Fence,
        epoch: u64,
        advertise: &str,
        limits: TxnLimits,
        image: Option<Image>,
    ) -> Etcd {
        Etcd {
            shared: Arc::new(Shared {
                conn,
                rt: tokio::runtime::Handle::current(),
                keys: Keys::new(prefix),
                fence,
                limits,
                pending: Mutex::new(VecDeque::new()),
                garbage_below: Mutex::new(None),
            }),
            epoch,
            stamp: format!("{epoch} {advertise}").into_bytes(),
            next_entry: 0,
            next_group: 0,
            image,
        }
    }

    /// Reads everything a start needs (records and log at one revision).
    pub async fn read_image(client: &mut Client, keys: &Keys) -> Result<(Image, i64), RegistryError> {
        let (records, rev) = range_all(client, &keys.records(), 0).await?;
        let (log, _) = range_all(client, &keys.log(), rev).await?;
        let mut image = Image::default();
        for (k, v) in records.into_iter().chain(log) {
            image.apply(keys, &k, Some(v));
        }
        Ok((image, rev))
    }

    pub async fn load_async(&mut self, keep_recent: usize) -> Result<Loaded, RegistryError> {
        let sh = self.shared.clone();
        let keys = &sh.keys;
        let mut client = sh.conn.client();
        let mut image = match self.image.take() {
            Some(i) => i,
            None => Etcd::read_image(&mut client, keys).await?.0,
        };
        // The newest log entry in etcd: a new leader numbers on from there
        // (an image that lacks it is stale: read etcd instead).
        let log = keys.log();
        let newest = client
            .get(
                log.clone(),
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(&log))
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(1)
                        .with_keys_only(),
                ),
            )
            .await
            .map_err(eerr("log"))?
            .kvs()
            .first()
            .and_then(|kv| kv.key_str().ok()?.strip_prefix(&log).and_then(|n| u64::from_str_radix(n, 16).ok()));
        if newest.is_some_and(|n| image.log.keys().next_back().is_none_or(|have| *have < n)) {
            eprintln!("wasmos master: the warm copy lacks the newest log entries; reading the registry from etcd");
            image = Etcd::read_image(&mut client, keys).await?.0;
        }
        let replayed = replay(keys, &mut image)?;
        self.next_entry = replayed.last_entry.max(newest).map_or(0, |n| n + 1);
        {
            let mut pending = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
            for ops in replayed.groups {
                pending.push_back((replayed.last_entry.unwrap_or(0), ops));
            }
            *sh.garbage_below.lock().unwrap_or_else(|e| e.into_inner()) = replayed.last_entry.map(|n| n + 1);
        }
        let mut loaded = Loaded { epoch: self.epoch, ..Loaded::default() };
        // Records.
        let mut ended_counts: HashMap<String, u32> = HashMap::new();
        for (k, v) in image.records.range("subend/".to_string()..) {
            let Some(key) = k.strip_prefix("subend/") else { break };
            ended_counts.insert(key.to_string(), String::from_utf8_lossy(v).parse().unwrap_or(0));
        }
        if let Some(v) = image.records.get("meta/next_id") {
            loaded.next_id = String::from_utf8_lossy(v).parse().unwrap_or(0);
        }
        let mut have = std::collections::HashSet::new();
        for (k, v) in &image.records {
            if let Some(id) = k.strip_prefix("live/") {
                let rec = wasmos_proto::decode::<v1::StoredTask>(v)
                    .ok_or_else(|| RegistryError(format!("task record {id:?} is damaged")))?;
                match task_from_stored(rec) {
                    Ok(t) => {
                        have.insert(t.view.task_id.to_string());
                        loaded.tasks.push(t);
                    }
                    Err((key, why)) => super::records::skip("task", &key, why),
                }
                continue;
            }
            let Some((table, key)) = k.split_once('/') else { continue };
            let Some(t) = Table::ALL.into_iter().find(|t| t.name() == table) else { continue };
            let n = if t == Table::Submissions { ended_counts.get(key).copied().unwrap_or(0) } else { 0 };
            t.decode(key, v, n, &mut loaded)?;
        }
        // The most recently ended tasks: those the log holds, then the history's.
        let mut recent: Vec<TaskRecord> = Vec::new();
        for bytes in replayed.ended.iter().rev() {
            if let Some(t) = wasmos_proto::decode::<v1::StoredTask>(bytes).and_then(|r| task_from_stored(r).ok()) {
                recent.push(t);
            }
        }
        if recent.len() < keep_recent {
            let want = (keep_recent - recent.len()) as i64;
            let fin = format!("{}h/fin/", keys.p);
            let resp = client
                .get(
                    fin.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(prefix_end(&fin))
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(want),
                    ),
                )
                .await
                .map_err(eerr("recent history"))?;
            let seqs: Vec<String> =
                resp.kvs().iter().filter_map(|kv| kv.key_str().ok()?.rsplit('/').next().map(str::to_string)).collect();
            for chunk in seqs.chunks(sh.limits.max_ops.max(2) - 1) {
                let ops: Vec<TxnOp> = chunk.iter().map(|s| TxnOp::get(format!("{}h/task/{s}", keys.p), None)).collect();
                let r = client.txn(Txn::new().and_then(ops)).await.map_err(eerr("recent history"))?;
                for op in r.op_responses() {
                    if let etcd_client::TxnOpResponse::Get(g) = op {
                        for kv in g.kvs() {
                            if let Some(t) = wasmos_proto::decode::<v1::StoredTask>(kv.value())
                                .and_then(|r| task_from_stored(r).ok())
                            {
                                recent.push(t);
                            }
                        }
                    }
                }
            }
        }
        let mut seen_recent = std::collections::HashSet::new();
        for t in recent {
            let id = t.view.task_id.to_string();
            if have.contains(&id) || seen_recent.contains(&id) {
                continue;
            }
            if seen_recent.len() < keep_recent {
                seen_recent.insert(id);
                loaded.tasks.push(t);
            } else {
                // Ended (in the log, not yet in the history) and not loaded:
                // never to be queued again.
                loaded.recorded.insert(id);
            }
        }
        have.extend(seen_recent);
        // Open submissions' tasks that ended a while ago (their position is
        // the number in their id).
        for (sub, _) in &loaded.submissions {
            let from = keys.h_task(sub.first);
            let to = keys.h_task(sub.first + sub.count as u64);
            let (mut page_from, mut more) = (from.into_bytes(), true);
            while more {
                let resp = client
                    .get(
                        page_from.clone(),
                        Some(GetOptions::new().with_range(to.clone()).with_keys_only().with_limit(RANGE_PAGE)),
                    )
                    .await
                    .map_err(eerr("history"))?;
                for kv in resp.kvs() {
                    let n = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.rsplit('/').next())
                        .and_then(|n| u64::from_str_radix(n, 16).ok());
                    if let Some(n) = n {
                        let id = format!("task-{}-{n}", sub.tag);
                        if !have.contains(&id) {
                            loaded.recorded.insert(id);
                        }
                    }
                }
                more = resp.more();
                if let Some(last) = resp.kvs().last() {
                    page_from = last.key().to_vec();
                    page_from.push(0);
                } else {
                    more = false;
                }
            }
        }
        Ok(loaded)
    }

    async fn commit_async(&mut self, changes: &Changes) -> Result<(), RegistryError> {
        let sh = self.shared.clone();
        let ops = ops_of(&sh.keys, changes);
        let group = (self.epoch, self.next_group);
        self.next_group += 1;
        let parts = parts_of(group, ops.clone(), sh.limits.max_bytes);
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut bytes = 0;
        let stamp = TxnOp::put(sh.keys.commit(), self.stamp.clone(), None);
        for p in parts {
            let v = p.encode();
            if !batch.is_empty() && (batch.len() + 2 >= sh.limits.max_ops || bytes + v.len() > sh.limits.max_bytes) {
                batch.push(stamp.clone());
                fenced(&sh.conn, &sh.fence, std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += v.len();
            batch.push(TxnOp::put(sh.keys.log_entry(self.next_entry), v, None));
            self.next_entry += 1;
        }
        batch.push(stamp);
        fenced(&sh.conn, &sh.fence, batch).await?;
        sh.pending.lock().unwrap_or_else(|e| e.into_inner()).push_back((self.next_entry - 1, ops));
        Ok(())
    }
}

/// Runs `f` on the runtime the registry was made on, from a thread that is
/// not one of its workers (the writer thread, a blocking task, a scoped one).
fn block<F: std::future::Future>(rt: &tokio::runtime::Handle, f: F) -> F::Output
where
    F: Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join().expect("registry thread"))
    } else {
        rt.block_on(f)
    }
}

impl Registry for Etcd {
    fn load(&mut self, keep_recent: usize) -> Result<Loaded, RegistryError> {
        let rt = self.shared.rt.clone();
        block(&rt, self.load_async(keep_recent))
    }

    fn commit(&mut self, changes: &Changes) -> Result<(), RegistryError> {
        let rt = self.shared.rt.clone();
        block(&rt, self.commit_async(changes))
    }

    fn maintain(&self, task_history: Duration) {
        let sh = Arc::downgrade(&self.shared);
        std::thread::Builder::new()
            .name("wasmos-checkpoint".into())
            .spawn(move || checkpointer(sh, task_history))
            .expect("spawning the checkpoint thread");
    }

    fn history(&self) -> Arc<dyn History> {
        Arc::new(EtcdHistory {
            conn: self.shared.conn.clone(),
            rt: self.shared.rt.clone(),
            keys: self.shared.keys.clone(),
        })
    }
}

/// How often logged groups are applied to the records.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How often history past `--task-history` is looked for.
const COLLECT_EVERY: Duration = Duration::from_secs(1);
/// Most history records one collection deletes.
const COLLECT_BATCH: i64 = 2_000;

/// The checkpoint thread: applies logged groups to the records and deletes
/// the log below them; deletes history past `task_history`. A fenced write
/// that fails because another master leads stops the process, as the
/// writer does.
fn checkpointer(sh: std::sync::Weak<Shared>, task_history: Duration) {
    let mut last_collect = std::time::Instant::now();
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        let Some(sh) = sh.upgrade() else { return };
        let groups: Vec<(u64, Vec<Op>)> = sh.pending.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        let garbage = sh.garbage_below.lock().unwrap_or_else(|e| e.into_inner()).take();
        let result = block(&sh.rt, async {
            if !groups.is_empty() {
                let ops: Vec<Op> = groups.iter().flat_map(|(_, ops)| ops.iter().cloned()).collect();
                apply(&sh.conn, &sh.fence, sh.limits, &ops).await?;
            }
            let below = groups.iter().map(|(n, _)| n + 1).max().into_iter().chain(garbage).max();
            if let Some(below) = below {
                let del = TxnOp::delete(sh.keys.log(), Some(DeleteOptions::new().with_range(sh.keys.log_entry(below))));
                fenced(&sh.conn, &sh.fence, vec![del]).await?;
            }
            if last_collect.elapsed() >= COLLECT_EVERY {
                last_collect = std::time::Instant::now();
                let before = (crate::master::types::now_ms() - task_history.as_millis() as i64).max(0) as u64;
                collect(&sh, before).await?;
            }
            Ok::<(), RegistryError>(())
        });
        if let Err(e) = result {
            if e.0 == DEPOSED {
                eprintln!("wasmos master: {DEPOSED}; stopping so that nothing is written in an old epoch");
                std::process::exit(75);
            }
            eprintln!("wasmos master: registry checkpoint: {e}; retrying");
            // Put the groups back (in front) to apply again.
            let mut pending = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
            for g in groups.into_iter().rev() {
                pending.push_front(g);
            }
        }
    }
}

/// Deletes history records of tasks that ended before `before_ms`.
async fn collect(sh: &Shared, before_ms: u64) -> Result<(), RegistryError> {
    let mut client = sh.conn.client();
    let fin = format!("{}h/fin/", sh.keys.p);
    let end = format!("{fin}{}", hex16(before_ms));
    let resp = client
        .get(fin.clone(), Some(GetOptions::new().with_range(end).with_limit(COLLECT_BATCH)))
        .await
        .map_err(eerr("history"))?;
    let mut ops: Vec<Op> = Vec::new();
    for kv in resp.kvs() {
        let (Ok(k), Ok(id)) = (kv.key_str(), kv.value_str()) else { continue };
        let Some(seq) = k.rsplit('/').next().and_then(|s| u64::from_str_radix(s, 16).ok()) else { continue };
        ops.push((sh.keys.h_task(seq), None));
        ops.push((sh.keys.h_id(id), None));
        ops.push((k.to_string(), None));
    }
    apply(&sh.conn, &sh.fence, sh.limits, &ops).await
}
