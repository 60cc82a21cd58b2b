"""Empathic replies: the recognised emotion of a user's message chooses the reply's mix."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from conftest import FILLER_WORDS, NEUTRAL_WORDS, build_tokenizer
from test_analysis_readout import _planted, _texts

from emovec.datasets import UserMessage, default_user_messages
from emovec.empathy import REPLIES, EmpathicPolicy, Recognition


def _neutral(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join([*(rng.choice(FILLER_WORDS) for _ in range(5)), rng.choice(NEUTRAL_WORDS)])
        for _ in range(count)
    ]


def _messages(count: int, seed: int) -> list[UserMessage]:
    texts, labels, _ = _texts(count, seed)
    emotional = [UserMessage(t, e, "support", True) for t, e in zip(texts, labels, strict=True)]
    return emotional + [UserMessage(t, "neutral", "support", False) for t in _neutral(count, seed)]


@pytest.fixture(scope="module")
def policy() -> EmpathicPolicy:
    model, bank = _planted(strength=0.6)
    replies = {"joy": {"joy": 0.8}, "anger": {"anger": -0.5, "joy": 0.4}, "neutral": {}}
    return EmpathicPolicy.fit(model, build_tokenizer(), bank, _messages(8, seed=1), replies=replies)


def test_the_recognised_emotion_chooses_the_reply(policy: EmpathicPolicy) -> None:
    held = _messages(6, seed=2)
    found = policy.recognise([m.text for m in held])
    assert policy.classifier.emotions == ("joy", "anger", "fear", "neutral")
    accuracy = sum(r.emotion == m.emotion for r, m in zip(found, held, strict=True)) / len(held)
    assert accuracy >= 0.8  # chance: 1/4
    for recognition in found:
        assert sum(recognition.probabilities.values()) == pytest.approx(1.0)
        assert recognition.probability == max(recognition.probabilities.values())
    angry = next(m.text for m in held if m.emotion == "anger")
    assert policy.mix(angry) == {"anger": -0.5, "joy": 0.4}
    assert policy.mix_for(Recognition("fear", 0.9, {})) == {}  # not in this table: plain
    assert policy.mix_for(Recognition("joy", 0.9, {})) == {"joy": 0.8}


def test_an_unsure_recognition_answers_plainly(policy: EmpathicPolicy) -> None:
    unsure = EmpathicPolicy(policy.classifier, policy.replies, min_probability=0.95)
    assert unsure.mix_for(Recognition("joy", 0.9, {})) == {}
    assert unsure.mix_for(Recognition("joy", 0.96, {})) == {"joy": 0.8}


def test_bad_tables_are_refused(policy: EmpathicPolicy) -> None:
    with pytest.raises(ValueError, match="lacks"):
        EmpathicPolicy(policy.classifier, {"anger": {"calm": 1.0}})
    with pytest.raises(ValueError, match="min_probability"):
        EmpathicPolicy(policy.classifier, policy.replies, min_probability=1.5)
    with pytest.raises(Exception, match="finite"):
        EmpathicPolicy(policy.classifier, {"joy": {"joy": float("nan")}})
    # The default table stays within the five basic emotions and answers neutral plainly.
    assert set(REPLIES) == {"joy", "anger", "disgust", "fear", "sadness", "neutral"}
    assert REPLIES["neutral"] == {}
    assert all(alpha > 0 for mix in REPLIES.values() for e, alpha in mix.items() if e == "joy")


def test_the_shipped_user_messages_are_balanced() -> None:
    calibration, held = default_user_messages("calibration"), default_user_messages("heldout")
    labels = ("joy", "anger", "disgust", "fear", "sadness", "neutral")
    assert Counter(m.emotion for m in calibration) == dict.fromkeys(labels, 12)
    assert Counter(m.emotion for m in held) == dict.fromkeys(labels, 24)
    assert not {m.text for m in calibration} & {m.text for m in held}
    assert {m.context for m in held} == {"support", "tutor", "companion"}
    with pytest.raises(ValueError, match="split"):
        default_user_messages("train")
