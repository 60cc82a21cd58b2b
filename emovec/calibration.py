"""Calibrating where, and how strongly, each emotion is steered.

One band and one strength do not suit every emotion: on SmolLM2-135M-Instruct anger shows
most at layers 10–14 and takes a dose of 0.42, the others at 12–16 with 0.35, and every
emotion leaves the topic once its dose passes about 0.45 (README, "Strength"). The
:func:`calibrate` search answers a set of calibration queries under every candidate setting
(band × dose, each optionally with the emotion's instruction in the user turn), scores the
answers like :func:`emovec.evaluation.evaluate` does, and keeps, per emotion, among the
candidates whose fluency stays within a :class:`~emovec.evaluation.Tolerance` of the plain
answers and whose target emotion wins nearly as often as the best one's, the most on-topic.
The result is stored in the bank as per-emotion :class:`~emovec.vectors.Placement`, so that
``steer(model, vecs, anger=1.0)`` means "anger at its calibrated strength" for every emotion.

The whole grid is one :func:`~emovec.evaluation.evaluate` call: every setting is a
:class:`~emovec.evaluation.Recipe` named like ``"12-16@0.35"`` (``"12-16@0.35+instruction"``
with the instruction) whose placement is that band and dose, evaluated at α = 1 (exactly the
setting's dose at its band). The plain answers are generated once, and the settings of all
emotions share ``generate`` batches, each row with its own emotion and placement.

The calibration queries default to the shipped extraction queries, never the evaluation
queries, so an evaluation after calibration is not scored on what was tuned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import default_extraction_queries
from emovec.evaluation import (
    Decoding,
    EvaluationReport,
    OffensiveJudgeLike,
    Recipe,
    Tolerance,
    _fmt,
    evaluate,
    load_offensive_judge,
)
from emovec.layers import band_width
from emovec.metrics import SentenceEmbedder
from emovec.plots import FrontPoint
from emovec.scoring import EmotionScorer, load_scorer
from emovec.vectors import EmotionVectors, Placement

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DECODING",
    "DEFAULT_DOSES",
    "DEFAULT_NUM_QUERIES",
    "DEFAULT_SUCCESS_MARGIN",
    "Calibration",
    "Trial",
    "calibrate",
    "calibrated_repetition_penalty",
    "candidate_bands",
]

# Relative doses tried (α = 1 is RELATIVE_DOSE = 0.5 without calibration); on SmolLM2 the
# answers leave the topic above about 0.5 and break above 0.75.
DEFAULT_DOSES = (0.25, 0.35, 0.5, 0.75)
DEFAULT_NUM_QUERIES = 24
DEFAULT_SUCCESS_MARGIN = 0.1
DEFAULT_DECODING = Decoding(max_new_tokens=40)
# Rows per generate call (and perplexity pass). On CPU both are matmul-bound, so a larger
# batch gains little: the SmolLM2 grid of benchmarks/calibration_speed.py took 169 s at 96
# rows, 175 s at 48, 182 s at 128 and 191 s at 24 (one thread). A perplexity pass holds
# rows × tokens × vocabulary logits twice (~3 GB here, ~11 GB for Gemma 3's 262k vocabulary):
# pass a smaller batch_size where memory is short.
DEFAULT_BATCH_SIZE = 96
_DEFAULT_TOLERANCE = Tolerance()
_INSTRUCTED = "+instruction"


def _band(layers: Sequence[int], dash: str = "-") -> str:
    """``"12-16"`` for a contiguous band (``dash`` between its ends), else ``"0,2,5"``."""
    contiguous = list(layers) == list(range(layers[0], layers[0] + len(layers)))
    return f"{layers[0]}{dash}{layers[-1]}" if contiguous else ",".join(map(str, layers))


def _setting_name(layers: Sequence[int], dose: float, instructed: bool) -> str:
    """The recipe name of one setting: ``"12-16@0.35"``, ``"12-16@0.35+instruction"``.

    The dose is written as Python's shortest round-trip form, so distinct doses never share
    a name.
    """
    return f"{_band(layers)}@{float(dose)!r}" + (_INSTRUCTED if instructed else "")


@dataclass(frozen=True)
class Trial:
    """One emotion steered at one band and dose (and maybe with its instruction in the
    user turn), scored over the calibration queries.

    ``retention`` is the topic retention against the plain answers
    (:func:`emovec.metrics.topic_retention`), ``offensive`` the share of answers the
    offensive judge flagged (``nan`` if not measured), ``instruction`` the request for the
    emotion added to each query (``None``: the vector alone).
    """

    emotion: str
    layers: tuple[int, ...]
    dose: float
    success: float
    eps: float
    degenerate: float
    sim_query: float
    retention: float
    offensive: float
    median_perplexity: float
    acceptable: bool
    instruction: str | None = None

    @property
    def placement(self) -> Placement:
        """This trial's setting as a placement (what :meth:`Calibration.apply` stores)."""
        return Placement(self.layers, self.dose, instruction=self.instruction)

    @property
    def label(self) -> str:
        """``"12–16 ×0.35"``, and ``" + instruction"`` where the query asked for the emotion."""
        return f"{_band(self.layers, '–')} ×{self.dose:g}" + (
            " + instruction" if self.instruction else ""
        )


@dataclass
class Calibration:
    """Every trial, and the placement chosen per emotion (absent where none was acceptable).

    Attributes:
        trials: Every (emotion, band, dose, instruction or not) tried, in order: per emotion,
            band by band, dose by dose.
        placements: The chosen placement per emotion (with the emotion's instruction where
            the chosen setting asked for it).
        plain: The plain answers' success, EPS, degeneration, similarity, retention (1),
            offensive rate and perplexity per emotion, the baseline every trial was held to.
        settings: How the calibration ran.
        report: The one evaluation behind every trial (every answer with its scores; its
            methods are the settings' names, ``"12-16@0.35"``), so another judge can
            re-decide without generating again (:meth:`rescored`).
        tolerance: The fluency tolerance trials were held to.
    """

    trials: list[Trial]
    placements: dict[str, Placement]
    plain: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    report: EvaluationReport | None = field(default=None, repr=False)
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
        if self.report is None:
            raise ValueError("This calibration kept no answers to rescore; calibrate again.")
        report = self.report
        settings = dict(self.settings)
        if scorer is not None:
            scorer = load_scorer(scorer)
            report = report.rescored(scorer)
            settings["scorer"] = type(scorer).__name__
        tolerance = tolerance or self.tolerance
        if success_margin is None:
            success_margin = float(settings.get("success_margin", 0.0))
        settings.update(tolerance=asdict(tolerance), success_margin=success_margin)
        return _decide(report, tolerance, success_margin, settings)

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
        chosen = {e: {**p.to_dict(), **self._scores(e, p)} for e, p in self.placements.items()}
        record: dict[str, Any] = {**self.settings, "chosen": chosen}
        tried = vectors.without_placements(self.emotions)
        if tried.placements and "calibration" in vectors.settings:
            record["earlier"] = vectors.settings["calibration"]
        return tried.with_placements(self.placements).with_settings(calibration=record)

    def _scores(self, emotion: str, placement: Placement) -> dict[str, float]:
        trial = next(t for t in self.trials if t.emotion == emotion and t.placement == placement)
        return {
            "success": trial.success,
            "eps": trial.eps,
            "degenerate": trial.degenerate,
            "retention": trial.retention,
            "offensive": trial.offensive,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "plain": self.plain,
            "placements": {e: p.to_dict() for e, p in self.placements.items()},
            "trials": [asdict(t) for t in self.trials],
        }

    @property
    def reference_retention(self) -> dict[str, float]:
        """The hand-written answers' retention per emotion (empty if not recorded)."""
        return dict(self.settings.get("reference_retention") or {})

    def to_markdown(self) -> str:
        """Per emotion: the plain baseline, every trial, and the chosen one marked; the
        plain row's retention column holds the hand-written answers' (the reference), and a
        trial that asked for the emotion in the query reads ``12–16 + instruction``."""
        lines = [
            "| emotion | layers | dose | success | EPS | retention | offensive | degenerate | "
            "sim(query) | PPL | |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        reference = self.reference_retention
        for emotion in self.emotions:
            plain = self.plain.get(emotion)
            if plain:
                ref = reference.get(emotion, math.nan)
                lines.append(
                    f"| {emotion} | plain | 0 | {plain['success']:.2f} | {plain['eps']:.3f} | "
                    f"{_fmt(plain.get('retention', math.nan), '.2f')} | "
                    f"{_fmt(plain.get('offensive', math.nan), '.2f')} | "
                    f"{plain['degenerate']:.2f} | {plain['sim_query']:.2f} | "
                    f"{plain['median_perplexity']:.1f} | reference retention {_fmt(ref, '.2f')} |"
                )
            chosen = self.placements.get(emotion)
            for t in (t for t in self.trials if t.emotion == emotion):
                mark = (
                    "**chosen**"
                    if chosen == t.placement
                    else ("" if t.acceptable else "outside tolerance")
                )
                band = _band(t.layers, "–") + (" + instruction" if t.instruction else "")
                lines.append(
                    f"| {emotion} | {band} | {t.dose:g} | "
                    f"{t.success:.2f} | {t.eps:.3f} | {_fmt(t.retention, '.2f')} | "
                    f"{_fmt(t.offensive, '.2f')} | {t.degenerate:.2f} | {t.sim_query:.2f} | "
                    f"{t.median_perplexity:.1f} | {mark} |"
                )
        return "\n".join(lines) + "\n"

    def front_points(self) -> dict[str, list[FrontPoint]]:
        """Per emotion, the plain answers and every trial as points of success against
        topic retention (the chosen trial and those outside the tolerance marked)."""
        points: dict[str, list[FrontPoint]] = {}
        for emotion in self.emotions:
            plain = self.plain.get(emotion)
            group = points.setdefault(emotion, [])
            if plain:
                group.append(
                    FrontPoint("plain", plain["success"], plain.get("retention", 1.0), "plain")
                )
            chosen = self.placements.get(emotion)
            for t in (t for t in self.trials if t.emotion == emotion):
                is_chosen = chosen == t.placement
                kind = "chosen" if is_chosen else ("trial" if t.acceptable else "rejected")
                group.append(FrontPoint(t.label, t.success, t.retention, kind))
        return points

    def plot_front(self, path: str | Path) -> Path:
        """PNG: success against topic retention per emotion, every trial (band × dose, with
        or without the instruction) a point, the Pareto front, the plain answers and the
        hand-written answers' retention (:func:`emovec.plots.plot_front`)."""
        from emovec.plots import plot_front

        return plot_front(
            path,
            self.front_points(),
            reference=self.reference_retention,
            title=f"calibration: success ({self.settings.get('scorer', 'judge')}) "
            "against topic retention",
        )


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
    width = band_width(num_layers) if width is None else width
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
    An emotion's trials answer the same queries against the same plain answers (one
    evaluation), so the highest similarity is also the highest topic retention.
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
    instructions: Sequence[bool] = (False,),
    queries: Sequence[str] | None = None,
    num_queries: int = DEFAULT_NUM_QUERIES,
    tolerance: Tolerance = _DEFAULT_TOLERANCE,
    success_margin: float = DEFAULT_SUCCESS_MARGIN,
    decoding: Decoding = DEFAULT_DECODING,
    scorer: EmotionScorer | str | None = None,
    embedder: SentenceEmbedder | None = None,
    offensive_judge: OffensiveJudgeLike | None = None,
    clean: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> Calibration:
    """Find, per emotion, the band and dose at which it shows most while staying fluent.

    Every setting (band × dose × instruction or not) of every emotion is answered in one
    :func:`~emovec.evaluation.evaluate` call: the plain answers once, the steered rows of all
    settings and emotions sharing ``generate`` batches (each row its own placement).

    Args:
        model: The model the vectors belong to.
        tokenizer: Its tokenizer.
        vectors: The bank to calibrate (its existing placements are ignored while trying).
        emotions: Emotions to calibrate; default: those of the bank the scorer knows.
        bands: Candidate layer bands; default: :func:`candidate_bands`.
        doses: Candidate relative doses (summed over the band; α = 1 will mean this dose).
        instructions: Whether each setting is tried without (``False``) and/or with
            (``True``) the emotion's instruction (:data:`emovec.evaluation.
            PROMPT_INSTRUCTIONS`) added to the query beside the vector; a chosen setting with
            it stores the instruction in the placement
            (:meth:`~emovec.vectors.EmotionVectors.instruction`).
        queries: Calibration queries; default: the first ``num_queries`` shipped extraction
            queries (disjoint from the evaluation queries).
        num_queries: How many default queries to use.
        tolerance: How far fluency may drift from plain for a candidate to be chosen.
        success_margin: Among acceptable candidates whose success is within this margin of
            the best, the most on-topic one is chosen (see :func:`_choose`).
        decoding: Decoding used for every answer.
        scorer: Emotion scorer (see :func:`emovec.evaluation.evaluate`).
        embedder: Sentence embedder for topic adherence.
        offensive_judge: Offensive-language judge (see :func:`emovec.evaluation.evaluate`).
        clean: Block slurs while decoding (see :func:`emovec.evaluation.evaluate`).
        batch_size: Rows per ``generate`` call (and per perplexity pass).
        progress: Show progress bars.

    Returns:
        The :class:`Calibration`; ``calibration.apply(vectors)`` stores the placements.

    Raises:
        ValueError: For doses that are not finite and positive, bands outside the bank,
            ``instructions`` that are not booleans, a ``success_margin`` outside [0, 1], or
            an instruction asked for an emotion without one.
    """
    if not 0.0 <= success_margin <= 1.0:
        raise ValueError(f"success_margin must be in [0, 1], not {success_margin}.")
    if not doses or any(not (math.isfinite(d) and d > 0) for d in doses):
        raise ValueError(f"doses must be finite and positive, not {list(doses)}.")
    tried = list(dict.fromkeys(instructions))
    if not tried or any(not isinstance(i, bool) for i in tried):
        raise ValueError(f"instructions must be False and/or True, not {list(instructions)}.")
    candidates = [tuple(sorted({int(i) for i in band})) for band in (bands or ())]
    candidates = list(dict.fromkeys(candidates or candidate_bands(vectors.num_layers)))
    if any(not band or not 0 <= band[0] <= band[-1] < vectors.num_layers for band in candidates):
        raise ValueError(f"bands {candidates} are not all within 0..{vectors.num_layers - 1}.")
    grid = list(dict.fromkeys(float(d) for d in doses))
    queries = list(queries) if queries is not None else default_extraction_queries()[:num_queries]
    scorer = load_scorer(scorer)
    bare = vectors.without_placements()
    wanted = list(emotions) if emotions is not None else [e for e in bare if e in scorer.emotions]
    # Checked before any answer is generated (evaluate itself checks the rest).
    texts = (
        {e: Recipe(instruct=True).instruction(bare, e) for e in wanted if e in bare}
        if True in tried
        else {}
    )
    recipes = {
        _setting_name(band, dose, instructed): Recipe(
            placement=Placement(band, dose), instruct=instructed
        )
        for band in candidates
        for dose in grid
        for instructed in tried
    }
    report = evaluate(
        model,
        tokenizer,
        bare,
        emotions=wanted,
        alphas=[1.0],  # α = 1 is each recipe's dose at its band
        queries=queries,
        decoding=decoding,
        scorer=scorer,
        embedder=embedder,
        recipes=recipes,
        offensive_judge=load_offensive_judge(offensive_judge),
        clean=clean,
        batch_size=batch_size,
        progress=progress,
    )
    settings = {
        "queries": len(queries),
        "bands": [list(b) for b in candidates],
        "doses": grid,
        "instructions": tried,
        "instruction_texts": texts,
        "tolerance": asdict(tolerance),
        "success_margin": success_margin,
        "decoding": asdict(decoding),
        "clean": clean,
        "scorer": type(scorer).__name__,
        "offensive_judge": report.settings["offensive_judge"],
        "reference_retention": report.reference_retention,
    }
    return _decide(report, tolerance, success_margin, settings)


_KEYS = ("success", "eps", "degenerate", "sim_query", "retention", "offensive", "median_perplexity")


def _decide(
    report: EvaluationReport,
    tolerance: Tolerance,
    success_margin: float,
    settings: Mapping[str, Any],
) -> Calibration:
    """Trials from the evaluation of every setting (named by :func:`_setting_name` from
    ``settings``' bands, doses and instructions), and the placement chosen per emotion."""
    if not 0.0 <= success_margin <= 1.0:
        raise ValueError(f"success_margin must be between 0 and 1, not {success_margin}.")
    summary = report.summary()
    rows = {(r["method"], r["emotion"]): r for r in summary if r["method"] != "plain"}
    baseline: dict[str, Mapping[str, Any]] = {
        r["emotion"]: r for r in summary if r["method"] == "plain"
    }
    plain = {e: {k: float(r[k]) for k in _KEYS} for e, r in baseline.items()}
    texts = settings.get("instruction_texts") or {}
    trials: list[Trial] = []
    for emotion in report.settings.get("emotions") or list(baseline):
        for band in settings["bands"]:
            for dose in settings["doses"]:
                for instructed in settings.get("instructions", [False]):
                    row = rows[(_setting_name(band, dose, instructed), emotion)]
                    trials.append(
                        Trial(
                            emotion=emotion,
                            layers=tuple(band),
                            dose=float(dose),
                            success=row["success"],
                            eps=row["eps"],
                            degenerate=row["degenerate"],
                            sim_query=row["sim_query"],
                            retention=row["retention"],
                            offensive=row["offensive"],
                            median_perplexity=row["median_perplexity"],
                            acceptable=tolerance.accepts(row, baseline[emotion]),
                            instruction=texts[emotion] if instructed else None,
                        )
                    )
    placements: dict[str, Placement] = {}
    for emotion in dict.fromkeys(t.emotion for t in trials):
        best = _choose([t for t in trials if t.emotion == emotion], success_margin)
        if best is not None:
            placements[emotion] = best.placement
    return Calibration(trials, placements, plain, dict(settings), report, tolerance)
