"""Hostile vector files: thousands of mutated files either load equal or are refused.

A tiny bank is saved, then each case mutates the file: bytes flipped, inserted, deleted or
cut off; metadata values retyped or edited, entries dropped, added or renamed; tensors
dropped, added, renamed, reshaped, retyped, or given bad values. Every case must either load
a bank equal to the source or raise :class:`VectorFileError` naming the file: no other
exception, no hang. Mutations that keep the file's own (source) hash must be refused by it
or be harmless; "rehashed" ones carry a correct hash of the mutated contents, so only strict
reading can refuse them (and they are built never to describe a valid different bank).
Outcome counts are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from emovec import EmotionVectors
from emovec.vectors import FORMAT, Placement, VectorFileError

EMOTIONS = ("joy", "anger")
L, H = 3, 4
BAND = (1, 2)


def _fuzz(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


def _source() -> EmotionVectors:
    generator = torch.Generator().manual_seed(0)
    return EmotionVectors(
        {e: torch.randn(L, H, generator=generator) for e in EMOTIONS},
        torch.tensor([1.5, 2.0, 4.0]),
        model_name="org/tiny",
        recommended_layers=BAND,
        settings={"estimator": "mean_difference", "pairs": {"joy": 3, "anger": 4}, "note": "é ✓"},
        placements={"joy": Placement([0, 1], 0.4, instruction="Answer joyfully.")},
        version="0.2.0",
    )


def _same(a: EmotionVectors, b: EmotionVectors) -> bool:
    return (
        a.emotions == b.emotions
        and all(torch.equal(a.vector(e), b.vector(e)) for e in a)
        and torch.equal(a.hidden_norms, b.hidden_norms)
        and (a.model_name, a.version, a.recommended_layers)
        == (b.model_name, b.version, b.recommended_layers)
        and a.settings == b.settings
        and a.placements == b.placements
    )


def spec_digest(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The content hash as emovec._format.digest documents it, written independently."""

    def frame(data: bytes) -> bytes:
        return struct.pack("<Q", len(data)) + data

    sha = hashlib.sha256()
    for key in sorted(k for k in metadata if k != "sha256"):
        sha.update(frame(key.encode()) + frame(metadata[key].encode()))
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(
            frame(name.encode()) + frame(b"F32") + frame(json.dumps(list(tensor.shape)).encode())
        )
        sha.update(frame(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()))
    return sha.hexdigest()


class _Case:
    """The source file, its parts, and the tally of outcomes of the mutated copies."""

    def __init__(self, folder: Path) -> None:
        self.bank = _source()
        self.data = self.bank.save(folder / "source.safetensors").read_bytes()
        with safe_open(str(folder / "source.safetensors"), framework="pt") as handle:
            self.metadata: dict[str, str] = dict(handle.metadata())
            self.tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        self.header_end = 8 + struct.unpack("<Q", self.data[:8])[0]
        self.path = folder / "mutated.safetensors"
        self.outcomes: Counter[str] = Counter()

    def write(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], rehash: bool
    ) -> None:
        metadata = dict(metadata)
        if rehash:
            metadata["sha256"] = spec_digest(metadata, tensors)
        save_file(
            {k: t.contiguous() for k, t in tensors.items()}, str(self.path), metadata=metadata
        )

    def check(self, *, must_refuse: bool = False) -> None:
        """Load the mutated file: equal to the source, or refused naming the file."""
        try:
            loaded = EmotionVectors.load(self.path)
        except VectorFileError as err:
            assert str(self.path) in str(err) and err.path == self.path
            self.outcomes["refused"] += 1
            self.outcomes[
                "refused by the hash" if "content hash" in str(err) else "refused by reading"
            ] += 1
            return
        assert not must_refuse, "a mutated file that cannot be valid loaded"
        assert _same(loaded, self.bank), "a mutated file loaded a different bank"
        self.outcomes["loaded-equal"] += 1

    def report(self, name: str, examples: int) -> None:
        total = self.outcomes["refused"] + self.outcomes["loaded-equal"]
        print(f"\n{name}: {total} files, {dict(self.outcomes)}")
        assert total >= examples // 2 and self.outcomes["refused"] > 0


# --- bytes ----------------------------------------------------------------------------

_BYTE_EXAMPLES = 1200


def _mutate_bytes(draw: Any, data: bytes, header_end: int) -> bytes:
    kind = draw(
        st.sampled_from(
            ["flip", "flip-data", "bit", "cut", "append", "insert", "delete", "length", "overwrite"]
        )
    )
    size = len(data)
    buffer = bytearray(data)
    if kind in ("flip", "flip-data"):
        low = header_end if kind == "flip-data" else 0
        for _ in range(draw(st.integers(1, 8))):
            buffer[draw(st.integers(low, size - 1))] ^= draw(st.integers(1, 255))
    elif kind == "bit":
        buffer[draw(st.integers(0, size - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "cut":
        del buffer[draw(st.integers(0, size - 1)) :]
    elif kind == "append":
        buffer += draw(st.binary(min_size=1, max_size=16))
    elif kind == "insert":
        at = draw(st.integers(0, size))
        buffer[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        at = draw(st.integers(0, size - 1))
        del buffer[at : at + draw(st.integers(1, 16))]
    elif kind == "length":
        buffer[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    else:
        at = draw(st.integers(0, size - 1))
        chunk = draw(st.binary(min_size=1, max_size=32))
        buffer[at : at + len(chunk)] = chunk
    return bytes(buffer)


def test_corrupted_bytes_load_equal_or_are_refused(tmp_path: Path) -> None:
    case = _Case(tmp_path)

    @_fuzz(_BYTE_EXAMPLES)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        case.path.write_bytes(_mutate_bytes(data.draw, case.data, case.header_end))
        case.check()

    run()
    case.report("bytes", _BYTE_EXAMPLES)


# --- metadata -------------------------------------------------------------------------

_METADATA_EXAMPLES = 600
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_RAW = st.sampled_from(
    [
        "",
        "12",
        '"12"',
        "[1.9]",
        "[true]",
        "[1, NaN]",
        "[Infinity]",
        "[1e400]",
        "null",
        "[]",
        "{}",
        '{"a": 1, "a": 2}',
        "[" * 5000 + "]" * 5000,
        "[1, 2",
        " 3",
        "03",
        "3.0",
        "\u0663",
    ]
)
_TEXT = st.one_of(_RAW, _JSON.map(json.dumps), st.text(max_size=12))
_BAD_DOSES: list[object] = ["0.5", True, None, [1], 0, -1.5, {}]
_BAD_PLACEMENT = st.sampled_from(
    [{"layers": [0], "dose": d} for d in _BAD_DOSES]
    + [{"layers": ls, "dose": 0.5} for ls in ("12", [1.9], [True], [], [L], [-1], None, [[0]])]
    + [{"layers": [0]}, {"dose": 0.5}, {"layers": [0], "dose": 0.5, "colour": "red"}]
    + [
        {"layers": [0], "dose": 0.5, k: v}
        for k in ("instruction", "persona", "positions")
        for v in (3, "", None)
    ]
    + [{"layers": [0], "dose": 0.5, "positions": "middle"}, [], "joy", 1]
    + [
        {"layers": [0, 1], "dose": 0.5, "weights": w}
        for w in ([1.0], [1.0, -1.0], [0, 0], [1, "2"], [1, True], "1,1", None, [1, 2, 3])
    ]
)


def _could_describe_another_bank(key: str, text: str) -> bool:
    """Whether a rehashed ``key: text`` might be valid yet not the source's (excluded)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if key == "emotions":
        return (
            isinstance(value, list)
            and all(isinstance(e, str) for e in value)
            and sorted(value) == sorted(EMOTIONS)
        )
    if key == "layers":
        ints = isinstance(value, list) and all(type(i) is int and 0 <= i < L for i in value)
        return value is None or (ints and tuple(sorted(set(value))) != BAND)
    if key == "settings":
        return isinstance(value, dict)
    if key == "placements":
        return isinstance(value, dict) and all(isinstance(p, dict) for p in value.values())
    return False


def test_edited_metadata_loads_equal_or_is_refused(tmp_path: Path) -> None:
    case = _Case(tmp_path)
    keys = sorted(case.metadata)

    @_fuzz(_METADATA_EXAMPLES)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        metadata = dict(case.metadata)
        kind = data.draw(st.sampled_from(["value", "typed", "placement", "drop", "add", "rename"]))
        rehash = kind in ("typed", "placement") or data.draw(st.booleans())
        key = data.draw(st.sampled_from(keys))
        if kind in ("value", "typed"):
            if rehash:
                assume(key not in ("model_name", "emovec_version", "sha256"))  # free text
            metadata[key] = data.draw(_TEXT)
            assume(not rehash or not _could_describe_another_bank(key, metadata[key]))
        elif kind == "placement":
            entry = data.draw(_BAD_PLACEMENT)
            emotion = data.draw(st.sampled_from([*EMOTIONS, "love"]))
            metadata["placements"] = json.dumps({emotion: entry})
        elif kind == "drop":
            assume(not rehash or key not in ("placements", "sha256"))  # optional entries
            del metadata[key]
        else:
            new = data.draw(st.text(min_size=1, max_size=12))
            assume(new not in metadata)
            metadata[new] = metadata.pop(key) if kind == "rename" else data.draw(_TEXT)
        case.write(case.tensors, metadata, rehash)
        case.check(must_refuse=rehash and kind != "drop")

    run()
    case.report("metadata", _METADATA_EXAMPLES)


# --- tensors --------------------------------------------------------------------------

_TENSOR_EXAMPLES = 400
_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
]


def _edit_tensors(draw: Any, tensors: dict[str, torch.Tensor]) -> None:
    kind = draw(st.sampled_from(["drop", "add", "rename", "shape", "dtype", "value", "norm"]))
    name = draw(st.sampled_from(sorted(tensors)))
    tensor = tensors[name].clone()
    if kind == "drop":
        del tensors[name]
    elif kind in ("add", "rename"):
        new = draw(
            st.one_of(st.text(min_size=1, max_size=10), st.text(max_size=6).map("emotion.".__add__))
        )
        assume(new not in tensors)
        tensors[new] = (
            tensors.pop(name) if kind == "rename" else torch.ones(draw(st.integers(1, 5)))
        )
    elif kind == "shape":
        shapes = [tensor.reshape(-1), tensor[None], tensor[:-1], torch.cat([tensor, tensor[:1]])]
        if tensor.dim() == 2:
            shapes += [tensor.T.contiguous(), tensor[:, :-1]]
        tensors[name] = draw(st.sampled_from([s for s in shapes if s.shape != tensor.shape]))
    elif kind == "dtype":
        tensors[name] = tensor.to(draw(st.sampled_from(_DTYPES)))
    elif kind == "value":
        flat = tensor.reshape(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(
            st.sampled_from([float("nan"), float("inf"), -float("inf")])
        )
        tensors[name] = flat.reshape(tensor.shape)
    else:  # a hidden norm off by 2**32 or more (a flipped exponent bit), zero or negative
        norms = tensors["hidden_norms"].clone()
        layer = draw(st.integers(0, L - 1))
        exponent = draw(st.integers(32, 120)) * draw(st.sampled_from([1, -1]))
        norms[layer] = draw(st.sampled_from([float(norms[layer]) * 2.0**exponent, 0.0, -1.0]))
        tensors["hidden_norms"] = norms


def test_edited_tensors_are_refused(tmp_path: Path) -> None:
    case = _Case(tmp_path)

    @_fuzz(_TENSOR_EXAMPLES)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        tensors = dict(case.tensors)
        _edit_tensors(data.draw, tensors)
        case.write(tensors, case.metadata, data.draw(st.booleans()))
        case.check(must_refuse=True)

    run()
    case.report("tensors", _TENSOR_EXAMPLES)


def test_the_stored_hash_follows_the_documented_recipe(tmp_path: Path) -> None:
    """The fuzz's rehashed files rely on it, and so may other readers of the format."""
    case = _Case(tmp_path)
    assert case.metadata["format"] == FORMAT
    assert case.metadata["sha256"] == spec_digest(case.metadata, case.tensors)
    case.write(case.tensors, case.metadata, rehash=True)
    case.check()
    assert case.outcomes == Counter({"loaded-equal": 1})


@pytest.mark.parametrize("rehash", [False, True])
def test_the_unmutated_file_loads_equal(tmp_path: Path, rehash: bool) -> None:
    case = _Case(tmp_path)
    case.write(case.tensors, case.metadata, rehash)
    case.check()
    assert case.outcomes["loaded-equal"] == 1
