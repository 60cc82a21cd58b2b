"""Banks in the Hugging Face hub's layout: save_pretrained / from_pretrained and the model
card (emovec/_pretrained.py). Nothing here touches the network."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import bank_norms, bank_tensors
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError

from emovec import EmotionVectors, Placement, VectorFileError, _format, _hub, _pretrained
from emovec._card import render_card
from emovec._pretrained import BANK_FILE, CARD_FILE

SHIPPED = Path(__file__).parent.parent / "vectors" / "smollm2-135m-instruct.safetensors"

CALIBRATION = {
    "scorer": "PrototypeScorer",
    "queries": 40,
    "split": "calibration",
    "target_success": 0.8,
    "decoding": {"do_sample": False, "repetition_penalty": 1.15, "max_new_tokens": 48},
    "chosen": {
        "joy": {
            "alpha": 1.25,
            "layers": [1, 2, 3],
            "dose": 0.61234,
            "success": 0.775,
            "retention": 0.68637,
            "invented": 0.025,
            "degenerate": 0.0,
            "offensive": 0.0,
            "recipe": "vector-only-1.25",
        }
    },
}
TRAINING = {
    "joy": {
        "best_step": 40,
        "held_out_loss": 2.9605,
        "held_out_history": [3.6191, 2.9605, 2.9842],
        "triples": 100,
        "held_out": 20,
        "seconds": 79.1,
    }
}


def calibrated_bank(model_name: str = "tiny") -> EmotionVectors:
    """A bank with a placement, a calibration and a training record for joy, none for fear."""
    return EmotionVectors(
        bank_tensors("joy", "fear"),
        bank_norms(),
        model_name=model_name,
        recommended_layers=[1, 2],
        settings={
            "estimator": "trained",
            "objective": "lm",
            "steps": 60,
            "calibration": CALIBRATION,
            "training": TRAINING,
        },
        placements={"joy": Placement(layers=(1, 2, 3), dose=0.61234, weights=(1.0, 2.0, 1.5))},
    )


def extracted_bank(model_name: str = "tiny") -> EmotionVectors:
    """A bank as ``extract`` makes it: no placements, no calibration, no training."""
    return EmotionVectors(
        bank_tensors("joy", "anger"),
        bank_norms(),
        model_name=model_name,
        recommended_layers=[0, 1, 3],
        settings={"estimator": "mean_difference", "pairs_per_emotion": {"joy": 12, "anger": 12}},
    )


def front_matter(card: str) -> dict[str, Any]:
    """The card's YAML front matter, parsed."""
    assert card.startswith("---\n")
    head = card.split("\n---\n", 1)[0].removeprefix("---\n")
    yaml = pytest.importorskip("yaml")
    parsed = yaml.safe_load(head)
    assert isinstance(parsed, dict)
    return parsed


def row(card: str, emotion: str, after: str = "## Emotions") -> list[str]:
    """The cells of ``emotion``'s row in the first table after the heading ``after``."""
    section = card.split(after, 1)[1]
    line = next(line for line in section.splitlines() if line.startswith(f"| {emotion} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def shown(x: float) -> str:
    """A figure as the card shows it: at most three decimals."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


# --- the folder -----------------------------------------------------------------------


def test_a_bank_round_trips_through_a_folder(tmp_path: Path) -> None:
    bank = calibrated_bank()
    folder = bank.save_pretrained(tmp_path / "bank")
    assert folder == tmp_path / "bank"
    assert sorted(p.name for p in folder.iterdir()) == sorted([BANK_FILE, CARD_FILE])
    for loaded in (
        EmotionVectors.from_pretrained(folder),
        EmotionVectors.from_pretrained(str(folder)),
        EmotionVectors.from_pretrained(folder / BANK_FILE),  # the file itself
    ):
        assert loaded.emotions == bank.emotions
        for emotion in bank.emotions:
            assert torch.equal(loaded.vector(emotion), bank.vector(emotion))
        assert torch.equal(loaded.hidden_norms, bank.hidden_norms)
        assert loaded.placements == bank.placements
        assert loaded.settings == bank.settings
        assert loaded.model_name == bank.model_name
        assert loaded.recommended_layers == bank.recommended_layers
        assert loaded.version == bank.version


def test_the_card_is_utf8_with_parsable_front_matter(tmp_path: Path) -> None:
    folder = calibrated_bank("HuggingFaceTB/SmolLM2-135M-Instruct").save_pretrained(
        tmp_path / "bank", license="apache-2.0"
    )
    card = (folder / CARD_FILE).read_bytes().decode("utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "emovec"
    assert {"emovec", "steering-vectors", "emotion", "control-vector"} <= set(meta["tags"])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0"


def test_a_file_is_refused_as_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "bank"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match=r"is a file.*Pass the path of a folder"):
        calibrated_bank().save_pretrained(target)
    assert target.read_text() == "mine"
    with pytest.raises(ValueError, match=r"named like a vector file.*save\(\)"):
        calibrated_bank().save_pretrained(tmp_path / "bank.safetensors")
    assert not (tmp_path / "bank.safetensors").exists()


def test_an_existing_folder_has_only_the_two_files_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "bank"
    calibrated_bank().save_pretrained(folder)
    (folder / "notes.txt").write_text("kept")
    second = extracted_bank("other")
    second.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([BANK_FILE, CARD_FILE, "notes.txt"])
    assert (folder / "notes.txt").read_text() == "kept"
    loaded = EmotionVectors.from_pretrained(folder)
    assert loaded.model_name == "other" and loaded.emotions == ["joy", "anger"]
    assert "`other`" in (folder / CARD_FILE).read_text(encoding="utf-8")


def test_a_failed_write_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    old = tmp_path / "old"
    calibrated_bank().save_pretrained(old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(_format, "write", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        extracted_bank().save_pretrained(old)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # the old pair, whole
    with pytest.raises(RuntimeError, match="disk full"):
        extracted_bank().save_pretrained(tmp_path / "new" / "bank")
    assert not (tmp_path / "new").exists()


def test_bad_results_or_license_are_refused_before_writing(tmp_path: Path) -> None:
    bank = calibrated_bank()
    with pytest.raises(ValueError, match=r"'sorrow'.*lacks"):
        bank.save_pretrained(tmp_path / "a", results={"sorrow": {"success": 0.5}})
    with pytest.raises(ValueError, match="no number"):
        bank.save_pretrained(tmp_path / "a", results={"joy": {"success": "high"}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="one line"):
        bank.save_pretrained(tmp_path / "a", license="mit\nbase_model: evil/model")
    assert not (tmp_path / "a").exists()


# --- reading ----------------------------------------------------------------------------


def test_a_folder_without_the_bank_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# not a bank")
    with pytest.raises(FileNotFoundError) as caught:
        EmotionVectors.from_pretrained(tmp_path)
    assert str(tmp_path) in str(caught.value) and BANK_FILE in str(caught.value)
    assert "save_pretrained" in str(caught.value)


def test_a_tampered_bank_file_is_refused(tmp_path: Path) -> None:
    folder = calibrated_bank().save_pretrained(tmp_path / "bank")
    data = bytearray((folder / BANK_FILE).read_bytes())
    data[-5] ^= 0x40  # a bit of the last tensor
    (folder / BANK_FILE).write_bytes(bytes(data))
    with pytest.raises(VectorFileError, match="content hash"):
        EmotionVectors.from_pretrained(folder)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("missing.safetensors", FileNotFoundError, "No folder or vector file"),
        ("./nowhere", FileNotFoundError, "No folder or vector file"),
        ("a/b/c", FileNotFoundError, "No folder or vector file"),
        ("owner/bad name!", ValueError, "nor a valid Hugging Face repo id"),
        ("owner/--bank", ValueError, "nor a valid Hugging Face repo id"),
    ],
)
def test_names_that_are_neither_paths_nor_repo_ids_are_clear_errors(
    name: str, error: type[Exception], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # none of these exists here
    monkeypatch.setattr(_hub, "_hub_reachable", _no_probe)
    with pytest.raises(error, match=message):
        EmotionVectors.from_pretrained(name)


def _no_probe(endpoint: str) -> bool:
    raise AssertionError("the hub must not be probed")


def _no_download(*args: object, **kwargs: object) -> str:
    raise AssertionError("nothing may be downloaded")


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(_hub, "_hub_reachable", _no_probe)


def test_a_repo_id_fails_fast_and_clearly_in_offline_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch)
    monkeypatch.setattr(_pretrained, "hf_hub_download", _no_download)
    started = time.monotonic()
    with pytest.raises(OSError, match="offline mode") as caught:
        EmotionVectors.from_pretrained("emovec-test/no-such-bank", cache_dir=tmp_path)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"{BANK_FILE} of 'emovec-test/no-such-bank'" in message
    assert f"hf download emovec-test/no-such-bank {BANK_FILE}" in message


def test_a_repo_id_fails_fast_when_the_hub_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hub, "_hub_reachable", lambda endpoint: False)
    monkeypatch.setattr(_pretrained, "hf_hub_download", _no_download)
    with pytest.raises(OSError, match="cannot be reached"):
        EmotionVectors.from_pretrained("emovec-test/no-such-bank", cache_dir=tmp_path)


def test_a_cached_repo_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hub cache's layout: models--ORG--NAME/{refs/main, snapshots/REVISION/...}.
    repo = tmp_path / "models--emovec-test--bank"
    calibrated_bank().save_pretrained(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    _offline(monkeypatch)
    seen: list[dict[str, object]] = []
    real = _pretrained.hf_hub_download

    def spy(repo_id: str, filename: str, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(repo_id, filename, **kwargs)  # offline: reads the cache, no network

    monkeypatch.setattr(_pretrained, "hf_hub_download", spy)
    loaded = EmotionVectors.from_pretrained("emovec-test/bank", cache_dir=tmp_path)
    assert loaded.emotions == ["joy", "fear"]
    assert seen[0]["local_files_only"] is True and seen[0]["cache_dir"] == tmp_path


def test_a_repo_without_the_bank_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hub, "_offline", lambda: False)
    monkeypatch.setattr(_hub, "_hub_reachable", lambda endpoint: True)

    def missing(*args: object, **kwargs: object) -> str:
        raise EntryNotFoundError("404")

    monkeypatch.setattr(_pretrained, "hf_hub_download", missing)
    with pytest.raises(FileNotFoundError, match=f"has no {BANK_FILE}.*save_pretrained"):
        EmotionVectors.from_pretrained("emovec-test/a-model")


# --- the card -------------------------------------------------------------------------


def test_the_card_renders_the_banks_figures() -> None:
    card = render_card(calibrated_bank())
    assert "joy, fear" in card and "4 layers × 8 hidden units" in card
    assert "Recommended layers (the default band): 1–2." in card
    joy = row(card, "joy")
    assert joy[:3] == ["joy", "1–3", "0.612"]
    assert joy[3:] == ["1.25", "0.775", "0.686", "0.025", "0", "0", "vector-only-1.25"]
    fear = row(card, "fear")
    assert fear[:3] == ["fear", "1–2 (bank's)", "default"]
    assert set(fear[3:]) == {"—"}
    assert "No placement is recorded for fear" in card
    assert "judge PrototypeScorer" in card and "repetition penalty 1.15" in card
    training = row(card, "joy", after="## Training")
    assert training == ["joy", "40", shown(2.9605), "100", "20", "79.1", "3.619 → 2.984"]
    assert "objective lm, steps 60" in card
    assert "## Results" not in card


def test_a_bank_without_records_says_what_it_lacks() -> None:
    card = render_card(extracted_bank())
    assert "Extracted with `emovec.extract` (estimator `mean_difference`)" in card
    assert "| pairs_per_emotion | joy 12, anger 12 |" in card
    assert row(card, "joy")[:3] == ["joy", "0–1, 3 (bank's)", "default"]
    assert "records no calibration" in card and "## Training" not in card
    bare = EmotionVectors(bank_tensors("joy"), bank_norms(), model_name="tiny")
    card = render_card(bare)
    assert "does not record how it was made" in card
    assert "Recommended layers (the default band): not recorded." in card
    assert row(card, "joy")[:3] == ["joy", "default", "default"]


def test_the_callers_results_get_their_own_table() -> None:
    results = {"joy": {"success": 0.8125, "topic retention": 0.9}, "fear": {"success": 0.5}}
    card = render_card(calibrated_bank(), results=results)
    section = card.split("## Results", 1)[1].split("##", 1)[0]
    assert "measured by the person who published this bank" in section
    assert "| emotion | success | topic retention |" in section
    assert row(card, "joy", after="## Results") == ["joy", "0.812", "0.9"]
    assert row(card, "fear", after="## Results") == ["fear", "0.5", "—"]


@pytest.mark.parametrize(
    ("model_name", "repo_like"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("google/gemma-3-270m", True),
        ("smollm2-135m-instruct", False),
        ("tiny", False),
        ("/home/me/models/llama", False),
        ("out/a/b", False),
        ("owner/bad name", False),
    ],
)
def test_base_model_only_for_repo_like_names(model_name: str, repo_like: bool) -> None:
    card = render_card(calibrated_bank(model_name))
    meta = front_matter(card)
    assert ("base_model" in meta) is repo_like
    if repo_like:
        assert meta["base_model"] == model_name
    assert "license" not in meta


def test_a_license_with_yaml_characters_is_quoted() -> None:
    meta = front_matter(render_card(calibrated_bank(), license="other: see LICENSE # here"))
    assert meta["license"] == "other: see LICENSE # here"


def test_markup_in_names_cannot_break_the_tables() -> None:
    bank = EmotionVectors(bank_tensors("joy|calm", "fröhlich"), bank_norms(), model_name="m`x")
    card = render_card(bank)
    assert "| joy\\|calm |" in card and "| fröhlich |" in card
    assert "`` m`x ``" in card
    card.encode("utf-8")


def test_the_shipped_banks_card_shows_its_real_figures(tmp_path: Path) -> None:
    bank = EmotionVectors.load(SHIPPED)
    folder = bank.save_pretrained(tmp_path / "smollm2")
    card = (folder / CARD_FILE).read_text(encoding="utf-8")
    chosen = bank.settings["calibration"]["chosen"]
    for emotion in bank.emotions:
        cells = row(card, emotion)
        placement = bank.placements[emotion]
        assert cells[1] == f"{placement.layers[0]}–{placement.layers[-1]}"
        assert cells[2] == shown(placement.dose)
        assert cells[3] == shown(chosen[emotion]["alpha"])
        assert cells[4] == shown(chosen[emotion]["success"])
        assert cells[5] == shown(chosen[emotion]["retention"])
        loss = bank.settings["training"][emotion]["held_out_loss"]
        assert shown(loss) in row(card, emotion, after="## Training")
    assert "base_model" not in front_matter(card)  # "smollm2-135m-instruct" is no repo id
    assert 'EmotionVectors.from_pretrained("' in card and "pip install emovec" in card
    assert "with steer(model, vecs, joy=1.0):" in card
    assert not math.isnan(EmotionVectors.from_pretrained(folder).hidden_norms.sum().item())
