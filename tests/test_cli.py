"""The ``emovec`` command line, run in-process through ``emovec.cli.main`` on a tiny model.

The tiny tokenizer has no chat template, so generation prompts are ``Q: … A:``. Each command's
output is checked against the same computation done through the library directly.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import build_model, build_tokenizer, make_text_pairs, random_bank

from emovec import EmotionVectors, extract, steer
from emovec.cli import _parse_layers, main
from emovec.datasets import default_answer_pairs
from emovec.generation import generate_answers
from emovec.models import load_model

NUM_LAYERS, HIDDEN = 3, 32  # the tiny llama of conftest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "emovec-cache"
    monkeypatch.setenv("EMOVEC_CACHE", str(cache))
    return cache


def _save_tiny(folder: Path, **config: object) -> Path:
    build_model("llama", **config).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vectors") / "tiny.safetensors"
    random_bank(NUM_LAYERS, HIDDEN, ("joy", "anger", "fear")).save(path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything earlier
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- extract ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    joy, anger = folder / "joy.jsonl", folder / "anger.csv"
    joy.write_text(
        "".join(
            json.dumps({"emotional": e, "neutral": n}) + "\n" for e, n in make_text_pairs("joy", 6)
        )
    )
    with anger.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotional", "neutral"])
        writer.writerows(make_text_pairs("anger", 5))
    return {"joy": joy, "anger": anger}


def _reference_bank(model_dir: Path) -> EmotionVectors:
    model, tokenizer = load_model(str(model_dir))
    pairs = {"joy": make_text_pairs("joy", 6), "anger": make_text_pairs("anger", 5)}
    return extract(model, tokenizer, pairs, batch_size=4, progress=False)


def _extract_argv(model_dir: Path, pair_files: dict[str, Path], out: Path) -> list[object]:
    return [
        "extract",
        "--model",
        model_dir,
        "--pairs",
        f"joy={pair_files['joy']}",
        "--pairs",
        f"anger={pair_files['anger']}",
        "--out",
        out,
        "--batch-size",
        4,
    ]


def test_extract_writes_a_centered_bank(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model_dir: Path,
    pair_files: dict[str, Path],
) -> None:
    out = tmp_path / "v.safetensors"
    batch_sizes: list[object] = []

    def spy(*args: Any, **kwargs: Any) -> EmotionVectors:
        batch_sizes.append(kwargs.get("batch_size"))
        return extract(*args, **kwargs)

    monkeypatch.setattr("emovec.extraction.extract", spy)
    code, stdout, _ = run(capsys, *_extract_argv(model_dir, pair_files, out))
    assert code == 0
    assert batch_sizes == [4]
    assert str(out) in stdout

    bank = EmotionVectors.load(out)
    assert bank.emotions == ["joy", "anger"]
    assert bank.settings["centered"] == 1.0
    assert bank.settings["pairs_per_emotion"] == {"joy": 6, "anger": 5}
    assert bank.settings["data"] == "your pairs"
    assert (bank.num_layers, bank.hidden_size) == (NUM_LAYERS, HIDDEN)
    assert all(bank.vector(e).shape == (NUM_LAYERS, HIDDEN) for e in bank)
    assert bank.hidden_norms.shape == (NUM_LAYERS,)
    assert bank.model_name == str(model_dir)
    # Centred: the emotions sum to zero at every layer, and match the library's own result.
    assert torch.allclose(bank.mean_vector(), torch.zeros(NUM_LAYERS, HIDDEN), atol=1e-6)
    reference = _reference_bank(model_dir).center()
    for emotion in ("joy", "anger"):
        assert torch.allclose(bank.vector(emotion), reference.vector(emotion), atol=1e-5)
    assert torch.allclose(bank.hidden_norms, reference.hidden_norms)
    assert bank.recommended_layers == reference.recommended_layers


def test_extract_no_center_keeps_the_raw_vectors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_dir: Path,
    pair_files: dict[str, Path],
) -> None:
    out = tmp_path / "raw.safetensors"
    code, _, _ = run(capsys, *_extract_argv(model_dir, pair_files, out), "--no-center")
    assert code == 0

    bank = EmotionVectors.load(out)
    assert bank.emotions == ["joy", "anger"]
    assert "centered" not in bank.settings
    reference = _reference_bank(model_dir)
    for emotion in ("joy", "anger"):
        assert torch.allclose(bank.vector(emotion), reference.vector(emotion), atol=1e-5)
    assert not torch.allclose(bank.mean_vector(), torch.zeros(NUM_LAYERS, HIDDEN), atol=1e-4)


def test_extract_center_strength_subtracts_that_share_of_the_mean(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_dir: Path,
    pair_files: dict[str, Path],
) -> None:
    out = tmp_path / "half.safetensors"
    code, _, _ = run(capsys, *_extract_argv(model_dir, pair_files, out), "--center", "0.5")
    assert code == 0

    bank = EmotionVectors.load(out)
    assert bank.settings["centered"] == 0.5
    reference = _reference_bank(model_dir)
    for emotion in ("joy", "anger"):
        expected = reference.vector(emotion) - 0.5 * reference.mean_vector()
        assert torch.allclose(bank.vector(emotion), expected, atol=1e-5)


def test_extract_with_an_estimator_and_diagnostics(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_dir: Path,
    pair_files: dict[str, Path],
) -> None:
    out, report = tmp_path / "lda.safetensors", tmp_path / "diagnostics"
    argv = [*_extract_argv(model_dir, pair_files, out), "--no-center", "--estimator", "lda"]
    code, stdout, _ = run(
        capsys, *argv, "--reading", "last", "--layers-from", "diagnostics", "--diagnostics", report
    )
    assert code == 0
    bank = EmotionVectors.load(out)
    assert bank.settings["estimator"] == "lda"
    assert bank.settings["reading"] == "last_text_token"
    assert bank.settings["layers_from"] == "diagnostics"
    written = json.loads((report / "diagnostics.json").read_text())
    assert written["emotions"] == ["joy", "anger"]
    assert list(bank.recommended_layers or ()) == written["recommended_layers"]
    assert (report / "diagnostics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| layer |" in (report / "diagnostics.md").read_text()
    assert "Recommended layers" in stdout
    # The estimator changes the direction but keeps the mean difference's per-layer norm.
    model, tokenizer = load_model(str(model_dir))
    pairs = {"joy": make_text_pairs("joy", 6), "anger": make_text_pairs("anger", 5)}
    mean = extract(model, tokenizer, pairs, reading="last", progress=False)
    torch.testing.assert_close(
        bank.vector("joy").norm(dim=-1), mean.vector("joy").norm(dim=-1), rtol=1e-4, atol=1e-6
    )
    assert not torch.allclose(bank.vector("joy"), mean.vector("joy"), atol=1e-4)


def test_extract_rejects_pairs_without_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path
) -> None:
    out = tmp_path / "v.safetensors"
    code, _, err = run(capsys, "extract", "--model", model_dir, "--pairs", "joy", "--out", out)
    assert code == 2
    assert "EMOTION=FILE" in err
    assert not out.exists()

    code, _, err = run(
        capsys,
        "extract",
        "--model",
        model_dir,
        "--pairs",
        f"joy={tmp_path / 'nope.jsonl'}",
        "--out",
        out,
    )
    assert code == 2
    assert "nope.jsonl" in err
    assert not out.exists()


# --- generate -----------------------------------------------------------------------------

PROMPT = "some words"


def _library_answer(model_dir: Path, vectors_file: Path, **steering: object) -> str:
    model, tokenizer = load_model(str(model_dir))
    bank = EmotionVectors.load(vectors_file)
    with steer(model, bank, **steering):  # type: ignore[arg-type]
        return generate_answers(model, tokenizer, [PROMPT], max_new_tokens=5)[0]


def _generate(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path, *extra: object
) -> tuple[int, str, str]:
    return run(
        capsys,
        "generate",
        PROMPT,
        "--model",
        model_dir,
        "--vectors",
        vectors_file,
        "--max-new-tokens",
        5,
        *extra,
    )


def test_generate_prints_the_steered_answer(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path
) -> None:
    code, steered, err = _generate(capsys, model_dir, vectors_file, "--emotion", "joy=1")
    assert code == 0
    assert steered.strip()
    assert steered == _library_answer(model_dir, vectors_file, joy=1.0) + "\n"
    assert "loaded" in err  # timing goes to stderr, the answer alone to stdout

    code, zero, _ = _generate(capsys, model_dir, vectors_file, "--emotion", "joy=0")
    assert code == 0
    code, plain, _ = _generate(capsys, model_dir, vectors_file)
    assert code == 0
    assert plain.strip()
    assert zero == plain  # alpha 0 is no steering at all
    assert plain == _library_answer(model_dir, vectors_file) + "\n"
    assert steered != plain  # the steering did reach the model


def test_generate_passes_layers_scale_and_several_emotions(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path
) -> None:
    extra = ["--emotion", "joy=0.5", "--emotion", "fear=-0.25", "--layers", "0-1"]
    # Raw random vectors are far above the dose limit, which a command refuses unless raised.
    extra += ["--scale", "raw", "--max-dose", "1e9"]
    code, out, err = _generate(capsys, model_dir, vectors_file, *extra)
    assert code == 0, err
    expected = _library_answer(
        model_dir, vectors_file, joy=0.5, fear=-0.25, layers=[0, 1], scale="raw", max_dose=1e9
    )
    assert out == expected + "\n"


def test_generate_without_equals_is_an_argparse_error(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path
) -> None:
    with pytest.raises(SystemExit) as caught:
        _generate(capsys, model_dir, vectors_file, "--emotion", "joy")
    assert caught.value.code == 2
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if "error:" in line]
    assert "--emotion" in error
    assert "EMOTION=ALPHA" in error
    assert "'joy'" in error


def test_generate_unknown_emotion(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path
) -> None:
    code, out, err = _generate(capsys, model_dir, vectors_file, "--emotion", "pride=1")
    assert code == 2
    assert out == ""
    assert "pride" in err
    for known in ("joy", "anger", "fear"):
        assert known in err


def test_generate_vectors_of_another_model_shape(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path
) -> None:
    other = tmp_path / "deeper.safetensors"
    random_bank(NUM_LAYERS + 2, HIDDEN, ("joy",)).save(other)
    code, out, err = _generate(capsys, model_dir, other, "--emotion", "joy=1")
    assert code == 2
    assert out == ""
    assert f"{NUM_LAYERS + 2} layers x {HIDDEN} hidden" in err
    assert f"{NUM_LAYERS} layers x {HIDDEN} hidden" in err


def test_generate_missing_vector_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path
) -> None:
    missing = tmp_path / "missing.safetensors"
    code, out, err = _generate(capsys, model_dir, missing, "--emotion", "joy=1")
    assert code == 2
    assert out == ""
    assert str(missing) in err


# --- vectors for a model without --vectors: extracted once, cached under cache_dir() ------


@pytest.fixture
def fast_extract(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace extraction from the ~550 shipped pairs by a random bank of the model's shape."""
    calls: list[str] = []

    def fake(model: torch.nn.Module, tokenizer: object, **kwargs: object) -> EmotionVectors:
        calls.append(str(kwargs["model_name"]))
        config = model.config
        return random_bank(config.num_hidden_layers, config.hidden_size, ("joy",))

    monkeypatch.setattr("emovec.extraction.extract", fake)
    return calls


def test_generate_without_vectors_caches_them_in_the_cache_dir(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    _private_cache: Path,
    fast_extract: list[str],
) -> None:
    model_dir = _save_tiny(tmp_path / "models" / "tiny")
    for _ in range(2):
        code, out, _ = run(
            capsys,
            "generate",
            PROMPT,
            "--model",
            model_dir,
            "--emotion",
            "joy=1",
            "--max-new-tokens",
            2,
        )
        assert code == 0 and out.strip()
    assert fast_extract == [str(model_dir)]  # the second run reused the cached file
    # The cache lives in cache_dir(), not next to the user's model.
    stray = sorted(str(p) for p in (tmp_path / "models").glob("*.safetensors"))
    assert stray == [], "vectors were cached outside cache_dir()"
    assert list((_private_cache / "vectors").rglob("*.safetensors"))


def test_cached_vectors_of_one_local_model_are_not_used_for_another(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fast_extract: list[str],
) -> None:
    # Two projects, each with its own model in ./model; the second is deeper.
    _save_tiny(tmp_path / "a" / "model")
    _save_tiny(tmp_path / "b" / "model", num_layers=NUM_LAYERS + 1)
    for project in ("a", "b"):
        monkeypatch.chdir(tmp_path / project)
        code, out, err = run(
            capsys,
            "generate",
            PROMPT,
            "--model",
            "model",
            "--emotion",
            "joy=1",
            "--max-new-tokens",
            2,
        )
        assert code == 0, err
        assert out.strip()


# --- demo ---------------------------------------------------------------------------------


def test_demo_prints_plain_and_steered_answers(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path
) -> None:
    code, out, _ = run(
        capsys,
        "demo",
        "--model",
        model_dir,
        "--vectors",
        vectors_file,
        "--prompt",
        "a b",
        "--emotions",
        "joy",
        "--max-new-tokens",
        3,
    )
    assert code == 0
    lines = out.strip("\n").splitlines()
    assert lines[0] == "=== a b"
    assert len(lines) == 3
    model, tokenizer = load_model(str(model_dir))
    plain = generate_answers(model, tokenizer, ["a b"], max_new_tokens=3)[0]
    with steer(model, EmotionVectors.load(vectors_file), joy=1.0):
        joy = generate_answers(model, tokenizer, ["a b"], max_new_tokens=3)[0]
    assert plain and joy and plain != joy
    assert lines[1].split() == ["plain", *plain.split()]
    assert lines[2].split() == ["joy", "+1", *joy.split()]
    assert lines[1].startswith(" " * 6 + "plain ")  # labels right-aligned in one column
    assert lines[2].startswith(" " * 5 + "joy +1 ")


def test_demo_unknown_emotion(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path
) -> None:
    code, _, err = run(
        capsys,
        "demo",
        "--model",
        model_dir,
        "--vectors",
        vectors_file,
        "--prompt",
        "a b",
        "--emotions",
        "pride",
        "--max-new-tokens",
        1,
    )
    assert code == 2
    assert "pride" in err


# --- argument parsing ---------------------------------------------------------------------


def test_parse_layers() -> None:
    assert _parse_layers("10-12") == [10, 11, 12]
    assert _parse_layers("3,5") == [3, 5]
    assert _parse_layers("7") == [7]
    assert _parse_layers("-1") == [-1]


@pytest.mark.parametrize("text", ["a-b", "3-", "1,,2", "", "x", "1.5"])
def test_parse_layers_rejects_bad_input(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="10-19"):
        _parse_layers(text)


def test_bad_layers_is_an_argparse_error(
    capsys: pytest.CaptureFixture[str], model_dir: Path, vectors_file: Path
) -> None:
    with pytest.raises(SystemExit) as caught:
        _generate(capsys, model_dir, vectors_file, "--layers", "a-b")
    assert caught.value.code == 2
    assert "--layers" in capsys.readouterr().err


def test_python_dash_m_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emovec", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("demo", "generate", "extract"):
        assert command in result.stdout


def test_extract_from_the_shipped_answers_reads_them_as_answers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path
) -> None:
    out = tmp_path / "answers.safetensors"
    argv = ["extract", "--model", model_dir, "--data", "answers", "--emotions", "joy", "fear"]
    code, _, err = run(capsys, *argv, "--no-center", "--out", out, "--batch-size", 16)
    assert code == 0, err
    bank = EmotionVectors.load(out)
    assert bank.settings["pairs_per_emotion"] == {"joy": 100, "fear": 100}
    assert bank.settings["data"] == "shipped answers"
    model, tokenizer = load_model(str(model_dir))
    pairs = default_answer_pairs(["joy", "fear"])
    reference = extract(model, tokenizer, pairs, reading="response", progress=False)
    assert bank.settings["reading"] == reference.settings["reading"]
    for emotion in ("joy", "fear"):
        torch.testing.assert_close(bank.vector(emotion), reference.vector(emotion))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reading", "mean"], "--reading response"),
        (["--pairs", "joy=x.jsonl"], "drop --pairs"),
    ],
)
def test_extract_from_the_answers_refuses_conflicting_options(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model_dir: Path,
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "v.safetensors"
    argv = ["extract", "--model", model_dir, "--data", "answers", "--out", out, *extra]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert not out.exists()


# --- eval / calibrate: tolerance, clean decoding, offensive judge ------------------------


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_tolerance_options_default_to_the_library_tolerance(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults are read from Tolerance(), so changing the library changes the CLI."""
    from dataclasses import asdict, replace

    from emovec import _cli_options, cli
    from emovec.evaluation import Tolerance

    options = ["min_topic_ratio", "max_offensive_increase", "max_degenerate_increase"]
    options += ["max_perplexity_ratio", "max_invented_increase"]
    args = cli.build_parser().parse_args([command])
    assert {k: getattr(args, k) for k in options} == asdict(Tolerance())
    assert _cli_options._tolerance(args) == Tolerance()
    assert args.clean is True
    other = replace(
        Tolerance(), min_topic_ratio=0.5, max_offensive_increase=0.125, max_invented_increase=0.25
    )
    monkeypatch.setattr(_cli_options, "_TOLERANCE", other)
    args = cli.build_parser().parse_args([command, "--no-clean", "--max-perplexity-ratio", "3"])
    assert _cli_options._tolerance(args) == replace(other, max_perplexity_ratio=3.0)
    assert args.clean is False
    args = cli.build_parser().parse_args([command, "--max-invented-increase", "0.5"])
    assert _cli_options._tolerance(args) == replace(other, max_invented_increase=0.5)


def test_eval_and_rescore_with_the_default_offensive_judge(
    model_dir: Path, vectors_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`emovec eval` flags answers with the shipped judge; a report written before the
    offensive rate and reference existed gets both back from `emovec rescore`."""
    pytest.importorskip("profanity_check")
    from emovec.evaluation import EvaluationReport

    queries = tmp_path / "q.txt"
    queries.write_text("my sister called me\nthe dog ran in the park\n", encoding="utf-8")
    out = tmp_path / "eval"
    code, printed, err = run(
        capsys,
        "eval",
        "--model",
        model_dir,
        "--vectors",
        vectors_file,
        "--queries",
        queries,
        "--emotions",
        "joy",
        "--alphas",
        "0",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        out,
    )
    assert code == 0, err
    report = EvaluationReport.from_json(out / "report.json")
    assert report.settings["offensive_judge"] == "OffensiveJudge"
    assert report.settings["clean"] is True
    assert {r["offensive"] for r in report.records} <= {0.0, 1.0}
    assert "topic retention" in printed and "hand-written answers" in printed

    payload = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for record in payload["records"]:
        del record["offensive"], record["retention"]
    del payload["settings"]["reference_retention"], payload["settings"]["offensive_judge"]
    old = tmp_path / "old" / "report.json"
    old.parent.mkdir()
    old.write_text(json.dumps(payload), encoding="utf-8")
    code, printed, err = run(capsys, "rescore", old, "--out", tmp_path / "again")
    assert code == 0, err
    again = EvaluationReport.from_json(tmp_path / "again" / "report.json")
    assert [r["offensive"] for r in again.records] == [r["offensive"] for r in report.records]
    assert json.dumps([r["retention"] for r in again.records]) == json.dumps(
        [r["retention"] for r in report.records]
    )
    assert again.reference_retention == pytest.approx(report.reference_retention)
    assert again.settings["offensive_judge"] == "OffensiveJudge"
    assert (tmp_path / "again" / "front.png").read_bytes().startswith(b"\x89PNG")
