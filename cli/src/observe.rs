//! Looking at a running cluster from the shell: `wasmos metrics` (what
//! Prometheus scrapes), and `wasmos completion` for the shells.

use std::io::Write;
use std::process::ExitCode;

use crate::client::MasterArg;

/// Most bytes of metrics read.
const MAX_METRICS: usize = 64 << 20;

#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub master: MasterArg,
}

/// Prints the master's `/metrics` (Prometheus text format).
pub fn metrics(args: MetricsArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let got = args.master.target().and_then(|t| rt.block_on(t.http_get("/metrics", MAX_METRICS)));
    match got {
        Ok((200, body)) => {
            let _ = std::io::stdout().write_all(&body);
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            let text = String::from_utf8_lossy(&body);
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| text.trim().to_string());
            eprintln!("wasmos metrics: the master answered {code}: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("wasmos metrics: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// Prints a completion script: `wasmos completion bash > /etc/bash_completion.d/wasmos`,
/// `wasmos completion zsh > "${fpath[1]}/_wasmos"`, `wasmos completion fish > ~/.config/fish/completions/wasmos.fish`.
pub fn completion(args: CompletionArgs, cmd: &mut clap::Command) -> ExitCode {
    clap_complete::generate(args.shell, cmd, "wasmos", &mut std::io::stdout());
    ExitCode::SUCCESS
}
