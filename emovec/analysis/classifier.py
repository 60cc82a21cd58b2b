"""Recognising a text's emotion from the model's own read-outs (:func:`emovec.analysis.read`).

Two classifiers over the per-text projections, neither touching the LM's weights:

- ``"nearest"``: the emotion whose projection is highest once each emotion's projection is
  centred and scaled (by the balanced mean and the standard deviation over the fitted texts:
  raw projections carry an offset per emotion, the mean hidden state's own projection);
- ``"probe"``: a logistic regression (scikit-learn) over every band layer's projections,
  standardised.

``fit`` cross-validates first (stratified folds, each fold's classifier built fresh and
fitted on its training texts only) and keeps the result as ``cross_validation_``, then fits
on all the texts. A fitted classifier is an emotion scorer for :mod:`emovec.evaluation`: it has
``emotions`` and ``__call__(texts) -> [texts, emotions]`` probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.analysis.readout import ReadOut, read
from emovec.vectors import EmotionVectors

__all__ = ["CrossValidation", "EmotionClassifier", "confusion_matrix"]

Method = Literal["probe", "nearest"]


def confusion_matrix(
    labels: Sequence[str], predictions: Sequence[str], classes: Sequence[str]
) -> np.ndarray:
    """Counts ``[true class, predicted class]`` in the order of ``classes``; a label or
    prediction outside ``classes`` is not counted."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for label, predicted in zip(labels, predictions, strict=True):
        if label in index and predicted in index:
            counts[index[label], index[predicted]] += 1
    return counts


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold results: each text predicted by the classifier of the fold that held it out.

    Attributes:
        classes: The classes, in column order.
        labels: The true label of each text.
        predictions: Each text's out-of-fold prediction.
        folds: Per fold, the (training, test) text indices.
        scores: Per fold, the accuracy on its test texts.
    """

    classes: tuple[str, ...]
    labels: tuple[str, ...]
    predictions: tuple[str, ...]
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]
    scores: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        """The share of texts predicted right out of fold."""
        return float(np.mean([p == t for p, t in zip(self.predictions, self.labels, strict=True)]))

    @property
    def standard_error(self) -> float:
        """The standard error of the mean fold score."""
        return float(np.std(self.scores, ddof=1) / np.sqrt(len(self.scores)))

    def confusion(self) -> np.ndarray:
        """Counts ``[true class, predicted class]``."""
        return confusion_matrix(self.labels, self.predictions, self.classes)


class _Nearest:
    """Nearest emotion: argmax over emotions of the centred, scaled projections."""

    def __init__(self, classes: int) -> None:
        self.classes_ = np.arange(classes)

    def fit(self, features: np.ndarray, labels: np.ndarray) -> _Nearest:
        present = np.unique(labels)
        # Balanced: a class with more texts does not pull the centre towards itself.
        self.centre_ = np.mean([features[labels == c].mean(axis=0) for c in present], axis=0)
        scale = features.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = (features - self.centre_) / self.scale_
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def _probe(regularization: float) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=2000))


class EmotionClassifier:
    """Recognises the emotion of texts from their read-outs along a bank's vectors.

    Args:
        model: The model the bank was extracted from.
        tokenizer: Its tokenizer.
        vectors: The bank read along.
        method: ``"probe"`` (logistic regression) or ``"nearest"`` (nearest emotion).
        layers: The band read; default the bank's recommended layers.
        folds: Cross-validation folds in ``fit`` (fewer if a class has fewer texts).
        regularization: The probe's inverse regularisation strength (``C``).
        estimator: Optionally a function returning a fresh, unfitted scikit-learn classifier
            to use as the probe, called once per fold and once for the final fit.
        seed: Seed of the folds' shuffle.
        batch_size: Texts per forward pass when reading.
        progress: Show progress bars when reading.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vectors: EmotionVectors,
        *,
        method: Method = "probe",
        layers: Sequence[int] | None = None,
        folds: int = 5,
        regularization: float = 1.0,
        estimator: Callable[[], Any] | None = None,
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = False,
    ) -> None:
        if method not in ("probe", "nearest"):
            raise ValueError(f"method must be 'probe' or 'nearest', not {method!r}.")
        if folds < 2:
            raise ValueError(f"folds must be at least 2, not {folds}.")
        if not regularization > 0:
            raise ValueError(f"regularization must be positive, not {regularization}.")
        self.model, self.tokenizer, self.vectors = model, tokenizer, vectors
        self.method: Method = method
        self.layers = layers
        self.folds, self.regularization, self.seed = folds, regularization, seed
        self._make = estimator or (lambda: _probe(self.regularization))
        self.batch_size, self.progress = batch_size, progress
        self._classes: tuple[str, ...] | None = None
        self._fitted: Any = None
        self.cross_validation_: CrossValidation | None = None

    # --- reading ----------------------------------------------------------------------

    def read(self, texts: Sequence[str]) -> ReadOut:
        """The read-out of ``texts`` along this classifier's bank and band."""
        return read(
            self.model,
            self.tokenizer,
            texts,
            self.vectors,
            layers=self.layers,
            batch_size=self.batch_size,
            progress=self.progress,
        )

    def _readout(self, texts: Sequence[str] | ReadOut) -> ReadOut:
        readout = texts if isinstance(texts, ReadOut) else self.read(texts)
        wanted = tuple(sorted(set(self.layers))) if self.layers is not None else None
        if readout.emotions != tuple(self.vectors.emotions) or (
            wanted is not None and readout.layers != wanted
        ):
            raise ValueError(
                f"This read-out ({list(readout.emotions)}, layers {list(readout.layers)}) was "
                "not read with this classifier's bank and layers; pass texts or clf.read(texts)."
            )
        return readout

    def _features(self, readout: ReadOut) -> np.ndarray:
        if self.method == "nearest":
            return readout.text_projections
        return readout.layer_projections.reshape(len(readout), -1)

    # --- fitting ----------------------------------------------------------------------

    def _class_order(self, labels: Sequence[str]) -> tuple[str, ...]:
        bank = list(self.vectors.emotions)
        if self.method == "nearest":
            unknown = sorted(set(labels) - set(bank))
            if unknown:
                raise ValueError(
                    f"The nearest emotion is one of the bank's {bank}; labels {unknown} are "
                    "not. Use method='probe' to learn other labels."
                )
            return tuple(bank)
        present = set(labels)
        return tuple([e for e in bank if e in present] + sorted(present - set(bank)))

    def _new(self, classes: int) -> Any:
        return _Nearest(classes) if self.method == "nearest" else self._make()

    def _checked(
        self, texts: Sequence[str] | ReadOut, labels: Sequence[str]
    ) -> tuple[np.ndarray, list[str], tuple[str, ...]]:
        readout = self._readout(texts)
        labels = [str(label) for label in labels]
        if len(labels) != len(readout):
            raise ValueError(f"Give one label per text: {len(labels)} for {len(readout)} texts.")
        classes = self._class_order(labels)
        if len(set(labels)) < 2:
            raise ValueError("Fitting needs texts of at least two labels.")
        return self._features(readout), labels, classes

    def cross_validate(
        self, texts: Sequence[str] | ReadOut, labels: Sequence[str]
    ) -> CrossValidation:
        """Stratified k-fold cross-validation: each fold's classifier is built fresh and
        fitted on that fold's training texts only, then predicts its held-out texts.

        Raises:
            ValueError: If a label has fewer than two texts, or as :meth:`fit`.
        """
        features, labels, classes = self._checked(texts, labels)
        fewest = min(labels.count(c) for c in set(labels))
        if fewest < 2:
            raise ValueError("Cross-validation needs at least two texts of every label.")
        target = np.array([classes.index(label) for label in labels])
        splitter = StratifiedKFold(min(self.folds, fewest), shuffle=True, random_state=self.seed)
        predicted = np.empty(len(labels), dtype=int)
        folds, scores = [], []
        for train, test in splitter.split(features, target):
            fitted = self._new(len(classes)).fit(features[train], target[train])
            columns = np.asarray(fitted.classes_)[fitted.predict_proba(features[test]).argmax(1)]
            predicted[test] = columns
            folds.append((train, test))
            scores.append(float(np.mean(columns == target[test])))
        return CrossValidation(
            classes=classes,
            labels=tuple(labels),
            predictions=tuple(classes[i] for i in predicted),
            folds=tuple(folds),
            scores=tuple(scores),
        )

    def fit(
        self,
        texts: Sequence[str] | ReadOut,
        labels: Sequence[str],
        *,
        cross_validate: bool = True,
    ) -> EmotionClassifier:
        """Cross-validate (unless told not to; the result is ``cross_validation_``), then fit
        on all ``texts``. ``texts`` may be a read-out from :meth:`read` (read once, fit many).

        Raises:
            ValueError: On a label count that differs from the texts', fewer than two labels,
                or (``"nearest"``) a label that is not one of the bank's emotions.
        """
        readout = self._readout(texts)  # read once for the folds and the final fit
        features, checked, classes = self._checked(readout, labels)
        if cross_validate:
            self.cross_validation_ = self.cross_validate(readout, labels)
        target = np.array([classes.index(label) for label in checked])
        self._fitted = self._new(len(classes)).fit(features, target)
        self._classes = classes
        return self

    # --- predicting -------------------------------------------------------------------

    @property
    def emotions(self) -> tuple[str, ...]:
        """The classes scored, in column order (the bank's emotions first)."""
        if self._classes is None:
            raise NotFittedError("Fit the classifier first: clf.fit(texts, labels).")
        return self._classes

    def predict_proba(self, texts: Sequence[str] | ReadOut) -> np.ndarray:
        """``[texts, emotions]`` probabilities (``"nearest"``: a softmax of the centred,
        scaled projections)."""
        classes = self.emotions
        readout = self._readout(texts)
        scores = np.zeros((len(readout), len(classes)))
        scores[:, np.asarray(self._fitted.classes_)] = self._fitted.predict_proba(
            self._features(readout)
        )
        return scores

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Scores as an emotion scorer: :meth:`predict_proba`; ``[0, emotions]`` for none."""
        if not len(texts):
            return np.zeros((0, len(self.emotions)))
        return self.predict_proba(texts)

    def predict(self, texts: Sequence[str] | ReadOut) -> list[str]:
        """The most probable class of each text."""
        return [self.emotions[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def score(self, texts: Sequence[str] | ReadOut, labels: Sequence[str]) -> float:
        """Accuracy on labelled texts (a label the classifier does not know is a miss)."""
        predictions = self.predict(texts)
        if len(labels) != len(predictions):
            raise ValueError(f"Give one label per text: {len(labels)} for {len(predictions)}.")
        return float(np.mean([p == t for p, t in zip(predictions, labels, strict=True)]))
