//! `cargo xtask <command>`: project automation, in Rust so it runs wherever cargo does.
//!
//! - `setup`   install what building guests needs (idempotent)
//! - `guests`  build every example guest into target/guests/<name>.wasm
//! - `test`    setup if needed, build guests, run every test of the workspace
//! - `demo`    build the hello guest and run it under `wasmos run`
//! - `bench`   run the criterion benchmarks (`cargo xtask bench [sandbox|...]`)

mod bench;
mod chaos;
mod demo;
mod dev;
mod guests;
mod languages;
mod setup;
mod test;
mod util;

use anyhow::Result;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = util::repo_root();
    match args.first().map(String::as_str) {
        Some("setup") => setup::setup(&root).map(|_| ()),
        Some("guests") => guests::guests(&root),
        Some("test") => test::test(&root, &args[1..]),
        Some("demo") => demo::demo(&root),
        Some("bench") => bench::bench(&root, &args[1..]),
        Some("chaos") => chaos::chaos(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  setup   install guest toolchains (rustup wasm targets, or Debian's \
                 rustc-web; clang-16 + wasi-libc; Zig, Go, Node packages, componentize-py, grpcio)\n  guests  build example guests into target/guests/\n  test    setup, \
                 guests, then cargo test --workspace\n  demo    run the hello guest under `wasmos run`\n  bench   run \
                 criterion benchmarks: bench [sandbox|allocator|all], or bench e2e [--registry in-memory] [--agent-checkpoint off]\n  chaos   fault injection with real processes: chaos [--tasks N] [--framework-tasks N]"
            );
            std::process::exit(2);
        }
    }
}
