//! `cargo xtask <command>`: project automation, in Rust so it runs wherever
//! cargo does. One file per job; `flags.rs` is the command line.
//!
//! - `setup`   install what building guests needs (idempotent)
//! - `guests`  build every example guest into target/guests/<name>.wasm
//! - `test`    setup if needed, build guests, run every test of the workspace
//! - `demo`    the hello guest under `wasmos run` and on a `wasmos dev` cluster
//! - `bench`   the criterion benchmarks, `bench e2e` against `wasmos dev`, `bench memory` and
//!   `bench restart` (what a long run costs, how fast a long history restarts)
//! - `chaos`   the fault-injection suite with real processes
//! - `soak`    sustained load with repeated faults; memory, disk and latency over time

mod bench;
mod chaos;
mod demo;
mod dev;
mod edge;
mod etcd;
mod flags;
mod guests;
mod languages;
mod retention;
mod setup;
mod soak;
mod test;
mod util;

use flags::{Cmd, Xtask};

fn main() {
    let root = util::repo_root();
    let result = match Xtask::from_env().command {
        Cmd::Setup => setup::setup(&root).map(|_| ()),
        Cmd::Guests => guests::guests(&root),
        Cmd::Test(args) => test::test(&root, &args),
        Cmd::Demo => demo::demo(&root),
        Cmd::Edge => edge::build(&root).map(|_| ()),
        Cmd::Bench(args) => bench::bench(&root, args.which.as_ref()),
        Cmd::Chaos(args) => chaos::chaos(&root, &args),
        Cmd::Soak(args) => soak::soak(&root, &args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
