"""Extracting emotion vectors from paired texts with hooked forward passes.

A layer's vector for an emotion is the mean over pairs of (emotional reading − neutral
reading), read at the output of each decoder block (see :mod:`emovec._reading` for how the
texts are read). :func:`extract` keeps only running sums (constant memory); the other
estimators (PCA, LDA) and the layer diagnostics need every pair's readings, which
:func:`extract_activations` keeps. Under ``torch.distributed`` each process reads a share of
the batches, so N processes give the vectors of one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._doses import count
from emovec._reading import Reading, Template, _pairs_to_read, _read
from emovec.estimators import ESTIMATORS, estimate
from emovec.layers import default_layer_band
from emovec.vectors import EmotionVectors

if TYPE_CHECKING:
    from emovec.diagnostics import LayerDiagnostics

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ESTIMATOR",
    "DEFAULT_READING",
    "DEFAULT_TEMPLATE",
    "READINGS",
    "TEMPLATES",
    "Activations",
    "Reading",
    "Template",
    "extract",
    "extract_activations",
    "extract_with_diagnostics",
    "vectors_from_activations",
]

READINGS: tuple[Reading, ...] = ("mean", "last", "response")
TEMPLATES: tuple[Template, ...] = ("plain", "chat")
DEFAULT_READING: Reading = "mean"
DEFAULT_TEMPLATE: Template = "plain"
DEFAULT_ESTIMATOR = "mean_difference"
DEFAULT_BATCH_SIZE = 32

_Blocks: TypeAlias = str | Sequence[nn.Module] | None


@dataclass(frozen=True)
class Activations:
    """Every pair's readings, per emotion: what the estimators and diagnostics work on.

    Attributes:
        pairs: Emotion → ``(emotional, neutral)``, each ``[num_pairs, num_layers, hidden]``;
            row ``i`` of both is pair ``i``.
        token_norms: ``[num_layers]`` mean L2 norm of neutral token hidden states.
        settings: How the readings were taken.
    """

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    token_norms: torch.Tensor
    settings: dict[str, Any]

    @property
    def emotions(self) -> list[str]:
        """Emotion names, in order."""
        return list(self.pairs)

    @property
    def num_layers(self) -> int:
        """Decoder layers read."""
        return int(self.token_norms.shape[0])


def _check_options(
    reading: str, template: str, tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> None:
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, not {reading!r}.")
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, not {template!r}.")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template='chat' needs a tokenizer with a chat template; this one has "
            "none, so use template='plain'."
        )
    count(batch_size, "batch_size")


def extract_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None = None,
    *,
    emotions: Sequence[str] | None = None,
    reading: Reading = DEFAULT_READING,
    template: Template = DEFAULT_TEMPLATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int | None = None,
    blocks: _Blocks = None,
    progress: bool = True,
) -> Activations:
    """Read every pair at every decoder layer and keep the readings.

    Memory grows with the number of pairs (``2 × pairs × layers × hidden`` floats); plain
    mean-difference extraction (:func:`extract` with the default estimator) does not need
    this. Arguments as for :func:`extract`.
    """
    _check_options(reading, template, tokenizer, batch_size)
    readings = _read(
        model,
        tokenizer,
        _pairs_to_read(model, tokenizer, pairs, emotions, reading, progress),
        reading=reading,
        template=template,
        batch_size=batch_size,
        max_length=max_length,
        blocks=blocks,
        keep_texts=True,
        progress=progress,
    )
    return Activations(readings.pairs(), readings.token_norms, readings.settings(reading, template))


def extract(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None = None,
    *,
    emotions: Sequence[str] | None = None,
    reading: Reading = DEFAULT_READING,
    estimator: str = DEFAULT_ESTIMATOR,
    template: Template = DEFAULT_TEMPLATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int | None = None,
    blocks: _Blocks = None,
    recommended_layers: Sequence[int] | Literal["diagnostics"] | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> EmotionVectors:
    """Extract one vector per emotion and decoder layer from paired texts.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer (a fast tokenizer: offsets locate the story's tokens).
        pairs: ``{emotion: [(emotional, neutral), ...]}`` (tuples, :class:`PromptPair`,
            :class:`ResponsePair` or dicts). Default: the shipped stories, or with
            ``reading="response"`` the shipped hand-written answers
            (:func:`~emovec.datasets.default_answer_pairs`).
        emotions: Which shipped emotions to use when ``pairs`` is not given.
        reading: ``"mean"`` averages each text's tokens; ``"last"`` reads its last token;
            ``"response"`` averages the answer tokens of response pairs (the model's own
            answers: pass :func:`emovec.responses.response_pairs`'s as ``pairs``).
        estimator: ``"mean_difference"`` (default; constant memory), ``"pca"`` or ``"lda"``
            (see :mod:`emovec.estimators`; these keep every pair's readings).
        template: ``"plain"`` feeds the texts as they are; ``"chat"`` wraps each as the
            assistant's reply in the model's chat template (reading only the reply).
        batch_size: Texts per forward pass.
        max_length: Longest text accepted, in tokens; default: the model's context length.
        blocks: Where the decoder blocks are, for models :func:`find_blocks` does not
            understand: a dotted path (``"transformer.blocks"``) or the blocks themselves.
        recommended_layers: Layer band stored in the bank as the default for steering:
            explicit indices, ``"diagnostics"`` for the band :mod:`emovec.diagnostics`
            derives from the pairs, or ``None`` for :func:`default_layer_band`.
        model_name: Name recorded in the bank; default: the model's ``name_or_path``.
        progress: Show a progress bar.

    Returns:
        The bank, with per-layer mean neutral hidden norms for relative steering.
    """
    _check_estimator(estimator)  # before the forward passes, not after
    _check_options(reading, template, tokenizer, batch_size)
    keep = estimator != DEFAULT_ESTIMATOR or recommended_layers == "diagnostics"
    readings = _read(
        model,
        tokenizer,
        _pairs_to_read(model, tokenizer, pairs, emotions, reading, progress),
        reading=reading,
        template=template,
        batch_size=batch_size,
        max_length=max_length,
        blocks=blocks,
        keep_texts=keep,
        progress=progress,
    )
    name = model_name or _model_name(model)
    if keep:
        settings = readings.settings(reading, template)
        activations = Activations(readings.pairs(), readings.token_norms, settings)
        return vectors_from_activations(
            activations, estimator=estimator, recommended_layers=recommended_layers, model_name=name
        )
    assert not isinstance(recommended_layers, str)  # "diagnostics" keeps the readings
    return _bank(
        {e: readings.mean_differences[:, i].float() for i, e in enumerate(readings.names)},
        readings.token_norms,
        name,
        _band(recommended_layers, readings.num_layers),
        {"estimator": DEFAULT_ESTIMATOR, **readings.settings(reading, template)},
    )


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}.")


def _model_name(model: PreTrainedModel) -> str:
    return str(getattr(model.config, "name_or_path", "") or "unknown")


def extract_with_diagnostics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None = None,
    *,
    emotions: Sequence[str] | None = None,
    reading: Reading = DEFAULT_READING,
    estimator: str = DEFAULT_ESTIMATOR,
    template: Template = DEFAULT_TEMPLATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int | None = None,
    blocks: _Blocks = None,
    recommended_layers: Sequence[int] | Literal["diagnostics"] | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> tuple[EmotionVectors, LayerDiagnostics]:
    """:func:`extract` (same arguments), and the layer diagnostics of the same readings.

    The pairs are read once; the readings are kept (memory as :func:`extract_activations`).
    """
    from emovec.diagnostics import diagnose

    _check_estimator(estimator)
    activations = extract_activations(
        model,
        tokenizer,
        pairs,
        emotions=emotions,
        reading=reading,
        template=template,
        batch_size=batch_size,
        max_length=max_length,
        blocks=blocks,
        progress=progress,
    )
    report = diagnose(activations.pairs, token_norms=activations.token_norms)
    bank = vectors_from_activations(
        activations,
        estimator=estimator,
        recommended_layers=recommended_layers,
        model_name=model_name or _model_name(model),
        diagnostics=report,
    )
    return bank, report


def vectors_from_activations(
    activations: Activations,
    *,
    estimator: str = DEFAULT_ESTIMATOR,
    recommended_layers: Sequence[int] | Literal["diagnostics"] | None = None,
    model_name: str = "unknown",
    diagnostics: LayerDiagnostics | None = None,
) -> EmotionVectors:
    """A bank from kept readings (see :func:`extract` for the arguments).

    ``diagnostics``, when already computed from these readings, saves computing them again
    for ``recommended_layers="diagnostics"``.
    """
    vectors = {e: estimate(estimator, *activations.pairs[e]) for e in activations.emotions}
    settings: dict[str, Any] = {"estimator": estimator, **activations.settings}
    band: Sequence[int] | None = None
    if recommended_layers == "diagnostics":
        if diagnostics is None:
            from emovec.diagnostics import diagnose

            diagnostics = diagnose(activations.pairs, token_norms=activations.token_norms)
        band = diagnostics.recommended_layers()
        settings["layers_from"] = "diagnostics"
        settings["recommended_layers_per_emotion"] = {
            e: diagnostics.recommended_layers(e) for e in diagnostics.emotions
        }
    elif recommended_layers is not None:
        band = recommended_layers
    band = _band(band, activations.num_layers)
    return _bank(vectors, activations.token_norms, model_name, band, settings)


def _band(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    return default_layer_band(num_layers) if layers is None else [int(i) for i in layers]


def _bank(
    vectors: dict[str, torch.Tensor],
    token_norms: torch.Tensor,
    model_name: str,
    band: list[int],
    settings: dict[str, Any],
) -> EmotionVectors:
    return EmotionVectors(
        vectors, token_norms, model_name=model_name, recommended_layers=band, settings=settings
    )
