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
:class:`~emovec.vectors.Placement` for (found by :func:`emovec.evaluation.calibrate`) is
steered at its own layers, and α = 1 is its own calibrated dose rather than ``RELATIVE_DOSE``:
emotions differ in where a model carries them and how much push they take.

Methods (how ``delta_l`` meets the hidden state ``h`` at a steered position):
    ``"add"`` (default): ``h + delta_l``, the paper's rule.
    ``"project"``: lift ``h``'s component along ``delta_l`` to ``‖delta_l‖`` (what ``add``
    would add to a position with no such component), by at most ``2‖delta_l‖``: a position
    that already carries the emotion is not pushed further, one that points away is pushed
    harder. Attention sinks (``‖h‖`` above ``SINK_RATIO`` typical norms) are left alone.
    ``"angular"``: rotate ``h`` toward ``h + delta_l`` keeping ``‖h‖``.
A :class:`Schedule` varies the factor on α over the generated tokens.

Dose: ``Σ_l ‖delta_l‖ / typical ‖h_l‖`` over the steered layers, what the residual stream
receives in units of a hidden state. α = 1 in relative scale is a dose of 0.5; on SmolLM2
repetition takes over by a dose of 1.0 for a mean difference. Above ``MAX_DOSE`` (or 1.5
times a calibrated placement's dose, if larger: a trained vector carries a larger dose
fluently) steering warns (or clamps, or raises, as asked): never silently. Strengths,
weights and doses that are NaN, infinite or overflow are refused (:class:`DoseError`). On
its first forward pass a steering compares the model's hidden norms at the steered layers
with the bank's and warns (:class:`HiddenNormWarning`) when they are more than 2x apart: a
bank made for another model or dtype steers with a dose off by that factor.

Scope: a steering acts only in the context (thread, asyncio task) that entered it; see
:func:`steer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, overload

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._doses import (
    DoseError,
    DoseGuard,
    DoseWarning,
    HiddenNormWarning,
    checked_strengths,
    doses_of,
    guard_factors,
    layer_weights,
    max_dose_of,
)
from emovec._placement import Schedule
from emovec.chat import Asking, SteeredChat
from emovec.hooks import SINK_RATIO, Method, Positions, Steering
from emovec.layers import default_layer_band, find_blocks, hidden_size_of
from emovec.vectors import EmotionVectors, Scale, SteeringVector

__all__ = [
    "MAX_DOSE",
    "PRESETS",
    "RELATIVE_DOSE",
    "SINK_RATIO",
    "DoseError",
    "DoseGuard",
    "DoseWarning",
    "HiddenNormWarning",
    "Method",
    "Positions",
    "Schedule",
    "Steering",
    "VectorModelMismatchError",
    "added",
    "steer",
]

Layers = Sequence[int] | Mapping[int, float]
Mix = Mapping[str, float] | SteeringVector

# Measured on SmolLM2-135M-Instruct (docs/strength-and-calibration.md): at α = 1 the target
# emotion's score rises on most answers for all five emotions and most answers stay fluent; at
# 2 repetition takes over.
RELATIVE_DOSE = 0.5
MAX_DOSE = 0.75

# Named settings; "paper" is Dong et al.'s released mode: every layer, the raw mean
# difference added once per unit of α, at the newest position of each forward call only.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"layers": "all", "scale": "raw", "positions": "last"},
}


class VectorModelMismatchError(ValueError):
    """Raised when a vector bank was extracted from a model of a different shape."""


def _check_fits(bank: EmotionVectors, model: nn.Module, blocks: Sequence[nn.Module]) -> None:
    hidden = hidden_size_of(model)
    if bank.num_layers != len(blocks) or (hidden is not None and bank.hidden_size != hidden):
        raise VectorModelMismatchError(
            f"These vectors come from {bank.model_name!r} ({bank.num_layers} layers x "
            f"{bank.hidden_size} hidden) but {type(model).__name__} has {len(blocks)} layers x "
            f"{hidden} hidden. Load the vector file made for this model, or extract one with "
            "emovec.extract(model, tokenizer)."
        )


def _band(bank: EmotionVectors) -> list[int]:
    """The bank's recommended layers, else the default band."""
    recorded = bank.recommended_layers
    return list(recorded) if recorded else default_layer_band(bank.num_layers)


def _same_vectors(a: EmotionVectors, b: EmotionVectors) -> bool:
    """Whether two banks hold the same vectors and norms (placements may differ)."""
    return a is b or (
        a.emotions == b.emotions
        and torch.equal(a.hidden_norms, b.hidden_norms)
        and all(torch.equal(a.vector(e), b.vector(e)) for e in a.emotions)
    )


def _as_vector(bank: EmotionVectors, row: Mix) -> SteeringVector:
    """A row's mix; a row may come from a copy of the bank with other placements."""
    if isinstance(row, SteeringVector):
        if not _same_vectors(row.bank, bank):
            raise ValueError(
                "Every row must combine emotions of the same bank (or of copies of it that "
                "differ only in placements)."
            )
        return row
    return SteeringVector(bank, checked_strengths(row, "strength in rows"))


def _mixes(
    vectors: EmotionVectors | SteeringVector,
    given: Mapping[str, float] | None,
    alphas: Mapping[str, Any],
    rows: Sequence[Mix] | None,
) -> tuple[EmotionVectors, list[SteeringVector]]:
    """The bank and one mix per row (a single mix without ``rows``), numbers checked."""
    if given is not None:
        if alphas:
            raise TypeError("Give strengths either as a mapping or as keywords, not both.")
        alphas = checked_strengths(given)
    if isinstance(vectors, SteeringVector):
        if alphas or rows is not None:
            raise TypeError("Give strengths either as a combination, as keywords, or as rows.")
        return vectors.bank, [vectors]
    if not isinstance(vectors, EmotionVectors):
        raise TypeError(f"Expected EmotionVectors or SteeringVector, got {type(vectors)}.")
    if rows is None:
        return vectors, [SteeringVector(vectors, checked_strengths(alphas))]
    if alphas:
        raise TypeError("Give strengths either as keywords or as rows, not both.")
    if not rows:
        raise ValueError("rows is empty: give one mix per batch row.")
    return vectors, [_as_vector(vectors, row) for row in rows]


@overload
def steer(
    model: nn.Module,
    vectors: EmotionVectors | SteeringVector,
    strengths: Mapping[str, float] | None = None,
    /,
    *,
    layers: Layers | str | None = None,
    scale: Scale | None = None,
    positions: Positions | None = None,
    method: Method = "add",
    schedule: Schedule | None = None,
    rows: Sequence[Mix] | None = None,
    preset: str | None = None,
    max_dose: float | None = None,
    guard: DoseGuard = "warn",
    blocks: str | Sequence[nn.Module] | None = None,
    tokenizer: None = None,
    **alphas: float,
) -> Steering: ...


@overload
def steer(
    model: nn.Module,
    vectors: EmotionVectors | SteeringVector,
    strengths: Mapping[str, float] | None = None,
    /,
    *,
    layers: Layers | str | None = None,
    scale: Scale | None = None,
    positions: Positions | None = None,
    method: Method = "add",
    schedule: Schedule | None = None,
    rows: Sequence[Mix] | None = None,
    preset: str | None = None,
    max_dose: float | None = None,
    guard: DoseGuard = "warn",
    blocks: str | Sequence[nn.Module] | None = None,
    tokenizer: PreTrainedTokenizerBase,
    **alphas: float,
) -> SteeredChat: ...


def steer(
    model: nn.Module,
    vectors: EmotionVectors | SteeringVector,
    strengths: Mapping[str, float] | None = None,
    /,
    *,
    layers: Layers | str | None = None,
    scale: Scale | None = None,
    positions: Positions | None = None,
    method: Method = "add",
    schedule: Schedule | None = None,
    rows: Sequence[Mix] | None = None,
    preset: str | None = None,
    max_dose: float | None = None,
    guard: DoseGuard = "warn",
    blocks: str | Sequence[nn.Module] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **alphas: float,
) -> Steering:
    """Steer ``model`` with emotion vectors while the returned object is applied.

    ``with steer(model, vecs, joy=1.0): model.generate(...)`` steers the calls made inside the
    block by the same thread or asyncio task: steering is scoped to the :mod:`contextvars`
    context that entered it. Another thread generating with the same model meanwhile runs
    plain (a :class:`threading.Thread` starts in a fresh context); a task created inside
    the block is steered (tasks copy their context). To steer a ``generate`` run in a
    thread, e.g. beside a ``TextIteratorStreamer``, run it in a copy of the context:
    ``Thread(target=contextvars.copy_context().run, args=(model.generate,), kwargs=...)``.
    ``apply()`` / ``remove()`` do the same without ``with``: ``apply()`` steers the context
    it is called in (in a notebook, the later cells) until ``remove()``, called from any
    context, takes the hooks off. To serve several emotions at once, give ``rows=``.

    Args:
        model: The model the vectors were extracted from (same layer count and width). Calls
            must go through this module for ``positions="prompt"``/``"generated"``.
        vectors: A bank, with strengths given as keyword arguments (``joy=1.0,
            sadness=-0.5``) or as a mapping, or a combination such as
            ``0.7 * vecs["joy"] - 0.3 * vecs["fear"]``.
        strengths: Emotion → α as a mapping, ``steer(model, vecs, {"joy": 1.0})``: the same
            as keywords, for any emotion name (also one spelled like an option).
        layers: Decoder layers to steer: indices or a ``range`` (negative indices count from
            the end), ``{layer: weight}`` to weight layers, or ``"all"``; every emotion is
            then steered there, α = 1 being a dose of ``RELATIVE_DOSE``. Default: each
            emotion's placement in the bank (its calibrated layers and dose, see
            :class:`~emovec.vectors.Placement`), else the bank's recommended layers.
        scale: ``"relative"`` (default; α = 1 is the everyday strength on any model) or
            ``"raw"`` (α times the raw mean difference). See the module docstring.
        positions: ``"all"`` (default), ``"prompt"`` (only the prompt's positions),
            ``"generated"`` (only generated tokens), or ``"last"`` (the newest position as
            each token is read: the prompt's last position and every generated one; a lone
            forward call: its last position). The same with and without the KV cache, with
            beam search and with left padding. Default: the positions the emotions'
            placements were calibrated for, else ``"all"`` (``"generated"`` for
            ``method="project"``: lifting the prompt's positions too loses the question).
        method: ``"add"`` (default), ``"project"`` or ``"angular"``; see the module docstring.
        schedule: A :class:`Schedule` of the factor on α over generated tokens.
        rows: One mix per batch row, e.g. ``[{"joy": 1}, {"anger": 0.8}, {}]``, so one batched
            ``generate`` serves different emotions; ``vectors`` must then be the bank. A row
            may be a combination from a copy of the bank with other placements
            (``vecs.with_placements(...)["joy"]``), so rows can differ in layers and dose.
        preset: Named defaults for ``layers``/``scale``/``positions``; ``"paper"`` is Dong
            et al.'s mode (all layers, raw, last position). Explicit arguments win.
        max_dose: Dose above which ``guard`` acts (see the module docstring); ``math.inf``
            turns the guard off. Default: ``MAX_DOSE`` (1.5 times the default dose), or for
            a row steered at calibrated placements 1.5 times the largest of their doses,
            whichever is larger: α = 1 of a calibrated placement was measured fluent.
        guard: ``"warn"`` (default), ``"clamp"`` (scale the row down to ``max_dose`` and
            warn), or ``"raise"`` (:class:`DoseError`).
        blocks: The decoder blocks (a dotted attribute path or the modules), for models
            :func:`find_blocks` misses.
        tokenizer: The model's tokenizer, for the one call: the steering then also asks as
            the bank was calibrated (instruction, persona, query guidance, decoding; see
            :mod:`emovec.chat`): ``steer(model, vecs, joy=1.0, tokenizer=tok).answer(q)``.
            Without it ``steer`` adds the vectors only.
        **alphas: Strength per emotion when ``vectors`` is a bank. Negative suppresses.

    Returns:
        A :class:`Steering`; use it with ``with`` or call ``apply()`` / ``remove()``.
        ``deltas()`` gives what it adds at each layer. With ``tokenizer``, a
        :class:`~emovec.chat.SteeredChat`, which also answers: ``answer``, ``stream``,
        ``messages`` and ``generate_kwargs``.

    Raises:
        KeyError: for an emotion the bank does not have.
        TypeError: for strengths, weights or ``max_dose`` that are not numbers (bools and
            strings such as ``"1"`` included), and for strengths given two ways.
        VectorModelMismatchError: when the vectors were made for a differently shaped model.
        DoseError: for NaN or infinite strengths, weights or ``max_dose``, strengths so large
            the vectors overflow, and with ``guard="raise"`` a dose above ``max_dose``.
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
    if scale not in ("relative", "raw"):
        raise ValueError(f"scale must be 'relative' or 'raw', not {scale!r}.")
    max_dose = None if max_dose is None else max_dose_of(max_dose)
    bank, mixes = _mixes(vectors, strengths, alphas, rows)

    if positions is None:
        positions = _placed_option(mixes, "positions") if layers is None else None
        positions = positions or defaults["positions"]
    if schedule is None and layers is None:
        schedule = _placed_option(mixes, "schedule")
    found = find_blocks(model, blocks)
    _check_fits(bank, model, found)
    explicit = None if layers is None else layer_weights(bank.num_layers, layers)
    per_layer, chosen, doses = _guarded(bank, mixes, scale, explicit, max_dose, guard)
    deltas = {
        layer: per_layer[:, layer] if rows is not None else per_layer[0, layer] for layer in chosen
    }
    options: dict[str, Any] = {
        "positions": positions,
        "method": method,
        "schedule": schedule,
        "hidden_norms": {layer: float(bank.hidden_norms[layer]) for layer in chosen},
        "dose": doses.tolist(),
    }
    if tokenizer is None:
        return Steering(model, found, deltas, **options)
    # The placements' prompts go with their layers and doses: not with layers= given.
    asking = [
        Asking.of(mix.coefficients, mix.bank.placements) if explicit is None else Asking()
        for mix in mixes
    ]
    return SteeredChat(
        model,
        found,
        deltas,
        tokenizer=tokenizer,
        bank=bank,
        asking=asking,
        rows=rows is not None,
        **options,
    )


def added(
    vectors: EmotionVectors | SteeringVector,
    strengths: Mapping[str, float] | None = None,
    /,
    *,
    layers: Layers | str | None = None,
    scale: Scale = "relative",
    max_dose: float | None = None,
    guard: DoseGuard = "warn",
    **alphas: float,
) -> torch.Tensor:
    """What :func:`steer` adds at each layer for one mix, without a model.

    The same rule as ``steer`` (placements, scale, the dose guard), so the non-zero rows are
    ``steer(model, vectors, ..., method="add").deltas()``: what a file for another engine
    (:mod:`emovec.control_vectors`) must hold to steer as emovec does.

    Args:
        vectors, strengths, layers, scale, max_dose, guard, **alphas: As for :func:`steer`.

    Returns:
        ``[num_layers, hidden_size]`` float32, zero at the layers not steered.

    Raises:
        KeyError, TypeError, DoseError: As :func:`steer` raises them.
    """
    if scale not in ("relative", "raw"):
        raise ValueError(f"scale must be 'relative' or 'raw', not {scale!r}.")
    limit = None if max_dose is None else max_dose_of(max_dose)
    bank, mixes = _mixes(vectors, strengths, alphas, None)
    explicit = None if layers is None else layer_weights(bank.num_layers, layers)
    return _guarded(bank, mixes, scale, explicit, limit, guard)[0][0]


def _guarded(
    bank: EmotionVectors,
    mixes: Sequence[SteeringVector],
    scale: Scale,
    explicit: Mapping[int, float] | None,
    max_dose: float | None,
    guard: DoseGuard,
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Each row's additions ``[rows, L, H]`` after the dose guard, the layers any row
    steers, and each row's dose (float64)."""
    per_layer = torch.stack([_placed(mix, scale, explicit) for mix in mixes])
    chosen = [i for i in range(bank.num_layers) if bool(per_layer[:, i].any())]
    doses = doses_of(per_layer[:, chosen], bank.hidden_norms[chosen])
    limits = torch.tensor([_limit(mix, max_dose, explicit is None) for mix in mixes])
    factors = guard_factors(doses, limits, guard)
    if bool((factors != 1).any()):  # clamped rows: scale in float64, then back
        per_layer = (per_layer.double() * factors[:, None, None]).float()
    return per_layer, chosen, doses * factors


def _limit(mix: SteeringVector, max_dose: float | None, placed: bool) -> float:
    """The dose above which the guard acts for ``mix``: ``max_dose`` if given, else
    ``MAX_DOSE`` or, at calibrated placements, 1.5 times (``MAX_DOSE / RELATIVE_DOSE``) the
    largest of their doses, whichever is larger."""
    if max_dose is not None:
        return max_dose
    doses = [
        placement.dose
        for emotion in mix.coefficients
        if placed and (placement := mix.bank.placements.get(emotion)) is not None
    ]
    return max([MAX_DOSE, *(MAX_DOSE / RELATIVE_DOSE * d for d in doses)])


def _placed_option(mixes: Sequence[SteeringVector], name: str) -> Any:
    """The ``positions`` or ``schedule`` the mixes' placements were calibrated for (``None``:
    none recorded)."""
    recorded = {
        value
        for mix in mixes
        for emotion in mix.coefficients
        if (placement := mix.bank.placements.get(emotion)) is not None
        and (value := getattr(placement, name)) is not None
    }
    if len(recorded) > 1:
        raise ValueError(
            f"The steered emotions were calibrated for different {name} "
            f"{sorted(map(str, recorded))}; pass {name}= to choose one."
        )
    return recorded.pop() if recorded else None


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
            weights, dose = placement.layer_weights(), placement.dose
        else:
            weights, dose = dict.fromkeys(_band(bank), 1.0), RELATIVE_DOSE
        vector = bank.unit_vector(emotion) if scale == "relative" else bank.vector(emotion)
        unit = dose / len(weights) if scale == "relative" else 1.0
        for layer, weight in weights.items():
            total[layer] += coefficient * weight * unit * vector[layer]
    return total
