//! The cluster's PKI: a CA made on first start, the master's serving
//! certificate (made anew at every start, so its names follow the flags),
//! and agent certificates signed from the agents' own CSRs.
//!
//! Files under `DIR` (the master's `--state-dir`/tls): `ca.pem`, `ca.key`,
//! `cluster` (the cluster's name, in agents' URI SANs), `server.pem`,
//! `server.key`. Keys are written with mode 0600, atomically.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// How long the cluster CA is valid: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
/// How long the master's own serving certificate is valid (made anew at
/// every start): one year.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// Default lifetime of an agent's client certificate; the agent renews it
/// at two thirds of its life.
pub const DEFAULT_AGENT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Certificates are valid from this long before they were made (clock skew).
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("tls files in {dir}: {why}")]
    Files { dir: String, why: String },
    #[error("certificate: {0}")]
    Cert(String),
    #[error("certificate request refused: {0}")]
    Csr(String),
}

fn cert_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Cert(e.to_string())
}

/// The CA and the master's serving certificate, in PEM.
pub struct Pki {
    pub dir: PathBuf,
    pub cluster: String,
    pub ca_pem: String,
    ca_key: KeyPair,
    pub server_pem: String,
    pub server_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CA from `dir`, or makes one (and a cluster name) on first
    /// start; then makes the serving certificate for `names` (DNS names or
    /// IP addresses; `localhost` and 127.0.0.1 are always added).
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Pki, PkiError> {
        let files = |why: String| PkiError::Files { dir: dir.display().to_string(), why };
        std::fs::create_dir_all(dir).map_err(|e| files(format!("creating it: {e}")))?;
        set_mode(dir, 0o700);
        let (ca_pem_path, ca_key_path, cluster_path) = (dir.join("ca.pem"), dir.join("ca.key"), dir.join("cluster"));
        let (cluster, ca_pem, ca_key) = if ca_key_path.exists() {
            let read =
                |p: &Path| std::fs::read_to_string(p).map_err(|e| files(format!("reading {}: {e}", p.display())));
            let key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| files(format!("ca.key: {e}")))?;
            (read(&cluster_path)?.trim().to_string(), read(&ca_pem_path)?, key)
        } else {
            let cluster = format!("wasmos-{}", &hex::encode(random::<8>())[..12]);
            let key = KeyPair::generate().map_err(cert_err)?;
            let mut p = CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, format!("{cluster} ca"));
            p.distinguished_name.push(DnType::OrganizationName, "wasmos");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            validity(&mut p, CA_VALIDITY);
            let cert = p.self_signed(&key).map_err(cert_err)?;
            let pem = cert.pem();
            // The key last: its presence means the CA is complete.
            write_atomic(&cluster_path, cluster.as_bytes(), 0o644).map_err(&files)?;
            write_atomic(&ca_pem_path, pem.as_bytes(), 0o644).map_err(&files)?;
            write_atomic(&ca_key_path, key.serialize_pem().as_bytes(), 0o600).map_err(&files)?;
            (cluster, pem, key)
        };
        let server_key = KeyPair::generate().map_err(cert_err)?;
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for n in names {
            if !n.is_empty() && !sans.contains(n) {
                sans.push(n.clone());
            }
        }
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        for n in &sans {
            p.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(n.clone().try_into().map_err(|_| cert_err(format!("{n:?} is not a host name")))?)
                }
            });
        }
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, format!("{cluster} master"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut p, SERVER_VALIDITY);
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(cert_err)?;
        let server = p.signed_by(&server_key, &issuer).map_err(cert_err)?;
        let (server_pem, server_key_pem) = (server.pem(), server_key.serialize_pem());
        write_atomic(&dir.join("server.pem"), server_pem.as_bytes(), 0o644).map_err(&files)?;
        write_atomic(&dir.join("server.key"), server_key_pem.as_bytes(), 0o600).map_err(&files)?;
        Ok(Pki { dir: dir.to_path_buf(), cluster, ca_pem, ca_key, server_pem, server_key_pem })
    }

    /// The PKI a master made in `dir`, as it is (nothing written).
    pub fn load(dir: &Path) -> Result<Pki, PkiError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| PkiError::Files { dir: dir.display().to_string(), why: format!("reading {name}: {e}") })
        };
        let ca_key = KeyPair::from_pem(&read("ca.key")?).map_err(cert_err)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            cluster: read("cluster")?.trim().to_string(),
            ca_pem: read("ca.pem")?,
            ca_key,
            server_pem: read("server.pem")?,
            server_key_pem: read("server.key")?,
        })
    }

    /// SHA-256 of the CA certificate (DER), in hex: what a join token
    /// carries so an agent trusts the right master on first contact.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint_pem(&self.ca_pem).unwrap_or_default()
    }

    /// Signs an agent's CSR: the certificate names the agent by a URI SAN
    /// `wasmos://CLUSTER/agent/ID` (whatever the CSR asked for), client
    /// authentication only, valid for `ttl`.
    pub fn sign_agent(&self, csr_pem: &str, agent_id: &str, ttl: Duration) -> Result<String, PkiError> {
        let now = time::OffsetDateTime::now_utc();
        self.sign_agent_between(csr_pem, agent_id, now - BACKDATE, now + ttl)
    }

    /// [`Pki::sign_agent`] with an explicit validity (tests make expired and
    /// not-yet-valid certificates with it).
    pub fn sign_agent_between(
        &self,
        csr_pem: &str,
        agent_id: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<String, PkiError> {
        let mut req = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::Csr(format!("{e}")))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, format!("agent {agent_id}"));
        p.subject_alt_names = vec![SanType::URI(
            agent_uri(&self.cluster, agent_id).try_into().map_err(|_| PkiError::Csr("bad agent id".into()))?,
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = not_before;
        p.not_after = not_after;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&random::<16>()));
        req.params = p;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key).map_err(cert_err)?;
        Ok(req.signed_by(&issuer).map_err(cert_err)?.pem())
    }
}

/// Whether a CSR can be read and its signature holds.
pub fn check_csr(csr_pem: &str) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_pem(csr_pem).map(|_| ()).map_err(|e| PkiError::Csr(format!("{e}")))
}

/// The URI SAN naming an agent in its client certificate.
pub fn agent_uri(cluster: &str, agent_id: &str) -> String {
    format!("wasmos://{cluster}/agent/{agent_id}")
}

/// The agent a client certificate names (its `wasmos://CLUSTER/agent/ID`
/// URI SAN, for this cluster), if any.
pub fn agent_of_cert(der: &[u8], cluster: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let prefix = format!("wasmos://{cluster}/agent/");
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(prefix.as_str()).map(str::to_string),
        _ => None,
    })
}

/// A fresh key and a CSR for it (what an agent sends to join).
pub fn agent_key_and_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "wasmos agent");
    let csr = p.serialize_request(&key).map_err(cert_err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(cert_err)?))
}

/// Seconds since the epoch when a PEM certificate stops being valid.
pub fn not_after_unix(pem: &str) -> Option<i64> {
    use x509_parser::prelude::*;
    let der = first_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// ... and when it started being valid.
pub fn not_before_unix(pem: &str) -> Option<i64> {
    use x509_parser::prelude::*;
    let der = first_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_before.timestamp())
}

/// SHA-256 (hex) of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &str) -> Option<String> {
    Some(hex::encode(Sha256::digest(first_der(pem)?)))
}

fn first_der(pem: &str) -> Option<Vec<u8>> {
    let mut r = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::certs(&mut r).next()?.ok().map(|c| c.to_vec())
}

fn validity(p: &mut CertificateParams, ttl: Duration) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + ttl;
}

/// `N` random bytes from the system's generator.
pub fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).expect("the system's random generator");
    b
}

/// Writes `data` to a temp file beside `path` with `mode`, fsyncs, renames.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", hex::encode(random::<4>())));
    let res = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

fn set_mode(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_restart_and_signs_agents() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &["example.org".into()]).unwrap();
        let b = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.cluster, b.cluster);
        assert_ne!(a.server_pem, b.server_pem, "the serving certificate is made anew");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (_key, csr) = agent_key_and_csr().unwrap();
        let cert = a.sign_agent(&csr, "edge-1", Duration::from_secs(3600)).unwrap();
        let der = first_der(&cert).unwrap();
        assert_eq!(agent_of_cert(&der, &a.cluster).as_deref(), Some("edge-1"));
        assert_eq!(agent_of_cert(&der, "other-cluster"), None);
        let life = not_after_unix(&cert).unwrap() - not_before_unix(&cert).unwrap();
        assert_eq!(life, 3600 + BACKDATE.as_secs() as i64);
        assert!(a.sign_agent("not a csr", "x", Duration::from_secs(1)).is_err());
    }
}
