"""Child-process entry for ``meter-batch finetune``: open_clip_train with our config.

Usage: ``python -m meter_batch.tools.train_entry CONFIG.json [open_clip_train arguments]``.
The config is registered under its file stem, so ``--model=<stem>`` finds it; then
open_clip_train's own ``main`` runs unchanged.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path

import open_clip


def main(argv: list[str]) -> int:
    config, trainer_args = Path(argv[0]), argv[1:]
    open_clip.add_model_config(config)
    import pandas
    from open_clip_train.main import main as train_main

    # open_clip_train reads the table with pandas, which would turn a caption "NA" or
    # "null" into NaN and train on the text "nan"; captions are text, always.
    pandas.read_csv = functools.partial(pandas.read_csv, keep_default_na=False)

    # open_clip_train asks for pinned memory on the CPU too; harmless, so not worth a warning
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true.*")
    result = train_main(trainer_args)
    # open_clip_train logs at INFO on the root logger; torch's compiler statistics would
    # follow at exit, and they say nothing about this run.
    logging.disable(logging.INFO)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
