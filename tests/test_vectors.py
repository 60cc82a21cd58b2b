"""EmotionVectors / SteeringVector: validation, arithmetic, centring and the file format."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_bank
from safetensors import safe_open
from safetensors.torch import save_file

import emovec.vectors
from emovec import EmotionVectors, SteeringVector
from emovec.vectors import FORMAT, Placement

L, H = 4, 8


def _vectors(*emotions: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {e: torch.randn(L, H, generator=g) for e in emotions}


def _norms() -> torch.Tensor:
    return torch.arange(1, L + 1, dtype=torch.float32)


# --- construction ---------------------------------------------------------------------


def test_empty_bank_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one emotion"):
        EmotionVectors({}, _norms(), model_name="m")


def test_mismatched_shapes_are_rejected() -> None:
    vectors = _vectors("joy", "fear")
    vectors["fear"] = torch.randn(L, H + 1)
    with pytest.raises(ValueError, match="num_layers, hidden_size"):
        EmotionVectors(vectors, _norms(), model_name="m")


def test_one_dimensional_vector_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_layers, hidden_size"):
        EmotionVectors({"joy": torch.randn(H)}, _norms(), model_name="m")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_name_the_emotion_and_layer(bad: float) -> None:
    vectors = _vectors("joy", "fear")
    vectors["fear"][2, 5] = bad
    with pytest.raises(ValueError) as info:
        EmotionVectors(vectors, _norms(), model_name="m")
    message = str(info.value)
    assert "'fear'" in message and "[2]" in message
    assert "'joy'" not in message


@pytest.mark.parametrize(
    "norms",
    [
        torch.ones(L + 1),  # wrong length
        torch.ones(L - 1),
        torch.tensor([1.0, 0.0, 1.0, 1.0]),  # zero
        torch.tensor([1.0, -2.0, 1.0, 1.0]),  # negative
        torch.tensor([1.0, float("nan"), 1.0, 1.0]),
        torch.tensor([1.0, float("inf"), 1.0, 1.0]),
    ],
)
def test_bad_hidden_norms_are_rejected(norms: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="hidden_norms"):
        EmotionVectors(_vectors("joy"), norms, model_name="m")


@pytest.mark.parametrize("layers", [[0, L], [-1, 2]])
def test_recommended_layers_out_of_range_are_rejected(layers: list[int]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        EmotionVectors(_vectors("joy"), _norms(), model_name="m", layers=layers)


def test_shape_properties_and_repr() -> None:
    bank = EmotionVectors(
        _vectors("joy", "anger", "fear"), _norms(), model_name="tiny-llama", layers=[1, 2]
    )
    assert bank.emotions == ["joy", "anger", "fear"]
    assert list(bank) == bank.emotions and len(bank) == 3
    assert bank.num_layers == L and bank.hidden_size == H
    assert bank.layers == (1, 2)
    text = repr(bank)
    assert "tiny-llama" in text and "['joy', 'anger', 'fear']" in text
    assert f"num_layers={L}" in text and f"hidden_size={H}" in text and "1..2" in text
    assert "recommended_layers=none" in repr(
        EmotionVectors(_vectors("joy"), _norms(), model_name="m")
    )


def test_inputs_are_stored_as_float32_cpu_copies() -> None:
    source = _vectors("joy")
    bank = EmotionVectors({"joy": source["joy"].double()}, _norms().double(), model_name="m")
    assert bank.vector("joy").dtype == torch.float32
    assert bank.hidden_norms.dtype == torch.float32
    assert torch.allclose(bank.vector("joy"), source["joy"])


def test_unknown_emotion_lists_known_ones() -> None:
    bank = EmotionVectors(_vectors("joy", "fear"), _norms(), model_name="m")
    with pytest.raises(KeyError) as info:
        bank["love"]
    message = str(info.value)
    assert "'love'" in message and "'joy'" in message and "'fear'" in message
    with pytest.raises(KeyError, match="love"):
        bank.vector("love")
    with pytest.raises(KeyError, match="love"):
        SteeringVector(bank, {"love": 1.0})


# --- arithmetic -----------------------------------------------------------------------


@pytest.fixture
def bank() -> EmotionVectors:
    return EmotionVectors(_vectors("joy", "anger", "fear"), _norms(), model_name="m")


def test_indexing_gives_a_unit_combination(bank: EmotionVectors) -> None:
    joy = bank["joy"]
    assert isinstance(joy, SteeringVector)
    assert joy.bank is bank and joy.coefficients == {"joy": 1.0}
    assert torch.equal(joy.tensor("raw"), bank.vector("joy"))


def test_linear_combination_coefficients(bank: EmotionVectors) -> None:
    combo = 0.7 * bank["joy"] - 0.3 * bank["fear"]
    assert combo.coefficients == {"joy": 0.7, "fear": -0.3}
    assert (bank["joy"] * 2).coefficients == {"joy": 2.0}
    assert (bank["joy"] / 4).coefficients == {"joy": 0.25}
    assert (-bank["anger"]).coefficients == {"anger": -1.0}
    summed = bank["joy"] + bank["anger"] + bank["joy"]
    assert summed.coefficients == {"joy": 2.0, "anger": 1.0}
    # Terms that cancel disappear.
    assert (bank["joy"] - bank["joy"]).coefficients == {}
    assert torch.equal((bank["joy"] - bank["joy"]).tensor("raw"), torch.zeros(L, H))
    assert combo == 0.7 * bank["joy"] + (-0.3) * bank["fear"]
    assert combo != 0.7 * bank["joy"]


def test_raw_tensor_is_the_exact_combination(bank: EmotionVectors) -> None:
    combo = 0.7 * bank["joy"] - 0.3 * bank["fear"]
    expected = 0.7 * bank.vector("joy") - 0.3 * bank.vector("fear")
    assert torch.equal(combo.tensor("raw"), expected)


def test_unit_vectors_have_the_layer_hidden_norm(bank: EmotionVectors) -> None:
    for emotion in bank:
        unit = bank.unit_vector(emotion)
        assert torch.allclose(unit.norm(dim=1), bank.hidden_norms, rtol=1e-6, atol=0)
        # Same direction as the raw vector, row by row.
        cosine = torch.nn.functional.cosine_similarity(unit, bank.vector(emotion), dim=1)
        assert torch.allclose(cosine, torch.ones(L), atol=1e-6)


def test_relative_tensor_combines_unit_vectors(bank: EmotionVectors) -> None:
    combo = 0.7 * bank["joy"] - 0.3 * bank["fear"]
    expected = 0.7 * bank.unit_vector("joy") - 0.3 * bank.unit_vector("fear")
    relative = combo.tensor("relative")
    assert torch.allclose(relative, expected, rtol=0, atol=1e-6)
    assert torch.equal(combo.tensor(), relative)  # relative is the default
    assert not torch.allclose(relative, combo.tensor("raw"))


def test_unit_vector_of_a_zero_layer_is_zero() -> None:
    vectors = _vectors("joy")
    vectors["joy"][1] = 0
    bank = EmotionVectors(vectors, _norms(), model_name="m")
    unit = bank.unit_vector("joy")
    assert torch.equal(unit[1], torch.zeros(H))
    assert torch.isfinite(unit).all()


def test_bad_scale_is_rejected(bank: EmotionVectors) -> None:
    with pytest.raises(ValueError, match="scale"):
        bank["joy"].tensor("absolute")  # type: ignore[arg-type]


def test_combining_across_banks_raises(bank: EmotionVectors) -> None:
    other = EmotionVectors(_vectors("joy", "anger", "fear"), _norms(), model_name="m")
    with pytest.raises(ValueError, match="same EmotionVectors bank"):
        bank["joy"] + other["fear"]
    with pytest.raises(ValueError, match="same EmotionVectors bank"):
        bank["joy"] - bank.center()["joy"]


def test_combining_with_non_vectors_is_a_type_error(bank: EmotionVectors) -> None:
    with pytest.raises(TypeError):
        bank["joy"] + 1.0  # type: ignore[operator]
    with pytest.raises(TypeError):
        bank["joy"] * bank["fear"]  # type: ignore[operator]


def test_repr_of_combination(bank: EmotionVectors) -> None:
    assert repr(0.7 * bank["joy"] - 0.3 * bank["fear"]) == (
        "SteeringVector(0.7*joy - 0.3*fear, model='m')"
    )


# --- centring and selection -----------------------------------------------------------


def test_center_removes_the_mean_and_the_shared_component() -> None:
    g = torch.Generator().manual_seed(1)
    common = torch.randn(L, H, generator=g) * 5
    vectors = {e: common + torch.randn(L, H, generator=g) for e in ("joy", "anger", "fear")}
    bank = EmotionVectors(vectors, _norms(), model_name="m", layers=[1])
    centred = bank.center()

    stacked = torch.stack([centred.vector(e) for e in centred])
    assert torch.allclose(stacked.mean(dim=0), torch.zeros(L, H), atol=1e-5)
    for e in bank:
        assert torch.allclose(centred.vector(e), bank.vector(e) - bank.mean_vector(), atol=1e-6)

    def mean_pairwise_cosine(b: EmotionVectors) -> float:
        flat = [b.vector(e).flatten() for e in b]
        cos = [
            torch.nn.functional.cosine_similarity(flat[i], flat[j], dim=0)
            for i in range(len(flat))
            for j in range(i + 1, len(flat))
        ]
        return float(torch.stack(cos).mean())

    assert mean_pairwise_cosine(bank) > 0.8
    assert mean_pairwise_cosine(centred) < 0.2
    # Metadata carries over, and the new bank says it is centred.
    assert centred.settings.get("centered") == 1.0
    assert centred.layers == bank.layers and centred.model_name == bank.model_name
    assert torch.equal(centred.hidden_norms, bank.hidden_norms)
    assert centred is not bank and "centered" not in bank.settings


def test_partial_centring_removes_that_share_of_the_mean() -> None:
    """center(0.5) lies halfway between the raw and the fully centred vectors; 0 keeps them."""
    g = torch.Generator().manual_seed(2)
    vectors = {e: torch.randn(L, H, generator=g) + 3 for e in ("joy", "anger", "fear")}
    bank = EmotionVectors(vectors, _norms(), model_name="m")
    half = bank.center(0.5)
    for e in bank:
        midway = (bank.vector(e) + bank.center().vector(e)) / 2
        torch.testing.assert_close(half.vector(e), midway)
        torch.testing.assert_close(bank.center(0.0).vector(e), bank.vector(e))
    assert half.settings["centered"] == 0.5


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_centring_strength_outside_0_1_is_refused(strength: float) -> None:
    bank = EmotionVectors(
        {e: torch.ones(L, H) * i for i, e in enumerate(("joy", "anger"))}, _norms(), model_name="m"
    )
    with pytest.raises(ValueError, match="strength"):
        bank.center(strength)


def test_center_needs_two_emotions() -> None:
    with pytest.raises(ValueError, match="two emotions"):
        EmotionVectors(_vectors("joy"), _norms(), model_name="m").center()


def test_select_keeps_the_chosen_emotions(bank: EmotionVectors) -> None:
    chosen = bank.select(["fear", "joy"])
    assert chosen.emotions == ["fear", "joy"]
    assert torch.equal(chosen.vector("fear"), bank.vector("fear"))
    with pytest.raises(KeyError):
        bank.select(["love"])


# --- files ----------------------------------------------------------------------------


def _full_bank() -> EmotionVectors:
    return EmotionVectors(
        _vectors("joy", "anger", "sadness", seed=3),
        torch.tensor([0.5, 1.25, 3.0, 7.5]),
        model_name="org/tiny-model",
        layers=[1, 2],
        settings={"method": "mean_difference", "pairs_per_emotion": {"joy": 3, "anger": 4}},
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
    assert loaded.layers == bank.layers
    assert loaded.settings == bank.settings
    assert loaded.version == bank.version
    assert loaded.num_layers == bank.num_layers and loaded.hidden_size == bank.hidden_size


def test_round_trip_without_recommended_layers(tmp_path: Path) -> None:
    bank = EmotionVectors(_vectors("joy"), _norms(), model_name="m")
    loaded = EmotionVectors.load(bank.save(str(tmp_path / "b.safetensors")))
    assert loaded.layers is None and loaded.settings == {}


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

    monkeypatch.setattr(emovec.vectors, "save_file", failing_save_file)
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

    monkeypatch.setattr(emovec.vectors, "save_file", failing_save_file)
    with pytest.raises(RuntimeError):
        EmotionVectors(_vectors("fear"), _norms(), model_name="new").save(target)
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
    with pytest.raises(ValueError, match="truncated or corrupt"):
        EmotionVectors.load(broken)


def test_loading_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        EmotionVectors.load(garbage)


def test_loading_a_foreign_safetensors_file(tmp_path: Path) -> None:
    foreign = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(ValueError, match="not an emovec vector file"):
        EmotionVectors.load(foreign)
    save_file({"weight": torch.zeros(2, 2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an emovec vector file"):
        EmotionVectors.load(foreign)


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
        {"emotion.joy": torch.ones(L, H), "hidden_norms": _norms()}, str(path), metadata=metadata
    )
    with pytest.raises(ValueError, match="incomplete"):
        EmotionVectors.load(path)


def test_random_bank_helper_round_trips(tmp_path: Path) -> None:
    bank = random_bank(3, 16, seed=5)
    loaded = EmotionVectors.load(bank.save(tmp_path / "r.safetensors"))
    assert all(torch.equal(loaded.vector(e), bank.vector(e)) for e in bank)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_strength_is_rejected(strength: float) -> None:
    bank = random_bank(3, 8)
    with pytest.raises(ValueError, match="must be finite"):
        bank["joy"] * strength


# --- placements -----------------------------------------------------------------------


def test_placement_sorts_and_deduplicates_its_layers() -> None:
    """Layers given in any order, with repeats, are stored once each in order, dose as float."""
    placement = Placement([3, 1, 3, 2], 1)
    assert placement.layers == (1, 2, 3)
    assert placement.dose == 1.0 and isinstance(placement.dose, float)
    assert placement.to_dict() == {"layers": [1, 2, 3], "dose": 1.0}
    assert placement == Placement((1, 2, 3), 1.0)  # equal once normalised


@pytest.mark.parametrize(
    ("layers", "dose", "match"),
    [
        ([], 0.5, "at least one layer"),
        ([1], 0.0, "finite and positive"),
        ([1], -0.5, "finite and positive"),
        ([1], float("nan"), "finite and positive"),
        ([1], float("inf"), "finite and positive"),
    ],
)
def test_placement_rejects_no_layers_and_bad_doses(
    layers: list[int], dose: float, match: str
) -> None:
    """A placement must steer somewhere, at a finite positive dose: α = 1 must mean something."""
    with pytest.raises(ValueError, match=match):
        Placement(layers, dose)


def test_bank_stores_its_placements() -> None:
    """Placements are kept per emotion; a bank built without them has none."""
    joy = Placement((2, 1), 0.75)
    bank = EmotionVectors(
        _vectors("joy", "fear"), _norms(), model_name="m", layers=[1], placements={"joy": joy}
    )
    assert bank.placements == {"joy": Placement((1, 2), 0.75)}
    assert EmotionVectors(_vectors("joy"), _norms(), model_name="m").placements == {}


def test_placement_for_an_unknown_emotion_is_rejected() -> None:
    """A placement naming an emotion the bank lacks is a mistake, not something to ignore."""
    with pytest.raises(ValueError, match="'love'"):
        EmotionVectors(
            _vectors("joy"), _norms(), model_name="m", placements={"love": Placement([1], 0.5)}
        )


@pytest.mark.parametrize("layers", [[L], [0, L + 3], [-1]])
def test_placement_layers_out_of_range_are_rejected(layers: list[int]) -> None:
    """Placement layers must exist in the bank (negative indices are not allowed here)."""
    with pytest.raises(ValueError, match="out of range"):
        EmotionVectors(
            _vectors("joy"), _norms(), model_name="m", placements={"joy": Placement(layers, 0.5)}
        )


def test_with_placements_merges_and_without_placements_clears() -> None:
    """with_placements() adds/replaces per emotion, without_placements() drops them all;
    neither touches the original bank or the rest of the metadata."""
    bank = EmotionVectors(
        _vectors("joy", "anger", "fear"),
        _norms(),
        model_name="m",
        layers=[1, 2],
        settings={"method": "x"},
        placements={"joy": Placement([0], 0.3), "anger": Placement([1], 0.4)},
    )
    updated = bank.with_placements({"anger": Placement([2, 3], 1.0), "fear": Placement([3], 0.6)})
    assert updated.placements == {
        "joy": Placement([0], 0.3),
        "anger": Placement([2, 3], 1.0),
        "fear": Placement([3], 0.6),
    }
    assert bank.placements == {"joy": Placement([0], 0.3), "anger": Placement([1], 0.4)}
    assert updated.layers == (1, 2) and updated.settings == {"method": "x"}
    assert all(torch.equal(updated.vector(e), bank.vector(e)) for e in bank)
    cleared = updated.without_placements()
    assert cleared.placements == {} and len(updated.placements) == 3
    assert cleared.layers == (1, 2) and cleared.settings == {"method": "x"}
    with pytest.raises(ValueError, match="out of range"):
        bank.with_placements({"fear": Placement([L], 0.5)})


def test_select_center_and_with_settings_keep_placements() -> None:
    """Derived banks keep placements; select() drops those of the emotions it drops."""
    placements = {"joy": Placement([1, 2], 0.8), "fear": Placement([3], 0.35)}
    bank = EmotionVectors(
        _vectors("joy", "anger", "fear"), _norms(), model_name="m", placements=placements
    )
    assert bank.center().placements == placements
    assert bank.with_settings(recommended_alpha={"joy": 1.0}).placements == placements
    assert bank.select(["anger", "joy"]).placements == {"joy": Placement([1, 2], 0.8)}
    assert bank.select(["anger"]).placements == {}


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
    assert loaded.settings == bank.settings and loaded.layers == bank.layers
    empty = EmotionVectors.load(_full_bank().save(tmp_path / "empty.safetensors"))
    assert empty.placements == {}


def test_files_written_before_placements_load_without_them(tmp_path: Path) -> None:
    """A vector file without the "placements" key (older emovec) loads with no placements."""
    path = tmp_path / "old.safetensors"
    metadata = {
        "format": FORMAT,
        "emovec_version": "0.1.0",
        "model_name": "m",
        "num_layers": str(L),
        "hidden_size": str(H),
        "emotions": json.dumps(["joy"]),
        "layers": json.dumps([1]),
        "settings": "{}",
    }
    vector = torch.randn(L, H)
    save_file({"emotion.joy": vector, "hidden_norms": _norms()}, str(path), metadata=metadata)
    loaded = EmotionVectors.load(path)
    assert loaded.placements == {}
    assert loaded.layers == (1,) and torch.equal(loaded.vector("joy"), vector)
