//! The API client the CLI uses: master address resolution, connections, and
//! small helpers. The CLI never reaches into server internals.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use wasmos_proto::v1;

/// Default master address for client commands.
pub const DEFAULT_MASTER: &str = "http://127.0.0.1:5050";

/// `--master`, else `WASMOS_MASTER`, else `http://127.0.0.1:5050`.
#[derive(clap::Args, Debug, Clone)]
pub struct MasterArg {
    /// The master's address [env: WASMOS_MASTER] [default: http://127.0.0.1:5050]
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
}

impl MasterArg {
    pub fn url(&self) -> String {
        let raw = self
            .master
            .clone()
            .or_else(|| std::env::var("WASMOS_MASTER").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_MASTER.to_string());
        if raw.contains("://") { raw } else { format!("http://{raw}") }
    }

    pub async fn connect(&self) -> Result<Channel, String> {
        let url = self.url();
        let ep = Endpoint::from_shared(url.clone())
            .map_err(|_| format!("master address {url:?} is not a URL; write e.g. http://127.0.0.1:5050"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        ep.connect().await.map_err(|e| {
            format!(
                "cannot reach the master at {url}: {e}; start one with `wasmos dev` or set --master / WASMOS_MASTER"
            )
        })
    }
}

/// An Operator API client.
pub type Operator = v1::operator_client::OperatorClient<Channel>;

pub fn operator(ch: &Channel) -> Operator {
    v1::operator_client::OperatorClient::new(ch.clone())
        .max_decoding_message_size(1 << 30)
        .max_encoding_message_size(wasmos_proto::MAX_MESSAGE_BYTES)
}

pub fn artifacts(ch: &Channel) -> v1::artifacts_client::ArtifactsClient<Channel> {
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
    if ms <= 0 {
        return None;
    }
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    Some(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_millis() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(1).unwrap(), "1970-01-01T00:00:00.001Z");
        assert_eq!(rfc3339(1_795_000_000_123).unwrap(), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(951_782_400_000).unwrap(), "2000-02-29T00:00:00.000Z");
    }
}
