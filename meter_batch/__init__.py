"""meter_batch: encode image archives once with OpenCLIP, answer later questions from the store.

The Python API is ``meter_batch.api`` (``api.encode``, ``api.classify``, ``api.search``,
``api.query``); the command line is ``meter_batch.cli``. The packages, in the order data
flows: ``ingest`` (images in), ``model``, ``store`` (the store on disk), ``labels``
(answers from stored embeddings), ``tools``; README.md's Architecture section has the
tree. Nothing is imported here: importing the store must not load torch.
"""

__version__ = "0.1.0"
