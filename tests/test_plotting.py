"""place_labels: no two labels overlap, however the points crowd; labels_overlap sees an overlap."""

import pytest
import torch

from fastq.plotting import labels_overlap, place_labels, pyplot

pytest.importorskip("matplotlib")


@pytest.mark.parametrize("n, spread", [(6, 1.0), (25, 0.02), (40, 0.0)])
def test_labels_never_overlap(n, spread, tmp_path):
    plt = pyplot()
    g = torch.Generator().manual_seed(n)
    xs = (1 + spread * torch.rand(n, generator=g)).tolist()
    ys = (0.99 + spread * torch.rand(n, generator=g) / 100).tolist()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter(xs, ys)
    fig.tight_layout()
    anns = place_labels(ax, xs, ys, [f"recipe {i} ({10 * i} MB)" for i in range(n)])
    assert len(anns) == n and not labels_overlap(anns)
    fig.savefig(tmp_path / "p.png", bbox_inches="tight")  # the figure's own dpi: boxes stay as measured
    plt.close(fig)


def test_labels_overlap_detects_overlap():
    plt = pyplot()
    fig, ax = plt.subplots()
    a = ax.annotate("same place", (0.5, 0.5))
    b = ax.annotate("same place", (0.5, 0.5))
    assert labels_overlap([a, b])
    plt.close(fig)
    with pytest.raises(ValueError, match="2 x, 1 y and 2 labels"):
        place_labels(ax, [0, 1], [0], ["a", "b"])
