"""Run-level problems as typed exceptions.

Per-image problems are never raised: they become failure rows (see decode.py).
Everything here is something the user must fix before the run can go on; the CLI
prints ``str(error)`` as one line and exits with ``error.exit_code``.
"""

from __future__ import annotations


class MeterBatchError(Exception):
    """Base class: a problem the user can act on. Exit code 1 is reserved for bugs."""

    exit_code = 10


class ConfigError(MeterBatchError):
    """A setting has an invalid value, or a config file has unknown keys."""

    exit_code = 2


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
}
