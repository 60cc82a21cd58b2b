"""Figures shared by evaluation and calibration: the success-against-topic Pareto front.

Steering trades topic for emotion: the stronger the push, the more often the target emotion
wins and the less the answer answers the question. :func:`plot_front` shows every setting
tried (each (method, α) of an evaluation, each band × dose of a calibration) as a point of
success against topic retention, one panel per emotion, with the settings no other beats on
both (the Pareto front) joined by a step line, and the retention of the hand-written
emotional answers as the mark to reach.

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot, so no global state and no
backend to choose) and written atomically. matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emovec._files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FrontPoint", "pareto_front", "plot_front", "save_figure"]


@dataclass(frozen=True)
class FrontPoint:
    """One setting: its label, success, topic retention and kind.

    ``kind`` picks the marker: ``"plain"``, ``"vector"``, ``"prompt"``, or for calibration
    trials ``"trial"``, ``"chosen"`` and ``"rejected"`` (outside the tolerance).
    """

    label: str
    success: float
    retention: float
    kind: str = "vector"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates maximised.

    A point dominates another when it is at least as large in both coordinates and larger in
    one; equal points do not dominate each other, so both stay. Points with a non-finite
    coordinate take no part.

    Returns:
        The indices, by increasing first coordinate (so decreasing second): the order in
        which the front is drawn.
    """
    finite = [(i, x, y) for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front = [
        (x, -y, i)
        for i, x, y in finite
        if not any(a >= x and b >= y and (a > x or b > y) for _, a, b in finite)
    ]
    return [i for _, _, i in sorted(front)]


_STYLE: dict[str, dict[str, object]] = {
    "plain": {"marker": "s", "color": "black", "s": 50, "zorder": 4},
    "vector": {"marker": "o", "color": "tab:blue", "s": 30, "zorder": 3},
    "prompt": {"marker": "^", "color": "tab:orange", "s": 40, "zorder": 3},
    "trial": {"marker": "o", "color": "tab:blue", "s": 30, "zorder": 3},
    "chosen": {"marker": "*", "color": "tab:red", "s": 140, "zorder": 5},
    "rejected": {"marker": "x", "color": "tab:gray", "s": 30, "zorder": 2},
}
_KIND_LABEL = {
    "plain": "plain (α = 0)",
    "vector": "vector",
    "prompt": "emotion asked in the prompt",
    "trial": "trial within tolerance",
    "chosen": "chosen placement",
    "rejected": "trial outside tolerance",
}


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as staging:
        figure.savefig(staging, dpi=dpi, format="png", bbox_inches="tight")  # legends kept whole
    return path


def plot_front(
    path: str | Path,
    points: Mapping[str, Sequence[FrontPoint]],
    *,
    reference: Mapping[str, float] | None = None,
    title: str = "success against topic retention",
) -> Path:
    """PNG: per emotion, success against topic retention of every point, the Pareto front
    (maximal success, maximal retention) as a step line, and the ``reference`` retention
    (the hand-written answers') as a vertical line.

    Args:
        path: Where to write the PNG.
        points: Emotion -> its points; one panel per emotion, in this order.
        reference: Emotion -> reference retention (missing or nan: no line).
        title: The figure's title.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    reference = reference or {}
    emotions = list(points) or ["(nothing evaluated)"]
    columns = min(len(emotions), 3)
    rows = math.ceil(len(emotions) / columns)
    figure = Figure(figsize=(4.6 * columns, 4.0 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[len(emotions) :]:
        axis.set_visible(False)
    for axis, emotion in zip(axes, emotions, strict=False):
        shown = [
            p
            for p in points.get(emotion, ())
            if math.isfinite(p.success) and math.isfinite(p.retention)
        ]
        for kind in _STYLE:
            group = [p for p in shown if p.kind == kind]
            if group:
                axis.scatter(
                    [p.retention for p in group],
                    [p.success for p in group],
                    label=_KIND_LABEL[kind],
                    **_STYLE[kind],
                )
        for p in shown:
            axis.annotate(
                p.label,
                (p.retention, p.success),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        front = [shown[i] for i in pareto_front([(p.retention, p.success) for p in shown])]
        if front:
            axis.step(
                [p.retention for p in front],
                [p.success for p in front],
                where="pre",
                color="tab:green",
                linewidth=1.2,
                marker="o",
                markersize=11,
                markerfacecolor="none",
                label="Pareto front",
                zorder=1,
            )
        mark = reference.get(emotion, math.nan)
        if math.isfinite(mark):
            axis.axvline(
                mark,
                color="tab:purple",
                linestyle="--",
                linewidth=1,
                label="hand-written answers",
            )
        if not shown:
            axis.text(0.5, 0.5, "no scored points", ha="center", transform=axis.transAxes)
        axis.set_title(emotion)
        axis.set_xlabel("topic retention (share of plain's answer–query similarity)")
        axis.set_ylabel("success")
        axis.set_ylim(-0.05, 1.05)
        xs = [0.0, 1.0, *(p.retention for p in shown), *([mark] if math.isfinite(mark) else [])]
        axis.set_xlim(min(xs) - 0.03, max(xs) + 0.08)
        axis.grid(alpha=0.3)
    # One legend for the figure, each kind once, in the order first drawn.
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.08 if handles else 0, 1, 0.97))
    return save_figure(figure, path)
