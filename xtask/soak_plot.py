"""soak.png from a soak's soak.csv and faults.csv: one panel per series over
time, each fault a vertical line. Run by `cargo xtask soak` when matplotlib
is importable: python3 xtask/soak_plot.py OUT_DIR"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAULT_COLORS = {
    "kill-master": "tab:red",
    "kill-agent": "tab:orange",
    "stop-agent": "tab:purple",
    "drop-framework": "tab:gray",
}


def column(rows, name):
    """(t, value) of the rows where `name` has a value."""
    pts = [(float(r["t_s"]), float(r[name])) for r in rows if r.get(name, "") != ""]
    return [p[0] for p in pts], [p[1] for p in pts]


def main(out):
    with open(out / "soak.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    faults = []
    if (out / "faults.csv").exists():
        with open(out / "faults.csv", newline="") as f:
            faults = [(float(r["t_s"]), r["fault"]) for r in csv.DictReader(f)]
    agents = sorted({k.split("_")[0] for k in (rows[0].keys() if rows else []) if k.startswith("agent")},
                    key=lambda a: int(a[len("agent"):]))

    # (title, unit, [(column, label)])
    panels = [
        ("master RSS", "MiB", [("master_rss_mib", "master")]),
        ("agent RSS", "MiB", [(f"{a}_rss_mib", a) for a in agents]),
        ("registry (registry.redb + history.redb)", "MiB", [("registry_mib", "on disk (allocated)"), ("registry_file_mib", "file length")]),
        ("open file descriptors", "fds", [("master_fds", "master")] + [(f"{a}_fds", a) for a in agents]),
        ("CPU", "% of a core",
         [("master_cpu_pct", "master")] + [(f"{a}_cpu_pct", a) for a in agents] + [("soak_cpu_pct", "soak client")]),
        ("machine I/O pressure (all tasks waiting on I/O, last 10 s)", "%", [("io_full_pct", "full avg10")]),
        ("event-loop lag (ListAgents round trip)", "ms", [("lag_ms", "lag")]),
        ("task latency, submit to FINISHED", "ms", [("lat_p50_ms", "p50"), ("lat_p99_ms", "p99")]),
        ("tasks", "count", [("submitted", "acknowledged"), ("finished", "FINISHED seen")]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels)), sharex=True)
    for ax, (title, unit, series) in zip(axes, panels):
        for col, label in series:
            t, v = column(rows, col)
            ax.plot(t, v, marker=".", linewidth=1, label=label)
        for t, kind in faults:
            ax.axvline(t, color=FAULT_COLORS.get(kind, "black"), alpha=0.35, linewidth=1)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel("seconds since the load started")
    kinds = sorted({k for _, k in faults})
    if kinds:
        handles = [plt.Line2D([], [], color=FAULT_COLORS.get(k, "black"), label=k) for k in kinds]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, title="faults")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out / "soak.png", dpi=90)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
