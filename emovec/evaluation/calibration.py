"""Calibrating where, and how strongly, each emotion is steered.

One band and one strength do not suit every emotion: on SmolLM2-135M-Instruct anger shows
most at layers 10–14 and takes a dose of 0.42, the others at 12–16 with 0.35, and every
emotion leaves the topic once its dose passes about 0.45 (docs/strength-and-calibration.md). The
:func:`calibrate` search answers a set of calibration queries under every candidate setting
(band × dose, each optionally with the emotion's instruction in the user turn), scores the
answers like :func:`emovec.evaluation.evaluate` does, and keeps, per emotion, among the
candidates whose fluency stays within a :class:`~emovec.evaluation.Tolerance` of the plain
answers, the one closest to both bars, success and topic retention (the one rule of
:mod:`emovec.evaluation.choice`).
The result is stored in the bank as per-emotion :class:`~emovec.vectors.Placement`, so that
``steer(model, vecs, anger=1.0)`` means "anger at its calibrated strength" for every emotion.

The whole grid is one :func:`~emovec.evaluation.evaluate` call: every setting is a
:class:`~emovec.evaluation.Recipe` named like ``"12-16@0.35"`` (``"12-16@0.35+instruction"``
with the instruction) whose placement is that band and dose, evaluated at α = 1 (exactly the
setting's dose at its band). The plain answers are generated once, and the settings of all
emotions share ``generate`` batches, each row with its own emotion and placement.

The calibration queries default to the shipped calibration queries
(:func:`~emovec.datasets.default_calibration_queries`), disjoint from the extraction and the
evaluation queries, so an evaluation after calibration is not scored on what was tuned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from itertools import product
from typing import get_args

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._doses import count
from emovec._placement import check_guided_steering, query_guidance_of
from emovec.datasets import default_calibration_queries
from emovec.evaluation.choice import DEFAULT_TARGET_SUCCESS
from emovec.evaluation.recipes import Recipe
from emovec.evaluation.records import OffensiveJudgeLike, load_offensive_judge
from emovec.evaluation.scoring import EmotionScorer, load_scorer
from emovec.evaluation.sweep import evaluate
from emovec.evaluation.tolerance import Tolerance
from emovec.evaluation.topic import SentenceEmbedder
from emovec.evaluation.trials import (
    Calibration,
    _check_target,
    _decide,
    _setting_name,
)
from emovec.generation import Decoding
from emovec.hooks import Positions
from emovec.layers import band_width
from emovec.vectors import EmotionVectors, Placement

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DECODING",
    "DEFAULT_DOSES",
    "DEFAULT_NUM_QUERIES",
    "calibrate",
    "calibrated_repetition_penalty",
    "candidate_bands",
]

# Relative doses tried (α = 1 is RELATIVE_DOSE = 0.5 without calibration); on SmolLM2 the
# answers leave the topic above about 0.5 and break above 0.75.
DEFAULT_DOSES = (0.25, 0.35, 0.5, 0.75)
DEFAULT_NUM_QUERIES = 40
DEFAULT_DECODING = Decoding(max_new_tokens=40)
# Rows per generate call (and perplexity pass). On CPU both are matmul-bound, so a larger
# batch gains little: the SmolLM2 grid of benchmarks/calibration_speed.py took 169 s at 96
# rows, 175 s at 48, 182 s at 128 and 191 s at 24 (one thread). A perplexity pass holds
# rows × tokens × vocabulary logits twice (~3 GB here, ~11 GB for Gemma 3's 262k vocabulary):
# pass a smaller batch_size where memory is short.
DEFAULT_BATCH_SIZE = 96
_DEFAULT_TOLERANCE = Tolerance()


def calibrated_repetition_penalty(vectors: EmotionVectors) -> float:
    """The repetition penalty the bank's placements were calibrated under (1 if none).

    The placements' strengths hold for the decoding they were found with; decoding the
    steered model the same way keeps them valid (all of that decoding:
    :meth:`Decoding.calibrated <emovec.generation.Decoding.calibrated>`, or
    :meth:`~emovec.vectors.EmotionVectors.generation_kwargs` for ``model.generate``).
    """
    return Decoding.calibrated(vectors).repetition_penalty


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


def calibrate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vectors: EmotionVectors,
    *,
    emotions: Sequence[str] | None = None,
    bands: Sequence[Sequence[int]] | None = None,
    doses: Sequence[float] = DEFAULT_DOSES,
    instructions: Sequence[bool] = (False,),
    personas: Sequence[bool] = (False,),
    positions: Sequence[Positions | None] = (None,),
    query_guidance: Sequence[float | None] = (None,),
    queries: Sequence[str] | None = None,
    num_queries: int = DEFAULT_NUM_QUERIES,
    tolerance: Tolerance = _DEFAULT_TOLERANCE,
    target_success: float = DEFAULT_TARGET_SUCCESS,
    decoding: Decoding = DEFAULT_DECODING,
    scorer: EmotionScorer | str | None = None,
    embedder: SentenceEmbedder | None = None,
    offensive_judge: OffensiveJudgeLike | None = None,
    clean: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> Calibration:
    """Find, per emotion, the setting closest to both bars: the emotion shown, the topic kept.

    Every setting (band × dose × instruction or not × persona or not × positions × query
    guidance) of every emotion is answered in one
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
        personas: Whether each setting is tried with the model's own system turn
            (``False``) and/or with the emotion's persona (``True``, :data:`emovec.evaluation.
            PERSONAS`) instead; a chosen persona is stored with the placement.
        positions: The positions each setting steers (``None``: ``steer``'s default;
            ``"generated"``: only the answer's tokens); the chosen ones are stored.
        query_guidance: How much each setting amplifies the question against the prompt
            without it (``None``: not at all; a number ≥ 1: :class:`emovec.guidance.
            QueryGuidance`, a second pass per token); the chosen one is stored.
        queries: Calibration queries; default: the first ``num_queries`` shipped calibration
            queries (disjoint from the extraction and the evaluation queries).
        num_queries: How many default queries to use.
        tolerance: How far fluency may drift from plain for a candidate to be chosen, and
            the topic-retention bar.
        target_success: The success bar; among fluent candidates the one with the highest
            ``min(success / target_success, 1) + min(retention / tolerance.min_topic_ratio,
            1)`` is chosen (:func:`emovec.evaluation.choice.choose`).
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
        ValueError: For a bank whose placements carry per-layer weights (trained; their
            shape would be lost), doses that are not finite and positive, bands outside the bank,
            ``instructions`` or ``personas`` that are not booleans, unknown ``positions``,
            ``query_guidance`` below 1 or combined with positions other than all, a
            ``target_success`` outside (0, 1], or an instruction or persona asked for an
            emotion without one.
    """
    _check_target(target_success)
    count(batch_size, "batch_size")
    count(num_queries, "num_queries")
    if not doses or any(not (math.isfinite(d) and d > 0) for d in doses):
        raise ValueError(f"doses must be finite and positive, not {list(doses)}.")
    tried = _switches(instructions, "instructions")
    cast = _switches(personas, "personas")
    where = list(dict.fromkeys(positions))
    if not where or any(p is not None and p not in get_args(Positions) for p in where):
        raise ValueError(
            f"positions must be None and/or some of {get_args(Positions)}, not {list(positions)}."
        )
    gammas = [None if g is None else query_guidance_of(g) for g in dict.fromkeys(query_guidance)]
    if not gammas:
        raise ValueError("query_guidance must hold None and/or numbers >= 1, not [].")
    if any(g is not None for g in gammas):
        for at in where:
            check_guided_steering(at, None)
    candidates = [tuple(sorted({int(i) for i in band})) for band in (bands or ())]
    candidates = list(dict.fromkeys(candidates or candidate_bands(vectors.num_layers)))
    if any(not band or not 0 <= band[0] <= band[-1] < vectors.num_layers for band in candidates):
        raise ValueError(f"bands {candidates} are not all within 0..{vectors.num_layers - 1}.")
    grid = list(dict.fromkeys(float(d) for d in doses))
    queries = list(queries) if queries is not None else default_calibration_queries()[:num_queries]
    scorer = load_scorer(scorer)
    bare = vectors.without_placements()
    wanted = list(emotions) if emotions is not None else [e for e in bare if e in scorer.emotions]
    shaped = [e for e in wanted if (p := vectors.placements.get(e)) and p.weights is not None]
    if shaped:
        raise ValueError(
            f"The placements of {shaped} share their dose among layers by learned weights "
            "(a trained bank), which calibration's even spread over a band would drop. Choose "
            "a trained bank's strength with `emovec train --alpha EMOTION=A` (or "
            "benchmarks/choose_recipes.py); calibrate the vectors alone with "
            "vectors.without_placements()."
        )
    # Checked before any answer is generated (evaluate itself checks the rest).
    texts = (
        {e: Recipe(instruct=True).instruction(bare, e) for e in wanted if e in bare}
        if True in tried
        else {}
    )
    persona_texts = (
        {e: Recipe(persona=True).system(bare, e) for e in wanted if e in bare}
        if True in cast
        else {}
    )
    recipes = {
        _setting_name(band, dose, instructed, persona, at, gamma): Recipe(
            placement=Placement(band, dose),
            instruct=instructed,
            persona=persona,
            positions=at,
            query_guidance=gamma,
        )
        for band, dose, instructed, persona, at, gamma in product(
            candidates, grid, tried, cast, where, gammas
        )
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
        "personas": cast,
        "persona_texts": persona_texts,
        "positions": where,
        "query_guidance": gammas,
        "tolerance": asdict(tolerance),
        "target_success": target_success,
        "decoding": asdict(decoding),
        "clean": clean,
        "scorer": type(scorer).__name__,
        "offensive_judge": report.settings["offensive_judge"],
        "reference_retention": report.reference_retention,
    }
    return _decide(report, tolerance, target_success, settings)


def _switches(values: Sequence[bool], name: str) -> list[bool]:
    """``values`` once each, checked to be booleans (at least one)."""
    tried = list(dict.fromkeys(values))
    if not tried or any(not isinstance(v, bool) for v in tried):
        raise ValueError(f"{name} must be False and/or True, not {list(values)}.")
    return tried
