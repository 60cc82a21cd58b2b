"""The vector file: round trip, atomic writes, strict reading and the content hash."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import BANK_HIDDEN, BANK_LAYERS, bank_norms, bank_tensors, random_bank
from safetensors import safe_open
from safetensors.torch import save_file

import emovec._format
from emovec import EmotionVectors, Schedule
from emovec.vectors import FORMAT, Placement, VectorFileError

FORMAT_1 = "emovec.emotion-vectors/1"  # files written before the version was raised

L, H = BANK_LAYERS, BANK_HIDDEN


# --- round trip and atomic writes ----------------------------------------------------


def _full_bank() -> EmotionVectors:
    return EmotionVectors(
        bank_tensors("joy", "anger", "sadness", seed=3),
        torch.tensor([0.5, 1.25, 3.0, 7.5]),
        model_name="org/tiny-model",
        recommended_layers=[1, 2],
        settings={"estimator": "mean_difference", "pairs_per_emotion": {"joy": 3, "anger": 4}},
        version="9.9.9",
    )


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    bank = _full_bank()
    path = bank.save(tmp_path / "bank.safetensors")
    assert path == tmp_path / "bank.safetensors" and path.is_file()
    loaded = EmotionVectors.load(path)
    assert loaded.emotions == bank.emotions
    for e in bank:
        assert torch.equal(loaded.vector(e), bank.vector(e))
    assert torch.equal(loaded.hidden_norms, bank.hidden_norms)
    assert loaded.model_name == bank.model_name
    assert loaded.recommended_layers == bank.recommended_layers
    assert loaded.settings == bank.settings
    assert loaded.version == bank.version
    assert loaded.num_layers == bank.num_layers and loaded.hidden_size == bank.hidden_size


def test_round_trip_without_recommended_layers(tmp_path: Path) -> None:
    bank = EmotionVectors(bank_tensors("joy"), bank_norms(), model_name="m")
    loaded = EmotionVectors.load(bank.save(str(tmp_path / "b.safetensors")))
    assert loaded.recommended_layers is None and loaded.settings == {}


def test_save_creates_parent_directories(tmp_path: Path) -> None:
    path = _full_bank().save(tmp_path / "a" / "b" / "bank.safetensors")
    assert path.is_file()


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    bank = _full_bank()
    bank.save(tmp_path / "bank.safetensors")
    bank.save(tmp_path / "bank.safetensors")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors"]


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "other.txt").write_text("keep me")

    def failing_save_file(tensors: object, filename: str, metadata: object = None) -> None:
        with open(filename, "wb") as handle:  # a partial write, then the disk fills up
            handle.write(b"\x10\x00\x00\x00partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(emovec._format, "save_file", failing_save_file)
    target = tmp_path / "bank.safetensors"
    with pytest.raises(OSError, match="No space"):
        _full_bank().save(target)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt"]


def test_failed_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _full_bank().save(tmp_path / "bank.safetensors")
    before = target.read_bytes()

    def failing_save_file(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"garbage")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(emovec._format, "save_file", failing_save_file)
    with pytest.raises(RuntimeError):
        EmotionVectors(bank_tensors("fear"), bank_norms(), model_name="new").save(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_saved_file_has_the_permissions_of_a_normally_created_file(tmp_path: Path) -> None:
    # A vector file is meant to be shared; it should get the mode any other new file gets
    # under the current umask (typically 0o644), not the owner-only 0o600 of a temp file.
    umask = os.umask(0o022)
    try:
        path = _full_bank().save(tmp_path / "bank.safetensors")
        reference = tmp_path / "reference.bin"
        reference.write_bytes(b"")
    finally:
        os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(reference.stat().st_mode & 0o777)


def test_loading_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No vector file"):
        EmotionVectors.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        EmotionVectors.load(tmp_path)  # a directory is not a vector file


@pytest.mark.parametrize("keep", [0, 4, 8, 40, 0.5, -1])
def test_loading_a_truncated_file(tmp_path: Path, keep: float) -> None:
    data = _full_bank().save(tmp_path / "bank.safetensors").read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[:cut])
    with pytest.raises(VectorFileError, match="truncated or corrupt"):
        EmotionVectors.load(broken)


def test_loading_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(VectorFileError, match="truncated or corrupt"):
        EmotionVectors.load(garbage)


def test_loading_a_foreign_safetensors_file(tmp_path: Path) -> None:
    foreign = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(VectorFileError, match="not an emovec vector file"):
        EmotionVectors.load(foreign)
    save_file({"weight": torch.zeros(2, 2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(VectorFileError, match="not an emovec vector file"):
        EmotionVectors.load(foreign)


@pytest.mark.parametrize(("key", "value"), [("hidden_size", 500_000_000), ("num_layers", 10**6)])
def test_a_header_declaring_a_huge_tensor_is_refused_before_reading_it(
    tmp_path: Path, key: str, value: int
) -> None:
    """A forged header (hidden size 500,000,000, a sparse file of 8 KB on disk) once loaded
    as a bank in 15 s at 6 GB; the declared sizes are now bounded before any tensor is read."""
    path = _full_bank().save(tmp_path / "bank.safetensors")
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"][key] = str(value)
    shape = [value, H] if key == "num_layers" else [L, value]
    end = 0
    for name in sorted(n for n in header if n != "__metadata__"):
        dims = [L] if name == "hidden_norms" else shape
        count = dims[0] * (dims[1] if len(dims) > 1 else 1)
        header[name] = {"dtype": "F32", "shape": dims, "data_offsets": [end, end + 4 * count]}
        end += 4 * count
    forged = json.dumps(header).encode()
    forged += b" " * (-len(forged) % 8)
    with path.open("wb") as handle:
        handle.write(len(forged).to_bytes(8, "little") + forged)
        handle.truncate(8 + len(forged) + end)  # sparse: nothing is written
    with pytest.raises(VectorFileError, match=f"its '{key}' is {value}, more than any model"):
        EmotionVectors.load(path)


def test_loading_an_incomplete_emovec_file(tmp_path: Path) -> None:
    path = tmp_path / "incomplete.safetensors"
    metadata = {
        "format": FORMAT,
        "emovec_version": "0",
        "model_name": "m",
        "emotions": json.dumps(["joy", "fear"]),
        "layers": "null",
        "settings": "{}",
    }
    save_file(
        {"emotion.joy": torch.ones(L, H), "hidden_norms": bank_norms()},
        str(path),
        metadata=metadata,
    )
    with pytest.raises(VectorFileError, match="incomplete"):
        EmotionVectors.load(path)


def test_random_bank_helper_round_trips(tmp_path: Path) -> None:
    bank = random_bank(3, 16, seed=5)
    loaded = EmotionVectors.load(bank.save(tmp_path / "r.safetensors"))
    assert all(torch.equal(loaded.vector(e), bank.vector(e)) for e in bank)


def test_placements_round_trip_through_the_file(tmp_path: Path) -> None:
    """Placements are saved in the "placements" metadata as JSON and load back equal."""
    placements = {"joy": Placement([2, 1], 0.75), "sadness": Placement([0, 1, 2, 3], 1.25)}
    bank = _full_bank().with_placements(placements)
    path = bank.save(tmp_path / "bank.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        stored = json.loads(handle.metadata()["placements"])
    assert stored == {
        "joy": {"layers": [1, 2], "dose": 0.75},
        "sadness": {"layers": [0, 1, 2, 3], "dose": 1.25},
    }
    loaded = EmotionVectors.load(path)
    assert loaded.placements == bank.placements
    assert all(isinstance(p, Placement) for p in loaded.placements.values())
    assert loaded.settings == bank.settings
    assert loaded.recommended_layers == bank.recommended_layers
    empty = EmotionVectors.load(_full_bank().save(tmp_path / "empty.safetensors"))
    assert empty.placements == {}


def test_files_written_before_placements_load_without_them(tmp_path: Path) -> None:
    """A vector file without the "placements" key (older emovec) loads with no placements."""
    path = tmp_path / "old.safetensors"
    metadata = {
        "format": FORMAT_1,
        "emovec_version": "0.1.0",
        "model_name": "m",
        "num_layers": str(L),
        "hidden_size": str(H),
        "emotions": json.dumps(["joy"]),
        "layers": json.dumps([1]),
        "settings": "{}",
    }
    vector = torch.randn(L, H)
    save_file({"emotion.joy": vector, "hidden_norms": bank_norms()}, str(path), metadata=metadata)
    loaded = EmotionVectors.load(path)
    assert loaded.placements == {}
    assert loaded.recommended_layers == (1,) and torch.equal(loaded.vector("joy"), vector)


# --- strict reading (issue 13) --------------------------------------------------------


def _old_metadata(**changes: str) -> dict[str, str]:
    """Metadata of a valid two-emotion file written before content hashes, then ``changes``."""
    metadata = {
        "format": FORMAT_1,
        "emovec_version": "0.1.0",
        "model_name": "m",
        "num_layers": str(L),
        "hidden_size": str(H),
        "emotions": json.dumps(["joy", "fear"]),
        "layers": json.dumps([1, 2]),
        "settings": "{}",
        "placements": json.dumps({"joy": {"layers": [1], "dose": 0.5}}),
    }
    metadata.update(changes)
    return metadata


def _old_tensors() -> dict[str, torch.Tensor]:
    return {f"emotion.{e}": v for e, v in bank_tensors("joy", "fear").items()} | {
        "hidden_norms": bank_norms()
    }


def _refused(path: Path, match: str) -> VectorFileError:
    with pytest.raises(VectorFileError, match=match) as info:
        EmotionVectors.load(path)
    assert str(path) in str(info.value) and info.value.path == path
    return info.value


def test_a_valid_file_without_hash_loads(tmp_path: Path) -> None:
    """Files written before content hashes have no sha256 entry and still load (unchecked)."""
    path = tmp_path / "old.safetensors"
    save_file(_old_tensors(), str(path), metadata=_old_metadata())
    bank = EmotionVectors.load(path)
    assert bank.recommended_layers == (1, 2) and bank.placements == {"joy": Placement([1], 0.5)}


_PLACED = '{{"joy": {}}}'


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("layers", '"12"', "not a JSON list of integers"),  # was read as layers (1, 2)
        ("layers", "[1.9]", "not a JSON list of integers"),  # was read as 1
        ("layers", "[true]", "not a JSON list of integers"),  # was read as 1
        ("layers", "[1, NaN]", "not valid JSON"),
        ("layers", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("layers", "[1, 9]", "out of range"),
        ("num_layers", "04", "not a positive integer"),
        ("num_layers", " 4", "not a positive integer"),
        ("num_layers", "4.0", "not a positive integer"),
        ("num_layers", "\u0664", "not a positive integer"),  # Arabic-Indic four: int() takes it
        ("num_layers", "5", r"expected F32 \[5, 8\]"),  # declared shapes meet the tensors
        ("hidden_size", "9", r"expected F32 \[4, 9\]"),
        ("emotions", '"joy"', "not a non-empty JSON list"),
        ("emotions", "[]", "not a non-empty JSON list"),
        ("emotions", '["joy", "joy"]', "twice"),
        ("emotions", '["joy", 1]', "not a non-empty JSON list"),
        ("emotions", '["joy"]', r"holds tensors \['emotion.fear'\]"),
        ("emotions", '["joy", "fear", "love"]', "lacks the tensors"),
        ("settings", "[]", "not a JSON object"),
        ("settings", '{"a": 1, "a": 2}', "not valid JSON.*twice"),
        ("settings", "{", "not valid JSON"),
        ("placements", "[]", "not a JSON object"),
        ("placements", _PLACED.format('{"layers": [1], "dose": "0.5"}'), "dose.*not a number"),
        ("placements", _PLACED.format('{"layers": [1], "dose": true}'), "dose.*not a number"),
        ("placements", _PLACED.format('{"layers": [1], "dose": NaN}'), "not valid JSON"),
        ("placements", _PLACED.format('{"layers": [1], "dose": 1e400}'), "not valid JSON"),
        ("placements", _PLACED.format('{"layers": "12", "dose": 0.5}'), "list of integers"),
        ("placements", _PLACED.format('{"layers": [true], "dose": 0.5}'), "list of integers"),
        ("placements", _PLACED.format('{"layers": [1]}'), "needs 'layers' and 'dose'"),
        ("placements", _PLACED.format('{"layers": [1], "dose": 0.5, "x": 1}'), r"\['x'\]"),
        ("placements", _PLACED.format('{"layers": [1], "dose": 0.5, "persona": 3}'), "not text"),
        ("placements", _PLACED.format('{"layers": [1], "dose": -0.5}'), "finite and positive"),
        ("placements", _PLACED.format('{"layers": [], "dose": 0.5}'), "at least one layer"),
        ("placements", _PLACED.format('{"layers": [1], "dose": 0.5, "schedule": 2}'), "schedule"),
        (
            "placements",
            _PLACED.format('{"layers": [1], "dose": 0.5, "query_guidance": "2"}'),
            "query_guidance is '2'",
        ),
        (
            "placements",
            _PLACED.format('{"layers": [1], "dose": 0.5, "query_guidance": 0.5}'),
            "finite and >= 1",
        ),
        (
            "placements",
            _PLACED.format('{"layers": [1], "dose": 0.5, "schedule": {"begin": 0, "hold": 6}}'),
            "schedule",
        ),
        (
            "placements",
            _PLACED.format(
                '{"layers": [1], "dose": 0.5, '
                '"schedule": {"begin": 0, "hold": 6.5, "end": 1, "ramp": 8}}'
            ),
            "hold is 6.5",
        ),
        (
            "placements",
            _PLACED.format(
                '{"layers": [1], "dose": 0.5, '
                '"schedule": {"begin": 0, "hold": 6, "end": 1, "ramp": 0}}'
            ),
            "ramp >= 1",
        ),
        ("placements", '{"love": {"layers": [1], "dose": 0.5}}', "'love', which it lacks"),
        ("sha256", "abc", "not a SHA-256 digest"),
        ("colour", "red", r"entries \['colour'\]"),
    ],
)
def test_lenient_metadata_is_refused_naming_the_file(
    tmp_path: Path, key: str, value: str, match: str
) -> None:
    path = tmp_path / "edited.safetensors"
    save_file(_old_tensors(), str(path), metadata=_old_metadata(**{key: value}))
    _refused(path, match)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.pop("emotion.fear"), "lacks the tensors"),
        (
            lambda t: t.update(extra=torch.ones(2)),
            r"holds tensors \['extra'\] its metadata does not declare",
        ),
        (lambda t: t.update({"emotion.fear": torch.ones(L, H + 1)}), "expected F32"),
        (lambda t: t.update(hidden_norms=bank_norms().double()), "F64"),
        (lambda t: t.update(hidden_norms=bank_norms().half()), "F16"),
        (lambda t: t.update(hidden_norms=bank_norms()[None]), r"\[1, 4\]"),
    ],
)
def test_tensors_must_be_exactly_the_declared_ones(
    tmp_path: Path, change: object, match: str
) -> None:
    tensors = _old_tensors()
    change(tensors)  # type: ignore[operator]
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata=_old_metadata())
    _refused(path, match)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e30])
def test_bad_values_anywhere_in_the_tensors_are_refused(tmp_path: Path, bad: float) -> None:
    for name, where in (("hidden_norms", (2,)), ("emotion.fear", (1, 3))):
        tensors = _old_tensors()
        if bad in (0.0, -1.0, 1e30) and name != "hidden_norms":
            continue  # a zero or large vector component is fine
        tensors[name][where] = bad
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=_old_metadata())
        _refused(path, "does not hold a valid bank")


def test_a_reserved_emotion_name_in_a_file_is_refused(tmp_path: Path) -> None:
    tensors = _old_tensors()
    tensors["emotion.max_dose"] = tensors.pop("emotion.fear")
    path = tmp_path / "reserved.safetensors"
    save_file(tensors, str(path), metadata=_old_metadata(emotions='["joy", "max_dose"]'))
    _refused(path, "'max_dose' is a parameter of emovec.steer")


def test_read_errors_are_vector_file_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _full_bank().save(tmp_path / "bank.safetensors")

    def failing_open(*args: object, **kwargs: object) -> None:
        raise OSError("Input/output error")

    monkeypatch.setattr(emovec._format, "safe_open", failing_open)
    error = _refused(path, "Input/output error")
    assert isinstance(error, ValueError) and isinstance(error.__cause__, OSError)


# --- content hash ---------------------------------------------------------------------


def test_saved_files_carry_a_content_hash(tmp_path: Path) -> None:
    path = _full_bank().save(tmp_path / "bank.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata()["sha256"]
    assert len(stored) == 64 and set(stored) <= set("0123456789abcdef")


def _rewrite(path: Path, edit: object) -> None:
    """Rewrite ``path`` with ``edit(tensors, metadata)`` applied, keeping its stored hash."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118  # noqa: SIM118
    edit(tensors, metadata)  # type: ignore[operator]
    save_file(tensors, str(path), metadata=metadata)


def test_a_flipped_bit_in_the_data_is_refused(tmp_path: Path) -> None:
    """The lowest exponent bit halves or doubles a hidden norm: a plausible value that only
    the hash catches."""
    path = _full_bank().save(tmp_path / "bank.safetensors")
    _rewrite(path, lambda t, m: t["hidden_norms"].view(torch.int32).__ixor__(1 << 23))
    _refused(path, "content hash .* disagrees")


@pytest.mark.parametrize("key", ["model_name", "settings", "layers", "emovec_version"])
def test_an_edited_metadata_value_is_refused(tmp_path: Path, key: str) -> None:
    path = _full_bank().save(tmp_path / "bank.safetensors")
    replacement = {"model_name": "org/other", "settings": "{}", "layers": "[0]"}
    _rewrite(path, lambda t, m: m.update({key: replacement.get(key, "0.0.1")}))
    _refused(path, "content hash .* disagrees")


def test_dropping_the_hash_is_refused_unless_the_file_is_older(tmp_path: Path) -> None:
    bank = _full_bank()
    path = bank.save(tmp_path / "bank.safetensors")
    _rewrite(path, lambda t, m: m.pop("sha256"))
    with pytest.raises(VectorFileError, match=r"missing \['sha256'\]"):
        EmotionVectors.load(path)
    _rewrite(path, lambda t, m: m.update(format=FORMAT_1))  # version 1: loads unchecked
    loaded = EmotionVectors.load(path)
    assert all(torch.equal(loaded.vector(e), bank.vector(e)) for e in bank)


# --- versions (issue 23) ----------------------------------------------------------------

DATA = Path(__file__).parent / "data"


def test_a_real_file_of_format_1_still_loads_and_saves_as_the_current_format(
    tmp_path: Path,
) -> None:
    """tests/data/bank-format-1.safetensors was written by emovec's version-1 writer."""
    old = DATA / "bank-format-1.safetensors"
    with safe_open(str(old), framework="pt") as handle:
        assert handle.metadata()["format"] == FORMAT_1
    bank = EmotionVectors.load(old)
    assert bank.placements["joy"] == Placement((1, 2), 0.5, weights=(0.3, 0.2))
    assert bank.placements["anger"].schedule == Schedule(1.5, 2, 1.0, 4)
    assert bank.instruction("anger") == "Answer as someone furious."
    again = EmotionVectors.load(bank.save(tmp_path / "new.safetensors"))
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        assert handle.metadata()["format"] == FORMAT == "emovec.emotion-vectors/2"
    assert again.placements == bank.placements and again.settings == bank.settings
    assert all(torch.equal(again.vector(e), bank.vector(e)) for e in bank)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_the_shipped_files_are_of_the_current_format(name: str) -> None:
    path = Path(emovec.__file__).parent / "data" / "vectors" / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["format"] == FORMAT


def _resaved(tmp_path: Path, **changes: str | None) -> Path:
    """The format-1 file with its metadata changed (``None``: the entry removed)."""
    with safe_open(str(DATA / "bank-format-1.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    path = tmp_path / "changed.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_a_file_of_a_newer_format_asks_for_a_newer_emovec(tmp_path: Path) -> None:
    path = _resaved(tmp_path, format="emovec.emotion-vectors/3")
    with pytest.raises(VectorFileError, match=r"made by a newer emovec.*pip install -U emovec"):
        EmotionVectors.load(path)


@pytest.mark.parametrize(
    "tag", ["emovec.emotion-vectors/0", "emovec.emotion-vectors/02", "emovec.emotion-vectors/"]
)
def test_a_format_tag_that_is_no_version_is_not_an_emovec_file(tmp_path: Path, tag: str) -> None:
    with pytest.raises(VectorFileError, match="not an emovec vector file"):
        EmotionVectors.load(_resaved(tmp_path, format=tag))


@pytest.mark.parametrize("key", ["placements", "sha256"])
def test_format_2_requires_what_format_1_could_lack(tmp_path: Path, key: str) -> None:
    changes: dict[str, str | None] = {"format": FORMAT, key: None}
    with pytest.raises(VectorFileError, match=f"incomplete.*missing \\['{key}'\\]"):
        EmotionVectors.load(_resaved(tmp_path, **changes))
    EmotionVectors.load(_resaved(tmp_path, **{**changes, "format": FORMAT_1, "sha256": None}))
