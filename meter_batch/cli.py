"""The command line: parse, call the library, turn run-level errors into one line + exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from meter_batch import __version__
from meter_batch.config import DEVICES, PRECISIONS, EncodeConfig, ModelSpec, default_workers
from meter_batch.errors import EXIT_CODES, MeterBatchError

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    handler: Handler = args.handler
    try:
        return handler(args)
    except MeterBatchError as exc:
        print(f"meter-batch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("meter-batch: interrupted; the last commit is intact", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="meter-batch",
        description="Encode image folders once with OpenCLIP; query the embeddings any time.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"meter-batch {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_encode(commands)
    _add_demo(commands)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="RN50",
        help="open_clip architecture name, or a JSON model config file (default: RN50)",
    )
    parser.add_argument(
        "--pretrained",
        required=True,
        help="checkpoint file (.pt/.bin/.safetensors), an open_clip tag found in the local "
        "cache (e.g. openai), or 'none' for seeded random weights",
    )


def _add_encode(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "encode",
        help="encode every image under a folder into a store",
        description="Walk IMAGES_DIR, encode every image once, and commit the embeddings, "
        "failures and FAISS index into STORE. Prints a one-line JSON summary.",
    )
    parser.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    parser.add_argument("--store", type=Path, required=True, help="store folder (created if new)")
    _add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help=f"decoder processes; 0 decodes in the main process (default: {default_workers()})",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto = bf16 autocast on CUDA, fp32 on CPU (default: auto)",
    )
    parser.set_defaults(handler=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    from meter_batch.pipeline import encode

    config = EncodeConfig(
        images_dir=args.images_dir,
        store=args.store,
        model=ModelSpec(name=args.model, pretrained=args.pretrained),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
    )
    summary = encode(config)
    print(json.dumps(summary.to_json()))
    return 0


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="generate sample images and encode them (the README's first command)",
        description="Generate a folder of sample images (plus two broken files), encode it "
        "into a store with RN50 and random weights, and show how to query the result.",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("demo-output"), help="default: demo-output"
    )
    parser.add_argument("--count", type=int, default=200, help="sample images (default: 200)")
    parser.add_argument("--model", default="RN50", help="default: RN50 (random weights)")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from meter_batch.pipeline import encode
    from meter_batch.samples import write_sample_images

    images, store = args.dir / "images", args.dir / "store"
    written = write_sample_images(images, args.count, seed=0)
    logging.getLogger("meter_batch").info("wrote %d sample files to %s", written, images)
    config = EncodeConfig(
        images_dir=images,
        store=store,
        model=ModelSpec(name=args.model, pretrained="none"),
        workers=default_workers(),
    )
    summary = encode(config)
    print(json.dumps(summary.to_json()))
    print(
        f'\nstore: {store}\ntry:   python -c "import duckdb; print(duckdb.sql('
        f'\\"SELECT count(*) AS images, min(width), max(width) FROM '
        f"'{store}/embeddings/*.parquet'\\\"))\""
    )
    return 0


def _configure_logging(quiet: bool) -> None:
    # Only our own logger: open_clip and faiss log chatter at INFO on the root logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s meter-batch: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("meter_batch")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    # A root handler stops logging.warning() in libraries from installing a default one.
    logging.getLogger().addHandler(logging.NullHandler())
