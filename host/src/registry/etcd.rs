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

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// A client of the etcd cluster that talks to one member at a time and
/// moves to the next one after a failure (as etcd's Go client pins one
/// endpoint): etcd-client's own balanced channel keeps sending calls to a
/// member that is down.
#[derive(Clone)]
pub(crate) struct Conn(Arc<ConnInner>);

struct ConnInner {
    endpoints: Vec<String>,
    opts: Option<etcd_client::ConnectOptions>,
    /// The member in use (its index) and its client.
    now: std::sync::RwLock<(usize, Client)>,
    last: tokio::sync::Mutex<std::time::Instant>,
}

/// How long a member has to answer before the next one is tried.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

impl Conn {
    /// The first member, from `start` on, that answers.
    async fn open(
        endpoints: &[String],
        opts: &Option<etcd_client::ConnectOptions>,
        start: usize,
    ) -> Result<(usize, Client), etcd_client::Error> {
        let mut last = None;
        for k in 0..endpoints.len() {
            let i = (start + k) % endpoints.len();
            match Client::connect([&endpoints[i]], opts.clone()).await {
                Ok(c) => match tokio::time::timeout(MEMBER_TIMEOUT, c.clone().status()).await {
                    Ok(Ok(_)) => return Ok((i, c)),
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => last = Some(etcd_client::Error::InvalidArgs(format!("{} did not answer", endpoints[i]))),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint given".into())))
    }

    pub async fn connect(
        endpoints: &[String],
        opts: Option<etcd_client::ConnectOptions>,
    ) -> Result<Conn, etcd_client::Error> {
        let now = Conn::open(endpoints, &opts, 0).await?;
        Ok(Conn(Arc::new(ConnInner {
            endpoints: endpoints.to_vec(),
            opts,
            now: std::sync::RwLock::new(now),
            last: tokio::sync::Mutex::new(std::time::Instant::now()),
        })))
    }

    pub fn client(&self) -> Client {
        self.0.now.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// After a failed call: the next member that answers (at most every 100 ms).
    pub async fn reconnect(&self) {
        let mut last = self.0.last.lock().await;
        if last.elapsed() < Duration::from_millis(100) {
            return;
        }
        let from = self.0.now.read().unwrap_or_else(|e| e.into_inner()).0 + 1;
        if let Ok(now) = Conn::open(&self.0.endpoints, &self.0.opts, from).await {
            *self.0.now.write().unwrap_or_else(|e| e.into_inner()) = now;
        }
        *last = std::time::Instant::now();
    }
}

/// How long a fenced write is retried through etcd failures (a member
/// killed or hanging, a raft election) before the master gives up on it...
const WRITE_RETRY: Duration = Duration::from_secs(8);
/// ...each attempt on one member at most this long.
const WRITE_ATTEMPT: Duration = Duration::from_secs(2);

/// Runs `txn` fenced; an error if it did not apply. A call that fails is
/// made again (on a fresh client) for up to [`WRITE_RETRY`]: every write
/// here is a whole value, so one applied twice is applied once.
async fn fenced(conn: &Conn, fence: &Fence, ops: Vec<TxnOp>) -> Result<i64, RegistryError> {
    let deadline = std::time::Instant::now() + WRITE_RETRY;
    loop {
        let txn = Txn::new().when(vec![fence.compare()]).and_then(ops.clone());
        let attempt = tokio::time::timeout(WRITE_ATTEMPT, conn.client().txn(txn)).await;
        let attempt = attempt.unwrap_or_else(|_| Err(etcd_client::Error::InvalidArgs("no answer within 2 s".into())));
        match attempt {
            Ok(resp) if resp.succeeded() => return Ok(resp.header().map(|h| h.revision()).unwrap_or(0)),
            Ok(_) => return Err(RegistryError(DEPOSED.into())),
            Err(e) if std::time::Instant::now() >= deadline => return Err(eerr("txn")(e)),
            Err(_) => {
                conn.reconnect().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn txn_op((k, v): &Op) -> TxnOp {
    match v {
        Some(v) => TxnOp::put(k.clone(), v.clone(), None),
        None => TxnOp::delete(k.clone(), None),
    }
}

fn op_bytes((k, v): &Op) -> usize {
    k.len() + v.as_ref().map_or(0, |v| v.len()) + 16
}

/// Writes `ops` in fenced transactions within `limits`: only the last op
/// of each key (etcd refuses a key twice in one transaction), in the order
/// of those last ops. Not atomic as a whole: whoever applies a log's groups
/// deletes them only after, so a crash halfway is replayed over.
async fn apply(conn: &Conn, fence: &Fence, limits: TxnLimits, ops: &[Op]) -> Result<(), RegistryError> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, (k, _)) in ops.iter().enumerate() {
        last.insert(k.as_str(), i);
    }
    let ops: Vec<&Op> =
        ops.iter().enumerate().filter(|(i, (k, _))| last.get(k.as_str()) == Some(i)).map(|(_, op)| op).collect();
    let mut batch: Vec<TxnOp> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let b = op_bytes(op);
        if !batch.is_empty() && (batch.len() + 1 >= limits.max_ops || bytes + b > limits.max_bytes) {
            fenced(conn, fence, std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
        batch.push(txn_op(op));
        bytes += b;
    }
    if !batch.is_empty() {
        fenced(conn, fence, batch).await?;
    }
    Ok(())
}

/// Every key-value under `prefix`, page by page, at one revision (0: now);
/// returns them and the revision read.
pub(crate) async fn range_all(
    client: &mut Client,
    prefix: &str,
    revision: i64,
) -> Result<(Vec<(String, Vec<u8>)>, i64), RegistryError> {
    let end = prefix_end(prefix);
    let mut out = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut rev = revision;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(RANGE_PAGE);
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        let resp = client.get(from.clone(), Some(opts)).await.map_err(eerr("range"))?;
        if rev == 0 {
            rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            out.push((String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec()));
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((out, rev)),
        }
    }
}

/// Keys per page of a range read.
const RANGE_PAGE: i64 = 2_000;

/// The first key after every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

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
fn parts_of(group: (u64, u64), ops: Vec<Op>, max_bytes: usize) -> Vec<LogPart> {
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
struct Replay {
    groups: Vec<Vec<Op>>,
    last_entry: Option<u64>,
    ended: Vec<Vec<u8>>,
}

fn replay(keys: &Keys, image: &mut Image) -> Result<Replay, RegistryError> {
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

/// Reads ended tasks from etcd (any master may; only the leader is asked).
struct EtcdHistory {
    conn: Conn,
    rt: tokio::runtime::Handle,
    keys: Keys,
}

impl History for EtcdHistory {
    fn get(&self, id: &str) -> Result<Option<TaskView>, RegistryError> {
        let mut client = self.conn.client();
        block(&self.rt, async {
            for key in [self.keys.live(id), self.keys.h_id(id)] {
                let resp = client.get(key.clone(), None).await.map_err(eerr("get"))?;
                let Some(kv) = resp.kvs().first() else { continue };
                let bytes = if key.contains("/h/id/") {
                    let seq = u64::from_str_radix(kv.value_str().unwrap_or(""), 16).unwrap_or(0);
                    let r = client.get(self.keys.h_task(seq), None).await.map_err(eerr("get"))?;
                    match r.kvs().first() {
                        Some(kv) => kv.value().to_vec(),
                        None => continue,
                    }
                } else {
                    kv.value().to_vec()
                };
                let rec = wasmos_proto::decode::<v1::StoredTask>(&bytes)
                    .ok_or_else(|| RegistryError(format!("task record {id:?} is damaged")))?;
                return Ok(task_from_stored(rec).ok().map(|t| t.view));
            }
            Ok(None)
        })
    }

    fn page(
        &self,
        after: u64,
        filter: &TaskFilter,
        limit: usize,
        budget: usize,
    ) -> Result<Page<TaskView>, RegistryError> {
        let mut client = self.conn.client();
        block(&self.rt, async {
            let mut page = Page::default();
            let mut last = after;
            let mut scanned = 0;
            let end = prefix_end(&format!("{}h/task/", self.keys.p));
            loop {
                let want = (limit.saturating_mul(2).clamp(64, 2048)).min(budget.max(1)) as i64;
                let from = self.keys.h_task(last.saturating_add(1));
                let resp = client
                    .get(from, Some(GetOptions::new().with_range(end.clone()).with_limit(want)))
                    .await
                    .map_err(eerr("history"))?;
                if resp.kvs().is_empty() {
                    return Ok(page);
                }
                for kv in resp.kvs() {
                    if page.rows.len() >= limit || scanned >= budget {
                        page.next = Some(last);
                        return Ok(page);
                    }
                    scanned += 1;
                    let seq = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.rsplit('/').next())
                        .and_then(|s| u64::from_str_radix(s, 16).ok());
                    last = seq.unwrap_or(last + 1);
                    let Some(rec) = wasmos_proto::decode::<v1::StoredTask>(kv.value()) else { continue };
                    let Ok(t) = task_from_stored(rec) else { continue };
                    if filter.matches(&t.view) {
                        page.rows.push(t.view);
                    }
                }
                if !resp.more() {
                    return Ok(page);
                }
            }
        })
    }
}

/// Modules in etcd (`P artm/<sha>`: size, written last; `P artc/<sha>/<n>`:
/// the bytes, cut to fit a transaction): what lets any master serve a module
/// another one took. Writes are fenced like the registry's.
pub(crate) struct EtcdBlobs {
    pub conn: Conn,
    pub fence: Fence,
    pub keys: Keys,
    pub rt: tokio::runtime::Handle,
    pub limits: TxnLimits,
}

impl EtcdBlobs {
    fn manifest(&self, hash: &str) -> String {
        format!("{}artm/{hash}", self.keys.p)
    }
    fn chunks(&self, hash: &str) -> String {
        format!("{}artc/{hash}/", self.keys.p)
    }
}

impl crate::artifacts::SharedBlobs for EtcdBlobs {
    fn list(&self) -> Result<Vec<(String, u64)>, String> {
        let prefix = format!("{}artm/", self.keys.p);
        let mut client = self.conn.client();
        let (kvs, _) = block(&self.rt, range_all(&mut client, &prefix, 0)).map_err(|e| e.0)?;
        Ok(kvs
            .into_iter()
            .filter_map(|(k, v)| {
                let hash = k.strip_prefix(&prefix)?.to_string();
                Some((hash, String::from_utf8_lossy(&v).parse().ok()?))
            })
            .collect())
    }

    fn put(&self, hash: &str, bytes: &[u8]) -> Result<(), String> {
        let chunk = self.limits.max_bytes.saturating_sub(1024).max(1024);
        block(&self.rt, async {
            for (i, c) in bytes.chunks(chunk).enumerate() {
                let key = format!("{}{i:08x}", self.chunks(hash));
                fenced(&self.conn, &self.fence, vec![TxnOp::put(key, c.to_vec(), None)]).await?;
            }
            let m = TxnOp::put(self.manifest(hash), bytes.len().to_string(), None);
            fenced(&self.conn, &self.fence, vec![m]).await.map(|_| ())
        })
        .map_err(|e| e.0)
    }

    fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, String> {
        let mut client = self.conn.client();
        block(&self.rt, async {
            let m = client.get(self.manifest(hash), None).await.map_err(|e| e.to_string())?;
            if m.kvs().is_empty() {
                return Ok(None);
            }
            let (kvs, _) = range_all(&mut client, &self.chunks(hash), 0).await.map_err(|e| e.0)?;
            Ok(Some(kvs.into_iter().flat_map(|(_, v)| v).collect()))
        })
    }

    fn delete(&self, hashes: &[String]) {
        let r = block(&self.rt, async {
            for h in hashes {
                let ops = vec![
                    TxnOp::delete(self.manifest(h), None),
                    TxnOp::delete(self.chunks(h), Some(DeleteOptions::new().with_prefix())),
                ];
                fenced(&self.conn, &self.fence, ops).await?;
            }
            Ok::<(), RegistryError>(())
        });
        if let Err(e) = r {
            eprintln!("wasmos master: deleting collected modules from etcd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_parts_round_trip_and_split_by_bytes() {
        let ops: Vec<Op> =
            (0..10).map(|i| (format!("/w/r/live/task-{i}"), (i % 3 != 0).then(|| vec![i as u8; 100]))).collect();
        let parts = parts_of((3, 7), ops.clone(), 400);
        assert!(parts.len() > 1, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.parts == parts.len() as u32 && p.group == (3, 7)));
        let back: Vec<Op> = parts.iter().flat_map(|p| LogPart::decode(&p.encode()).unwrap().ops).collect();
        assert_eq!(back, ops);
        assert_eq!(LogPart::decode(b"WLG1\x01"), None);
    }

    #[test]
    fn a_load_replays_complete_groups_over_the_records_and_skips_an_incomplete_one() {
        let keys = Keys::new("/w");
        let mut image = Image::default();
        image.apply(&keys, "/w/r/roles/a", Some(b"old".to_vec()));
        let g1 = parts_of(
            (1, 0),
            vec![("/w/r/roles/a".into(), Some(b"new".to_vec())), ("/w/r/roles/b".into(), Some(b"b".to_vec()))],
            1 << 20,
        );
        // Group 2 has two parts; only the first was written.
        let mut g2 =
            parts_of((1, 1), vec![("/w/r/roles/a".into(), None), ("/w/r/roles/c".into(), Some(vec![0; 64]))], 40);
        assert_eq!(g2.len(), 2);
        g2.pop();
        for (n, p) in g1.iter().chain(g2.iter()).enumerate() {
            image.apply(&keys, &keys.log_entry(n as u64), Some(p.encode()));
        }
        let r = replay(&keys, &mut image).unwrap();
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.last_entry, Some(1));
        assert_eq!(image.records.get("roles/a").map(Vec::as_slice), Some(&b"new"[..]));
        assert!(image.records.contains_key("roles/b"));
        assert!(!image.records.contains_key("roles/c"));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/w/r/"), b"/w/r0".to_vec());
    }
}
