//! What the soak measures every `--sample-every`, how it is written to
//! soak.csv, and the checks that turn the samples into a verdict: memory and
//! disk must stop growing after warm-up, p99 latency must not drift up.

use crate::load::Latency;

/// One row of soak.csv. Sizes in bytes here, MiB in the file; a value that
/// could not be read (a process being restarted, the master away) is empty.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    pub master_rss: Option<u64>,
    pub master_fds: Option<u64>,
    /// (RSS, open fds) of each agent.
    pub agents: Vec<(Option<u64>, Option<u64>)>,
    /// registry.redb and history.redb together: the disk space they take
    /// (allocated blocks), which grows with what is written, and their
    /// length, which redb grows in doublings.
    pub registry: Option<u64>,
    pub registry_file: Option<u64>,
    /// Round trip of a ListAgents call: how long the master's event loop
    /// takes to get to a cheap command.
    pub lag_ms: Option<f64>,
    /// The probe's latency over the interval since the previous sample.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub lat_n: usize,
    /// CPU use since the previous sample, in % of one core: the master, each
    /// agent, and this soak process itself (its clients, watchers, probe).
    pub master_cpu: Option<f64>,
    pub agents_cpu: Vec<Option<f64>>,
    pub soak_cpu: Option<f64>,
    /// The machine's I/O pressure (common::io_pressure), in %.
    pub io_pressure: Option<f64>,
    /// Tasks acknowledged so far (all kinds), and FINISHED events seen.
    pub submitted: u64,
    pub finished: u64,
    pub faults: usize,
}

pub fn csv_header(agents: usize) -> String {
    let mut cols = vec!["t_s".to_string(), "master_rss_mib".into(), "master_fds".into()];
    for i in 0..agents {
        cols.push(format!("agent{i}_rss_mib"));
        cols.push(format!("agent{i}_fds"));
    }
    cols.push("master_cpu_pct".into());
    for i in 0..agents {
        cols.push(format!("agent{i}_cpu_pct"));
    }
    cols.push("soak_cpu_pct".into());
    cols.push("io_full_pct".into());
    cols.extend(
        [
            "registry_mib",
            "registry_file_mib",
            "lag_ms",
            "lat_p50_ms",
            "lat_p99_ms",
            "lat_samples",
            "submitted",
            "finished",
            "faults",
        ]
        .map(String::from),
    );
    cols.join(",")
}

const MIB: f64 = 1024.0 * 1024.0;

fn cell<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_default()
}

impl Sample {
    pub fn csv_row(&self) -> String {
        let mib = |b: u64| format!("{:.2}", b as f64 / MIB);
        let ms = |v: f64| format!("{v:.3}");
        let mut cols =
            vec![format!("{:.1}", self.t), cell(self.master_rss, mib), cell(self.master_fds, |n| n.to_string())];
        for (rss, fds) in &self.agents {
            cols.push(cell(*rss, mib));
            cols.push(cell(*fds, |n| n.to_string()));
        }
        let pct = |v: f64| format!("{v:.1}");
        cols.push(cell(self.master_cpu, pct));
        for c in &self.agents_cpu {
            cols.push(cell(*c, pct));
        }
        cols.push(cell(self.soak_cpu, pct));
        cols.push(cell(self.io_pressure, pct));
        cols.extend([
            cell(self.registry, mib),
            cell(self.registry_file, mib),
            cell(self.lag_ms, ms),
            cell(self.p50_ms, ms),
            cell(self.p99_ms, ms),
            self.lat_n.to_string(),
            self.submitted.to_string(),
            self.finished.to_string(),
            self.faults.to_string(),
        ]);
        cols.join(",")
    }
}

/// The limits of the verdict (all with defaults in `cargo xtask soak --help`).
#[derive(Debug, Clone, Copy)]
pub struct Tolerances {
    /// Growth over the last half allowed, as a fraction of the series' mean there.
    pub growth: f64,
    /// Growth below this many bytes passes whatever its fraction.
    pub growth_floor: f64,
    /// Samples this many seconds after a process restarted are left out of
    /// its series (it starts small and fills up again); latency samples
    /// this long after a fault, too (the cluster catches up).
    pub settle_s: f64,
    /// p99 of the last quarter may be this many times the second quarter's...
    pub p99_ratio: f64,
    /// ...or this many ms worse, whichever is more.
    pub p99_floor_ms: f64,
}

/// Slope of the least-squares line through `points` (y per unit of x).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// How one series (a process's RSS, the registry's size) moved.
#[derive(Debug, Clone)]
pub struct Growth {
    pub name: String,
    pub first: Option<f64>,
    pub last: Option<f64>,
    /// Over the last half, settled samples only.
    pub mean: f64,
    pub slope_per_s: f64,
    /// slope × the time the last half spans: how much it grew there.
    pub growth: f64,
    pub used: usize,
    pub left_out: usize,
    pub failed: bool,
    pub note: Option<String>,
}

impl Growth {
    pub fn line(&self) -> String {
        let mib = |v: Option<f64>| v.map(|v| format!("{:.1}", v / MIB)).unwrap_or_else(|| "-".into());
        let rel = if self.mean > 0.0 { 100.0 * self.growth / self.mean } else { 0.0 };
        format!(
            "{:<12} start {:>8} MiB  end {:>8} MiB  last half: mean {:8.1} MiB, slope {:+9.3} MiB/min, growth {:+8.1} MiB ({:+6.1}% of mean; {} samples, {} left out after restarts){}{}",
            self.name,
            mib(self.first),
            mib(self.last),
            self.mean / MIB,
            self.slope_per_s * 60.0 / MIB,
            self.growth / MIB,
            rel,
            self.used,
            self.left_out,
            if self.failed { "  GROWING" } else { "" },
            self.note.as_ref().map(|n| format!("  ({n})")).unwrap_or_default(),
        )
    }
}

/// A restarted process that grows back to the level its peers that were
/// never restarted hold (their highest sample, within the tolerance) is
/// warming up again, not leaking: an agent killed mid-run touches its pool
/// slots anew up to the load's peak, which in a short run takes the rest of
/// it. Clears `g`'s failure in that case and says why.
pub fn warming_up_to_peers(g: &mut Growth, peer_level: Option<f64>, tol: &Tolerances) {
    let (Some(level), Some(last)) = (peer_level, g.last) else { return };
    if g.failed && last <= level * (1.0 + tol.growth) {
        g.failed = false;
        g.note = Some(format!("restarted; warming up to the {:.1} MiB its peers hold", level / (1 << 20) as f64));
    }
}

/// Checks that `series` (time, value) does not keep growing over the last
/// half of the load (t ≥ `from`), leaving out samples within `settle_s` after
/// each of `restarts`.
pub fn growth(name: &str, series: &[(f64, Option<f64>)], from: f64, restarts: &[f64], tol: &Tolerances) -> Growth {
    let values: Vec<(f64, f64)> = series.iter().filter_map(|(t, v)| v.map(|v| (*t, v))).collect();
    let settled = |t: f64| !restarts.iter().any(|r| t >= *r && t < r + tol.settle_s);
    let half: Vec<(f64, f64)> = values.iter().copied().filter(|(t, _)| *t >= from).collect();
    let used: Vec<(f64, f64)> = half.iter().copied().filter(|(t, _)| settled(*t)).collect();
    let mut g = Growth {
        name: name.to_string(),
        first: values.first().map(|p| p.1),
        last: values.last().map(|p| p.1),
        mean: 0.0,
        slope_per_s: 0.0,
        growth: 0.0,
        used: used.len(),
        left_out: half.len() - used.len(),
        failed: false,
        note: None,
    };
    let Some(s) = slope(&used) else {
        g.note = Some("too few samples to fit; not checked".into());
        return g;
    };
    let span = used.last().unwrap().0 - used.first().unwrap().0;
    g.mean = used.iter().map(|p| p.1).sum::<f64>() / used.len() as f64;
    g.slope_per_s = s;
    g.growth = s * span;
    g.failed = g.growth > tol.growth * g.mean && g.growth > tol.growth_floor;
    g
}

/// p at [0, 1] of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// p99 latency in the second quarter of the load against the last quarter.
#[derive(Debug, Clone)]
pub struct Drift {
    /// Median over each quarter of the p99 of each sample interval.
    pub q2: Option<f64>,
    pub q4: Option<f64>,
    /// Intervals judged in each quarter.
    pub n2: usize,
    pub n4: usize,
    /// Samples left out because a fault overlapped them.
    pub left_out: usize,
    pub failed: bool,
}

/// An interval with fewer probe samples than this has no p99 of its own;
/// a quarter with fewer such intervals than MIN_INTERVALS is not judged.
const MIN_INTERVAL_SAMPLES: usize = 10;
const MIN_INTERVALS: usize = 3;

/// Compares the p99 latency of the second and the last quarter of the load.
/// Each quarter's figure is the median of its sample intervals' p99s: one
/// or two bursts (a 1000-task job landing) move a pooled p99 a lot and a
/// median hardly, while a master that slows as it fills up raises every
/// interval's p99. Samples that overlap a fault (from its start to
/// `settle_s` after its end; `faults`: (start, end) in s) are left out: this
/// judges drift, not faults, whose cost shows in the plot.
pub fn drift(samples: &[Latency], duration_s: f64, interval_s: f64, faults: &[(f64, f64)], tol: &Tolerances) -> Drift {
    let clear = |(t, ms): &Latency| {
        let done = t + ms / 1000.0;
        !faults.iter().any(|(start, end)| done >= *start && *t < end + tol.settle_s)
    };
    let kept: Vec<Latency> = samples.iter().copied().filter(clear).collect();
    let quarter = |a: f64, b: f64| -> Vec<f64> {
        let mut by_interval: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
        for (t, ms) in kept.iter().filter(|(t, _)| *t >= a * duration_s && *t < b * duration_s) {
            by_interval.entry((t / interval_s) as u64).or_default().push(*ms);
        }
        let p99s = by_interval
            .into_values()
            .filter(|v| v.len() >= MIN_INTERVAL_SAMPLES)
            .filter_map(|v| percentile(&sorted(v), 0.99));
        sorted(p99s.collect())
    };
    let (q2, q4) = (quarter(0.25, 0.5), quarter(0.75, 1.01));
    let (p2, p4) = (percentile(&q2, 0.5), percentile(&q4, 0.5));
    let failed = match (p2, p4) {
        (Some(a), Some(b)) if q2.len() >= MIN_INTERVALS && q4.len() >= MIN_INTERVALS => {
            b > a * tol.p99_ratio && b > a + tol.p99_floor_ms
        }
        _ => false,
    };
    Drift { q2: p2, q4: p4, n2: q2.len(), n4: q4.len(), left_out: samples.len() - kept.len(), failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol() -> Tolerances {
        Tolerances { growth: 0.1, growth_floor: 10.0, settle_s: 10.0, p99_ratio: 3.0, p99_floor_ms: 5.0 }
    }

    #[test]
    fn slope_of_a_line() {
        // y = 2x + 1
        let pts: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 2.0 * x as f64 + 1.0)).collect();
        assert!((slope(&pts).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..2]), None);
    }

    #[test]
    fn growth_flat_growing_and_restarts() {
        let series = |f: &dyn Fn(f64) -> f64| -> Vec<(f64, Option<f64>)> {
            (0..=100).map(|t| (t as f64, Some(f(t as f64)))).collect()
        };
        // flat at 1000: no growth
        assert!(!growth("flat", &series(&|_| 1000.0), 50.0, &[], &tol()).failed);
        // 1000 + 10/s: grows 500 over the last half (50 s), mean 1750: 29% > 10%
        let g = growth("up", &series(&|t| 1000.0 + 10.0 * t), 50.0, &[], &tol());
        assert!(g.failed && (g.growth - 500.0).abs() < 1e-6, "{g:?}");
        // the same growth under the floor passes
        let g = growth("up", &series(&|t| 1000.0 + 10.0 * t), 50.0, &[], &Tolerances { growth_floor: 600.0, ..tol() });
        assert!(!g.failed);
        // a restart at 55 s: small for 10 s, then flat again; left out, it is flat
        let dip = |t: f64| if (55.0..65.0).contains(&t) { 100.0 } else { 1000.0 };
        let g = growth("dip", &series(&dip), 50.0, &[55.0], &tol());
        assert!(!g.failed && g.left_out == 10, "{g:?}");
        // not left out, the dip early in the half reads as growth
        assert!(growth("dip", &series(&dip), 50.0, &[], &tol()).failed);
        // Grown back to its peers' level after a restart: warm-up; past it: not.
        let mut g = growth("up", &series(&|t| 1000.0 + 10.0 * t), 50.0, &[], &tol());
        assert!(g.failed);
        let top = g.last.unwrap();
        warming_up_to_peers(&mut g, Some(top * 0.8), &tol());
        assert!(g.failed, "above its peers");
        warming_up_to_peers(&mut g, Some(top), &tol());
        assert!(!g.failed, "at its peers' level");
    }

    #[test]
    fn drift_compares_quarters() {
        // 100 s, intervals of 5 s, 10 samples a second; q2 = [25, 50), q4 = [75, 100]
        let lat = |f: &dyn Fn(f64) -> f64| -> Vec<Latency> {
            (0..1000).map(|i| i as f64 / 10.0).map(|t| (t, f(t))).collect()
        };
        let drift = |s: &[Latency], faults: &[(f64, f64)]| drift(s, 100.0, 5.0, faults, &tol());
        assert!(!drift(&lat(&|_| 2.0), &[]).failed);
        // every interval of q4 3x slower but only 4 ms more: under the floor
        assert!(!drift(&lat(&|t| if t >= 75.0 { 6.0 } else { 2.0 }), &[]).failed);
        // every interval of q4 10x and 18 ms slower
        let slower = lat(&|t| if t >= 75.0 { 20.0 } else { 2.0 });
        let d = drift(&slower, &[]);
        assert!(d.failed && d.n2 == 5 && d.n4 == 5 && d.q4 == Some(20.0), "{d:?}");
        // a burst in two intervals of q4 (1 s each): their p99s go up, the median not
        let bursts = lat(&|t| if (80.0..81.0).contains(&t) || (90.0..91.0).contains(&t) { 500.0 } else { 2.0 });
        assert!(!drift(&bursts, &[]).failed);
        // a fault from 70 s to 80 s, settling till 90 s: q4 keeps [90, 100), two intervals, not judged
        let d = drift(&slower, &[(70.0, 80.0)]);
        assert!(!d.failed && d.n4 == 2 && d.left_out == 200, "{d:?}");
        // slow from 75 to 90 s (three of q4's five intervals): drift, unless a
        // fault from 75 to 78 s, settled at 88 s, explains it (of the slow
        // samples only 88 to 90 s remain: one interval of three)
        let slow_in_fault = lat(&|t| if (75.0..90.0).contains(&t) { 3000.0 } else { 2.0 });
        assert!(!drift(&slow_in_fault, &[(75.0, 78.0)]).failed);
        assert!(drift(&slow_in_fault, &[]).failed);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = sorted((1..=100).map(f64::from).collect());
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.99), None);
    }
}
