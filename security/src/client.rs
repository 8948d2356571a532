//! The client side: the client config file every command reads, TLS
//! endpoints that trust the cluster CA, and the bearer token on every call.
//!
//! The config (`$WASMOS_CONFIG`, default `~/.config/wasmos/config.json`,
//! mode 0600) holds the master URL, the CA certificate (PEM) and a token.
//! `wasmos dev` and `wasmos master` write it on first start; flags and
//! environment variables override each field.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// What a client needs to reach a master.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientConfig {
    /// `https://HOST:PORT` (or `http://` for an `--insecure` master).
    pub master: String,
    /// The cluster CA, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// A bearer token (`wsmt_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `$WASMOS_CONFIG`, else `$XDG_CONFIG_HOME/wasmos/config.json`, else
/// `~/.config/wasmos/config.json`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WASMOS_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("wasmos").join("config.json"))
}

impl ClientConfig {
    /// The config at `path`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<ClientConfig>, String> {
        match std::fs::read_to_string(path) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| format!("client config {}: {e}; fix or delete it", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("client config {}: {e}", path.display())),
        }
    }

    /// Writes it atomically with mode 0600 (it holds a token).
    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).expect("serializable");
        crate::pki::write_atomic(path, json.as_bytes(), 0o600)
    }
}

/// A client certificate and its key, PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(..)")
    }
}

/// How to reach a master: its URL, the CA to trust (for `https://`), a
/// client certificate (agents), a bearer token (everyone else).
#[derive(Clone, Default)]
pub struct Target {
    pub url: String,
    pub ca_pem: Option<String>,
    pub identity: Option<ClientIdentity>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A channel to the master that sends the bearer token with every call, and
/// follows the leader when there are several masters: an answer carrying
/// `wasmos-leader: URL` (a follower's) moves later calls to that URL, and
/// a call that cannot reach its master moves later calls to the next URL
/// given. The call that learned it fails as it did; callers that retry (the
/// agent, frameworks, `--wait`) go on with the leader.
#[derive(Clone)]
pub struct AuthChannel {
    route: Arc<Route>,
    bearer: Option<tonic::codegen::http::HeaderValue>,
}

/// Where an [`AuthChannel`]'s calls go now.
struct Route {
    target: Target,
    /// The URLs given (several masters), in order.
    urls: Vec<String>,
    now: RwLock<(String, Channel)>,
}

impl Route {
    fn current(&self) -> (String, Channel) {
        self.now.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Moves to `url` unless calls already go elsewhere than `from`.
    fn move_to(&self, from: &str, url: &str) {
        let mut now = self.now.write().unwrap_or_else(|e| e.into_inner());
        if now.0 != from || now.0 == url {
            return;
        }
        if let Ok(ep) = self.target.endpoint_for(url) {
            *now = (url.to_string(), ep.connect_lazy());
        }
    }

    /// After a failed call to `from`: the next URL given (the one given,
    /// when there is one and a follower sent calls elsewhere).
    fn rotate(&self, from: &str) {
        if self.urls.len() < 2 {
            if let Some(given) = self.urls.first() {
                self.move_to(from, given);
            }
            return;
        }
        let i = self.urls.iter().position(|u| u == from).map_or(0, |i| (i + 1) % self.urls.len());
        self.move_to(from, &self.urls[i]);
    }
}

impl AuthChannel {
    fn new(target: &Target, url: String, ch: Channel) -> Result<AuthChannel, String> {
        let bearer = target
            .token
            .as_ref()
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<tonic::codegen::http::HeaderValue>()
                    .map_err(|_| "the token has characters a header cannot carry; check --token".to_string())
            })
            .transpose()?;
        let urls = target.urls();
        Ok(AuthChannel { route: Arc::new(Route { target: target.clone(), urls, now: RwLock::new((url, ch)) }), bearer })
    }

    /// The master calls go to now.
    pub fn url(&self) -> String {
        self.route.current().0
    }
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl tonic::codegen::Service<HttpRequest> for AuthChannel {
    type Response = HttpResponse;
    type Error = tonic::transport::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        if let Some(v) = &self.bearer {
            req.headers_mut().insert("authorization", v.clone());
        }
        let route = self.route.clone();
        Box::pin(async move {
            let (url, mut ch) = route.current();
            let answer = match std::future::poll_fn(|cx| tonic::codegen::Service::poll_ready(&mut ch, cx)).await {
                Ok(()) => tonic::codegen::Service::call(&mut ch, req).await,
                Err(e) => Err(e),
            };
            match &answer {
                Ok(r) => {
                    if let Some(leader) = r.headers().get(LEADER_HEADER).and_then(|v| v.to_str().ok())
                        && !leader.is_empty()
                    {
                        route.move_to(&url, leader);
                    }
                }
                Err(_) => route.rotate(&url),
            }
            answer
        })
    }
}

/// The header a follower names the leader in.
pub const LEADER_HEADER: &str = "wasmos-leader";
/// How long `connect` looks for a leader among several masters (an
/// election takes about a lease's TTL).
pub const LEADER_WAIT: Duration = Duration::from_secs(15);
/// How long one master has to answer who leads.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds `authorization: Bearer TOKEN` to every request (nothing without a token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| "the token has characters a header cannot carry; check --token".to_string())
            })
            .transpose()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl Target {
    /// The master URLs `url` holds (several, comma-separated, for several
    /// masters; `https://` unless a scheme is given).
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| if u.contains("://") { u.to_string() } else { format!("https://{u}") })
            .collect()
    }

    /// The endpoint of the first URL: TLS with the CA (and identity) for `https://`.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let url = self.urls().into_iter().next().unwrap_or_default();
        self.endpoint_for(&url)
    }

    /// The endpoint of one master `url`.
    pub fn endpoint_for(&self, url: &str) -> Result<Endpoint, String> {
        let ep = Endpoint::from_shared(url.to_string())
            .map_err(|_| format!("master address {url:?} is not a URL; write e.g. https://127.0.0.1:5050"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if !url.starts_with("https://") {
            return Ok(ep);
        }
        let ca = self.ca_pem.as_ref().ok_or_else(|| {
            format!(
                "{url} speaks TLS but no CA certificate is known; pass --ca-cert FILE (the master's STATE_DIR/tls/ca.pem) or set WASMOS_CA_CERT"
            )
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(id) = &self.identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        ep.tls_config(tls).map_err(|e| format!("tls: {e}"))
    }

    /// Connects now; to the leader when several masters are given.
    pub async fn connect(&self) -> Result<AuthChannel, String> {
        let urls = self.urls();
        let Some(first) = urls.first().cloned() else {
            return Err("no master address given; pass --master URL[,URL...]".into());
        };
        if urls.len() == 1 {
            let ch = self.endpoint_for(&first)?.connect().await.map_err(|e| describe_connect_error(&first, &e))?;
            return AuthChannel::new(self, first, ch);
        }
        let (url, ch) = self.find_leader(&urls).await?;
        AuthChannel::new(self, url, ch)
    }

    /// Asks every master at once who leads (a follower names the leader in
    /// `wasmos-leader` whatever the call; a master that does not answer
    /// within [`PROBE_TIMEOUT`] is stopped or cut off), until one leads or
    /// [`LEADER_WAIT`] passes.
    async fn find_leader(&self, urls: &[String]) -> Result<(String, Channel), String> {
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        // A bad address or a missing CA is said at once, not waited out.
        for url in urls {
            self.endpoint_for(url)?;
        }
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::channel(urls.len());
            for url in urls {
                let (me, url, tx) = (self.clone(), url.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(PROBE_TIMEOUT, me.probe(&url)).await;
                    let answer =
                        answer.unwrap_or_else(|_| Err(format!("{url} did not answer within {PROBE_TIMEOUT:?}")));
                    let _ = tx.send((url, answer)).await;
                });
            }
            drop(tx);
            let mut last = String::new();
            let mut named: Option<String> = None;
            while let Some((url, answer)) = rx.recv().await {
                match answer {
                    Ok((ch, None)) => return Ok((url, ch)),
                    Ok((_, Some(leader))) if leader.is_empty() => {
                        last = format!("{url}: no master leads yet (an election is under way)")
                    }
                    Ok((_, Some(leader))) => {
                        last = format!("{url} is a follower; the leader {leader} did not answer");
                        named = Some(leader);
                    }
                    Err(e) => last = e,
                }
            }
            // A leader none of the URLs given is (a master added since).
            if let Some(leader) = named.filter(|l| !urls.contains(l))
                && let Ok(Ok((ch, None))) = tokio::time::timeout(PROBE_TIMEOUT, self.probe(&leader)).await
            {
                return Ok((leader, ch));
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("no leader among {} within {LEADER_WAIT:?}: {last}", urls.join(",")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects to `url` and asks with a method no master serves: a
    /// follower answers it (as any call) with the leader's URL (`Some`), a
    /// leader or a single master with UNIMPLEMENTED (`None`).
    async fn probe(&self, url: &str) -> Result<(Channel, Option<String>), String> {
        let mut ch = self.endpoint_for(url)?.connect().await.map_err(|e| describe_connect_error(url, &e))?;
        let req = tonic::codegen::http::Request::post("/wasmos.v1.Leader/Probe")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::empty())
            .expect("a request");
        std::future::poll_fn(|cx| tonic::codegen::Service::poll_ready(&mut ch, cx))
            .await
            .map_err(|e| describe_connect_error(url, &e))?;
        let r = tonic::codegen::Service::call(&mut ch, req).await.map_err(|e| describe_connect_error(url, &e))?;
        let leader = r.headers().get(LEADER_HEADER).map(|v| v.to_str().unwrap_or("").to_string());
        Ok((ch, leader))
    }

    /// A channel that connects on first use (and reconnects).
    pub fn connect_lazy(&self) -> Result<AuthChannel, String> {
        let url = self.urls().into_iter().next().unwrap_or_default();
        let ch = self.endpoint_for(&url)?.connect_lazy();
        AuthChannel::new(self, url, ch)
    }

    /// GET `path` over the master's HTTP side (TLS with the CA, the bearer
    /// token), as HTTP/1.0 so the body simply runs to the end: (status, body).
    /// At most `max_body` bytes are read.
    pub async fn http_get(&self, path: &str, max_body: usize) -> Result<(u16, Vec<u8>), String> {
        use tokio::io::AsyncWriteExt;
        let url = self.urls().into_iter().next().unwrap_or_default();
        let url = url.as_str();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("master address {:?} is not a URL; write e.g. https://127.0.0.1:5050", url))?;
        let authority = rest.split('/').next().unwrap_or(rest).to_string();
        let host =
            authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(&authority).trim_matches(['[', ']']).to_string();
        let tcp = tokio::time::timeout(HTTP_TIMEOUT, tokio::net::TcpStream::connect(&authority))
            .await
            .map_err(|_| format!("cannot reach {}: timed out", url))?
            .map_err(|e| format!("cannot reach {}: {e}", url))?;
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: wasmos\r\n");
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        let mut raw = Vec::new();
        if url.starts_with("https://") {
            let ca = self.ca_pem.as_ref().ok_or_else(|| {
                format!("{} speaks TLS but no CA certificate is known; pass --ca-cert FILE or set WASMOS_CA_CERT", url)
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
                let c = c.map_err(|e| format!("the CA certificate: {e}"))?;
                roots.add(c).map_err(|e| format!("the CA certificate: {e}"))?;
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| format!("{host:?} is not a host name"))?;
            let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls with {}: {e}", url))?;
            s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
            read_answer(&mut s, max_body, &mut raw, &url).await?;
        } else {
            let mut s = tcp;
            s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
            read_answer(&mut s, max_body, &mut raw, &url).await?;
        }
        let bad = || format!("{} did not answer in HTTP; is that the master's address?", url);
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let body = raw[split + 4..].to_vec();
        if body.len() > max_body {
            return Err(format!("the answer is over {max_body} bytes; ask for less"));
        }
        Ok((status, body))
    }
}

/// Longest wait for an HTTP answer (`Target::http_get`).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Room for an HTTP answer's head.
const HTTP_HEAD: usize = 64 << 10;

/// Reads a whole HTTP/1.0 answer (to the end), within [`HTTP_TIMEOUT`] and
/// `max_body` bytes plus its head.
async fn read_answer(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    max_body: usize,
    raw: &mut Vec<u8>,
    url: &str,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut limited = s.take((max_body + HTTP_HEAD) as u64 + 1);
    match tokio::time::timeout(HTTP_TIMEOUT, limited.read_to_end(raw)).await {
        Err(_) => Err(format!("{url} did not answer within {HTTP_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("reading the answer of {url}: {e}")),
        Ok(Ok(_)) => Ok(()),
    }
}

/// A connect error with its causes, as one line.
pub fn describe_connect_error(url: &str, e: &tonic::transport::Error) -> String {
    let mut msg = format!("cannot reach the master at {url}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/config.json");
        assert_eq!(ClientConfig::read(&p).unwrap(), None);
        let c =
            ClientConfig { master: "https://127.0.0.1:5050".into(), ca_pem: Some("x".into()), token: Some("t".into()) };
        c.write(&p).unwrap();
        assert_eq!(ClientConfig::read(&p).unwrap(), Some(c));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&p, "{").unwrap();
        assert!(ClientConfig::read(&p).unwrap_err().contains("fix or delete it"));
    }
}
