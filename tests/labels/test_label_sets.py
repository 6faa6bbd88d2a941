"""Label set files: mistakes are clear errors; the shipped sets load."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter_batch.errors import ConfigError
from meter_batch.labels.label_sets import load_label_set
from tests.helpers import PROMPTS


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "x"\n', "no labels"),
        (
            'name = "x"\n[[labels]]\nid = "a"\nprompts = ["p"]\n[[labels]]\nid = "a"\n'
            'prompts = ["q"]\n',
            "duplicate label id 'a'",
        ),
        ('name = "x"\n[[labels]]\nid = "a"\nprompts = []\n', "label 'a' has no prompts"),
        ('name = "x"\n[[labels]]\nid = "a"\nprompts = ["  "]\n', "label 'a' has an empty prompt"),
        (
            'name = "x"\ntemplates = ["a photo"]\n[[labels]]\nid = "a"\nprompts = ["p"]\n',
            "must contain exactly one '{}'",
        ),
        ('name = "x"\ncolour = 1\n[[labels]]\nid = "a"\nprompts = ["p"]\n', "unknown key.*colour"),
        ('name = "x"\n[[labels]]\nid = "a"\nprompt = ["p"]\n', "unknown key.*prompt"),
        (
            'name = "x"\n[abstain]\nmin_p = 1\n[[labels]]\nid = "a"\nprompts = ["p"]\n',
            "unknown key.*min_p",
        ),
        ('name = "x"\nlogit_scale = -1\n[[labels]]\nid = "a"\nprompts = ["p"]\n', "logit_scale"),
    ],
)
def test_bad_label_sets_are_clear_errors(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_label_set(path)


def test_shipped_label_sets_load():
    folder = Path(__file__).parents[2] / "jobs" / "labelsets"
    seed = load_label_set(folder / "meter-type.toml")
    assert [label.prompts[0] for label in seed.labels] == list(PROMPTS.values())
    assert seed.logit_scale == 100.0
    english = load_label_set(folder / "meter-type-en.toml")
    assert english.label_ids == seed.label_ids and english.abstain.min_prob == 0.5
