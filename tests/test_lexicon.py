"""The NRC lexicon behind lexicon_intensity: one immutable word → emotions mapping, read once,
giving the densities the shared NRCLex object gave."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from emovec.evaluation.metrics import _nrc, lexicon_intensity

TEXTS = [
    "I am so happy and joyful today!",
    "The abandoned child was afraid of the dark.",
    "Angry, furious rage: hate it",
    "",
    "123",
    "love love hate",
]

# Computed with the NRCLex-object implementation, before the lexicon became a mapping.
BEFORE = {
    "joy": [2 / 7, 1 / 8, 0.0, 0.0, 0.0, 2 / 3],
    "fear": [0.0, 2 / 8, 1 / 5, 0.0, 0.0, 1 / 3],
    "anger": [0.0, 1 / 8, 4 / 5, 0.0, 0.0, 1 / 3],
    "sadness": [0.0, 2 / 8, 1 / 5, 0.0, 0.0, 1 / 3],
    "positive": [2 / 7, 1 / 8, 0.0, 0.0, 0.0, 2 / 3],
    "negative": [0.0, 2 / 8, 4 / 5, 0.0, 0.0, 1 / 3],
    "trust": [2 / 7, 0.0, 0.0, 0.0, 0.0, 0.0],
}


@pytest.mark.parametrize("emotion", sorted(BEFORE))
def test_densities_are_those_of_the_nrclex_object(emotion: str) -> None:
    np.testing.assert_allclose(lexicon_intensity(TEXTS, emotion), BEFORE[emotion], atol=1e-12)


def test_the_lexicon_is_one_immutable_mapping() -> None:
    lexicon = _nrc()
    assert lexicon is _nrc()  # read once
    assert isinstance(lexicon, Mapping)
    assert lexicon["happy"] == frozenset({"anticipation", "joy", "positive", "trust"})
    assert lexicon["abandoned"] == frozenset({"anger", "fear", "negative", "sadness"})
    with pytest.raises(TypeError):
        lexicon["happy"] = frozenset()  # type: ignore[index]
    assert all(isinstance(emotions, frozenset) for emotions in lexicon.values())


def test_texts_are_measured_independently() -> None:
    # The shared NRCLex object carried the last text's words: order must not matter.
    forward = lexicon_intensity(TEXTS, "anger")
    backward = lexicon_intensity(TEXTS[::-1], "anger")[::-1]
    np.testing.assert_array_equal(forward, backward)
