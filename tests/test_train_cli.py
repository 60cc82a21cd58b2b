"""``emovec train``: the command trains what the library trains, writes it once, and refuses
bad input with one line and exit status 2."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import EMOTION_WORDS, FILLER_WORDS, NEUTRAL_WORDS, build_model, build_tokenizer

from emovec import EmotionVectors, train
from emovec.cli import main
from emovec.models import load_model

OPTIONS = ["--steps", 6, "--batch-size", 4, "--eval-every", 2, "--learning-rate", 0.3]


def _triples(emotion: str, count: int) -> list[dict[str, str]]:
    rng = random.Random(emotion)
    return [
        {
            "query": " ".join(rng.choice(FILLER_WORDS) for _ in range(4)),
            "emotional": " ".join(rng.choice(EMOTION_WORDS[emotion]) for _ in range(6)),
            "neutral": " ".join(rng.choice(NEUTRAL_WORDS) for _ in range(6)),
        }
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("train")
    build_model("llama", num_layers=4, initializer_range=0.2).save_pretrained(folder / "tiny")
    build_tokenizer().save_pretrained(folder / "tiny")
    triples = folder / "joy.jsonl"
    triples.write_text("".join(json.dumps(t) + "\n" for t in _triples("joy", 10)))
    pairs = folder / "pairs.jsonl"
    pairs.write_text('{"emotional": "happy glad", "neutral": "plain"}\n')
    return {"model": folder / "tiny", "joy": triples, "pairs": pairs}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_the_library_bank_with_its_alpha(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    out = tmp_path / "joy.safetensors"
    argv = ["train", "--model", files["model"], "--triples", f"joy={files['joy']}", *OPTIONS]
    code, stdout, err = run(
        capsys, *argv, "--precision", "float32", "--alpha", "joy=1.5", "--out", out
    )
    assert code == 0, err
    assert str(out) in stdout and "best step" in stdout
    written = EmotionVectors.load(out)
    model, tokenizer = load_model(str(files["model"]))
    triples = {"joy": [tuple(t.values()) for t in _triples("joy", 10)]}
    library = train(
        model, tokenizer, triples, steps=6, batch_size=4, eval_every=2, learning_rate=0.3,
        precision=None, progress=False,
    )  # fmt: skip
    assert torch.equal(written.vector("joy"), library.vector("joy"))
    assert written.placements["joy"].dose == pytest.approx(1.5 * library.placements["joy"].dose)
    assert written.placements["joy"].weights == library.placements["joy"].weights
    assert written.settings["alpha"] == {"joy": 1.5}
    assert written.settings["data_sha256"] == library.settings["data_sha256"]


def test_distillation_takes_the_teacher_instruction_from_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    out = tmp_path / "pride.safetensors"
    argv = ["train", "--model", files["model"], "--triples", f"pride={files['joy']}", *OPTIONS]
    code, _, err = run(
        capsys,
        *argv,
        *("--objective", "lm+distill", "--kl-weight", "0.5"),
        *("--instruction", "pride=Answer as someone proud.", "--out", out),
    )
    assert code == 0, err
    settings = EmotionVectors.load(out).settings
    assert settings["objective"] == "lm+distill" and settings["kl_weight"] == 0.5
    assert settings["instructions"] == {"pride": "Answer as someone proud."}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--triples", "joy"], "EMOTION=FILE"),
        (["--triples", "joy=PAIRS"], "query, emotional and neutral"),
        (["--triples", "joy=JOY", "--alpha", "anger=1"], "not trained"),
        (["--triples", "joy=JOY", "--alpha", "joy=-1"], "finite and positive"),
        (["--triples", "joy=JOY", "--emotions", "joy"], "drop it"),
        (["--triples", "joy=JOY", "--instruction", "joy=Be glad."], "lm+distill only"),
        (["--triples", "joy=JOY", "--objective", "lm+distill", "--instruction", "joy"], "=TEXT"),
        (["--triples", "pride=JOY", "--objective", "lm+distill"], "instruction for ['pride']"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    files: dict[str, Path],
    extra: list[str],
    message: str,
) -> None:
    extra = [
        e.replace("JOY", str(files["joy"])).replace("PAIRS", str(files["pairs"])) for e in extra
    ]
    out = tmp_path / "never.safetensors"
    code, _, err = run(capsys, "train", "--model", files["model"], *OPTIONS, *extra, "--out", out)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_unwritable_destination_fails_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, stdout, err = run(
        capsys, "train", "--model", files["model"], "--triples", f"joy={files['joy']}",
        "--out", blocker / "joy.safetensors",
    )  # fmt: skip
    assert code == 2 and "trained in" not in stdout and err.startswith("emovec: error:")


def test_layers_the_model_lacks_are_refused_after_loading_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    out = tmp_path / "never.safetensors"
    code, _, err = run(
        capsys, "train", "--model", files["model"], "--triples", f"joy={files['joy']}",
        "--layers", "7-9", "--out", out,
    )  # fmt: skip
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and errors == [
        "emovec: error: Layer 7 is out of range for 4 layers (0..3; negative indices count "
        "from the end)."
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--steps", "0", "positive integer"),
        ("--steps", "many", "positive integer"),
        ("--batch-size", "-3", "positive integer"),
        ("--learning-rate", "nan", "finite positive"),
        ("--beta", "-1", "finite positive"),
        ("--kl-weight", "nan", "finite positive"),
        ("--held-out", "1", "between 0 and 1"),
    ],
)
def test_numbers_are_checked_before_anything_loads(
    capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "--out", "x.safetensors", option, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
