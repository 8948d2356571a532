//! `wasmos masters`: the masters, which one leads, its epoch and for how long.

use std::process::ExitCode;

use wasmos_proto::v1;

use crate::client::{fail, rt, status_msg};
use crate::listing::ListArgs;

/// "1h2m", "3m4s", "5.2s".
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{:.1}s", ms.max(0) as f64 / 1000.0),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s / 60 % 60),
    }
}

pub fn list(args: ListArgs) -> ExitCode {
    rt().block_on(async {
        let ch = match args.master.connect().await {
            Ok(c) => c,
            Err(e) => return fail("masters", e),
        };
        let r = match v1::masters_client::MastersClient::new(ch).list(v1::ListMastersRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(s) => return fail("masters", status_msg(&s)),
        };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        if args.json {
            let masters: Vec<_> = r
                .masters
                .iter()
                .map(|m| serde_json::json!({"url": m.url, "role": if m.leader { "leader" } else { "follower" }}))
                .collect();
            let since = crate::client::rfc3339(r.leader_since_ms);
            println!(
                "{}",
                serde_json::json!({
                    "ha": r.ha, "leader": r.leader, "epoch": r.epoch, "leader_since": since,
                    "answered_by": r.answered_by, "masters": masters,
                })
            );
            return ExitCode::SUCCESS;
        }
        if !r.ha {
            println!("one master (no --etcd), epoch {}", r.epoch);
            return ExitCode::SUCCESS;
        }
        println!("{:<32} {:<9} {:>6}  LEADING FOR", "URL", "ROLE", "EPOCH");
        for m in &r.masters {
            if m.leader {
                let led = if r.leader_since_ms > 0 { ago(now - r.leader_since_ms) } else { "(taking over)".into() };
                println!("{:<32} {:<9} {:>6}  {led}", m.url, "leader", r.epoch);
            } else {
                println!("{:<32} {:<9} {:>6}", m.url, "follower", "");
            }
        }
        if r.masters.is_empty() {
            println!("(no master is campaigning)");
        }
        ExitCode::SUCCESS
    })
}
