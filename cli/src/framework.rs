//! `wasmos framework deploy|ls|rm`: frameworks whose scheduler is a Wasm
//! component hosted by the master.

use std::path::PathBuf;
use std::process::ExitCode;

use wasmos_proto::v1;

use crate::client::{self, MasterArg, status_msg};
use crate::listing::Listing;

#[derive(clap::Subcommand, Debug)]
pub enum FrameworkCmd {
    /// Upload a wasmos:scheduler component and start it as a framework.
    Deploy(DeployArgs),
    /// List frameworks (hosted ones with their scheduler's health).
    Ls(LsArgs),
    /// Tear a hosted framework down (its tasks are killed).
    Rm(RmArgs),
}

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// Unique name; `wasmos submit --framework NAME` hands it jobs.
    #[arg(long)]
    pub name: String,
    /// Role for fair sharing (e.g. eng/batch).
    #[arg(long, default_value = "default")]
    pub role: String,
    /// Passed to the scheduler's init (often JSON).
    #[arg(long, value_name = "JSON", default_value = "")]
    pub config: String,
    /// The module's signature (from `wasmos sign`), for a role that
    /// requires signed modules [default: SCHED.wasm.sig when it exists]
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    #[arg(value_name = "SCHED.wasm")]
    pub module: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub master: MasterArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    pub master: MasterArg,
    pub name: String,
}

fn fail(e: String) -> ExitCode {
    client::fail("framework", e)
}

fn ls_json(f: &v1::FrameworkSummary) -> serde_json::Value {
    serde_json::json!({
        "framework_id": f.framework_id, "name": f.name, "role": f.role,
        "hosted": f.hosted, "status": f.status, "active_tasks": f.active_tasks,
        "callbacks": f.callbacks, "callback_failures": f.callback_failures,
        "last_error": if f.last_error.is_empty() { None } else { Some(&f.last_error) },
    })
}

fn ls_row(f: &v1::FrameworkSummary) -> Vec<String> {
    vec![
        f.name.clone(),
        f.framework_id.clone(),
        f.role.clone(),
        if f.hosted { "hosted".into() } else { "remote".into() },
        f.status.clone(),
        f.active_tasks.to_string(),
        f.callbacks.to_string(),
        f.last_error.lines().next().unwrap_or("").to_string(),
    ]
}

/// `framework ls`: like `wasmos frameworks`, with the hosted schedulers' health.
const LS: Listing<v1::FrameworkSummary> = Listing {
    cmd: "framework",
    header: &["NAME", "FRAMEWORK", "ROLE", "KIND", "STATUS", "ACTIVE", "CALLBACKS", "ERROR"],
    row: ls_row,
    json: ls_json,
};

pub fn main(cmd: FrameworkCmd) -> ExitCode {
    client::rt().block_on(async move {
        match cmd {
            FrameworkCmd::Deploy(a) => {
                let bytes = match std::fs::read(&a.module) {
                    Ok(b) => b,
                    Err(e) => return fail(format!("cannot read {}: {e}; check the path", a.module.display())),
                };
                let ch = match a.master.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                };
                let sha = match crate::submit::upload(&ch, &bytes).await {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                let signature = match crate::sign::signature_for(&a.module, a.signature.as_deref()) {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                let req = v1::DeployRequest {
                    name: a.name.clone(),
                    role: a.role,
                    config: a.config,
                    module_sha256: sha,
                    signature,
                };
                match client::operator(&ch).deploy_framework(req).await {
                    Ok(r) => {
                        println!("{}", r.into_inner().framework_id);
                        eprintln!(
                            "wasmos framework: {} deployed; submit jobs with `wasmos submit --framework {}`",
                            a.name, a.name
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(status_msg(&e)),
                }
            }
            FrameworkCmd::Ls(a) => {
                LS.show_pages(&a.master, a.json, None, |mut op, page_token| async move {
                    let r =
                        op.list_frameworks(v1::ListFrameworksRequest { page_token, page_size: 0 }).await?.into_inner();
                    Ok((r.frameworks, r.next_page_token))
                })
                .await
            }
            FrameworkCmd::Rm(a) => {
                let ch = match a.master.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                };
                match client::operator(&ch).remove_framework(v1::RemoveFrameworkRequest { name: a.name.clone() }).await
                {
                    Ok(_) => {
                        eprintln!("wasmos framework: {} removed", a.name);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(status_msg(&e)),
                }
            }
        }
    })
}
