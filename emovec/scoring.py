"""Emotion scoring of generated text.

The default scorer is ``nade`` (a fastText + LightGBM model that ships its weights in its
wheel), so scoring works with no model hub. It is an optional dependency: ``pip install nade``.
Any Hugging Face ``text-classification`` model with emotion labels can score instead, through
:class:`ClassifierScorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import BASIC_EMOTIONS
from emovec.models import input_device

__all__ = ["LABEL_SYNONYMS", "ClassifierScorer", "EmotionScorer", "NadeScorer", "load_scorer"]

_NADE_EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")


@runtime_checkable
class EmotionScorer(Protocol):
    """What evaluation needs of a scorer: its emotions, and per-text scores in that order."""

    @property
    def emotions(self) -> tuple[str, ...]:
        """The emotions scored, in column order."""
        ...

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Scores, shape ``[len(texts), len(emotions)]``."""
        ...


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


# Classifier label (lower-cased) -> emotion, for labels that name an emotion differently.
LABEL_SYNONYMS: dict[str, str] = {
    "happiness": "joy",
    "happy": "joy",
    "sad": "sadness",
    "angry": "anger",
    "disgusted": "disgust",
    "afraid": "fear",
    "scared": "fear",
}


def _canonical(label: str) -> str:
    name = label.strip().lower()
    return LABEL_SYNONYMS.get(name, name)


class ClassifierScorer:
    """Scores texts for emotions with a Hugging Face sequence-classification model.

    The model's labels (``config.id2label``) are matched case-insensitively to the emotions,
    with the synonyms in ``LABEL_SYNONYMS``. Scores are softmax probabilities over all of the
    model's labels, so a row sums to at most 1 and labels not asked for keep their share.

    Args:
        model_or_path: A model id or local folder (loaded with ``AutoTokenizer`` and
            ``AutoModelForSequenceClassification``) or a loaded model.
        tokenizer: The model's tokenizer; required with a model instance, ignored with a
            path unless given (then it replaces the folder's tokenizer).
        emotions: Emotions to report, in column order; ``None`` for those of
            ``BASIC_EMOTIONS`` that the model has labels for.
        batch_size: Texts per forward pass.
        device: Where to load a model given by path; a model instance stays where it is.

    Raises:
        ValueError: If an emotion has no matching label (the message lists the labels), if
            ``emotions`` is ``None`` and no basic emotion matches, or if a model instance
            comes without a tokenizer.
    """

    def __init__(
        self,
        model_or_path: str | Path | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        emotions: Sequence[str] | None = BASIC_EMOTIONS,
        batch_size: int = 32,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(model_or_path, (str, Path)):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_or_path)
            model = AutoModelForSequenceClassification.from_pretrained(model_or_path)
            if device is not None:
                model.to(torch.device(device))
        else:
            if tokenizer is None:
                raise ValueError("ClassifierScorer needs the tokenizer of a model instance.")
            model = model_or_path
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        self.labels = tuple(labels)
        canonical = [_canonical(label) for label in labels]
        if emotions is None:
            emotions = [e for e in BASIC_EMOTIONS if e in canonical]
            if not emotions:
                raise ValueError(
                    f"The classifier has none of the basic emotions {list(BASIC_EMOTIONS)}; "
                    f"its labels are {labels}."
                )
        missing = [e for e in emotions if _canonical(e) not in canonical]
        if missing:
            raise ValueError(f"The classifier cannot score {missing}; its labels are {labels}.")
        self.emotions = tuple(emotions)
        # An exact label wins over a synonym when a model has both (say "joy" and "happy").
        lowered = [label.strip().lower() for label in labels]
        self._columns = [
            lowered.index(e.lower()) if e.lower() in lowered else canonical.index(_canonical(e))
            for e in self.emotions
        ]
        self._max_length = self._input_limit()

    def _input_limit(self) -> int | None:
        limit = self.tokenizer.model_max_length
        # Tokenizers built without a saved config report a huge sentinel instead of a limit.
        if limit and limit < 1_000_000:
            return int(limit)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return positions if isinstance(positions, int) else None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Scores, shape ``[len(texts), len(emotions)]``; each in [0, 1]."""
        if not texts:
            return np.zeros((0, len(self.emotions)))
        device = input_device(self.model)
        columns = torch.tensor(self._columns)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            # Right padding whatever the tokenizer's default: models with absolute positions
            # (BERT family) would score a left-padded text differently.
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                padding_side="right",
                truncation=self._max_length is not None,
                max_length=self._max_length,
                return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                logits = self.model(**batch).logits.float()
            chunks.append(torch.softmax(logits, dim=-1).cpu()[:, columns])
        return torch.cat(chunks).numpy().astype(float)


def load_scorer(spec: str | None = None, *, emotions: Sequence[str] | None = None) -> EmotionScorer:
    """A scorer by name.

    Args:
        spec: ``None`` or ``"nade"`` for :class:`NadeScorer`; anything else is a model id or
            local folder for :class:`ClassifierScorer`.
        emotions: Emotions to score; ``None`` for ``BASIC_EMOTIONS`` with nade, and for those
            of them the classifier has labels for.

    Returns:
        The scorer.
    """
    if spec is None or spec.lower() == "nade":
        return NadeScorer(BASIC_EMOTIONS if emotions is None else emotions)
    return ClassifierScorer(spec, emotions=emotions)
