"""EmotionDecode: what a direction says in words, layer by layer (the logit lens).

A direction at layer ``l`` (an emotion vector's row, a steering combination, or the mean
representation of a set of stimuli) is read as if it were the model's last hidden state:
``logits = head(norm(v_l))``, through the model's final norm and LM head (found
structurally, see :mod:`emovec.analysis._lens`), and its top-k tokens are reported. This is
EmotionDecode of Li et al. ("The Good, The Bad, and Why"), who average the representations of
the emotional stimuli per layer into a "meta" vector (:func:`stimulus_meta_vector`) and decode
it through the LM head.

With ``norm=True`` (default, the usual logit lens) the row is first rescaled to the layer's
typical hidden-state norm (the bank's ``hidden_norms``; a raw tensor is used as given), so the
norm's ε acts as on a real hidden state; RMS and layer norms are otherwise scale-free, and a
layer norm's bias is added as it is for every hidden state. With ``norm=False`` the head reads
the row directly (``W_U · v``, plus any head bias): the direction's pure vocabulary reading,
free of the norm's per-dimension gains. Logits are the head's, before any soft-capping the
model applies afterwards (ranks are the same).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._placement import layer_indices
from emovec._reading import _sums
from emovec._texts import Reading, _Item
from emovec.analysis._lens import LensError, find_lens
from emovec.layers import find_blocks
from emovec.vectors import SteeringVector

__all__ = [
    "DecodedLayer",
    "DecodedToken",
    "Decoding",
    "LensError",
    "decode",
    "stimulus_meta_vector",
]


@dataclass(frozen=True)
class DecodedToken:
    """One decoded token: its text (``tokenizer.decode([id])``), id and logit."""

    token: str
    id: int
    logit: float


@dataclass(frozen=True)
class DecodedLayer:
    """The top-k tokens of one layer's row, best first (``layer`` is ``None`` for a single
    ``[hidden]`` direction)."""

    layer: int | None
    tokens: tuple[DecodedToken, ...]


def _shown(token: str) -> str:
    """A token's text for a table: surrounding spaces trimmed, line breaks and pipes escaped."""
    text = token.strip().replace("\n", "\\n").replace("\t", "\\t").replace("|", "\\|")
    return text or repr(token)


@dataclass(frozen=True)
class Decoding:
    """Decoded layers of one direction.

    Attributes:
        label: What was decoded (``"joy"``, ``"0.5*joy + 0.5*anger"``, ``"direction"``).
        rows: Per requested layer, its top-k tokens.
        norm: Whether the final norm was applied.
    """

    label: str
    rows: tuple[DecodedLayer, ...]
    norm: bool

    @property
    def layers(self) -> list[int | None]:
        """The decoded layers, in order."""
        return [row.layer for row in self.rows]

    def top(self, layer: int | None = None) -> list[str]:
        """The decoded token texts of ``layer`` (default: the only or the last row)."""
        row = self.rows[-1] if layer is None else self._row(layer)
        return [t.token for t in row.tokens]

    def _row(self, layer: int) -> DecodedLayer:
        for row in self.rows:
            if row.layer == layer:
                return row
        raise KeyError(f"Layer {layer} was not decoded; decoded layers: {self.layers}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "label": self.label,
            "norm": self.norm,
            "layers": [
                {"layer": r.layer, "tokens": [vars(t) for t in r.tokens]} for r in self.rows
            ],
        }

    def to_markdown(self, *, logits: bool = False) -> str:
        """A table: one line per layer with its top tokens (and their logits if ``logits``);
        the tokens' ``<``, ``>`` and ``&`` are HTML-escaped, so a renderer shows them."""
        lines = [f"| {html.escape(self.label)} layer | top tokens |", "|---:|---|"]
        for row in self.rows:
            texts = [html.escape(_shown(t.token), quote=False) for t in row.tokens]
            shown = [
                f"{text} ({t.logit:.1f})" if logits else text
                for text, t in zip(texts, row.tokens, strict=True)
            ]
            lines.append(f"| {'-' if row.layer is None else row.layer} | {', '.join(shown)} |")
        return "\n".join(lines) + "\n"

    def plot(self) -> Figure:
        """A grid: one row per layer, one column per rank, each cell the token coloured by
        its logit (relative to that layer's best)."""
        k = max((len(r.tokens) for r in self.rows), default=0)
        figure = Figure(figsize=(1.1 * k + 1.5, 0.35 * len(self.rows) + 1.2), layout="tight")
        axes = figure.add_subplot()
        grid = torch.full((len(self.rows), k), float("nan"))
        for i, row in enumerate(self.rows):
            for j, token in enumerate(row.tokens):
                grid[i, j] = token.logit - row.tokens[0].logit
                axes.text(j, i, _shown(token.token)[:12], ha="center", va="center", fontsize=7)
        image = axes.imshow(grid.numpy(), aspect="auto", cmap="Blues_r", interpolation="none")
        figure.colorbar(image, ax=axes, label="logit − the layer's best")
        axes.set_xticks(range(k), [str(j + 1) for j in range(k)])
        names = ["-" if layer is None else str(layer) for layer in self.layers]
        axes.set_yticks(range(len(self.rows)), names)
        axes.set_xlabel("rank")
        axes.set_ylabel("layer")
        how = "through the final norm and LM head" if self.norm else "by the LM head"
        axes.set_title(f"{self.label}: decoded {how}")
        return figure


def _label(coefficients: dict[str, float]) -> str:
    """``"joy"``, ``"0.5*joy - 0.3*fear"``."""
    parts = []
    for i, (emotion, c) in enumerate(coefficients.items()):
        term = emotion if abs(c) == 1 else f"{abs(c):g}*{emotion}"
        sign = ("-" if c < 0 else "") if i == 0 else (" - " if c < 0 else " + ")
        parts.append(sign + term)
    return "".join(parts)


def _rows_of(
    direction: SteeringVector | torch.Tensor, norm: bool
) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """The label, the rows ``[num_layers, hidden]`` (or ``[1, hidden]``), and each row's
    target norm (``None``: keep the rows' own)."""
    if isinstance(direction, SteeringVector):
        bank = direction.bank
        if not direction.coefficients:
            raise ValueError(f"{direction!r} is zero: give it a non-zero strength to decode.")
        total = torch.zeros(bank.num_layers, bank.hidden_size)
        for emotion, coefficient in direction.coefficients.items():
            total += coefficient * bank.unit_vector(emotion)
        return _label(direction.coefficients), total, bank.hidden_norms if norm else None
    if isinstance(direction, torch.Tensor):
        if direction.dim() not in (1, 2) or direction.shape[-1] == 0:
            raise ValueError(
                "A raw direction must be [hidden] or [num_layers, hidden], not shape "
                f"{list(direction.shape)}."
            )
        rows = direction.detach().float().cpu().reshape(-1, direction.shape[-1])
        if not torch.isfinite(rows).all():
            raise ValueError("The direction has non-finite values.")
        return "direction", rows, None
    raise TypeError(
        "decode() takes a SteeringVector (vecs['joy'], 0.5*vecs['joy'] + ...) or a tensor "
        f"[hidden] / [num_layers, hidden], not {type(direction).__name__}. For a bank, "
        "decode each emotion: decode(model, tokenizer, vecs[emotion])."
    )


def _chosen_layers(layers: Sequence[int] | None, count: int, flat: bool) -> list[int]:
    if flat:
        if layers is not None:
            raise ValueError("A [hidden] direction has no layers: pass layers=None.")
        return [0]
    chosen = list(range(count)) if layers is None else list(layer_indices(layers, "layers"))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad or not chosen:
        raise ValueError(f"layers must be indices in 0..{count - 1}, not {list(layers or [])}.")
    return chosen


def decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    direction: SteeringVector | torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    k: int = 10,
    norm: bool = True,
) -> Decoding:
    """The top-k tokens of a direction at each requested layer, read through the LM head.

    Args:
        model: The causal LM the direction comes from.
        tokenizer: Its tokenizer (for the tokens' text).
        direction: ``vecs["joy"]`` or any combination of one bank's emotions (decoded in the
            bank's relative units: each emotion's row scaled to the layer's hidden norm), a
            tensor ``[num_layers, hidden]`` (row ``l``: the output of block ``l``, such as
            :func:`stimulus_meta_vector` returns) or ``[hidden]`` (one direction).
        layers: Rows to decode (default: all).
        k: Tokens per layer.
        norm: Apply the model's final norm first (see the module docstring).

    Raises:
        ValueError: on a zero or malformed direction, a direction of another shape than the
            model's (layers, hidden size), layers out of range, or ``k < 1``.
        TypeError: on a direction of another type.
        LensError: when the model's head (or, with ``norm``, its final norm) is not found.
    """
    label, rows, targets = _rows_of(direction, norm)
    flat = isinstance(direction, torch.Tensor) and direction.dim() == 1
    if not flat:
        blocks = len(find_blocks(model))
        if rows.shape[0] != blocks:
            raise ValueError(
                f"The direction has {rows.shape[0]} layers but the model has {blocks} decoder "
                "blocks: decode a direction with the model it was extracted from."
            )
    chosen = _chosen_layers(layers, rows.shape[0], flat)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}.")
    lens = find_lens(model, norm=norm)
    width = lens.head.weight.shape[-1] if isinstance(lens.head, nn.Linear) else rows.shape[-1]
    if rows.shape[-1] != width:
        raise ValueError(
            f"The direction has hidden size {rows.shape[-1]}, the model's head reads {width}."
        )
    picked = rows[chosen]
    lengths = picked.norm(dim=-1, keepdim=True)
    if (lengths == 0).any():
        zero = [chosen[i] for i in (lengths[:, 0] == 0).nonzero()[:, 0].tolist()]
        raise ValueError(f"The direction is zero at layers {zero}: nothing to decode there.")
    if targets is not None:
        picked = picked * (targets[chosen][:, None] / lengths)
    logits = lens.logits(picked, norm=norm)
    values, ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
    decoded = tuple(
        DecodedLayer(
            layer=None if flat else layer,
            tokens=tuple(
                DecodedToken(str(tokenizer.decode([i])), i, v)
                for i, v in zip(ids[row].tolist(), values[row].tolist(), strict=True)
            ),
        )
        for row, layer in enumerate(chosen)
    )
    return Decoding(label=label, rows=decoded, norm=norm)


def stimulus_meta_vector(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    last_token: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """The "meta" vector of a set of stimuli: per decoder layer, the mean representation.

    Each text is read at the output of every block as extraction reads a text (the mean over
    its tokens, never position 0 nor special tokens; or its last such token with
    ``last_token``); the readings are averaged over the texts. Decode it with :func:`decode`.

    Returns:
        ``[num_layers, hidden]`` float32 on the CPU.

    Raises:
        ValueError: on no texts, an empty text, or ``batch_size < 1``.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"Give a list of non-empty texts, not {texts!r}.")
    if not texts:
        raise ValueError("Give at least one text.")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    items = [_Item(0, slot, 1.0, "", text) for slot, text in enumerate(texts)]
    reading: Reading = "last" if last_token else "mean"
    sums = _sums(
        model, tokenizer, items, 1, reading=reading, batch_size=batch_size, progress=progress
    )
    return (sums.differences[:, 0] / len(texts)).float()
