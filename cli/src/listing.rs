//! The listings (`tasks`, `agents`, `frameworks`, `roles`, `framework ls`):
//! connect, walk the Operator API's pages, and print an aligned table or,
//! with `--json`, one JSON object per line — each page as it arrives, so the
//! first rows show at once however long the listing.

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

use wasmos_proto::v1::operator_client::OperatorClient;
use wasmos_security::client::AuthChannel;

use crate::client::{self, MasterArg, fail, status_msg};

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

/// A table printed page by page: columns are as wide as the widest cell seen
/// so far (a later, wider cell widens the rows after it).
struct Table {
    widths: Vec<usize>,
}

impl Table {
    fn print(&mut self, rows: &[Vec<String>], out: &mut impl Write) {
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                let n = c.chars().count();
                match self.widths.get_mut(i) {
                    Some(w) => *w = (*w).max(n),
                    None => self.widths.push(n),
                }
            }
        }
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, s)| if i + 1 == r.len() { s.clone() } else { format!("{s:<w$}", w = self.widths[i]) })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
    }
}

impl<T> Listing<T> {
    /// Connects to `master`, fetches the items with `fetch` and prints them.
    pub async fn show<F, Fut>(&self, master: &MasterArg, json: bool, fetch: F) -> ExitCode
    where
        F: FnOnce(OperatorClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<Vec<T>, tonic::Status>>,
    {
        let mut fetch = Some(fetch);
        self.show_pages(master, json, None, |op, _| {
            let f = fetch.take().expect("one page");
            async move { f(op).await.map(|items| (items, String::new())) }
        })
        .await
    }

    /// Like [`Listing::show`], walking pages: `fetch(client, token)` returns
    /// a page and the next token (empty: no more). `limit`: stop after that
    /// many rows. A master that cannot be reached or refuses: `wasmos CMD:
    /// why`, exit 2 (after the rows already printed).
    pub async fn show_pages<F, Fut>(
        &self,
        master: &MasterArg,
        json: bool,
        limit: Option<usize>,
        mut fetch: F,
    ) -> ExitCode
    where
        F: FnMut(OperatorClient<AuthChannel>, String) -> Fut,
        Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
    {
        let ch = match master.connect().await {
            Ok(c) => c,
            Err(e) => return fail(self.cmd, e),
        };
        let op = client::operator(&ch);
        // Write errors (a reader that went away: `wasmos tasks | head`) are ignored.
        let mut out = std::io::stdout().lock();
        let mut table = Table { widths: Vec::new() };
        let mut left = limit.unwrap_or(usize::MAX);
        let mut token = String::new();
        let mut first = true;
        loop {
            let (mut items, next) = match fetch(op.clone(), token).await {
                Ok(page) => page,
                Err(e) => return fail(self.cmd, status_msg(&e)),
            };
            items.truncate(left);
            left -= items.len();
            if json {
                for item in &items {
                    let _ = writeln!(out, "{}", (self.json)(item));
                }
            } else {
                let mut rows: Vec<Vec<String>> = Vec::with_capacity(items.len() + 1);
                if first {
                    rows.push(self.header.iter().map(|h| h.to_string()).collect());
                }
                rows.extend(items.iter().map(self.row));
                table.print(&rows, &mut out);
            }
            let _ = out.flush();
            first = false;
            if next.is_empty() || left == 0 {
                return ExitCode::SUCCESS;
            }
            token = next;
        }
    }
}
