"""The light commands stay light: the store, its catalog and the CLI load no torch.

`lint-imports` (.importlinter, run by .ci/run) checks the import graph statically; this
checks what a fresh interpreter really loads, through every import the code makes.
"""

from __future__ import annotations

import configparser
import json
import pkgutil
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import meter_batch.store
from tests.helpers import OLD_STORE, REPO

HEAVY = ("torch", "torchvision", "open_clip", "PIL", "tqdm", "pandas", "faiss")
USES_THE_INDEX = {"index", "verify", "repair", "rebuild_index"}  # may load faiss


@dataclass(frozen=True)
class Probe:
    heavy: list[str]  # the heavy modules a fresh interpreter loaded
    output: list[str]  # the lines it printed before


def _loaded_after(code: str) -> Probe:
    """Run ``code`` in a fresh interpreter; which heavy modules it loaded, and its output."""
    probe = (
        f"{code}\nimport sys, json\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    return Probe(json.loads(lines[-1]), lines[:-1])


STORE_MODULES = [m.name for m in pkgutil.iter_modules(meter_batch.store.__path__)]


def test_every_store_module_and_the_cli_load_without_torch() -> None:
    assert {"catalog", "commit", "verify", "index", "layout", "records"} <= set(STORE_MODULES)
    light = [name for name in STORE_MODULES if name not in USES_THE_INDEX]
    imports = "; ".join(f"import meter_batch.store.{name}" for name in light)
    code = f"{imports}; import meter_batch.cli as c; c.build_parser()"
    assert _loaded_after(code).heavy == []
    imports = "; ".join(f"import meter_batch.store.{name}" for name in USES_THE_INDEX)
    assert _loaded_after(imports).heavy == ["faiss"]


def test_the_faiss_contract_names_every_store_module_that_does_not_use_the_index() -> None:
    rules = configparser.ConfigParser()
    rules.read(REPO / ".importlinter")
    listed = rules["importlinter:contract:faiss-where-the-index-is"]["source_modules"].split()
    assert sorted(listed) == sorted(
        f"meter_batch.store.{name}" for name in STORE_MODULES if name not in USES_THE_INDEX
    )


def test_query_loads_no_faiss_and_verify_and_rebuild_index_no_torch(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(OLD_STORE, store)
    query = f"from meter_batch.cli import main; main(['query', {str(store)!r}, 'SELECT 1'])"
    assert _loaded_after(query).heavy == []
    code = "\n".join(
        [
            "from meter_batch.cli import main",
            f"assert main(['rebuild-index', {str(store)!r}]) == 0",
            f"assert main(['query', {str(store)!r}, 'SELECT count(*) AS n FROM images',"
            " '--format', 'json']) == 0",
            f"assert main(['verify', {str(store)!r}]) == 0",
        ]
    )
    found = _loaded_after(code)
    assert found.heavy == ["faiss"]
    output = [json.loads(line) for line in found.output]
    assert output[0] == {"store": str(store), "indexed": 5}
    assert output[1] == {"n": 5}
    assert output[2] == {"store": str(store), "ok": True, "rows": 8, "live": 5, "tombstoned": 3,
                         "problems": [], "notes": []}  # fmt: skip
