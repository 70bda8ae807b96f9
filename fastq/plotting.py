"""Scatter-plot labels that never overlap (used by ``fastq demo --plot`` and ``SearchResult.plot``).

Invariants: call ``place_labels`` after the axes' limits and the figure layout are final (a later
``tight_layout`` rescales the data and could push labels together again), and save at the figure's
own dpi (``savefig(..., dpi="figure")``, the default), since boxes are measured at it; every label is placed
where its drawn box overlaps no other label and no other point, trying offsets near the point first,
farther ones with a leader line next, and finally a free slot in a column right of the axes, so the
result holds for any number of points. ``labels_overlap`` checks it on the drawn figure.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["labels_overlap", "place_labels", "pyplot"]

# Unit directions tried around each point, in order of preference (right/up first).
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.4), (0, -1.4), (1.4, 0), (-1.4, 0), (2, -1), (1, -2),
               (-2, -1), (-1, -2), (2, 1), (-2, 1))
_RADII = (6, 14, 24, 36, 52, 72, 100)  # points


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), or ImportError naming the fix."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 8) -> list:
    """Annotate point i with ``labels[i]`` so that no two labels (and no label and point) overlap.

    Returns:
        The matplotlib ``Annotation`` objects, in the order of ``labels``.
    """
    from matplotlib.transforms import Bbox

    if not (len(xs) == len(ys) == len(labels)):
        raise ValueError(f"place_labels: {len(xs)} x, {len(ys)} y and {len(labels)} labels")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    px = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    pad = 3.0 * fig.dpi / 72  # a marker's radius, in pixels
    points = [Bbox.from_extents(p[0] - pad, p[1] - pad, p[0] + pad, p[1] + pad) for p in px]
    placed: list = []
    out = []
    column_y = axes_box.y1
    for i, (x, y, text) in enumerate(zip(xs, ys, labels)):
        ann = None
        for r in _RADII:
            for dx, dy in _DIRECTIONS:
                cand = ax.annotate(text, (x, y), xytext=(dx * r, dy * r), textcoords="offset points", fontsize=fontsize,
                                   ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                                   va="bottom" if dy > 0 else ("top" if dy < 0 else "center"),
                                   arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if r > _RADII[0] else None)
                box = cand.get_window_extent(renderer)
                inside = (axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0
                          and box.y1 <= axes_box.y1)
                if inside and not any(_overlaps(box, b) for b in placed) and \
                        not any(_overlaps(box, b) for j, b in enumerate(points) if j != i):
                    ann = cand
                    placed.append(box)
                    break
                cand.remove()
            if ann is not None:
                break
        if ann is None:  # a free slot in a column right of the axes, joined to its point by a line
            ann = ax.annotate(text, (x, y), xytext=(axes_box.x1 + 8, column_y), textcoords="figure pixels",
                              fontsize=fontsize, ha="left", va="top", annotation_clip=False,
                              arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5"))
            box = ann.get_window_extent(renderer)
            column_y = box.y0 - 2
            placed.append(box)
        out.append(ann)
    return out


def labels_overlap(annotations: Sequence, renderer=None) -> bool:
    """True when any two of the drawn annotations' boxes overlap."""
    if not annotations:
        return False
    fig = annotations[0].figure
    if renderer is None:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in annotations]
    return any(_overlaps(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))
