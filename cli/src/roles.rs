//! `wasmos roles`, `wasmos role set`, `wasmos reserve|unreserve`: fair-sharing
//! settings through the Operator API. The master keeps them in its registry,
//! so they survive restarts.

use std::collections::BTreeMap;
use std::process::ExitCode;

use wasmos_model::{Resources, Scalar};
use wasmos_proto::v1;

use crate::client::{self, MasterArg, fail, res, rt, status_msg};
use crate::listing::{ListArgs, Listing};

#[derive(clap::Subcommand, Debug)]
pub enum RoleCmd {
    /// Set a role's weight and/or quota (what is not given stays as it is).
    Set(RoleSetArgs),
}

#[derive(clap::Args, Debug)]
pub struct RoleSetArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The role, e.g. eng or eng/batch.
    pub role: String,
    /// Share entitlement relative to other roles (default of every role: 1).
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub weight: Option<f64>,
    /// Resources the role is offered before others, e.g. cpus:4;mem:8GiB.
    #[arg(long, value_name = "RES", value_parser = crate::args::resources)]
    pub guarantee: Option<Resources>,
    /// Most the role may hold, e.g. cpus:8 (a resource left out is unlimited; cpus:0 means none).
    #[arg(long, value_name = "RES", value_parser = limit)]
    pub limit: Option<BTreeMap<String, Scalar>>,
    /// Drop the role's guarantee and limit (before applying --guarantee/--limit).
    #[arg(long)]
    pub clear_quota: bool,
    /// Modules for this role must be signed by this ed25519 public key
    /// (from `wasmos keygen`; repeatable: any of them; replaces the role's keys).
    #[arg(long, value_name = "PUBKEY")]
    pub require_signed: Vec<String>,
    /// Accept unsigned modules for this role again.
    #[arg(long, conflicts_with = "require_signed")]
    pub clear_signers: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReserveArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The agent (see `wasmos agents`).
    pub agent: String,
    /// The role the resources are set aside for.
    pub role: String,
    /// What to reserve or release, e.g. cpus:1;mem:1GiB.
    #[arg(value_parser = crate::args::resources)]
    pub resources: Resources,
}

fn limit(s: &str) -> Result<BTreeMap<String, Scalar>, String> {
    wasmos_allocator::parse_limit(s).map_err(|e| e.to_string())
}

/// A limit as written on the command line (zeros kept; empty: unlimited).
fn limit_text(r: &Option<v1::Resources>) -> String {
    let parts: Vec<String> = r
        .iter()
        .flat_map(|l| &l.scalars)
        .map(|s| {
            let mut one = Resources::new();
            one.set(&s.name, Scalar(s.milli));
            if s.milli == 0 { format!("{}:0", s.name) } else { one.to_string() }
        })
        .collect();
    parts.join(";")
}

fn role_json(r: &v1::RoleSummary) -> serde_json::Value {
    let q = r.quota.clone().unwrap_or_default();
    serde_json::json!({
        "role": r.role, "weight": r.weight, "guarantee": res(&q.guarantee), "limit": limit_text(&q.limit),
        "reserved": res(&r.reserved), "allocated": res(&r.allocated), "share": r.dominant_share,
        "frameworks": r.frameworks, "signers": r.signers,
    })
}

fn role_row(r: &v1::RoleSummary) -> Vec<String> {
    let q = r.quota.clone().unwrap_or_default();
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    vec![
        r.role.clone(),
        format!("{}", r.weight),
        or_dash(res(&q.guarantee)),
        or_dash(limit_text(&q.limit)),
        or_dash(res(&r.reserved)),
        or_dash(res(&r.allocated)),
        format!("{:.3}", r.dominant_share),
        or_dash(r.frameworks.join(",")),
    ]
}

const ROLES: Listing<v1::RoleSummary> = Listing {
    cmd: "roles",
    header: &["ROLE", "WEIGHT", "GUARANTEE", "LIMIT", "RESERVED", "ALLOCATED", "SHARE", "FRAMEWORKS"],
    row: role_row,
    json: role_json,
};

pub fn list(args: ListArgs) -> ExitCode {
    rt().block_on(ROLES.show(&args.master, args.json, |mut op| async move {
        op.list_roles(v1::ListRolesRequest {}).await.map(|r| r.into_inner().roles)
    }))
}

pub fn role(cmd: RoleCmd) -> ExitCode {
    let RoleCmd::Set(a) = cmd;
    if a.weight.is_none()
        && a.guarantee.is_none()
        && a.limit.is_none()
        && !a.clear_quota
        && a.require_signed.is_empty()
        && !a.clear_signers
    {
        return fail(
            "role set",
            "nothing to set; give --weight, --guarantee, --limit, --clear-quota, --require-signed or --clear-signers"
                .into(),
        );
    }
    rt().block_on(async {
        let ch = match a.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("role set", e),
        };
        let req = v1::UpdateRoleRequest {
            role: a.role.clone(),
            weight: a.weight,
            quota_guarantee: a.guarantee.as_ref().map(wasmos_proto::resources_to_wire),
            quota_limit: a.limit.as_ref().map(|l| v1::Resources {
                scalars: l.iter().map(|(n, v)| v1::Scalar { name: n.clone(), milli: v.milli() }).collect(),
            }),
            clear_quota: a.clear_quota,
            require_signed: a.require_signed.clone(),
            clear_signers: a.clear_signers,
        };
        match client::operator(&ch).update_role(req).await {
            Ok(r) => {
                let r = r.into_inner().role.unwrap_or_default();
                if a.json {
                    println!("{}", role_json(&r));
                } else {
                    let q = r.quota.clone().unwrap_or_default();
                    println!(
                        "role {}: weight {}, guarantee {}, limit {}",
                        r.role,
                        r.weight,
                        Some(res(&q.guarantee)).filter(|s| !s.is_empty()).unwrap_or_else(|| "none".into()),
                        Some(limit_text(&q.limit)).filter(|s| !s.is_empty()).unwrap_or_else(|| "none".into()),
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("role set", status_msg(&e)),
        }
    })
}

/// `wasmos reserve`: set part of an agent aside for a role.
pub fn reserve(a: ReserveArgs) -> ExitCode {
    change_reservation(a, Change::Reserve)
}

/// `wasmos unreserve`: release a dynamic reservation.
pub fn unreserve(a: ReserveArgs) -> ExitCode {
    change_reservation(a, Change::Unreserve)
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Reserve,
    Unreserve,
}

fn change_reservation(a: ReserveArgs, change: Change) -> ExitCode {
    let verb = match change {
        Change::Reserve => "reserve",
        Change::Unreserve => "unreserve",
    };
    rt().block_on(async {
        let ch = match a.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail(verb, e),
        };
        let req = v1::ReserveRequest {
            agent_id: a.agent.clone(),
            role: a.role.clone(),
            resources: Some(wasmos_proto::resources_to_wire(&a.resources)),
        };
        let mut op = client::operator(&ch);
        let r = match change {
            Change::Reserve => op.reserve(req).await,
            Change::Unreserve => op.unreserve(req).await,
        };
        match r {
            Ok(r) => {
                let now = res(&r.into_inner().reserved);
                let now = if now.is_empty() { "nothing".to_string() } else { now };
                println!("agent {}: {now} reserved for role {}", a.agent, a.role);
                ExitCode::SUCCESS
            }
            Err(e) => fail(verb, status_msg(&e)),
        }
    })
}
