"""The Python API (meter_batch.api): each command, and its one-line errors."""

from __future__ import annotations

import pytest

from meter_batch.errors import ConfigError
from tests.helpers import labels_toml


def test_python_api_covers_the_commands(tmp_path, image_dir, configs):
    from meter_batch import api

    images, _ = image_dir
    summary = api.encode(images, tmp_path / "s", model=str(configs["vit"]), workers=0)
    assert summary.encoded == 14
    result = api.classify(tmp_path / "s", labels_toml(tmp_path), progress=False)
    assert result.scored == 14
    hits = api.search(tmp_path / "s", image=images / "sub0/img-000.jpg", k=1)
    assert hits[0].path == "sub0/img-000.jpg"
    table = api.query(tmp_path / "s", "SELECT count(*) AS n FROM latest_predictions")
    assert table.column("n").to_pylist() == [14]
    exact = api.encode(images, tmp_path / "x", model=str(configs["vit"]), workers=0, exact=True)
    assert exact.encoded == 14
    assert api.query(tmp_path / "x", "SELECT preprocess_path FROM runs").to_pylist() == [
        {"preprocess_path": "exact"}
    ]
    with pytest.raises(ConfigError, match=r"unknown encode option\(s\) exakt; valid: .*exact"):
        api.encode(images, tmp_path / "y", model=str(configs["vit"]), exakt=True)
