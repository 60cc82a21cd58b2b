#!/usr/bin/env bash
# The wheel as a user gets it: built from the checkout, installed into a fresh venv with its
# declared dependencies only (the CPU torch==2.13.0 first, as the README says, then
# `pip install emovec-*.whl`, no extras), then `import emovec`, `emovec --help` and a steered
# generation on a tiny random model. An import of an extra's package at module level (say,
# matplotlib) fails here, where the test suite, which has every extra, cannot see it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Built from a copy: an in-tree build would write build/ into the checkout.
mkdir "$work/src"
cp pyproject.toml README.md LICENSE "$work/src/"
cp -r emovec "$work/src/emovec"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
# (The grep hides this machine's noisy local-index warnings; pip's own exit status still counts.)
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
quiet .venv/bin/python -m pip wheel --no-deps --no-build-isolation --disable-pip-version-check \
    -q -w "$work/dist" "$work/src"
"$PYTHON" -m venv "$work/venv"
quiet "$work/venv/bin/python" -m pip install --disable-pip-version-check -q 'torch==2.13.0'
quiet "$work/venv/bin/python" -m pip install --disable-pip-version-check -q "$work"/dist/emovec-*.whl
cd "$work"
venv/bin/python -c 'import emovec; print("emovec", emovec.__version__, "imports")'
venv/bin/emovec --help > /dev/null
venv/bin/python - <<'EOF'
import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from emovec import EmotionVectors, steer

config = LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4,
)
torch.manual_seed(0)
model = LlamaForCausalLM(config).eval()
bank = EmotionVectors({"joy": torch.randn(3, 32)}, torch.ones(3), model_name="tiny")
ids = torch.tensor([[1, 2, 3, 4]])
options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
plain = model.generate(ids, **options)
with steer(model, bank, joy=4.0, max_dose=math.inf):
    steered = model.generate(ids, **options)
assert not torch.equal(plain, steered), "steering changed nothing"
assert torch.equal(plain, model.generate(ids, **options)), "the hooks stayed"
print("a steered generation with the declared dependencies only: ok")
EOF
# Without the [serve] extra, `emovec serve` says how to install it, in one line, status 2.
status=0
venv/bin/emovec serve --port 0 > serve.out 2>&1 || status=$?
[ "$status" = 2 ] && [ "$(wc -l < serve.out)" = 1 ] && grep -q "pip install 'emovec\[serve\]'" serve.out \
    || { echo "wheel_check: emovec serve without the extra printed (status $status):" >&2; cat serve.out >&2; exit 1; }
echo "emovec serve without the [serve] extra: one line, status 2"
