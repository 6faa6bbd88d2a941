#!/usr/bin/env bash
# Install what the tests need into .venv (created if missing), then run pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
exec .venv/bin/python -m pytest "$@"
