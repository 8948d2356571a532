//! `wasmos sim SCENARIO.json [--json]` — being written (issue 3).

use std::process::ExitCode;

use crate::SimArgs;

pub fn run(args: &SimArgs) -> ExitCode {
    eprintln!("wasmos sim: not built yet ({}, json={})", args.scenario.display(), args.json);
    ExitCode::from(2)
}
