#!/usr/bin/env bash
# Install what the tests need into .venv (created if missing), then run pytest: every test,
# the slow ones (SIGKILL crash points, open_clip_train, the whole demo) included.
# Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"   # only the fast tests
#   bash scripts/test.sh -m slow         # only the slow tests
#   bash scripts/test.sh tests/store     # one folder (tests/ mirrors meter_batch/)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
exec .venv/bin/python -m pytest "$@"
