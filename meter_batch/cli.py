"""The command line: parse, call the library, turn run-level errors into one line + exit code.

A command's options come from its settings dataclass in config.py (``_add_settings``):
flag, type, choices, default and help are the field's. Only what the terminal alone
has (output formats, --list, query parameters) is declared here. Library modules are
imported inside the handlers, so `query` and `verify` load no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import typing
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from meter_batch import __version__
from meter_batch.config import (
    BenchClassifySettings,
    BenchEncodeSettings,
    BenchReportSettings,
    BenchRescanSettings,
    BenchServeSettings,
    DemoSettings,
    EncodeConfig,
    FinetuneOptions,
    ModelSpec,
    ReportSettings,
    SearchSettings,
    ServeSettings,
    Setting,
    SynthSettings,
    setting_of,
)
from meter_batch.errors import EXIT_CODES, ConfigError, MeterBatchError, StoreError

Handler = Callable[[argparse.Namespace], int]
Commands = argparse._SubParsersAction
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        return _fail("-q and -v contradict each other: give one", 2)
    _configure_logging(args.quiet, args.verbose)
    handler: Handler = args.handler
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        if hasattr(args, "store_given"):
            _settle_store(args)
        code = handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        return _output_closed()
    except ConfigError as exc:  # a setting is named as this command's flag for it
        flags: dict[str, str] = args.flags
        return _fail(exc.worded(lambda name: flags.get(name, name)), exc.exit_code)
    except MeterBatchError as exc:
        return _fail(str(exc), exc.exit_code)
    except Terminated:
        print("meter-batch: stopped (SIGTERM); the last commit is intact", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("meter-batch: interrupted; the last commit is intact", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd's stop, `kill`): the same clean stop as Ctrl-C, its own exit code."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def _output_closed() -> int:
    """The reader of our stdout went away (`| head -1`): stop quietly, as other CLIs do.
    stdout now points at /dev/null, so the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE: what a shell shows for a CLI the pipe's signal ended


def _fail(message: str, code: int) -> int:
    print(f"meter-batch: error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="meter-batch",
        description="Encode image folders once with OpenCLIP; query the embeddings any time.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"meter-batch {__version__}")
    _verbosity_options(parser, default=False)
    parser.set_defaults(flags={})
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        _add_command(commands, command)
    return parser


@dataclass(frozen=True)
class _Command:
    """A sub-command: its handler and words, and where its options come from: the fields
    of ``settings`` (``required``: those the command line must give) and ``arguments``,
    the options only the terminal has (it returns their field -> flag names)."""

    name: str
    run: Handler | None  # None: a command of commands, which runs one of its children
    help: str
    description: str
    settings: type | None = None
    required: frozenset[str] = frozenset()
    arguments: Callable[[argparse.ArgumentParser], dict[str, str]] | None = None
    children: tuple[_Command, ...] = ()  # a command of commands (bench)


def _verbosity_options(parser: argparse.ArgumentParser, default: object) -> None:
    """-q / -v before the command or after it (`meter-batch run job.toml -q`). After it
    they default to SUPPRESS: unset, a sub-command must not reset what was given before."""
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="only warnings and errors"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="debug lines too, and the libraries' warnings (torch's, PIL's); evaluate: "
        "the truth rows not in the store",
    )


def _add_command(commands: Commands, command: _Command) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        command.name, help=command.help, description=command.description
    )
    _verbosity_options(parser, default=argparse.SUPPRESS)
    flags = {}
    if command.settings is not None:
        flags = _add_settings(parser, command.settings, command.required)
    if command.arguments is not None:
        flags |= command.arguments(parser)
    parser.set_defaults(handler=command.run, flags=flags, command=command)
    if command.children:
        children = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
        for child in command.children:
            _add_command(children, child)


# --- options derived from the settings dataclasses -------------------------------------


def _add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    required: Collection[str] = (),
    prefix: str = "",
    optional_model: bool = False,
) -> dict[str, str]:
    """An option (or positional) per CLI setting of ``cls``, nested dataclasses flattened;
    every default is None, so the dataclass's own default applies. Returns field -> flag."""
    flags: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for spec in _own_fields_first(cls):
        hint, details = hints[spec.name], setting_of(spec)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            flags |= _add_settings(parser, hint, required, f"{prefix}{spec.name}.", optional_model)
        elif spec.name == "store" and not prefix:  # STORE, --store or the environment
            flags |= _store_argument(parser)
        elif details is not None and details.cli:
            dest = prefix + spec.name
            hidden = optional_model or spec.name in required
            shown = None if hidden else _shown_default(spec, details)
            help_text = details.help + (f" (default: {shown})" if shown else "")
            if optional_model:
                help_text += " (default: the store's own model)"
            flags[spec.name] = _add_option(parser, dest, hint, details, help_text, required)
    return flags


def _own_fields_first(cls: type) -> list[dataclasses.Field[Any]]:
    """A command's own settings (where, what) before those it shares (how)."""
    own = inspect.get_annotations(cls)
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def _add_option(
    parser: argparse.ArgumentParser,
    dest: str,
    hint: Any,
    details: Setting,
    help_text: str,
    required: Collection[str],
) -> str:
    kind = _plain_type(hint)
    options: dict[str, Any] = {"help": help_text.replace("%", "%%")}
    if details.positional:
        parser.add_argument(dest, type=kind, metavar=details.positional, **options)
        return details.positional
    flag = details.flag or "--" + dest.rpartition(".")[2].replace("_", "-")
    if kind is bool:
        options.update(action="store_true", default=None)
    elif typing.get_origin(kind) is Literal:
        options.update(choices=typing.get_args(kind), default=None)
    elif typing.get_origin(kind) is tuple:
        options.update(action="append", type=typing.get_args(kind)[0], default=None)
    else:
        options.update(type=kind, default=None)
    if "choices" not in options and kind is not bool:  # argparse shows choices itself
        options["metavar"] = flag.lstrip("-").upper().replace("-", "_")
    is_required = dest.rpartition(".")[2] in required
    parser.add_argument(flag, dest=dest, required=is_required, **options)
    return flag


def _plain_type(hint: Any) -> Any:
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    return options[0] if typing.get_origin(hint) is not Literal and len(options) == 1 else hint


def _shown_default(spec: dataclasses.Field[Any], details: Setting) -> str | None:
    if details.shown_default is not None:
        return details.shown_default
    value = spec.default
    if spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    if value is dataclasses.MISSING or value is None or value is False or value == "":
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


def _from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    """The dataclass the options of ``_add_settings`` describe; unset ones keep defaults."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[spec.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[spec.name] = _from_args(hint, args, f"{prefix}{spec.name}.")
        elif getattr(args, prefix + spec.name, None) is not None:
            value = getattr(args, prefix + spec.name)
            values[spec.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


# --- encode, classify, search ----------------------------------------------------------


def _run_encode(args: argparse.Namespace) -> int:
    from meter_batch.ingest.encode_run import encode

    config = _from_args(EncodeConfig, args)
    summary = encode(config, interactive=False if args.quiet else None)  # -q: no bar
    print(json.dumps(summary.to_json()))
    return 0


def _model_override_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    return _add_settings(parser, ModelSpec, prefix="model.", optional_model=True)


def _model_override(args: argparse.Namespace) -> ModelSpec | None:
    name, pretrained = getattr(args, "model.name"), getattr(args, "model.pretrained")
    if name is None and pretrained is None:
        return None
    if name is None or pretrained is None:
        raise ConfigError("give both --model and --pretrained, or neither (the store's model)")
    return ModelSpec(name=name, pretrained=pretrained)


def _classify_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser)
    parser.add_argument("--labels", type=Path, required=True, help="label-set TOML file")
    parser.add_argument(
        "--make-current",
        action="store_true",
        help="make this version the one latest_predictions shows (as the nightly job does)",
    )
    return _model_override_arguments(parser)


def _run_classify(args: argparse.Namespace) -> int:
    from meter_batch.labels.classify_run import classify

    quiet = False if args.quiet else None  # -q: no progress bar
    model = _model_override(args)
    summary = classify(args.store, args.labels, model, quiet, make_current=args.make_current)
    print(json.dumps(summary.to_json(), ensure_ascii=False))
    return 0


def _labelsets_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser)
    change = parser.add_mutually_exclusive_group()
    change.add_argument("--pin", metavar="VERSION", help="make VERSION its name's current one")
    change.add_argument("--unpin", metavar="NAME", help="back to the version the job applied")
    change.add_argument("--drop", metavar="NAME_OR_VERSION", help="drop a version or a name")
    return {}


def _run_labelsets(args: argparse.Namespace) -> int:
    from meter_batch.labels import versions
    from meter_batch.store.commit import open_store

    if args.pin or args.unpin:
        change = versions.pin if args.pin else versions.unpin
        current = change(args.store, args.pin or args.unpin)
        print(json.dumps({"name": current.name, "current": current.version, "how": current.how}))
        return 0
    if args.drop:
        print(json.dumps({"dropped": versions.drop(args.store, args.drop)}))
        return 0
    print(_versions_table(versions.version_rows(open_store(args.store).manifest)))
    return 0


def _versions_table(rows: list[Any]) -> str:
    import pyarrow as pa

    from meter_batch.output import text_table

    table = pa.table(
        {
            "name": [r.entry.name for r in rows],
            "version": [r.entry.version for r in rows],
            "current": [r.current.how if r.current else "" for r in rows],
            "created_at": [r.entry.created_at[:19] for r in rows],
            "classified_at": [(r.entry.classified_at or "")[:19] for r in rows],
            "labels": [len(r.entry.labels) for r in rows],
            "mode": [_mode(r.entry) for r in rows],
            "logit_scale": [r.entry.logit_scale for r in rows],
            "evaluations": [r.evaluations for r in rows],
            "last_accuracy": [r.last_accuracy for r in rows],
        }
    )
    return text_table(table)


def _mode(entry: Any) -> str:
    """text, or a few-shot mode with its example count and cross-validated parameters."""
    fit = entry.few_shot
    if fit is None:
        return "text"
    chosen = {"mix": fit.mix, "alpha": fit.alpha, "beta": fit.beta, "l2": fit.l2}
    params = " ".join(f"{k}={v:g}" for k, v in chosen.items() if v is not None)
    return f"{fit.mode} ({fit.examples} ex., {params})"


def _evaluate_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser)
    parser.add_argument(
        "--labels", type=Path, action="append", required=True,
        help="label-set TOML file (repeat to compare several side by side)",
    )  # fmt: skip
    parser.add_argument(
        "--truth", type=Path, required=True, help="CSV: path (as stored) or image_id, label"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    return _model_override_arguments(parser)  # -v also lists the truth rows not in the store


def _run_evaluate(args: argparse.Namespace) -> int:
    from meter_batch.labels.evaluate_run import evaluate
    from meter_batch.labels.evaluation_report import report_text

    report = evaluate(args.store, args.labels, args.truth, _model_override(args))
    print(report_text(report, args.verbose))
    _write_json(args.json, report.to_json())
    return 0


def _calibrate_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser)
    parser.add_argument("--labels", type=Path, required=True, help="label-set TOML file")
    parser.add_argument(
        "--truth", type=Path, required=True, help="CSV: path (as stored) or image_id, label"
    )
    parser.add_argument(
        "-o", "--out", type=Path, required=True, help="the fitted label-set file to write"
    )
    parser.add_argument(
        "--target-precision", type=float, metavar="P",
        help="also fit per-label min_prob: the lowest that keeps each label's precision >= P",
    )  # fmt: skip
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    return _model_override_arguments(parser)


def _run_calibrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from meter_batch.labels.calibrate_run import calibrate
    from meter_batch.labels.evaluation_report import calibration_text

    report = calibrate(
        args.store, args.labels, args.truth, args.out,
        args.target_precision, args.folds, _model_override(args),
    )  # fmt: skip
    print(calibration_text(report))
    _write_json(args.json, asdict(report))
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser)
    parser.add_argument(
        "--labels", action="append", default=[], metavar="NAME",
        help="a label-set name (its current version) or a version; repeatable "
        "(default: every classified set)",
    )  # fmt: skip
    parser.add_argument(
        "--truth", type=Path, help="CSV: path (as stored) or image_id, label: adds the "
        "confusion matrix (each cell opens its images) and a reliability diagram",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--out", type=Path, required=True, help="folder for index.html and its files"
    )
    return {}


def _run_report(args: argparse.Namespace) -> int:
    from meter_batch.report.report_run import report

    result = report(
        args.store, tuple(args.labels), args.truth, args.out,
        _from_args(ReportSettings, args), interactive=False if args.quiet else None,
    )  # fmt: skip
    cached = "cached in the store" if result.cached else "not cached"
    print(
        f"report: {result.index} ({len(result.sets)} label set(s); {result.thumbnails_made} "
        f"thumbnail(s) made, {cached}; {result.thumbnails_missing} placeholder(s))"
    )
    print(f"open: file://{result.index.resolve()}")
    return 0


def _search_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser, then="text")
    parser.add_argument("text", nargs="?", metavar="TEXT", help="query text (or use --image)")
    parser.add_argument("--image", type=Path, help="query image file")
    _output_arguments(parser)
    return _model_override_arguments(parser)


def _run_search(args: argparse.Namespace) -> int:
    from meter_batch.labels.search import search

    k = _from_args(SearchSettings, args).k
    import pyarrow as pa

    from meter_batch.output import write_rows

    hits = search(args.store, args.text, args.image, k, _model_override(args))
    schema = pa.schema(
        [("rank", pa.int64()), ("image_id", pa.int64()), ("score", pa.float64()),
         ("path", pa.string())]
    )  # fmt: skip
    write_rows(
        pa.Table.from_pylist([dataclasses.asdict(h) for h in hits], schema), args.format, args.out
    )
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    return _store_argument(parser) | _model_override_arguments(parser)


def _run_serve(args: argparse.Namespace) -> int:
    from meter_batch.serve.serve_run import serve

    serve(args.store, _from_args(ServeSettings, args), _model_override(args))
    return 0


# --- query, verify, rebuild-index, run: light commands over a store or a job file ------


def _query_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser, then="sql")
    parser.add_argument(
        "sql", nargs="?", metavar="SQL", help="the SELECT to run; - reads it from stdin"
    )
    parser.add_argument("--named", metavar="NAME", help="a query from sql/queries/ (see --list)")
    parser.add_argument("--list", action="store_true", help="list the named queries")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="bind $NAME"
    )
    _output_arguments(parser)
    return {}


def _run_query(args: argparse.Namespace) -> int:
    from meter_batch.output import write_rows
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
    if sql == "-":
        sql = sys.stdin.read()
    table = run_query(args.store, sql, _parse_params(args.param))
    write_rows(table, args.format, args.out)
    return 0


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("table", "csv", "json", "parquet"),
        help="how rows are written (default: table, or what --out's extension names)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, metavar="FILE",
        help="write the rows to FILE (.csv, .json: JSON lines, .parquet) instead of stdout",
    )  # fmt: skip


def _parse_params(pairs: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param needs NAME=VALUE; got {pair!r}")
        params[name] = value  # always text: SQL casts where it needs a number
    return params


STORE_ENV = "METER_BATCH_STORE"
# shtab's marks for what an argument completes to (its shtab.DIRECTORY, by value: the
# parser is built on every run, shtab is imported only by `completion`)
_FOLDERS = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}


def _store_argument(parser: argparse.ArgumentParser, then: str | None = None) -> dict[str, str]:
    """The store, in any of the three forms every command accepts: STORE, --store STORE,
    or $METER_BATCH_STORE. ``then``: the optional positional after STORE (search's TEXT,
    query's SQL), which a lone positional is when the store came by flag or environment."""
    given = parser.add_argument(
        "store_given", nargs="?", metavar="STORE",
        help=f"the store folder (or --store STORE, or ${STORE_ENV})",
    )  # fmt: skip
    flag = parser.add_argument(
        "--store", dest="store_flag", metavar="STORE", help="the same as STORE"
    )
    given.complete = flag.complete = _FOLDERS  # type: ignore[attr-defined]
    parser.set_defaults(store_then=then)
    return {"store": "STORE"}


def _settle_store(args: argparse.Namespace) -> None:
    """args.store from whichever form was given; two different stores are refused."""
    from meter_batch.store.layout import STORE_FILE

    given, flag, env = args.store_given, args.store_flag, os.environ.get(STORE_ENV)
    then = args.store_then
    lone = given is not None and (flag or env) and then and getattr(args, then) is None
    if lone and not (Path(given) / STORE_FILE).is_file():  # a store's folder stays STORE
        setattr(args, then, given)
        given = None
    if given is not None and flag is not None and Path(given) != Path(flag):
        raise ConfigError(f"two stores given: {given} and --store {flag}; give one")
    chosen = given or flag or env
    if not chosen:
        raise ConfigError(f"no store given: STORE, --store STORE, or {STORE_ENV}=STORE")
    args.store = Path(chosen)


def _verify_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser)
    parser.add_argument(
        "--quick", action="store_true", help="compare file sizes only, not SHA-256 digests"
    )
    return {}


def _run_verify(args: argparse.Namespace) -> int:
    from meter_batch.store.layout import STORE_FILE
    from meter_batch.store.verify import verify

    if not (args.store / STORE_FILE).is_file():  # exit 5, as for every other command
        raise StoreError(f"{args.store} is not a meter-batch store (no {STORE_FILE})")
    report = verify(args.store, quick=args.quick)
    for note in report.notes:  # for the person: stderr; stdout stays one JSON line
        print(f"note: {note}", file=sys.stderr)
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    summary = {"store": str(args.store), "ok": not report.problems, **report.counts}
    print(json.dumps({**summary, "problems": report.problems, "notes": report.notes}))
    return 8 if report.problems else 0


def _repair_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    _store_argument(parser)
    parser.add_argument(
        "--drop-damaged",
        action="store_true",
        help="take what cannot be rebuilt out of the store (its images are encoded again "
        "by the next encode, its predictions scored again by the next classify)",
    )
    return {}


def _run_repair(args: argparse.Namespace) -> int:
    from meter_batch.store.repair import repair

    report = repair(args.store, drop_damaged=args.drop_damaged)
    for line in report.fixed:
        print(f"fixed: {line}")
    for line in report.dropped:
        print(f"dropped: {line}")
    for line in report.lost:
        print(f"lost: {line}")
    summary = {"store": str(args.store), "ok": not report.lost, "indexed": report.indexed}
    print(json.dumps({**summary, "fixed": len(report.fixed), "dropped": len(report.dropped)}))
    return 8 if report.lost else 0


def _run_rebuild_index(args: argparse.Namespace) -> int:
    from meter_batch.store.rebuild_index import rebuild_index

    print(json.dumps({"store": str(args.store), "indexed": rebuild_index(args.store)}))
    return 0


def _job_argument(parser: argparse.ArgumentParser) -> dict[str, str]:
    parser.add_argument("job", type=Path, metavar="JOB.toml")
    return {}


def _run_job(args: argparse.Namespace) -> int:
    from meter_batch.jobs import run_job

    return run_job(args.job, quiet=args.quiet)


def _completion_argument(parser: argparse.ArgumentParser) -> dict[str, str]:
    parser.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell to complete in")
    return {}


def _run_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


# --- tools: demo, synth, finetune, bench -----------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from meter_batch.store.layout import CATALOG
    from meter_batch.tools.demo import HELD_OUT_SEED, run_demo
    from meter_batch.tools.demo_shifted import STORE, shifted_table

    settings = _from_args(DemoSettings, args)
    result = run_demo(settings)
    store = settings.dir / "store"
    print(f"\n{settings.count} held-out synthetic meters (seed {HELD_OUT_SEED}), shipped model")
    for confusion in result.confusions:
        print(
            f"\nlabel set {confusion.label_set}: accuracy {confusion.accuracy:.1%} "
            f"({confusion.total} images)\n{confusion.table()}"
        )
    if result.shifted is not None:
        shifted = result.shifted
        print(
            f"\n{shifted.images} of the same meters drawn in a style the model never saw "
            f"(synth --style shifted), evaluated on {settings.dir / STORE}; few-shot examples "
            "and the calibration images are other renders:\n" + shifted_table(shifted)
        )
    us = how_we_were_run()
    print(
        f"\nstore:  {store}  (DuckDB catalog: {store / CATALOG})\n"
        f"try:    {us} query {store} "
        '"SELECT label_set, label, count(*) AS n FROM latest_predictions '
        'GROUP BY ALL ORDER BY ALL"\n'
        f'        {us} search {store} "アナログメーター丸型" -k 5'
    )
    print(f"report: {result.report}\nopen:   {result.report.resolve().as_uri()}")
    return 0


def how_we_were_run() -> str:
    """The command that ran us, as the user can type it again from here: `meter-batch`
    when that is on PATH, else the script's path as given (`.venv/bin/meter-batch` from
    the README's first command, no venv activated), else `python -m meter_batch`."""
    script = sys.argv[0] if sys.argv else ""
    if Path(script).name == "meter-batch":
        found = shutil.which("meter-batch")
        if found is not None and Path(found).resolve() == Path(script).resolve():
            return "meter-batch"
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m meter_batch"


def _run_synth(args: argparse.Namespace) -> int:
    from meter_batch.tools.synthetic import write_synthetic_set

    settings = _from_args(SynthSettings, args)
    written = write_synthetic_set(
        settings.out,
        settings.count,
        settings.seed,
        settings.captions_per_image,
        settings.workers,
        progress=True,
        style=settings.style,
    )
    summary = {"images": written.count, "images_dir": str(written.images_dir)}
    summary |= {"captions_csv": str(written.captions_csv), "truth_csv": str(written.truth_csv)}
    print(json.dumps(summary))
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    from meter_batch.tools.finetune import finetune

    result = finetune(_from_args(FinetuneOptions, args))
    print(json.dumps(dataclasses.asdict(result), default=str))  # paths as text, rows a number
    print(
        f"\nuse it:  meter-batch encode IMAGES_DIR --store STORE "
        f"--model {result.config} --pretrained {result.weights}"
    )
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    """Each benchmark module has ``run(settings) -> results`` and ``table(results)``."""
    from meter_batch.tools.bench import classify, encode, report, rescan, serve

    command: _Command = args.command
    modules = {
        "encode": encode, "classify": classify, "rescan": rescan, "report": report,
        "serve": serve,
    }  # fmt: skip
    bench = modules[command.name]
    assert command.settings is not None  # every benchmark has its settings
    settings: Any = _from_args(command.settings, args)
    results = bench.run(settings)
    print(bench.table(results))
    _write_json(settings.json, results)
    return 0


def _write_json(path: Path | None, results: object) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")


def _configure_logging(quiet: bool, verbose: bool) -> None:
    # Only our own logger: open_clip and faiss log chatter at INFO on the root logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s meter-batch: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("meter_batch")
    for old in list(logger.handlers):  # main() may run many times in one process (tests)
        logger.removeHandler(old)
    logger.addHandler(handler)
    # the level on the terminal's handler, not the logger: a job's log file gets INFO even
    # when the terminal is quiet (cron runs `-q run`)
    handler.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    # A root handler stops logging.warning() in libraries from installing a default one.
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.showwarning = _library_warning


def _library_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A library's warning (torch's "The given NumPy array is not writable", PIL's) is
    for developers: a debug line (-v shows it), never Python's two lines on a terminal."""
    where = f"{Path(filename).name}:{lineno}"
    logging.getLogger("meter_batch").debug("%s: %s (%s)", category.__name__, message, where)


_COMMANDS = (
    _Command(
        "encode",
        _run_encode,
        help="encode every image under a folder into a store",
        description="Walk IMAGES_DIR, encode every image once, and commit the embeddings, "
        "failures and FAISS index into STORE. Prints a one-line JSON summary.",
        settings=EncodeConfig,
        required=frozenset({"store", "pretrained"}),
    ),
    _Command(
        "classify",
        _run_classify,
        help="score the stored embeddings against a label set (no image is opened)",
        description="Encode the label set's prompts with the store's model, score every "
        "stored image not yet scored under this label-set version, and commit the "
        "predictions. The same file again is a no-op; an edited file is a new version.",
        arguments=_classify_arguments,
    ),
    _Command(
        "labelsets",
        _run_labelsets,
        help="list label-set versions; pin, unpin or drop one",
        description="Each label-set name has one current version, the one "
        "latest_predictions shows: the version the nightly job applies, unless pinned. "
        "Without an option: every version, which is current and why, its evaluations.",
        arguments=_labelsets_arguments,
    ),
    _Command(
        "evaluate",
        _run_evaluate,
        help="how good label sets are on images whose truth is known (no image is opened)",
        description="Score the truth file's stored images with each label set and print, "
        "side by side: accuracy and balanced accuracy with 95 % intervals, per-class "
        "figures, the confusion matrix, calibration (ECE, NLL, Brier), risk-coverage and "
        "abstention. The figures are recorded in the catalog's `evaluations` table.",
        arguments=_evaluate_arguments,
    ),
    _Command(
        "calibrate",
        _run_calibrate,
        help="fit a label set's logit scale (and per-label thresholds) to truth",
        description="Fit the temperature (logit_scale) by NLL on the truth file's stored "
        "images, and with --target-precision per-label min_prob thresholds; print before / "
        "after figures measured on held-out folds; write the fitted set to -o (a new "
        "version: classify it to use it). No image is opened, nothing is committed.",
        arguments=_calibrate_arguments,
    ),
    _Command(
        "report",
        _run_report,
        help="a static HTML report of the store: galleries, charts, a map, a review queue",
        description="Write -o DIR/index.html and its files: an overview of the store, per "
        "label set its counts, histograms, most / least confident images per label, a "
        "review queue with a ready review.csv, what changed since the previous version, "
        "the confusion matrix against --truth, and a map of the embeddings. The folder "
        "opens from file:// with no network. Thumbnails are made only for the images "
        "shown, and cached in the store.",
        settings=ReportSettings,
        arguments=_report_arguments,
    ),
    _Command(
        "search",
        _run_search,
        help="nearest stored images to a text or an image",
        description="Top-k stored images by cosine similarity, from the FAISS index.",
        settings=SearchSettings,
        arguments=_search_arguments,
    ),
    _Command(
        "serve",
        _run_serve,
        help="a local HTTP service: search by text or image, neighbours, predictions, thumbnails",
        description="Load the store's model, FAISS index and paths once, then answer over "
        "HTTP (JSON under /api/, a search page at /, thumbnails, originals, a --report "
        "folder) until Ctrl-C; new commits are picked up without a restart. Read-only; "
        "listens on 127.0.0.1 unless --host says otherwise.",
        settings=ServeSettings,
        arguments=_serve_arguments,
    ),
    _Command(
        "query",
        _run_query,
        help="run SQL against the store's DuckDB views",
        description="Run SQL (or a named query from sql/queries/) against STORE/catalog.duckdb, "
        "read-only. Views: images, failures, predictions, latest_predictions; tables: "
        "label_sets, runs. Parameters are bound ($name in the SQL), never spliced in.",
        arguments=_query_arguments,
    ),
    _Command(
        "verify",
        _run_verify,
        help="check that manifest, file contents, FAISS ids and catalog agree",
        description="List every inconsistency and damaged file (exit 8), or print the "
        "counts (exit 0). Reads every committed file to compare its SHA-256 (--quick: sizes).",
        arguments=_verify_arguments,
    ),
    _Command(
        "repair",
        _run_repair,
        help="rebuild vectors files, the FAISS index and the catalog; say what is lost",
        description="Rebuild the derived files from the Parquet parts, set aside manifests "
        "whose name and content disagree, fix the manifest's lists and next_image_id, in one "
        "commit. Exit 0, or 8 when something cannot be rebuilt (see --drop-damaged).",
        arguments=_repair_arguments,
    ),
    _Command(
        "rebuild-index",
        _run_rebuild_index,
        help="recreate the FAISS index from the stored embeddings",
        description="The index is derived data: rebuild it from the live vectors and commit.",
        arguments=_store_argument,
    ),
    _Command(
        "run",
        _run_job,
        help="run a job file: encode each root, classify each label set, refresh the catalog",
        description="For cron and systemd: see jobs/nightly.toml. Logs to the job's log_file; "
        "exits 0, or with the failing step's exit code.",
        arguments=_job_argument,
    ),
    _Command(
        "completion",
        _run_completion,
        help="print a shell completion script (bash, zsh, tcsh) for meter-batch",
        description="Generated from this parser by shtab, so it knows every command and "
        "option: `meter-batch completion bash > ~/.local/share/bash-completion/completions/"
        "meter-batch`, or `meter-batch completion zsh > ~/.zfunc/_meter-batch`.",
        arguments=_completion_argument,
    ),
    _Command(
        "demo",
        _run_demo,
        help="the shipped meter model on meters it never saw (the README's first command)",
        description="Render held-out synthetic meters (a seed never used in training), encode "
        "them with the shipped tiny meter model, classify them with the seed's Japanese labels, "
        "an English label set phrased unlike any training caption, and a housing-colour set, "
        "and print a confusion table and the accuracy of each.",
        settings=DemoSettings,
    ),
    _Command(
        "synth",
        _run_synth,
        help="render synthetic meter photos with captions (training or test data)",
        description="Render COUNT synthetic meters (digital 7-segment, rotary counter, round "
        "analog; balanced) into OUT/images, with OUT/captions.csv (tab-separated filepath/title, "
        "English and Japanese captions) and OUT/truth.csv (what each image shows). Image i "
        "depends only on (seed, i): another seed is a disjoint held-out set.",
        settings=SynthSettings,
    ),
    _Command(
        "finetune",
        _run_finetune,
        help="train or fine-tune a CLIP model with open_clip's trainer",
        description="Run open_clip_train (pip install 'meter_batch[training]') on a caption "
        "table, then write OUT/model.safetensors and OUT/<architecture>.json: pass them to "
        "encode as --pretrained and --model.",
        settings=FinetuneOptions,
        required=frozenset({"out_dir"}),
    ),
    _Command(
        "bench",
        None,
        help="benchmarks that print their figures",
        description="Benchmarks that print their figures; each has its own options "
        "(`meter-batch bench encode --help`).",
        children=(
            _Command(
                "encode",
                _run_bench,
                help="decode, model and end-to-end encode rates on one folder, against the bound",
                description="Decode capacity, model capacity and end-to-end encode on one "
                "folder, the bound and the ratio e2e / bound, peak RSS; the encode settings "
                "are encode's.",
                settings=BenchEncodeSettings,
            ),
            _Command(
                "classify",
                _run_bench,
                help="read and classify rates over synthetic stores of N vectors",
                description="A synthetic store of random unit vectors per N; read rate, "
                "classify rate, their ratio and peak RSS at each N.",
                settings=BenchClassifySettings,
            ),
            _Command(
                "rescan",
                _run_bench,
                help="a no-change encode over many files against a bare walk",
                description="A no-change encode over --files files against a bare os.scandir "
                "walk of the same tree.",
                settings=BenchRescanSettings,
            ),
            _Command(
                "report",
                _run_bench,
                help="`report` on a synthetic store of --n images, timed",
                description="`report` on a synthetic store of --n random embeddings with two "
                "scored versions of a label set (no image files: thumbnails are placeholders), "
                "in a fresh process: wall time, peak RSS, the folder's size.",
                settings=BenchReportSettings,
            ),
            _Command(
                "serve",
                _run_bench,
                help="`serve` over a synthetic store of --n images, asked over HTTP",
                description="`meter-batch serve` in its own process over a synthetic store "
                "of --n images recorded as --model's: median and 95th-percentile latency of "
                "distinct text searches, neighbours of stored images and searches by an "
                "uploaded JPEG, as an HTTP client sees them, and the server's peak RSS.",
                settings=BenchServeSettings,
            ),
        ),
    ),
)
