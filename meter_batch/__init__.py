"""meter_batch: encode image archives once with OpenCLIP, answer later questions from the store.

The Python API (``meter_batch.encode`` ...) is imported lazily so that ``meter-batch --help``
does not pay for importing torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "encode"]


def __getattr__(name: str) -> Any:
    if name in {"encode"}:
        from meter_batch import api

        return getattr(api, name)
    raise AttributeError(f"module 'meter_batch' has no attribute {name!r}")
