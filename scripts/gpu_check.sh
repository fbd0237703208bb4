#!/usr/bin/env bash
# One prepared check of the GPU path, under 8 minutes on one H100: synthetic data, raw and JPEG shards, the
# loaders that import here timed, one compiled bf16 epoch of the `gpu` network over a train split of CelebA's size
# (162,770 images: the synthetic shards repeated), eval and bonus_1.py on it. Writes $OUT/gpu_check.json (img/s,
# epoch seconds, peak GiB, data-wait share, compile seconds, bits/dim, PSNR, mean-face PSNR) and the figures.
#
# Made for a bare machine with no network: the system python3 with PyTorch, Accelerate, pyarrow, rich and Pillow;
# no setup.sh, no CelebA, no DALI, no WebDataset (their loaders are skipped, and named). matplotlib (the figures)
# is installed from wheelhouse/ when the machine lacks it; fetch those wheels beforehand on a machine with network:
#   python3 -m pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d wheelhouse matplotlib contourpy cycler fonttools kiwisolver pyparsing \
#       python-dateutil six
# Arguments go to scripts/gpu_check.py (e.g. --cpu --images 1600 --synthetic-images 600 --preset tiny: its proof on
# a CPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
if ! "$PYTHON" -c "import matplotlib" 2>/dev/null; then
    if [ ! -d wheelhouse ]; then
        echo "gpu_check: $PYTHON has no matplotlib and there is no wheelhouse/ to install it from (see this script's" \
             "header)" >&2
        exit 1
    fi
    site=$(mktemp -d)
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$site" wheelhouse/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" scripts/gpu_check.py --out "$OUT" "$@"
