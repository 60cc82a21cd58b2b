"""Checked numbers for steering: strengths, layer weights, the dose guard, the norms check.

Private to :mod:`emovec.steering` and :mod:`emovec.hooks`; the error and warning types are
public there. Every number that reaches a hook passes through here: NaN, infinities, bools
and strings where numbers belong are refused with an error that says what to write instead,
and a dose that overflows is refused rather than clamped to nonsense.
"""

from __future__ import annotations

import math
import operator
import statistics
import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any, Literal

import torch

DoseGuard = Literal["warn", "clamp", "raise"]
GUARDS: tuple[DoseGuard, ...] = ("warn", "clamp", "raise")

# Live hidden norms more than this factor away from the bank's are warned about.
NORM_TOLERANCE = 2.0


class DoseError(ValueError):
    """Raised when steering cannot be given the asked strength.

    With ``guard="raise"`` when the dose exceeds ``max_dose``; always for strengths, layer
    weights or ``max_dose`` that are NaN or infinite, and for strengths so large that the
    vectors overflow (float32, or the model's dtype).
    """


class DoseWarning(UserWarning):
    """Warned when the steering dose exceeds ``max_dose`` (and when it is clamped)."""


class HiddenNormWarning(DoseWarning):
    """Warned when the model's hidden states are far from the norms the vector bank records.

    Relative doses are measured in the bank's hidden norms, so a bank extracted from another
    model (or dtype, or prompt format) steers with a dose off by the same factor.
    """


def number(value: object, what: str, hint: str = "") -> float:
    """``value`` as a finite float; a bool, string or other non-number is refused."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{what} must be a number, not {value!r} ({type(value).__name__}).{hint}")
    result = float(value)
    if not math.isfinite(result):
        raise DoseError(f"{what} must be finite, not {result}.")
    return result


def count(value: object, what: str) -> int:
    """``value`` as a positive integer (a batch size, a number of steps or queries); a
    bool, float or anything below 1 is refused: ``range(0, n, 0)`` fails obscurely and a
    negative size silently does nothing."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}.")
    return int(value)


def checked_strengths(given: Mapping[Any, Any], what: str = "strength") -> dict[str, float]:
    """Emotion → α, every α a finite number (see :func:`number`)."""
    if not isinstance(given, Mapping):
        raise TypeError(
            f"Strengths must be a mapping of emotion to α such as {{'joy': 1.0}}, not {given!r}."
        )
    checked = {}
    for emotion, alpha in given.items():
        if not isinstance(emotion, str):
            raise TypeError(f"Emotion names must be strings, not {emotion!r}.")
        hint = f" Write {emotion}=1.0, not {emotion}='1'." if emotion.isidentifier() else ""
        checked[emotion] = number(alpha, f"The {what} of {emotion!r}", hint)
    return checked


def max_dose_of(value: object) -> float:
    """``max_dose`` checked: a positive number; ``math.inf`` turns the guard off."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"max_dose must be a number, not {value!r} ({type(value).__name__}).")
    result = float(value)
    if math.isnan(result) or result <= 0:
        raise DoseError(
            f"max_dose must be a positive number (math.inf turns the guard off), not {result}."
        )
    return result


def _layer_index(index: object, num_layers: int) -> int:
    if isinstance(index, bool):
        raise TypeError(f"Layer indices must be integers, not {index!r}.")
    try:
        position = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"Layer indices must be integers, not {index!r}.") from None
    if not -num_layers <= position < num_layers:
        raise ValueError(
            f"Layer {position} is out of range for {num_layers} layers (0..{num_layers - 1}; "
            "negative indices count from the end)."
        )
    return position % num_layers


def layer_weights(
    num_layers: int, layers: Sequence[int] | Mapping[int, float] | str
) -> dict[int, float]:
    """Layer index → weight, from indices or a ``range``, ``{layer: weight}``, or ``"all"``."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be indices, a mapping or 'all', not {layers!r}.")
        return dict.fromkeys(range(num_layers), 1.0)
    if isinstance(layers, Mapping):
        items = list(layers.items())
    elif hasattr(layers, "__iter__"):
        items = [(i, 1.0) for i in layers]
    else:
        raise TypeError(
            f"layers must be indices, a range, a {{layer: weight}} mapping or 'all', "
            f"not {layers!r}."
        )
    if not items:
        raise ValueError(f"layers is empty: out of range for steering ({num_layers} layers).")
    weights: dict[int, float] = {}
    for index, weight in items:
        layer = _layer_index(index, num_layers)
        weights[layer] = number(weight, f"The weight of layer {layer}")
    return weights


def doses_of(per_layer: torch.Tensor, hidden_norms: torch.Tensor) -> torch.Tensor:
    """Per row ``Σ_l ‖Δ_l‖ / ‖h_l‖`` (float64) of ``per_layer`` ``[rows, layers, hidden]``.

    Raises:
        DoseError: when the deltas are not finite (strengths or weights so large that
            float32 overflows).
    """
    if not bool(torch.isfinite(per_layer).all()):
        raise DoseError(
            "These strengths overflow: the steering vectors reach infinity in float32. Use "
            "strengths and layer weights of a sensible size (α = 1 is the everyday dose)."
        )
    norms = per_layer.double().norm(dim=-1)  # float64: a float32 norm of big deltas overflows
    return (norms / hidden_norms.double()[None]).sum(dim=1)


def guard_factors(doses: torch.Tensor, limits: torch.Tensor, guard: str) -> torch.Tensor:
    """Per-row factors (1 where the dose is within the row's limit, float64) after the guard
    policy; ``limits`` holds each row's ``max_dose``."""
    if guard not in GUARDS:
        raise ValueError(f"guard must be 'warn', 'clamp' or 'raise', not {guard!r}.")
    limits = limits.to(doses.dtype)
    over = doses > limits
    ones = torch.ones_like(doses)
    if not bool(over.any()):
        return ones
    worst = int(torch.argmax(torch.where(over, doses / limits, 0)))
    limit = float(limits[worst])
    message = (
        f"Steering dose {float(doses[worst]):.3g} exceeds max_dose={limit:g} (a dose of 1 "
        "adds a typical hidden state's norm across the steered layers; on SmolLM2 output "
        "degenerates into repetition near 1.0). Lower α, or pass a larger max_dose to accept it."
    )
    if guard == "raise":
        raise DoseError(message)
    if guard == "clamp":
        warnings.warn(message + f" Clamped to {limit:g}.", DoseWarning, stacklevel=4)
        return torch.where(over, limits / doses, ones)
    warnings.warn(message, DoseWarning, stacklevel=4)
    return ones


def cast_delta(
    delta: torch.Tensor, device: torch.device, dtype: torch.dtype, layer: int
) -> torch.Tensor:
    """``delta`` on ``device`` in ``dtype``; refused if that dtype cannot hold it, or if
    its square summed over the hidden size would overflow float32 (the precision models
    normalise in): the next norm then makes every logit NaN and the answer empty."""
    cast = delta.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(cast).all()):
        raise DoseError(
            f"The steering vector for layer {layer} is not finite in {dtype} (largest value "
            f"{float(delta.abs().max()):.3g}): lower the strengths, or steer in float32."
        )
    limit = math.sqrt(torch.finfo(torch.float32).max / max(delta.shape[-1], 1))
    largest = float(delta.detach().abs().max())
    if largest > limit:
        raise DoseError(
            f"The steering vector for layer {layer} reaches {largest:.3g}, "
            f"beyond {limit:.3g}, where the model's normalisation overflows and every logit "
            "is NaN: lower the strengths."
        )
    return cast


def median_norm(hidden: torch.Tensor, sink_ratio: float) -> float:
    """The median ``‖h‖`` over a call's positions, leaving out attention sinks (above
    ``sink_ratio`` times the median)."""
    norms = hidden.detach().float().norm(dim=-1).flatten()
    norms = norms[torch.isfinite(norms)]
    if not norms.numel():
        return math.nan
    return float(norms[norms <= sink_ratio * norms.median()].median())


def check_hidden_norms(live: Mapping[int, float], recorded: Mapping[int, float]) -> None:
    """Warn (:class:`HiddenNormWarning`) where ``live`` and ``recorded`` norms differ more
    than ``NORM_TOLERANCE`` times; both map layer index → norm."""
    ratios = {
        layer: live[layer] / recorded[layer]
        for layer in sorted(live)
        if math.isfinite(live[layer]) and live[layer] > 0 and recorded.get(layer, 0) > 0
    }
    off = [i for i, r in ratios.items() if not 1 / NORM_TOLERANCE <= r <= NORM_TOLERANCE]
    if not off:
        return
    ratio = statistics.median(ratios[i] for i in off)
    here = statistics.median(live[i] for i in off)
    there = statistics.median(recorded[i] for i in off)
    warnings.warn(
        f"The model's hidden states at layers {off} are {ratio:.2g}x the norms the vector "
        f"bank records (median |h| {here:.3g} here, {there:.3g} in the bank): the bank was "
        "made for another model, dtype or setup, so its doses are off by that factor. Load "
        "the bank made for this model, or extract one with emovec.extract(model, tokenizer).",
        HiddenNormWarning,
        stacklevel=2,
    )
