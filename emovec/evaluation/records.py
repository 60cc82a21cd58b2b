"""What an evaluation records: one answer's judgement, the summary row of a condition, the
offensive-language judge it uses and the invented-words judge."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict, cast

import numpy as np

from emovec.evaluation.fluency import is_invented
from emovec.evaluation.metrics import is_degenerate
from emovec.evaluation.topic import topic_retention

__all__ = ["OffensiveJudgeLike", "Record", "SummaryRow", "load_offensive_judge"]

_METRICS = (
    "eps",
    "success",
    "intensity",
    "sim_query",
    "sim_plain",
    "offensive",
    "invented",
    "perplexity",
    "distinct_1",
    "distinct_2",
    "degenerate",
)


class OffensiveJudgeLike(Protocol):
    """What evaluation needs of an offensive-language judge (:class:`emovec.offensive.
    OffensiveJudge` is one): a flag per text."""

    def flags(self, texts: Sequence[str]) -> np.ndarray: ...


def load_offensive_judge(judge: OffensiveJudgeLike | None = None) -> OffensiveJudgeLike:
    """``judge``, or the default :class:`emovec.offensive.OffensiveJudge`."""
    if judge is not None:
        return judge
    from emovec.offensive import OffensiveJudge

    default: OffensiveJudgeLike = OffensiveJudge()
    return default


def _offensive(texts: Sequence[str], judge: OffensiveJudgeLike) -> dict[str, float]:
    """Text -> 1.0 if ``judge`` flags it, else 0.0 (each distinct text judged once; an
    empty answer says nothing offensive)."""
    unique = list(dict.fromkeys(texts))
    flags = np.asarray(judge.flags(unique), dtype=bool) if unique else np.zeros(0, dtype=bool)
    if flags.shape != (len(unique),):
        raise ValueError(f"The offensive judge gave {flags.shape} flags for {len(unique)} texts.")
    return {t: float(bool(t.strip()) and bool(f)) for t, f in zip(unique, flags, strict=True)}


def _degenerate(text: str) -> float:
    """1.0 if an answer is empty or has collapsed into repetition
    (:func:`emovec.evaluation.metrics.is_degenerate`), else 0.0."""
    return float(not text.strip() or is_degenerate(text))


def _invented(texts: Sequence[str]) -> dict[str, float]:
    """Text -> 1.0 if it uses invented words (:func:`emovec.evaluation.fluency.is_invented`),
    else 0.0, each distinct text judged once."""
    return {t: float(is_invented(t)) for t in dict.fromkeys(texts)}


class Judgement(TypedDict):
    """An emotion judge's verdict on one answer for one target emotion."""

    eps: float
    success: float
    scores: dict[str, float]


class _Answer(TypedDict):
    query: str
    recipe: str  # "plain", "prompt" or the name of a Recipe
    target: str
    alpha: float
    answer: str
    eps: float
    success: float
    intensity: float
    sim_query: float
    sim_plain: float
    retention: float
    perplexity: float
    distinct_1: float
    distinct_2: float
    degenerate: float


class Record(_Answer, total=False):
    """One answer of an evaluation, judged for one target emotion.

    ``recipe`` names how it was made (``"plain"``, ``"prompt"`` or a :class:`Recipe`'s
    name), ``alpha`` the strength; ``eps``/``success``/``scores`` are the emotion judge's,
    ``sim_query``/``sim_plain`` MiniLM similarities to the query and to the plain answer,
    ``retention`` :func:`~emovec.evaluation.topic.topic_retention` against the plain answer,
    ``perplexity`` under the unsteered model. ``offensive`` (1.0 flagged, 0.0 clean) and
    ``invented`` (1.0 where the answer uses invented words,
    :func:`~emovec.evaluation.fluency.is_invented`) are absent from reports written before
    they were measured, ``scores`` (every emotion the judge knows) from the oldest ones.
    """

    scores: dict[str, float]
    offensive: float
    invented: float


_REQUIRED = tuple(k for k in _Answer.__annotations__ if k != "retention")


class SummaryRow(TypedDict):
    """One (recipe, emotion, α) of :meth:`EvaluationReport.summary`: means over its queries.

    ``retention`` is :func:`emovec.evaluation.topic.topic_retention` of the row's mean answer–query
    similarity and the plain answers' mean over the same queries (not the mean of the
    answers' own retentions); ``offensive`` and ``invented`` (the share of answers with
    invented words) are ``nan`` where they were not measured.
    """

    recipe: str
    emotion: str
    alpha: float
    n: int
    eps: float
    success: float
    intensity: float
    sim_query: float
    sim_plain: float
    retention: float
    offensive: float
    perplexity: float
    distinct_1: float
    distinct_2: float
    degenerate: float
    invented: float
    median_perplexity: float


def _mean(values: Sequence[float]) -> float:
    array = np.array(values, dtype=float)
    return float(np.nanmean(array)) if np.isfinite(array).any() else math.nan


def _plain_similarities(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """(target, query) -> the plain answer's similarity to the query."""
    return {
        (r["target"], r["query"]): float(r["sim_query"]) for r in records if r["recipe"] == "plain"
    }


def _with_retention(records: Sequence[Mapping[str, Any]]) -> list[Record]:
    """``records`` as typed records, ``retention`` computed where it is missing (reports
    written before it was measured).

    Raises:
        ValueError: If a record lacks a field every report has.
    """
    for r in records:
        missing = [k for k in _REQUIRED if k not in r]
        if missing:
            raise ValueError(f"An evaluation record lacks {missing}: {sorted(r)}.")
    plain = _plain_similarities(records)
    typed: list[Record] = []
    for r in records:
        retention = r.get("retention")
        if retention is None:
            retention = topic_retention(
                float(r["sim_query"]), plain.get((r["target"], r["query"]), math.nan)
            )
        record = Record(**{**r, "retention": float(retention)})  # type: ignore[typeddict-item]
        typed.append(record)
    return typed


def _value(record: Record, key: str) -> float:
    """A metric of ``record`` by name (``nan`` where it was not measured)."""
    return float(cast("Mapping[str, Any]", record).get(key, math.nan))


def _fmt(value: float, spec: str) -> str:
    """``value`` formatted, or ``–`` where it is missing (nan)."""
    return format(value, spec) if math.isfinite(value) else "–"


def _judgement(
    answer: str,
    target: str,
    scores: np.ndarray,
    scored: Sequence[str],
    rivals: Sequence[str],
) -> Judgement:
    """EPS, success and all scores of one answer for one target emotion."""
    column = list(scored).index(target)
    rival_scores = scores[[list(scored).index(e) for e in rivals]]
    top = rivals[int(np.argmax(rival_scores))]
    return {
        "eps": float(scores[column]),
        # An empty answer shows no emotion, whatever a scorer makes of "", and a NaN score
        # (argmax would pick it) judges nothing.
        "success": float(
            bool(answer.strip()) and bool(np.isfinite(rival_scores).all()) and top == target
        ),
        "scores": dict(zip(scored, map(float, scores), strict=True)),
    }
