"""The emovec vector file: safetensors, read strictly and checked by a content hash.

The ``format`` entry names the format and its version, ``emovec.emotion-vectors/N``; the
version says which entries a file may carry. This emovec writes version 2 and reads 1 and 2;
a file of a later version was made by a newer emovec and is refused with that said.

A file holds exactly these tensors, all float32:

* ``emotion.<name>``, ``[num_layers, hidden_size]``, one per emotion;
* ``hidden_norms``, ``[num_layers]``;

and these metadata entries (safetensors metadata values are strings):

* ``format``: ``"emovec.emotion-vectors/2"`` (or ``/1``);
* ``emovec_version``, ``model_name``: text;
* ``num_layers``, ``hidden_size``: decimal integers (no sign, space or leading zero) equal to
  the tensors' shapes;
* ``emotions``: a JSON list of the emotion names, in order, naming every ``emotion.*``
  tensor once;
* ``layers``: the recommended band, a JSON list of layer indices or ``null``;
* ``settings``: a JSON object, the extraction's (or training's) record (``NaN`` allowed: an
  unmeasured score);
* ``placements``: a JSON object, emotion → ``{"layers": [int, ...], "dose": number}`` plus
  optional ``"instruction"``, ``"persona"`` and ``"positions"`` strings, a ``"schedule"``
  (``{"begin": number, "hold": int, "end": number, "ramp": int}``), a ``"query_guidance"``
  number and ``"weights"`` (one number per layer); ``{}`` where the bank has none;
* ``sha256``: the content hash, see :func:`digest`.

Version 1 (files written before the version was raised) may lack ``placements`` and
``sha256`` (such a file loads unchecked); version 2 requires both.

Reading is strict: integers must be JSON integers (not ``true``, ``1.9`` or ``"12"``), numbers
finite, text text, declared shapes and dtypes must match the tensors, and a tensor or entry
the format does not name is refused. Every refusal is a :class:`VectorFileError` naming the
file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from emovec._files import atomic_path

__all__ = [
    "EMOTION_PREFIX",
    "FORMAT",
    "VERSION",
    "Contents",
    "VectorFileError",
    "digest",
    "read",
    "write",
]

_FAMILY = "emovec.emotion-vectors/"
VERSION = 2
FORMAT = f"{_FAMILY}{VERSION}"
EMOTION_PREFIX = "emotion."
_NORMS = "hidden_norms"
_HASH = "sha256"
_REQUIRED = (
    "format",
    "emovec_version",
    "model_name",
    "num_layers",
    "hidden_size",
    "emotions",
    "layers",
    "settings",
)
# Per version: the entries a file must carry beside the required ones, and those it may.
_ENTRIES: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    1: ((), ("placements", _HASH)),
    2: (("placements", _HASH), ()),
}
_PLACEMENT_TEXT = ("instruction", "persona", "positions")
_COUNT = re.compile(r"[1-9][0-9]*")
# Far above any model's (the largest open ones: 126 layers, hidden 16,384), far below what a
# forged header can declare: a file declaring hidden size 500,000,000 (8 KB on disk, sparse)
# was read into 6 GB before this bound.
_MAX_COUNT = {"num_layers": 2**12, "hidden_size": 2**17}
_HEX = re.compile(r"[0-9a-f]{64}")
_AGAIN = "Save or download the file again (or extract the vectors again)."
# Anything the safetensors reader or torch raises on a malformed file.
_READ_ERRORS = (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError)


class VectorFileError(ValueError):
    """Raised when a file is not an intact, valid emovec vector file.

    Attributes:
        path: The file.
    """

    def __init__(self, path: str | Path, problem: str, remedy: str = _AGAIN) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem} {remedy}".rstrip())


@dataclass(frozen=True)
class Contents:
    """What a vector file holds, checked for types and shapes (the bank checks the values)."""

    vectors: dict[str, torch.Tensor]
    hidden_norms: torch.Tensor
    model_name: str
    version: str
    recommended_layers: list[int] | None
    settings: dict[str, Any]
    placements: dict[str, dict[str, Any]]


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def digest(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """The content hash stored as ``sha256``: the hex SHA-256 of, in this order,

    * each metadata entry but ``sha256``, in sorted key order: key, then value;
    * each tensor, in sorted name order: name, dtype (``"F32"``), shape as JSON
      (``"[4, 8]"``), then its bytes (little-endian float32, row-major);

    every item UTF-8 encoded and preceded by its length in bytes as an 8-byte little-endian
    integer. The stored strings are hashed as written, so any change to them or to the
    tensors' bits is detected.
    """
    sha = hashlib.sha256()
    for key in sorted(k for k in metadata if k != _HASH):
        sha.update(_frame(key.encode()) + _frame(metadata[key].encode()))
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu", torch.float32).contiguous()
        sha.update(_frame(name.encode()) + _frame(b"F32"))
        sha.update(_frame(json.dumps(list(tensor.shape)).encode()))
        sha.update(_frame(tensor.numpy().astype("<f4", copy=False).tobytes()))
    return sha.hexdigest()


def write(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` and ``metadata`` plus their hash; the file appears whole or not at all."""
    contiguous = {name: t.contiguous() for name, t in tensors.items()}
    written = {**metadata, _HASH: digest(metadata, contiguous)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staging:
        save_file(contiguous, str(staging), metadata=written)


def read(path: Path) -> Contents:
    """Read and check a vector file (see the module docstring).

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        VectorFileError: when the file is not an intact, valid emovec vector file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"No vector file at {path}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            _check_header(path, metadata)
            layers, hidden = (
                _count(path, metadata, "num_layers"),
                _count(path, metadata, "hidden_size"),
            )
            emotions = _emotions(path, metadata)
            shapes = {f"{EMOTION_PREFIX}{e}": [layers, hidden] for e in emotions}
            shapes[_NORMS] = [layers]
            _check_tensors(path, handle, shapes)
            tensors = {name: handle.get_tensor(name) for name in shapes}
    except VectorFileError:
        raise
    except _READ_ERRORS as err:
        raise VectorFileError(
            path, f"is not a readable safetensors file ({err}); it may be truncated or corrupt."
        ) from err
    stored = metadata.get(_HASH)
    if stored is not None and digest(metadata, tensors) != stored:
        raise VectorFileError(
            path,
            "its content hash (sha256) disagrees with its contents: the file changed after it "
            "was written (a bad copy or bit rot).",
        )
    return Contents(
        vectors={e: tensors[f"{EMOTION_PREFIX}{e}"] for e in emotions},
        hidden_norms=tensors[_NORMS],
        model_name=metadata["model_name"],
        version=metadata["emovec_version"],
        recommended_layers=_layers(path, "layers", _json(path, metadata, "layers"), nullable=True),
        settings=_settings(path, metadata),
        placements=_placements(path, metadata, emotions),
    )


def _version(path: Path, tag: str | None) -> int:
    """The format version a ``format`` entry names, or a refusal that says what to do."""
    number = tag[len(_FAMILY) :] if tag is not None and tag.startswith(_FAMILY) else ""
    if not _COUNT.fullmatch(number) or len(number) > 6:
        raise VectorFileError(
            path,
            f"is a safetensors file but not an emovec vector file (format {tag!r}, expected "
            f"{FORMAT!r}).",
            "Pass a file written by EmotionVectors.save.",
        )
    version = int(number)
    if version > VERSION:
        raise VectorFileError(
            path,
            f"was made by a newer emovec (format {tag!r}; this one reads versions 1 to {VERSION}).",
            "Upgrade emovec (pip install -U emovec) to read it.",
        )
    return version


def _check_header(path: Path, metadata: Mapping[str, str]) -> None:
    version = _version(path, metadata.get("format"))
    needed, allowed = _ENTRIES[version]
    missing = [key for key in (*_REQUIRED, *needed) if key not in metadata]
    if missing:
        raise VectorFileError(path, f"is an incomplete emovec vector file: missing {missing}.")
    unknown = sorted(set(metadata) - {*_REQUIRED, *needed, *allowed})
    if unknown:
        raise VectorFileError(
            path,
            f"has metadata entries {unknown} that format {metadata['format']!r} does not define.",
            "It was altered, or written by another program: save or download it again.",
        )
    stored = metadata.get(_HASH)
    if stored is not None and not _HEX.fullmatch(stored):
        raise VectorFileError(path, f"its sha256 entry {stored[:80]!r} is not a SHA-256 digest.")


def _count(path: Path, metadata: Mapping[str, str], key: str) -> int:
    text = metadata[key]
    if not _COUNT.fullmatch(text):
        raise VectorFileError(path, f"its {key!r} is {text[:80]!r}, not a positive integer.")
    if len(text) > 12 or int(text) > _MAX_COUNT[key]:
        raise VectorFileError(
            path,
            f"its {key!r} is {text[:80]}, more than any model has (at most {_MAX_COUNT[key]:,}).",
            "It was forged or damaged: " + _AGAIN[0].lower() + _AGAIN[1:],
        )
    return int(text)


def _emotions(path: Path, metadata: Mapping[str, str]) -> list[str]:
    emotions = _json(path, metadata, "emotions")
    if not (isinstance(emotions, list) and emotions and all(isinstance(e, str) for e in emotions)):
        raise VectorFileError(path, "its 'emotions' is not a non-empty JSON list of names.")
    if len(set(emotions)) != len(emotions):
        raise VectorFileError(path, f"its 'emotions' {emotions} names an emotion twice.")
    return emotions


def _check_tensors(path: Path, handle: Any, shapes: Mapping[str, list[int]]) -> None:
    names = set(handle.keys())
    missing, unknown = sorted(set(shapes) - names), sorted(names - set(shapes))
    if missing:
        raise VectorFileError(path, f"lacks the tensors {missing} its metadata declares.")
    if unknown:
        raise VectorFileError(path, f"holds tensors {unknown} its metadata does not declare.")
    for name, shape in shapes.items():
        part = handle.get_slice(name)
        dtype, actual = part.get_dtype(), list(part.get_shape())
        if dtype != "F32" or actual != shape:
            raise VectorFileError(
                path, f"its tensor {name!r} is {dtype} {actual}, expected F32 {shape}."
            )


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("an object has a key twice")
    return result


def _json(path: Path, metadata: Mapping[str, str], key: str, *, allow_nan: bool = False) -> Any:
    strict: dict[str, Any] = {} if allow_nan else {"parse_constant": _refuse_constant}
    try:
        return json.loads(
            metadata[key],
            parse_float=float if allow_nan else _finite,
            object_pairs_hook=_unique,
            **strict,
        )
    except (ValueError, RecursionError) as err:
        raise VectorFileError(path, f"its {key!r} is not valid JSON ({err}).") from err


def _is_int(value: object) -> bool:
    return type(value) is int


def _layers(path: Path, where: str, value: Any, *, nullable: bool = False) -> list[int] | None:
    if value is None and nullable:
        return None
    if not (isinstance(value, list) and all(_is_int(i) for i in value)):
        raise VectorFileError(path, f"its {where} is {value!r:.80}, not a JSON list of integers.")
    return value


def _settings(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    settings = _json(path, metadata, "settings", allow_nan=True)
    if not isinstance(settings, dict):
        raise VectorFileError(path, f"its 'settings' is {settings!r:.80}, not a JSON object.")
    return settings


def _placements(
    path: Path, metadata: Mapping[str, str], emotions: list[str]
) -> dict[str, dict[str, Any]]:
    if "placements" not in metadata:
        return {}
    placements = _json(path, metadata, "placements")
    if not isinstance(placements, dict):
        raise VectorFileError(path, f"its 'placements' is {placements!r:.80}, not a JSON object.")
    for emotion, placement in placements.items():
        where = f"placement of {emotion!r}"
        if emotion not in emotions:
            raise VectorFileError(path, f"has a placement for {emotion!r}, which it lacks.")
        if not isinstance(placement, dict):
            raise VectorFileError(path, f"its {where} is {placement!r:.80}, not a JSON object.")
        known = {"layers", "dose", "schedule", "query_guidance", "weights", *_PLACEMENT_TEXT}
        unknown = sorted(set(placement) - known)
        if unknown or "layers" not in placement or "dose" not in placement:
            raise VectorFileError(
                path, f"its {where} needs 'layers' and 'dose' and nothing unknown {unknown}."
            )
        _layers(path, f"{where}'s layers", placement["layers"])
        dose = placement["dose"]
        if type(dose) not in (int, float):
            raise VectorFileError(path, f"its {where}'s dose is {dose!r:.80}, not a number.")
        for key in _PLACEMENT_TEXT:
            if key in placement and not isinstance(placement[key], str):
                raise VectorFileError(path, f"its {where}'s {key} is not text.")
        if "schedule" in placement:
            _schedule(path, f"{where}'s schedule", placement["schedule"])
        weights = placement.get("weights")
        if "weights" in placement and not (
            isinstance(weights, list) and all(type(w) in (int, float) for w in weights)
        ):
            raise VectorFileError(path, f"its {where}'s weights are {weights!r:.80}, not numbers.")
        gamma = placement.get("query_guidance")
        if "query_guidance" in placement and type(gamma) not in (int, float):
            raise VectorFileError(path, f"its {where}'s query_guidance is {gamma!r:.80}.")
    return placements


def _schedule(path: Path, where: str, schedule: object) -> None:
    """A schedule as a file holds it: ``{"begin": x, "hold": n, "end": y, "ramp": m}``."""
    kinds = {"begin": (int, float), "hold": (int,), "end": (int, float), "ramp": (int,)}
    if not isinstance(schedule, dict) or set(schedule) != set(kinds):
        raise VectorFileError(path, f"its {where} is {schedule!r:.80}, not {{{', '.join(kinds)}}}.")
    for key, allowed in kinds.items():
        if type(schedule[key]) not in allowed:
            raise VectorFileError(path, f"its {where}'s {key} is {schedule[key]!r:.80}.")
