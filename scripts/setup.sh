#!/usr/bin/env bash
# Install everything the project needs into .venv (idempotent: re-runs only when pyproject.toml, this script or the
# NVIDIA driver's build choice changes). Source it or run it; afterwards .venv/bin/python has the project installed
# in editable mode.
#
# PyTorch's default wheel and nvidia-dali-cuda130 are CUDA 13 builds, which need an NVIDIA driver of the R580 series
# or newer; under an older driver torch sees no GPU and only warns. So where nvidia-smi lists a GPU, its driver
# picks the builds (common/nvidia.py): R580+ the defaults, older drivers PyTorch's CUDA 12.6 build from PyTorch's
# own wheel index and nvidia-dali-cuda120. Without a GPU: the defaults (they run on the CPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
builds=$("$PYTHON" common/nvidia.py)  # "<torch wheel index or 'default'> <DALI extra>"
read -r torch_index dali_extra <<< "$builds"
stamp=".venv/.installed-$( (sha256sum pyproject.toml scripts/setup.sh; echo "$builds") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "$torch_index" != default ]; then
    # First, so that the project's torch requirement is already met by this build (torchvision must match it).
    .venv/bin/python -m pip install --quiet torch torchvision --index-url "$torch_index"
fi
.venv/bin/python -m pip install --quiet -e ".[test,$dali_extra]"
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
