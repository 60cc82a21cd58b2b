"""A bank's similarity matrix and its notebook display (behind :class:`EmotionVectors`).

The similarity of two emotions over a layer band is the mean over the band's layers of the
cosine between their vectors at each layer: every layer counts the same, although vectors grow
with depth (concatenating the rows would let the deepest layers decide).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emovec._placement import Placement, layer_indices

if TYPE_CHECKING:  # matplotlib is optional (the [eval] extra): imported when plotting
    from matplotlib.figure import Figure

__all__ = ["Similarity", "bank_html", "similarity"]


@dataclass(frozen=True)
class Similarity:
    """Cosine similarities between a bank's emotions over a layer band.

    Attributes:
        emotions: Row and column names, in the bank's order.
        matrix: ``[emotions, emotions]``, the mean over ``layers`` of each layer's cosine;
            ``nan`` for a pair whose vectors are zero at every layer of the band.
        layers: The layers averaged over.
    """

    emotions: tuple[str, ...]
    matrix: torch.Tensor
    layers: tuple[int, ...]

    def __getitem__(self, pair: tuple[str, str]) -> float:
        """``similarity["joy", "anger"]``."""
        a, b = (self.emotions.index(e) if e in self.emotions else -1 for e in pair)
        if a < 0 or b < 0:
            raise KeyError(f"Unknown emotion in {pair!r}; the matrix has {list(self.emotions)}.")
        return float(self.matrix[a, b])

    def to_markdown(self) -> str:
        """The matrix as a Markdown table."""
        names = [html.escape(e) for e in self.emotions]
        lines = [f"| {_band(self.layers)} | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
        for name, row in zip(names, self.matrix.tolist(), strict=True):
            lines.append(f"| {name} | {' | '.join(f'{v:.2f}' for v in row)} |")
        return "\n".join(lines) + "\n"

    def plot(self) -> Figure:
        """A heat-map of the matrix with each cell's value written in (needs matplotlib)."""
        from matplotlib.figure import Figure

        n = len(self.emotions)
        figure = Figure(figsize=(1.0 * n + 2.0, 0.9 * n + 1.2), layout="tight")
        axes = figure.add_subplot()
        image = axes.imshow(self.matrix.numpy(), vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        for i in range(n):
            for j in range(n):
                axes.text(j, i, f"{float(self.matrix[i, j]):.2f}", ha="center", va="center")
        axes.set_xticks(range(n), list(self.emotions), rotation=45, ha="right")
        axes.set_yticks(range(n), list(self.emotions))
        axes.set_title(f"cosine similarity, layers {_band(self.layers)}")
        figure.colorbar(image, ax=axes)
        return figure


def _band(layers: Sequence[int]) -> str:
    """``"12–16"`` for a contiguous band, else ``"3, 5, 9"``."""
    if len(layers) > 1 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}"
    return ", ".join(str(i) for i in layers)


def similarity(
    vectors: Mapping[str, torch.Tensor],
    layers: Sequence[int] | None,
    default: Sequence[int] | None,
) -> Similarity:
    """The :class:`Similarity` of ``vectors`` (each ``[num_layers, hidden]``) over ``layers``,
    else ``default`` (the recommended band), else every layer."""
    num_layers = int(next(iter(vectors.values())).shape[0])
    band = layers if layers is not None else default
    chosen = layer_indices(range(num_layers) if band is None else band, "layers")
    if not chosen or not all(0 <= i < num_layers for i in chosen):
        raise ValueError(f"layers must be indices in 0..{num_layers - 1}, not {list(chosen)}.")
    stacked = torch.stack([v[list(chosen)].double() for v in vectors.values()])  # [E, L, H]
    unit = stacked / stacked.norm(dim=-1, keepdim=True)  # nan rows where a vector is zero
    cosines = torch.einsum("alh,blh->lab", unit, unit)
    matrix = cosines.nanmean(dim=0).clamp(-1.0, 1.0).float()
    return Similarity(tuple(vectors), matrix, chosen)


def bank_html(
    model_name: str,
    emotions: Sequence[str],
    shape: tuple[int, int],
    recommended: Sequence[int] | None,
    placements: Mapping[str, Placement],
) -> str:
    """A compact HTML table of a bank for notebooks, every text escaped."""
    band = _band(recommended) if recommended else "none"
    columns = ["emotion", "layers", "dose", "instruction", "persona"]
    if not any(p.persona for p in placements.values()):
        columns.pop()  # compact: no persona column when no emotion has one
    rows = []
    for emotion in emotions:
        placement = placements.get(emotion)
        cells = (
            [emotion, f"band {band}", "default", "", ""]
            if placement is None
            else [
                emotion,
                _band(placement.layers),
                f"{placement.dose:g}",
                placement.instruction or "",
                placement.persona or "",
            ]
        )[: len(columns)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{name}</th>" for name in columns)
    return (
        f"<div><b>EmotionVectors</b> of <code>{html.escape(model_name)}</code>: "
        f"{len(emotions)} emotion{'' if len(emotions) == 1 else 's'}, "
        f"{shape[0]} layers × {shape[1]} hidden, recommended "
        f"layers {html.escape(band)}"
        f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
