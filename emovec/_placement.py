"""Per-emotion placements (where and how strongly an emotion is steered by default) and the
:class:`Schedule` of the factor on α over generated tokens a placement may carry."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Placement", "Schedule", "layer_indices"]


def layer_indices(layers: object, what: str) -> tuple[int, ...]:
    """Sorted distinct layer indices; integers only (not bools, floats or digit strings)."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(f"{what} must be a sequence of layer indices, not {layers!r}.")
    indices = []
    for i in layers:
        if isinstance(i, bool) or not hasattr(type(i), "__index__"):
            raise TypeError(f"{what} must be integers, not {i!r} (in {layers!r}).")
        indices.append(operator.index(i))
    return tuple(sorted(set(indices)))


@dataclass(frozen=True)
class Schedule:
    """A factor on α over the generated tokens.

    ``begin`` for the first ``hold`` generated tokens, then linearly to ``end`` over ``ramp``
    tokens, then ``end``. Prompt positions (when steered) get factor 1.

    Examples:
        ``Schedule(begin=1.5, hold=8, end=0.5, ramp=16)``: strong while the answer sets its
        tone, then lighter. ``Schedule(begin=0.0, hold=4, end=1.0, ramp=8)``: ramp in once
        the answer has begun.
    """

    begin: float = 1.0
    hold: int = 0
    end: float = 1.0
    ramp: int = 1

    def __post_init__(self) -> None:
        for name in ("begin", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Schedule.{name} must be a number, not {value!r}.")
            if not math.isfinite(value):
                raise ValueError(f"Schedule.{name} must be finite, not {value}.")
        for name in ("hold", "ramp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Schedule.{name} must be an integer, not {value!r}.")
        if self.hold < 0 or self.ramp < 1:
            raise ValueError(f"Schedule needs hold >= 0 and ramp >= 1, not {self}.")

    def factors(self, generated_index: torch.Tensor) -> torch.Tensor:
        """Factor for each generated token index (0 = the first generated token)."""
        progress = ((generated_index - self.hold).to(torch.float32) / self.ramp).clamp(0, 1)
        return self.begin + (self.end - self.begin) * progress

    @property
    def label(self) -> str:
        """``"×0 for 6 tokens, then ×1 over 8"``."""
        return f"×{self.begin:g} for {self.hold} tokens, then ×{self.end:g} over {self.ramp}"

    def to_dict(self) -> dict[str, Any]:
        return {"begin": self.begin, "hold": self.hold, "end": self.end, "ramp": self.ramp}


@dataclass(frozen=True)
class Placement:
    """Where one emotion is steered, and how strongly α = 1 is, when no layers are given.

    Emotions differ in where a model carries them and how much push they take before the
    text breaks (on SmolLM2 sadness steers best at layers 8–12, joy at 12–16), so a bank
    may record one placement per emotion, found by :func:`emovec.evaluation.calibrate`.

    Attributes:
        layers: Decoder layers steered for this emotion (integers; stored sorted, once each).
        dose: The relative dose at α = 1 (``Σ_l ‖Δ_l‖ / typical ‖h_l‖`` over ``layers``;
            see :mod:`emovec.steering`).
        instruction: A short request for the emotion added to the user's turn beside the
            vector (the "hybrid" recipe), or ``None``. Hooks cannot change a prompt: the
            one call, ``steer(..., tokenizer=tok)`` (:class:`emovec.chat.SteeredChat`), adds
            it.
        persona: A system turn describing an emotional assistant, used instead of the
            model's default system prompt beside the vector, or ``None``
            (:meth:`EmotionVectors.persona`).
        positions: The positions steered (``"generated"``: only the answer's tokens), or
            ``None`` for ``steer``'s default.
        schedule: The factor on α over the generated tokens (a :class:`~emovec.Schedule`, or
            its ``to_dict()`` as read from a file), or ``None``: constant.
        query_guidance: How much the question is amplified against the prompt without it
            (≥ 1; :class:`emovec.guidance.QueryGuidance`), or ``None``: not at all.
            Like the instruction and persona it is applied by the one call.
        weights: How the dose is shared among ``layers``: one non-negative number per layer,
            in the order of ``layers``, relative to each other (:meth:`layer_weights` scales
            them to average 1), or ``None``: evenly. A trained bank
            (:func:`emovec.training.train`) records its learned per-layer sizes here, so
            that α = 1 adds exactly the trained vectors.
    """

    layers: tuple[int, ...]
    dose: float
    instruction: str | None = None
    persona: str | None = None
    positions: str | None = None
    schedule: Schedule | None = None
    query_guidance: float | None = None
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.weights is not None:
            layers, weights = _weighted_layers(self.layers, self.weights)
            object.__setattr__(self, "weights", weights)
            object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "layers", layer_indices(self.layers, "A placement's layers"))
        if isinstance(self.dose, (bool, str)) or not hasattr(type(self.dose), "__float__"):
            raise TypeError(f"A placement's dose must be a number, not {self.dose!r}.")
        try:
            object.__setattr__(self, "dose", float(self.dose))
        except OverflowError:
            raise ValueError(f"A placement's dose {self.dose} is not finite.") from None
        if not self.layers:
            raise ValueError("A placement needs at least one layer.")
        if not (math.isfinite(self.dose) and self.dose > 0):
            raise ValueError(f"A placement's dose must be finite and positive, not {self.dose}.")
        if self.positions not in (None, "all", "prompt", "generated", "last"):
            raise ValueError(
                "A placement's positions must be 'all', 'prompt', 'generated' or 'last', "
                f"not {self.positions!r}."
            )
        for name in ("instruction", "persona"):
            text = getattr(self, name)
            if text is not None and not (isinstance(text, str) and text.strip()):
                raise ValueError(f"A placement's {name} must be text, not {text!r}.")
        object.__setattr__(self, "schedule", _schedule(self.schedule))
        if self.query_guidance is not None:
            gamma = query_guidance_of(self.query_guidance, "A placement's query_guidance")
            object.__setattr__(self, "query_guidance", gamma)
            check_guided_steering(self.positions, self.schedule)

    def to_dict(self) -> dict[str, Any]:
        written: dict[str, Any] = {"layers": list(self.layers), "dose": self.dose}
        for name in ("instruction", "persona", "positions"):
            if getattr(self, name) is not None:
                written[name] = getattr(self, name)
        if self.schedule is not None:
            written["schedule"] = self.schedule.to_dict()
        if self.query_guidance is not None:
            written["query_guidance"] = self.query_guidance
        if self.weights is not None:
            written["weights"] = list(self.weights)
        return written

    @classmethod
    def exact(
        cls, vectors: torch.Tensor, hidden_norms: torch.Tensor, layers: Iterable[int]
    ) -> Placement:
        """The placement under which α = 1 adds exactly ``vectors`` (``[len(layers), hidden]``)
        at ``layers``, ``hidden_norms`` being the bank's at those layers: the dose is
        ``Σ_l ‖v_l‖ / ‖h_l‖`` and each layer's weight its share. Trained banks and imported
        control vectors are placed so.

        Raises:
            ValueError: If every vector is zero.
        """
        ratios = (vectors.double().norm(dim=1) / hidden_norms.double()).tolist()
        if not any(r > 0 for r in ratios):
            raise ValueError("Every vector is zero: there is nothing to steer with.")
        return cls(layers=tuple(layers), dose=math.fsum(ratios), weights=tuple(ratios))

    def layer_weights(self) -> dict[int, float]:
        """Each layer's share of the dose, ``{layer: weight}`` (weights averaging 1)."""
        weights = self.weights or (1.0,) * len(self.layers)
        mean = math.fsum(weights) / len(weights)
        return {layer: w / mean for layer, w in zip(self.layers, weights, strict=True)}


def _weighted_layers(layers: object, weights: object) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Layers sorted with their weights (as floats), the weights finite, non-negative and not
    all zero.

    Raises:
        TypeError: If the weights are not a sequence of numbers.
        ValueError: If they do not match the layers one to one, or are not usable.
    """
    indices = list(layers) if isinstance(layers, Iterable) and not isinstance(layers, str) else []
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        raise TypeError(f"A placement's weights must be a sequence of numbers, not {weights!r}.")
    values = list(weights)
    for w in values:
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise TypeError(f"A placement's weights must be numbers, not {w!r}.")
    checked = layer_indices(indices, "A placement's layers")
    if len(values) != len(indices) or len(checked) != len(indices):
        raise ValueError(
            f"A placement's weights need one number per distinct layer: {len(values)} weights "
            f"for layers {indices}."
        )
    if not all(math.isfinite(w) and w >= 0 for w in values) or sum(values) <= 0:
        raise ValueError(
            f"A placement's weights must be finite, non-negative and not all zero: {values}."
        )
    ordered = sorted(zip((operator.index(i) for i in indices), values, strict=True))
    return tuple(i for i, _ in ordered), tuple(float(w) for _, w in ordered)


def query_guidance_of(value: object, what: str = "query_guidance") -> float:
    """A query guidance γ: a finite number >= 1 (1: none), as a float.

    Raises:
        TypeError: If ``value`` is not a number (bools and strings are not).
        ValueError: If it is not finite or below 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {value!r}.")
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(f"{what} must be finite and >= 1 (1: none), not {value}.")
    return float(value)


def check_guided_steering(positions: str | None, schedule: object) -> None:
    """Query guidance's second pass reads the query-free prompt through the same steering,
    whose calls would be taken for a new prompt's: it needs steering at every position
    (``positions`` ``None``, ``steer``'s default, or ``"all"``) and no schedule.

    Raises:
        ValueError: Otherwise.
    """
    if positions not in (None, "all") or schedule is not None:
        raise ValueError(
            "query_guidance needs steering at every position without a schedule "
            f"(got positions={positions!r}, schedule={schedule})."
        )


def _schedule(value: object) -> Schedule | None:
    """A placement's schedule from a :class:`Schedule` or the mapping a file holds."""
    if value is None or isinstance(value, Schedule):
        return value
    if not isinstance(value, dict) or not set(value) <= {"begin", "hold", "end", "ramp"}:
        raise ValueError(
            "A placement's schedule must be a Schedule or a mapping of its begin, hold, end "
            f"and ramp, not {value!r}."
        )
    return Schedule(**value)
