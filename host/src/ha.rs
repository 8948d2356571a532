//! Several masters on etcd (`wasmos master --etcd URL,...`): leader
//! election, fencing, followers that answer with the leader's address, and
//! `Masters.List`.
//!
//! Each master holds an etcd lease (`--etcd-lease-ttl`, kept alive three
//! times a TTL) and campaigns with etcd's election API under `P election`,
//! its `--advertise` URL as the value. Until it wins it is a follower: its
//! listener answers every gRPC call `UNAVAILABLE` with the leader's URL in
//! the `wasmos-leader` header (clients given several URLs switch to it), a
//! browser's GET with a redirect, and `Masters.List` itself. Meanwhile it
//! keeps a warm copy of the registry (records and log) by watching etcd.
//!
//! Once elected it bumps the epoch (`P meta/epoch`) in a transaction fenced
//! on its leader key, loads the registry from its warm copy (or from etcd
//! when the copy lags), starts the master on it and serves. Every write it
//! makes from then on is fenced the same way ([`crate::registry::etcd`]).
//! A master that loses its lease, or finds a fenced write refused, exits
//! (as a Mesos master does when it loses leadership): a supervisor restarts
//! it as a follower, and nothing it still held in memory is written.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use tokio::net::TcpListener;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use wasmos_proto::v1;

use crate::registry::etcd::{Conn, Etcd, Fence, Image, Keys, TxnLimits};
use crate::{MasterConfig, Transport};

/// Default [`HaConfig::lease_ttl`]: a dead leader's lease runs out within
/// about a second (etcd rounds a TTL up to 1.5 election timeouts: start
/// etcd with `--election-timeout` 600 ms or less for 1 s).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(1);

/// How a master joins the others on etcd.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// The URL clients and agents reach this master by.
    pub advertise: String,
    /// Key prefix of this cluster in etcd. Default `/wasmos/`.
    pub prefix: String,
    /// The leader's lease. Default 1 s.
    pub lease_ttl: Duration,
    /// etcd's CA (PEM) for `https://` endpoints, and a client certificate
    /// and key (PEM) when etcd asks for one.
    pub etcd_ca_pem: Option<String>,
    pub etcd_identity: Option<(String, String)>,
    /// Bounds of one etcd transaction.
    pub txn_limits: TxnLimits,
    /// The leader compacts etcd's history this often, to the revision of
    /// one period ago (zero: never; then run etcd with its own
    /// `--auto-compaction-retention`, or its database fills). Default 5 min.
    pub compact_every: Duration,
}

/// Default [`HaConfig::compact_every`].
pub const DEFAULT_COMPACT_EVERY: Duration = Duration::from_secs(300);

/// Deadline of every etcd call but the campaign.
const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit status of a master that lost its leadership (or its lease).
pub const EXIT_DEPOSED: i32 = 75;

fn stop(why: &str) -> ! {
    eprintln!(
        "wasmos master: {why}; exiting so that nothing is written in an old epoch (a supervisor restarts it as a follower)"
    );
    std::process::exit(EXIT_DEPOSED)
}

/// A client of the etcd cluster; `timeout`: the deadline of every call
/// (none for the campaign's, which waits for as long as another leads).
async fn connect(ha: &HaConfig, timeout: Option<Duration>) -> Result<Conn, String> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // etcd closes connections that ping more often than its
        // --grpc-keepalive-min-time (5 s); the lease loop has its own clock.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if ha.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &ha.etcd_ca_pem {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &ha.etcd_identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    if let Some(t) = timeout {
        opts = opts.with_timeout(t);
    }
    Conn::connect(&ha.endpoints, Some(opts))
        .await
        .map_err(|e| format!("cannot reach etcd at {}: {e}; check --etcd", ha.endpoints.join(",")))
}

/// Makes every master use the same cluster CA: the first to start puts its
/// own in etcd; the others (and it, after a restart) write etcd's into
/// `dir` (ca.pem, ca.key, cluster) before their TLS is made from it.
async fn share_ca(client: &mut Client, keys: &Keys, dir: &std::path::Path) -> Result<(), String> {
    let files = ["ca.pem", "ca.key", "cluster"];
    for _ in 0..3 {
        let got = client
            .get(keys.ca(""), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("etcd: reading the cluster CA: {e}"))?;
        if got.kvs().len() == files.len() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for kv in got.kvs() {
                let name = kv.key_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
                if files.contains(&name.as_str()) {
                    let mode = if name == "ca.key" { 0o600 } else { 0o644 };
                    let path = dir.join(&name);
                    if std::fs::read(&path).ok().as_deref() != Some(kv.value()) {
                        wasmos_security::pki::write_atomic(&path, kv.value(), mode)?;
                    }
                }
            }
            return Ok(());
        }
        // None yet: offer ours (made now if need be).
        wasmos_security::pki::Pki::load_or_create(dir, &[]).map_err(|e| e.to_string())?;
        let mut puts = Vec::new();
        for f in files {
            let bytes = std::fs::read(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()))?;
            puts.push(TxnOp::put(keys.ca(f), bytes, None));
        }
        let first = Compare::create_revision(keys.ca("ca.pem"), CompareOp::Equal, 0);
        client.txn(Txn::new().when(vec![first]).and_then(puts)).await.map_err(|e| format!("etcd: {e}"))?;
    }
    Err("etcd: the cluster CA keys under the prefix are incomplete; delete PREFIX/ca/ and start again".into())
}

/// Who leads, as this master last saw it.
#[derive(Debug, Default)]
struct View {
    leader: RwLock<String>,
}

/// The listener's two faces: the leader's routes once elected, else the
/// follower's answers.
struct Switch {
    leader: OnceLock<axum::Router>,
    view: Arc<View>,
}

/// grpc-message encoding: printable ASCII but `%`, else %XX.
fn percent(msg: &str) -> String {
    msg.bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn dispatch(sw: Arc<Switch>, req: Request<axum::body::Body>) -> Response {
    use tower::ServiceExt;
    if let Some(r) = sw.leader.get() {
        return match r.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
    }
    let leader = sw.view.leader.read().unwrap_or_else(|e| e.into_inner()).clone();
    let grpc = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let msg = if leader.is_empty() {
        "no master leads yet (an election is under way); retry shortly".to_string()
    } else {
        format!("this master is a follower; the leader is {leader}")
    };
    if grpc {
        let mut r = Response::new(axum::body::Body::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        if let Ok(v) = HeaderValue::from_str(&percent(&msg)) {
            h.insert("grpc-message", v);
        }
        if let Ok(v) = HeaderValue::from_str(&leader) {
            h.insert("wasmos-leader", v);
        }
        return r;
    }
    if !leader.is_empty() && req.method() == axum::http::Method::GET {
        let to = format!("{}{}", leader.trim_end_matches('/'), req.uri().path_and_query().map_or("/", |p| p.as_str()));
        if let Ok(v) = HeaderValue::from_str(&to) {
            return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response();
        }
    }
    (StatusCode::SERVICE_UNAVAILABLE, msg).into_response()
}

/// `Masters.List`, on every master. Anyone may call it (it is how clients
/// find the leader), so an answer read from etcd serves for
/// [`MASTERS_CACHE`]: callers cannot turn it into load on etcd.
#[derive(Clone)]
pub(crate) struct MastersSvc {
    ha: Option<(Conn, Keys, String)>,
    epoch: u64,
    cache: Arc<tokio::sync::Mutex<Option<(Instant, v1::ListMastersResponse)>>>,
}

/// How long one `Masters.List` answer from etcd is reused.
const MASTERS_CACHE: Duration = Duration::from_millis(200);

/// A single master's routes for `Masters.List` (it is its own leader).
pub(crate) fn single_master_routes(epoch: u64) -> v1::masters_server::MastersServer<MastersSvc> {
    v1::masters_server::MastersServer::new(MastersSvc { ha: None, epoch, cache: Default::default() })
}

#[tonic::async_trait]
impl v1::masters_server::Masters for MastersSvc {
    async fn list(
        &self,
        _: GrpcRequest<v1::ListMastersRequest>,
    ) -> Result<GrpcResponse<v1::ListMastersResponse>, Status> {
        let Some((conn, keys, me)) = &self.ha else {
            return Ok(GrpcResponse::new(v1::ListMastersResponse { epoch: self.epoch, ..Default::default() }));
        };
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = cache.as_ref()
            && at.elapsed() < MASTERS_CACHE
        {
            return Ok(GrpcResponse::new(r.clone()));
        }
        let mut client = conn.client();
        let unavailable = |e: etcd_client::Error| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.reconnect().await });
            Status::unavailable(format!("etcd: {e}"))
        };
        let candidates = client
            .get(
                format!("{}/", keys.election()),
                Some(GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend)),
            )
            .await
            .map_err(unavailable)?;
        let mut out = v1::ListMastersResponse { answered_by: me.clone(), ha: true, ..Default::default() };
        for (i, kv) in candidates.kvs().iter().enumerate() {
            let url = kv.value_str().unwrap_or("").to_string();
            if i == 0 {
                out.leader = url.clone();
            }
            out.masters.push(v1::MasterInfo { url, leader: i == 0 });
        }
        let meta = client.get(keys.leader_since(), None).await.map_err(unavailable)?;
        if let Some(kv) = meta.kvs().first() {
            let v = kv.value_str().unwrap_or("");
            let mut it = v.splitn(3, ' ');
            let (epoch, since, url) = (it.next(), it.next(), it.next());
            // The record is the elected leader's; while a new election runs
            // the first candidate has not written its own yet.
            if url == Some(out.leader.as_str()) {
                out.epoch = epoch.and_then(|e| e.parse().ok()).unwrap_or(0);
                out.leader_since_ms = since.and_then(|s| s.parse().ok()).unwrap_or(0);
            }
        }
        *cache = Some((Instant::now(), out.clone()));
        Ok(GrpcResponse::new(out))
    }
}

/// A follower's warm copy of the registry: the records and log, kept by
/// watching etcd from the revision they were read at.
#[derive(Default)]
struct Warm {
    image: Mutex<Option<Image>>,
    /// The revision the copy is complete up to.
    rev: AtomicI64,
}

async fn follow(conn: Conn, keys: Keys, warm: Arc<Warm>) {
    loop {
        let mut client = conn.client();
        let (image, rev) = match Etcd::read_image(&mut client, &keys).await {
            Ok(x) => x,
            Err(_) => {
                conn.reconnect().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        *warm.image.lock().unwrap_or_else(|e| e.into_inner()) = Some(image);
        warm.rev.store(rev, Ordering::Release);
        let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
        let Ok(mut stream) = client.watch(keys.p.clone(), Some(opts)).await else {
            conn.reconnect().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled() || resp.compact_revision() > 0 {
                break;
            }
            // The copy is complete up to the newest event applied: a
            // response's header revision is etcd's current one, which a
            // `created` answer or a partial catch-up batch also carries.
            let mut newest = 0;
            {
                let mut image = warm.image.lock().unwrap_or_else(|e| e.into_inner());
                let Some(image) = image.as_mut() else { break };
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    match ev.event_type() {
                        EventType::Put => image.apply(&keys, &key, Some(kv.value().to_vec())),
                        EventType::Delete => image.apply(&keys, &key, None),
                    }
                    newest = newest.max(kv.mod_revision());
                }
            }
            warm.rev.fetch_max(newest, Ordering::AcqRel);
        }
        // Cut off or compacted past us: read it all again.
        *warm.image.lock().unwrap_or_else(|e| e.into_inner()) = None;
        warm.rev.store(0, Ordering::Release);
    }
}

/// Keeps the lease alive (three times a TTL); exits the process once it
/// may have run out.
async fn keep_lease(conn: Conn, lease: i64, ttl: Duration) {
    let mut last_ok = Instant::now();
    let every = ttl / 3;
    loop {
        let mut c = conn.client();
        if let Ok((mut keeper, mut stream)) = c.lease_keep_alive(lease).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(every, stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => last_ok = Instant::now(),
                    Ok(Ok(Some(_))) => {
                        stop("its etcd lease ran out (it was paused or cut off for longer than --etcd-lease-ttl)")
                    }
                    // No reply (a member that hangs) or a closed stream: the next member.
                    _ => break,
                }
                if last_ok.elapsed() >= ttl {
                    stop("it could not renew its etcd lease within --etcd-lease-ttl");
                }
                tokio::time::sleep(every.saturating_sub(Duration::from_millis(10))).await;
            }
        }
        if last_ok.elapsed() >= ttl {
            stop("it could not renew its etcd lease within --etcd-lease-ttl");
        }
        conn.reconnect().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one of several masters on etcd until `shutdown` resolves: a
/// follower until it is elected, then the leader (see the module doc).
/// Needs a multi-thread runtime (the registry's threads call into it).
pub async fn run_ha(
    listener: TcpListener,
    mut cfg: MasterConfig,
    ha: HaConfig,
    elected: Box<dyn FnOnce(&crate::MasterHandle) + Send>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let keys = Keys::new(&ha.prefix);
    // etcd may come up after the masters (a reboot of the whole cluster):
    // wait for it, saying so every few seconds.
    let since = Instant::now();
    let mut said = Instant::now() - Duration::from_secs(10);
    let conn = loop {
        match connect(&ha, Some(ETCD_TIMEOUT)).await {
            Ok(c) => break c,
            Err(e) => {
                if said.elapsed() >= Duration::from_secs(5) {
                    eprintln!("wasmos master: {e}; retrying (waiting {} s so far)", since.elapsed().as_secs());
                    said = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let campaigner = connect(&ha, None).await?;
    let mut client = conn.client();
    cfg.durable_registry = true;
    let tls = match &cfg.transport {
        Transport::Insecure => None,
        Transport::Tls(o) => {
            share_ca(&mut client, &keys, &cfg.state_dir.join("tls")).await?;
            Some(Arc::new(crate::tls_state(&cfg.state_dir, o)?))
        }
    };
    let view = Arc::new(View::default());
    let switch = Arc::new(Switch { leader: OnceLock::new(), view: view.clone() });
    let masters = MastersSvc {
        ha: Some((conn.clone(), keys.clone(), ha.advertise.clone())),
        epoch: 0,
        cache: Default::default(),
    };
    let app =
        tonic::service::Routes::new(v1::masters_server::MastersServer::new(masters)).into_axum_router().fallback({
            let sw = switch.clone();
            move |req: Request<axum::body::Body>| dispatch(sw.clone(), req)
        });
    let server = tokio::spawn(crate::serve_routes(tonic::service::Routes::from(app), tls.clone(), listener, shutdown));

    let ttl_s = ha.lease_ttl.as_secs_f64().ceil().max(1.0) as i64;
    let lease = client.lease_grant(ttl_s, None).await.map_err(|e| format!("etcd: granting a lease: {e}"))?.id();
    tokio::spawn(keep_lease(conn.clone(), lease, ha.lease_ttl.max(Duration::from_millis(300))));
    // Who leads, for the follower's answers.
    let watcher = {
        let (conn, name, view) = (conn.clone(), keys.election(), view.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(r) = conn.client().leader(name.clone()).await {
                    let url = r.kv().and_then(|kv| kv.value_str().ok()).unwrap_or("").to_string();
                    *view.leader.write().unwrap_or_else(|e| e.into_inner()) = url;
                } else {
                    view.leader.write().unwrap_or_else(|e| e.into_inner()).clear();
                    conn.reconnect().await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let warm = Arc::new(Warm::default());
    let follower = tokio::spawn(follow(conn.clone(), keys.clone(), warm.clone()));
    eprintln!(
        "wasmos master: following; campaigning for leadership on etcd {} as {}",
        ha.endpoints.join(","),
        ha.advertise
    );

    // Campaign until elected (an etcd member going away ends a campaign call).
    let leader_key = loop {
        match campaigner.client().campaign(keys.election(), ha.advertise.clone(), lease).await {
            Ok(mut r) => {
                if let Some(k) = r.take_leader() {
                    break k;
                }
            }
            Err(e) => {
                eprintln!("wasmos master: campaign: {e}; again");
                campaigner.reconnect().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let won_at = Instant::now();
    let fence = Fence { key: leader_key.key().to_vec(), rev: leader_key.rev() };
    // The new epoch, fenced.
    let epoch = loop {
        let mut client = conn.client();
        let got = match client.get(keys.epoch(), None).await {
            Ok(g) => g,
            Err(_) => {
                conn.reconnect().await;
                continue;
            }
        };
        let (old, modrev) = got
            .kvs()
            .first()
            .map(|kv| (kv.value_str().ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0), kv.mod_revision()))
            .unwrap_or((0, 0));
        let epoch = old + 1;
        let since = format!("{epoch} {} {}", crate::master::types::now_ms(), ha.advertise);
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(fence.key.clone(), CompareOp::Equal, fence.rev),
                Compare::mod_revision(keys.epoch(), CompareOp::Equal, modrev),
            ])
            .and_then(vec![
                TxnOp::put(keys.epoch(), epoch.to_string(), None),
                TxnOp::put(keys.leader_since(), since, None),
            ]);
        let Ok(r) = client.txn(txn).await else {
            conn.reconnect().await;
            continue;
        };
        if r.succeeded() {
            break epoch;
        }
        let Ok(mine) = client.get(fence.key.clone(), None).await else { continue };
        if mine.kvs().first().map(|kv| kv.create_revision()) != Some(fence.rev) {
            stop("it lost its leader key while taking over");
        }
    };
    *view.leader.write().unwrap_or_else(|e| e.into_inner()) = ha.advertise.clone();
    watcher.abort();
    // The warm copy serves if it has seen the last log write (every log
    // write rewrites `meta/commit`); if that cannot be read, etcd is read.
    let last_write = match conn.client().get(keys.commit(), None).await {
        Ok(r) => Some(r.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)),
        Err(_) => None,
    };
    let deadline = Instant::now() + Duration::from_millis(500);
    while last_write.is_some_and(|w| warm.rev.load(Ordering::Acquire) < w) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    follower.abort();
    let image = if last_write.is_some_and(|w| warm.rev.load(Ordering::Acquire) >= w) {
        warm.image.lock().unwrap_or_else(|e| e.into_inner()).take()
    } else {
        None
    };
    let warm_used = image.is_some();
    let blobs = crate::registry::etcd::EtcdBlobs {
        conn: conn.clone(),
        fence: fence.clone(),
        keys: keys.clone(),
        rt: tokio::runtime::Handle::current(),
        limits: ha.txn_limits,
    };
    let mut reg = Etcd::new(conn.clone(), &ha.prefix, fence, epoch, &ha.advertise, ha.txn_limits, image);
    let loaded = reg.load_async(cfg.max_completed_tasks).await?;
    eprintln!(
        "wasmos master: elected leader in epoch {epoch}; registry loaded in {} ms from {} ({} tasks live or recent, {} open submissions)",
        won_at.elapsed().as_millis(),
        if warm_used { "the warm copy" } else { "etcd" },
        loaded.tasks.len(),
        loaded.submissions.len()
    );
    let handle = crate::start_with(cfg, tls, Some((Box::new(reg), loaded)), Some(Box::new(blobs)))?;
    elected(&handle);
    if !ha.compact_every.is_zero() {
        let (conn, key, every) = (conn.clone(), keys.epoch(), ha.compact_every);
        tokio::spawn(async move {
            let mut prev = 0;
            loop {
                tokio::time::sleep(every).await;
                let mut c = conn.client();
                let Ok(r) = c.get(key.clone(), None).await else { continue };
                let rev = r.header().map_or(0, |h| h.revision());
                if prev > 0
                    && let Err(e) = c.compact(prev, None).await
                {
                    eprintln!("wasmos master: compacting etcd's history to revision {prev}: {e}");
                }
                prev = rev;
            }
        });
    }
    let _ = switch.leader.set(crate::routes(handle));
    let result = server.await;
    // Stepping down: the lease goes, so another master is elected at once.
    let _ = conn.client().lease_revoke(lease).await;
    match result {
        Ok(r) => r.map_err(|e| e.into()),
        Err(e) => Err(format!("server task: {e}").into()),
    }
}
