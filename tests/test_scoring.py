"""Emotion scorers: a tiny random-init BERT classifier built in code, checked against a softmax
computed by hand, and the ``load_scorer`` factory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODEL_VOCAB_SIZE, build_tokenizer
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from emovec.datasets import BASIC_EMOTIONS, default_answer_pairs
from emovec.evaluation.scoring import (
    ClassifierScorer,
    EmotionScorer,
    NadeScorer,
    PrototypeScorer,
    load_scorer,
    recognition_rates,
)
from emovec.evaluation.topic import SentenceEmbedder

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
    loaded = load_scorer(tmp_path)  # a Path as well as a str
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


# --- zero-shot prototype judge ----------------------------------------------------------


@pytest.fixture(scope="module")
def prototypes(embedder: SentenceEmbedder) -> PrototypeScorer:
    return PrototypeScorer(BASIC_EMOTIONS, embedder=embedder)


def test_prototype_scores_are_a_softmax_over_the_emotions_asked(
    prototypes: PrototypeScorer,
) -> None:
    scores = prototypes(TEXTS)
    assert scores.shape == (len(TEXTS), len(BASIC_EMOTIONS))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    assert prototypes([]).shape == (0, len(BASIC_EMOTIONS))


@pytest.mark.parametrize(
    ("text", "emotion"),
    [
        ("I'm terrified; what if the ice cracks under us and nobody hears me scream?", "fear"),
        ("The bin was full of slimy, rotting scraps and the stench made me gag.", "disgust"),
        ("Since she moved away the flat feels empty and I cry most evenings.", "sadness"),
        ("We won the final! I'm beaming, what a fantastic, happy day.", "joy"),
    ],
)
def test_the_prototype_judge_names_plain_emotional_statements(
    prototypes: PrototypeScorer, text: str, emotion: str
) -> None:
    assert prototypes.emotions[int(np.argmax(prototypes([text])[0]))] == emotion


def test_descriptions_and_temperature_are_the_callers_to_choose(
    embedder: SentenceEmbedder,
) -> None:
    custom = {"pride": ["I am so proud of what I built."], "calm": ["I feel calm and at peace."]}
    sharp = PrototypeScorer(descriptions=custom, embedder=embedder, temperature=0.01)
    soft = PrototypeScorer(descriptions=custom, embedder=embedder, temperature=1.0)
    assert sharp.emotions == ("pride", "calm")
    text = ["I finished the cabinet myself and I'm proud of every joint."]
    assert sharp(text)[0, 0] > soft(text)[0, 0] > 0.5
    with pytest.raises(ValueError, match="No descriptions for \\['anger'\\]"):
        PrototypeScorer(["pride", "anger"], descriptions=custom, embedder=embedder)
    with pytest.raises(ValueError, match="temperature must be positive"):
        PrototypeScorer(descriptions=custom, embedder=embedder, temperature=0)


def test_load_scorer_knows_the_prototype_judge() -> None:
    scorer = load_scorer("prototypes", emotions=("joy", "fear"))
    assert isinstance(scorer, PrototypeScorer)
    assert scorer.emotions == ("joy", "fear")


# --- recognition rates ------------------------------------------------------------------


class KeywordScorer:
    """Scores 1 for each emotion named in the text, and joy 2 whatever the text says."""

    emotions = ("joy", "anger", "fear")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.array(
            [[float(e in t) + 0.1 * (e == "joy") for e in self.emotions] for t in texts]
        )


def test_recognition_rates_count_the_texts_whose_top_emotion_is_their_label() -> None:
    texts = {
        "anger": ["anger here", "only fear", "anger again", "fear instead"],
        "fear": ["fear!"],
        "surprise": ["the scorer does not know this one"],
    }
    assert recognition_rates(KeywordScorer(), texts) == {"anger": 0.5, "fear": 1.0}


def test_recognition_rates_compare_only_the_labelled_emotions() -> None:
    """Joy tops every text, but it is not a label here, so it cannot win."""
    assert recognition_rates(KeywordScorer(), {"anger": ["anger"], "fear": ["fear"]}) == {
        "anger": 1.0,
        "fear": 1.0,
    }


def test_ties_and_empty_texts_are_misses() -> None:
    texts = {"anger": ["anger and fear", "", "anger"], "fear": ["fear"]}
    assert recognition_rates(KeywordScorer(), texts) == {"anger": pytest.approx(1 / 3), "fear": 1.0}


def test_recognition_rates_refuse_unusable_labels() -> None:
    with pytest.raises(ValueError, match="none for \\['fear'\\]"):
        recognition_rates(KeywordScorer(), {"anger": ["anger"], "fear": []})
    with pytest.raises(ValueError, match="at least two emotions the scorer knows"):
        recognition_rates(KeywordScorer(), {"pride": ["proud"], "anger": ["anger"]})


def test_the_prototype_judge_recognises_more_shipped_answers_than_nade(
    scorer: NadeScorer, prototypes: PrototypeScorer
) -> None:
    """The shipped answers are unmistakably emotional and on topic. nade, trained on short
    posts, misses most angry and fearful ones (the reason a second judge exists)."""
    answers = {e: [p.emotional for p in ps[:30]] for e, ps in default_answer_pairs().items()}
    nade, zero_shot = recognition_rates(scorer, answers), recognition_rates(prototypes, answers)
    assert nade["joy"] > 0.9 and zero_shot["joy"] > 0.9
    assert zero_shot["anger"] > nade["anger"]
    assert zero_shot["fear"] > nade["fear"] + 0.5


def test_load_scorer_refuses_what_is_not_a_scorer() -> None:
    with pytest.raises(TypeError, match="Not an emotion scorer"):
        load_scorer(42)  # type: ignore[arg-type]
    nade = NadeScorer()
    assert load_scorer(nade) is nade
