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
pub struct DashboardArgs {
    #[command(flatten)]
    pub master: MasterArg,
}

/// Prints where the dashboard is and the token to log in with (the one
/// this client uses: `--token`, `WASMOS_TOKEN` or the client config).
pub fn dashboard(args: DashboardArgs) -> ExitCode {
    let t = match args.master.target() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wasmos dashboard: {e}");
            return ExitCode::from(2);
        }
    };
    println!("dashboard: {}/", t.url.trim_end_matches('/'));
    match &t.token {
        Some(tok) => println!("log in with the token: {tok}"),
        None => println!("log in with a token that may view something (`wasmos token create NAME --grant view:*`)"),
    }
    if t.url.starts_with("https://") {
        println!(
            "the browser will ask about the cluster's own certificate: accept it, or trust the CA (the master's STATE_DIR/tls/ca.pem)"
        );
    }
    ExitCode::SUCCESS
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
