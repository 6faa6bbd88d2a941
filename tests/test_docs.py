"""The README documents the command line: every sub-command has its section, and every
option its --help lists appears in that section (as sqlite-utils checks its docs)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from meter_batch.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
# documented once, in "Commands", for every command
EVERYWHERE = {"-h", "--help", "-q", "--quiet", "-v", "--verbose", "--store"}


def _sub_commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.append(((*words, name), child))
                found += _sub_commands(child, (*words, name))
    return found


COMMANDS = [(w, p) for w, p in _sub_commands(build_parser()) if w != ("bench",)]


def _section(words: tuple[str, ...]) -> str:
    """The README's section on ``meter-batch WORDS``: from its ### heading to the next."""
    command = words[0]
    headings = list(re.finditer(r"^### .*$", README, flags=re.MULTILINE))
    for heading, after in zip(headings, [*headings[1:], None], strict=True):
        title = heading.group(0)
        named = re.search(rf"`meter-batch {re.escape(command)}[ `|]", title + " ")
        child = len(words) == 1 or re.search(rf"[ |]{re.escape(words[1])}[ |`]", title)
        if named and child:
            return README[heading.start() : after.start() if after else len(README)]
    raise AssertionError(f"the README has no section on meter-batch {' '.join(words)}")


@pytest.mark.parametrize(("words", "parser"), COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_the_readme_documents_every_option_of(words, parser):
    section = _section(words)
    options = {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in EVERYWHERE
    }
    missing = sorted(
        o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", section)
    )
    assert missing == [], f"meter-batch {' '.join(words)}: {missing} not in its README section"


def test_the_commands_section_documents_the_options_every_command_has():
    commands = README[README.index("## Commands") :]
    commands = commands[: commands.index("\n### ")]
    for option in ("-q", "--quiet", "-v", "--verbose", "--store", "METER_BATCH_STORE"):
        assert f"`{option}" in commands, option
