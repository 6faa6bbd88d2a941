"""Run-level problems as typed exceptions, each with its exit code.

    MeterBatchError            (10: never raised itself)
    ├── ConfigError            2  invalid setting, command line, label set or job file
    ├── InputError             3  images folder, image file or captions table missing
    ├── ModelError             4  architecture or weights cannot be found or loaded
    └── StoreError             5  store cannot be created, read or written
        ├── ModelMismatchError 6  the store belongs to another model
        └── StoreLockedError   7  another run holds the store's lock

Per-image problems are never raised: they become failure rows (store/records.py's
FailureKind). Everything here is something the user must fix before the run can go on;
the CLI prints it as one line and exits with ``error.exit_code`` (codes 0, 1, 8, 130 and
141 and 143 are the CLI's own: EXIT_CODES).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class MeterBatchError(Exception):
    """Base class: a problem the user can act on. Exit code 1 is reserved for bugs."""

    exit_code = 10


@dataclass(frozen=True)
class SettingName:
    """A setting's field name inside a ConfigError's message, for each surface to word:
    the CLI says --batch-size where a job file says batch_size."""

    field: str


class ConfigError(MeterBatchError):
    """A setting has an invalid value, or a config file has unknown keys.

    The message is given in parts; a SettingName part is the setting it is about, worded
    as its field name by ``str()`` and as the caller likes by ``worded()``. Values the
    user typed are plain text parts: they are never reworded.
    """

    exit_code = 2

    def __init__(self, *parts: str | SettingName) -> None:
        self.parts = parts
        super().__init__(self.worded())

    @property
    def settings(self) -> tuple[str, ...]:
        """The fields this error is about, first the one it is mostly about."""
        return tuple(p.field for p in self.parts if isinstance(p, SettingName))

    def worded(self, name: Callable[[str], str] = str) -> str:
        return "".join(name(p.field) if isinstance(p, SettingName) else p for p in self.parts)

    def prefixed(self, text: str) -> ConfigError:
        """The same error, said of a place (a file, a table): ``text`` goes first."""
        return ConfigError(text, *self.parts)


class InputError(MeterBatchError):
    """The images directory (or another input path) is missing or unreadable."""

    exit_code = 3


class ModelError(MeterBatchError):
    """The model architecture or its weights cannot be found or loaded."""

    exit_code = 4


class StoreError(MeterBatchError):
    """The store cannot be created, read or written."""

    exit_code = 5


class ModelMismatchError(StoreError):
    """The store was written by another model than the one given."""

    exit_code = 6


class StoreLockedError(StoreError):
    """Another process holds the store's lock."""

    exit_code = 7


EXIT_CODES: dict[int, str] = {
    0: "success (per-image failures are data, not errors)",
    1: "internal error (a bug: please report the traceback)",
    2: "invalid setting or command line",
    3: "input missing or unreadable (images directory, image file, captions CSV)",
    4: "model architecture or weights cannot be found or loaded",
    5: "store cannot be created, read or written",
    6: "store belongs to another model",
    7: "store is locked by another run",
    8: "verify found problems in the store",
    130: "interrupted (Ctrl-C)",
    141: "its output was closed early (a pipe's reader stopped, as `head` does): no traceback",
    143: "stopped by SIGTERM (systemd's stop, kill)",
}
