//! `wasmos token create|ls|revoke` (bearer tokens and their grants) and
//! `wasmos audit` (the master's audit log).

use std::io::{BufRead, Seek};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use wasmos_proto::v1;

use crate::client::{self, MasterArg, rfc3339, rt, status_msg};

#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token; prints its secret once (the master keeps only a hash).
    Create(CreateArgs),
    /// List tokens: names, grants, expiry (never a secret).
    Ls(LsArgs),
    /// Revoke a token: its next call, and every stream it has open, fail.
    Revoke(RevokeArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// A unique name (letters, digits, -_.@).
    pub name: String,
    /// What it may do: ACTION:ROLE, ROLE a role, a subtree (eng/*) or *.
    /// Actions: view, submit, kill, register_framework, deploy_framework,
    /// reserve, quota, drain, tokens, admin (repeatable).
    #[arg(long = "grant", value_name = "ACTION:ROLE", required_unless_present = "agent", conflicts_with = "agent")]
    pub grants: Vec<String>,
    /// A join token for agents (`wasmos agent --join TOKEN`); it carries the
    /// CA's fingerprint, so the agent trusts this master on first contact.
    #[arg(long)]
    pub agent: bool,
    /// With --agent: how many agents may join with it [default: any number]
    #[arg(long, value_name = "N", requires = "agent")]
    pub uses: Option<u32>,
    /// How long it is valid [default: no expiry; join tokens a day]
    #[arg(long, value_name = "DUR", value_parser = crate::args::duration)]
    pub ttl: Option<Duration>,
    /// One JSON object: name, grants, expiry and the secret.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub master: MasterArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub master: MasterArg,
    pub name: String,
}

fn fail(e: String) -> ExitCode {
    client::fail("token", e)
}

fn info_json(t: &v1::TokenInfo) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "grants": t.grants,
        "created_at": rfc3339(t.created_at_ms),
        "expires_at": rfc3339(t.expires_at_ms),
        "created_by": t.created_by,
        "kind": t.kind,
        "uses_left": t.uses_left,
        "agent_id": t.agent_id,
    })
}

pub fn main(cmd: TokenCmd) -> ExitCode {
    rt().block_on(async move {
        match cmd {
            TokenCmd::Create(a) => {
                // Checked here first: a clear message before any call.
                if let Err(e) = wasmos_security::grant::Grants::parse(&a.grants) {
                    return fail(e);
                }
                let ch = match a.master.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                };
                let req = v1::CreateTokenRequest {
                    name: a.name.clone(),
                    grants: a.grants.clone(),
                    ttl_ms: a.ttl.map_or(0, |d| d.as_millis() as u64),
                    agent: a.agent,
                    uses: a.uses.unwrap_or(0),
                };
                match client::operator(&ch).create_token(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        if a.json {
                            let mut v = r.token.as_ref().map(info_json).unwrap_or_default();
                            v["secret"] = serde_json::Value::String(r.secret);
                            println!("{v}");
                        } else {
                            println!("{}", r.secret);
                            if a.agent {
                                eprintln!(
                                    "wasmos token: join token {} created; the secret above is shown once (start agents with `wasmos agent --master URL --join TOKEN`)",
                                    a.name
                                );
                            } else {
                                eprintln!(
                                    "wasmos token: {} created with {}; the secret above is shown once (pass it as --token or WASMOS_TOKEN)",
                                    a.name,
                                    a.grants.join(", ")
                                );
                            }
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(status_msg(&e)),
                }
            }
            TokenCmd::Ls(a) => {
                let ch = match a.master.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                };
                match client::operator(&ch).list_tokens(v1::ListTokensRequest {}).await {
                    Ok(r) => {
                        let tokens = r.into_inner().tokens;
                        if a.json {
                            for t in &tokens {
                                println!("{}", info_json(t));
                            }
                        } else {
                            println!("{:<24} {:<6} {:<40} {:<25} CREATED BY", "NAME", "KIND", "GRANTS", "EXPIRES");
                            for t in &tokens {
                                let grants = match t.kind.as_str() {
                                    "join" if t.uses_left > 0 => format!("({} uses left)", t.uses_left),
                                    "agent" => format!("(agent {})", t.agent_id),
                                    _ => t.grants.join(","),
                                };
                                println!(
                                    "{:<24} {:<6} {:<40} {:<25} {}",
                                    t.name,
                                    t.kind,
                                    grants,
                                    rfc3339(t.expires_at_ms).unwrap_or_else(|| "never".into()),
                                    t.created_by
                                );
                            }
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(status_msg(&e)),
                }
            }
            TokenCmd::Revoke(a) => {
                let ch = match a.master.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                };
                match client::operator(&ch).revoke_token(v1::RevokeTokenRequest { name: a.name.clone() }).await {
                    Ok(_) => {
                        eprintln!("wasmos token: {} revoked", a.name);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(status_msg(&e)),
                }
            }
        }
    })
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The master's state directory (its audit.jsonl) [default:
    /// ~/.local/state/wasmos/master, else the dev cluster's ~/.local/state/wasmos/dev]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep printing lines as they are appended.
    #[arg(long)]
    pub follow: bool,
    /// The JSON lines as they are.
    #[arg(long)]
    pub json: bool,
}

fn show(line: &str, json: bool) {
    if json {
        println!("{line}");
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let reason = s("reason");
    println!(
        "{} {:<5} {:<22} {:<18} {:<30} {}{}",
        s("time"),
        s("decision"),
        s("principal"),
        s("action"),
        s("object"),
        s("role"),
        if reason.is_empty() { String::new() } else { format!("  ({reason})") }
    );
}

/// `wasmos audit`: reads STATE_DIR/audit.jsonl (on the master's machine).
pub fn audit(a: AuditArgs) -> ExitCode {
    let dir = a.state_dir.clone().unwrap_or_else(|| {
        let master = crate::cluster::default_state_dir("master");
        let dev = crate::cluster::default_state_dir("dev");
        if !master.join("audit.jsonl").exists() && dev.join("audit.jsonl").exists() { dev } else { master }
    });
    let path = dir.join("audit.jsonl");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            return client::fail(
                "audit",
                format!(
                    "cannot read {}: {e}; pass the master's --state-dir (the dev cluster's is ~/.local/state/wasmos/dev)",
                    path.display()
                ),
            );
        }
    };
    let mut r = std::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) if a.follow => {
                std::thread::sleep(Duration::from_millis(200));
                // Rotated: start over on the new file.
                let pos = r.stream_position().unwrap_or(0);
                if std::fs::metadata(&path).map(|m| m.len() < pos).unwrap_or(false)
                    && let Ok(f) = std::fs::File::open(&path)
                {
                    r = std::io::BufReader::new(f);
                }
            }
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) if line.ends_with('\n') || !a.follow => show(line.trim_end(), a.json),
            // Half a line (being written): read the rest next time.
            Ok(n) => {
                let _ = r.seek_relative(-(n as i64));
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return client::fail("audit", format!("reading {}: {e}", path.display())),
        }
    }
}
