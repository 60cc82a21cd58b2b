"""Emotion scoring of generated text.

The default scorer is ``nade`` (a fastText + LightGBM model that ships its weights in its
wheel), so scoring works with no model hub. It is an optional dependency: ``pip install nade``.
Any Hugging Face ``text-classification`` model with emotion labels can score instead, through
:class:`ClassifierScorer`.

nade was trained on short social-media posts: it hears emotion in emoji-like cues and misses
it in a longer answer that also carries content. On the hand-written, unmistakably emotional
answers the package ships (``emovec/data/answers``) it names anger for 8 % and fear for 17 %
of them. :class:`PrototypeScorer` is a second, zero-shot judge for such answers: it compares a
sentence embedding of the text with embeddings of short first-person statements of each
emotion (``emovec/data/emotion_descriptions.json``). :func:`recognition_rates` measures any
scorer on labelled texts, so a judge can be checked before it is trusted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._hub import hub_options
from emovec.datasets import BASIC_EMOTIONS
from emovec.evaluation.topic import SentenceEmbedder
from emovec.models import input_device

__all__ = [
    "LABEL_SYNONYMS",
    "ClassifierScorer",
    "EmotionScorer",
    "NadeScorer",
    "PrototypeScorer",
    "default_descriptions",
    "load_scorer",
    "recognition_rates",
]

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
            # An unreachable hub fails in seconds, as load_model does (not after a minute).
            located = hub_options(str(model_or_path), {})
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_or_path, **located)
            model = AutoModelForSequenceClassification.from_pretrained(model_or_path, **located)
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


def default_descriptions() -> dict[str, list[str]]:
    """The shipped first-person statements of each emotion that :class:`PrototypeScorer` uses."""
    folder = resources.files("emovec") / "data"
    text = (folder / "emotion_descriptions.json").read_text(encoding="utf-8")
    return {emotion: list(lines) for emotion, lines in json.loads(text).items()}


class PrototypeScorer:
    """Zero-shot emotion judge: similarity of a text's sentence embedding to each emotion's
    prototype (the normalised mean embedding of its descriptions), as a softmax.

    Scores are relative to the emotions asked for (a row sums to 1), so a text with no emotion
    still has a top one; judge *success* with it, and EPS only across conditions.

    Args:
        emotions: Emotions to score, in column order; default: those with descriptions.
        descriptions: ``{emotion: [statement, ...]}``; default :func:`default_descriptions`.
        embedder: Sentence embedder; default the bundled all-MiniLM-L6-v2.
        temperature: Softmax temperature over cosine similarities.

    Raises:
        ValueError: If an emotion has no descriptions or the temperature is not positive.
    """

    def __init__(
        self,
        emotions: Sequence[str] | None = None,
        *,
        descriptions: Mapping[str, Sequence[str]] | None = None,
        embedder: SentenceEmbedder | None = None,
        temperature: float = 0.05,
    ) -> None:
        descriptions = default_descriptions() if descriptions is None else descriptions
        emotions = list(descriptions) if emotions is None else list(emotions)
        missing = [e for e in emotions if not descriptions.get(e)]
        if missing or not emotions:
            raise ValueError(
                f"No descriptions for {missing or 'any emotion'}; give descriptions= with a few "
                f"first-person statements per emotion (have: {sorted(descriptions)})."
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be positive and finite, not {temperature}.")
        self.emotions = tuple(emotions)
        self.embedder = embedder or SentenceEmbedder()
        self.temperature = temperature
        prototypes = torch.stack([self.embedder(list(descriptions[e])).mean(0) for e in emotions])
        self._prototypes = torch.nn.functional.normalize(prototypes, dim=-1)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Scores, shape ``[len(texts), len(emotions)]``; each row sums to 1."""
        if not texts:
            return np.zeros((0, len(self.emotions)))
        similarity = self.embedder(list(texts)) @ self._prototypes.T
        return torch.softmax(similarity / self.temperature, dim=-1).numpy().astype(float)


def recognition_rates(
    scorer: EmotionScorer, texts: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Per emotion, the share of its labelled texts whose score for that emotion is strictly
    the highest among the labelled emotions the scorer knows: how far a judge can be trusted.
    Ties, NaN scores and empty texts count as misses.

    Raises:
        ValueError: If the scorer knows fewer than two of the emotions (a judge with one
            choice is always right) or an emotion it knows has no texts.
    """
    emotions = [e for e in texts if e in scorer.emotions]
    empty = [e for e in emotions if not texts[e]]
    if len(emotions) < 2 or empty:
        raise ValueError(
            f"Need labelled texts for at least two emotions the scorer knows "
            f"({list(scorer.emotions)}); got {sorted(texts)}"
            + (f", none for {empty}." if empty else ".")
        )
    columns = [list(scorer.emotions).index(e) for e in emotions]
    rates = {}
    for i, emotion in enumerate(emotions):
        batch = list(texts[emotion])
        scores = scorer(batch)[:, columns]
        others = np.delete(scores, i, axis=1)
        hits = (
            np.isfinite(scores).all(axis=1)
            & (scores[:, i] > others.max(axis=1))
            & np.array([bool(t.strip()) for t in batch])
        )
        rates[emotion] = float(np.mean(hits))
    return rates


def load_scorer(
    spec: EmotionScorer | str | os.PathLike[str] | None = None,
    *,
    emotions: Sequence[str] | None = None,
) -> EmotionScorer:
    """A scorer by name.

    Args:
        spec: ``None`` or ``"nade"`` for :class:`NadeScorer`; ``"prototypes"`` for
            :class:`PrototypeScorer`; anything else is a model id or local folder for
            :class:`ClassifierScorer`. A scorer instance is returned as it is.
        emotions: Emotions to score; ``None`` for ``BASIC_EMOTIONS`` with nade, and for those
            of them the classifier has labels for.

    Returns:
        The scorer.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if spec is not None and not isinstance(spec, str):
        if not isinstance(spec, EmotionScorer):
            raise TypeError(f"Not an emotion scorer: {spec!r}; pass a name, path or scorer.")
        return spec
    if spec is None or spec.lower() == "nade":
        return NadeScorer(BASIC_EMOTIONS if emotions is None else emotions)
    if spec.lower() == "prototypes":
        return PrototypeScorer(BASIC_EMOTIONS if emotions is None else emotions)
    return ClassifierScorer(spec, emotions=emotions)
