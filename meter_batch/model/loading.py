"""OpenCLIP model loading from local files only, and the model's identity.

Architectures: any open_clip name, or a JSON model config file. Weights: a local
checkpoint (open_clip training checkpoint, plain state dict, or .safetensors), an
open_clip pretrained tag found in the local caches, or ``none`` (seeded random init).
Nothing is ever downloaded and nothing is unpickled beyond tensors. A checkpoint whose
weights hold NaN or inf is refused: every embedding of it would be NaN.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.convert import convert_state_dict
from open_clip.model import (
    convert_to_custom_text_state_dict,
    resize_pos_embed,
    resize_text_pos_embed,
)

from meter_batch.config import ModelSpec
from meter_batch.errors import ModelError, ModelMismatchError
from meter_batch.model.identity import ModelIdentity

NO_WEIGHTS = "none"
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# OpenAI's checkpoints carry these as plain numbers beside the tensors; nothing reads them
_META_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class LoadedModel:
    """A ready model plus what a run needs beside it."""

    model: torch.nn.Module
    identity: ModelIdentity
    architecture: str  # the name open_clip knows it by
    reference_preprocess: Callable[[Any], torch.Tensor]  # open_clip's own eval transform
    tokenizer: Callable[..., torch.Tensor]


@dataclass(frozen=True)
class _Weights:
    pretrained: str  # as the identity records it
    path: Path | None
    quick_gelu: bool = False
    preprocess_overrides: tuple[tuple[str, Any], ...] = ()


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns 'No pretrained weights loaded ... initialized randomly' because the
    weights are loaded here, after it builds the model: false for a checkpoint, and for
    `none` the run records random weights itself. Silenced for API users too."""
    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    # logging.warning() on a root without handlers installs a stderr one (basicConfig)
    # before any filter runs: a library user would then see every INFO line after
    silent = logging.NullHandler() if not root.handlers else None
    root.addFilter(quiet)
    if silent is not None:
        root.addHandler(silent)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        if silent is not None:
            root.removeHandler(silent)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Create the model described by ``spec`` in eval mode on the CPU."""
    architecture, config = resolve_architecture(spec.name)
    weights = resolve_weights(architecture, spec.pretrained)
    torch.manual_seed(spec.seed)  # only matters for random init, but always deterministic
    try:
        with _quiet_random_init_warning():
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture,
                pretrained=None,
                force_quick_gelu=weights.quick_gelu,
                **_preprocess_kwargs(dict(weights.preprocess_overrides)),
            )
    except Exception as exc:  # open_clip raises bare RuntimeErrors/KeyErrors for bad configs
        raise ModelError(f"cannot build model {spec.name!r}: {exc}") from exc
    checkpoint_sha = None
    if weights.path is not None:
        checkpoint_sha = file_sha256(weights.path)
        load_weights_into(model, read_state_dict(weights.path), weights.path)
        _check_finite_weights(model, weights.path)
    model.eval()
    identity = ModelIdentity(
        architecture=architecture,
        config_sha256=_sha256_json(config),
        pretrained=weights.pretrained,
        checkpoint_sha256=checkpoint_sha,
        seed=spec.seed if weights.path is None else None,
        quick_gelu=weights.quick_gelu,
        # JSON round trip: the identity must compare equal to itself read back from store.json
        preprocess=json.loads(json.dumps(dict(model.visual.preprocess_cfg))),
        embed_dim=int(config["embed_dim"]),
    )
    tokenizer = open_clip.get_tokenizer(architecture)
    return LoadedModel(model, identity, architecture, preprocess, tokenizer)


def resolve_architecture(name: str) -> tuple[str, dict[str, Any]]:
    """(open_clip model name, model config) for a built-in name or a JSON config file."""
    if name.endswith(".json") or os.path.sep in name:
        return _register_json_config(Path(name))
    config = open_clip.get_model_config(name)
    if config is None:
        known = ", ".join(m for m in open_clip.list_models() if not m.startswith("hf-"))[:300]
        raise ModelError(
            f"unknown model {name!r}: not an open_clip architecture and not a JSON config "
            f"file (known architectures include: {known}...)"
        )
    return name, config


def _register_json_config(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"model config file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model config {path}: {exc}") from exc
    config = config.get("model_cfg", config) if isinstance(config, dict) else config
    if not isinstance(config, dict) or not all(k in config for k in _CONFIG_KEYS):
        raise ModelError(
            f"{path} is not an open_clip model config: it needs the keys {', '.join(_CONFIG_KEYS)}"
        )
    open_clip.add_model_config(path)
    return path.stem, config


def resolve_weights(architecture: str, pretrained: str) -> _Weights:
    if pretrained.lower() == NO_WEIGHTS:
        return _Weights(pretrained=NO_WEIGHTS, path=None)
    candidate = Path(pretrained).expanduser()
    if candidate.is_file():
        return _Weights(pretrained=candidate.name, path=candidate.resolve())
    tag_cfg = open_clip.get_pretrained_cfg(architecture, pretrained)
    if not tag_cfg:
        if os.path.sep in pretrained or candidate.suffix:
            raise ModelError(f"checkpoint file not found: {candidate}")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
        raise ModelError(
            f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of "
            f"{architecture} (tags: {tags}; or 'none' for random weights)"
        )
    return _Weights(
        pretrained=pretrained,
        path=_find_cached_tag(architecture, pretrained, tag_cfg),
        quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        preprocess_overrides=tuple(
            (k, tag_cfg[k]) for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
        ),
    )


def tag_cache_candidates(tag_cfg: Mapping[str, Any]) -> list[Path]:
    """Where weights for a pretrained tag may lie: the HF hub cache, then open_clip's."""
    candidates: list[Path] = []
    hub = str(tag_cfg.get("hf_hub", ""))
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)  # open_clip's "org/repo/" or "org/repo/file"
        hub_dir = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
        for name in [filename] if filename else _HF_WEIGHT_FILES:
            found = try_to_load_from_cache(repo_id, name)
            candidates.append(Path(found) if isinstance(found, str) else hub_dir / repo_id / name)
    url = str(tag_cfg.get("url", ""))
    if url:
        candidates.append(Path("~/.cache/clip").expanduser() / os.path.basename(url))
    return candidates


def _find_cached_tag(architecture: str, tag: str, tag_cfg: Mapping[str, Any]) -> Path:
    candidates = tag_cache_candidates(tag_cfg)
    for path in candidates:
        if path.is_file():
            return path
    where = "; ".join(str(p) for p in candidates) or "(no download location known)"
    raise ModelError(
        f"weights for {architecture}/{tag} are not in the local cache (looked for: {where}); "
        f"nothing is downloaded: copy the file there from a machine that has it, "
        f"or pass --pretrained /path/to/checkpoint"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a checkpoint file, without unpickling arbitrary objects."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
    if _is_torchscript(path):
        raise ModelError(
            f"{path} is a TorchScript archive (OpenAI's original format), which is not loaded "
            f"for safety; save its state_dict() as .safetensors and pass that file"
        )
    _check_looks_like_a_checkpoint(path)
    try:
        with warnings.catch_warnings():
            # torch warns of a pickle protocol above 2 before it refuses or reads the file;
            # a refusal says so in its error (_unpickler_reason), a success needs no warning
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"refusing to load {path}: it holds Python objects other than tensors "
            f"({_unpickler_reason(exc)}); save its state_dict() as .safetensors and pass that"
        ) from exc
    except Exception as exc:  # torch's unpickler raises anything on a damaged file
        reason = str(exc).strip() or type(exc).__name__
        raise ModelError(f"cannot read checkpoint {path}: {reason}") from exc
    return _unwrap_state_dict(checkpoint, path)


def _check_looks_like_a_checkpoint(path: Path) -> None:
    """torch.load's errors on a file that is no checkpoint at all are misleading (it
    suggests weights_only=False): a torch file is a zip archive or a pickle."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if not head:
        raise ModelError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    if _is_safetensors_layout(path):
        raise ModelError(f"{path} is a safetensors file: name it *.safetensors to load it")
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise ModelError(
            f"{path} is not a checkpoint: neither .safetensors, a torch zip archive nor a "
            f"pickle (pass the .pt/.bin/.safetensors file the training wrote)"
        )


def _is_safetensors_layout(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    size = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    return 0 < size < 100_000_000 and head[8:9] == b"{"


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's weights-only error that names what it refused."""
    _, found, rest = str(exc).partition("WeightsUnpickler error:")
    reason = next((line.strip() for line in rest.splitlines() if line.strip()), "")
    if reason.startswith("Unsupported operand"):  # pickle protocol 4/5 opcodes
        return f"{reason}: or saved with a pickle protocol above 2, which it does not read"
    return reason if found and reason else "the weights-only loader refused it"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _unwrap_state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ModelError(f"{path} holds no state dict (got {type(checkpoint).__name__})")
    _check_entries(checkpoint, path)
    # Training checkpoints written under DistributedDataParallel prefix every key.
    if all(str(k).startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
    return checkpoint


def _check_entries(state_dict: dict[Any, Any], path: Path) -> None:
    """A state dict maps parameter names to tensors: the weights-only loader also lets
    through ``{0: tensor}`` or ``{"w": 3}``, on which open_clip's fix-ups raise bare errors."""
    odd_key = next((k for k in state_dict if not isinstance(k, str)), None)
    if odd_key is not None:
        raise ModelError(
            f"{path} is not a model's state dict: its keys must be parameter names, "
            f"but it has the key {odd_key!r} ({type(odd_key).__name__})"
        )
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) and key not in _META_KEYS:
            raise ModelError(
                f"{path} is not a model's state dict: its value for {key!r} is of type "
                f"{type(value).__name__}, not a tensor"
            )


def load_weights_into(model: torch.nn.Module, state_dict: dict[str, Any], path: Path) -> None:
    """The same state-dict fix-ups open_clip's load_checkpoint applies, then a strict load."""
    try:
        state_dict = _fixed_up(model, state_dict)
        model.load_state_dict(state_dict, strict=True)
    except Exception as exc:  # strict load's key lists; the fix-ups' asserts, shape errors
        summary = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ModelError(f"{path} does not fit this architecture: {summary} ...") from exc


def _fixed_up(model: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """open_clip's renames (OpenAI, timm, custom text towers) and position-embedding resizes."""
    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in _META_KEYS:
        state_dict.pop(key, None)
    scale = getattr(model, "logit_scale", None)
    if "logit_scale" in state_dict and scale is not None:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(scale.shape)
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    return state_dict


def _check_finite_weights(model: torch.nn.Module, path: Path) -> None:
    """NaN or inf in any weight makes embeddings NaN that a store would keep and `verify`
    would pass: refused here, before a store records the model."""
    # the state dict: parameters and the buffers loaded with them (BatchNorm's statistics),
    # not the computed ones (the text tower's causal attn_mask is -inf by design)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.numel() and not _all_finite(tensor):
            raise ModelError(
                f"{path}: weight {name} holds NaN or inf values; the weights are damaged "
                f"(export them again from a good training checkpoint)"
            )


def _all_finite(tensor: torch.Tensor) -> bool:
    """min and max propagate NaN and are +-inf when any value is: one pass over the
    weights, like the file's sha256; isfinite().all() makes a bool per weight first and
    ran ~10x slower (2 CPU cores, RN50's 102M weights)."""
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def _preprocess_kwargs(overrides: Mapping[str, Any]) -> dict[str, Any]:
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    names["resize_mode"] = "image_resize_mode"
    return {names[k]: v for k, v in overrides.items()}


def load_verified(
    source: ModelSpec, identity: ModelIdentity, owner: Path, override: ModelSpec | None = None
) -> LoadedModel:
    """The model that wrote the store ``owner``: loaded from ``source`` (where the store
    recorded it) or ``override`` (its files moved), and checked against ``identity``."""
    spec = override or source
    try:
        loaded = load_model(spec)
    except ModelError as exc:
        if override is not None:
            raise
        raise ModelError(  # the files were moved since the store recorded them
            f"{exc} (the model that wrote {owner}; if its files moved, pass "
            f"--model/--pretrained with their new paths)"
        ) from exc
    problems = loaded.identity.differences(identity)
    if problems:
        raise ModelMismatchError(
            f"the model at {spec.name} / {spec.pretrained} is not the one that wrote {owner} "
            f"({'; '.join(problems)}); pass the store's model with --model/--pretrained"
        )
    return loaded
