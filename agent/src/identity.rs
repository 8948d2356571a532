//! The agent's identity. An agent joins once with a join token (`wasmos
//! token create NAME --agent`): it trusts the master whose CA matches the
//! fingerprint the token carries, makes its key here, sends a CSR, and gets
//! back its agent id and a short-lived client certificate naming it
//! (`wasmos://CLUSTER/agent/ID`). The files live in `--work-dir`/identity
//! (key mode 0600) and are renewed at two thirds of the certificate's life.
//! Over an `--insecure` master (loopback only) there is no certificate to
//! present: the join returns a secret bound to the agent id instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use wasmos_proto::v1;
use wasmos_proto::v1::agent_service_client::AgentServiceClient;
use wasmos_security::client::{ClientIdentity, Target};
use wasmos_security::pki::write_atomic;

use crate::link::Backoff;
use crate::{Agent, AgentConfig, AgentError};

/// What proves who this agent is.
#[derive(Clone)]
pub(crate) struct Identity {
    pub agent_id: String,
    /// The CA the master's certificate chains to (TLS only).
    pub ca_pem: Option<String>,
    /// Client certificate and key (TLS).
    pub cert: Option<ClientIdentity>,
    /// The agent secret (an `--insecure` master).
    pub secret: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("agent_id", &self.agent_id).finish_non_exhaustive()
    }
}

fn dir(work: &Path) -> PathBuf {
    work.join("identity")
}

fn read(p: PathBuf) -> Option<String> {
    std::fs::read_to_string(p).ok().filter(|s| !s.is_empty())
}

impl Identity {
    /// The identity kept in `work`, if the agent joined before.
    pub fn load(work: &Path) -> Option<Identity> {
        let d = dir(work);
        let agent_id = read(d.join("agent_id"))?.trim().to_string();
        let cert = match (read(d.join("cert.pem")), read(d.join("key.pem"))) {
            (Some(cert_pem), Some(key_pem)) => Some(ClientIdentity { cert_pem, key_pem }),
            _ => None,
        };
        Some(Identity { agent_id, ca_pem: read(d.join("ca.pem")), cert, secret: read(d.join("secret")) })
    }

    /// Writes it (the agent id last: its presence means the rest is there).
    pub fn save(&self, work: &Path) -> Result<(), String> {
        let d = dir(work);
        std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        if let Some(ca) = &self.ca_pem {
            write_atomic(&d.join("ca.pem"), ca.as_bytes(), 0o644)?;
        }
        if let Some(c) = &self.cert {
            write_atomic(&d.join("key.pem"), c.key_pem.as_bytes(), 0o600)?;
            write_atomic(&d.join("cert.pem"), c.cert_pem.as_bytes(), 0o644)?;
        }
        if let Some(s) = &self.secret {
            write_atomic(&d.join("secret"), s.as_bytes(), 0o600)?;
        }
        write_atomic(&d.join("agent_id"), self.agent_id.as_bytes(), 0o644)
    }

    /// How to reach `url` as this agent.
    pub fn target(&self, url: &str, ca_pem: Option<String>) -> Target {
        Target {
            url: url.to_string(),
            ca_pem: self.ca_pem.clone().or(ca_pem),
            identity: self.cert.clone(),
            token: self.secret.clone(),
        }
    }

    /// Seconds since the epoch at which to renew the certificate: two
    /// thirds into its life. None without a certificate.
    pub fn renew_at(&self) -> Option<i64> {
        let c = self.cert.as_ref()?;
        let from = wasmos_security::pki::not_before_unix(&c.cert_pem)?;
        let to = wasmos_security::pki::not_after_unix(&c.cert_pem)?;
        Some(from + (to - from) * 2 / 3)
    }
}

/// The CA certificate (PEM) the master at `url` presents in its chain whose
/// SHA-256 is `fingerprint`: how an agent with only a join token learns
/// whom to trust. The handshake checks nothing else and nothing is sent
/// over it; the real connection then verifies the master against this CA.
/// Why the CA could not be had: worth retrying (the master is not up yet),
/// or not.
#[derive(Debug)]
pub(crate) enum FetchError {
    Transient(String),
    Fatal(String),
}

pub(crate) async fn fetch_ca(url: &str, fingerprint: &str) -> Result<String, FetchError> {
    use FetchError::{Fatal, Transient};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct Capture(Mutex<Vec<CertificateDer<'static>>>, Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            end: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let mut chain = self.0.lock().unwrap_or_else(|e| e.into_inner());
            chain.push(end.clone().into_owned());
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }

    let rest = url.strip_prefix("https://").ok_or_else(|| Fatal(format!("{url} is not an https:// URL")))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let provider = wasmos_security::server::provider();
    let capture = Arc::new(Capture(Mutex::new(Vec::new()), provider.clone()));
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Fatal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| Fatal(format!("{host}: {e}")))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| Transient(format!("cannot reach {authority} within 10 s")))?
        .map_err(|e| Transient(format!("cannot reach {authority}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| Transient(format!("no TLS handshake with {authority} within 10 s")))?
        .map_err(|e| Transient(format!("TLS handshake with {authority}: {e}")))?;
    let chain = capture.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for c in chain {
        let pem = pem_of(&c);
        if wasmos_security::pki::fingerprint_pem(&pem).as_deref() == Some(fingerprint) {
            return Ok(pem);
        }
    }
    Err(Fatal(format!(
        "the master at {url} does not present the CA this join token names; check --master, or make a new token on that master"
    )))
}

/// The identity kept in the work dir, or a new one got with the join token.
pub(crate) async fn obtain(cfg: &AgentConfig) -> Result<Identity, AgentError> {
    if let Some(id) = Identity::load(&cfg.work_dir) {
        return Ok(id);
    }
    let refused = |m: String| AgentError::Join(m);
    let token = cfg.join_token.as_deref().map(str::trim).ok_or_else(|| {
        refused(
            "this agent has no identity yet: pass --join TOKEN (make one on the master with `wasmos token create NAME --agent`)"
                .into(),
        )
    })?;
    let (_, fingerprint) = wasmos_security::token::parse_join(token).map_err(|e| refused(e.to_string()))?;
    let mut backoff = Backoff::new(Duration::from_millis(100), cfg.max_backoff);
    let ca_pem = if cfg.master.starts_with("https://") {
        match &cfg.ca_pem {
            Some(ca) if wasmos_security::pki::fingerprint_pem(ca).as_deref() == Some(fingerprint.as_str()) => {
                Some(ca.clone())
            }
            _ => {
                let mut said = false;
                loop {
                    match fetch_ca(&cfg.master, &fingerprint).await {
                        Ok(ca) => break Some(ca),
                        Err(FetchError::Fatal(e)) => return Err(refused(e)),
                        Err(FetchError::Transient(e)) => {
                            if !std::mem::replace(&mut said, true) {
                                eprintln!("wasmos agent: waiting for the master to join it: {e}");
                            }
                            backoff.wait().await
                        }
                    }
                }
            }
        }
    } else {
        None
    };
    let (key_pem, csr_pem) = wasmos_security::pki::agent_key_and_csr().map_err(|e| refused(e.to_string()))?;
    let target = Target { url: cfg.master.clone(), ca_pem: ca_pem.clone(), identity: None, token: None };
    let channel = crate::link::Link::connect(&target, cfg.max_backoff).await?;
    let req = v1::JoinRequest { token: token.to_string(), csr_pem };
    let resp = loop {
        match AgentServiceClient::new(channel.clone()).join(req.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => backoff.wait().await,
            Err(s) => return Err(refused(format!("joining: {}", s.message()))),
        }
    };
    let id = Identity {
        agent_id: resp.agent_id,
        ca_pem,
        cert: (!resp.cert_pem.is_empty()).then_some(ClientIdentity { cert_pem: resp.cert_pem, key_pem }),
        secret: (!resp.agent_secret.is_empty()).then_some(resp.agent_secret),
    };
    id.save(&cfg.work_dir).map_err(|e| AgentError::WorkDir(cfg.work_dir.clone(), std::io::Error::other(e)))?;
    eprintln!("wasmos agent: joined as {}", id.agent_id);
    Ok(id)
}

/// Renews the certificate at two thirds of its life, for as long as the
/// agent runs; later calls (and reconnections) use the new one.
pub(crate) async fn renew(agent: Arc<Agent>, mut identity: Identity) {
    loop {
        let Some(at) = identity.renew_at() else { return };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs((at - now).max(1) as u64)).await;
        let Ok((key_pem, csr_pem)) = wasmos_security::pki::agent_key_and_csr() else { return };
        let req = v1::RenewRequest { agent_id: identity.agent_id.clone(), csr_pem };
        match agent.link.client().renew(req).await {
            Ok(r) => {
                identity.cert = Some(ClientIdentity { cert_pem: r.into_inner().cert_pem, key_pem });
                if let Err(e) = identity.save(&agent.cfg.work_dir) {
                    eprintln!("wasmos agent: keeping the renewed certificate failed: {e}");
                }
                match identity.target(&agent.cfg.master, agent.cfg.ca_pem.clone()).connect_lazy() {
                    Ok(ch) => agent.link.set_channel(ch),
                    Err(e) => eprintln!("wasmos agent: cannot use the renewed certificate: {e}"),
                }
            }
            Err(e) => {
                eprintln!("wasmos agent: renewing its certificate failed: {}; retrying in 10 s", e.message());
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

fn pem_of(der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(chunk).unwrap_or(""));
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_pem() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let dir = tempfile::tempdir().unwrap();
        let pki = wasmos_security::pki::Pki::load_or_create(dir.path(), &[]).unwrap();
        let der = wasmos_security::server::certs(&pki.ca_pem).unwrap().remove(0);
        assert_eq!(wasmos_security::pki::fingerprint_pem(&pem_of(&der)), Some(pki.ca_fingerprint()));
    }

    #[test]
    fn saved_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).is_none());
        let id = Identity {
            agent_id: "agent-7".into(),
            ca_pem: Some("ca".into()),
            cert: Some(ClientIdentity { cert_pem: "c".into(), key_pem: "k".into() }),
            secret: None,
        };
        id.save(dir.path()).unwrap();
        let back = Identity::load(dir.path()).unwrap();
        assert_eq!(back.agent_id, "agent-7");
        assert_eq!(back.cert.unwrap().key_pem, "k");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join("identity/key.pem")).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600);
        }
    }
}
