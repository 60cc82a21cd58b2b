"""Extracting emotion vectors from paired texts with hooked forward passes.

For every text, the hidden states at the output of each decoder layer are read (averaged over
the text's own tokens, or taken at its last token); a layer's vector for an emotion is the mean
over pairs of (emotional reading − neutral reading). Because that is linear, each text simply
adds its reading, signed, into a running sum on the model's device: memory does not grow with
the number of pairs, texts of any pair can share a batch, and batches are sorted by length so
little padding is computed. The other estimators (PCA, LDA) and the layer diagnostics need
every pair's readings, which :func:`extract_activations` keeps.

Under ``torch.distributed`` (e.g. ``accelerate launch``) each process reads a share of the
batches and the sums are all-reduced, so N processes give the vectors of one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import Pair, ResponsePair, default_pairs, validate_pairs
from emovec.estimators import ESTIMATORS, estimate
from emovec.generation import format_prompts
from emovec.layers import (
    context_length,
    default_layer_band,
    find_layers,
    hidden_size_of,
    layer_output,
)
from emovec.models import input_device
from emovec.vectors import EmotionVectors

if TYPE_CHECKING:
    from emovec.diagnostics import LayerDiagnostics

__all__ = [
    "Activations",
    "Reading",
    "Template",
    "default_layer_band",
    "extract",
    "extract_activations",
    "vectors_from_activations",
]

Template = Literal["plain", "chat"]
Reading = Literal["mean", "last", "response"]
READINGS = ("mean", "last", "response")

# The story is read as the assistant's own words, the role steering later acts on.
_CHAT_PROMPT = "Tell me about something that happened to you recently."


@dataclass(frozen=True)
class _Item:
    """One text to read: ``context`` (a response's query) is fed but not read."""

    emotion: int
    slot: int  # row in the per-text store
    sign: float  # +1 emotional, -1 neutral
    context: str
    text: str


@dataclass(frozen=True)
class _Text:
    emotion: int
    slot: int
    sign: float
    input_ids: list[int]
    content: list[bool]  # tokens that are read


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after that layer (nor the LM head) is needed."""


def _render(
    tokenizer: PreTrainedTokenizerBase, item: _Item, template: Template
) -> tuple[str, int, int, bool]:
    """The string fed to the model, the character span read, and whether the tokenizer
    should add its special tokens (a chat template writes its own)."""
    if item.context:
        # A response follows its formatted query exactly as generation produced it.
        prompt = format_prompts(tokenizer, [item.context])[0]
        separator = "" if prompt.endswith((" ", "\n")) else " "
        text = item.text.strip()
        rendered = prompt + separator + text
        # format_prompts writes the special tokens into the prompt itself.
        return rendered, len(rendered) - len(text), len(rendered), False
    if template == "plain":
        return item.text, 0, len(item.text), True
    text = item.text.strip()  # some templates trim the content themselves
    rendered = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": _CHAT_PROMPT}, {"role": "assistant", "content": text}],
            tokenize=False,
        )
    )
    start = rendered.rfind(text)
    if start < 0:
        raise ValueError(
            f"The chat template altered the text, so its tokens cannot be found: "
            f"{text[:60]!r}. Use template='plain'."
        )
    return rendered, start, start + len(text), False


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[_Item],
    template: Template,
    last_only: bool,
    max_length: int | None,
) -> list[_Text]:
    rendered = [_render(tokenizer, item, template) for item in items]
    special = set(tokenizer.all_special_ids)
    out = []
    for flag in (True, False):  # one tokenizer call per special-token setting
        chosen = [i for i, r in enumerate(rendered) if r[3] is flag]
        if not chosen:
            continue
        encoded = tokenizer(
            [rendered[i][0] for i in chosen],
            add_special_tokens=flag,
            return_offsets_mapping=True,
        )
        for index, ids, offsets in zip(
            chosen, encoded["input_ids"], encoded["offset_mapping"], strict=True
        ):
            item, (_, start, end, _) = items[index], rendered[index]
            if max_length is not None and len(ids) > max_length:
                raise ValueError(
                    f"A text of {len(ids)} tokens exceeds the limit of {max_length} (the "
                    f"model's context, or max_length): {item.text[:60]!r}... Shorten or split "
                    "it."
                )
            # Position 0 is an attention sink with a hidden norm ~100x the others on
            # SmolLM2; one such token would dominate every average.
            content = [
                pos > 0 and tok not in special and s >= start and e <= end and e > s
                for pos, (tok, (s, e)) in enumerate(zip(ids, offsets, strict=True))
            ]
            if not any(content):
                raise ValueError(f"Text has no tokens to read: {item.text!r}.")
            if last_only:
                last = max(i for i, keep in enumerate(content) if keep)
                content = [i == last for i in range(len(content))]
            out.append(_Text(item.emotion, item.slot, item.sign, list(ids), content))
    return out


def _batches(texts: list[_Text], batch_size: int) -> list[list[_Text]]:
    ordered = sorted(texts, key=lambda t: len(t.input_ids))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def _collate(batch: list[_Text], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(t.input_ids) for t in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    content = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, text in enumerate(batch):
        n = len(text.input_ids)
        ids[row, :n] = torch.tensor(text.input_ids)
        attention[row, :n] = 1
        content[row, :n] = torch.tensor(text.content, dtype=torch.float32)
    return {
        "input_ids": ids.to(device),
        "attention_mask": attention.to(device),
        "content": content.to(device),
        "emotion": torch.tensor([t.emotion for t in batch], device=device),
        "slot": torch.tensor([t.slot for t in batch]),
        "sign": torch.tensor([t.sign for t in batch], device=device),
    }


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


@dataclass
class _Accumulator:
    """Running sums per layer, kept on each layer's device (no host sync per batch):
    signed per-text readings per emotion, and neutral token norms. Optionally every text's
    reading (``store``), for estimators and diagnostics that need the pairs."""

    num_layers: int
    num_emotions: int
    store: torch.Tensor | None = None  # [texts, layers, hidden] float32 on the CPU
    diff_sums: list[torch.Tensor | None] = field(default_factory=list)
    norm_sums: list[torch.Tensor | None] = field(default_factory=list)
    norm_counts: list[torch.Tensor | None] = field(default_factory=list)
    batch: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.diff_sums = [None] * self.num_layers
        self.norm_sums = [None] * self.num_layers
        self.norm_counts = [None] * self.num_layers

    def add(self, layer: int, hidden: torch.Tensor) -> None:
        device = hidden.device
        batch = {k: v.to(device) for k, v in self.batch.items() if k != "slot"}
        content = batch["content"]
        hidden = hidden.float()
        weights = content / content.sum(dim=1, keepdim=True)
        readings = torch.einsum("bth,bt->bh", hidden, weights)
        dtype = _sum_dtype(device)
        if self.diff_sums[layer] is None:
            self.diff_sums[layer] = torch.zeros(
                self.num_emotions, hidden.shape[-1], dtype=dtype, device=device
            )
            self.norm_sums[layer] = torch.zeros((), dtype=dtype, device=device)
            self.norm_counts[layer] = torch.zeros((), dtype=dtype, device=device)
        signed = (readings * batch["sign"][:, None]).to(dtype)
        self.diff_sums[layer].index_add_(0, batch["emotion"], signed)  # type: ignore[union-attr]
        neutral = content * (batch["sign"] < 0)[:, None]
        self.norm_sums[layer] += (hidden.norm(dim=-1) * neutral).sum().to(dtype)
        self.norm_counts[layer] += neutral.sum().to(dtype)  # type: ignore[operator]
        if self.store is not None:
            self.store[:, layer].index_copy_(0, self.batch["slot"], readings.cpu())

    def totals(self, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sums gathered on the CPU in float64: ``[layers, emotions, hidden]``, and
        neutral norm sums and counts ``[layers]``."""

        def gather(parts: list[torch.Tensor | None], shape: tuple[int, ...]) -> torch.Tensor:
            zeros = torch.zeros(shape, dtype=torch.float64)  # a process that read no batch
            return torch.stack([zeros if p is None else p.double().cpu() for p in parts])

        return (
            gather(self.diff_sums, (self.num_emotions, hidden_size)),
            gather(self.norm_sums, ()),
            gather(self.norm_counts, ()),
        )


def _hook(accumulator: _Accumulator, layer: int, last: bool) -> Any:
    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        accumulator.add(layer, layer_output(output))
        if last:
            raise _StopForward

    return hook


def _distributed() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (NCCL reduces CUDA tensors only)."""
    if dist.get_backend() == "nccl":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved)
        return moved.to(tensor.device)
    dist.all_reduce(tensor)
    return tensor


def _items(checked: Mapping[str, Sequence[Pair]]) -> list[_Item]:
    items = []
    slot = 0
    for index, emotion in enumerate(checked):
        for pair in checked[emotion]:
            context = pair.query if isinstance(pair, ResponsePair) else ""
            items.append(_Item(index, slot, 1.0, context, pair.emotional))
            items.append(_Item(index, slot + 1, -1.0, context, pair.neutral))
            slot += 2
    return items


@dataclass(frozen=True)
class _Readings:
    names: list[str]
    counts: dict[str, int]
    num_layers: int
    mean_differences: torch.Tensor  # [layers, emotions, hidden] float64
    token_norms: torch.Tensor  # [layers]
    per_text: torch.Tensor | None  # [texts, layers, hidden]: emotional, neutral alternating


def _read(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    checked: Mapping[str, Sequence[Pair]],
    *,
    reading: Reading,
    template: Template,
    batch_size: int,
    max_length: int | None,
    layers: str | Sequence[nn.Module] | None,
    keep_texts: bool,
    progress: bool,
) -> _Readings:
    names = list(checked)
    items = _items(checked)
    limit = max_length if max_length is not None else context_length(model)
    encoded = _encode(tokenizer, items, template, reading == "last", limit)
    blocks = find_layers(model, layers)
    hidden_size = hidden_size_of(model) or int(
        cast(torch.Tensor, model.get_input_embeddings().weight).shape[-1]
    )
    accumulator = _Accumulator(len(blocks), len(names))
    if keep_texts:
        accumulator.store = torch.zeros(len(items), len(blocks), hidden_size)
    rank, world = _distributed()
    batches = _batches(encoded, batch_size)[rank::world]
    device = input_device(model)
    handles = [
        block.register_forward_hook(_hook(accumulator, i, last=i == len(blocks) - 1))
        for i, block in enumerate(blocks)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        with torch.inference_mode():
            for batch in tqdm(
                batches, desc="extracting", disable=not progress or rank > 0, unit="batch"
            ):
                accumulator.batch = _collate(batch, pad_id, device)
                with contextlib.suppress(_StopForward):
                    model(
                        input_ids=accumulator.batch["input_ids"],
                        attention_mask=accumulator.batch["attention_mask"],
                        use_cache=False,
                    )
    finally:
        for handle in handles:
            handle.remove()
    diff_sums, norm_sums, norm_counts = accumulator.totals(hidden_size)
    store = accumulator.store
    if world > 1:
        diff_sums, norm_sums, norm_counts = (
            _all_reduce(t) for t in (diff_sums, norm_sums, norm_counts)
        )
        if store is not None:  # each text was read by exactly one process, zeros elsewhere
            store = _all_reduce(store)
    counts = {e: len(checked[e]) for e in names}
    per_emotion = torch.tensor([counts[e] for e in names], dtype=torch.float64)
    return _Readings(
        names=names,
        counts=counts,
        num_layers=len(blocks),
        mean_differences=diff_sums / per_emotion[None, :, None],
        token_norms=(norm_sums / norm_counts.clamp_min(1)).float(),
        per_text=store,
    )


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
    if template not in ("plain", "chat"):
        raise ValueError(f"template must be 'plain' or 'chat', not {template!r}.")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template='chat' needs a tokenizer with a chat template; this one has "
            "none, so use template='plain'."
        )
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")


def _checked_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None,
    emotions: Sequence[str] | None,
    reading: Reading,
    template: Template,
    batch_size: int,
    progress: bool,
) -> dict[str, list[Pair]]:
    """The options checked, then the pairs to read: validated, shipped, or generated."""
    _check_options(reading, template, tokenizer, batch_size)
    if pairs is not None:
        checked = validate_pairs(pairs)
        if reading == "response" and not all(
            isinstance(p, ResponsePair) for items in checked.values() for p in items
        ):
            raise ValueError(
                "reading='response' needs ResponsePair items (query, emotional answer, "
                "neutral answer); build them with emovec.responses.response_pairs()."
            )
        return checked
    if reading == "response":
        from emovec.responses import response_pairs

        return validate_pairs(response_pairs(model, tokenizer, emotions, progress=progress))
    return default_pairs(emotions)


def extract_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None = None,
    *,
    emotions: Sequence[str] | None = None,
    reading: Reading = "mean",
    template: Template = "plain",
    batch_size: int = 32,
    max_length: int | None = None,
    layers: str | Sequence[nn.Module] | None = None,
    progress: bool = True,
) -> Activations:
    """Read every pair at every decoder layer and keep the readings.

    Memory grows with the number of pairs (``2 × pairs × layers × hidden`` floats); plain
    mean-difference extraction (:func:`extract` with the default estimator) does not need
    this. Arguments as for :func:`extract`.
    """
    readings = _read(
        model,
        tokenizer,
        _checked_pairs(model, tokenizer, pairs, emotions, reading, template, batch_size, progress),
        reading=reading,
        template=template,
        batch_size=batch_size,
        max_length=max_length,
        layers=layers,
        keep_texts=True,
        progress=progress,
    )
    assert readings.per_text is not None
    split: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    start = 0
    for emotion in readings.names:
        rows = readings.per_text[start : start + 2 * readings.counts[emotion]]
        split[emotion] = (rows[0::2].clone(), rows[1::2].clone())
        start += 2 * readings.counts[emotion]
    return Activations(
        split,
        readings.token_norms,
        _settings(reading, template, readings.counts),
    )


def _settings(reading: str, template: str, counts: Mapping[str, int]) -> dict[str, Any]:
    return {
        "reading": {
            "mean": "mean_over_text_tokens",
            "last": "last_text_token",
            "response": "mean_over_answer_tokens",
        }[reading],
        "template": template,
        "pairs_per_emotion": dict(counts),
        "excluded": "position 0 and special tokens",
    }


def extract(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None = None,
    *,
    emotions: Sequence[str] | None = None,
    reading: Reading = "mean",
    estimator: str = "mean_difference",
    template: Template = "plain",
    batch_size: int = 32,
    max_length: int | None = None,
    layers: str | Sequence[nn.Module] | None = None,
    recommended_layers: Sequence[int] | Literal["diagnostics"] | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> EmotionVectors:
    """Extract one vector per emotion and decoder layer from paired texts.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer (a fast tokenizer: offsets locate the story's tokens).
        pairs: ``{emotion: [(emotional, neutral), ...]}`` (tuples, :class:`PromptPair`,
            :class:`ResponsePair` or dicts). Default: the shipped pairs, or with
            ``reading="response"`` the model's own answers to the shipped extraction queries.
        emotions: Which shipped emotions to use when ``pairs`` is not given.
        reading: ``"mean"`` averages each text's tokens; ``"last"`` reads its last token;
            ``"response"`` averages the answer tokens of response pairs (generated and
            cached by :func:`emovec.responses.response_pairs` when ``pairs`` is not given).
        estimator: ``"mean_difference"`` (default; constant memory), ``"pca"`` or ``"lda"``
            (see :mod:`emovec.estimators`; these keep every pair's readings).
        template: ``"plain"`` feeds the texts as they are; ``"chat"`` wraps each as the
            assistant's reply in the model's chat template (reading only the reply).
        batch_size: Texts per forward pass.
        max_length: Longest text accepted, in tokens; default: the model's context length.
        layers: Override for where the decoder blocks are (see :func:`find_layers`).
        recommended_layers: Layer band stored in the bank as the default for steering:
            explicit indices, ``"diagnostics"`` for the band :mod:`emovec.diagnostics`
            derives from the pairs, or ``None`` for :func:`default_layer_band`.
        model_name: Name recorded in the bank; default: the model's ``name_or_path``.
        progress: Show a progress bar.

    Returns:
        The bank, with per-layer mean neutral hidden norms for relative steering.
    """
    if estimator not in ESTIMATORS:  # before the forward passes, not after
        raise ValueError(f"Unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)}.")
    keep = estimator != "mean_difference" or recommended_layers == "diagnostics"
    name = model_name or str(getattr(model.config, "name_or_path", "") or "unknown")
    if keep:
        activations = extract_activations(
            model,
            tokenizer,
            pairs,
            emotions=emotions,
            reading=reading,
            template=template,
            batch_size=batch_size,
            max_length=max_length,
            layers=layers,
            progress=progress,
        )
        return vectors_from_activations(
            activations,
            estimator=estimator,
            recommended_layers=recommended_layers,
            model_name=name,
        )
    readings = _read(
        model,
        tokenizer,
        _checked_pairs(model, tokenizer, pairs, emotions, reading, template, batch_size, progress),
        reading=reading,
        template=template,
        batch_size=batch_size,
        max_length=max_length,
        layers=layers,
        keep_texts=False,
        progress=progress,
    )
    assert not isinstance(recommended_layers, str)  # "diagnostics" took the branch above
    return EmotionVectors(
        {e: readings.mean_differences[:, i].float() for i, e in enumerate(readings.names)},
        readings.token_norms,
        model_name=name,
        layers=_band(recommended_layers, readings.num_layers),
        settings={
            "method": "mean_difference",
            **_settings(reading, template, readings.counts),
        },
    )


def vectors_from_activations(
    activations: Activations,
    *,
    estimator: str = "mean_difference",
    recommended_layers: Sequence[int] | Literal["diagnostics"] | None = None,
    model_name: str = "unknown",
    diagnostics: LayerDiagnostics | None = None,
) -> EmotionVectors:
    """A bank from kept readings (see :func:`extract` for the arguments).

    ``diagnostics``, when already computed from these readings, saves computing them again
    for ``recommended_layers="diagnostics"``.
    """
    vectors = {e: estimate(estimator, *activations.pairs[e]) for e in activations.emotions}
    settings: dict[str, Any] = {"method": estimator, **activations.settings}
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
    return EmotionVectors(
        vectors,
        activations.token_norms,
        model_name=model_name,
        layers=_band(band, activations.num_layers),
        settings=settings,
    )


def _band(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    return default_layer_band(num_layers) if layers is None else [int(i) for i in layers]
