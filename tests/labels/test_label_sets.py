"""Label set files: mistakes are clear errors (numbers that are no numbers, ids that are
the same once normalised, nesting too deep to parse); the shipped sets load, and keep
their versions."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from meter_batch.cli import main
from meter_batch.errors import ConfigError
from meter_batch.labels.label_sets import MAX_LOGIT_SCALE, label_set_toml, load_label_set
from meter_batch.model.identity import ModelIdentity
from tests.helpers import PROMPTS, one_error_line


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


def _label_set(tmp_path: Path, head: str, *ids: str) -> Path:
    """A label set file: ``head`` (top-level keys, tables) and one label per id."""
    body = head + "\n" + "".join(f'[[labels]]\nid = "{i}"\nprompts = ["p {i}"]\n' for i in ids)
    path = tmp_path / "set.toml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "value",
    ["nan", "+nan", "inf", "-inf", "1e300", "1001", "1" + "0" * 400],  # 10**400: no float
    ids=["nan", "+nan", "inf", "-inf", "1e300", "1001", "1e400"],
)
def test_a_logit_scale_that_is_not_a_usable_number_is_refused(tmp_path, value):
    # nan passed `> 0` and inf/1e300 overflowed every logit: predictions of probability NaN
    path = _label_set(tmp_path, f'name = "x"\nlogit_scale = {value}', "a", "b")
    with pytest.raises(ConfigError) as caught:
        load_label_set(path)
    assert str(caught.value) == (
        f"{path}: logit_scale must be a finite number > 0 and <= 1000 or 'learned'; "
        f"got {tomllib.loads(f'v = {value}')['v']!r}"
    )


def test_the_largest_logit_scale_is_taken(tmp_path):
    path = _label_set(tmp_path, 'name = "x"\nlogit_scale = 1000', "a", "b")
    assert load_label_set(path).logit_scale == MAX_LOGIT_SCALE == 1000.0


@pytest.mark.parametrize("key", ["min_prob", "min_margin"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_abstain_thresholds_must_be_finite(tmp_path, key, value):
    path = _label_set(tmp_path, f'name = "x"\n[abstain]\n{key} = {value}', "a")
    with pytest.raises(ConfigError, match=rf"abstain\.{key} must be a number in \[0, 1\]"):
        load_label_set(path)


@pytest.mark.parametrize(
    ("first", "second"),
    [("a", "a "), ("a", "\ta"), ("é", "e\u0301"), ("e\u0301", "é ")],
)
def test_ids_that_normalise_alike_are_duplicates_named_as_written(tmp_path, first, second):
    path = _label_set(tmp_path, 'name = "x"', first, second)
    with pytest.raises(ConfigError) as caught:
        load_label_set(path)
    assert str(caught.value) == (
        f"{path}: duplicate label id {second!r} (label #2): the same as {first!r} "
        f"(label #1) once normalised (Unicode NFC, spaces stripped)"
    )


def _cafe_set(tmp_path: Path, cafe: str, space: str) -> Path:
    path = tmp_path / f"set-{len(cafe)}-{len(space)}.toml"
    path.write_text(
        f'name = "{space}{cafe}"\ntemplates = ["{cafe} {{}} "]\n[[labels]]\n'
        f'id = "{space}{cafe}{space}"\nprompts = ["{space}{cafe} au lait{space}"]\n',
        encoding="utf-8",
    )
    return path


def test_ids_prompts_and_templates_are_nfc_and_ids_stripped(tmp_path):
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # é as one code point, and as two
    loaded = load_label_set(_cafe_set(tmp_path, decomposed, " \t"))
    assert loaded.name == composed and loaded.label_ids == [composed]
    assert loaded.labels[0].prompts == (f"{composed} au lait",)
    assert loaded.templates == (f"{composed} {{}} ",)  # NFC; a template keeps its spaces
    # the same label set as the tokenizer sees it: the same version
    normal = load_label_set(_cafe_set(tmp_path, composed, ""))
    assert normal == loaded and normal.version(IDENTITY) == loaded.version(IDENTITY)


def test_the_id_unknown_is_reserved_also_with_spaces(tmp_path):
    with pytest.raises(ConfigError, match="'unknown' is reserved"):
        load_label_set(_label_set(tmp_path, 'name = "x"', "a", " unknown "))


# A fixed model identity: versions hash it with the label set.
IDENTITY = ModelIdentity(
    architecture="RN50",
    config_sha256="0" * 64,
    pretrained="none",
    checkpoint_sha256=None,
    seed=0,
    quick_gelu=False,
    preprocess={"size": [224, 224], "mode": "RGB", "interpolation": "bicubic"},
    embed_dim=1024,
)

PLAIN = """name = "plain"
templates = ["a photo of {}.", "{}"]
logit_scale = 50
top_k = 2
[abstain]
min_prob = 0.25
min_margin = 0.05
[[labels]]
id = "digital_7seg"
prompts = ["a digital meter", "an LCD meter"]
[[labels]]
id = "rotary"
prompts = ["a rotary meter"]
"""


def test_versions_of_already_normal_label_sets_are_unchanged(tmp_path):
    """Normalising text must not give an existing store's label sets new versions: the
    expected values were computed by the code before normalisation (90a0d9d)."""
    path = tmp_path / "plain.toml"
    path.write_text(PLAIN, encoding="utf-8")
    assert load_label_set(path).version(IDENTITY) == "26e14f5e7fe28ce2"
    folder = Path(__file__).parents[2] / "jobs" / "labelsets"
    versions = {
        name: load_label_set(folder / f"{name}.toml").version(IDENTITY)
        for name in ("meter-type", "meter-type-en", "housing-colour")
    }
    assert versions == {
        "meter-type": "d81317659e1e58fa",
        "meter-type-en": "6a487febabd8a81d",
        "housing-colour": "22dd275c566875e3",
    }


@pytest.mark.parametrize(
    "body",
    [
        "a = " + "[" * 100_000 + "]" * 100_000,
        "a = " + "{ b = " * 100_000 + "1" + " }" * 100_000,
        'name = "x"\nlabels = ' + "[" * 5_000 + "]" * 5_000,
    ],
    ids=["arrays", "inline-tables", "labels"],
)
def test_a_label_set_nested_too_deeply_is_a_config_error(tmp_path, body, capsys):
    path = tmp_path / "deep.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_label_set(path)
    assert str(caught.value) == f"{path}: invalid TOML: arrays or tables nested too deeply to read"
    code = main(["classify", "--store", str(tmp_path / "store"), "--labels", str(path)])
    assert code == 2
    assert one_error_line(capsys).endswith("nested too deeply to read")


def test_a_few_shot_set_written_elsewhere_reads_back_equal_and_finds_its_files(tmp_path):
    """label_set_toml (calibrate's output) keeps the mode and the examples; example files
    beside the original become absolute, so the copy in another folder still finds them,
    while a path as stored (no such file here) is kept as written."""
    (tmp_path / "examples.csv").write_text("path,label\nx.jpg,a\n", encoding="utf-8")
    (tmp_path / "beside.jpg").write_bytes(b"")
    original = tmp_path / "set.toml"
    original.write_text(
        'name = "s"\nmode = "adapter"\nexamples_file = "examples.csv"\n'
        '[[labels]]\nid = "a"\nprompts = ["p"]\nexamples = ["beside.jpg", "site/1.jpg"]\n'
        '[[labels]]\nid = "b"\nprompts = ["q"]\n',
        encoding="utf-8",
    )
    loaded = load_label_set(original)
    elsewhere = tmp_path / "other" / "copy.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(label_set_toml(loaded), encoding="utf-8")
    copy = load_label_set(elsewhere)
    assert copy.mode == "adapter"
    assert copy.examples_file == str(tmp_path / "examples.csv")
    assert copy.labels[0].examples == (str(tmp_path / "beside.jpg"), "site/1.jpg")
    assert copy.version(IDENTITY) == loaded.version(IDENTITY)  # the folder is not content
