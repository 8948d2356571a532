//! `wasmos sim SCENARIO.json [--json]`: the allocator on a scenario file, no
//! cluster. The scenario format is in allocator/README.md.
//!
//! Exit codes: 0 when the simulation ran (settled or not), 2 when the scenario
//! cannot be read or is malformed.

use std::fmt::Write as _;
use std::process::ExitCode;

use wasmos_allocator::sim::{self, SimResult};

use crate::SimArgs;

pub fn run(args: &SimArgs) -> ExitCode {
    let path = args.scenario.display();
    let text = match std::fs::read_to_string(&args.scenario) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wasmos sim: cannot read {path}: {e}; check the path");
            return ExitCode::from(2);
        }
    };
    let scenario = match sim::parse_scenario(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wasmos sim: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = sim::simulate(&scenario);
    if args.json {
        println!("{}", result.to_json());
    } else {
        print!("{}", table(&result));
    }
    ExitCode::SUCCESS
}

/// Left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..n).map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-` for nothing, else `cpus:2;mem:1GiB`.
fn res(r: &wasmos_model::Resources) -> String {
    if r.is_empty() { "-".to_string() } else { r.to_string() }
}

fn table(r: &SimResult) -> String {
    let mut out = String::new();
    let how = if r.settled { "nothing more fits" } else { "max_cycles reached" };
    let _ = writeln!(out, "cluster {}; {} cycles ({how})\n", r.total, r.cycles);
    let mut rows = vec![["FRAMEWORK", "ROLE", "TASKS", "ALLOCATED", "SHARE"].map(String::from).to_vec()];
    for f in &r.frameworks {
        rows.push(vec![
            f.id.to_string(),
            f.role.to_string(),
            f.tasks.to_string(),
            res(&f.allocated),
            format!("{:.4}", f.dominant_share),
        ]);
    }
    out.push_str(&columns(&rows));
    out.push('\n');
    let mut rows = vec![["ROLE", "WEIGHT", "ALLOCATED", "RESERVED", "SHARE"].map(String::from).to_vec()];
    for role in &r.roles {
        rows.push(vec![
            role.role.to_string(),
            format!("{}", role.weight),
            res(&role.allocated),
            res(&role.reserved),
            format!("{:.4}", role.dominant_share),
        ]);
    }
    out.push_str(&columns(&rows));
    out
}
