"""EmotionVectors / SteeringVector: validation, arithmetic, centring, names and placements
(the file format: test_vector_format.py and test_vector_files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import BANK_HIDDEN, BANK_LAYERS, bank_norms, bank_tensors, random_bank

from emovec import EmotionVectors, SteeringVector
from emovec.vectors import DIRECTION_RATIO_RANGE, RESERVED_NAMES, Placement

L, H = BANK_LAYERS, BANK_HIDDEN


# --- construction ---------------------------------------------------------------------


def test_empty_bank_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one emotion"):
        EmotionVectors({}, bank_norms(), model_name="m")


def test_mismatched_shapes_are_rejected() -> None:
    vectors = bank_tensors("joy", "fear")
    vectors["fear"] = torch.randn(L, H + 1)
    with pytest.raises(ValueError, match="num_layers, hidden_size"):
        EmotionVectors(vectors, bank_norms(), model_name="m")


def test_one_dimensional_vector_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_layers, hidden_size"):
        EmotionVectors({"joy": torch.randn(H)}, bank_norms(), model_name="m")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_name_the_emotion_and_layer(bad: float) -> None:
    vectors = bank_tensors("joy", "fear")
    vectors["fear"][2, 5] = bad
    with pytest.raises(ValueError) as info:
        EmotionVectors(vectors, bank_norms(), model_name="m")
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
        EmotionVectors(bank_tensors("joy"), norms, model_name="m")


@pytest.mark.parametrize("layers", [[0, L], [-1, 2]])
def test_recommended_layers_out_of_range_are_rejected(layers: list[int]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        EmotionVectors(bank_tensors("joy"), bank_norms(), model_name="m", recommended_layers=layers)


def test_shape_properties_and_repr() -> None:
    bank = EmotionVectors(
        bank_tensors("joy", "anger", "fear"),
        bank_norms(),
        model_name="tiny-llama",
        recommended_layers=[1, 2],
    )
    assert bank.emotions == ["joy", "anger", "fear"]
    assert list(bank) == bank.emotions and len(bank) == 3
    assert bank.num_layers == L and bank.hidden_size == H
    assert bank.recommended_layers == (1, 2)
    text = repr(bank)
    assert "tiny-llama" in text and "['joy', 'anger', 'fear']" in text
    assert f"num_layers={L}" in text and f"hidden_size={H}" in text and "1..2" in text
    assert "recommended_layers=none" in repr(
        EmotionVectors(bank_tensors("joy"), bank_norms(), model_name="m")
    )


def test_inputs_are_stored_as_float32_cpu_copies() -> None:
    source = bank_tensors("joy")
    bank = EmotionVectors({"joy": source["joy"].double()}, bank_norms().double(), model_name="m")
    assert bank.vector("joy").dtype == torch.float32
    assert bank.hidden_norms.dtype == torch.float32
    assert torch.allclose(bank.vector("joy"), source["joy"])


def test_unknown_emotion_lists_known_ones() -> None:
    bank = EmotionVectors(bank_tensors("joy", "fear"), bank_norms(), model_name="m")
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
    return EmotionVectors(bank_tensors("joy", "anger", "fear"), bank_norms(), model_name="m")


def test_indexing_gives_a_unit_combination(bank: EmotionVectors) -> None:
    joy = bank["joy"]
    assert isinstance(joy, SteeringVector)
    assert joy.bank is bank and joy.coefficients == {"joy": 1.0}


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
    assert combo == 0.7 * bank["joy"] + (-0.3) * bank["fear"]
    assert combo != 0.7 * bank["joy"]


def test_unit_vectors_have_the_layer_hidden_norm(bank: EmotionVectors) -> None:
    for emotion in bank:
        unit = bank.unit_vector(emotion)
        assert torch.allclose(unit.norm(dim=1), bank.hidden_norms, rtol=1e-6, atol=0)
        # Same direction as the raw vector, row by row.
        cosine = torch.nn.functional.cosine_similarity(unit, bank.vector(emotion), dim=1)
        assert torch.allclose(cosine, torch.ones(L), atol=1e-6)


def test_unit_vector_of_a_zero_layer_is_zero() -> None:
    vectors = bank_tensors("joy")
    vectors["joy"][1] = 0
    bank = EmotionVectors(vectors, bank_norms(), model_name="m")
    unit = bank.unit_vector("joy")
    assert torch.equal(unit[1], torch.zeros(H))
    assert torch.isfinite(unit).all()


def test_combining_across_banks_raises(bank: EmotionVectors) -> None:
    other = EmotionVectors(bank_tensors("joy", "anger", "fear"), bank_norms(), model_name="m")
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
    bank = EmotionVectors(vectors, bank_norms(), model_name="m", recommended_layers=[1])
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
    assert (
        centred.recommended_layers == bank.recommended_layers
        and centred.model_name == bank.model_name
    )
    assert torch.equal(centred.hidden_norms, bank.hidden_norms)
    assert centred is not bank and "centered" not in bank.settings


def test_partial_centring_removes_that_share_of_the_mean() -> None:
    """center(0.5) lies halfway between the raw and the fully centred vectors; 0 keeps them."""
    g = torch.Generator().manual_seed(2)
    vectors = {e: torch.randn(L, H, generator=g) + 3 for e in ("joy", "anger", "fear")}
    bank = EmotionVectors(vectors, bank_norms(), model_name="m")
    half = bank.center(0.5)
    for e in bank:
        midway = (bank.vector(e) + bank.center().vector(e)) / 2
        torch.testing.assert_close(half.vector(e), midway)
        torch.testing.assert_close(bank.center(0.0).vector(e), bank.vector(e))
    assert half.settings["centered"] == 0.5


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_centring_strength_outside_0_1_is_refused(strength: float) -> None:
    bank = EmotionVectors(
        {e: torch.ones(L, H) * i for i, e in enumerate(("joy", "anger"))},
        bank_norms(),
        model_name="m",
    )
    with pytest.raises(ValueError, match="share"):
        bank.center(strength)


def test_center_needs_two_emotions() -> None:
    with pytest.raises(ValueError, match="two emotions"):
        EmotionVectors(bank_tensors("joy"), bank_norms(), model_name="m").center()


def test_select_keeps_the_chosen_emotions(bank: EmotionVectors) -> None:
    chosen = bank.select(["fear", "joy"])
    assert chosen.emotions == ["fear", "joy"]
    assert torch.equal(chosen.vector("fear"), bank.vector("fear"))
    with pytest.raises(KeyError):
        bank.select(["love"])


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
        bank_tensors("joy", "fear"),
        bank_norms(),
        model_name="m",
        recommended_layers=[1],
        placements={"joy": joy},
    )
    assert bank.placements == {"joy": Placement((1, 2), 0.75)}
    assert EmotionVectors(bank_tensors("joy"), bank_norms(), model_name="m").placements == {}


def test_placement_for_an_unknown_emotion_is_rejected() -> None:
    """A placement naming an emotion the bank lacks is a mistake, not something to ignore."""
    with pytest.raises(ValueError, match="'love'"):
        EmotionVectors(
            bank_tensors("joy"),
            bank_norms(),
            model_name="m",
            placements={"love": Placement([1], 0.5)},
        )


@pytest.mark.parametrize("layers", [[L], [0, L + 3], [-1]])
def test_placement_layers_out_of_range_are_rejected(layers: list[int]) -> None:
    """Placement layers must exist in the bank (negative indices are not allowed here)."""
    with pytest.raises(ValueError, match="out of range"):
        EmotionVectors(
            bank_tensors("joy"),
            bank_norms(),
            model_name="m",
            placements={"joy": Placement(layers, 0.5)},
        )


def test_with_placements_merges_and_without_placements_clears() -> None:
    """with_placements() adds/replaces per emotion, without_placements() drops them all;
    neither touches the original bank or the rest of the metadata."""
    bank = EmotionVectors(
        bank_tensors("joy", "anger", "fear"),
        bank_norms(),
        model_name="m",
        recommended_layers=[1, 2],
        settings={"estimator": "x"},
        placements={"joy": Placement([0], 0.3), "anger": Placement([1], 0.4)},
    )
    updated = bank.with_placements({"anger": Placement([2, 3], 1.0), "fear": Placement([3], 0.6)})
    assert updated.placements == {
        "joy": Placement([0], 0.3),
        "anger": Placement([2, 3], 1.0),
        "fear": Placement([3], 0.6),
    }
    assert bank.placements == {"joy": Placement([0], 0.3), "anger": Placement([1], 0.4)}
    assert updated.recommended_layers == (1, 2) and updated.settings == {"estimator": "x"}
    assert all(torch.equal(updated.vector(e), bank.vector(e)) for e in bank)
    cleared = updated.without_placements()
    assert cleared.placements == {} and len(updated.placements) == 3
    assert cleared.recommended_layers == (1, 2) and cleared.settings == {"estimator": "x"}
    with pytest.raises(ValueError, match="out of range"):
        bank.with_placements({"fear": Placement([L], 0.5)})


def test_select_center_and_with_settings_keep_placements() -> None:
    """Derived banks keep placements; select() drops those of the emotions it drops."""
    placements = {"joy": Placement([1, 2], 0.8), "fear": Placement([3], 0.35)}
    bank = EmotionVectors(
        bank_tensors("joy", "anger", "fear"), bank_norms(), model_name="m", placements=placements
    )
    assert bank.center().placements == placements
    assert bank.with_settings(recommended_alpha={"joy": 1.0}).placements == placements
    assert bank.select(["anger", "joy"]).placements == {"joy": Placement([1, 2], 0.8)}
    assert bank.select(["anger"]).placements == {}


# --- strict types, names and plausible norms (issue 13) -------------------------------


@pytest.mark.parametrize("layers", ["12", [1.9], [True], [1, "2"], 3, None])
def test_placement_layers_must_be_integers(layers: object) -> None:
    """ "12" was read as layers (1, 2), [1.9] as 1 and [True] as 1: now refused."""
    with pytest.raises(TypeError, match="layers"):
        Placement(layers, 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("dose", ["0.5", True, None, [0.5]])
def test_placement_dose_must_be_a_number(dose: object) -> None:
    with pytest.raises(TypeError, match="dose"):
        Placement([1], dose)  # type: ignore[arg-type]


def test_placement_dose_too_large_for_a_float_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not finite"):
        Placement([1], 10**400)


@pytest.mark.parametrize("layers", ["12", [1.9], [False, 1], 2])
def test_recommended_layers_must_be_integers(layers: object) -> None:
    with pytest.raises(TypeError, match="recommended_layers"):
        EmotionVectors(bank_tensors("joy"), bank_norms(), model_name="m", recommended_layers=layers)  # type: ignore[arg-type]


def test_recommended_layers_are_stored_sorted_once_each() -> None:
    bank = EmotionVectors(
        bank_tensors("joy"), bank_norms(), model_name="m", recommended_layers=[3, 1, 3]
    )
    assert bank.recommended_layers == (1, 3)
    assert "1..3" in repr(bank)


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_emotions_named_like_steer_options_are_refused(name: str) -> None:
    """steer(model, vecs, max_dose=1.0) with an emotion "max_dose" steered nothing, silently."""
    with pytest.raises(ValueError, match=f"{name!r} is a parameter of emovec.steer"):
        EmotionVectors(bank_tensors("joy", name), bank_norms(), model_name="m")


def test_reserved_names_cover_steer_parameters() -> None:
    import inspect

    from emovec.steering import steer

    parameters = inspect.signature(steer).parameters.values()
    named = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
    assert named <= RESERVED_NAMES
    assert {"model", "vectors", "blocks", "max_dose", "layers"} <= RESERVED_NAMES


@pytest.mark.parametrize("name", ["", " joy", "joy ", "jo\ny", "tab\t", "\x00", "\ud800"])
def test_emotion_names_that_cannot_be_stored_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be stored"):
        EmotionVectors({name: torch.randn(L, H)}, bank_norms(), model_name="m")


def test_wrongly_typed_bank_parts_are_refused() -> None:
    with pytest.raises(TypeError, match="names must be strings"):
        EmotionVectors({1: torch.randn(L, H)}, bank_norms(), model_name="m")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="must be a tensor"):
        EmotionVectors({"joy": [[1.0] * H] * L}, bank_norms(), model_name="m")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="hidden_norms"):
        EmotionVectors(bank_tensors("joy"), [1.0] * L, model_name="m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model_name"):
        EmotionVectors(bank_tensors("joy"), bank_norms(), model_name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Placement"):
        EmotionVectors(
            bank_tensors("joy"),
            bank_norms(),
            model_name="m",
            placements={"joy": {"layers": [1]}},  # type: ignore[dict-item]
        )


def _realistic_bank(norms: list[float]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Vectors 5% as long as the hidden states, as in the shipped SmolLM2 bank."""
    hidden = torch.tensor(norms)
    vectors = bank_tensors("joy", "fear")
    return {
        e: v / v.norm(dim=1, keepdim=True) * hidden[:, None] * 0.05 for e, v in vectors.items()
    }, hidden


def test_a_flipped_exponent_bit_in_hidden_norms_is_refused() -> None:
    """161.5 -> 6.9e11 (bit 28 of the float32) loaded silently and left steer's dose at
    0.35 while the delta grew 4e9-fold; the ratio ‖vector‖ / hidden norm exposes it."""
    vectors, norms = _realistic_bank([47.5, 118.6, 161.5, 201.6])
    EmotionVectors(vectors, norms, model_name="m")  # the intact bank is fine
    flipped = norms.clone()
    flipped.view(torch.int32)[2] ^= 1 << 28
    assert float(flipped[2]) == pytest.approx(6.94e11, rel=1e-2)
    with pytest.raises(ValueError, match=r"hidden_norms\[2\].*implausible.*'joy'"):
        EmotionVectors(vectors, flipped, model_name="m")
    shrunk = norms.clone()
    shrunk.view(torch.int32)[1] ^= 1 << 28  # the other way: 2**-32 times
    with pytest.raises(ValueError, match=r"hidden_norms\[1\]"):
        EmotionVectors(vectors, shrunk, model_name="m")


def test_direction_ratio_range_allows_zero_rows() -> None:
    """A layer where an emotion's vector is exactly zero says nothing about the norm."""
    vectors = bank_tensors("joy")
    vectors["joy"][1] = 0
    bank = EmotionVectors(vectors, torch.tensor([1.0, 1e12, 2.0, 3.0]), model_name="m")
    assert float(bank.hidden_norms[1]) == pytest.approx(1e12)


def _shipped_files() -> list[Path]:
    from importlib import resources

    return sorted(Path(str(resources.files("emovec") / "data" / "vectors")).glob("*.safetensors"))


@pytest.mark.parametrize("path", _shipped_files(), ids=lambda p: p.name)
def test_shipped_files_load_and_sit_well_inside_the_ratio_range(path: Path) -> None:
    """Where a vector is not zero the shipped banks measure 0.0049-0.15 (trained vectors are
    zero outside their band): the range leaves three decades each side."""
    bank = EmotionVectors.load(path)
    ratios = torch.stack([bank.vector(e).norm(dim=1) for e in bank]) / bank.hidden_norms
    ratios = ratios[ratios > 0]
    low, high = DIRECTION_RATIO_RANGE
    assert float(ratios.min()) > 1000 * low and float(ratios.max()) < high / 1000


def test_placement_weights_share_the_dose_and_survive_the_file(tmp_path: Path) -> None:
    placement = Placement([3, 1], 0.6, weights=[3.0, 1.0])  # sorted with their layers
    assert placement.layers == (1, 3) and placement.weights == (1.0, 3.0)
    assert placement.layer_weights() == {1: 0.5, 3: 1.5}  # averaging 1
    assert Placement([1, 3], 0.6).layer_weights() == {1: 1.0, 3: 1.0}
    bank = random_bank(BANK_LAYERS, BANK_HIDDEN, layers=[1]).with_placements({"joy": placement})
    loaded = EmotionVectors.load(bank.save(tmp_path / "weighted.safetensors"))
    assert loaded.placements["joy"] == placement
    assert loaded.placements["joy"].to_dict()["weights"] == [1.0, 3.0]


@pytest.mark.parametrize(
    ("weights", "error"),
    [
        ([1.0], ValueError),  # one per layer
        ([1.0, -0.5], ValueError),
        ([0.0, 0.0], ValueError),
        ([1.0, float("nan")], ValueError),
        ([1.0, float("inf")], ValueError),
        ([1.0, True], TypeError),
        ([1.0, "2"], TypeError),
        ("1,2", TypeError),
    ],
)
def test_placement_weights_are_checked(weights: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="weights"):
        Placement([1, 3], 0.6, weights=weights)  # type: ignore[arg-type]


def test_placement_weights_need_distinct_layers() -> None:
    with pytest.raises(ValueError, match="distinct layer"):
        Placement([1, 1], 0.6, weights=[1.0, 2.0])
