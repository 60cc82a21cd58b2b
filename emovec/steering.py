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

Methods (how ``delta_l`` meets the hidden state ``h`` at a steered position):
    ``"add"`` (default): ``h + delta_l``, the paper's rule.
    ``"project"``: lift ``h``'s component along ``delta_l`` to ``‖delta_l‖`` (what ``add``
    would add to a position with no such component), by at most ``2‖delta_l‖``: a position
    that already carries the emotion is not pushed further, one that points away is pushed
    harder. Attention sinks (``‖h‖`` above ``SINK_RATIO`` typical norms) are left alone.
    ``"angular"``: rotate ``h`` toward ``h + delta_l`` keeping ``‖h‖``.
A :class:`Schedule` varies the strength over the generated tokens.

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

from emovec.hooks import SINK_RATIO, Method, Positions, Schedule, Steering
from emovec.layers import default_layer_band, find_layers, hidden_size_of
from emovec.vectors import EmotionVectors, Scale, SteeringVector

__all__ = [
    "MAX_DOSE",
    "PRESETS",
    "RELATIVE_DOSE",
    "SINK_RATIO",
    "DoseError",
    "DoseGuard",
    "DoseWarning",
    "Method",
    "Positions",
    "Schedule",
    "Steering",
    "VectorModelMismatchError",
    "steer",
]

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


def _same_vectors(a: EmotionVectors, b: EmotionVectors) -> bool:
    """Whether two banks hold the same vectors and norms (placements may differ)."""
    return a is b or (
        a.emotions == b.emotions
        and torch.equal(a.hidden_norms, b.hidden_norms)
        and all(torch.equal(a.vector(e), b.vector(e)) for e in a.emotions)
    )


def _as_vector(bank: EmotionVectors, row: Mapping[str, float] | SteeringVector) -> SteeringVector:
    """A row's mix; a row may come from a copy of the bank with other placements."""
    if isinstance(row, SteeringVector):
        if not _same_vectors(row.bank, bank):
            raise ValueError(
                "Every row must combine emotions of the same bank (or of copies of it that "
                "differ only in placements)."
            )
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
    method: Method = "add",
    schedule: Schedule | None = None,
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
            Default: the positions the emotions' placements were calibrated for, else
            ``"all"`` (``"generated"`` for ``method="project"``: lifting the prompt's
            positions too loses the question).
        method: ``"add"`` (default), ``"project"`` or ``"angular"``; see the module docstring.
        schedule: A :class:`Schedule` of the strength over generated tokens.
        rows: One mix per batch row, e.g. ``[{"joy": 1}, {"anger": 0.8}, {}]``, so one batched
            ``generate`` serves different emotions; ``vectors`` must then be the bank. A row
            may be a combination from a copy of the bank with other placements
            (``vecs.with_placements(...)["joy"]``), so rows can differ in layers and dose.
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
    defaults: dict[str, Any] = {
        "layers": None,
        "scale": "relative",
        "positions": "generated" if method == "project" else "all",
    }
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; known: {sorted(PRESETS)}.")
        defaults.update(PRESETS[preset])
    layers = defaults["layers"] if layers is None else layers
    scale = defaults["scale"] if scale is None else scale

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

    if positions is None:
        positions = _placed_positions(mixes) if layers is None else None
        positions = positions or defaults["positions"]
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
    return Steering(
        model,
        blocks,
        deltas,
        positions=positions,
        method=method,
        schedule=schedule,
        hidden_norms={layer: float(bank.hidden_norms[layer]) for layer in chosen},
        dose=(doses * factors).tolist(),
    )


def _placed_positions(mixes: Sequence[SteeringVector]) -> Positions | None:
    """The positions the mixes' placements were calibrated for (``None``: none recorded)."""
    recorded = {
        placement.positions
        for mix in mixes
        for emotion in mix.coefficients
        if (placement := mix.bank.placements.get(emotion)) is not None and placement.positions
    }
    if len(recorded) > 1:
        raise ValueError(
            f"The steered emotions were calibrated for different positions {sorted(recorded)}; "
            "pass positions= to choose one."
        )
    return recorded.pop() if recorded else None  # type: ignore[return-value]


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
