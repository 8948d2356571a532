//! `wasmos agent drain|undrain|eligibility`: maintenance of agents (grant
//! `drain:*`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use wasmos_proto::v1;

use crate::client::{self, MasterArg, rt, status_msg};

#[derive(clap::Subcommand, Debug)]
pub enum AgentOp {
    /// Drain an agent: no new offers, its frameworks are told, its tasks run
    /// until the deadline, when the rest are killed (batch tasks queued
    /// again elsewhere, the attempt not counted). Prints what is left until
    /// it is DRAINED; Ctrl-C stops watching, not the drain.
    Drain(DrainArgs),
    /// Undo a drain: the agent gets offers again (if eligible).
    Undrain(AgentIdArgs),
    /// Whether the agent gets offers; its tasks run on either way.
    Eligibility(EligibilityArgs),
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The agent's id (`wasmos agents`).
    pub agent: String,
    /// How long its tasks may run before what is left is killed.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = crate::args::duration, conflicts_with_all = ["no_deadline", "force"])]
    pub deadline: Duration,
    /// Let its tasks run for as long as they take.
    #[arg(long)]
    pub no_deadline: bool,
    /// Kill (and requeue) everything now: the deadline is now.
    #[arg(long)]
    pub force: bool,
    /// Move migratable batch tasks (`wasmos submit --migratable`) now: each
    /// is captured at its next heartbeat and resumed on another agent with
    /// its memory, fuel and time so far; the others run to the deadline.
    #[arg(long)]
    pub migrate: bool,
    /// Return at once instead of printing what is left until it is drained.
    #[arg(long)]
    pub detach: bool,
    /// Once drained, remove the agent for good: its identity is revoked and
    /// its id can never come back (waits for DRAINED; alone on a drained
    /// agent, only marks it gone).
    #[arg(long, conflicts_with = "detach")]
    pub mark_gone: bool,
    /// How often the monitor looks.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = crate::args::duration)]
    pub poll: Duration,
}

#[derive(clap::Args, Debug)]
pub struct AgentIdArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The agent's id (`wasmos agents`).
    pub agent: String,
}

#[derive(clap::Args, Debug)]
pub struct EligibilityArgs {
    #[command(flatten)]
    pub master: MasterArg,
    /// The agent's id (`wasmos agents`).
    pub agent: String,
    #[arg(value_parser = ["on", "off"])]
    pub eligible: String,
}

fn fail(e: String) -> ExitCode {
    client::fail("agent", e)
}

fn now() -> String {
    wasmos_model::rfc3339_ms(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
    )
}

fn describe(a: &v1::AgentSummary) -> String {
    let deadline = match a.drain_deadline_ms {
        0 if a.mode == "draining" => ", no deadline".to_string(),
        0 => String::new(),
        d => {
            let left = d - now_ms();
            if left > 0 {
                format!(", deadline in {}", wasmos_model::format_duration(Duration::from_millis(left as u64)))
            } else {
                ", deadline passed".to_string()
            }
        }
    };
    format!(
        "agent {} is {}{}{}: {} task(s) left",
        a.agent_id,
        a.mode,
        if a.eligible { "" } else { " (ineligible)" },
        deadline,
        a.running_tasks
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn main(op: AgentOp) -> ExitCode {
    rt().block_on(async move {
        match op {
            AgentOp::Drain(a) => drain(a).await,
            AgentOp::Undrain(a) => {
                let ch = match a.master.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                };
                match client::operator(&ch).undrain_agent(v1::AgentRequest { agent_id: a.agent.clone() }).await {
                    Ok(r) => {
                        println!("{}", describe(&r.into_inner()));
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(status_msg(&e)),
                }
            }
            AgentOp::Eligibility(a) => {
                let ch = match a.master.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(e),
                };
                let req = v1::EligibilityRequest { agent_id: a.agent.clone(), eligible: a.eligible == "on" };
                match client::operator(&ch).set_eligibility(req).await {
                    Ok(r) => {
                        println!("{}", describe(&r.into_inner()));
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(status_msg(&e)),
                }
            }
        }
    })
}

async fn drain(a: DrainArgs) -> ExitCode {
    let ch = match a.master.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut op = client::operator(&ch);
    // Alone on an agent already drained, --mark-gone only marks it gone.
    let current = find(&mut op, &a.agent).await;
    let already_drained = matches!(&current, Ok(Some(s)) if s.mode == "drained");
    let mut last = String::new();
    let key = |s: &v1::AgentSummary| format!("{} {} {}", s.mode, s.eligible, s.running_tasks);
    if !(a.mark_gone && already_drained) {
        let req = v1::DrainAgentRequest {
            agent_id: a.agent.clone(),
            deadline_ms: (!a.no_deadline && !a.force).then_some(a.deadline.as_millis() as u64),
            force: a.force,
            migrate: a.migrate,
        };
        match op.drain_agent(req).await {
            Ok(r) => {
                let s = r.into_inner();
                println!("{} {}", now(), describe(&s));
                last = key(&s);
            }
            Err(e) => return fail(status_msg(&e)),
        }
        if a.detach {
            eprintln!("wasmos agent: draining in the background; watch it with `wasmos agents`");
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "wasmos agent: Ctrl-C stops watching; the drain goes on (`wasmos agent undrain {}` undoes it)",
            a.agent
        );
    }
    let mut last_print = Instant::now();
    loop {
        let s = match find(&mut op, &a.agent).await {
            Ok(Some(s)) => s,
            Ok(None) => return fail(format!("agent {} is no longer registered", a.agent)),
            // The master may be restarting: keep watching.
            Err(e) => {
                eprintln!("{} wasmos agent: {e}; retrying", now());
                tokio::time::sleep(a.poll).await;
                continue;
            }
        };
        // A line when something changed, and at least every 30 s.
        if key(&s) != last || last_print.elapsed() >= Duration::from_secs(30) {
            println!("{} {}", now(), describe(&s));
            last = key(&s);
            last_print = Instant::now();
        }
        match s.mode.as_str() {
            "drained" => break,
            "active" => return fail(format!("agent {} was undrained", a.agent)),
            _ => {}
        }
        tokio::time::sleep(a.poll).await;
    }
    if a.mark_gone {
        match op.mark_gone(v1::AgentRequest { agent_id: a.agent.clone() }).await {
            Ok(_) => println!("{} agent {} is gone for good (its identity is revoked)", now(), a.agent),
            Err(e) => return fail(status_msg(&e)),
        }
    }
    ExitCode::SUCCESS
}

/// The agent as the master lists it (`None`: not registered).
async fn find(op: &mut client::Operator, id: &str) -> Result<Option<v1::AgentSummary>, String> {
    let mut token = String::new();
    loop {
        let r = op
            .list_agents(v1::ListAgentsRequest { page_size: 1000, page_token: token })
            .await
            .map_err(|e| status_msg(&e))?
            .into_inner();
        if let Some(a) = r.agents.into_iter().find(|a| a.agent_id == id) {
            return Ok(Some(a));
        }
        if r.next_page_token.is_empty() {
            return Ok(None);
        }
        token = r.next_page_token;
    }
}
