"""GGUF control vectors: a mix exported for llama.cpp, Ollama and EasySteer (vLLM), and such
files imported as a bank.

The engines that serve models at scale read one format for steering directions, the GGUF
"control vector" repeng writes: architecture ``controlvector``, one float32 tensor
``direction.N`` of width ``n_embd`` per steered block, added to the output of block ``N``
(after its residual add): what emovec adds at ``layers[N]``. llama.cpp loads it with
``--control-vector FILE`` (or ``--control-vector-scaled FILE SCALE``); EasySteer per request
(``SteerVectorRequest(steer_vector_local_path=FILE, scale=..., target_layers=...)``).

:func:`export_control_vector` writes what :func:`~emovec.steering.steer` adds at each layer
(:func:`~emovec.steering.added`), so llama.cpp at scale 1 adds exactly ``steer(...).deltas()``,
and at scale ``s`` what ``steer`` adds at ``s`` times the strengths (adding is linear). What
cannot travel is refused or named in an :class:`ExportWarning`, never dropped silently:
a placement's positions other than all of them and its schedule are refused; its persona,
instruction and query guidance (the one call's prompt and decoding, which no engine applies)
are named; block 0 is left out with a warning (llama.cpp cannot steer it, and rejects a file
holding ``direction.0``). ``project``/``angular`` and per-row mixes cannot be asked for here.

:func:`load_control_vector` reads such a file (repeng's, llama.cpp's or emovec's) as a bank of
one emotion that ``steer`` applies exactly as the engine would at scale 1, checked as strictly
as emovec's own files: architecture, tensor names, dtype, shapes, finite values, and the width
and depth of the model it is for.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import atomic_path, check_writable
from emovec._placement import Placement
from emovec._version import __version__
from emovec.datasets import default_pairs
from emovec.extraction import extract
from emovec.layers import find_blocks, hidden_size_of
from emovec.steering import Layers, added
from emovec.vectors import EmotionVectors, Scale, SteeringVector

__all__ = [
    "ARCHITECTURE",
    "ControlVectorError",
    "ExportWarning",
    "export_control_vector",
    "load_control_vector",
]

ARCHITECTURE = "controlvector"
_DIRECTION = re.compile(r"direction\.(0|[1-9][0-9]*)")
_NORM_PAIRS = 8  # neutral stories read to measure the model's hidden norms on import
_GGUF_MAGIC = b"GGUF"


class ControlVectorError(ValueError):
    """Raised for a file that is not a usable GGUF control vector for the model."""

    def __init__(self, path: str | Path, problem: str, remedy: str) -> None:
        super().__init__(f"{path}: {problem}. {remedy}")


class ExportWarning(UserWarning):
    """Part of a calibrated mix that an exported control vector does not carry."""


def export_control_vector(
    vectors: EmotionVectors | SteeringVector,
    path: str | Path,
    strengths: Mapping[str, float] | None = None,
    /,
    *,
    layers: Layers | str | None = None,
    scale: Scale = "relative",
    max_dose: float | None = None,
    **alphas: float,
) -> Path:
    """Write a mix as a GGUF control vector for llama.cpp and EasySteer.

    ``export_control_vector(vecs, "joy.gguf", joy=1.0)`` then
    ``llama-server -m model.gguf --control-vector joy.gguf`` steers as
    ``steer(model, vecs, joy=1.0)`` does (``--control-vector-scaled joy.gguf 0.5``: as
    ``joy=0.5``). The file appears whole or not at all.

    Args:
        vectors: A bank with strengths, or a combination such as
            ``0.7 * vecs["joy"] - 0.3 * vecs["fear"]``; as for :func:`~emovec.steering.steer`.
        path: Where to write the file (``.gguf``).
        strengths, layers, scale, **alphas: As for ``steer``: by default each emotion at its
            calibrated layers and dose.
        max_dose: As for ``steer``; a mix above the dose limit is refused (raise it here to
            export a stronger one).

    Returns:
        ``path``.

    Raises:
        ValueError: If a placement cannot travel (positions other than ``"all"``, a
            schedule), or the mix adds nothing an engine can apply.
        DoseError: Above the dose limit.
        KeyError, TypeError: As ``steer`` raises them.
        OSError: If ``path`` cannot be written (checked before any work).
    """
    import gguf

    path = check_writable(path)
    bank = vectors.bank if isinstance(vectors, SteeringVector) else vectors
    per_layer = added(
        vectors, strengths, layers=layers, scale=scale, max_dose=max_dose, guard="raise", **alphas
    )
    mix = (
        dict(vectors.coefficients)
        if isinstance(vectors, SteeringVector)
        else {**(strengths or {}), **alphas}
    )
    if layers is None:
        _check_travels(bank, mix)
    steered = [i for i in range(bank.num_layers) if bool(per_layer[i].any())]
    if 0 in steered:
        share = float(per_layer[0].norm() / bank.hidden_norms[0])
        warnings.warn(
            f"Block 0 cannot be steered in llama.cpp (it rejects a file holding direction.0): "
            f"its part of the mix (dose {share:.3f}) is left out.",
            ExportWarning,
            stacklevel=2,
        )
        steered.remove(0)
    if not steered:
        raise ValueError(
            "This mix adds nothing an engine can apply (every strength is zero, or only block "
            "0 is steered); give a non-zero strength at layers 1 and above."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".gguf") as staging:
        writer = gguf.GGUFWriter(str(staging), ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", bank.model_name)
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(steered))
        writer.add_string("emovec.version", __version__)
        writer.add_string("emovec.mix", json.dumps(mix, sort_keys=True))
        writer.add_uint32("emovec.num_layers", bank.num_layers)
        for layer in steered:
            writer.add_tensor(f"direction.{layer}", per_layer[layer].numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _check_travels(bank: EmotionVectors, mix: Mapping[str, float]) -> None:
    """Refuse what an engine would apply differently; name what it would not apply."""
    for emotion in mix:
        placement = bank.placements.get(emotion)
        if placement is None:
            continue
        if placement.positions not in (None, "all"):
            raise ValueError(
                f"{emotion!r} was calibrated to steer the {placement.positions!r} positions, "
                "but llama.cpp and EasySteer add at every position: pass layers= to export it "
                "at every position, or steer it with emovec."
            )
        if placement.schedule is not None:
            raise ValueError(
                f"{emotion!r} was calibrated with a schedule ({placement.schedule.label}), "
                "which engines cannot follow: pass layers= to export a constant strength, or "
                "steer it with emovec."
            )
        left = [
            name.replace("_", " ")
            for name in ("persona", "instruction", "query_guidance")
            if getattr(placement, name) is not None
        ]
        if left:
            warnings.warn(
                f"{emotion!r}'s calibrated {' and '.join(left)} do not travel: an engine adds "
                "the vectors only, so its answers may be weaker than emovec's one call "
                f"(persona: {placement.persona!r}, instruction: {placement.instruction!r}).",
                ExportWarning,
                stacklevel=3,
            )


def load_control_vector(
    path: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    emotion: str = "control",
    blocks: str | list[nn.Module] | None = None,
) -> EmotionVectors:
    """Read a GGUF control vector (repeng's, llama.cpp's or emovec's) as a one-emotion bank.

    ``steer(model, bank, control=1.0)`` then adds ``direction.N`` at ``layers[N]``, exactly
    what llama.cpp adds at scale 1; α scales it as ``--control-vector-scaled`` does. The
    model's hidden norms (the yardstick of doses) are measured on a few neutral stories.

    Args:
        path: The ``.gguf`` file.
        model: The model the file is for (its width and depth are checked).
        tokenizer: Its tokenizer.
        emotion: The name the direction gets in the bank.
        blocks: Where the decoder blocks are, for models ``find_blocks`` misses.

    Returns:
        A bank of one emotion whose placement adds the file's directions at α = 1.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ControlVectorError: If it is not a valid control vector for ``model``.
    """
    path = Path(path)
    directions, hint = _read(path)
    found = find_blocks(model, blocks)
    width = hidden_size_of(model)
    sizes = {int(v.shape[0]) for v in directions.values()}
    if width is not None and sizes != {width}:
        raise ControlVectorError(
            path,
            f"its directions are {sorted(sizes)} wide but the model's hidden size is {width}",
            "Use the control vector made for this model.",
        )
    deepest = max(directions)
    if deepest >= len(found):
        raise ControlVectorError(
            path,
            f"it steers block {deepest} but the model has {len(found)} blocks (0-{len(found) - 1})",
            "Use the control vector made for this model.",
        )
    stories = default_pairs()
    first = next(iter(stories))
    reading = extract(
        model, tokenizer, {first: stories[first][:_NORM_PAIRS]}, blocks=found, progress=False
    )
    norms = reading.hidden_norms
    full = torch.zeros(len(found), sizes.pop())
    for layer, direction in directions.items():
        full[layer] = torch.from_numpy(direction)
    steered = sorted(directions)
    try:
        placement = Placement.exact(full[steered], norms[steered], steered)
        return EmotionVectors(
            {emotion: full},
            norms,
            model_name=hint or reading.model_name,
            recommended_layers=steered,
            settings={
                "estimator": "imported",
                "source": "gguf control vector",
                "file_sha256": _sha256(path),
            },
            placements={emotion: placement},
        )
    except ValueError as err:
        raise ControlVectorError(
            path, f"does not make a bank for this model ({err})", "Check the file and the model."
        ) from err


def _read(path: Path) -> tuple[dict[int, np.ndarray], str | None]:
    """The file's directions by block (float32 copies) and its model hint, checked."""
    import gguf

    remedy = "Give a control vector written by emovec export, repeng or llama.cpp."
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise ControlVectorError(path, "is not a regular file", remedy)
    with path.open("rb") as handle:
        if handle.read(4) != _GGUF_MAGIC:
            raise ControlVectorError(path, "is not a GGUF file", remedy)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError, KeyError) as err:
        raise ControlVectorError(path, f"is not a readable GGUF file ({err})", remedy) from err
    architecture = _string(reader, "general.architecture")
    if architecture != ARCHITECTURE:
        raise ControlVectorError(
            path,
            f"its architecture is {architecture!r}, not {ARCHITECTURE!r}: it is not a control "
            "vector (a model's GGUF cannot be used as one)",
            remedy,
        )
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        match = _DIRECTION.fullmatch(tensor.name)
        if match is None:
            raise ControlVectorError(
                path, f"holds a tensor {tensor.name!r}; a control vector holds direction.N", remedy
            )
        layer = int(match.group(1))
        if layer == 0:
            raise ControlVectorError(
                path,
                "holds direction.0, which llama.cpp rejects (block 0 cannot be steered)",
                "Remove direction.0, or export the mix again with emovec export.",
            )
        if layer in directions:
            raise ControlVectorError(path, f"holds direction.{layer} twice", remedy)
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ControlVectorError(
                path,
                f"direction.{layer} is {tensor.tensor_type.name}, not F32 (llama.cpp reads "
                "float32 directions only)",
                remedy,
            )
        shape = [int(d) for d in tensor.shape if int(d) != 1] or [1]
        if len(shape) != 1 or int(tensor.n_elements) != shape[0]:
            raise ControlVectorError(
                path, f"direction.{layer} has shape {list(tensor.shape)}, not [n_embd]", remedy
            )
        values = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if not np.isfinite(values).all():
            raise ControlVectorError(
                path, f"direction.{layer} holds NaN or infinite values", remedy
            )
        directions[layer] = values
    if not directions:
        raise ControlVectorError(path, "holds no direction", remedy)
    widths = {int(v.shape[0]) for v in directions.values()}
    if len(widths) > 1:
        raise ControlVectorError(path, f"its directions differ in width {sorted(widths)}", remedy)
    return directions, _string(reader, f"{ARCHITECTURE}.model_hint")


def _string(reader: Any, key: str) -> str | None:
    """A string field of the file, or ``None`` where it has none (or not a string)."""
    field = reader.get_field(key)
    if field is None or not field.data:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (UnicodeDecodeError, IndexError, TypeError):
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
