#!/usr/bin/env bash
# Install (if needed) and run the whole chain on the embedded synthetic CelebA, or on $CELEBA_ROOT when set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python demo.py "$@"
