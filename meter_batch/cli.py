"""The command line: parse, call the library, turn run-level errors into one line + exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meter_batch import __version__
from meter_batch.config import (
    DEVICES,
    JPEG_DECODERS,
    PRECISIONS,
    EncodeConfig,
    ModelSpec,
    default_workers,
)
from meter_batch.errors import EXIT_CODES, ConfigError, MeterBatchError, StoreError

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
    _add_classify(commands)
    _add_search(commands)
    _add_query(commands)
    _add_verify(commands)
    _add_rebuild_index(commands)
    _add_run(commands)
    _add_demo(commands)
    _add_synth(commands)
    _add_finetune(commands)
    _add_bench(commands)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--model",
        default="RN50" if required else None,
        help="open_clip architecture name, or a JSON model config file"
        + (" (default: RN50)" if required else " (default: the store's own model)"),
    )
    parser.add_argument(
        "--pretrained",
        required=required,
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
    parser.add_argument(
        "--commit-every",
        type=int,
        default=10_000,
        help="commit after this many images, so a crash loses at most that much (default: 10000)",
    )
    parser.add_argument(
        "--prefix",
        default="",
        help="store paths as PREFIX + path below IMAGES_DIR (several roots in one store: "
        "give each its own, e.g. site-a/)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=100_000_000,
        help="larger images (by their header) are failures of kind too_large (default: 100000000)",
    )
    parser.add_argument(
        "--decode-timeout",
        type=float,
        default=60.0,
        help="seconds one file may take to decode before it is recorded as hung (default: 60)",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="decode every JPEG in full (the reference pixels) instead of the fast DCT-scaled "
        "path for large JPEGs; the store records which path each run used",
    )
    parser.add_argument(
        "--jpeg-decode",
        choices=JPEG_DECODERS,
        default="auto",
        help="where plain JPEGs are decoded: auto = on the GPU (nvjpeg) when the model runs "
        "on one and not --exact, else by the workers; workers = always PIL in the workers; "
        "device = on the model's device (default: auto)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image encoder (full batches): 5-20 s once per run; RN50's "
        "encode loop ran 15-24%% faster on 2 CPU cores (BENCHMARKS.md); runs of fewer than "
        "4 full batches are not compiled",
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
    from meter_batch.ingest.encode_run import encode

    with _settings_named_as_flags():
        config = _encode_config(args)
    summary = encode(config, interactive=False if args.quiet else None)  # -q: no bar
    print(json.dumps(summary.to_json()))
    return 0


@contextmanager
def _settings_named_as_flags() -> Iterator[None]:
    """EncodeConfig names its fields as a config file does (path_prefix); on the command
    line the user typed a flag (--prefix): say that, also for the second setting of a pair
    ("jpeg_decode 'device' and exact exclude each other")."""
    try:
        yield
    except ConfigError as exc:
        field, _, rest = str(exc).partition(" ")
        if _flag_of(field) is None:
            raise
        rest = re.sub(  # only the pair's own words, never a value the user typed
            r"^('[^']*' )?and (\w+)(?= exclude each other)",
            lambda pair: f"{pair[1] or ''}and {_flag_of(pair[2]) or pair[2]}",
            rest,
            count=1,
        )
        raise ConfigError(f"{_flag_of(field)} {rest}") from exc


def _flag_of(field: str) -> str | None:
    flags = {"path_prefix": "--prefix", "model": "--model", "pretrained": "--pretrained"}
    if field in flags:
        return flags[field]
    if field in {f.name for f in dataclasses.fields(EncodeConfig)}:
        return "--" + field.replace("_", "-")
    return None


def _encode_config(args: argparse.Namespace) -> EncodeConfig:
    return EncodeConfig(
        images_dir=args.images_dir,
        store=args.store,
        model=ModelSpec(name=args.model, pretrained=args.pretrained),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        commit_every=args.commit_every,
        path_prefix=args.prefix,
        max_pixels=args.max_pixels,
        decode_timeout=args.decode_timeout,
        exact=args.exact,
        jpeg_decode=args.jpeg_decode,
        compile=args.compile,
    )


def _model_override(args: argparse.Namespace) -> ModelSpec | None:
    if args.model is None and args.pretrained is None:
        return None
    if args.model is None or args.pretrained is None:
        raise ConfigError("give both --model and --pretrained, or neither (the store's model)")
    return ModelSpec(name=args.model, pretrained=args.pretrained)


def _add_classify(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "classify",
        help="score the stored embeddings against a label set (no image is opened)",
        description="Encode the label set's prompts with the store's model, score every "
        "stored image not yet scored under this label-set version, and commit the "
        "predictions. The same file again is a no-op; an edited file is a new version.",
    )
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True, help="label-set TOML file")
    _add_model_arguments(parser, required=False)
    parser.set_defaults(handler=_run_classify)


def _run_classify(args: argparse.Namespace) -> int:
    from meter_batch.labels.classify_run import classify

    quiet = False if args.quiet else None  # -q: no progress bar
    summary = classify(args.store, args.labels, _model_override(args), interactive=quiet)
    print(json.dumps(summary.to_json(), ensure_ascii=False))
    return 0


def _add_search(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "search",
        help="nearest stored images to a text or an image",
        description="Top-k stored images by cosine similarity, from the FAISS index.",
    )
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("text", nargs="?", help="query text (or use --image)")
    parser.add_argument("--image", type=Path, help="query image file")
    parser.add_argument("-k", type=int, default=20, help="results (default: 20)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    _add_model_arguments(parser, required=False)
    parser.set_defaults(handler=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from meter_batch.labels.search import search

    hits = search(args.store, args.text, args.image, args.k, _model_override(args))
    if args.format == "json":
        for hit in hits:
            print(json.dumps(dataclasses.asdict(hit), ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'image_id':>9}  path")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.image_id:>9}  {hit.path}")
    return 0


def _add_query(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "query",
        help="run SQL against the store's DuckDB views",
        description="Run SQL (or a named query from sql/queries/) against STORE/catalog.duckdb, "
        "read-only. Views: images, failures, predictions, latest_predictions; tables: "
        "label_sets, runs. Parameters are bound ($name in the SQL), never spliced in.",
    )
    parser.add_argument("store", type=Path, metavar="STORE")
    parser.add_argument("sql", nargs="?", metavar="SQL")
    parser.add_argument("--named", metavar="NAME", help="a query from sql/queries/ (see --list)")
    parser.add_argument("--list", action="store_true", help="list the named queries")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="bind $NAME"
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--out", type=Path, help="write the result to this Parquet file")
    parser.set_defaults(handler=_run_query)


def _run_query(args: argparse.Namespace) -> int:
    from meter_batch.store.catalog import named_queries, run_query

    queries = named_queries()
    if args.list:
        for name, text in queries.items():
            print(f"{name}: {text.splitlines()[0].lstrip('- ')}")
        return 0
    if (args.sql is None) == (args.named is None):
        raise ConfigError("give either SQL or --named NAME")
    if args.named is not None and args.named not in queries:
        raise ConfigError(f"no named query {args.named!r}; choices: {', '.join(queries)}")
    sql = queries[args.named] if args.named else args.sql
    table = run_query(args.store, sql, _parse_params(args.param))
    _print_table(table, args.format, args.out)
    return 0


def _parse_params(pairs: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param needs NAME=VALUE; got {pair!r}")
        params[name] = value  # always text: SQL casts where it needs a number
    return params


def _print_table(table: Any, fmt: str, out: Path | None) -> None:
    import pyarrow.csv
    import pyarrow.parquet

    if out is not None:
        if not out.parent.is_dir():
            raise ConfigError(f"--out: folder {out.parent} does not exist")
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder; give a file name (.parquet)")
        pyarrow.parquet.write_table(table, out)
        print(json.dumps({"rows": table.num_rows, "out": str(out)}))
    elif fmt == "csv":
        pyarrow.csv.write_csv(_flat_for_csv(table), sys.stdout.buffer)
    elif fmt == "json":
        for row in table.to_pylist():
            print(json.dumps(row, ensure_ascii=False, default=str))
    else:
        print(_format_table(table))


def _flat_for_csv(table: Any) -> Any:
    """CSV has no lists or binary: such columns are written as JSON text."""
    import pyarrow as pa

    for index, column in enumerate(table.columns):
        kind = column.type
        if (
            pa.types.is_nested(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_fixed_size_binary(kind)
        ):
            text = [json.dumps(v, default=lambda b: b.hex()) for v in column.to_pylist()]
            table = table.set_column(index, table.field(index).name, pa.array(text, pa.string()))
    return table


def _format_table(table: Any, max_rows: int = 200) -> str:
    names = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.slice(0, max_rows).to_pylist()]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if table.num_rows > max_rows:
        lines.append(f"... {table.num_rows - max_rows} more rows (use --format csv or --out)")
    lines.append(f"({table.num_rows} rows)")
    return "\n".join(lines)


def _cell(value: object) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _add_verify(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify",
        help="check that manifest, parts, FAISS ids and catalog agree",
        description="List every inconsistency (exit 8), or print the counts (exit 0).",
    )
    parser.add_argument("store", type=Path, metavar="STORE")
    parser.set_defaults(handler=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from meter_batch.store.commit import STORE_FILE
    from meter_batch.store.verify import verify

    if not (args.store / STORE_FILE).is_file():  # exit 5, as for every other command
        raise StoreError(f"{args.store} is not a meter-batch store (no {STORE_FILE})")
    problems, counts = verify(args.store)
    for problem in problems:
        print(f"problem: {problem}")
    print(json.dumps({"store": str(args.store), "ok": not problems, **counts}))
    return 8 if problems else 0


def _add_rebuild_index(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "rebuild-index",
        help="recreate the FAISS index from the stored embeddings",
        description="The index is derived data: rebuild it from the live vectors and commit.",
    )
    parser.add_argument("store", type=Path, metavar="STORE")
    parser.set_defaults(handler=_run_rebuild_index)


def _run_rebuild_index(args: argparse.Namespace) -> int:
    from meter_batch.store.rebuild_index import rebuild_index

    print(json.dumps({"store": str(args.store), "indexed": rebuild_index(args.store)}))
    return 0


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="run a job file: encode each root, classify each label set, refresh the catalog",
        description="For cron and systemd: see jobs/nightly.toml. Logs to the job's log_file; "
        "exits 0, or with the failing step's exit code.",
    )
    parser.add_argument("job", type=Path, metavar="JOB.toml")
    parser.set_defaults(handler=_run_job)


def _run_job(args: argparse.Namespace) -> int:
    from meter_batch.jobs import run_job

    return run_job(args.job)


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="the shipped meter model on meters it never saw (the README's first command)",
        description="Render held-out synthetic meters (a seed never used in training), encode "
        "them with the shipped tiny meter model, classify them with the seed's Japanese labels, "
        "an English label set phrased unlike any training caption, and a housing-colour set, "
        "and print a confusion table and the accuracy of each.",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("demo-output"), help="default: demo-output"
    )
    parser.add_argument("--count", type=int, default=600, help="held-out images (default: 600)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decoders")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from meter_batch.tools.demo import HELD_OUT_SEED, run_demo

    if args.count < 3:
        raise ConfigError("--count must be >= 3 (one image of each meter type)")
    results = run_demo(args.dir, args.count, args.workers)
    store = args.dir / "store"
    print(f"\n{args.count} held-out synthetic meters (seed {HELD_OUT_SEED}), shipped model")
    for result in results:
        print(
            f"\nlabel set {result.label_set}: accuracy {result.accuracy:.1%} "
            f"({result.total} images)\n{result.table()}"
        )
    print(
        f"\nstore:  {store}  (DuckDB catalog: {store / 'catalog.duckdb'})\n"
        f"try:    meter-batch query {store} "
        '"SELECT label_set, label, count(*) AS n FROM latest_predictions '
        'GROUP BY ALL ORDER BY ALL"\n'
        f'        meter-batch search --store {store} "アナログメーター丸型" -k 5'
    )
    return 0


def _add_synth(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "synth",
        help="render synthetic meter photos with captions (training or test data)",
        description="Render COUNT synthetic meters (digital 7-segment, rotary counter, round "
        "analog; balanced) into OUT/images, with OUT/captions.csv (tab-separated filepath/title, "
        "English and Japanese captions) and OUT/truth.csv (what each image shows). Image i "
        "depends only on (seed, i): another seed is a disjoint held-out set.",
    )
    parser.add_argument("out", type=Path, metavar="OUT")
    parser.add_argument("--count", type=int, default=3000, help="images (default: 3000)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--captions-per-image", type=int, default=2, help="caption rows per image (default: 2)"
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes")
    parser.set_defaults(handler=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from meter_batch.tools.synthetic import write_synthetic_set

    if args.count < 1 or args.captions_per_image < 1:
        raise ConfigError("--count and --captions-per-image must be >= 1")
    written = write_synthetic_set(
        args.out, args.count, args.seed, args.captions_per_image, args.workers, progress=True
    )
    print(
        json.dumps(
            {
                "images": written.count,
                "images_dir": str(written.images_dir),
                "captions_csv": str(written.captions_csv),
                "truth_csv": str(written.truth_csv),
            }
        )
    )
    return 0


def _add_finetune(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "finetune",
        help="train or fine-tune a CLIP model with open_clip's trainer",
        description="Run open_clip_train (pip install 'meter_batch[training]') on a caption "
        "table, then write OUT/model.safetensors and OUT/<architecture>.json: pass them to "
        "encode as --pretrained and --model.",
    )
    parser.add_argument(
        "train_csv",
        type=Path,
        metavar="CAPTIONS_CSV",
        help="table of (image path, caption), comma- or tab-separated, with a header; relative "
        "paths are relative to the table's folder",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--model",
        default="RN50",
        help="open_clip architecture name, or a JSON model config file (default: RN50)",
    )
    parser.add_argument(
        "--pretrained",
        default="none",
        help="starting weights: a local checkpoint, a cached open_clip tag, or none "
        "(from scratch; default)",
    )
    parser.add_argument("--epochs", type=int, default=1, help="default: 1")
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (5e-4)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps (default: 100)")
    parser.add_argument("--wd", type=float, default=0.1, help="weight decay (default: 0.1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers (2)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--image-column", default="filepath", help="default: filepath")
    parser.add_argument("--caption-column", default="title", help="default: title")
    parser.add_argument(
        "--half", action="store_true", help="store the weights as float16 (half the size)"
    )
    parser.set_defaults(handler=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from meter_batch.tools.finetune import FinetuneOptions, finetune

    result = finetune(
        FinetuneOptions(
            train_csv=args.train_csv,
            out_dir=args.out,
            model=args.model,
            pretrained=args.pretrained,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            weight_decay=args.wd,
            device=args.device,
            workers=args.workers,
            seed=args.seed,
            image_column=args.image_column,
            caption_column=args.caption_column,
            half=args.half,
        )
    )
    print(json.dumps(dataclasses.asdict(result), default=str))  # paths as text, rows a number
    print(
        f"\nuse it:  meter-batch encode IMAGES_DIR --store STORE "
        f"--model {result.config} --pretrained {result.weights}"
    )
    return 0


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmarks that print their figures",
        description="bench encode: decode capacity, model capacity and end-to-end encode "
        "on one folder, the bound and the ratio e2e / bound, peak RSS. "
        "bench classify: synthetic store of random unit vectors; read rate, "
        "classify rate, their ratio and peak RSS at each N. bench rescan: a no-change encode "
        "over --files files against a bare os.scandir walk of the same tree.",
    )
    parser.add_argument("what", choices=("encode", "classify", "rescan"))
    parser.add_argument("--dir", type=Path, default=Path("bench-output"), help="scratch folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    # Each benchmark's own options default to None: one given to another benchmark is an
    # error, not silently ignored (`bench classify --count 4` would run the 1M-row bench).
    for flag, kind, what, meaning in _BENCH_OPTIONS:
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=f"{what}: {meaning}")
        else:
            parser.add_argument(flag, type=kind, help=f"{what}: {meaning}", **_extra(flag))
    parser.set_defaults(handler=_run_bench)


_BENCH_OPTIONS: list[tuple[str, Any, str, str]] = [
    ("--n", int, "classify", "store sizes, repeatable (default: 100000 and 1000000)"),
    ("--dim", int, "classify", "embedding dimension (default: 1024)"),
    ("--labels", int, "classify", "labels (default: 10)"),
    ("--files", int, "rescan", "files (default: 100000)"),
    ("--images", Path, "encode", "an image folder (default: generate one)"),
    ("--count", int, "encode", "images to generate (default: 600)"),
    ("--model", str, "encode", "model (default: RN50)"),
    ("--pretrained", str, "encode", "weights (default: none)"),
    ("--workers", int, "encode", "decode workers (default: from the core count)"),
    ("--batch-size", int, "encode", "batch size (default: 64)"),
    ("--device", str, "encode", f"one of {', '.join(DEVICES)} (default: auto)"),
    ("--exact", bool, "encode", "the reference path"),
    ("--jpeg-decode", str, "encode", f"one of {', '.join(JPEG_DECODERS)} (default: auto)"),
    ("--compile", bool, "encode", "torch.compile the model"),
]
_BENCH_DEFAULTS: dict[str, Any] = {
    "n": [100_000, 1_000_000], "dim": 1024, "labels": 10, "files": 100_000, "count": 600,
    "model": "RN50", "pretrained": "none", "batch_size": 64, "device": "auto",
    "exact": False, "jpeg_decode": "auto", "compile": False,
}  # fmt: skip


def _extra(flag: str) -> dict[str, Any]:
    choices = {"--device": DEVICES, "--jpeg-decode": JPEG_DECODERS}
    if flag == "--n":
        return {"action": "append"}
    return {"choices": choices[flag]} if flag in choices else {}


def _bench_settings(args: argparse.Namespace) -> argparse.Namespace:
    """The options of ``args.what`` with their defaults; another benchmark's is an error."""
    for flag, _, what, _ in _BENCH_OPTIONS:
        name = flag.lstrip("-").replace("-", "_")
        if what != args.what and getattr(args, name) is not None:
            raise ConfigError(f"{flag} is an option of `bench {what}`, not `bench {args.what}`")
        if getattr(args, name) is None:
            default = default_workers() if name == "workers" else _BENCH_DEFAULTS.get(name)
            setattr(args, name, default)
    return args


def _bench_encode(*args: Any) -> dict[str, Any]:
    from meter_batch.tools.bench import bench_encode

    with _settings_named_as_flags():  # its EncodeConfig is built from bench's own flags
        return bench_encode(*args)


def _run_bench(args: argparse.Namespace) -> int:
    from meter_batch.tools.bench import (
        bench_classify,
        bench_rescan,
        format_classify_table,
        format_encode_table,
    )

    args = _bench_settings(args)
    counts = {"--files": [args.files], "--count": [args.count], "--n": args.n,
              "--dim": [args.dim], "--labels": [args.labels]}  # fmt: skip
    for flag, values in counts.items():
        if any(value < 1 for value in values):
            raise ConfigError(f"{flag} must be >= 1")
    if args.what in ("rescan", "encode"):
        result = (
            bench_rescan(args.files, args.dir)
            if args.what == "rescan"
            else _bench_encode(
                args.images,
                args.dir,
                ModelSpec(args.model, args.pretrained),
                args.count,
                args.workers,
                args.batch_size,
                args.device,
                args.exact,
                args.jpeg_decode,
                args.compile,
            )
        )
        print(format_encode_table(result) if args.what == "encode" else json.dumps(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    results = bench_classify(args.n, args.dim, args.labels, args.dir)
    print(format_classify_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _configure_logging(quiet: bool) -> None:
    # Only our own logger: open_clip and faiss log chatter at INFO on the root logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s meter-batch: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("meter_batch")
    for old in list(logger.handlers):  # main() may run many times in one process (tests)
        logger.removeHandler(old)
    logger.addHandler(handler)
    # the level on the terminal's handler, not the logger: a job's log file gets INFO even
    # when the terminal is quiet (cron runs `-q run`)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # A root handler stops logging.warning() in libraries from installing a default one.
    logging.getLogger().addHandler(logging.NullHandler())
