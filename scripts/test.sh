#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Exits non-zero on any failure, and also when pytest
# collected no test at all (pytest's exit code 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
