#!/usr/bin/env bash
# Prove that a fresh virtual environment installs the whole course from wheelhouse/ with no index and no
# network: the same install `make lab` / `make test` run, with every pip setting of this machine ignored
# (no config files, no PIP_* variables, so no other folder of wheels can help). Then check the result:
# pip check, the CPU-only torch on Linux x86_64, and the course's own environment check.
# Usage: .ci/check_wheelhouse.sh [WHEELHOUSE]   (run `make wheelhouse` first; .ci/run does)
# --no-compile: no .pyc files written at install time (Python compiles them on first import).
set -euo pipefail
cd "$(dirname "$0")/.."
wheelhouse=${1:-wheelhouse}
venv=build/offline-venv
python=${PYTHON:-python3}
if [ ! -f "$wheelhouse/wheelhouse.txt" ]; then
    echo "no complete wheelhouse in $wheelhouse/: run \`make wheelhouse\` first" >&2
    exit 1
fi
rm -rf "$venv"
mkdir -p build
start=$SECONDS
"$python" -m venv "$venv"
for var in $(env | grep -o '^PIP_[A-Z_]*'); do unset "$var"; done
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install --quiet --no-compile --no-index --find-links "$wheelhouse" \
    -c .ci/constraints.txt -e '.[lab,dev]'
"$venv/bin/python" -m pip check
"$venv/bin/python" - <<'PY'
import platform

import torch

if (platform.system(), platform.machine()) == ("Linux", "x86_64"):
    assert torch.__version__.endswith("+cpu"), f"expected the CPU-only torch, got {torch.__version__}"
    assert not torch.backends.cuda.is_built(), "this torch was built with CUDA"
print(f"offline install: torch {torch.__version__}")
PY
(cd build && "../$venv/bin/python" -m dsv3_edu.envcheck)
echo "offline install from $wheelhouse/: $((SECONDS - start)) s, $(du -sm "$venv" | cut -f1) MB in $venv (left for a look)"
