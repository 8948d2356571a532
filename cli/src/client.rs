//! The API client the CLI uses: master address resolution, connections, and
//! small helpers. The CLI never reaches into server internals.

use std::path::PathBuf;

use wasmos_proto::v1;
use wasmos_security::client::{AuthChannel, ClientConfig, Target};

/// Default master address for client commands (when no client config names one).
pub const DEFAULT_MASTER: &str = "https://127.0.0.1:5050";

/// How a client command reaches the master: each flag, else its
/// environment variable, else the client config that `wasmos dev` and
/// `wasmos master` write on first start.
#[derive(clap::Args, Debug, Clone)]
pub struct MasterArg {
    /// The master's address [env: WASMOS_MASTER] [default: the client config's, else https://127.0.0.1:5050]
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// The CA certificate (PEM file) the master's certificate must chain to:
    /// the master's STATE_DIR/tls/ca.pem [env: WASMOS_CA_CERT] [default: the client config's]
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The token to call with [env: WASMOS_TOKEN] [default: the client config's]
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// The client config at `$WASMOS_CONFIG` or `~/.config/wasmos/config.json`,
/// if there is one.
pub fn client_config() -> Result<Option<ClientConfig>, String> {
    match wasmos_security::client::config_path() {
        Some(p) => ClientConfig::read(&p),
        None => Ok(None),
    }
}

/// A URL with a scheme (`https://` unless one is given).
pub fn with_scheme(raw: &str) -> String {
    if raw.contains("://") { raw.to_string() } else { format!("https://{raw}") }
}

/// An etcd URL with a scheme (`http://` unless one is given).
pub fn with_scheme_http(raw: &str) -> String {
    if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") }
}

/// The CA PEM from `--ca-cert`/`WASMOS_CA_CERT`, else the config's.
pub fn ca_pem(flag: Option<&PathBuf>, config: Option<&ClientConfig>) -> Result<Option<String>, String> {
    match flag.cloned().or_else(|| env("WASMOS_CA_CERT").map(PathBuf::from)) {
        Some(p) => std::fs::read_to_string(&p).map(Some).map_err(|e| {
            format!("cannot read the CA certificate {}: {e}; pass the master's STATE_DIR/tls/ca.pem", p.display())
        }),
        None => Ok(config.and_then(|c| c.ca_pem.clone())),
    }
}

impl MasterArg {
    pub fn target(&self) -> Result<Target, String> {
        let config = client_config()?;
        let url = self
            .master
            .clone()
            .or_else(|| env("WASMOS_MASTER"))
            .or_else(|| config.as_ref().map(|c| c.master.clone()).filter(|m| !m.is_empty()))
            .unwrap_or_else(|| DEFAULT_MASTER.to_string());
        Ok(Target {
            url: with_scheme(&url),
            ca_pem: ca_pem(self.ca_cert.as_ref(), config.as_ref())?,
            identity: None,
            token: self.token.clone().or_else(|| env("WASMOS_TOKEN")).or_else(|| config.and_then(|c| c.token)),
        })
    }

    pub async fn connect(&self) -> Result<AuthChannel, String> {
        let target = self.target()?;
        target.connect().await.map_err(|e| {
            format!("{e}; start one with `wasmos dev`, or set --master / WASMOS_MASTER (and --ca-cert for TLS)")
        })
    }
}

/// An Operator API client.
pub type Operator = v1::operator_client::OperatorClient<AuthChannel>;

pub fn operator(ch: &AuthChannel) -> Operator {
    v1::operator_client::OperatorClient::new(ch.clone())
        .max_decoding_message_size(1 << 30)
        .max_encoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
}

pub fn artifacts(ch: &AuthChannel) -> v1::artifacts_client::ArtifactsClient<AuthChannel> {
    v1::artifacts_client::ArtifactsClient::new(ch.clone())
        .max_decoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
}

/// A gRPC error as a one-line, lower-case message.
pub fn status_msg(s: &tonic::Status) -> String {
    let m = s.message();
    if m.is_empty() { format!("{:?}", s.code()).to_lowercase() } else { m.to_string() }
}

/// RFC 3339 UTC with milliseconds, from unix milliseconds; `None` for 0.
pub fn rfc3339(ms: i64) -> Option<String> {
    (ms > 0).then(|| wasmos_model::rfc3339_ms(ms))
}

/// A single-threaded runtime for one client command.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Prints `wasmos CMD: E` and returns exit code 2.
pub fn fail(cmd: &str, e: String) -> std::process::ExitCode {
    eprintln!("wasmos {cmd}: {e}");
    std::process::ExitCode::from(2)
}

/// Wire resources as text (`cpus:1;mem:64MiB`); empty ones as "".
pub fn res(r: &Option<v1::Resources>) -> String {
    wasmos_proto::resources_from_wire(r.as_ref())
        .ok()
        .filter(|r| !r.is_empty())
        .map(|r| r.to_string())
        .unwrap_or_default()
}
