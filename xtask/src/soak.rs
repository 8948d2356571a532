//! `cargo xtask soak`: the soak test (cli/examples/soak.rs) against real
//! `wasmos master` and `wasmos agent` processes, then soak.png from its CSV
//! (xtask/soak_plot.py, when Python's matplotlib is importable).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::flags::SoakArgs;
use crate::guests;
use crate::util::{guests_dir, quiet_ok, run};

/// `cargo xtask soak [flags]`: builds the guests and `wasmos` + the soak
/// example (release, or the debug build with `--debug`), runs it, plots.
pub fn soak(root: &Path, args: &SoakArgs) -> Result<()> {
    check(args)?;
    guests::guests(root)?;
    soak_built_guests(root, args)
}

/// The soak, with the guests already built (as `cargo xtask test` has them).
pub fn soak_built_guests(root: &Path, args: &SoakArgs) -> Result<()> {
    let mut build = Command::new("cargo");
    build.current_dir(root).args(["build", "--quiet", "-p", "wasmos", "--bin", "wasmos", "--example", "soak"]);
    if !args.debug {
        build.arg("--release");
    }
    run(&mut build)?;
    let bin = root.join("target").join(if args.debug { "debug" } else { "release" });
    let seed = args.seed.unwrap_or_else(clock_seed);
    let out = args.out.clone().unwrap_or_else(|| root.join("target/soak").join(utc_stamp(SystemTime::now())));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!("xtask: soak with seed {seed} into {}", out.display());
    let mut cmd = Command::new(bin.join("examples/soak"));
    cmd.arg("--wasmos").arg(bin.join("wasmos")).arg("--guests").arg(guests_dir(root)).arg("--out").arg(&out);
    for (flag, value) in [
        ("--duration-s", args.duration.as_secs_f64().to_string()),
        ("--rate", args.rate.to_string()),
        ("--agents", args.agents.to_string()),
        ("--faults-per-minute", args.faults_per_minute.to_string()),
        ("--seed", seed.to_string()),
        ("--sample-every-s", args.sample_every.as_secs_f64().to_string()),
        ("--growth-tolerance", args.growth_tolerance.to_string()),
        ("--growth-floor-mib", args.growth_floor_mib.to_string()),
        ("--settle-s", args.settle.as_secs_f64().to_string()),
        ("--p99-ratio", args.p99_ratio.to_string()),
        ("--p99-floor-ms", args.p99_floor_ms.to_string()),
    ] {
        cmd.arg(flag).arg(value);
    }
    if args.keep_events {
        cmd.arg("--keep-events");
    }
    let task_history = args.task_history.unwrap_or(args.duration / 4);
    cmd.arg("--master-arg").arg(format!("--task-history={}ms", task_history.as_millis().max(1)));
    for a in &args.master_arg {
        cmd.arg("--master-arg").arg(a);
    }
    let result = run(&mut cmd);
    // The plot is for people; the verdict above does not depend on it.
    plot(root, &out);
    result.with_context(|| {
        format!("the soak failed (seed {seed}); its summary is in {}", out.join("summary.txt").display())
    })
}

/// soak.png from soak.csv and faults.csv; only says why when it cannot.
fn plot(root: &Path, out: &Path) {
    if !quiet_ok(Command::new("python3").args(["-c", "import matplotlib"])) {
        eprintln!(
            "xtask: Python's matplotlib is not importable, so no soak.png: the data is in {} (`cargo xtask setup` installs matplotlib)",
            out.join("soak.csv").display()
        );
        return;
    }
    match run(Command::new("python3").arg(root.join("xtask/soak_plot.py")).arg(out)) {
        Ok(()) => eprintln!("xtask: plot in {}", out.join("soak.png").display()),
        Err(e) => eprintln!("xtask: no soak.png: {e:#}"),
    }
}

fn clock_seed() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // Seconds and microseconds: distinct for runs started a moment apart,
    // short enough to type back.
    d.as_secs() % 1_000_000 * 1_000_000 + u64::from(d.subsec_micros())
}

/// `20260314-094501` (UTC), for a directory name.
fn utc_stamp(t: SystemTime) -> PathBuf {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from(format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Refuses flags that cannot make a run (checked before anything is built).
fn check(args: &SoakArgs) -> Result<()> {
    if args.rate == 0 {
        bail!("--rate must be at least 1 task/s");
    }
    if args.sample_every >= args.duration {
        bail!("--sample-every ({:?}) must be shorter than --duration ({:?})", args.sample_every, args.duration);
    }
    if !(args.faults_per_minute >= 0.0 && args.growth_tolerance >= 0.0 && args.p99_ratio >= 1.0) {
        bail!("--faults-per-minute and --growth-tolerance must be >= 0, --p99-ratio >= 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stamps() {
        let at = |secs: u64| utc_stamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), PathBuf::from("19700101-000000"));
        // 2000-02-29 12:34:56 UTC
        assert_eq!(at(951_827_696), PathBuf::from("20000229-123456"));
        // 2026-03-14 09:45:01 UTC
        assert_eq!(at(1_773_481_501), PathBuf::from("20260314-094501"));
    }
}
