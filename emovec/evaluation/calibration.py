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
from collections.abc import Sequence
from dataclasses import asdict

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import default_extraction_queries
from emovec.evaluation.recipes import Recipe
from emovec.evaluation.records import OffensiveJudgeLike, load_offensive_judge
from emovec.evaluation.scoring import EmotionScorer, load_scorer
from emovec.evaluation.sweep import evaluate
from emovec.evaluation.tolerance import Tolerance
from emovec.evaluation.topic import SentenceEmbedder
from emovec.evaluation.trials import Calibration, _decide, _setting_name
from emovec.generation import Decoding
from emovec.layers import band_width
from emovec.vectors import EmotionVectors, Placement

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DECODING",
    "DEFAULT_DOSES",
    "DEFAULT_NUM_QUERIES",
    "DEFAULT_SUCCESS_MARGIN",
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
