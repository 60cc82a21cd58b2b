"""The command line fails cleanly (one line on stderr, exit status 2, checked before the long
work), and its decoding options default to the library's, as the vectors were calibrated."""

from __future__ import annotations

import json
import os
from inspect import signature
from pathlib import Path
from typing import Any

import pytest
from conftest import build_model, build_tokenizer, random_bank

from emovec import EmotionVectors, _cli_options, cli
from emovec.cli import main
from emovec.evaluation import evaluate
from emovec.evaluation.calibration import DEFAULT_DECODING
from emovec.generation import Decoding

SHIPPED_BANK = Path(__file__).parent.parent / "vectors" / "smollm2-135m-instruct.safetensors"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "emovec-cache"))


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    """The error: the last line of stderr and its only one (before it: progress, timing)."""
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error" in line.lower()]
    assert line.startswith("emovec: error: ") and err.rstrip().endswith(line), err
    return line


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the command must stop before it."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(_cli_options, "load_model", refuse)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_model("llama").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A path no one can write below (its parent is a file), also when running as root."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "out"


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied", "/models/tiny"),
        OSError(28, "No space left on device"),
        ModuleNotFoundError("The embedded model needs its weights.\n    pip install x"),
    ],
)
def test_os_errors_are_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(_cli_options, "load_model", fail)
    code, out, err = run(capsys, "generate", "hi")
    assert (code, out) == (2, "")
    line = _one_error_line(err)
    assert str(error).splitlines()[0] in line
    if isinstance(error, ModuleNotFoundError):
        assert line.endswith("needs its weights. pip install x")


def test_a_damaged_vector_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_folder: Path
) -> None:
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    code, _, err = run(capsys, "generate", "hi", "--model", tiny_folder, "--vectors", damaged)
    assert code == 2
    _one_error_line(err)


def test_an_interrupt_is_reported_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli_options, "load_model", interrupt)
    code, _, err = run(capsys, "generate", "hi")
    assert code == 130
    assert err.strip() == "emovec: interrupted"


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--out", "{out}"],
        ["eval", "--vectors", "{out}/v.safetensors", "--store-recommendation"],
        ["calibrate", "--out", "{out}/v.safetensors"],
        ["calibrate", "--out", "{tmp}/v.safetensors", "--report", "{out}"],
        ["rescore", "{tmp}/report.json", "--out", "{out}"],
    ],
)
def test_unwritable_outputs_fail_before_the_long_work(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    unwritable: Path,
    no_model: None,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    def no_report(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the report was read before the output was checked")

    monkeypatch.setattr("emovec.evaluation.EvaluationReport.from_json", no_report)
    given = [a.format(out=unwritable, tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *given)
    assert code == 2
    assert str(unwritable) in _one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "--out", "{tmp}/v.safetensors", "--batch-size", "-1"],
        ["calibrate", "--out", "{tmp}/v.safetensors", "--batch-size", "0"],
        ["calibrate", "--out", "{tmp}/v.safetensors", "--queries", "-1"],
        ["calibrate", "--out", "{tmp}/v.safetensors", "--max-new-tokens", "0"],
        ["eval", "--out", "{tmp}/r", "--batch-size", "-1"],
        ["eval", "--out", "{tmp}/r", "--queries", "0"],
        ["generate", "hi", "--max-new-tokens", "-3"],
        ["extract", "--out", "{tmp}/v.safetensors", "--batch-size", "0"],
        ["train", "--out", "{tmp}/v.safetensors", "--steps", "0"],
        ["decode", "--top", "0"],
        ["stimuli", "--draws", "-2"],
        ["generate", "hi", "--repetition-penalty", "0"],
        ["generate", "hi", "--sample", "--temperature", "-1"],
        ["generate", "hi", "--sample", "--top-p", "1.5"],
        ["generate", "hi", "--seed", str(2**70)],
        ["eval", "--out", "{tmp}/r", "--alphas", "0", "nan"],
        ["extract", "--out", "{tmp}/v.safetensors", "--center", "5"],
        ["calibrate", "--out", "{tmp}/v.safetensors", "--doses", "0.5", "-1"],
        ["calibrate", "--out", "{tmp}/v.safetensors", "--min-topic-ratio", "inf"],
        ["train", "--out", "{tmp}/v.safetensors", "--seed", "-1"],
    ],
)
def test_numbers_out_of_range_are_refused_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_model: None, argv: list[str]
) -> None:
    """A batch size of -1 once generated nothing and deleted a calibrated recipe (exit 0),
    and a bad penalty, temperature or seed was refused only after a ~20 s model load (a seed
    of 2**70: "Overflow when unpacking long long"). Every count is a positive integer and
    every number in its range, refused by the parser (its usage, then one error line,
    status 2) or, for a number of queries that may be a file, by ``main`` (one line)."""
    capsys.readouterr()
    try:
        code = main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    [line] = [line for line in err.splitlines() if "error:" in line]
    assert "expected" in line or "positive" in line, line
    assert err.rstrip().endswith(line)
    assert not (tmp_path / "v.safetensors").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["rescore", "{source}", "--out", "{tmp}/r"],
        ["eval", "--queries", "{source}", "--out", "{tmp}/r"],
        ["extract", "--pairs", "joy={source}", "--out", "{tmp}/v.safetensors"],
        ["train", "--triples", "joy={source}", "--out", "{tmp}/v.safetensors"],
    ],
)
@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_a_device_or_a_fifo_as_input_is_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    no_model: None,
    argv: list[str],
    source: str,
) -> None:
    """Read whole, /dev/zero filled the memory (2.4 GB in 5 s, Ctrl-C ignored) and a FIFO
    blocked forever: both are refused before a byte is read (and before the model)."""
    if source == "fifo":
        source = str(tmp_path / "pipe")
        os.mkfifo(source)
    code, out, err = run(capsys, *[a.format(source=source, tmp=tmp_path) for a in argv])
    assert (code, out) == (2, "")
    assert "not a regular file" in _one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["calibrate"], "--out"),
        (["calibrate", "--vectors", str(SHIPPED_BANK)], "--out"),
        (["eval", "--store-recommendation"], "--vectors"),
        (["eval", "--store-recommendation", "--vectors", str(SHIPPED_BANK)], "--vectors"),
    ],
)
def test_the_shipped_bank_is_never_written(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    no_model: None,
    argv: list[str],
    option: str,
) -> None:
    """Without --out, calibrate once rewrote the package's own bank (in a wheel install:
    inside site-packages), and so did eval --store-recommendation without --vectors; both
    now need a file of the user's to write to."""
    before = SHIPPED_BANK.read_bytes()
    code, out, err = run(capsys, *argv, *(["--out", tmp_path / "r"] if "eval" in argv else []))
    assert (code, out) == (2, "")
    assert option in _one_error_line(err)
    assert SHIPPED_BANK.read_bytes() == before


def test_a_bad_vector_file_is_refused_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_model: None
) -> None:
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    for argv in (["generate", "hi"], ["eval", "--out", tmp_path / "r"], ["demo"]):
        code, out, err = run(capsys, *argv, "--vectors", damaged)
        assert (code, out) == (2, "")
        assert str(damaged) in _one_error_line(err)


@pytest.mark.parametrize("folder", ["empty", "/etc"])
def test_a_folder_without_a_model_is_named_as_such(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, folder: str
) -> None:
    """An empty folder or /etc as --model said "need sentencepiece or tiktoken installed"."""
    path = tmp_path / folder if folder == "empty" else Path(folder)
    path.mkdir(exist_ok=True)
    code, out, err = run(capsys, "generate", "hi", "--model", path)
    assert (code, out) == (2, "")
    assert "is a folder without a model (no config.json)" in _one_error_line(err)


def test_strengths_given_twice_or_beyond_the_dose_limit_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_folder: Path
) -> None:
    """``--emotion joy=1 --emotion joy=-2`` kept the last silently; joy=1e30 only warned
    and answered empty text; a command now answers at the dose asked for or says why not."""
    bank = tmp_path / "bank.safetensors"
    random_bank(3, 32, ("joy",)).save(bank)
    argv = ["generate", "hi", "--model", tiny_folder, "--vectors", bank, "--max-new-tokens", 2]
    code, out, err = run(capsys, *argv, "--emotion", "joy=1", "--emotion", "joy=-2")
    assert (code, out) == (2, "")
    assert "--emotion joy given twice (joy=1 and joy=-2)" in _one_error_line(err)
    code, out, err = run(capsys, *argv, "--emotion", "joy=1e30")
    assert (code, out) == (2, "")
    line = _one_error_line(err)
    assert "exceeds --max-dose=0.75" in line and "pass a larger --max-dose" in line, line
    code, out, err = run(capsys, *argv, "--emotion", "joy=1e30", "--max-dose", "1e40")
    assert (code, out) == (2, "")  # above any limit: the next norm would make NaN logits
    assert "every logit is NaN" in _one_error_line(err)
    code, out, err = run(capsys, *argv, "--emotion", "joy=1e3", "--max-dose", "1e40")
    assert code == 0, err  # the limit raised on purpose: answered at the dose asked for
    with pytest.raises(SystemExit):
        main([str(a) for a in argv] + ["--emotion", "joy=nan"])


def test_an_argument_that_is_not_utf8_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``emovec generate $'caf\\xe9 \\xff\\xfe'``: the bytes reach Python as lone surrogates,
    and the tokenizer raised a TypeError (a traceback, exit 1)."""
    undecodable = b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape")
    code, out, err = run(capsys, "generate", undecodable, "--emotion", "joy=1")
    assert (code, out) == (2, "")
    assert "is not UTF-8 text" in _one_error_line(err)


def test_a_tokenizer_larger_than_the_model_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A model embedding fewer tokens than its tokenizer has (another model's) failed with
    an IndexError deep in the first forward pass; load_model now names both sizes."""
    folder = tmp_path / "small-vocab"
    build_model("llama", vocab_size=20).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    code, out, err = run(capsys, "generate", "hi", "--model", folder, "--emotion", "joy=1")
    assert (code, out) == (2, "")
    assert "the model embeds only 20" in _one_error_line(err)


# --- inputs a decoder-only model refuses ----------------------------------------------------


def test_generate_with_a_tokenizer_that_returns_token_type_ids(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "tiny"
    build_model("llama").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    config = folder / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    config.write_text(json.dumps(settings))
    bank = tmp_path / "bank.safetensors"
    random_bank(3, 32, ("joy",)).save(bank)
    argv = ["--model", folder, "--vectors", bank, "--max-new-tokens", 2]
    code, out, err = run(capsys, "generate", "some words", "--emotion", "joy=1", *argv)
    assert code == 0, err
    assert out.strip()
    code, out, err = run(capsys, "demo", "--prompt", "a b", "--emotions", "joy", *argv)
    assert code == 0, err


# --- defaults: the library's, and the decoding the bank was calibrated with ---------------


def test_decoding_options_default_to_the_calibrated_decoding() -> None:
    parser = cli.build_parser()
    shipped = EmotionVectors.load(SHIPPED_BANK)
    bare = random_bank(3, 32, ("joy",))
    for command in (["generate", "hi"], ["demo"], ["eval"]):
        args = parser.parse_args(command)
        assert args.max_new_tokens == Decoding().max_new_tokens
        assert _cli_options._decoding(args, bare) == Decoding()
        assert _cli_options._decoding(args, shipped) == Decoding(repetition_penalty=1.15)
    args = parser.parse_args(
        ["generate", "hi", "--sample", "--temperature", "0.5", "--top-p", "0.8", "--seed", "3"]
    )
    assert _cli_options._decoding(args, shipped) == Decoding(
        do_sample=True, temperature=0.5, top_p=0.8, seed=3, repetition_penalty=1.15
    )
    args = parser.parse_args(["eval", "--repetition-penalty", "1", "--max-new-tokens", "5"])
    assert _cli_options._decoding(args, shipped) == Decoding(max_new_tokens=5)
    sampled = bare.with_settings(calibration={"decoding": {"do_sample": True, "temperature": 0.5}})
    assert _cli_options._decoding(parser.parse_args(["generate", "hi"]), sampled).do_sample is True
    args = parser.parse_args(["generate", "hi", "--no-sample"])
    assert _cli_options._decoding(args, sampled).do_sample is False


def test_eval_and_calibrate_defaults_are_the_library_defaults() -> None:
    parser = cli.build_parser()
    defaults = signature(evaluate).parameters
    args = parser.parse_args(["eval"])
    assert args.alphas == list(defaults["alphas"].default)
    assert args.batch_size == defaults["batch_size"].default
    assert args.positions is None  # as calibrated: "all" would override the placements
    args = parser.parse_args(["calibrate"])
    assert args.max_new_tokens == DEFAULT_DECODING.max_new_tokens
    assert args.repetition_penalty == DEFAULT_DECODING.repetition_penalty
