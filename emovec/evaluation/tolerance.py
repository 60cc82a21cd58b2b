"""How far a steered condition may drift from the plain answers, and the α it allows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emovec.evaluation.report import EvaluationReport

__all__ = ["Tolerance", "recommend_alpha"]


@dataclass(frozen=True)
class Tolerance:
    """How far a steered condition may drift from the plain answers and still be used.

    A condition is acceptable when

    - its **topic retention** is at least ``min_topic_ratio`` (its mean answer–query
      similarity at least that share of the plain answers', which is exactly
      :func:`~emovec.evaluation.topic.topic_retention` over the same queries; the hand-written
      emotional answers keep 0.84–0.93);
    - its **offensive rate** is at most ``max_offensive_increase`` above plain's (not
      checked where either was not measured, as in reports from before it was);
    - its **degeneration rate** is at most ``max_degenerate_increase`` above plain's;
    - its **invented rate** (the share of answers with two or more words no English word
      list knows, :func:`~emovec.evaluation.fluency.is_invented`) is at most
      ``max_invented_increase`` above plain's (not checked where either was not measured);
    - its **median perplexity** is at most ``max_perplexity_ratio`` times plain's. The
      perplexity is under the unsteered model, so any emotional answer scores higher than
      the plain one (2.5–6× at α = 1 on SmolLM2); the ratio rules out broken text (≥ 10×),
      not the change of tone itself.

    These are the library's defaults, used by :func:`recommend_alpha`,
    :func:`emovec.evaluation.calibration.calibrate` and the command line alike.
    """

    max_degenerate_increase: float = 0.05
    max_perplexity_ratio: float = 10.0
    min_topic_ratio: float = 0.7
    max_offensive_increase: float = 0.02
    max_invented_increase: float = 0.05

    def accepts(self, row: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
        """Whether summary ``row`` stays within tolerance of the ``plain`` summary row: on
        topic and fluent."""
        on_topic = row["sim_query"] >= plain["sim_query"] * self.min_topic_ratio
        return bool(on_topic and self.fluent(row, plain))

    def fluent(self, row: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
        """Whether summary ``row`` is as clean and fluent as the tolerance allows (offensive
        rate, degeneration, invented words, perplexity), whatever its topic retention."""
        return bool(
            _within(row, plain, "offensive", self.max_offensive_increase)
            and row["degenerate"] <= plain["degenerate"] + self.max_degenerate_increase
            and _within(row, plain, "invented", self.max_invented_increase)
            and row["median_perplexity"] <= plain["median_perplexity"] * self.max_perplexity_ratio
        )


def _within(row: Mapping[str, Any], plain: Mapping[str, Any], key: str, increase: float) -> bool:
    """Whether ``row``'s share ``key`` is at most ``increase`` above ``plain``'s (up to
    rounding: 8/20 is 0.05 above 7/20); ``True`` where either was not measured (absent or
    ``nan``, as in reports from before it was)."""
    value = float(row.get(key, math.nan))
    baseline = float(plain.get(key, math.nan))
    if not (math.isfinite(value) and math.isfinite(baseline)):
        return True
    return value <= baseline + increase + 1e-9


def recommend_alpha(
    report: EvaluationReport, tolerance: Tolerance = Tolerance()
) -> dict[str, float]:
    """Per emotion, the largest evaluated α > 0 within ``tolerance`` of the plain answers.

    Emotions where no α qualifies get 0.
    """
    summary = report.summary()
    recommended: dict[str, float] = {}
    for emotion in sorted({r["emotion"] for r in summary}):
        rows = [r for r in summary if r["emotion"] == emotion]
        plain = next(r for r in rows if r["recipe"] == "plain")
        fine = [
            r["alpha"]
            for r in rows
            if r["recipe"] == "vector" and r["alpha"] > 0 and tolerance.accepts(r, plain)
        ]
        recommended[emotion] = max(fine, default=0.0)
    return recommended
