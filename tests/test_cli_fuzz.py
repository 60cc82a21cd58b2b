"""The command line under random, hostile arguments: every command, tiny models, bounded.

Each example is one command with its small, valid base arguments and up to three options
given hostile values (negative, zero, huge, NaN, empty, not UTF-8, special files, read-only
paths, unknown emotions). Whatever the values, ``emovec`` must exit 0 or 2, say why in one
line when it fails, never print a traceback, and change no file it was not asked to write.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    EMOTION_WORDS,
    FILLER_WORDS,
    NEUTRAL_WORDS,
    build_model,
    build_tokenizer,
    make_text_pairs,
    random_bank,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emovec.cli import build_parser, main

pytestmark = pytest.mark.filterwarnings("ignore")

NUM_LAYERS, HIDDEN = 3, 32  # the tiny llama of conftest
EXAMPLES = int(os.environ.get("EMOVEC_FUZZ_EXAMPLES", "120"))

# Values no option should take without a clear refusal, and some it should take.
HOSTILE = (
    "-1",
    "0",
    "1",
    "3",
    "0.5",
    "1e30",
    "nan",
    "-inf",
    "",
    "abc",
    "\udcff\udcfe",  # bytes that are not UTF-8, as Python receives them
    str(2**70),
    "/dev/zero",
    "{fifo}",
    "{readonly}/x.safetensors",
    "{tmp}",
    "joy=1",
    "joy=nan",
    "pride=1",
    "0-1",
    "5-2",
    "99",
)
# Options whose values reach another machine or change what the fuzz may write are given
# only by the base arguments.
FIXED = {"--help", "--blocks", "--block-layers"}


def _options(command: str) -> list[tuple[str, bool]]:
    """Every option of ``command``'s parser, and whether it takes a value."""
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [
        (name, action.nargs != 0)
        for action in commands.choices[command]._actions
        for name in action.option_strings
        if name.startswith("--") and name not in FIXED
    ]


COMMANDS = (
    "generate",
    "demo",
    "eval",
    "rescore",
    "extract",
    "train",
    "calibrate",
    "decode",
    "stimuli",
    "export",
)
OPTIONS = {command: _options(command) for command in COMMANDS}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The inputs every example may read (and must leave unchanged)."""
    root = tmp_path_factory.mktemp("fuzz")
    model = root / "tiny"
    build_model("llama").save_pretrained(model)
    build_tokenizer().save_pretrained(model)
    bank = root / "bank.safetensors"
    random_bank(NUM_LAYERS, HIDDEN, ("joy", "anger", "fear")).save(bank)
    pairs = root / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"emotional": e, "neutral": n}) + "\n" for e, n in make_text_pairs("joy", 6)
        )
    )
    trainable = root / "trainable"  # larger initial weights: a few steps lower the loss
    build_model("llama", num_layers=4, initializer_range=0.2).save_pretrained(trainable)
    build_tokenizer().save_pretrained(trainable)
    rng = random.Random("joy")
    triples = root / "triples.jsonl"
    triples.write_text(
        "".join(
            json.dumps(
                {
                    "query": " ".join(rng.choice(FILLER_WORDS) for _ in range(4)),
                    "emotional": " ".join(rng.choice(EMOTION_WORDS["joy"]) for _ in range(6)),
                    "neutral": " ".join(rng.choice(NEUTRAL_WORDS) for _ in range(6)),
                }
            )
            + "\n"
            for _ in range(10)
        )
    )
    queries = root / "queries.txt"
    queries.write_text("i was happy today\n")
    readonly = root / "readonly"
    readonly.mkdir()
    (readonly / "blocker").write_text("")
    report = root / "report.json"
    assert (
        main(
            [
                "eval",
                *_model(model, bank),
                "--queries",
                str(queries),
                "--alphas",
                "0",
                "1",
                "--max-new-tokens",
                "2",
                "--emotions",
                "joy",
                "--out",
                str(root / "r"),
            ]
        )
        == 0
    )
    os.replace(root / "r" / "report.json", report)
    return {
        "root": root,
        "model": model,
        "bank": bank,
        "pairs": pairs,
        "triples": triples,
        "queries": queries,
        "readonly": readonly,
        "report": report,
    }


def _model(model: Path, bank: Path) -> list[str]:
    return ["--model", str(model), "--vectors", str(bank)]


def _base(command: str, w: dict[str, Path], out: Path) -> list[str]:
    model, bank = w["model"], w["bank"]
    tokens = ["--max-new-tokens", "2"]
    return {
        "generate": [
            "generate",
            "i was happy",
            *_model(model, bank),
            "--emotion",
            "joy=0.5",
            *tokens,
        ],
        "demo": ["demo", *_model(model, bank), "--emotions", "joy", "--prompt", "hi", *tokens],
        "eval": [
            "eval",
            *_model(model, bank),
            "--queries",
            str(w["queries"]),
            "--alphas",
            "0",
            "--emotions",
            "joy",
            "--out",
            str(out / "eval"),
            *tokens,
        ],
        "rescore": ["rescore", str(w["report"]), "--out", str(out / "rescored")],
        "extract": [
            "extract",
            "--model",
            str(model),
            "--pairs",
            f"joy={w['pairs']}",
            "--out",
            str(out / "x.safetensors"),
        ],
        "train": [
            "train",
            "--model",
            str(model),
            "--triples",
            f"joy={w['triples']}",
            "--steps",
            "2",
            "--out",
            str(out / "t.safetensors"),
        ],
        "calibrate": [
            "calibrate",
            *_model(model, bank),
            "--out",
            str(out / "c.safetensors"),
            "--queries",
            "1",
            "--bands",
            "0-1",
            "--doses",
            "0.5",
            "--emotions",
            "joy",
            "--scorer",
            "nade",
            *tokens,
        ],
        "decode": ["decode", *_model(model, bank), "--emotions", "joy", "--top", "3"],
        "stimuli": [
            "stimuli",
            "--model",
            str(model),
            "--per-task",
            "1",
            "--draws",
            "1",
            "--temperatures",
            "1",
            "--vector-prompts",
            "2",
            "--stimuli",
            "EP02",
            "--out",
            str(out / "stimuli"),
        ],
        "export": [
            "export",
            "--vectors",
            str(bank),
            "--emotion",
            "joy=0.5",
            "--out",
            str(out / "joy.gguf"),
        ],
    }[command]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path


@st.composite
def _argv(draw: Any) -> tuple[str, list[tuple[str, str | None]]]:
    command = draw(st.sampled_from(COMMANDS))
    options = draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=3, unique=True))
    return command, [
        (name, draw(st.sampled_from(HOSTILE)) if takes else None) for name, takes in options
    ]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(drawn=_argv())
def test_any_arguments_exit_0_or_2_in_one_line_and_touch_nothing_else(
    drawn: tuple[str, list[tuple[str, str | None]]],
    world: dict[str, Path],
    fifo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    command, options = drawn
    monkeypatch.setenv("EMOVEC_CACHE", str(world["root"] / "cache"))
    out = tmp_path_factory.mktemp("out")
    monkeypatch.chdir(out)  # a relative path among the values lands here, not in the checkout
    fill = {"fifo": str(fifo), "readonly": str(world["readonly"] / "blocker"), "tmp": str(out)}
    argv = _base(command, world, out)
    for option, value in options:
        argv += [option] if value is None else [option, value.format(**fill)]
    before = _digests(world["root"])
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exited:  # the parser's refusals: usage, one error line, status 2
        code = exited.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        [line] = [line for line in err.splitlines() if "error:" in line]
        assert err.rstrip().endswith(line.rstrip()), (argv, err)
    # Asked to write: eval --store-recommendation writes into --vectors; the cache is the cache.
    kept = {"bank.safetensors"} if "--store-recommendation" in argv else set()
    after = {k: v for k, v in _digests(world["root"]).items() if not k.startswith("cache/")}
    before = {k: v for k, v in before.items() if not k.startswith("cache/")}
    assert {k: v for k, v in after.items() if k not in kept} == {
        k: v for k, v in before.items() if k not in kept
    }, argv
