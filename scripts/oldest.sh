#!/usr/bin/env bash
# The unit tests against the oldest transformers that pyproject.toml admits (its lower bound,
# or $OLDEST_TRANSFORMERS). .venv-oldest holds only that transformers and the releases it
# needs (huggingface_hub, tokenizers); everything else (torch, the test tools, the data
# packages) is read from .venv through a .pth file, so the venv takes seconds, not a second
# torch install. Run scripts/setup.sh first. Extra arguments go to pytest. The wheel test is
# left out: it builds and installs emovec, which does not depend on the transformers release.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "oldest.sh: no .venv; run scripts/setup.sh first" >&2; exit 1; }
OLDEST="${OLDEST_TRANSFORMERS:-$(sed -n 's/^ *"transformers>=\([0-9][0-9.]*\)[,"].*/\1/p' pyproject.toml)}"
[ -n "$OLDEST" ] || { echo "oldest.sh: no transformers>= bound in pyproject.toml" >&2; exit 1; }
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
# --without-pip: pip, too, comes from .venv, and installs into .venv-oldest (its sys.prefix).
[ -x .venv-oldest/bin/python ] || .venv/bin/python -m venv --without-pip .venv-oldest
echo '*' > .venv-oldest/.gitignore
OWN="$(purelib .venv-oldest/bin/python)"
# addsitedir (not a bare path) also runs .venv's own .pth files (the editable emovec).
echo "import site; site.addsitedir('$(purelib .venv/bin/python)')" > "$OWN/_emovec_main_venv.pth"
# .venv's newer releases stay there, shadowed by these. The newest transformers brings
# `kernels`, whose releases from 0.11 on need a huggingface_hub newer than the oldest
# transformers admits, and which that transformers imports wherever it finds it: shadow it by
# a release that works with the older hub. (The grep hides this machine's noisy local-index
# warnings; pip's own exit status still counts.)
.venv-oldest/bin/python -m pip --disable-pip-version-check -q install "transformers==$OLDEST" \
    'kernels<0.11' 2>&1 | { grep -v '^WARNING: Location' || true; }
.venv-oldest/bin/python - "$OLDEST" <<'EOF'
import sys

import transformers
from packaging.version import Version

assert Version(transformers.__version__) == Version(sys.argv[1]), transformers.__version__
print("oldest: transformers", transformers.__version__, "from", transformers.__file__)
EOF
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" .venv-oldest/bin/python -m pytest -m "not real_model" \
    --ignore=tests/test_wheel.py -p no:cacheprovider -q "$@"
