"""Emotion vectors: a bank of per-layer directions and their arithmetic.

An :class:`EmotionVectors` bank maps each emotion to a float tensor ``[num_layers, hidden]``:
row ``l`` is the mean hidden-state difference (emotional − neutral) at the output of decoder
layer ``l``. Indexing a bank gives a :class:`SteeringVector`, a linear combination of its
emotions, so notebooks can write ``0.7 * vecs["joy"] - 0.3 * vecs["fear"]``.

Files are safetensors (no pickle), read strictly and checked by a content hash; the format
is described in :mod:`emovec._format`. A file that is not an intact emovec vector file raises
:class:`VectorFileError`, naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import torch

from emovec import _format, _similarity
from emovec._checks import DIRECTION_RATIO_RANGE, RESERVED_NAMES, check_name, validate_bank
from emovec._format import EMOTION_PREFIX, FORMAT, VectorFileError
from emovec._placement import Placement, layer_indices
from emovec._version import __version__

__all__ = [
    "DIRECTION_RATIO_RANGE",
    "FORMAT",
    "RESERVED_NAMES",
    "EmotionVectors",
    "Placement",
    "Scale",
    "SteeringVector",
    "VectorFileError",
]


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


class EmotionVectors(Mapping[str, "SteeringVector"]):
    """A bank of emotion vectors extracted from one model.

    Args:
        vectors: Emotion name → tensor ``[num_layers, hidden_size]``. Names must be
            non-empty printable text and not one of :data:`RESERVED_NAMES` (``steer``'s
            parameters).
        hidden_norms: ``[num_layers]``, the mean L2 norm of (neutral) token hidden states at
            each layer's output; the yardstick that makes ``scale="relative"`` steering mean
            the same on different models. Where an emotion's vector is not zero,
            ``‖vector_l‖ / hidden_norms[l]`` must lie in :data:`DIRECTION_RATIO_RANGE`.
        model_name: Model the vectors were extracted from.
        recommended_layers: Layers recommended for steering (the default band), or ``None``.
        settings: Extraction settings, recorded for reproducibility.
        placements: Per-emotion layers and strength used when ``steer`` gets no layers
            (see :class:`Placement`); emotions without one use ``recommended_layers`` and the
            default dose.
        version: The emovec version that made the vectors.

    Raises:
        ValueError: on empty banks, bad names, mismatched shapes, non-finite values or
            implausible hidden norms.
        TypeError: on values of the wrong type.
    """

    def __init__(
        self,
        vectors: Mapping[str, torch.Tensor],
        hidden_norms: torch.Tensor,
        *,
        model_name: str,
        recommended_layers: Sequence[int] | None = None,
        settings: Mapping[str, Any] | None = None,
        placements: Mapping[str, Placement] | None = None,
        version: str = __version__,
    ) -> None:
        if not vectors:
            raise ValueError("An EmotionVectors bank needs at least one emotion.")
        for name, vector in vectors.items():
            check_name(name)
            if not isinstance(vector, torch.Tensor):
                raise TypeError(f"Emotion {name!r}'s vector must be a tensor, not {vector!r}.")
        if not isinstance(hidden_norms, torch.Tensor):
            raise TypeError(f"hidden_norms must be a tensor, not {hidden_norms!r}.")
        for what, text in (("model_name", model_name), ("version", version)):
            if not isinstance(text, str):
                raise TypeError(f"{what} must be a string, not {text!r}.")
        self._vectors = {name: v.detach().to("cpu", torch.float32) for name, v in vectors.items()}
        self.hidden_norms = hidden_norms.detach().to("cpu", torch.float32).reshape(-1)
        self.model_name = model_name
        self._recommended_layers = (
            None
            if recommended_layers is None
            else layer_indices(recommended_layers, "recommended_layers")
        )
        self.settings = dict(settings or {})
        self.placements = dict(placements or {})
        self.version = version
        validate_bank(self._vectors, self.hidden_norms, self._recommended_layers, self.placements)

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

    @property
    def recommended_layers(self) -> tuple[int, ...] | None:
        """The layers steered by default (sorted), or ``None``."""
        return self._recommended_layers

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

    def generation_kwargs(self) -> dict[str, Any]:
        """The ``model.generate`` keywords of the decoding the placements were calibrated
        under, so that their strengths hold: ``{"repetition_penalty": 1.15}`` after greedy
        decoding with that penalty, with ``do_sample``, ``temperature`` and ``top_p`` when
        the calibration sampled; ``{}`` for a bank never calibrated. Use it as
        ``model.generate(**inputs, **vecs.generation_kwargs())``.

        Raises:
            ValueError: If the recorded decoding is malformed.
        """
        calibration = self.settings.get("calibration")
        decoding = calibration.get("decoding") if isinstance(calibration, Mapping) else None
        if not isinstance(decoding, Mapping):
            return {}
        sampled = ["do_sample", "temperature", "top_p"] if decoding.get("do_sample") else []
        try:
            return {
                key: bool(decoding[key]) if key == "do_sample" else float(decoding[key])
                for key in ["repetition_penalty", *sampled]
                if key in decoding
            }
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"The bank's calibration decoding {dict(decoding)} is malformed ({err}); "
                "calibrate the bank again."
            ) from err

    def __repr__(self) -> str:
        band = self._recommended_layers
        shown = f"{band[0]}..{band[-1]}" if band else "none"
        return (
            f"EmotionVectors(model={self.model_name!r}, emotions={self.emotions}, "
            f"num_layers={self.num_layers}, hidden_size={self.hidden_size}, "
            f"recommended_layers={shown})"
        )

    def _repr_html_(self) -> str:
        """The bank as a compact HTML table, for notebooks."""
        shape = (self.num_layers, self.hidden_size)
        return _similarity.bank_html(
            self.model_name, self.emotions, shape, self._recommended_layers, self.placements
        )

    def similarity(self, layers: Sequence[int] | None = None) -> _similarity.Similarity:
        """Cosine similarities between the emotions, averaged over a layer band.

        Each layer's cosine counts the same (vectors grow with depth). Default band: the
        recommended layers, else all. The result has ``matrix``, ``to_markdown()`` and
        ``plot()``.
        """
        return _similarity.similarity(self._vectors, layers, self._recommended_layers)

    # --- transformations --------------------------------------------------------------

    def mean_vector(self) -> torch.Tensor:
        """Mean over emotions: the shared "emotional vs neutral" direction (EV^base)."""
        return torch.stack(list(self._vectors.values())).mean(dim=0)

    def center(self, share: float = 1.0) -> EmotionVectors:
        """A bank with ``share`` times the mean over emotions subtracted from each emotion.

        Raw vectors of different emotions share a large "emotional vs neutral" component
        (cosine ≈ 0.8 on SmolLM2); removing it (``share=1``) leaves what distinguishes each
        emotion. Removing only part of it keeps some of the shared arousal, which negative
        emotions need on small models: on SmolLM2 fully centred anger reads as bravado, half
        centred as anger (docs/strength-and-calibration.md).

        Args:
            share: Share of the mean to subtract, in [0, 1]; recorded as the ``centered``
                setting.
        """
        if len(self) < 2:
            raise ValueError("Centering needs at least two emotions.")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"The centred share must be in [0, 1], not {share}.")
        mean = share * self.mean_vector()
        return self._replace(
            {name: v - mean for name, v in self._vectors.items()}, centered=float(share)
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
            recommended_layers=self._recommended_layers,
            settings={**self.settings, **settings},
            placements={e: p for e, p in kept.items() if e in vectors},
            version=self.version,
        )

    # --- files ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bank as safetensors with its content hash; the file appears whole or
        not at all (format: :mod:`emovec._format`)."""
        path = Path(path)
        tensors = {f"{EMOTION_PREFIX}{n}": v for n, v in self._vectors.items()}
        tensors["hidden_norms"] = self.hidden_norms
        band = self._recommended_layers
        metadata = {
            "format": FORMAT,
            "emovec_version": self.version,
            "model_name": self.model_name,
            "num_layers": str(self.num_layers),
            "hidden_size": str(self.hidden_size),
            "emotions": json.dumps(self.emotions),
            "layers": json.dumps(list(band) if band is not None else None),
            "settings": json.dumps(self.settings, sort_keys=True),
            "placements": json.dumps({e: p.to_dict() for e, p in self.placements.items()}),
        }
        _format.write(path, tensors, metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionVectors:
        """Read a bank written by :meth:`save`, strictly (see :mod:`emovec._format`).

        A file with a content hash (``sha256``) is refused when its contents disagree with
        it; older files, written before content hashes, have none and load unchecked.

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            VectorFileError: when the file is not an intact, valid emovec vector file.
        """
        path = Path(path)
        contents = _format.read(path)
        try:
            placements = {e: Placement(**p) for e, p in contents.placements.items()}
            return cls(
                contents.vectors,
                contents.hidden_norms,
                model_name=contents.model_name,
                recommended_layers=contents.recommended_layers,
                settings=contents.settings,
                placements=placements,
                version=contents.version,
            )
        except (ValueError, TypeError) as err:
            raise VectorFileError(path, f"does not hold a valid bank: {err}") from err

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        results: Mapping[str, Mapping[str, float]] | None = None,
        license: str | None = None,
    ) -> Path:
        """Write the bank in the hub's layout: ``directory`` gets ``emotion_vectors.safetensors``
        and ``README.md`` (a model card rendered from the bank), together; other files there
        are left alone. Push it with ``HfApi().upload_folder(folder_path=directory, ...)``.

        Args:
            directory: The folder (created if needed).
            results: Held-out scores the caller measured (emotion → metric → number), shown
                on the card as the caller's.
            license: The card's ``license`` (e.g. ``"mit"``); omitted when ``None``.

        Raises:
            FileExistsError: If ``directory`` is a file.
            ValueError: If ``results`` or ``license`` are malformed.
        """
        from emovec import _pretrained

        return _pretrained.save(self, directory, results=results, license=license)

    @classmethod
    def from_pretrained(
        cls, name: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
    ) -> EmotionVectors:
        """Read a bank (strictly, as :meth:`load`) from a folder written by
        :meth:`save_pretrained`, a vector file, or a hub repo id (``revision``, ``cache_dir``:
        as for ``hf_hub_download``).

        Raises:
            FileNotFoundError: If the folder or repo holds no bank file.
            ValueError: If ``name`` is neither a path nor a valid repo id.
            OSError: If the hub cannot be reached (or is offline) and the bank is not cached,
                at once, saying what to do.
            VectorFileError: If the file is not an intact, valid emovec vector file.
        """
        from emovec import _pretrained

        return cls.load(_pretrained.locate(name, revision=revision, cache_dir=cache_dir))
