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

    Each label's box is measured once; candidate positions are then checked arithmetically in
    display pixels, and only the chosen one is drawn.

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
    scale = fig.dpi / 72.0  # pixels per point
    sizes = []
    for text in labels:
        t = ax.text(0, 0, text, fontsize=fontsize)
        box = t.get_window_extent(renderer)
        sizes.append((box.width + 2, box.height + 2))  # a pixel of air on each side
        t.remove()
    px = [tuple(ax.transData.transform((x, y))) for x, y in zip(xs, ys)]
    pad = 3.0 * scale  # a marker's radius
    points = [Bbox.from_extents(x - pad, y - pad, x + pad, y + pad) for x, y in px]
    placed: list = []
    out = []
    column = [axes_box.x1 + 6, axes_box.y1, 0.0]  # x, top of the next free slot, widest label in the column
    for i, text in enumerate(labels):
        w, h = sizes[i]
        choice = None
        for r in _RADII:
            for dx, dy in _DIRECTIONS:
                ax_, ay_ = px[i][0] + dx * r * scale, px[i][1] + dy * r * scale
                x0 = ax_ if dx > 0 else (ax_ - w if dx < 0 else ax_ - w / 2)
                y0 = ay_ if dy > 0 else (ay_ - h if dy < 0 else ay_ - h / 2)
                box = Bbox.from_bounds(x0, y0, w, h)
                inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 \
                    and box.y1 <= axes_box.y1
                if inside and not any(_overlaps(box, b) for b in placed) and \
                        not any(_overlaps(box, b) for j, b in enumerate(points) if j != i):
                    choice = (r, dx, dy, box)
                    break
            if choice is not None:
                break
        if choice is not None:
            r, dx, dy, box = choice
            ann = ax.annotate(text, (xs[i], ys[i]), xytext=(dx * r, dy * r), textcoords="offset points",
                              fontsize=fontsize, ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                              va="bottom" if dy > 0 else ("top" if dy < 0 else "center"),
                              arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if r > _RADII[0] else None)
        else:  # a free slot in a column right of the axes, joined to its point by a line
            if column[1] - h < 0:  # the column is full: start another one to its right
                column = [column[0] + column[2] + 6, axes_box.y1, 0.0]
            box = Bbox.from_bounds(column[0], column[1] - h, w, h)
            ann = ax.annotate(text, (xs[i], ys[i]), xytext=(column[0] + 1, column[1] - 1), textcoords="figure pixels",
                              fontsize=fontsize, ha="left", va="top", annotation_clip=False,
                              arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5"))
            column[1] -= h + 2
            column[2] = max(column[2], w)
        placed.append(box)
        out.append(ann)
    return out


def labels_overlap(annotations: Sequence, renderer=None) -> bool:
    """True when the text boxes of any two of the drawn annotations overlap."""
    if not annotations:
        return False
    fig = annotations[0].figure
    if renderer is None:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
    # the text's own box (Text.get_window_extent), not the annotation's, which includes its line
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(a, renderer) for a in annotations]
    return any(_overlaps(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))
