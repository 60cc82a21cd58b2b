"""Calibrating where, and how strongly, each emotion is steered.

One band and one strength do not suit every emotion: on SmolLM2-135M-Instruct anger shows
most at layers 10–14 and takes a dose of 0.42, the others at 12–16 with 0.35, and every
emotion leaves the topic once its dose passes about 0.45 (README, "Strength"). The
:func:`calibrate` search answers a set of calibration queries under every candidate band and
dose, scores the answers like :func:`emovec.evaluation.evaluate` does, and keeps, per emotion,
among the candidates whose fluency stays within a :class:`~emovec.evaluation.Tolerance` of
the plain answers and whose target emotion wins nearly as often as the best one's, the most
on-topic. The result is stored in the bank
as per-emotion :class:`~emovec.vectors.Placement`, so that ``steer(model, vecs, anger=1.0)``
means "anger at its calibrated strength" for every emotion.

The calibration queries default to the shipped extraction queries, never the evaluation
queries, so an evaluation after calibration is not scored on what was tuned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import default_extraction_queries
from emovec.evaluation import Decoding, EvaluationReport, Tolerance, evaluate
from emovec.metrics import SentenceEmbedder
from emovec.scoring import EmotionScorer, load_scorer
from emovec.steering import RELATIVE_DOSE
from emovec.vectors import EmotionVectors, Placement

__all__ = [
    "DEFAULT_DOSES",
    "Calibration",
    "Trial",
    "calibrate",
    "calibrated_repetition_penalty",
    "candidate_bands",
]

# Relative doses tried (α = 1 is RELATIVE_DOSE = 0.5 without calibration); on SmolLM2 the
# answers leave the topic above about 0.5 and break above 0.75.
DEFAULT_DOSES = (0.25, 0.35, 0.5, 0.75)
_DEFAULT_TOLERANCE = Tolerance()
_DEFAULT_DECODING = Decoding(max_new_tokens=40)


@dataclass(frozen=True)
class Trial:
    """One emotion steered at one band and dose, scored over the calibration queries."""

    emotion: str
    layers: tuple[int, ...]
    dose: float
    success: float
    eps: float
    degenerate: float
    sim_query: float
    median_perplexity: float
    acceptable: bool


@dataclass
class Calibration:
    """Every trial, and the placement chosen per emotion (absent where none was acceptable).

    Attributes:
        trials: Every (emotion, band, dose) tried, in order.
        placements: The chosen placement per emotion.
        plain: The plain answers' success, EPS, degeneration, similarity and perplexity per
            emotion, the baseline every trial was held to.
        settings: How the calibration ran.
        reports: The evaluation behind each band (every answer with its scores), so another
            judge can re-decide without generating again (:meth:`rescored`).
        tolerance: The fluency tolerance trials were held to.
    """

    trials: list[Trial]
    placements: dict[str, Placement]
    plain: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    reports: dict[tuple[int, ...], EvaluationReport] = field(default_factory=dict, repr=False)
    tolerance: Tolerance = field(default_factory=Tolerance, repr=False)

    def rescored(
        self,
        scorer: EmotionScorer | str | None = None,
        *,
        tolerance: Tolerance | None = None,
        success_margin: float | None = None,
    ) -> Calibration:
        """The calibration decided again from the same answers: with another emotion judge,
        tolerance or success margin (each default: the one used).

        Raises:
            ValueError: If the calibration kept no reports (``to_dict()`` leaves them out),
                or ``success_margin`` is outside [0, 1].
        """
        if not self.reports:
            raise ValueError("This calibration kept no answers to rescore; calibrate again.")
        reports = self.reports
        settings = dict(self.settings)
        if scorer is not None:
            scorer = load_scorer(scorer)
            reports = {band: report.rescored(scorer) for band, report in reports.items()}
            settings["scorer"] = type(scorer).__name__
        tolerance = tolerance or self.tolerance
        if success_margin is None:
            success_margin = float(settings.get("success_margin", 0.0))
        settings.update(tolerance=asdict(tolerance), success_margin=success_margin)
        return _decide(reports, tolerance, success_margin, settings)

    @property
    def emotions(self) -> list[str]:
        """The emotions tried, in order."""
        return list(dict.fromkeys(t.emotion for t in self.trials))

    def apply(self, vectors: EmotionVectors) -> EmotionVectors:
        """``vectors`` with the chosen placements and a record of how they were found.

        An emotion tried here with no acceptable trial loses any placement it had, so the
        bank never keeps a placement this calibration found too broken; emotions not tried
        keep theirs, and then the record of the calibration that found them is kept under
        ``"earlier"``.
        """
        chosen = {
            e: {"layers": list(p.layers), "dose": p.dose, **self._scores(e, p)}
            for e, p in self.placements.items()
        }
        record: dict[str, Any] = {**self.settings, "chosen": chosen}
        tried = vectors.without_placements(self.emotions)
        if tried.placements and "calibration" in vectors.settings:
            record["earlier"] = vectors.settings["calibration"]
        return tried.with_placements(self.placements).with_settings(calibration=record)

    def _scores(self, emotion: str, placement: Placement) -> dict[str, float]:
        trial = next(
            t
            for t in self.trials
            if t.emotion == emotion and t.layers == placement.layers and t.dose == placement.dose
        )
        return {"success": trial.success, "eps": trial.eps, "degenerate": trial.degenerate}

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "plain": self.plain,
            "placements": {e: p.to_dict() for e, p in self.placements.items()},
            "trials": [asdict(t) for t in self.trials],
        }

    def to_markdown(self) -> str:
        """Per emotion: the plain baseline, every trial, and the chosen one marked."""
        lines = [
            "| emotion | layers | dose | success | EPS | degenerate | sim(query) | PPL | |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for emotion in self.emotions:
            plain = self.plain.get(emotion)
            if plain:
                lines.append(
                    f"| {emotion} | plain | 0 | {plain['success']:.2f} | {plain['eps']:.3f} | "
                    f"{plain['degenerate']:.2f} | {plain['sim_query']:.2f} | "
                    f"{plain['median_perplexity']:.1f} | |"
                )
            chosen = self.placements.get(emotion)
            for t in (t for t in self.trials if t.emotion == emotion):
                mark = (
                    "**chosen**"
                    if chosen and (t.layers, t.dose) == (chosen.layers, chosen.dose)
                    else ("" if t.acceptable else "too broken")
                )
                lines.append(
                    f"| {emotion} | {t.layers[0]}–{t.layers[-1]} | {t.dose:g} | "
                    f"{t.success:.2f} | {t.eps:.3f} | {t.degenerate:.2f} | {t.sim_query:.2f} | "
                    f"{t.median_perplexity:.1f} | {mark} |"
                )
        return "\n".join(lines) + "\n"


def calibrated_repetition_penalty(vectors: EmotionVectors) -> float:
    """The repetition penalty the bank's placements were calibrated under (1 if none).

    The placements' strengths hold for the decoding they were found with; decoding the
    steered model the same way keeps them valid.
    """
    decoding = vectors.settings.get("calibration", {}).get("decoding", {})
    return float(decoding.get("repetition_penalty", 1.0))


def candidate_bands(num_layers: int, width: int | None = None) -> list[tuple[int, ...]]:
    """Contiguous bands to try: ``width`` layers (default a sixth of the stack), starting
    every ``width // 2`` layers from a fifth to about two thirds of the depth.

    Very early layers still encode surface form and very late ones are committed to the
    next token; on SmolLM2 bands outside this range only broke the text sooner.
    """
    width = max(1, round(num_layers / 6)) if width is None else width
    if not 0 < width <= num_layers:
        raise ValueError(f"width must be between 1 and {num_layers}, not {width}.")
    step = max(1, width // 2)
    first = min(round(0.2 * num_layers), num_layers - width)
    last = max(first, min(num_layers - width, round(0.67 * num_layers) - width // 2))
    return [tuple(range(s, s + width)) for s in range(first, last + 1, step)]


def _choose(trials: Sequence[Trial], success_margin: float = 0.0) -> Trial | None:
    """Among acceptable trials whose success is within ``success_margin`` of the best one's,
    the most on-topic (highest answer–query similarity), then highest EPS, then lowest dose.

    Success over a few dozen queries is noisy (one answer is 4 % of 24), so a trial a
    margin below the best is as good a bet, and staying on topic is what users notice.
    """
    acceptable = [t for t in trials if t.acceptable]
    if not acceptable:
        return None
    best = max(t.success for t in acceptable)
    near = [t for t in acceptable if t.success >= best - success_margin - 1e-9]
    return max(near, key=lambda t: (t.sim_query, t.eps, -t.dose))


def calibrate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vectors: EmotionVectors,
    *,
    emotions: Sequence[str] | None = None,
    bands: Sequence[Sequence[int]] | None = None,
    doses: Sequence[float] = DEFAULT_DOSES,
    queries: Sequence[str] | None = None,
    num_queries: int = 24,
    tolerance: Tolerance = _DEFAULT_TOLERANCE,
    success_margin: float = 0.1,
    decoding: Decoding = _DEFAULT_DECODING,
    scorer: EmotionScorer | str | None = None,
    embedder: SentenceEmbedder | None = None,
    batch_size: int = 24,
    progress: bool = True,
) -> Calibration:
    """Find, per emotion, the band and dose at which it shows most while staying fluent.

    Args:
        model: The model the vectors belong to.
        tokenizer: Its tokenizer.
        vectors: The bank to calibrate (its existing placements are ignored while trying).
        emotions: Emotions to calibrate; default: those of the bank the scorer knows.
        bands: Candidate layer bands; default: :func:`candidate_bands`.
        doses: Candidate relative doses (summed over the band; α = 1 will mean this dose).
        queries: Calibration queries; default: the first ``num_queries`` shipped extraction
            queries (disjoint from the evaluation queries).
        num_queries: How many default queries to use.
        tolerance: How far fluency may drift from plain for a candidate to be chosen.
        success_margin: Among acceptable candidates whose success is within this margin of
            the best, the most on-topic one is chosen (see :func:`_choose`).
        decoding: Decoding used for every answer.
        scorer: Emotion scorer (see :func:`emovec.evaluation.evaluate`).
        embedder: Sentence embedder for topic adherence.
        batch_size: Rows per ``generate`` call.
        progress: Show progress bars.

    Returns:
        The :class:`Calibration`; ``calibration.apply(vectors)`` stores the placements.
    """
    if not 0.0 <= success_margin <= 1.0:
        raise ValueError(f"success_margin must be in [0, 1], not {success_margin}.")
    if not doses or any(not (math.isfinite(d) and d > 0) for d in doses):
        raise ValueError(f"doses must be finite and positive, not {list(doses)}.")
    candidates = [tuple(sorted({int(i) for i in band})) for band in (bands or ())]
    candidates = candidates or candidate_bands(vectors.num_layers)
    if any(not band or not 0 <= band[0] <= band[-1] < vectors.num_layers for band in candidates):
        raise ValueError(f"bands {candidates} are not all within 0..{vectors.num_layers - 1}.")
    queries = list(queries) if queries is not None else default_extraction_queries()[:num_queries]
    scorer = load_scorer(scorer)
    embedder = embedder or SentenceEmbedder()
    # With explicit layers, α = 1 is RELATIVE_DOSE over the band, whatever its width.
    alphas = [dose / RELATIVE_DOSE for dose in doses]
    bare = vectors.without_placements()

    reports = {
        band: evaluate(
            model,
            tokenizer,
            bare,
            emotions=emotions,
            alphas=alphas,
            queries=queries,
            decoding=decoding,
            scorer=scorer,
            embedder=embedder,
            batch_size=batch_size,
            layers=list(band),
            progress=progress,
        )
        for band in candidates
    }
    settings = {
        "queries": len(queries),
        "bands": [list(b) for b in candidates],
        "doses": [float(d) for d in doses],
        "tolerance": asdict(tolerance),
        "success_margin": success_margin,
        "decoding": asdict(decoding),
        "scorer": type(scorer).__name__,
    }
    return _decide(reports, tolerance, success_margin, settings)


def _decide(
    reports: dict[tuple[int, ...], EvaluationReport],
    tolerance: Tolerance,
    success_margin: float,
    settings: dict[str, Any],
) -> Calibration:
    """Trials from each band's evaluation, and the placement chosen per emotion."""
    if not 0.0 <= success_margin <= 1.0:
        raise ValueError(f"success_margin must be between 0 and 1, not {success_margin}.")
    trials: list[Trial] = []
    plain: dict[str, dict[str, float]] = {}
    keys = ("success", "eps", "degenerate", "sim_query", "median_perplexity")
    for band, report in reports.items():
        summary = report.summary()
        baseline = {r["emotion"]: r for r in summary if r["method"] == "plain"}
        plain = plain or {e: {k: float(r[k]) for k in keys} for e, r in baseline.items()}
        for row in summary:
            if row["method"] != "vector":
                continue
            trials.append(
                Trial(
                    emotion=row["emotion"],
                    layers=band,
                    dose=row["alpha"] * RELATIVE_DOSE,
                    success=row["success"],
                    eps=row["eps"],
                    degenerate=row["degenerate"],
                    sim_query=row["sim_query"],
                    median_perplexity=row["median_perplexity"],
                    acceptable=tolerance.accepts(row, baseline[row["emotion"]]),
                )
            )
    placements: dict[str, Placement] = {}
    for emotion in dict.fromkeys(t.emotion for t in trials):
        best = _choose([t for t in trials if t.emotion == emotion], success_margin)
        if best is not None:
            placements[emotion] = Placement(best.layers, best.dose)
    return Calibration(trials, placements, plain, settings, reports, tolerance)
