"""Emotion scorers: a tiny random-init BERT classifier built in code, checked against a softmax
computed by hand, and the ``load_scorer`` factory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODEL_VOCAB_SIZE, build_tokenizer
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from emovec.datasets import BASIC_EMOTIONS
from emovec.scoring import ClassifierScorer, EmotionScorer, NadeScorer, load_scorer

# The label set of the popular six-way emotion classifiers: no "disgust".
LABELS = {0: "sadness", 1: "joy", 2: "love", 3: "anger", 4: "fear", 5: "surprise"}
TEXTS = [
    "i was happy today",
    "the dog ran to the park and then she cried",
    "sad",
]


def build_classifier(
    labels: dict[int, str] = LABELS, seed: int = 0
) -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=MODEL_VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        id2label=labels,
        label2id={label: i for i, label in labels.items()},
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def classifier() -> tuple[BertForSequenceClassification, PreTrainedTokenizerFast]:
    return build_classifier(), build_tokenizer()


def hand_probabilities(
    model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerFast, text: str
) -> torch.Tensor:
    """Softmax over all labels for one unpadded text."""
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
    return torch.softmax(logits, dim=-1)


def test_scores_are_a_softmax_over_all_labels(
    classifier: tuple[BertForSequenceClassification, PreTrainedTokenizerFast],
) -> None:
    model, tokenizer = classifier
    emotions = ("joy", "anger", "fear", "sadness")
    scorer = ClassifierScorer(model, tokenizer, emotions=emotions)
    assert scorer.emotions == emotions
    scores = scorer(TEXTS)
    assert scores.shape == (len(TEXTS), len(emotions))
    columns = [1, 3, 4, 0]  # joy, anger, fear, sadness in LABELS
    expected = np.stack([hand_probabilities(model, tokenizer, t)[columns].numpy() for t in TEXTS])
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # love and surprise keep their share, so rows fall short of 1.
    assert np.all(scores.sum(axis=1) < 1.0)
    assert np.all(scores >= 0)


def test_scores_do_not_depend_on_batching(
    classifier: tuple[BertForSequenceClassification, PreTrainedTokenizerFast],
) -> None:
    # The fixture tokenizer pads on the left, which would shift BERT's absolute positions.
    model, tokenizer = classifier
    assert tokenizer.padding_side == "left"
    batched = ClassifierScorer(model, tokenizer, emotions=("joy", "fear"))(TEXTS)
    alone = ClassifierScorer(model, tokenizer, emotions=("joy", "fear"), batch_size=1)(TEXTS)
    np.testing.assert_allclose(batched, alone, atol=1e-6)


def test_columns_follow_the_requested_order(
    classifier: tuple[BertForSequenceClassification, PreTrainedTokenizerFast],
) -> None:
    model, tokenizer = classifier
    forward = ClassifierScorer(model, tokenizer, emotions=("fear", "joy", "surprise"))(TEXTS)
    backward = ClassifierScorer(model, tokenizer, emotions=("surprise", "joy", "fear"))(TEXTS)
    np.testing.assert_allclose(forward, backward[:, ::-1])
    assert ClassifierScorer(model, tokenizer, emotions=("joy",))([]).shape == (0, 1)


def test_labels_match_case_insensitively_and_through_synonyms() -> None:
    labels = {0: "Sad", 1: "HAPPY", 2: "angry", 3: "Disgusted", 4: "scared", 5: "neutral"}
    model, tokenizer = build_classifier(labels), build_tokenizer()
    scorer = ClassifierScorer(model, tokenizer)  # BASIC_EMOTIONS: every one has a synonym
    assert scorer.emotions == BASIC_EMOTIONS
    expected = hand_probabilities(model, tokenizer, TEXTS[0])
    # joy, anger, disgust, fear, sadness -> HAPPY, angry, Disgusted, scared, Sad
    np.testing.assert_allclose(scorer(TEXTS[:1])[0], expected[[1, 2, 3, 4, 0]], atol=1e-6)
    # "afraid" and "happiness" as the requested names resolve the same way.
    alias = ClassifierScorer(model, tokenizer, emotions=("afraid", "happiness"))
    np.testing.assert_allclose(alias(TEXTS[:1])[0], expected[[4, 1]], atol=1e-6)


def test_an_exact_label_wins_over_a_synonym() -> None:
    labels = {0: "happy", 1: "joy", 2: "sad"}
    model, tokenizer = build_classifier(labels), build_tokenizer()
    scores = ClassifierScorer(model, tokenizer, emotions=("joy",))(TEXTS[:1])
    expected = hand_probabilities(model, tokenizer, TEXTS[0])[1]
    assert scores[0, 0] == pytest.approx(float(expected), abs=1e-6)


def test_missing_emotions_raise_with_the_labels(
    classifier: tuple[BertForSequenceClassification, PreTrainedTokenizerFast],
) -> None:
    model, tokenizer = classifier
    with pytest.raises(ValueError, match="disgust") as info:
        ClassifierScorer(model, tokenizer)  # BASIC_EMOTIONS includes disgust
    for label in LABELS.values():
        assert repr(label) in str(info.value)
    with pytest.raises(ValueError, match="tokenizer"):
        ClassifierScorer(model)
    generic = build_classifier({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match="LABEL_0"):
        ClassifierScorer(generic, tokenizer, emotions=None)


def test_emotions_none_picks_the_basic_emotions_the_model_has(
    classifier: tuple[BertForSequenceClassification, PreTrainedTokenizerFast],
) -> None:
    model, tokenizer = classifier
    scorer = ClassifierScorer(model, tokenizer, emotions=None)
    assert scorer.emotions == ("joy", "anger", "fear", "sadness")


def test_a_saved_classifier_loads_from_its_folder(
    classifier: tuple[BertForSequenceClassification, PreTrainedTokenizerFast], tmp_path: Path
) -> None:
    model, tokenizer = classifier
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    emotions = ("sadness", "joy")
    in_memory = ClassifierScorer(model, tokenizer, emotions=emotions)(TEXTS)
    from_path = ClassifierScorer(str(tmp_path), emotions=emotions)
    assert from_path.labels == tuple(LABELS.values())
    np.testing.assert_allclose(from_path(TEXTS), in_memory, atol=1e-6)
    loaded = load_scorer(str(tmp_path))
    assert isinstance(loaded, ClassifierScorer)
    assert loaded.emotions == ("joy", "anger", "fear", "sadness")
    np.testing.assert_allclose(loaded(TEXTS)[:, [3, 0]], in_memory, atol=1e-6)


def test_load_scorer_defaults_to_nade() -> None:
    scorer = load_scorer(None)
    assert isinstance(scorer, NadeScorer)
    assert isinstance(scorer, EmotionScorer)
    assert scorer.emotions == BASIC_EMOTIONS
    scores = scorer(["I am furious and angry", "What a wonderful, happy day"])
    assert scores.shape == (2, len(BASIC_EMOTIONS))
    assert scores[0, BASIC_EMOTIONS.index("anger")] > scores[1, BASIC_EMOTIONS.index("anger")]
    assert isinstance(load_scorer("NADE", emotions=("joy",)), NadeScorer)
