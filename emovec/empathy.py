"""Empathic replies: recognise the emotion of the user's message from the model's own hidden
states, and choose the reply's emotions by a small table.

Emotional intelligence has two halves: steering gives the reply a tone, recognition says which
tone the user needs. :class:`EmpathicPolicy` reads the user's message along the bank's vectors
(:class:`emovec.analysis.classifier.EmotionClassifier`, a logistic probe over the read-outs,
no second model) and maps the emotion it recognises to a mix ``steer`` takes, by
:data:`REPLIES` or a table of your own::

    policy = EmpathicPolicy.fit(model, tok, vecs)          # the shipped labelled messages
    message = "I passed my driving test on the first try!"
    mix = policy.mix(message)                              # {"joy": 0.8}
    steer(model, vecs, mix, tokenizer=tok).answer(message)

The default table (:data:`REPLIES`) shares joy and answers every other message plainly: on
SmolLM2 the alternatives measured worse (a suppressed emotion breaks the trained vectors'
fluency; joy offered to a sad or angry user reads as tone-deaf). Give a table of your own,
e.g. with a "calm" vector trained from your triples. Recognition below ``min_probability``
also answers plainly. The measurements are in ``docs/serving.md`` (``benchmarks/empathy.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._doses import checked_strengths
from emovec.analysis.classifier import EmotionClassifier
from emovec.datasets import UserMessage, default_user_messages
from emovec.vectors import EmotionVectors

__all__ = ["REPLIES", "EmpathicPolicy", "Recognition"]

# Recognised emotion -> the reply's mix. Joy is shared; every other message is answered plainly.
# Measured on SmolLM2 (docs/serving.md, benchmarks/empathy.py): suppressing the user's emotion
# (a negative α) breaks the trained vectors' fluency, and joy met with sadness or anger reads
# as tone-deaf; a calm or compassionate reply needs a vector of its own (train one with
# `emovec train` from your triples) and a table that names it.
REPLIES: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "joy": MappingProxyType({"joy": 0.8}),
        "sadness": MappingProxyType({}),
        "anger": MappingProxyType({}),
        "fear": MappingProxyType({}),
        "disgust": MappingProxyType({}),
        "neutral": MappingProxyType({}),
    }
)


@dataclass(frozen=True)
class Recognition:
    """The emotion recognised in one message.

    Attributes:
        emotion: The most probable label.
        probability: Its probability.
        probabilities: Every label's probability.
    """

    emotion: str
    probability: float
    probabilities: Mapping[str, float]


class EmpathicPolicy:
    """Chooses a reply's emotions from the emotion recognised in the user's message.

    Args:
        classifier: A fitted classifier over the bank the replies are steered with.
        replies: Recognised label -> mix (emotion -> α); a label it lacks answers plainly.
            Default :data:`REPLIES`.
        min_probability: Below this probability of the recognised label, answer plainly.

    Raises:
        ValueError: For a mix naming an emotion the classifier's bank lacks, or strengths
            or a probability that are not finite numbers in range.
    """

    def __init__(
        self,
        classifier: EmotionClassifier,
        replies: Mapping[str, Mapping[str, float]] = REPLIES,
        *,
        min_probability: float = 0.0,
    ) -> None:
        bank = set(classifier.vectors.emotions)
        for label, mix in replies.items():
            unknown = sorted(set(mix) - bank)
            if unknown:
                raise ValueError(
                    f"The reply to {label!r} steers {unknown}, which the bank lacks "
                    f"({sorted(bank)}); give replies within the bank."
                )
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], not {min_probability!r}.")
        self.classifier = classifier
        self.replies = {label: checked_strengths(mix) for label, mix in replies.items()}
        self.min_probability = float(min_probability)

    @classmethod
    def fit(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vectors: EmotionVectors,
        messages: Sequence[UserMessage] | None = None,
        *,
        replies: Mapping[str, Mapping[str, float]] = REPLIES,
        min_probability: float = 0.0,
        **options: Any,
    ) -> EmpathicPolicy:
        """A policy whose probe is fitted on labelled ``messages`` (default: the shipped
        calibration messages, :func:`emovec.datasets.default_user_messages`); ``options``
        go to :class:`~emovec.analysis.classifier.EmotionClassifier`."""
        messages = list(messages) if messages is not None else default_user_messages("calibration")
        classifier = EmotionClassifier(model, tokenizer, vectors, **options)
        classifier.fit([m.text for m in messages], [m.emotion for m in messages])
        return cls(classifier, replies, min_probability=min_probability)

    def recognise(self, texts: Sequence[str]) -> list[Recognition]:
        """The emotion recognised in each text."""
        labels = self.classifier.emotions
        found = []
        for row in self.classifier.predict_proba(list(texts)):
            best = int(row.argmax())
            probabilities = {label: float(p) for label, p in zip(labels, row, strict=True)}
            found.append(Recognition(labels[best], float(row[best]), probabilities))
        return found

    def mix_for(self, recognition: Recognition) -> dict[str, float]:
        """The reply's mix for a recognition: the table's, or plain (``{}``) below
        ``min_probability`` or for a label the table lacks."""
        if recognition.probability < self.min_probability:
            return {}
        return dict(self.replies.get(recognition.emotion, {}))

    def mix(self, text: str) -> dict[str, float]:
        """The reply's mix for the user's message ``text``."""
        return self.mix_for(self.recognise([text])[0])
