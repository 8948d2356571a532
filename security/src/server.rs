//! The server side of TLS: a rustls configuration (TLS 1.3 only, h2, client
//! certificates optional and checked against the cluster CA) and an accept
//! loop that handshakes off the listener with a timeout and a bound on
//! handshakes in flight, so connections that never finish their handshake
//! cannot stop the master from serving.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Default time a client has to finish its TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of TLS handshakes in flight; connections beyond it are
/// closed at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// What the server presents and whom it trusts.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// CAs whose client certificates are accepted (agents); a client
    /// without a certificate is accepted too and must show a token.
    pub client_ca_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut r = std::io::BufReader::new(pem.as_bytes());
    let certs = rustls_pemfile::certs(&mut r).collect::<Result<Vec<_>, _>>().map_err(|e| format!("pem: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(certs)
}

pub fn key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    let mut r = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::private_key(&mut r)
        .map_err(|e| format!("pem: {e}"))?
        .ok_or_else(|| "no private key in the PEM".into())
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    pub fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.client_ca_pem)? {
            roots.add(c).map_err(|e| format!("client ca: {e}"))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert_pem)?, key(&self.key_pem)?)
            .map_err(|e| format!("serving certificate: {e}"))?;
        // gRPC (h2), and browsers and scrapers that speak HTTP/1.1.
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Accepted connections whose TLS handshake finished, in the order they
/// finished. Each handshake runs in its own task with `handshake_timeout`;
/// at most `max_handshakes` at once (more are closed as they arrive). A
/// failed handshake is dropped, never an error of the stream.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    max_handshakes: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (sock, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    eprintln!("wasmos master: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(sock);
                continue;
            };
            let _ = sock.set_nodelay(true);
            let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let done = tokio::time::timeout(timeout, acceptor.accept(sock)).await;
                drop(permit);
                if let Ok(Ok(s)) = done {
                    let _ = conn_tx.send(Ok(s)).await;
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
