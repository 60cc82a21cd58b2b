"""Offline emotion scoring of generated text.

The default scorer is ``nade`` (a fastText + LightGBM model that ships its weights in its
wheel), so scoring works with no model hub. It is an optional dependency: ``pip install nade``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emovec.datasets import BASIC_EMOTIONS

__all__ = ["NadeScorer", "distinct_n"]

_NADE_EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")


class NadeScorer:
    """Scores texts for emotions with ``nade``; each score is in [0, 1].

    Args:
        emotions: Emotions to report, a subset of nade's eight (Plutchik's wheel).
    """

    def __init__(self, emotions: Sequence[str] = BASIC_EMOTIONS) -> None:
        unknown = [e for e in emotions if e not in _NADE_EMOTIONS]
        if unknown:
            raise ValueError(f"nade cannot score {unknown}; it knows {list(_NADE_EMOTIONS)}.")
        try:
            from nade import Nade
        except ImportError as err:
            raise ImportError("Scoring needs nade: pip install nade") from err
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nade warns while unpacking its bundled models
            self._model = Nade()
        self.emotions = tuple(emotions)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Scores, shape ``[len(texts), len(emotions)]``."""
        if not texts:
            return np.zeros((0, len(self.emotions)))
        # nade's tokenizer cannot take newlines.
        cleaned = [" ".join(t.split()) or "." for t in texts]
        predicted = self._model.predict(cleaned)
        return np.stack([np.asarray(predicted[e], dtype=float) for e in self.emotions], axis=1)


def distinct_n(text: str, n: int = 2) -> float:
    """Share of distinct word n-grams; low values mean repetition (1.0 for short texts)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0
