"""Emotion read-out: how far each token's hidden state points along each emotion's vector.

At each layer ``l`` of a band, a token's hidden state ``h`` (the output of decoder block
``l``, what row ``l`` of a bank refers to) is projected on the emotion's unit direction and
divided by the layer's mean hidden norm (the bank's ``hidden_norms``), so layers of different
scale weigh alike: ``p_e,l = <h, v_e,l / ‖v_e,l‖> / hidden_norms[l]``. The band's layers are
averaged. A text's read-out is the mean over its content tokens, as extraction reads a text:
never position 0 (an attention sink), never special tokens.

Texts are batched by length and right-padded: under a causal mask a token never attends to
the padding after it, and its positions stay 0, 1, …, so a text reads the same alone or in
any batch.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._scope import reading_hook, scoped_reading
from emovec._texts import _batches, _collate, _encode, _Item
from emovec.layers import (
    context_length,
    default_layer_band,
    find_blocks,
    hidden_size_of,
    layer_output,
)
from emovec.models import input_device
from emovec.vectors import EmotionVectors

__all__ = ["ReadOut", "read"]


@dataclass(frozen=True)
class ReadOut:
    """Per-token and per-text projections of hidden states on a bank's emotion vectors.

    Attributes:
        texts: The texts read, in the order given.
        emotions: The bank's emotions, the column order of every array.
        layers: The band read (its projections are averaged).
        tokens: Per text, the decoded string of every token fed (special tokens included).
        content: Per text, which tokens are read (``False``: position 0, special tokens).
        token_projections: Per text, ``[tokens, emotions]``: each token's projection averaged
            over the band (non-content tokens too, for display; they never enter a mean).
        layer_projections: ``[texts, layers, emotions]``: per layer, the mean over the
            text's content tokens.
    """

    texts: tuple[str, ...]
    emotions: tuple[str, ...]
    layers: tuple[int, ...]
    tokens: tuple[tuple[str, ...], ...]
    content: tuple[np.ndarray, ...]
    token_projections: tuple[np.ndarray, ...]
    layer_projections: np.ndarray

    @property
    def text_projections(self) -> np.ndarray:
        """``[texts, emotions]``: each text's mean over content tokens and band layers."""
        return self.layer_projections.mean(axis=1)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows: Sequence[int]) -> ReadOut:
        """The read-out of the texts at ``rows`` only, in that order (e.g. a train/test split
        of texts read once)."""
        picked = [int(r) for r in rows]
        if any(not -len(self) <= r < len(self) for r in picked):
            raise IndexError(f"rows {picked} are not all within the {len(self)} texts read.")
        return ReadOut(
            texts=tuple(self.texts[r] for r in picked),
            emotions=self.emotions,
            layers=self.layers,
            tokens=tuple(self.tokens[r] for r in picked),
            content=tuple(self.content[r] for r in picked),
            token_projections=tuple(self.token_projections[r] for r in picked),
            layer_projections=self.layer_projections[picked],
        )

    def _column(self, emotion: str | None) -> int:
        if emotion is None:
            return 0
        if emotion not in self.emotions:
            raise KeyError(f"Unknown emotion {emotion!r}; this read-out has {list(self.emotions)}.")
        return self.emotions.index(emotion)

    def to_html(self, emotion: str | None = None) -> str:
        """An HTML heat-map: one line per text, each token coloured by ``emotion``'s
        projection (default: the first emotion) relative to the mean over all content tokens
        shown; orange above it, blue below, white at it. Non-content tokens are grey; the
        exact value is in each token's tooltip. All text is escaped."""
        column = self._column(emotion)
        read = [p[c, column] for p, c in zip(self.token_projections, self.content, strict=True)]
        values = np.concatenate(read) if read else np.zeros(0)
        centre = float(values.mean()) if values.size else 0.0
        spread = float(np.abs(values - centre).max()) if values.size else 0.0
        spread = spread if spread > 0 else 1.0
        name = html.escape(self.emotions[column])
        lines = []
        for tokens, keep, projections in zip(
            self.tokens, self.content, self.token_projections, strict=True
        ):
            spans = []
            for token, kept, value in zip(tokens, keep, projections[:, column], strict=True):
                shown = html.escape(token).replace("\n", "↵")
                if not kept:
                    spans.append(f'<span style="color:#999">{shown}</span>')
                    continue
                level = max(-1.0, min(1.0, (float(value) - centre) / spread))
                colour = (
                    f"rgba(230,120,20,{level:.3f})"
                    if level >= 0
                    else f"rgba(40,110,220,{-level:.3f})"
                )
                spans.append(
                    f'<span style="background:{colour}" title="{name} {float(value):+.4f}">'
                    f"{shown}</span>"
                )
            lines.append(f'<div style="white-space:pre-wrap">{"".join(spans)}</div>')
        band = f"{self.layers[0]}–{self.layers[-1]}" if self.layers else ""
        caption = f"<p>{name} read-out, layers {html.escape(band)}</p>"
        return f'<div class="emovec-readout">{caption}{"".join(lines)}</div>'

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_markdown(self, width: int = 60) -> str:
        """A table: each text (cut to ``width`` characters, ``|`` escaped) with its mean
        projection on every emotion."""
        head = "| text | " + " | ".join(self.emotions) + " |"
        rule = "|---|" + "---:|" * len(self.emotions)
        rows = []
        for text, values in zip(self.texts, self.text_projections, strict=True):
            flat = " ".join(text.split())
            cut = flat if len(flat) <= width else flat[: width - 1] + "…"
            cells = " | ".join(f"{v:+.4f}" for v in values)
            rows.append(f"| {cut.replace('|', chr(92) + '|')} | {cells} |")
        return "\n".join([head, rule, *rows])


class _StopForward(Exception):
    """Raised after the deepest band layer: nothing later is needed."""


def _band(vectors: EmotionVectors, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        layers = vectors.recommended_layers or default_layer_band(vectors.num_layers)
    chosen = sorted({int(layer) for layer in layers})
    if not chosen or any(not 0 <= layer < vectors.num_layers for layer in chosen):
        raise ValueError(
            f"layers={list(layers)} must be a non-empty set of layer indices in "
            f"0..{vectors.num_layers - 1} (the bank's layers)."
        )
    return chosen


def _directions(vectors: EmotionVectors, band: Sequence[int]) -> torch.Tensor:
    """``[band, emotions, hidden]``: unit directions divided by the layer's hidden norm."""
    raw = torch.stack([vectors.vector(e)[band] for e in vectors.emotions], dim=1)
    norms = raw.norm(dim=-1, keepdim=True)
    zero = [(vectors.emotions[e], band[b]) for b, e in (norms[..., 0] == 0).nonzero().tolist()]
    if zero:
        raise ValueError(f"No direction to read along: (emotion, layer) {zero} are zero vectors.")
    return raw / norms / vectors.hidden_norms[band][:, None, None]


def _hook(
    store: dict[int, torch.Tensor], directions: torch.Tensor, index: int, last: bool, key: object
) -> Any:
    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        hidden = layer_output(output).float()
        store[index] = torch.einsum("bth,eh->bte", hidden, directions.to(hidden.device)).cpu()
        if last:
            raise _StopForward

    return reading_hook(key, hook)


def read(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    vectors: EmotionVectors,
    *,
    layers: Sequence[int] | None = None,
    queries: Sequence[str] | None = None,
    batch_size: int = 16,
    blocks: str | Sequence[nn.Module] | None = None,
    progress: bool = True,
) -> ReadOut:
    """Read each text's hidden states along each of the bank's emotion vectors.

    Args:
        model: The model the bank was extracted from.
        tokenizer: Its tokenizer.
        texts: Texts to read, read plainly (with the tokenizer's special tokens).
        vectors: The bank; its emotions are the read-out's columns.
        layers: The band to average over; default the bank's recommended layers (else
            :func:`emovec.layers.default_layer_band`).
        queries: Optionally one query per text: each text is then read as the answer to its
            query (the query fed in the chat template, as generation formats it, but not read).
        batch_size: Texts per forward pass.
        blocks: The decoder blocks, for models :func:`emovec.layers.find_blocks` does not
            understand.
        progress: Show a progress bar.

    Returns:
        The :class:`ReadOut`.

    Raises:
        ValueError: On a bank that does not fit the model, bad layers, a text with no
            content token, too long a text, or a query count that differs from the texts'.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("Give at least one text to read.")
    if queries is not None and len(queries) != len(texts):
        raise ValueError(f"Give one query per text: {len(queries)} for {len(texts)} texts.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    hooked = find_blocks(model, blocks)
    if len(hooked) != vectors.num_layers:
        raise ValueError(
            f"The bank has {vectors.num_layers} layers but the model has {len(hooked)}: read "
            f"with the bank extracted from this model ({vectors.model_name!r} made this one)."
        )
    width = hidden_size_of(model)
    if width is not None and width != vectors.hidden_size:
        raise ValueError(
            f"The bank's vectors have {vectors.hidden_size} dimensions but the model's hidden "
            f"states {width}: read with the bank extracted from this model."
        )
    band = _band(vectors, layers)
    directions = _directions(vectors, band)
    contexts = list(queries) if queries is not None else [""] * len(texts)
    items = [_Item(0, i, 1.0, c, t) for i, (c, t) in enumerate(zip(contexts, texts, strict=True))]
    encoded = _encode(tokenizer, items, "plain", False, context_length(model))
    store: dict[int, torch.Tensor] = {}
    key = object()
    handles = [
        hooked[layer].register_forward_hook(
            _hook(store, directions[b], b, last=b == len(band) - 1, key=key)
        )
        for b, layer in enumerate(band)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = input_device(model)
    per_token: list[np.ndarray | None] = [None] * len(texts)
    per_layer = np.zeros((len(texts), len(band), len(vectors)), dtype=np.float64)
    try:
        with torch.inference_mode(), scoped_reading(key):
            for batch in tqdm(_batches(encoded, batch_size), desc="reading", disable=not progress):
                inputs = _collate(batch, pad_id, device)
                store.clear()
                with contextlib.suppress(_StopForward):
                    model(
                        input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"],
                        use_cache=False,
                    )
                stacked = torch.stack([store[b] for b in range(len(band))], dim=2).double()
                for row, text in enumerate(batch):  # [tokens, band, emotions] per text
                    values = stacked[row, : len(text.input_ids)].numpy()
                    keep = np.asarray(text.content, dtype=bool)
                    per_token[text.slot] = values.mean(axis=1)
                    per_layer[text.slot] = values[keep].mean(axis=0)
    finally:
        for handle in handles:
            handle.remove()
    order = sorted(encoded, key=lambda t: t.slot)
    return ReadOut(
        texts=tuple(texts),
        emotions=tuple(vectors.emotions),
        layers=tuple(band),
        tokens=tuple(tuple(str(tokenizer.decode([i])) for i in t.input_ids) for t in order),
        content=tuple(np.asarray(t.content, dtype=bool) for t in order),
        token_projections=tuple(p for p in per_token if p is not None),
        layer_projections=per_layer,
    )
