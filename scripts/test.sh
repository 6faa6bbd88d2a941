#!/usr/bin/env bash
# Install what the tests need into .venv (created if missing), then run pytest: every test,
# the slow ones (SIGKILL crash points, open_clip_train, the whole demo) included.
# Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"   # only the fast tests
#   bash scripts/test.sh -m slow         # only the slow tests
#   bash scripts/test.sh tests/store     # one folder (tests/ mirrors meter_batch/)
set -euo pipefail
cd "$(dirname "$0")/.."
# The report's browser tests drive Debian's Chromium (tests/report/test_browser.py); as
# root it is installed here when missing, otherwise those tests skip and say why.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "installing chromium for the browser tests (apt-get)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) > /dev/null \
            || echo "WARNING: chromium could not be installed: the browser tests will skip" >&2
    else
        echo "WARNING: no /usr/bin/chromium (apt-get install chromium, as root): the browser tests will skip" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
# The oldest DuckDB the README promises opens the catalog (tests/store/test_catalog_clients.py)
# runs in a venv of its own beside the project's: pip cannot hold two DuckDBs in one (pytz:
# that client's Python API needs it to fetch TIMESTAMPTZ columns).
oldest=$(.venv/bin/python -c "from meter_batch.store.catalog import OLDEST_DUCKDB; print(OLDEST_DUCKDB)")
old=.venv/oldest-duckdb
if ! "$old/bin/python" -c "import duckdb, pytz, sys; sys.exit(duckdb.__version__ != '$oldest')" 2> /dev/null; then
    rm -rf "$old" && python3 -m venv "$old"
    "$old/bin/python" -m pip install --quiet --disable-pip-version-check "duckdb==$oldest" pytz \
        2> >(grep -v "^WARNING: Location" >&2)
fi
export METER_BATCH_OLDEST_DUCKDB="$PWD/$old/bin/python"
exec .venv/bin/python -m pytest "$@"
