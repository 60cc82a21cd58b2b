"""Reading texts at every decoder block with forward hooks, summed on the model's device.

For every text, the hidden states at the output of each decoder block are read (averaged over
the text's content tokens, or taken at its last one). A vector is a mean over pairs of
(emotional reading − neutral reading), which is linear, so each text adds its reading,
signed, into a running sum: memory does not grow with the number of pairs, texts of any pair
can share a batch, and batches are sorted by length so little padding is computed. Estimators
that need every pair's readings ask :func:`_read` to keep them.

Under ``torch.distributed`` (e.g. ``accelerate launch``) each process reads a share of the
batches and the sums are all-reduced, so N processes give the vectors of one.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._scope import reading_hook, scoped_reading
from emovec._texts import Reading, Template, _batches, _collate, _encode, _Item, _items
from emovec.datasets import Pair, ResponsePair, default_answer_pairs, default_pairs, validate_pairs
from emovec.layers import context_length, find_blocks, hidden_size_of, layer_output
from emovec.models import input_device

__all__ = ["Reading", "Template"]  # the rest: for extraction, training and EmotionDecode


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after that layer (nor the LM head) is needed."""


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
        # A neutral text counts once per pair it stands for (sign -m: read once for m).
        neutral = content * (-batch["sign"]).clamp(min=0)[:, None]
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


def _hook(accumulator: _Accumulator, layer: int, last: bool, key: object) -> Any:
    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        accumulator.add(layer, layer_output(output))
        if last:
            raise _StopForward

    return reading_hook(key, hook)


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


@dataclass(frozen=True)
class _Readings:
    names: list[str]
    counts: dict[str, int]
    num_layers: int
    mean_differences: torch.Tensor  # [layers, emotions, hidden] float64
    token_norms: torch.Tensor  # [layers]
    per_text: torch.Tensor | None  # [texts, layers, hidden]: emotional, neutral alternating
    processes: int  # under torch.distributed, the processes that shared the reading

    def pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Emotion → (emotional, neutral) readings ``[pairs, layers, hidden]`` (kept ones)."""
        assert self.per_text is not None, "read with keep_texts=True"
        split: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        start = 0
        for emotion in self.names:
            rows = self.per_text[start : start + 2 * self.counts[emotion]]
            split[emotion] = (rows[0::2].clone(), rows[1::2].clone())
            start += 2 * self.counts[emotion]
        return split

    def settings(self, reading: Reading, template: Template) -> dict[str, Any]:
        """How the readings were taken, as recorded in a bank's settings."""
        return {
            "reading": _READING_NAMES[reading],
            "template": template,
            "pairs_per_emotion": dict(self.counts),
            "excluded": "position 0 and special tokens",
            **({"processes": self.processes} if self.processes > 1 else {}),
        }


_READING_NAMES = {
    "mean": "mean_over_text_tokens",
    "last": "last_text_token",
    "response": "mean_over_answer_tokens",
}


def _pairs_to_read(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None,
    emotions: Sequence[str] | None,
    reading: Reading,
    progress: bool,
) -> dict[str, list[Pair]]:
    """The pairs to read: ``pairs`` validated, else the shipped ones: the stories, or for
    ``reading="response"`` the hand-written answers (the model's own answers are
    :func:`emovec.responses.response_pairs`'s, passed as ``pairs``: extraction generates
    nothing)."""
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
        return validate_pairs(default_answer_pairs(emotions))
    return default_pairs(emotions)


@dataclass(frozen=True)
class _Sums:
    differences: torch.Tensor  # [layers, emotions, hidden] float64: signed readings summed
    token_norms: torch.Tensor  # [layers]: mean neutral token norm
    store: torch.Tensor | None  # [texts, layers, hidden], if kept
    processes: int


def _hidden_size(model: PreTrainedModel) -> int:
    """The residual stream's width: the config's, else the input embeddings'."""
    return hidden_size_of(model) or int(
        cast(torch.Tensor, model.get_input_embeddings().weight).shape[-1]
    )


def _read(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    checked: Mapping[str, Sequence[Pair]],
    *,
    reading: Reading,
    template: Template,
    batch_size: int,
    max_length: int | None,
    blocks: str | Sequence[nn.Module] | None,
    keep_texts: bool,
    progress: bool,
) -> _Readings:
    """Read every text of ``checked`` at the output of every decoder block (``blocks``:
    the override of :func:`find_blocks`), keeping each text's reading if ``keep_texts``."""
    names = list(checked)
    sums = _sums(
        model,
        tokenizer,
        _items(checked),
        len(names),
        reading=reading,
        template=template,
        batch_size=batch_size,
        max_length=max_length,
        blocks=blocks,
        keep_texts=keep_texts,
        progress=progress,
    )
    counts = {e: len(checked[e]) for e in names}
    per_emotion = torch.tensor([counts[e] for e in names], dtype=torch.float64)
    return _Readings(
        names=names,
        counts=counts,
        num_layers=int(sums.token_norms.shape[0]),
        mean_differences=sums.differences / per_emotion[None, :, None],
        token_norms=sums.token_norms,
        per_text=sums.store,
        processes=sums.processes,
    )


def _neutral_norms(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    checked: Mapping[str, Sequence[ResponsePair]],
    *,
    batch_size: int,
    blocks: str | Sequence[nn.Module] | None,
) -> torch.Tensor:
    """The token norms :func:`_read` measures on response pairs (``[layers]``), reading only
    the neutral answers, and each distinct one once: an answer that stands for ``m`` pairs
    (the shipped answers share their neutral ones across emotions) weighs ``m`` times."""
    counted = Counter((p.query, p.neutral) for pairs in checked.values() for p in pairs)
    items = [
        _Item(0, slot, -float(m), context, text)
        for slot, ((context, text), m) in enumerate(counted.items())
    ]
    return _sums(
        model, tokenizer, items, 1, reading="response", batch_size=batch_size, blocks=blocks
    ).token_norms


def _sums(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[_Item],
    num_emotions: int,
    *,
    reading: Reading,
    batch_size: int,
    template: Template = "plain",
    max_length: int | None = None,
    blocks: str | Sequence[nn.Module] | None = None,
    keep_texts: bool = False,
    progress: bool = False,
) -> _Sums:
    """Read ``items`` at every block's output and sum them, over every process."""
    limit = max_length if max_length is not None else context_length(model)
    encoded = _encode(tokenizer, items, template, reading == "last", limit)
    hooked = find_blocks(model, blocks)
    hidden_size = _hidden_size(model)
    accumulator = _Accumulator(len(hooked), num_emotions)
    if keep_texts:
        accumulator.store = torch.zeros(len(items), len(hooked), hidden_size)
    rank, world = _distributed()
    batches = _batches(encoded, batch_size)[rank::world]
    device = input_device(model)
    key = object()
    handles = [
        block.register_forward_hook(_hook(accumulator, i, last=i == len(hooked) - 1, key=key))
        for i, block in enumerate(hooked)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        with torch.inference_mode(), scoped_reading(key):
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
    return _Sums(
        differences=diff_sums,
        token_norms=(norm_sums / norm_counts.clamp_min(1)).float(),
        store=store,
        processes=world,
    )
