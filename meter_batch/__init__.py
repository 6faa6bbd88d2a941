"""meter_batch: encode image archives once with OpenCLIP, answer later questions from the store.

The Python API is ``meter_batch.api`` (``api.encode``, ``api.classify``, ``api.search``,
``api.query``); the stage modules of the same names hold the machinery behind them.
"""

__version__ = "0.1.0"
