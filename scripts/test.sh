#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Exits non-zero on any failure, and also when pytest
# collected no test at all (pytest's exit code 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The report test opens the page in a real headless Chromium and reads its PDF with poppler (Debian's packages);
# without them those tests skip.
if ! { command -v chromium && command -v pdftoppm; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils) >/dev/null 2>&1 \
        || echo "test: could not install chromium / poppler-utils; the browser and PDF tests will be skipped"
fi
# One pytest worker per core, each test file on one worker (its module fixtures are made once), the files with the
# most slow tests handed out first (tests/conftest.py); torch runs one thread per test. The fast tier for an
# edit-test loop: bash scripts/test.sh -m "not slow".
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
