"""The one rule that picks an emotion's setting from scored candidates.

Every candidate (a calibration trial, a recipe of a method comparison) is a row of success,
topic retention and fluency scores over the same queries, beside the plain answers' row. The
rule, used by :func:`~emovec.evaluation.calibration.calibrate` and by
``benchmarks/choose_recipes.py`` alike:

1. keep the candidates whose **fluency** stays within the :class:`~emovec.evaluation.Tolerance`
   of plain (degeneration, perplexity, offensive rate, invented words;
   :meth:`Tolerance.fluent`). Topic retention is not a filter here but half of the goal;
2. with a **reference** (the bank as it was, at several strengths), keep only candidates on or
   above its front: at their own retention, at least the success the reference reaches there
   (:func:`front_success`), less ``slack``;
3. take the one **closest to both bars**, the highest :func:`attainment`
   ``min(success / target_success, 1) + min(retention / min_topic_ratio, 1)``; ties (above
   all, among candidates that meet both bars) go to the **widest margin**, the larger of
   ``min(success - target_success, retention - min_topic_ratio)``, then the higher success,
   then the higher retention, then the earlier candidate.

Capping each half at its bar means that past the bar nothing is traded for more of it: a
setting at 0.85 success and 0.7 retention beats one at 1.0 and 0.6. The margin keeps a
choice off the edge of either bar: success and retention over a few dozen queries are noisy,
and settings chosen at the edge of a bar fell under it on new queries (the shipped SmolLM2
bank of round 8: joy, disgust and fear chosen at 0.78-0.80 success, 0.76-0.78 held out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any, TypeVar

from emovec.evaluation.plots import pareto_front
from emovec.evaluation.tolerance import Tolerance

__all__ = ["DEFAULT_TARGET_SUCCESS", "attainment", "choose", "front_success"]

DEFAULT_TARGET_SUCCESS = 0.8
"""The success bar: the target emotion is the judge's top one on this share of answers."""

Row = TypeVar("Row", bound=Mapping[str, Any])


def attainment(
    success: float,
    retention: float,
    *,
    target_success: float = DEFAULT_TARGET_SUCCESS,
    min_retention: float = Tolerance.min_topic_ratio,
) -> float:
    """How close (success, retention) comes to both bars: each share capped at 1, summed.

    Raises:
        ValueError: If a bar is not positive.
    """
    if not (target_success > 0 and min_retention > 0):
        raise ValueError(
            f"The bars must be positive, not target_success={target_success}, "
            f"min_retention={min_retention}."
        )
    return min(success / target_success, 1.0) + min(retention / min_retention, 1.0)


def front_success(points: Sequence[tuple[float, float]], retention: float) -> float:
    """The success a front of ``(retention, success)`` points reaches at ``retention``.

    The front is the points' Pareto-optimal ones (no other point keeps as much topic and
    shows as much emotion: :func:`~emovec.evaluation.plots.pareto_front`, which also drops
    points with a non-finite coordinate), joined by straight lines, and held level beyond
    its ends: below its least on-topic point that point's success, above its most on-topic
    point that one's.
    The lines, not the staircase :func:`~emovec.evaluation.plots.plot_front` draws through
    the points, because the reference is a strength α and an α between two of its points
    would reach about the line: beating the staircase alone is not beating the reference.

    Raises:
        ValueError: If no point has finite coordinates.
    """
    front = [points[i] for i in pareto_front(points)]  # retention up, success down
    if not front:
        raise ValueError("A front needs at least one point with finite coordinates.")
    if retention <= front[0][0]:
        return front[0][1]
    if retention >= front[-1][0]:
        return front[-1][1]
    for (r0, s0), (r1, s1) in pairwise(front):
        if retention <= r1:  # r0 < retention here; equal points share r0 = r1 and s0 = s1
            return s1 if r1 == r0 else s0 + (s1 - s0) * (retention - r0) / (r1 - r0)
    raise AssertionError("unreachable: retention lies within the front")


def choose(
    candidates: Sequence[Row],
    plain: Mapping[str, Any],
    *,
    tolerance: Tolerance | None = None,
    target_success: float = DEFAULT_TARGET_SUCCESS,
    reference: Sequence[Mapping[str, Any]] = (),
    slack: float = 0.0,
    assume_fluent: bool = False,
) -> Row | None:
    """The candidate the module's rule picks, or ``None`` if none qualifies.

    Args:
        candidates: Rows with ``success``, ``retention``, ``sim_query``, ``degenerate``,
            ``median_perplexity`` and (optionally) ``offensive`` and ``invented``, all over
            the same queries.
        plain: The plain answers' row over those queries (its retention is 1).
        tolerance: The fluency tolerance and retention bar; default :class:`Tolerance`.
        target_success: The success bar.
        reference: Rows a choice must not fall behind: the plain row joins them, and a
            candidate qualifies if its success plus ``slack`` reaches the reference's
            :func:`front_success` at its retention. Empty: no such filter.
        slack: How much success a candidate may lack against the reference (e.g. one answer,
            ``1 / n``: success over a few dozen queries is noisy).
        assume_fluent: The candidates were already held to the tolerance's fluency (as
            calibration trials are, in their ``acceptable``): skip step 1.

    Returns:
        The chosen row (the object passed in), or ``None`` where no candidate is fluent and
        on the reference's front.
    """
    tolerance = tolerance or Tolerance()
    fine = [c for c in candidates if assume_fluent or tolerance.fluent(c, plain)]
    if reference:
        points = [(1.0, float(plain["success"]))]
        points += [(float(r["retention"]), float(r["success"])) for r in reference]
        fine = [
            c
            for c in fine
            if c["success"] + slack + 1e-9 >= front_success(points, float(c["retention"]))
        ]
    if not fine:
        return None

    def key(row: Row) -> tuple[float, float, float, float]:
        score = attainment(
            row["success"],
            row["retention"],
            target_success=target_success,
            min_retention=tolerance.min_topic_ratio,
        )
        margin = min(row["success"] - target_success, row["retention"] - tolerance.min_topic_ratio)
        return (round(score, 9), round(margin, 9), row["success"], row["retention"])

    return max(fine, key=key)  # max keeps the first of equals
