"""The README documents every command and every option (as sqlite-utils' test_docs does):
an option added to a settings dataclass without a word in the README fails here."""

from __future__ import annotations

import argparse
import re

import pytest

from meter_batch.cli import build_parser
from tests.helpers import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command by its full name (`bench encode`), with its parser."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= _commands(child, f"{prefix}{name} ")
    return found or {prefix.strip(): parser}


COMMANDS = _commands(build_parser())


def _section(command: str) -> str:
    """The README's text from `### \\`meter-batch COMMAND` to the next heading of a command
    (`bench encode` lives in the `bench` section)."""
    head = command.split()[0]
    match = re.search(rf"^### `meter-batch {re.escape(head)}\b.*?(?=^### |^## )", README,
                      flags=re.S | re.M)  # fmt: skip
    assert match, f"no README section for meter-batch {head}"
    return match.group(0)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    ]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_is_documented_in_its_commands_section(command: str) -> None:
    section = _section(command)
    if command == "bench encode":  # takes every encode setting: documented with encode
        section += _section("encode")
    blocks = re.findall(r"```.*?```", section, flags=re.S)
    inline = re.findall(r"`[^`\n]+`", re.sub(r"```.*?```", "", section, flags=re.S))
    code = " ".join(blocks + inline)
    missing = [
        option
        for option in _options(COMMANDS[command])
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", code)
    ]
    assert missing == [], f"meter-batch {command}: undocumented {missing}"


def test_the_commands_found_are_the_ones_the_cli_has() -> None:
    assert {"encode", "classify", "query", "bench encode", "bench rescan"} <= set(COMMANDS)
