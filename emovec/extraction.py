"""Extracting emotion vectors from paired texts with hooked forward passes.

For every text, the hidden states at the output of each decoder layer are averaged over the
text's own tokens; a layer's vector for an emotion is the mean over pairs of
(emotional average − neutral average). Because that is linear, each text simply adds its
average, signed, into a running sum: memory does not grow with the number of pairs, texts of
any pair can share a batch, and batches are sorted by length so little padding is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import default_pairs, validate_pairs
from emovec.layers import find_layers, layer_output
from emovec.models import input_device
from emovec.vectors import EmotionVectors

__all__ = ["Template", "default_layer_band", "extract"]

Template = Literal["plain", "chat"]

# The story is read as the assistant's own words, the role steering later acts on.
_CHAT_PROMPT = "Tell me about something that happened to you recently."


def default_layer_band(num_layers: int) -> list[int]:
    """Layers steered when none are given: a band just before the middle of the stack.

    Early layers still encode surface form and late layers are committed to the next token.
    On SmolLM2 (30 layers) the band 12–16 gave the most even effect over the five emotions
    at the same dose (README, "Strength"); 10–19 and 6–14 were weaker on fear and disgust.
    """
    start = min(num_layers - 1, round(0.4 * num_layers))
    return list(range(start, min(num_layers, start + max(1, round(num_layers / 6)))))


@dataclass(frozen=True)
class _Text:
    emotion: int
    sign: float  # +1 emotional, -1 neutral
    input_ids: list[int]
    content: list[bool]  # tokens that belong to the story itself


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after that layer (nor the LM head) is needed."""


def _render(
    tokenizer: PreTrainedTokenizerBase, text: str, template: Template
) -> tuple[str, int, int]:
    """The string fed to the model, and the character span of ``text`` in it."""
    if template == "plain":
        return text, 0, len(text)
    text = text.strip()  # some templates trim the content themselves
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _CHAT_PROMPT}, {"role": "assistant", "content": text}],
        tokenize=False,
    )
    start = str(rendered).rfind(text)
    if start < 0:
        raise ValueError(
            f"The chat template altered the text, so its tokens cannot be found: "
            f"{text[:60]!r}. Use template='plain'."
        )
    return str(rendered), start, start + len(text)


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[tuple[int, float, str]],
    template: Template,
    max_length: int,
) -> list[_Text]:
    rendered = [_render(tokenizer, text, template) for _, _, text in texts]
    encoded = tokenizer(
        [r for r, _, _ in rendered],
        add_special_tokens=template == "plain",
        return_offsets_mapping=True,
    )
    special = set(tokenizer.all_special_ids)
    out = []
    for (emotion, sign, text), (_, start, end), ids, offsets in zip(
        texts, rendered, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        if len(ids) > max_length:
            raise ValueError(
                f"Text of {len(ids)} tokens exceeds max_length={max_length}: {text[:60]!r}..."
            )
        # Position 0 is an attention sink with a hidden norm ~100x the others on SmolLM2;
        # one such token would dominate every average.
        content = [
            pos > 0 and tok not in special and s >= start and e <= end and e > s
            for pos, (tok, (s, e)) in enumerate(zip(ids, offsets, strict=True))
        ]
        if not any(content):
            raise ValueError(f"Text has no tokens to average over: {text!r}.")
        out.append(_Text(emotion, sign, list(ids), content))
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
        "sign": torch.tensor([t.sign for t in batch], device=device),
    }


class _Accumulator:
    """Running sums per layer: signed per-text means, and neutral token norms."""

    def __init__(self, num_layers: int, num_emotions: int) -> None:
        self.shape = (num_layers, num_emotions)
        self.diff_sums: torch.Tensor | None = None  # [layers, emotions, hidden], on first use
        self.norm_sums = torch.zeros(num_layers, dtype=torch.float64)
        self.norm_counts = torch.zeros(num_layers, dtype=torch.float64)
        self.batch: dict[str, torch.Tensor] = {}

    def add(self, layer: int, hidden: torch.Tensor) -> None:
        batch = self.batch
        content = batch["content"]
        hidden = hidden.float()
        weights = content / content.sum(dim=1, keepdim=True)
        means = torch.einsum("bth,bt->bh", hidden, weights) * batch["sign"][:, None]
        if self.diff_sums is None:
            self.diff_sums = torch.zeros(*self.shape, hidden.shape[-1], dtype=torch.float64)
        self.diff_sums[layer].index_add_(0, batch["emotion"].cpu(), means.double().cpu())
        neutral = content * (batch["sign"] < 0)[:, None]
        self.norm_sums[layer] += float((hidden.norm(dim=-1) * neutral).sum())
        self.norm_counts[layer] += float(neutral.sum())


def _hook(accumulator: _Accumulator, layer: int, last: bool) -> Any:
    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        accumulator.add(layer, layer_output(output))
        if last:
            raise _StopForward

    return hook


def extract(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Mapping[str, Iterable[object]] | None = None,
    *,
    emotions: Sequence[str] | None = None,
    template: Template = "plain",
    batch_size: int = 32,
    max_length: int = 512,
    layers: str | Sequence[nn.Module] | None = None,
    recommended_layers: Sequence[int] | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> EmotionVectors:
    """Extract one vector per emotion and decoder layer from paired texts.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer (a fast tokenizer: offsets locate the story's tokens).
        pairs: ``{emotion: [(emotional, neutral), ...]}`` (tuples, :class:`PromptPair` or
            ``{"emotional", "neutral"}`` dicts). Default: the shipped pairs.
        emotions: Which shipped emotions to use when ``pairs`` is not given.
        template: ``"plain"`` feeds the texts as they are; ``"chat"`` wraps each as the
            assistant's reply in the model's chat template (averaging only over the reply).
        batch_size: Texts per forward pass.
        max_length: Longest text accepted, in tokens.
        layers: Override for where the decoder blocks are (see :func:`find_layers`).
        recommended_layers: Layer band stored in the bank as the default for steering;
            default: :func:`default_layer_band`.
        model_name: Name recorded in the bank; default: the model's ``name_or_path``.
        progress: Show a progress bar.

    Returns:
        The bank, with per-layer mean neutral hidden norms for relative steering.
    """
    if template not in ("plain", "chat"):
        raise ValueError(f"template must be 'plain' or 'chat', not {template!r}.")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template='chat' needs a tokenizer with a chat template; this one has "
            "none, so use template='plain'."
        )
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    checked = validate_pairs(pairs) if pairs is not None else default_pairs(emotions)
    names = list(checked)
    texts = [
        (index, sign, text)
        for index, emotion in enumerate(names)
        for pair in checked[emotion]
        for sign, text in ((1.0, pair.emotional), (-1.0, pair.neutral))
    ]
    encoded = _encode(tokenizer, texts, template, max_length)
    blocks = find_layers(model, layers)
    device = input_device(model)
    accumulator = _Accumulator(len(blocks), len(names))
    handles = [
        block.register_forward_hook(_hook(accumulator, i, last=i == len(blocks) - 1))
        for i, block in enumerate(blocks)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        with torch.inference_mode():
            for batch in tqdm(
                _batches(encoded, batch_size), desc="extracting", disable=not progress, unit="batch"
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

    assert accumulator.diff_sums is not None  # validate_pairs guarantees at least one batch
    counts = torch.tensor([len(checked[e]) for e in names], dtype=torch.float64)
    means = accumulator.diff_sums / counts[None, :, None]
    vectors = {e: means[:, i].float() for i, e in enumerate(names)}
    norms = (accumulator.norm_sums / accumulator.norm_counts.clamp_min(1)).float()
    return EmotionVectors(
        vectors,
        norms,
        model_name=model_name or str(getattr(model.config, "name_or_path", "") or "unknown"),
        layers=recommended_layers
        if recommended_layers is not None
        else default_layer_band(len(blocks)),
        settings={
            "method": "mean_difference",
            "reading": "mean_over_text_tokens",
            "template": template,
            "pairs_per_emotion": {e: len(checked[e]) for e in names},
            "excluded": "position 0 and special tokens",
        },
    )
