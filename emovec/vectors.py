"""Emotion vectors: a bank of per-layer directions, their arithmetic and their file format.

An :class:`EmotionVectors` bank maps each emotion to a float tensor ``[num_layers, hidden]``:
row ``l`` is the mean hidden-state difference (emotional − neutral) at the output of decoder
layer ``l``. Indexing a bank gives a :class:`SteeringVector`, a linear combination of its
emotions, so notebooks can write ``0.7 * vecs["joy"] - 0.3 * vecs["fear"]``.

Files are safetensors (no pickle): one tensor per emotion plus the per-layer hidden norms,
and the metadata as JSON strings in the header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from emovec._files import atomic_path
from emovec._version import __version__

__all__ = ["FORMAT", "EmotionVectors", "Placement", "Scale", "SteeringVector"]

FORMAT = "emovec.emotion-vectors/1"
Scale = Literal["relative", "raw"]
_EMOTION_PREFIX = "emotion."


@dataclass(frozen=True)
class Placement:
    """Where one emotion is steered, and how strongly α = 1 is, when no layers are given.

    Emotions differ in where a model carries them and how much push they take before the
    text breaks (on SmolLM2 sadness steers best at layers 8–12, joy at 12–16), so a bank
    may record one placement per emotion, found by :func:`emovec.calibration.calibrate`.

    Attributes:
        layers: Decoder layers steered for this emotion.
        dose: The relative dose at α = 1 (``Σ_l ‖Δ_l‖ / typical ‖h_l‖`` over ``layers``;
            see :mod:`emovec.steering`).
        instruction: A short request for the emotion added to the user's turn beside the
            vector (the "hybrid" recipe), or ``None``. ``steer`` cannot change a prompt:
            :func:`emovec.generation.generate_answers` and the CLI add it
            (:meth:`EmotionVectors.instruction`).
        persona: A system turn describing an emotional assistant, used instead of the
            model's default system prompt beside the vector, or ``None``
            (:meth:`EmotionVectors.persona`).
        positions: The positions steered (``"generated"``: only the answer's tokens), or
            ``None`` for ``steer``'s default.
    """

    layers: tuple[int, ...]
    dose: float
    instruction: str | None = None
    persona: str | None = None
    positions: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted({int(i) for i in self.layers})))
        object.__setattr__(self, "dose", float(self.dose))
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

    def to_dict(self) -> dict[str, Any]:
        written: dict[str, Any] = {"layers": list(self.layers), "dose": self.dose}
        for name in ("instruction", "persona", "positions"):
            if getattr(self, name) is not None:
                written[name] = getattr(self, name)
        return written


class EmotionVectors(Mapping[str, "SteeringVector"]):
    """A bank of emotion vectors extracted from one model.

    Args:
        vectors: Emotion name → tensor ``[num_layers, hidden_size]``.
        hidden_norms: ``[num_layers]``, the mean L2 norm of (neutral) token hidden states at
            each layer's output; the yardstick that makes ``scale="relative"`` steering mean
            the same on different models.
        model_name: Model the vectors were extracted from.
        layers: Layers recommended for steering (default band), or ``None``.
        settings: Extraction settings, recorded for reproducibility.
        placements: Per-emotion layers and strength used when ``steer`` gets no layers
            (see :class:`Placement`); emotions without one use ``layers`` and the default
            dose.

    Raises:
        ValueError: on empty banks, mismatched shapes, or non-finite values.
    """

    def __init__(
        self,
        vectors: Mapping[str, torch.Tensor],
        hidden_norms: torch.Tensor,
        *,
        model_name: str,
        layers: Sequence[int] | None = None,
        settings: Mapping[str, Any] | None = None,
        placements: Mapping[str, Placement] | None = None,
        version: str = __version__,
    ) -> None:
        if not vectors:
            raise ValueError("An EmotionVectors bank needs at least one emotion.")
        self._vectors = {name: v.detach().to("cpu", torch.float32) for name, v in vectors.items()}
        self.hidden_norms = hidden_norms.detach().to("cpu", torch.float32).reshape(-1)
        self.model_name = model_name
        self.layers = tuple(int(i) for i in layers) if layers is not None else None
        self.settings = dict(settings or {})
        self.placements = dict(placements or {})
        self.version = version
        self._validate()

    def _validate(self) -> None:
        shapes = {name: tuple(v.shape) for name, v in self._vectors.items()}
        first = next(iter(shapes.values()))
        if len(first) != 2 or any(s != first for s in shapes.values()):
            raise ValueError(f"Every vector must be [num_layers, hidden_size]; got {shapes}.")
        for name, vector in self._vectors.items():
            bad = (~torch.isfinite(vector)).any(dim=1).nonzero().flatten().tolist()
            if bad:
                raise ValueError(
                    f"Emotion {name!r} has NaN or infinite values at layers {bad}; the "
                    "extraction went wrong (e.g. an overflowing dtype): extract again in float32."
                )
        if self.hidden_norms.shape != (first[0],):
            raise ValueError(
                f"hidden_norms has shape {tuple(self.hidden_norms.shape)}, expected ({first[0]},)."
            )
        if not (torch.isfinite(self.hidden_norms).all() and (self.hidden_norms > 0).all()):
            raise ValueError("hidden_norms must be finite and positive at every layer.")
        if self.layers is not None and not all(0 <= i < first[0] for i in self.layers):
            raise ValueError(f"layers {self.layers} out of range for {first[0]} layers.")
        for emotion, placement in self.placements.items():
            if emotion not in self._vectors:
                raise ValueError(f"A placement names {emotion!r}, which the bank lacks.")
            if not all(0 <= i < first[0] for i in placement.layers):
                raise ValueError(
                    f"{emotion!r} is placed at layers {list(placement.layers)}, out of range "
                    f"for {first[0]} layers."
                )

    # --- shape and naming -------------------------------------------------------------

    @property
    def emotions(self) -> list[str]:
        """Emotion names, in the order they were added."""
        return list(self._vectors)

    @property
    def num_layers(self) -> int:
        return int(next(iter(self._vectors.values())).shape[0])

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self._vectors.values())).shape[1])

    def __getitem__(self, emotion: str) -> SteeringVector:
        self.vector(emotion)  # raises the helpful KeyError
        return SteeringVector(self, {emotion: 1.0})

    def __iter__(self) -> Iterator[str]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def vector(self, emotion: str) -> torch.Tensor:
        """The raw ``[num_layers, hidden_size]`` tensor of one emotion."""
        try:
            return self._vectors[emotion]
        except KeyError:
            raise KeyError(f"Unknown emotion {emotion!r}; this bank has {self.emotions}.") from None

    def unit_vector(self, emotion: str) -> torch.Tensor:
        """``emotion``'s vector rescaled, per layer, to the norm of that layer's hidden states.

        This is the unit of ``scale="relative"`` steering: every emotion gets the same dose
        for the same α, whatever its raw norm.
        """
        raw = self.vector(emotion)
        norms = raw.norm(dim=1, keepdim=True)
        gain = torch.where(norms > 0, self.hidden_norms[:, None] / norms.clamp_min(1e-12), 0.0)
        return raw * gain

    def instruction(self, emotion: str) -> str | None:
        """The instruction calibrated with ``emotion``'s placement, to add to the user's turn
        (``f"{query} {instruction}"``) when steering it, or ``None``."""
        self.vector(emotion)
        placement = self.placements.get(emotion)
        return placement.instruction if placement is not None else None

    def persona(self, emotion: str) -> str | None:
        """The system turn calibrated with ``emotion``'s placement, or ``None``."""
        self.vector(emotion)
        placement = self.placements.get(emotion)
        return placement.persona if placement is not None else None

    def __repr__(self) -> str:
        band = f"{self.layers[0]}..{self.layers[-1]}" if self.layers else "none"
        return (
            f"EmotionVectors(model={self.model_name!r}, emotions={self.emotions}, "
            f"num_layers={self.num_layers}, hidden_size={self.hidden_size}, "
            f"recommended_layers={band})"
        )

    # --- transformations --------------------------------------------------------------

    def mean_vector(self) -> torch.Tensor:
        """Mean over emotions: the shared "emotional vs neutral" direction (EV^base)."""
        return torch.stack(list(self._vectors.values())).mean(dim=0)

    def center(self, strength: float = 1.0) -> EmotionVectors:
        """A bank with ``strength`` times the mean over emotions subtracted from each emotion.

        Raw vectors of different emotions share a large "emotional vs neutral" component
        (cosine ≈ 0.8 on SmolLM2); removing it (``strength=1``) leaves what distinguishes each
        emotion. Removing only part of it keeps some of the shared arousal, which negative
        emotions need on small models: on SmolLM2 fully centred anger reads as bravado, half
        centred as anger (README, "Strength").

        Args:
            strength: Share of the mean to subtract, in [0, 1]; recorded as the
                ``centered`` setting.
        """
        if len(self) < 2:
            raise ValueError("Centering needs at least two emotions.")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"Centering strength must be in [0, 1], not {strength}.")
        mean = strength * self.mean_vector()
        return self._replace(
            {name: v - mean for name, v in self._vectors.items()}, centered=float(strength)
        )

    def select(self, emotions: Sequence[str]) -> EmotionVectors:
        """A bank with only ``emotions``."""
        return self._replace({e: self.vector(e) for e in emotions})

    def with_settings(self, **settings: Any) -> EmotionVectors:
        """A copy whose settings are updated (e.g. ``recommended_alpha`` from an evaluation)."""
        return self._replace(dict(self._vectors), **settings)

    def with_placements(self, placements: Mapping[str, Placement]) -> EmotionVectors:
        """A copy with these per-emotion placements (others keep theirs); see :class:`Placement`."""
        return self._replace(dict(self._vectors), {**self.placements, **placements})

    def without_placements(self, emotions: Sequence[str] | None = None) -> EmotionVectors:
        """A copy in which ``emotions`` (default: all) use the bank's band and default dose."""
        dropped = set(self.emotions if emotions is None else emotions)
        kept = {e: p for e, p in self.placements.items() if e not in dropped}
        return self._replace(dict(self._vectors), kept)

    def _replace(
        self,
        vectors: Mapping[str, torch.Tensor],
        placements: Mapping[str, Placement] | None = None,
        /,
        **settings: Any,
    ) -> EmotionVectors:
        kept = self.placements if placements is None else placements
        return EmotionVectors(
            vectors,
            self.hidden_norms,
            model_name=self.model_name,
            layers=self.layers,
            settings={**self.settings, **settings},
            placements={e: p for e, p in kept.items() if e in vectors},
            version=self.version,
        )

    # --- files ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bank as safetensors; the file appears whole or not at all."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{_EMOTION_PREFIX}{n}": v.contiguous() for n, v in self._vectors.items()}
        tensors["hidden_norms"] = self.hidden_norms.contiguous()
        metadata = {
            "format": FORMAT,
            "emovec_version": self.version,
            "model_name": self.model_name,
            "num_layers": str(self.num_layers),
            "hidden_size": str(self.hidden_size),
            "emotions": json.dumps(self.emotions),
            "layers": json.dumps(list(self.layers) if self.layers is not None else None),
            "settings": json.dumps(self.settings, sort_keys=True),
            "placements": json.dumps({e: p.to_dict() for e, p in self.placements.items()}),
        }
        with atomic_path(path) as staging:
            save_file(tensors, str(staging), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read a bank written by :meth:`save`.

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            ValueError: when the file is not an intact emovec vector file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No vector file at {path}.")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"{path} is not a readable safetensors file ({err}); it may be truncated or "
                "corrupt: save or download it again."
            ) from err
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"{path} is a safetensors file but not an emovec vector file "
                f"(format {metadata.get('format')!r}, expected {FORMAT!r})."
            )
        try:
            emotions = json.loads(metadata["emotions"])
            vectors = {e: tensors[f"{_EMOTION_PREFIX}{e}"] for e in emotions}
            placements = {  # absent from files written before placements existed
                e: Placement(
                    tuple(p["layers"]),
                    p["dose"],
                    p.get("instruction"),
                    p.get("persona"),
                    p.get("positions"),
                )
                for e, p in json.loads(metadata.get("placements", "{}")).items()
            }
            return cls(
                vectors,
                tensors["hidden_norms"],
                model_name=metadata["model_name"],
                layers=json.loads(metadata["layers"]),
                settings=json.loads(metadata["settings"]),
                placements=placements,
                version=metadata["emovec_version"],
            )
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is an incomplete emovec vector file: missing {err}.") from err


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

    def tensor(self, scale: Scale = "relative") -> torch.Tensor:
        """The combination as a ``[num_layers, hidden_size]`` tensor.

        Args:
            scale: ``"relative"`` sums the emotions' unit vectors (each row with the norm of
                that layer's hidden states); ``"raw"`` sums the raw mean differences.
        """
        if scale not in ("relative", "raw"):
            raise ValueError(f"scale must be 'relative' or 'raw', not {scale!r}.")
        unit = self.bank.unit_vector if scale == "relative" else self.bank.vector
        total = torch.zeros(self.bank.num_layers, self.bank.hidden_size)
        for emotion, coefficient in self.coefficients.items():
            total += coefficient * unit(emotion)
        return total

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
