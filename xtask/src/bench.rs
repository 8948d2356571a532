//! `cargo xtask bench`: the criterion benchmarks of the sandbox and the
//! allocator, and the end-to-end benchmark against a release `wasmos dev`.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::dev::Dev;
use crate::flags::{Bench, E2eArgs, Security, Switch};
use crate::util::run;

/// `cargo xtask bench [sandbox|allocator|all]`: the criterion benchmarks
/// (all when none is named); `bench e2e`: the whole cluster over loopback gRPC.
pub fn bench(root: &Path, which: Option<&Bench>) -> Result<()> {
    let pkgs: &[&str] = match which {
        None | Some(Bench::All) => &["wasmos-sandbox", "wasmos-allocator"],
        Some(Bench::Sandbox) => &["wasmos-sandbox"],
        Some(Bench::Allocator) => &["wasmos-allocator"],
        Some(Bench::E2e(args)) => return e2e(root, args),
        Some(Bench::Memory(args)) => return crate::retention::memory(root, args),
        Some(Bench::Restart(args)) => return crate::retention::restart(root, args),
        Some(Bench::Density(a)) => {
            let mut v = vec!["density".to_string(), "--tasks".into(), a.tasks.to_string()];
            v.push("--".into());
            v.extend(a.agent_flags.iter().cloned());
            return agent_bench(root, &v);
        }
        Some(Bench::Noisy(a)) => {
            let mut v = vec!["noisy".to_string(), "--spinners".into(), a.spinners.to_string()];
            v.extend(["--samples".to_string(), a.samples.to_string(), "--".into()]);
            v.extend(a.agent_flags.iter().cloned());
            return agent_bench(root, &v);
        }
    };
    for p in pkgs {
        run(Command::new("cargo").current_dir(root).args(["bench", "-p", p]))?;
    }
    Ok(())
}

/// `cargo xtask bench density|noisy`: the agent_bench example (release)
/// against release `wasmos master` and `wasmos agent` processes.
fn agent_bench(root: &Path, args: &[String]) -> Result<()> {
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "wasmos",
        "--bin",
        "wasmos",
        "--example",
        "agent_bench",
    ]))?;
    let release = root.join("target/release");
    let (mode, rest) = args.split_first().expect("a mode");
    run(Command::new(release.join("examples/agent_bench"))
        .arg(mode)
        .arg("--wasmos")
        .arg(release.join("wasmos"))
        .args(rest))
}

/// `cargo xtask bench e2e [--registry in-memory] [--agent-checkpoint off] [--tasks N] [--latency-samples N]`:
/// starts a release `wasmos dev` (one agent with the whole machine; durable
/// registry unless `--registry in-memory`) and runs the e2e client against it
/// over loopback gRPC.
fn e2e(root: &Path, args: &E2eArgs) -> Result<()> {
    // clap hands everything from the first flag it does not know onwards to
    // the client; a dev flag in there would be silently ignored.
    if let Some(f) =
        args.client_args.iter().find(|a| ["--registry", "--agent-checkpoint", "--security"].contains(&a.as_str()))
    {
        bail!("{f} must come before {}, which is passed on to the e2e_bench client", args.client_args[0]);
    }
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "wasmos",
        "--bin",
        "wasmos",
        "--example",
        "e2e_bench",
    ]))?;
    let this = root.join("target/release");
    if args.etcd {
        crate::setup::apt_install(&crate::setup::DEBIAN_TEST_TOOLS)?;
        for round in 0..args.rounds {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for etcd in order {
                let name = if etcd { "etcd (3 members)" } else { "redb" };
                eprintln!("xtask: bench e2e round {} of {}: {name}", round + 1, args.rounds);
                if etcd {
                    let c = crate::etcd::EtcdCluster::start(&this.join("wasmos"), "bench")?;
                    run(Command::new(this.join("examples/e2e_bench"))
                        .env("WASMOS_CONFIG", &c.config)
                        .args(["--master", &c.url])
                        .args(&args.client_args)
                        .args([
                            "--tasks",
                            &args.tasks.to_string(),
                            "--latency-samples",
                            &args.latency_samples.to_string(),
                        ]))?;
                } else {
                    e2e_once(&this, &this.join("examples"), args, false)?;
                }
            }
        }
        return Ok(());
    }
    if args.security == Security::Both {
        // TLS + tokens against --insecure, alternating which goes first.
        for round in 0..args.rounds {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for insecure in order {
                let name = if insecure { "--insecure" } else { "tls" };
                eprintln!("xtask: bench e2e round {} of {}: {name}", round + 1, args.rounds);
                e2e_once(&this, &this.join("examples"), args, insecure)?;
            }
        }
        return Ok(());
    }
    let insecure = args.security == Security::Insecure;
    let Some(other) = &args.against else { return e2e_once(&this, &this.join("examples"), args, insecure) };
    if !other.join("wasmos").is_file() || !other.join("e2e_bench").is_file() {
        bail!("--against {}: put that build's wasmos and e2e_bench in it", other.display());
    }
    // Alternate which build goes first, so drift of the machine hits both.
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for this_build in order {
            let (name, bin, client) =
                if this_build { ("this", &this, this.join("examples")) } else { ("against", other, other.clone()) };
            eprintln!("xtask: bench e2e round {} of {}: {name} ({})", round + 1, args.rounds, bin.display());
            e2e_once(bin, &client, args, insecure)?;
        }
    }
    Ok(())
}

/// One run: `wasmos` from `bin`, `e2e_bench` from `client`.
fn e2e_once(bin: &Path, client: &Path, args: &E2eArgs, insecure: bool) -> Result<()> {
    let mut dev_args = vec!["--registry", args.registry.as_str()];
    if insecure {
        dev_args.push("--insecure");
    }
    if args.agent_checkpoint == Switch::Off {
        dev_args.push("--no-checkpoint");
    }
    let dev = Dev::start(&bin.join("wasmos"), "bench", &dev_args)?;
    // The client takes the first occurrence of a flag, so a `--tasks` among
    // the passed-on arguments wins over the one parsed here.
    run(Command::new(client.join("e2e_bench"))
        .env("WASMOS_CONFIG", &dev.config)
        .args(["--master", &dev.url])
        .args(&args.client_args)
        .args(["--tasks", &args.tasks.to_string(), "--latency-samples", &args.latency_samples.to_string()]))
}
