//! The listings (`tasks`, `agents`, `frameworks`, `roles`, `framework ls`):
//! connect, one Operator API list call, then an aligned table or, with
//! `--json`, one JSON object per line.

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

use tonic::transport::Channel;
use wasmos_proto::v1::operator_client::OperatorClient;

use crate::client::{self, MasterArg, fail, status_msg, table};

/// Flags of a listing without filters.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How one kind of item is listed.
pub struct Listing<T> {
    /// The command, for errors: `wasmos CMD: why`.
    pub cmd: &'static str,
    /// The table's column names.
    pub header: &'static [&'static str],
    /// One table row, a cell per column.
    pub row: fn(&T) -> Vec<String>,
    /// One `--json` line.
    pub json: fn(&T) -> serde_json::Value,
}

impl<T> Listing<T> {
    /// Connects to `master`, fetches the items with `fetch` and prints them.
    /// A master that cannot be reached or refuses: `wasmos CMD: why`, exit 2.
    pub async fn show<F, Fut>(&self, master: &MasterArg, json: bool, fetch: F) -> ExitCode
    where
        F: FnOnce(OperatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Vec<T>, tonic::Status>>,
    {
        let ch = match master.connect().await {
            Ok(c) => c,
            Err(e) => return fail(self.cmd, e),
        };
        let items = match fetch(client::operator(&ch)).await {
            Ok(items) => items,
            Err(e) => return fail(self.cmd, status_msg(&e)),
        };
        // Write errors (a reader that went away: `wasmos tasks | head`) are ignored.
        let mut out = std::io::stdout().lock();
        if json {
            for item in &items {
                let _ = writeln!(out, "{}", (self.json)(item));
            }
        } else {
            let mut rows = vec![self.header.iter().map(|h| h.to_string()).collect()];
            rows.extend(items.iter().map(self.row));
            let _ = out.write_all(table(&rows).as_bytes());
        }
        ExitCode::SUCCESS
    }
}
