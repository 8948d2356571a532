//! Talking to etcd: one member at a time, fenced writes retried through
//! member failures, paged range reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, Txn, TxnOp};

use super::*;

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
pub(super) async fn fenced(conn: &Conn, fence: &Fence, ops: Vec<TxnOp>) -> Result<i64, RegistryError> {
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

pub(super) fn op_bytes((k, v): &Op) -> usize {
    k.len() + v.as_ref().map_or(0, |v| v.len()) + 16
}

/// Writes `ops` in fenced transactions within `limits`: only the last op
/// of each key (etcd refuses a key twice in one transaction), in the order
/// of those last ops. Not atomic as a whole: whoever applies a log's groups
/// deletes them only after, so a crash halfway is replayed over.
pub(super) async fn apply(conn: &Conn, fence: &Fence, limits: TxnLimits, ops: &[Op]) -> Result<(), RegistryError> {
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
pub(super) const RANGE_PAGE: i64 = 2_000;

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
