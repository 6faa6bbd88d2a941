"""An installed meter_batch has every package: the explicit list in pyproject.toml (needed
for sql/ and jobs/labelsets/, which live outside the package folder) names each folder
of the package. An editable install would not notice a missing one; a wheel would."""

from __future__ import annotations

import tomllib

from tests.helpers import REPO


def test_pyproject_lists_every_package_folder() -> None:
    setup = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    listed = set(setup["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "meter_batch").rglob("__init__.py")
    }
    mapped = set(setup["setuptools"]["package-dir"]) - {"meter_batch"}  # sql/, labelsets
    assert found - listed == set()
    assert listed - found == mapped
