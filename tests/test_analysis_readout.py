"""Read-out of emotion along a bank's vectors, and the classifiers built on it.

The planted tests give chosen words an embedding component along a known direction per
emotion: a tiny random model's blocks barely change the residual stream, so every later layer
carries the direction at those words, and a bank whose vectors are those directions must find
the words and the texts' emotions.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import (
    EMOTION_WORDS,
    FILLER_WORDS,
    VOCAB,
    another_thread_meanwhile,
    build_model,
    build_tokenizer,
    random_bank,
)
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from transformers import PreTrainedTokenizerFast

from emovec import EmotionVectors, find_blocks
from emovec.analysis.classifier import EmotionClassifier, confusion_matrix
from emovec.analysis.readout import ReadOut, read
from emovec.evaluation.scoring import EmotionScorer, recognition_rates

EMOTIONS = ("joy", "anger", "fear")
LAYERS = 4


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer(bos=True)


def _planted(strength: float = 1.0) -> tuple[torch.nn.Module, EmotionVectors]:
    """A tiny llama whose emotion words carry ``strength`` × their emotion's direction, and
    the bank of those directions (scaled, so the read-out must normalise)."""
    model = build_model("llama", num_layers=LAYERS)
    hidden = model.config.hidden_size
    basis, _ = torch.linalg.qr(
        torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(1))
    )
    directions = {e: basis[:, i] for i, e in enumerate(EMOTIONS)}
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        for emotion in EMOTIONS:
            for word in EMOTION_WORDS[emotion]:
                weight[VOCAB[word]] += strength * directions[emotion]
    vectors = {e: 7.0 * d.repeat(LAYERS, 1) for e, d in directions.items()}
    bank = EmotionVectors(
        vectors, torch.full((LAYERS,), 2.0), model_name="tiny", recommended_layers=[1, 2]
    )
    return model, bank


def _texts(count: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    """``count`` texts per emotion: five filler words and one emotion word at a random place;
    their labels, and the emotion word's token position (after ``<bos>``)."""
    rng = random.Random(seed)
    texts, labels, where = [], [], []
    for emotion in EMOTIONS:
        for _ in range(count):
            words = [rng.choice(FILLER_WORDS) for _ in range(5)]
            at = rng.randrange(6)
            words.insert(at, rng.choice(EMOTION_WORDS[emotion]))
            texts.append(" ".join(words))
            labels.append(emotion)
            where.append(at + 1)
    return texts, labels, where


def test_read_matches_block_outputs_by_hand(tok: PreTrainedTokenizerFast) -> None:
    model = build_model("llama", num_layers=LAYERS)
    bank = random_bank(LAYERS, model.config.hidden_size, EMOTIONS, seed=3)
    texts = ["i was happy at home today", "the dog ran to the park and then it ate"]
    out = read(model, tok, texts, bank, layers=[2, 1], progress=False)
    assert out.layers == (1, 2) and out.emotions == EMOTIONS
    for row, text in enumerate(texts):
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            states = model(**ids, output_hidden_states=True).hidden_states
        for b, layer in enumerate((1, 2)):
            hidden = states[layer + 1][0]  # hidden_states[0] is the embedding output
            units = torch.stack([bank.vector(e)[layer] for e in EMOTIONS])
            units = units / units.norm(dim=1, keepdim=True)
            expected = (hidden @ units.T / bank.hidden_norms[layer]).double().numpy()
            np.testing.assert_allclose(
                out.layer_projections[row, b], expected[1:].mean(0), atol=1e-5
            )
        assert not out.content[row][0] and out.content[row][1:].all()
        assert len(out.tokens[row]) == ids["input_ids"].shape[1] == len(out.token_projections[row])
    np.testing.assert_allclose(out.text_projections, out.layer_projections.mean(axis=1))


def test_a_reading_leaves_another_threads_forward_pass_alone(
    tok: PreTrainedTokenizerFast,
) -> None:
    """A server recognises one message while it generates another answer on the same model:
    the reading's hooks neither stop nor feed on the other thread's forward pass."""
    model = build_model("llama", num_layers=LAYERS)
    bank = random_bank(LAYERS, model.config.hidden_size, EMOTIONS, seed=3)
    texts = ["i was happy at home today", "the dog ran to the park and then it ate"]
    alone = read(model, tok, texts, bank, layers=[1, 2], progress=False)
    blocks = find_blocks(model)
    with another_thread_meanwhile(model, blocks[1]) as seen:  # mid-reading, hooks in place
        meanwhile = read(model, tok, texts, bank, layers=[1, 2], progress=False)
    assert "error" not in seen, seen.get("error")
    torch.testing.assert_close(seen["logits"], seen["alone"], rtol=0, atol=0)
    np.testing.assert_array_equal(meanwhile.layer_projections, alone.layer_projections)


def test_default_band_is_the_banks_recommended_layers(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted()
    assert read(model, tok, ["i was glad"], bank, progress=False).layers == (1, 2)


def test_planted_direction_recovered_per_token_and_per_text(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted()
    texts, labels, where = _texts(6, seed=0)
    out = read(model, tok, texts, bank, batch_size=5, progress=False)
    for text_projections, label, position in zip(out.token_projections, labels, where, strict=True):
        column = EMOTIONS.index(label)
        assert int(np.argmax(text_projections[:, column])) == position
        # The emotion word's projection is about strength / hidden norm = 0.5.
        assert text_projections[position, column] == pytest.approx(0.5, abs=0.1)
    predicted = [EMOTIONS[i] for i in out.text_projections.argmax(axis=1)]
    assert predicted == labels


def test_same_text_alone_or_in_a_padded_batch(tok: PreTrainedTokenizerFast) -> None:
    for arch in ("llama", "gpt2"):
        model = build_model(arch, num_layers=LAYERS)
        bank = random_bank(LAYERS, 32, EMOTIONS, seed=0, layers=[0, 1, 2])
        short = "i was sad"
        batch = [short, "the cat and the dog ran to the park in the rain today", "we ate soup"]
        alone = read(model, tok, [short], bank, progress=False)
        padded = read(model, tok, batch, bank, batch_size=3, progress=False)
        np.testing.assert_allclose(
            padded.token_projections[0], alone.token_projections[0], atol=1e-5
        )
        np.testing.assert_allclose(
            padded.layer_projections[0], alone.layer_projections[0], atol=1e-5
        )
        assert padded.texts == tuple(batch)


def test_no_bos_still_skips_position_zero() -> None:
    model, bank = _planted()
    out = read(model, build_tokenizer(bos=False), ["glad i was"], bank, progress=False)
    assert out.content[0].tolist() == [False, True, True]


def test_html_and_markdown_escape() -> None:
    model = build_model("llama", num_layers=LAYERS)
    bank = random_bank(LAYERS, 32, ("a<b", "joy"), seed=0, layers=[1])
    text = "i <script> was | glad"  # "<script>" is no word: it reads as "<unk>" tokens
    out = read(model, build_tokenizer(), [text], bank, progress=False)
    page = out.to_html("a<b")
    assert "<script>" not in page and "<unk>" not in page and "a<b" not in page
    assert "&lt;unk&gt;" in page and "a&lt;b" in page
    assert page.count("background:") == int(out.content[0].sum())
    assert out._repr_html_() == out.to_html()
    table = out.to_markdown()
    assert "was \\| glad" in table and len(table.splitlines()) == 3
    with pytest.raises(KeyError, match="Unknown emotion"):
        out.to_html("pride")


def test_bad_input_is_refused(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted()
    with pytest.raises(ValueError, match="layer indices"):
        read(model, tok, ["i was glad"], bank, layers=[LAYERS], progress=False)
    with pytest.raises(ValueError, match="layers but the model has"):
        read(build_model("llama", num_layers=2), tok, ["i"], bank, progress=False)
    with pytest.raises(ValueError, match="one query per text"):
        read(model, tok, ["i", "we"], bank, queries=["why?"], progress=False)


# --- classifiers ----------------------------------------------------------------------


def test_nearest_emotion_on_planted_data(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted(strength=0.6)
    train, train_labels, _ = _texts(8, seed=1)
    test, test_labels, _ = _texts(8, seed=2)
    clf = EmotionClassifier(model, tok, bank, method="nearest").fit(train, train_labels)
    assert clf.emotions == EMOTIONS
    assert clf.score(test, test_labels) >= 0.95
    assert clf.cross_validation_ is not None and clf.cross_validation_.accuracy >= 0.9
    with pytest.raises(ValueError, match="are not"):
        clf.fit(train, ["neutral"] * len(train))


def test_probe_beats_chance_and_its_folds_hold_out_their_texts(
    tok: PreTrainedTokenizerFast,
) -> None:
    model, bank = _planted(strength=0.3)
    texts, labels, _ = _texts(10, seed=3)
    clf = EmotionClassifier(model, tok, bank, folds=5)
    readout = clf.read(texts)
    cv = clf.fit(readout, labels).cross_validation_
    assert cv is not None and len(cv.folds) == 5
    assert cv.accuracy >= 0.8  # chance: 1/3
    assert cv.confusion().sum() == len(texts) and np.trace(cv.confusion()) == round(
        cv.accuracy * 30
    )
    assert clf.score(_texts(5, seed=4)[0], _texts(5, seed=4)[1]) >= 0.8
    shuffled = random.Random(0).sample(labels, len(labels))
    assert clf.cross_validate(readout, shuffled).accuracy <= 0.6  # no signal, no score


class _Recorder(BaseEstimator, ClassifierMixin):  # type: ignore[misc]
    """A probe that remembers every matrix it was fitted on (in a list owned by the test)."""

    def __init__(self, seen: list[np.ndarray]) -> None:
        self.seen = seen

    def fit(self, features: np.ndarray, target: np.ndarray) -> _Recorder:
        self.seen.append(features.copy())
        self.classes_ = np.unique(target)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return np.full((len(features), len(self.classes_)), 1 / len(self.classes_))


def test_cross_validation_never_fits_on_test_items(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted()
    texts, labels, _ = _texts(6, seed=5)
    seen: list[np.ndarray] = []
    clf = EmotionClassifier(model, tok, bank, folds=3, estimator=lambda: _Recorder(seen))
    readout = clf.read(texts)
    cv = clf.cross_validate(readout, labels)
    features = readout.layer_projections.reshape(len(texts), -1)
    assert len(seen) == len(cv.folds) == 3
    covered = np.concatenate([test for _, test in cv.folds])
    assert sorted(covered.tolist()) == list(range(len(texts)))  # every text tested once
    for fitted_on, (train, test) in zip(seen, cv.folds, strict=True):
        assert not set(train) & set(test)
        np.testing.assert_array_equal(fitted_on, features[train])
        assert not any((fitted_on == row).all(axis=1).any() for row in features[test])


def test_a_fitted_classifier_is_an_emotion_scorer(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted()
    texts, labels, _ = _texts(6, seed=6)
    clf = EmotionClassifier(model, tok, bank)
    assert not isinstance(clf, EmotionScorer)  # no emotions before fitting
    with pytest.raises(NotFittedError):
        clf.predict(texts)
    clf.fit(texts, labels, cross_validate=False)
    assert isinstance(clf, EmotionScorer) and clf.cross_validation_ is None
    scores = clf(texts[:4])
    assert scores.shape == (4, 3) and np.allclose(scores.sum(axis=1), 1)
    assert clf([]).shape == (0, 3)
    by_emotion = {
        e: [t for t, label in zip(texts, labels, strict=True) if label == e] for e in EMOTIONS
    }
    assert min(recognition_rates(clf, by_emotion).values()) >= 0.8
    other = read(model, tok, texts, bank, layers=[3], progress=False)
    with pytest.raises(ValueError, match="not read with this classifier"):
        EmotionClassifier(model, tok, bank, layers=[1, 2]).fit(other, labels)


def test_confusion_matrix_counts() -> None:
    matrix = confusion_matrix(["a", "a", "b", "c"], ["a", "b", "b", "x"], ["a", "b", "c"])
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_readout_is_frozen(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted()
    out = read(model, tok, ["i was glad"], bank, progress=False)
    assert isinstance(out, ReadOut) and len(out) == 1
    with pytest.raises(AttributeError):
        out.texts = ()  # type: ignore[misc]


def test_take_keeps_the_rows_asked_for(tok: PreTrainedTokenizerFast) -> None:
    model, bank = _planted()
    texts = ["i was glad", "we were afraid at night", "the mad dog"]
    out = read(model, tok, texts, bank, progress=False)
    part = out.take([2, 0])
    alone = read(model, tok, [texts[2]], bank, progress=False)
    assert part.texts == (texts[2], texts[0]) and part.tokens[0] == alone.tokens[0]
    np.testing.assert_allclose(part.layer_projections[0], alone.layer_projections[0], atol=1e-5)
    np.testing.assert_array_equal(part.token_projections[1], out.token_projections[0])
    with pytest.raises(IndexError):
        out.take([3])
