"""SteeringVector: a linear combination of the emotions of one bank."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from emovec.vectors import EmotionVectors

__all__ = ["Scale", "SteeringVector"]

Scale = Literal["relative", "raw"]


class SteeringVector:
    """A linear combination of the emotions of one bank, e.g. ``0.7*joy - 0.3*fear``.

    Combining happens per emotion in the bank's units, so ``steer(model, 0.7 * vecs["joy"])``
    and ``steer(model, vecs, joy=0.7)`` are the same thing.
    """

    __slots__ = ("bank", "coefficients")

    def __init__(self, bank: EmotionVectors, coefficients: Mapping[str, float]) -> None:
        for emotion, coefficient in coefficients.items():
            bank.vector(emotion)
            if not math.isfinite(coefficient):
                raise ValueError(f"Strength of {emotion!r} must be finite, not {coefficient}.")
        self.bank = bank
        self.coefficients = {e: float(c) for e, c in coefficients.items() if c != 0}

    def _combine(self, other: object, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.bank is not self.bank:
            raise ValueError(
                "Can only combine vectors of the same EmotionVectors bank (a centred bank "
                "and its source are different banks)."
            )
        merged = dict(self.coefficients)
        for emotion, coefficient in other.coefficients.items():
            merged[emotion] = merged.get(emotion, 0.0) + sign * coefficient
        return SteeringVector(self.bank, merged)

    def __add__(self, other: object) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: object) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, factor: object) -> SteeringVector:
        if not isinstance(factor, Real):
            return NotImplemented
        return SteeringVector(
            self.bank, {e: c * float(factor) for e, c in self.coefficients.items()}
        )

    __rmul__ = __mul__

    def __truediv__(self, divisor: object) -> SteeringVector:
        if not isinstance(divisor, Real):
            return NotImplemented
        return self * (1.0 / float(divisor))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self.bank is other.bank and self.coefficients == other.coefficients

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [
            f"{c:g}*{e}" if i == 0 else f" {'-' if c < 0 else '+'} {abs(c):g}*{e}"
            for i, (e, c) in enumerate(self.coefficients.items())
        ]
        expression = "".join(parts) or "0"
        return f"SteeringVector({expression}, model={self.bank.model_name!r})"
