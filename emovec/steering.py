"""Steering generation: forward hooks that add emotion vectors to the residual stream.

``with steer(model, vecs, joy=1.0): model.generate(...)`` adds, at the output of each chosen
decoder layer ``l``, ``delta_l = Σ_k α_k · u_l^(k)`` to every position's hidden state, where
``u^(k)`` is emotion ``k``'s vector in the chosen scale. Hooks are added on entry and removed
on exit, also when the body raises; nothing about the model is modified otherwise.

Scales:
    ``"relative"`` (default): each emotion's layer vector is rescaled to the typical hidden
    norm of that layer (recorded at extraction) and multiplied by
    ``RELATIVE_DOSE / number_of_steered_layers``. So at α = 1 the emotion adds, summed over
    the steered band, ``RELATIVE_DOSE`` times a typical hidden state's norm, whatever the
    model, the band width, or the emotion's raw vector norm.
    ``"raw"``: α times the raw mean difference, the paper's "1×".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from emovec.layers import find_layers, hidden_size_of, layer_output, replace_layer_output
from emovec.vectors import EmotionVectors, Scale, SteeringVector

Positions = Literal["all", "last"]

__all__ = ["RELATIVE_DOSE", "Steering", "VectorModelMismatchError", "steer"]

# Measured on SmolLM2-135M-Instruct (README, "Strength"): at 1.0 every basic emotion is clear
# and answers stay fluent; repetition sets in around 2-3x.
RELATIVE_DOSE = 0.5


class VectorModelMismatchError(ValueError):
    """Raised when a vector bank was extracted from a model of a different shape."""


def _block_placement(block: nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in block.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


class Steering:
    """Hooks adding a fixed per-layer vector to a model's decoder layers.

    Use as a context manager (re-enterable after exit) or with :meth:`apply` / :meth:`remove`
    where ``with`` does not fit, such as notebook cells. Build it with :func:`steer`.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        deltas: dict[int, torch.Tensor],
        positions: Positions = "all",
    ) -> None:
        if positions not in ("all", "last"):
            raise ValueError(f"positions must be 'all' or 'last', not {positions!r}.")
        self.positions = positions
        self._targets: list[tuple[int, nn.Module, torch.Tensor]] = []
        for index, delta in sorted(deltas.items()):
            device, dtype = _block_placement(blocks[index])
            # Cast and move once here, not on every forward step.
            self._targets.append((index, blocks[index], delta.to(device=device, dtype=dtype)))
        self._handles: list[RemovableHandle] = []

    @property
    def layers(self) -> list[int]:
        """Indices of the hooked layers (empty when every strength is zero)."""
        return [index for index, _, _ in self._targets]

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def deltas(self) -> list[torch.Tensor]:
        """What each hooked layer adds to every hidden state, in layer order."""
        return [delta for _, _, delta in self._targets]

    def apply(self) -> Steering:
        """Start steering. Raises if this steering is already applied."""
        if self._handles:
            raise RuntimeError("This steering is already applied; remove() it first.")
        try:
            for _, block, delta in self._targets:
                self._handles.append(
                    block.register_forward_hook(_adding_hook(delta, self.positions))
                )
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Stop steering; safe to call when not applied."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> Steering:
        return self.apply()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _adding_hook(delta: torch.Tensor, positions: Positions) -> Any:
    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        hidden = layer_output(output)
        if positions == "last":
            # Only the newest position of each forward call: the last prompt token at
            # prefill, then each generated token (earlier ones come from the KV cache).
            hidden = torch.cat([hidden[:, :-1], hidden[:, -1:] + delta], dim=1)
        else:
            hidden = hidden + delta
        return replace_layer_output(output, hidden)

    return hook


def _check_fits(bank: EmotionVectors, model: nn.Module, blocks: Sequence[nn.Module]) -> None:
    hidden = hidden_size_of(model)
    if bank.num_layers != len(blocks) or (hidden is not None and bank.hidden_size != hidden):
        raise VectorModelMismatchError(
            f"These vectors come from {bank.model_name!r} ({bank.num_layers} layers x "
            f"{bank.hidden_size} hidden) but {type(model).__name__} has {len(blocks)} layers x "
            f"{hidden} hidden. Load the vector file made for this model, or extract one with "
            "emovec.extract(model, tokenizer)."
        )


def _resolve_layers(bank: EmotionVectors, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        if bank.layers:
            return list(bank.layers)
        from emovec.extraction import default_layer_band

        return default_layer_band(bank.num_layers)
    n = bank.num_layers
    if not layers or any(not -n <= int(i) < n for i in layers):
        raise ValueError(f"layers {list(layers)} out of range for {n} layers (0..{n - 1}).")
    return sorted({int(i) % n for i in layers})


def steer(
    model: nn.Module,
    vectors: EmotionVectors | SteeringVector,
    /,
    *,
    layers: Sequence[int] | None = None,
    scale: Scale = "relative",
    positions: Positions = "all",
    block_layers: str | Sequence[nn.Module] | None = None,
    **alphas: float,
) -> Steering:
    """Steer ``model`` with emotion vectors while the returned object is applied.

    Args:
        model: The model the vectors were extracted from (same layer count and width).
        vectors: A bank, with strengths given as keyword arguments (``joy=1.0,
            sadness=-0.5``), or a combination such as ``0.7 * vecs["joy"] - 0.3 * vecs["fear"]``.
        layers: Decoder layers to steer (negative indices count from the end); default: the
            bank's recommended band.
        scale: ``"relative"`` (α = 1 is the everyday strength on any model) or ``"raw"``
            (α times the raw mean difference). See the module docstring.
        positions: ``"all"`` steers every position; ``"last"`` only the newest position of
            each forward call (the paper's released mode).
        block_layers: Where the decoder blocks are, for models :func:`find_layers` misses.
        **alphas: Strength per emotion when ``vectors`` is a bank. Negative suppresses.

    Returns:
        A :class:`Steering`; use it with ``with`` or call ``apply()`` / ``remove()``.

    Raises:
        KeyError: for an emotion the bank does not have.
        VectorModelMismatchError: when the vectors were made for a differently shaped model.
    """
    if isinstance(vectors, EmotionVectors):
        combination = SteeringVector(vectors, alphas)
    elif isinstance(vectors, SteeringVector):
        if alphas:
            raise TypeError("Give emotion strengths either as a combination or as keywords.")
        combination = vectors
    else:
        raise TypeError(f"Expected EmotionVectors or SteeringVector, got {type(vectors)}.")
    bank = combination.bank
    blocks = find_layers(model, block_layers)
    _check_fits(bank, model, blocks)
    chosen = _resolve_layers(bank, layers)
    tensor = combination.tensor(scale)
    weight = RELATIVE_DOSE / len(chosen) if scale == "relative" else 1.0
    deltas = {i: tensor[i] * weight for i in chosen if bool(tensor[i].any())}
    return Steering(blocks, deltas, positions)
