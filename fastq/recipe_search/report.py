"""The search's plot: speed against quality for every trial, the Pareto front labelled by size.

Invariant: every point is a measured trial: dots at the speedup its measured per-layer timings give,
diamonds (labelled with size and speedup) where the candidate was timed end to end; labels never
overlap (``fastq.plotting.place_labels``).
"""

from __future__ import annotations

from fastq.plotting import place_labels, pyplot


def plot_search(result, path, title: str = "fastq search") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    base_q = result.baseline["quality"]
    ok = [r for r in result.trials if r.feasible]
    bad = [r for r in result.trials if not r.feasible]
    if bad:
        ax.scatter([r.speedup for r in bad], [r.quality for r in bad], s=12, c="0.75", label="trial outside the budget")
    if ok:
        ax.scatter([r.speedup for r in ok], [r.quality for r in ok], s=14, c="tab:blue", alpha=0.6,
                   label="trial within the budget")
    front = sorted(result.pareto, key=lambda r: r.speedup)
    ax.plot([r.speedup for r in front], [r.quality for r in front], "-", c="tab:orange", lw=1, label="Pareto front")
    checked = [r for r in result.trials if r.measured_speedup is not None]
    ax.scatter([r.measured_speedup for r in checked], [r.quality for r in checked], marker="D", facecolors="none",
               edgecolors="k", s=36, label="timed end to end")
    ax.scatter([1.0], [base_q], marker="s", c="k", s=30, label="fp32")
    if result.best is not None:
        ax.scatter([result.best.measured_speedup], [result.best.quality], marker="*", c="tab:red", s=140, zorder=5,
                   label="chosen")
    delta = result.budget.value * (abs(base_q) if result.budget.relative else 1.0)
    ax.axhline(base_q - delta if result.higher_is_better else base_q + delta, ls="--", lw=0.8, c="tab:red",
               label=f"budget ({result.budget})")
    ax.set_xlabel("speedup over fp32 (x): dots from per-layer timings, diamonds timed end to end")
    ax.set_ylabel("quality (evaluate)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.margins(x=0.08, y=0.12)  # room for labels near the edges
    fig.tight_layout()
    labelled = [(1.0, base_q, f"fp32 {result.baseline['size_bytes'] / 1e6:.0f} MB")]
    labelled += [(r.measured_speedup, r.quality, f"#{r.number} {r.size_bytes / 1e6:.0f} MB, {r.measured_speedup:.2f}x")
                 for r in checked]
    xs, ys, texts = zip(*labelled)
    place_labels(ax, xs, ys, texts, fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
