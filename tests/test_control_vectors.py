"""GGUF control vectors: export → import gives what ``steer`` adds; hostile files are refused."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import build_model, random_bank
from torch import nn
from transformers import PreTrainedTokenizerFast

from emovec import EmotionVectors, Placement, Schedule, steer
from emovec.cli import main
from emovec.control_vectors import (
    ARCHITECTURE,
    ControlVectorError,
    ExportWarning,
    export_control_vector,
    load_control_vector,
)
from emovec.steering import DoseError, added

LAYERS = 6


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build_model("llama", num_layers=LAYERS)


@pytest.fixture(scope="module")
def bank(model: nn.Module) -> EmotionVectors:
    return random_bank(LAYERS, model.config.hidden_size, layers=[2, 3, 4])


def _deltas(model: nn.Module, bank: EmotionVectors, *args: object, **alphas: float) -> dict:
    steering = steer(model, bank, *args, **alphas)  # type: ignore[arg-type]
    return dict(zip(steering.layers, steering.deltas(), strict=True))


def _write(path: Path, tensors: Mapping[str, np.ndarray], architecture: str = ARCHITECTURE) -> Path:
    """A GGUF file as repeng writes control vectors (or as a hostile one looks)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string(f"{architecture}.model_hint", "llama")
    writer.add_uint32(f"{architecture}.layer_count", len(tensors))
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _read(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize(
    "mix",
    [
        {"joy": 1.0},
        {"joy": -0.8},
        {"joy": 0.7, "fear": -0.3},
        {"anger": 1.0, "joy": 0.25},
    ],
)
def test_export_then_import_adds_what_steer_adds(
    model: nn.Module,
    bank: EmotionVectors,
    tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
    mix: dict[str, float],
) -> None:
    path = export_control_vector(bank, tmp_path / "mix.gguf", mix)
    imported = load_control_vector(path, model, tokenizer)
    assert imported.emotions == ["control"]
    want = _deltas(model, bank, mix)
    got = _deltas(model, imported, control=1.0)
    assert sorted(got) == sorted(want) == [2, 3, 4]
    for layer in want:
        torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-6)
    # llama.cpp's --control-vector-scaled FILE s is steer's α = s (adding is linear)
    scaled = _deltas(model, imported, control=-2.5, max_dose=math.inf)
    for layer in want:
        torch.testing.assert_close(scaled[layer], -2.5 * want[layer], rtol=1e-5, atol=1e-6)


def test_a_combination_exports_as_its_keywords(bank: EmotionVectors, tmp_path: Path) -> None:
    combined = export_control_vector(0.7 * bank["joy"] - 0.3 * bank["fear"], tmp_path / "a.gguf")
    keywords = export_control_vector(bank, tmp_path / "b.gguf", joy=0.7, fear=-0.3)
    a, b = _read(combined), _read(keywords)
    assert a.keys() == b.keys() == {"direction.2", "direction.3", "direction.4"}
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7)


def test_the_file_is_what_llama_cpp_reads(bank: EmotionVectors, tmp_path: Path) -> None:
    path = export_control_vector(bank, tmp_path / "joy.gguf", joy=1.0)
    reader = gguf.GGUFReader(path)
    arch = reader.get_field("general.architecture")
    assert arch is not None and bytes(arch.parts[arch.data[0]]).decode() == ARCHITECTURE
    want = added(bank, joy=1.0)
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        layer = int(tensor.name.removeprefix("direction."))
        np.testing.assert_array_equal(np.array(tensor.data), want[layer].numpy())
    mix = reader.get_field("emovec.mix")
    assert mix is not None and json.loads(bytes(mix.parts[mix.data[0]])) == {"joy": 1.0}


def test_calibrated_placements_travel_with_their_weights(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    base = random_bank(LAYERS, model.config.hidden_size)
    placed = base.with_placements(
        {"joy": Placement(layers=(1, 3, 5), dose=0.9, weights=(0.2, 0.5, 0.3))}
    )
    path = export_control_vector(placed, tmp_path / "joy.gguf", joy=1.0)
    assert set(_read(path)) == {"direction.1", "direction.3", "direction.5"}
    imported = load_control_vector(path, model, tokenizer, emotion="joy")
    want, got = _deltas(model, placed, joy=1.0), _deltas(model, imported, joy=1.0)
    for layer in want:
        torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-6)


def test_block_zero_is_left_out_with_a_warning(bank: EmotionVectors, tmp_path: Path) -> None:
    with pytest.warns(ExportWarning, match="Block 0"):
        path = export_control_vector(bank, tmp_path / "a.gguf", joy=1.0, layers=[0, 1, 2])
    assert set(_read(path)) == {"direction.1", "direction.2"}
    with pytest.raises(ValueError, match="nothing an engine can apply"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportWarning)
        export_control_vector(bank, tmp_path / "b.gguf", joy=1.0, layers=[0])
    assert not (tmp_path / "b.gguf").exists()


def test_what_cannot_travel_is_refused_or_named(bank: EmotionVectors, tmp_path: Path) -> None:
    def placed(**options: object) -> EmotionVectors:
        return bank.with_placements({"joy": Placement(layers=(2, 3), dose=0.5, **options)})  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="every position"):
        export_control_vector(placed(positions="generated"), tmp_path / "a.gguf", joy=1.0)
    with pytest.raises(ValueError, match="schedule"):
        export_control_vector(
            placed(schedule=Schedule(begin=2.0, hold=4)), tmp_path / "a.gguf", joy=1
        )
    with pytest.warns(ExportWarning, match="persona and instruction"):
        export_control_vector(
            placed(persona="You are cheerful.", instruction="Be glad."), tmp_path / "a.gguf", joy=1
        )
    # layers= steers every position at a constant strength: nothing is left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_control_vector(placed(positions="generated"), tmp_path / "b.gguf", joy=1, layers=[2])
    assert not list(tmp_path.glob(".*"))  # no staging file left behind


def test_doses_over_the_limit_are_refused(bank: EmotionVectors, tmp_path: Path) -> None:
    with pytest.raises(DoseError):
        export_control_vector(bank, tmp_path / "a.gguf", joy=50.0)
    assert not (tmp_path / "a.gguf").exists()
    export_control_vector(bank, tmp_path / "a.gguf", joy=50.0, max_dose=100)
    with pytest.raises(KeyError, match="Unknown emotion"):
        export_control_vector(bank, tmp_path / "a.gguf", calm=1.0)


def test_a_repeng_file_imports(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    hidden = model.config.hidden_size
    rng = np.random.default_rng(0)
    directions = {f"direction.{n}": rng.standard_normal(hidden).astype(np.float32) for n in (1, 4)}
    bank = load_control_vector(_write(tmp_path / "r.gguf", directions), model, tokenizer)
    assert bank.model_name == "llama"
    assert bank.settings["estimator"] == "imported"
    got = _deltas(model, bank, control=1.0)
    assert sorted(got) == [1, 4]
    for n in (1, 4):
        torch.testing.assert_close(got[n], torch.from_numpy(directions[f"direction.{n}"]))
    saved = EmotionVectors.load(bank.save(tmp_path / "bank.safetensors"))
    torch.testing.assert_close(_deltas(model, saved, control=1.0)[4], got[4])
    card = (bank.save_pretrained(tmp_path / "hub") / "README.md").read_text()
    assert "Imported from a GGUF control vector" in card


def _hostile(hidden: int) -> dict[str, tuple[dict[str, np.ndarray], str, str]]:
    ok = np.ones(hidden, dtype=np.float32)
    nan = ok.copy()
    nan[3] = np.nan
    return {
        "architecture": ({"direction.1": ok}, "llama", "architecture is 'llama'"),
        "block 0": ({"direction.0": ok, "direction.1": ok}, ARCHITECTURE, "direction.0"),
        "dtype": ({"direction.1": ok.astype(np.float16)}, ARCHITECTURE, "not F32"),
        "width": ({"direction.1": np.ones(hidden + 1, np.float32)}, ARCHITECTURE, "wide"),
        "nan": ({"direction.1": nan}, ARCHITECTURE, "NaN or infinite"),
        "depth": ({f"direction.{LAYERS}": ok}, ARCHITECTURE, f"has {LAYERS} blocks"),
        "name": ({"direction.1": ok, "token_embd.weight": ok}, ARCHITECTURE, "token_embd"),
        "shape": ({"direction.1": np.ones((2, hidden), np.float32)}, ARCHITECTURE, "shape"),
        "empty": ({}, ARCHITECTURE, "no direction"),
        "zero": ({"direction.2": np.zeros(hidden, np.float32)}, ARCHITECTURE, "zero"),
        "mixed widths": (
            {"direction.1": ok, "direction.2": np.ones(hidden - 1, np.float32)},
            ARCHITECTURE,
            "differ in width",
        ),
    }


@pytest.mark.parametrize("case", list(_hostile(8)))
def test_a_hostile_file_gets_a_clear_error(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, tmp_path: Path, case: str
) -> None:
    tensors, architecture, message = _hostile(model.config.hidden_size)[case]
    path = _write(tmp_path / "bad.gguf", tensors, architecture)
    with pytest.raises(ControlVectorError, match=message) as caught:
        load_control_vector(path, model, tokenizer)
    assert str(path) in str(caught.value)


def test_files_that_are_not_gguf_are_refused(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    text = tmp_path / "joy.gguf"
    text.write_text("not a gguf file")
    with pytest.raises(ControlVectorError, match="not a GGUF file"):
        load_control_vector(text, model, tokenizer)
    truncated = tmp_path / "cut.gguf"
    good = _write(tmp_path / "good.gguf", {"direction.1": np.ones(8, np.float32)})
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ControlVectorError, match="readable"):
        load_control_vector(truncated, model, tokenizer)
    with pytest.raises(ControlVectorError, match="regular file"):
        load_control_vector(tmp_path, model, tokenizer)
    with pytest.raises(FileNotFoundError):
        load_control_vector(tmp_path / "missing.gguf", model, tokenizer)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.gguf")
        with pytest.raises(ControlVectorError, match="regular file"):
            load_control_vector(tmp_path / "fifo.gguf", model, tokenizer)


def test_cli_export_writes_the_mix(
    bank: EmotionVectors, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = bank.save(tmp_path / "bank.safetensors")
    out = tmp_path / "deep" / "joy.gguf"
    args = ["export", "--vectors", str(source), "--emotion", "joy=1", "--emotion", "fear=-0.5"]
    assert main([*args, "--out", str(out)]) == 0
    assert "--control-vector" in capsys.readouterr().out
    want = added(bank, joy=1.0, fear=-0.5)
    for name, values in _read(out).items():
        np.testing.assert_array_equal(values, want[int(name.split(".")[1])].numpy())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--emotion", "calm=1"], "Unknown emotion"),
        (["--emotion", "joy=80"], "dose"),
        (["--emotion", "joy=1", "--layers", "0"], "nothing an engine can apply"),
    ],
)
def test_cli_export_errors_are_one_line(
    bank: EmotionVectors,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    source = bank.save(tmp_path / "bank.safetensors")
    out = tmp_path / "x.gguf"
    assert main(["export", "--vectors", str(source), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("emovec: error:") and message in err[-1]
    assert not out.exists()


def test_cli_export_defaults_to_the_shipped_bank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from emovec.models import DEFAULT_MODEL
    from emovec.prebuilt import prebuilt_path

    shipped = prebuilt_path(DEFAULT_MODEL)
    assert shipped is not None
    out = tmp_path / "joy.gguf"
    assert main(["export", "--emotion", "joy=1", "--out", str(out)]) == 0
    want = added(EmotionVectors.load(shipped), joy=1.0)
    got = _read(out)
    assert set(got) == {f"direction.{n}" for n in range(want.shape[0]) if want[n].any()}
