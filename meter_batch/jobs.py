"""Nightly jobs: one TOML file names the roots, the store, the model and the label sets;
`run_job` runs encode (each root) -> classify (each label set) -> catalog refresh,
logs to a file, and returns an exit code cron can alert on."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meter_batch.config import EncodeConfig, EncodeSettings, ModelSpec, from_mapping, read_toml
from meter_batch.errors import ConfigError, MeterBatchError

log = logging.getLogger("meter_batch")
_JOB_KEYS = ("store", "log_file", "model", "encode", "roots", "classify")


@dataclass(frozen=True)
class Root:
    path: Path
    prefix: str = ""


@dataclass(frozen=True)
class ClassifySettings:
    label_sets: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Job:
    store: Path
    model: ModelSpec
    roots: tuple[Root, ...]
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    classify: ClassifySettings = field(default_factory=ClassifySettings)
    log_file: Path | None = None

    def encode_configs(self) -> list[EncodeConfig]:
        return [
            EncodeConfig(
                **self.encode.encode_settings(),
                images_dir=root.path,
                store=self.store,
                model=self.model,
                path_prefix=root.prefix,
            )
            for root in self.roots
        ]


def load_job(path: Path) -> Job:
    data = read_toml(path)
    unknown = sorted(set(data) - set(_JOB_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_JOB_KEYS)}"
        )
    base = path.resolve().parent
    for key in ("store", "model", "roots"):
        if key not in data:
            raise ConfigError(f"{path}: missing '{key}'")
    roots = _roots(data["roots"], base, str(path))
    label_sets = from_mapping(ClassifySettings, data.get("classify", {}), f"{path}: classify")
    if not isinstance(data["model"], dict) or "pretrained" not in data["model"]:
        raise ConfigError(
            f"{path}: [model] needs 'pretrained' (a checkpoint file, a tag, or 'none')"
        )
    model = from_mapping(ModelSpec, data["model"], f"{path}: model")
    return Job(
        store=_relative(base, data["store"]),
        model=ModelSpec(
            _maybe_path(base, model.name), _maybe_path(base, model.pretrained), model.seed
        ),
        roots=roots,
        encode=from_mapping(EncodeSettings, data.get("encode", {}), f"{path}: encode"),
        classify=ClassifySettings(tuple(_relative(base, str(p)) for p in label_sets.label_sets)),
        log_file=_relative(base, data["log_file"]) if "log_file" in data else None,
    )


def _roots(raw: Any, base: Path, where: str) -> tuple[Root, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: roots must be a list of [[roots]] tables with a path")
    roots = tuple(from_mapping(Root, item, f"{where}: roots") for item in raw)
    roots = tuple(Root(_relative(base, str(r.path)), r.prefix) for r in roots)
    prefixes = [r.prefix for r in roots]
    if len(roots) > 1 and (not all(prefixes) or len(set(prefixes)) != len(prefixes)):
        raise ConfigError(
            f"{where}: with several roots, each needs its own prefix (e.g. 'site-a/')"
        )
    return roots


def _maybe_path(base: Path, value: str) -> str:
    """A model name or tag stays as it is; a relative file path is taken from the job's folder."""
    candidate = base / Path(value).expanduser()
    looks_like_path = "/" in value or Path(value).suffix in (
        ".json",
        ".pt",
        ".bin",
        ".safetensors",
        ".pth",
    )
    return str(candidate) if looks_like_path and candidate.exists() else value


def _relative(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def run_job(path: Path, quiet: bool = False) -> int:
    """Run a job file; returns the exit code (0, or the first failing step's). ``quiet``
    (cron's `-q run`): no JSON line on stdout, so a good night prints nothing and cron
    mails nothing; the log file has every step either way."""
    with contextlib.ExitStack() as cleanup:
        try:
            job = load_job(path)
            if job.log_file is not None:
                cleanup.enter_context(_logging_to(job.log_file))
            return _run_steps(job, path, quiet)
        except MeterBatchError as exc:
            log.error("job %s failed: %s", path, exc)
            return exc.exit_code
        except Exception:
            log.exception("job %s failed with an internal error", path)
            raise


@contextlib.contextmanager
def _logging_to(log_file: Path) -> Iterator[None]:
    """Every step at INFO into the job's log file, even under `-q` (cron); what reached the
    terminal or a library user's own handlers before still does, no more: their records
    go on at WARNING and above (the CLI's logger does not propagate: its own handler)."""
    handler = _open_log(log_file)
    saved = log.level, log.propagate
    upward = _Upward(logging.WARNING) if log.propagate else None
    log.addHandler(handler)
    if upward is not None:
        log.propagate = False
        log.addHandler(upward)
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        if upward is not None:
            log.removeHandler(upward)
        log.setLevel(saved[0])
        log.propagate = saved[1]


class _Upward(logging.Handler):
    """Hands records to the root logger's handlers, as propagation would."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def _open_log(path: Path) -> logging.Handler:
    """The job's log file, appended to; a path that cannot be written is a setting error
    found before any work (cron users often cannot create folders under /var/log)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"log_file {path} cannot be opened for writing ({exc.strerror or exc}); "
            f"choose a path this user can write"
        ) from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


def _run_steps(job: Job, path: Path, quiet: bool) -> int:
    """Every step, each on its own: a root that fails (a share not mounted) is logged and
    the other roots and the label sets still run; the job then exits with the first
    failing step's code, naming every step that failed."""
    from meter_batch.labels.label_sets import load_label_set

    configs = job.encode_configs()
    for labels in job.classify.label_sets:  # a typo in one must not cost a night's encode
        load_label_set(labels)
    log.info("job %s: start", path)
    failed: list[tuple[str, MeterBatchError]] = []
    for config in configs:
        _step(f"encode {config.images_dir}", functools.partial(_encode, config), quiet, failed)
    for labels in job.classify.label_sets:
        _step(f"classify {labels}", functools.partial(_classify, job, labels), quiet, failed)
    if failed:
        names = "; ".join(f"{step} ({exc.exit_code})" for step, exc in failed)
        log.error("job %s: %d step(s) failed: %s", path, len(failed), names)
        return failed[0][1].exit_code
    log.info("job %s: done", path)
    return 0


def _step(
    name: str,
    run: Callable[[], dict[str, Any]],
    quiet: bool,
    failed: list[tuple[str, MeterBatchError]],
) -> None:
    try:
        summary = run()
    except MeterBatchError as exc:
        log.error("%s failed: %s", name, exc)
        failed.append((name, exc))
        return
    log.info("%s: %s", name, json.dumps(summary, ensure_ascii=False))
    if not quiet:
        print(json.dumps(summary, ensure_ascii=False), flush=True)


def _encode(config: EncodeConfig) -> dict[str, Any]:
    from meter_batch.ingest.encode_run import encode

    return {"step": "encode", **encode(config, interactive=False).to_json()}


def _classify(job: Job, labels: Path) -> dict[str, Any]:
    from meter_batch.labels.classify_run import classify

    result = classify(job.store, labels, job.model, interactive=False, make_current=True)
    return {"step": "classify", **result.to_json()}
