"""The search's plot: speed against quality for every trial, the Pareto front labelled by size.

Invariant: every point is a measured trial (estimated speedup from measured per-layer timings;
the Pareto candidates that were timed end to end are drawn at their measured speedup); labels never
overlap (``fastq.plotting.place_labels``).
"""

from __future__ import annotations

from fastq.plotting import place_labels, pyplot


def plot_search(result, path, title: str = "fastq search") -> None:
    plt = pyplot()

    def speed(r):
        return r.measured_speedup if r.measured_speedup is not None else r.speedup

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    base_q = result.baseline["quality"]
    trials = result.trials
    ok = [r for r in trials if r.feasible]
    bad = [r for r in trials if not r.feasible]
    if bad:
        ax.scatter([speed(r) for r in bad], [r.quality for r in bad], s=12, c="0.75", label="outside the budget")
    if ok:
        ax.scatter([speed(r) for r in ok], [r.quality for r in ok], s=14, c="tab:blue", alpha=0.6,
                   label="within the budget")
    front = sorted(result.pareto, key=speed)
    ax.plot([speed(r) for r in front], [r.quality for r in front], "-o", c="tab:orange", ms=5, lw=1, label="Pareto front")
    ax.scatter([1.0], [base_q], marker="s", c="k", s=30, label="fp32")
    if result.best is not None:
        ax.scatter([speed(result.best)], [result.best.quality], marker="*", c="tab:red", s=120, zorder=5, label="chosen")
    delta = result.budget.value * (abs(base_q) if result.budget.relative else 1.0)
    limit = base_q - delta if result.higher_is_better else base_q + delta
    ax.axhline(limit, ls="--", lw=0.8, c="tab:red", label=f"budget ({result.budget})")
    ax.set_xlabel("speedup over fp32 (x; measured end to end where checked, else from per-layer timings)")
    ax.set_ylabel("quality (evaluate)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    labelled = [(1.0, base_q, f"fp32 {result.baseline['size_bytes'] / 1e6:.0f} MB")]
    labelled += [(speed(r), r.quality, f"#{r.number} {r.size_bytes / 1e6:.0f} MB") for r in front]
    xs, ys, texts = zip(*labelled)
    place_labels(ax, xs, ys, texts, fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
