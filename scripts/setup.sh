#!/usr/bin/env bash
# Install everything the project needs into .venv (idempotent: re-runs only when pyproject.toml changes).
# Source it or run it; afterwards .venv/bin/python has the project installed in editable mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
stamp=".venv/.installed-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# PyTorch's default wheel (CUDA 13 build; runs on the CPU too): torchvision needs that build.
.venv/bin/python -m pip install --quiet -e '.[test]'
# pillow-simd makes the one-time shard build's decode+resize faster (BENCHMARKS.md). It builds from source,
# so it is best effort: Pillow stays installed unless the pillow-simd wheel built.
wheels=$(mktemp -d)
if .venv/bin/python -m pip wheel --quiet --no-deps --no-cache-dir -w "$wheels" 'pillow-simd>=12,<13' >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --quiet -y pillow
    .venv/bin/python -m pip install --quiet --no-deps --force-reinstall "$wheels"/pillow_simd-*.whl
    echo "setup: pillow-simd installed as PIL"
else
    echo "setup: pillow-simd did not build here; keeping Pillow"
fi
rm -rf "$wheels"
rm -f .venv/.installed-*
touch "$stamp"
