"""Steering generation: forward hooks that add emotion vectors to the residual stream.

``with steer(model, vecs, joy=1.0): model.generate(...)`` adds, at the output of each chosen
decoder layer ``l``, ``delta_l = Σ_k α_k · u_l^(k)`` to the hidden states, where ``u^(k)`` is
emotion ``k``'s vector in the chosen scale. Hooks are added on entry and removed on exit, also
when the body raises; nothing about the model is modified otherwise.

Scales:
    ``"relative"`` (default): each emotion's layer vector is rescaled to the typical hidden
    norm of that layer (recorded at extraction) and multiplied by
    ``RELATIVE_DOSE / number_of_steered_layers``. So at α = 1 the emotion adds, summed over
    the steered band, ``RELATIVE_DOSE`` times a typical hidden state's norm, whatever the
    model, the band width, or the emotion's raw vector norm.
    ``"raw"``: α times the raw mean difference, the paper's "1×".

Placements: without ``layers=``, an emotion the bank holds a
:class:`~emovec.vectors.Placement` for (found by :func:`emovec.calibration.calibrate`) is
steered at its own layers, and α = 1 is its own calibrated dose rather than ``RELATIVE_DOSE``:
emotions differ in where a model carries them and how much push they take.

Dose: ``Σ_l ‖delta_l‖ / typical ‖h_l‖`` over the steered layers, what the residual stream
receives in units of a hidden state. α = 1 in relative scale is a dose of 0.5; on SmolLM2
repetition takes over by a dose of 1.0. Above ``MAX_DOSE`` steering warns (or clamps, or
raises, as asked): never silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from emovec.layers import find_layers, hidden_size_of, layer_output, replace_layer_output
from emovec.vectors import EmotionVectors, Scale, SteeringVector

__all__ = [
    "MAX_DOSE",
    "PRESETS",
    "RELATIVE_DOSE",
    "DoseError",
    "DoseGuard",
    "DoseWarning",
    "Positions",
    "Steering",
    "VectorModelMismatchError",
    "steer",
]

Positions = Literal["all", "prompt", "generated", "last"]
DoseGuard = Literal["warn", "clamp", "raise"]
Layers = Sequence[int] | Mapping[int, float]

# Measured on SmolLM2-135M-Instruct (README, "Strength"): at α = 1 the target emotion's score
# rises on most answers for all five emotions and most answers stay fluent; at 2 repetition
# takes over.
RELATIVE_DOSE = 0.5
MAX_DOSE = 0.75

# Named settings; "paper" is Dong et al.'s released mode: every layer, the raw mean
# difference added once per unit of α, at the newest position of each forward call only.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"layers": "all", "scale": "raw", "positions": "last"},
}


class VectorModelMismatchError(ValueError):
    """Raised when a vector bank was extracted from a model of a different shape."""


class DoseError(ValueError):
    """Raised by ``guard="raise"`` when the steering dose exceeds ``max_dose``."""


class DoseWarning(UserWarning):
    """Warned when the steering dose exceeds ``max_dose`` (and when it is clamped)."""


def _block_placement(block: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    """Where the block computes, if its parameters say so (not for offloaded "meta" ones)."""
    for parameter in block.parameters():
        if parameter.is_floating_point():
            if parameter.device.type == "meta":
                return None
            return parameter.device, parameter.dtype
    return None


def _past_length(kwargs: Mapping[str, Any]) -> int:
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    # transformers ≥ 5.24 passes the cache as ``cache`` (and no ``cache_position``).
    past = kwargs.get("past_key_values", kwargs.get("cache"))
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple-of-tuples cache
        return int(past[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


class _CallTracker:
    """Knows, for the current forward call, where its positions sit in the sequence.

    With a KV cache, a call's first position is the cache length, and the prompt is whatever
    the first, cache-less call saw. Without a cache, ``generate`` re-runs the whole sequence
    one token longer each step; such a call continues the previous one. (So, without a cache,
    a new ``generate`` whose prompt is exactly the previous call's tokens plus one looks like
    a continuation: re-enter the steering between such calls, which resets this tracker.)
    """

    def __init__(self) -> None:
        self.offset = 0
        self.prompt_length: int | None = None
        self._previous: torch.Tensor | None = None

    def reset(self) -> None:
        self.offset, self.prompt_length, self._previous = 0, None, None

    def before_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        first = ids if isinstance(ids, torch.Tensor) else embeds
        if not isinstance(first, torch.Tensor):
            return
        width = int(first.shape[1])
        past = _past_length(kwargs)
        if past > 0:
            self.offset = past
            if self.prompt_length is None:  # steering began in the middle of a generation
                self.prompt_length = past
            return
        self.offset = 0
        previous = self._previous
        continues = (
            kwargs.get("use_cache") is False
            and isinstance(ids, torch.Tensor)
            and previous is not None
            and self.prompt_length is not None
            and ids.shape[0] == previous.shape[0]
            and ids.shape[1] == previous.shape[1] + 1
            and torch.equal(ids[:, :-1], previous)
        )
        if not continues:
            self.prompt_length = width
        self._previous = ids.detach() if isinstance(ids, torch.Tensor) else None


class Steering:
    """Hooks adding fixed per-layer vectors to a model's decoder layers.

    Use as a context manager (re-enterable after exit) or with :meth:`apply` / :meth:`remove`
    where ``with`` does not fit, such as notebook cells. Build it with :func:`steer`.

    Attributes:
        positions: Which positions are steered.
        dose: Per batch row (one entry unless ``rows`` was given), ``Σ_l ‖delta_l‖ / ‖h_l‖``
            after any clamping.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[nn.Module],
        deltas: Mapping[int, torch.Tensor],
        *,
        positions: Positions = "all",
        dose: Sequence[float] = (0.0,),
    ) -> None:
        if positions not in ("all", "prompt", "generated", "last"):
            raise ValueError(
                f"positions must be 'all', 'prompt', 'generated' or 'last', not {positions!r}."
            )
        self.positions: Positions = positions
        self.dose = list(dose)
        self._model = model
        self._tracker = _CallTracker()
        self._targets: list[tuple[int, nn.Module, torch.Tensor]] = []
        for index, delta in sorted(deltas.items()):
            placement = _block_placement(blocks[index])
            # Cast and move once here, not on every forward step (the hook corrects it once
            # more for blocks whose weights arrive at call time, e.g. accelerate offloading).
            if placement is not None:
                delta = delta.to(device=placement[0], dtype=placement[1])
            self._targets.append((index, blocks[index], delta))
        self._handles: list[RemovableHandle] = []

    @property
    def layers(self) -> list[int]:
        """Indices of the hooked layers (empty when every strength is zero)."""
        return [index for index, _, _ in self._targets]

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def deltas(self) -> list[torch.Tensor]:
        """What each hooked layer adds (``[hidden]``, or ``[rows, hidden]``), in layer order."""
        return [delta for _, _, delta in self._targets]

    def apply(self) -> Steering:
        """Start steering. Raises if this steering is already applied."""
        if self._handles:
            raise RuntimeError("This steering is already applied; remove() it first.")
        self._tracker.reset()
        try:
            if self._targets and self.positions in ("prompt", "generated"):
                self._handles.append(
                    self._model.register_forward_pre_hook(
                        self._tracker.before_forward, with_kwargs=True
                    )
                )
            for _, block, delta in self._targets:
                self._handles.append(block.register_forward_hook(self._hook(delta)))
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

    def _hook(self, delta: torch.Tensor) -> Any:
        positions, tracker = self.positions, self._tracker

        placed = {"delta": delta}

        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            hidden = layer_output(output)
            delta = placed["delta"]
            if delta.device != hidden.device or delta.dtype != hidden.dtype:
                delta = placed["delta"] = delta.to(device=hidden.device, dtype=hidden.dtype)
            added = delta
            if delta.dim() == 2:  # one mix per batch row
                if delta.shape[0] != hidden.shape[0]:
                    raise ValueError(
                        f"steer(rows=...) gave {delta.shape[0]} rows but the batch has "
                        f"{hidden.shape[0]}; pass one mix per row (sampling several sequences "
                        "per prompt multiplies the batch)."
                    )
                added = delta[:, None, :]
            if positions == "all":
                return replace_layer_output(output, hidden + added)
            if positions == "last":
                # The newest position of each call: the last prompt token at prefill, then
                # each generated token (earlier ones come from the KV cache).
                last = hidden[:, -1:] + (added if added.dim() == 3 else added[None, None])
                return replace_layer_output(output, torch.cat([hidden[:, :-1], last], dim=1))
            if tracker.prompt_length is None:
                raise RuntimeError(
                    f"positions={positions!r} needs the forward calls to go through the model "
                    "given to steer(), which tells prompt from generated positions."
                )
            absolute = tracker.offset + torch.arange(hidden.shape[1], device=hidden.device)
            generated = absolute >= tracker.prompt_length
            mask = generated if positions == "generated" else ~generated
            return replace_layer_output(output, hidden + added * mask[:, None].to(hidden.dtype))

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


def _layer_weights(bank: EmotionVectors, layers: Layers | str | None) -> dict[int, float]:
    """Layer index → weight, from a list/range, a ``{layer: weight}`` mapping, or "all"."""
    n = bank.num_layers
    if layers is None:
        if bank.layers:
            return dict.fromkeys(bank.layers, 1.0)
        from emovec.extraction import default_layer_band

        return dict.fromkeys(default_layer_band(n), 1.0)
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be indices, a mapping or 'all', not {layers!r}.")
        return dict.fromkeys(range(n), 1.0)
    items = list(layers.items()) if isinstance(layers, Mapping) else [(i, 1.0) for i in layers]
    if not items or any(not -n <= int(i) < n for i, _ in items):
        raise ValueError(f"layers {list(layers)} out of range for {n} layers (0..{n - 1}).")
    return {int(i) % n: float(w) for i, w in items}


def _guard(doses: torch.Tensor, max_dose: float, guard: DoseGuard) -> torch.Tensor:
    """Per-row factors (1 where the dose is fine) after applying the guard policy."""
    if guard not in ("warn", "clamp", "raise"):
        raise ValueError(f"guard must be 'warn', 'clamp' or 'raise', not {guard!r}.")
    over = doses > max_dose
    if not bool(over.any()):
        return torch.ones_like(doses)
    worst = float(doses.max())
    message = (
        f"Steering dose {worst:.2f} exceeds max_dose={max_dose:g} (a dose of 1 adds a typical "
        "hidden state's norm across the steered layers; on SmolLM2 output degenerates into "
        "repetition near 1.0). Lower α, or pass max_dose= to accept it."
    )
    if guard == "raise":
        raise DoseError(message)
    if guard == "clamp":
        warnings.warn(message + f" Clamped to {max_dose:g}.", DoseWarning, stacklevel=3)
        return torch.where(over, max_dose / doses, torch.ones_like(doses))
    warnings.warn(message, DoseWarning, stacklevel=3)
    return torch.ones_like(doses)


def _as_vector(bank: EmotionVectors, row: Mapping[str, float] | SteeringVector) -> SteeringVector:
    if isinstance(row, SteeringVector):
        if row.bank is not bank:
            raise ValueError("Every row must combine emotions of the same bank.")
        return row
    return SteeringVector(bank, row)


def steer(
    model: nn.Module,
    vectors: EmotionVectors | SteeringVector,
    /,
    *,
    layers: Layers | str | None = None,
    scale: Scale | None = None,
    positions: Positions | None = None,
    rows: Sequence[Mapping[str, float] | SteeringVector] | None = None,
    preset: str | None = None,
    max_dose: float = MAX_DOSE,
    guard: DoseGuard = "warn",
    block_layers: str | Sequence[nn.Module] | None = None,
    **alphas: float,
) -> Steering:
    """Steer ``model`` with emotion vectors while the returned object is applied.

    Args:
        model: The model the vectors were extracted from (same layer count and width). Calls
            must go through this module for ``positions="prompt"``/``"generated"``.
        vectors: A bank, with strengths given as keyword arguments (``joy=1.0,
            sadness=-0.5``), or a combination such as ``0.7 * vecs["joy"] - 0.3 * vecs["fear"]``.
        layers: Decoder layers to steer: indices or a ``range`` (negative indices count from
            the end), ``{layer: weight}`` to weight layers, or ``"all"``; every emotion is
            then steered there, α = 1 being a dose of ``RELATIVE_DOSE``. Default: each
            emotion's placement in the bank (its calibrated layers and dose, see
            :class:`~emovec.vectors.Placement`), else the bank's recommended band.
        scale: ``"relative"`` (default; α = 1 is the everyday strength on any model) or
            ``"raw"`` (α times the raw mean difference). See the module docstring.
        positions: ``"all"`` (default), ``"prompt"`` (only the prompt's positions),
            ``"generated"`` (only generated tokens), or ``"last"`` (the newest position of
            each forward call). Correct under the KV cache and with left padding.
        rows: One mix per batch row, e.g. ``[{"joy": 1}, {"anger": 0.8}, {}]``, so one batched
            ``generate`` serves different emotions; ``vectors`` must then be the bank.
        preset: Named defaults for ``layers``/``scale``/``positions``; ``"paper"`` is Dong
            et al.'s mode (all layers, raw, last position). Explicit arguments win.
        max_dose: Dose above which ``guard`` acts (see the module docstring).
        guard: ``"warn"`` (default), ``"clamp"`` (scale the row down to ``max_dose`` and
            warn), or ``"raise"`` (:class:`DoseError`).
        block_layers: Where the decoder blocks are, for models :func:`find_layers` misses.
        **alphas: Strength per emotion when ``vectors`` is a bank. Negative suppresses.

    Returns:
        A :class:`Steering`; use it with ``with`` or call ``apply()`` / ``remove()``.

    Raises:
        KeyError: for an emotion the bank does not have.
        VectorModelMismatchError: when the vectors were made for a differently shaped model.
        DoseError: with ``guard="raise"`` when the dose exceeds ``max_dose``.
    """
    defaults: dict[str, Any] = {"layers": None, "scale": "relative", "positions": "all"}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; known: {sorted(PRESETS)}.")
        defaults.update(PRESETS[preset])
    layers = defaults["layers"] if layers is None else layers
    scale = defaults["scale"] if scale is None else scale
    positions = defaults["positions"] if positions is None else positions

    if isinstance(vectors, SteeringVector):
        if alphas or rows is not None:
            raise TypeError("Give strengths either as a combination, as keywords, or as rows.")
        bank, mixes = vectors.bank, [vectors]
    elif isinstance(vectors, EmotionVectors):
        if rows is not None and alphas:
            raise TypeError("Give strengths either as keywords or as rows, not both.")
        bank = vectors
        mixes = (
            [_as_vector(bank, r) for r in rows]
            if rows is not None
            else [SteeringVector(bank, alphas)]
        )
        if not mixes:
            raise ValueError("rows is empty: give one mix per batch row.")
    else:
        raise TypeError(f"Expected EmotionVectors or SteeringVector, got {type(vectors)}.")

    blocks = find_layers(model, block_layers)
    _check_fits(bank, model, blocks)
    if scale not in ("relative", "raw"):
        raise ValueError(f"scale must be 'relative' or 'raw', not {scale!r}.")
    explicit = None if layers is None else _layer_weights(bank, layers)
    per_layer = torch.stack([_placed(mix, scale, explicit) for mix in mixes])  # [rows, L, H]
    chosen = [i for i in range(bank.num_layers) if bool(per_layer[:, i].any())]
    doses = (per_layer[:, chosen].norm(dim=-1) / bank.hidden_norms[chosen][None]).sum(dim=1)
    factors = _guard(doses, max_dose, guard)
    per_layer = per_layer * factors[:, None, None]
    deltas = {
        layer: per_layer[:, layer] if rows is not None else per_layer[0, layer] for layer in chosen
    }
    return Steering(model, blocks, deltas, positions=positions, dose=(doses * factors).tolist())


def _placed(
    mix: SteeringVector, scale: Scale, explicit: Mapping[int, float] | None
) -> torch.Tensor:
    """What ``mix`` adds at every layer, ``[num_layers, hidden]`` (zero where it adds nothing).

    With ``explicit`` layer weights every emotion is steered there, at ``RELATIVE_DOSE`` per
    unit of α in relative scale. Without, each emotion uses its bank placement (its own
    layers and dose), or the bank's band and ``RELATIVE_DOSE`` when it has none.
    """
    bank = mix.bank
    total = torch.zeros(bank.num_layers, bank.hidden_size)
    for emotion, coefficient in mix.coefficients.items():
        placement = bank.placements.get(emotion) if explicit is None else None
        if explicit is not None:
            weights, dose = explicit, RELATIVE_DOSE
        elif placement is not None:
            weights, dose = dict.fromkeys(placement.layers, 1.0), placement.dose
        else:
            weights, dose = _layer_weights(bank, None), RELATIVE_DOSE
        vector = bank.unit_vector(emotion) if scale == "relative" else bank.vector(emotion)
        unit = dose / len(weights) if scale == "relative" else 1.0
        for layer, weight in weights.items():
            total[layer] += coefficient * weight * unit * vector[layer]
    return total
