"""Training configuration: the YAML sections as dataclasses, read strictly.

:func:`load_config` reads a YAML file and applies ``--set dotted.key=value`` overrides; :func:`parse_config` builds
the dataclasses from a plain mapping. An unknown key is an error naming the dotted key and the keys known there; a
value of the wrong type names the key, the expected and the given type; values out of range name the key too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..losses import loss_params
from ..models import registry
from .objectives import OBJECTIVES, objective_params

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "exponential", "step")
INTERVALS = ("step", "epoch")
DEVICES = ("auto", "cpu", "cuda")

FINAL_WEIGHTS = ("last", "best")  # what a run's final.safetensors holds (see RunConfig)


class ConfigError(ValueError):
    """A training configuration that cannot be used, with the dotted key at fault in the message."""



@dataclass
class ModelSection:
    """A method of the MODELS table and its config (validated by the model's own config dataclass).

    ``init_weights`` names weights (safetensors or .pth) the run starts from instead of a random initialisation, e.g.
    the ``final.safetensors`` of an earlier stage: tensors are matched by name, a file may hold a subset of the
    model's, and none may have another shape. A resumed run continues from its checkpoint and ignores it.

    ``train_only`` lists the modules (names of the model's attributes, e.g. ``[clean_gate]``) whose parameters the
    run trains; every other parameter stays as the initial weights left it. Empty: all are trained.
    """

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None
    train_only: list[str] = field(default_factory=list)


@dataclass
class DatasetSpec:
    """Arguments of :func:`rsrestore.data.build_dataset`. A relative ``root`` is taken from the working directory.

    ``options`` go to the dataset (``crop``, ``flip``, ``bands``, kind-specific ones); ``seed`` defaults to
    ``run.seed`` for datasets that take one.
    """

    kind: str
    root: str | None = None
    split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Training and (optional) validation data. ``batch_size`` is per process: the global batch of a run under
    torchrun is ``batch_size * world_size``. Validation images are kept whole, so they are batched one at a time
    unless ``val_batch_size`` says otherwise (they must then share a size)."""

    train: DatasetSpec
    val: DatasetSpec | None = None
    batch_size: int = 4
    val_batch_size: int = 1
    num_workers: int = 0


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, evaluated at each optimiser step (see :func:`learning_rate`).

    ``interval`` says whether ``t`` counts steps or epochs. ``min_lr`` is the floor the cosine anneals to (and a floor
    for the decays). ``gamma`` is the decay factor of ``exponential`` (per interval) and ``step`` (per ``step_size``
    intervals). ``warmup_steps`` ramps linearly from ``lr / warmup_steps`` to ``lr`` first.
    """

    name: str = "constant"
    min_lr: float = 0.0
    gamma: float = 0.1
    step_size: int = 1
    interval: str = "step"
    warmup_steps: int = 0


@dataclass
class LossConfig:
    """A loss of :data:`rsrestore.losses.LOSSES` and its keyword parameters."""

    name: str = "l1"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveConfig:
    """What a training step computes: a function of :data:`rsrestore.train.objectives.OBJECTIVES` and its
    keyword parameters. ``supervised`` (the default) compares the model's output for ``input`` with ``target``
    through the loss of the ``loss`` section."""

    name: str = "supervised"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Length, schedule of side tasks, and devices of a run.

    The run lasts ``steps`` optimiser steps, or ``epochs`` passes over the training set, or whichever ends first
    when both are given. ``val_every``, ``log_every`` and ``ckpt_every`` count steps (0 turns the periodic action
    off; a checkpoint and, with validation data, a validation are always made at the end). ``ema`` is the decay of an
    exponential moving average of the weights (e.g. 0.999), used for validation and the final weights.
    ``amp`` runs forward passes under autocast (bfloat16 on the CPU and on GPUs that support it, else float16 with
    loss scaling). ``keep_checkpoints`` keeps only that many newest checkpoints (None keeps all).
    ``final_weights``: what ``final.safetensors`` holds, the weights at the ``last`` step or those that scored
    ``best`` on the validation set (with validation data; its step is recorded as ``final_step`` in ``final.json``).
    Validating on a source never trained on, ``best`` is early stopping by transfer.
    """

    out_dir: str = "runs/train"
    epochs: int | None = None
    steps: int | None = None
    grad_clip: float | None = None
    ema: float | None = None
    amp: bool = False
    channels_last: bool = False
    val_every: int = 1000
    log_every: int = 50
    ckpt_every: int = 1000
    keep_checkpoints: int | None = None
    seed: int = 0
    device: str = "auto"
    max_val_images: int | None = None
    find_unused_parameters: bool = False
    progress: bool = True
    final_weights: str = "last"


@dataclass
class TrainConfig:
    model: ModelSection
    data: DataSection
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # How the run's data are prepared and its weights scored and shipped (rsrestore.train.pipeline); the trainer
    # itself never reads it, so a config trains the same with or without it.
    pipeline: dict[str, Any] | None = None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        if origin is tuple:
            return f"a list of {len(args)} {_type_name(args[0])}" if args and args[-1] is not Ellipsis else "a list"
        return {dict: "a mapping", list: "a list"}.get(origin, str(origin))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is Any:
        return "anything"
    return getattr(tp, "__name__", str(tp))


def _given(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got null")
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                # A mapping given where a section is expected: its own error (an unknown key inside) is the useful one.
                if dataclasses.is_dataclass(option) and isinstance(value, Mapping):
                    raise e
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_given(value)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is dict or origin is dict:
        if isinstance(value, Mapping):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise ConfigError(f"{key}: keys must be strings, got {bad[0]!r}")
            return dict(value)
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {_type_name(tp)}, got {len(value)} value(s)")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    else:
        # An annotation this parser does not model (in a model's own config class): that class checks the value.
        return value
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_given(value)}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "the top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {_given(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            dotted = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown key {dotted!r}; known keys at {where}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}")
    return cls(**kwargs)


def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _positive(key: str, value: float | None, allow_zero: bool = False, allow_none: bool = False) -> None:
    if value is None:
        if not allow_none:
            raise ConfigError(f"{key}: must be set")
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _validate(cfg: TrainConfig, check_model: bool) -> None:
    if check_model:
        try:
            spec = registry.get_spec(cfg.model.name)
            if not spec.trainable:
                raise ConfigError(f"model.name: {cfg.model.name!r} is training-free; nothing to train")
            _, config_cls = spec.classes()
            if dataclasses.is_dataclass(config_cls):
                # The model's own config class gets the same key and type checks as the sections above.
                _build(config_cls, cfg.model.config, "model.config")
            registry.build_config(spec, cfg.model.config)
        except registry.ModelError as e:
            raise ConfigError(f"model: {e}") from None
        except ImportError as e:
            raise ConfigError(f"model.name: the module of {cfg.model.name!r} cannot be imported: {e}") from None
        except (TypeError, ValueError) as e:  # the model config's own checks (its __post_init__)
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"model.config: {e}") from None
    if cfg.model.init_weights is not None and not cfg.model.init_weights.strip():
        raise ConfigError("model.init_weights: must name a weights file (or be left out)")
    for name, spec in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if spec is not None and not spec.kind:
            raise ConfigError(f"{name}.kind: must name a dataset kind")
    _positive("data.batch_size", cfg.data.batch_size)
    _positive("data.val_batch_size", cfg.data.val_batch_size)
    _positive("data.num_workers", cfg.data.num_workers, allow_zero=True)
    _choice("optim.name", cfg.optim.name, OPTIMIZERS)
    _positive("optim.lr", cfg.optim.lr)
    for i, b in enumerate(cfg.optim.betas):
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"optim.betas[{i}]: must be in [0, 1), got {b}")
    _positive("optim.eps", cfg.optim.eps)
    _positive("optim.weight_decay", cfg.optim.weight_decay, allow_zero=True)
    _choice("schedule.name", cfg.schedule.name, SCHEDULES)
    _choice("schedule.interval", cfg.schedule.interval, INTERVALS)
    _positive("schedule.min_lr", cfg.schedule.min_lr, allow_zero=True)
    if cfg.schedule.min_lr > cfg.optim.lr:
        raise ConfigError(f"schedule.min_lr: {cfg.schedule.min_lr} exceeds optim.lr {cfg.optim.lr}")
    _positive("schedule.gamma", cfg.schedule.gamma)
    _positive("schedule.step_size", cfg.schedule.step_size)
    _positive("schedule.warmup_steps", cfg.schedule.warmup_steps, allow_zero=True)
    try:
        accepted = loss_params(cfg.loss.name)
    except ValueError as e:
        raise ConfigError(f"loss.name: {e}") from None
    unknown = sorted(set(cfg.loss.params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown key 'loss.params.{unknown[0]}'; loss {cfg.loss.name!r} accepts: {', '.join(accepted)}"
        )
    _choice("objective.name", cfg.objective.name, sorted(OBJECTIVES))
    accepted = objective_params(cfg.objective.name)
    unknown = sorted(set(cfg.objective.params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown key 'objective.params.{unknown[0]}'; objective {cfg.objective.name!r} accepts: "
            f"{', '.join(accepted) or 'no parameters'}"
        )
    run = cfg.run
    if run.epochs is None and run.steps is None:
        raise ConfigError("run: set run.steps or run.epochs (or both: the run ends at whichever comes first)")
    _positive("run.epochs", run.epochs, allow_none=True)
    _positive("run.steps", run.steps, allow_none=True)
    _positive("run.grad_clip", run.grad_clip, allow_none=True)
    if run.ema is not None and not 0.0 < run.ema < 1.0:
        raise ConfigError(f"run.ema: the EMA decay must be in (0, 1), got {run.ema}")
    for key in ("val_every", "log_every", "ckpt_every"):
        _positive(f"run.{key}", getattr(run, key), allow_zero=True)
    _positive("run.keep_checkpoints", run.keep_checkpoints, allow_none=True)
    _positive("run.max_val_images", run.max_val_images, allow_none=True)
    _choice("run.device", run.device, DEVICES)
    _choice("run.final_weights", run.final_weights, FINAL_WEIGHTS)
    if not run.out_dir:
        raise ConfigError("run.out_dir: must be a folder path")
    if cfg.pipeline is not None:
        from .pipeline import parse_pipeline  # a typo in the pipeline section fails here, before any work

        parse_pipeline(cfg.pipeline, cfg.model.name)


def parse_config(data: Mapping[str, Any], *, check_model: bool = True) -> TrainConfig:
    """A :class:`TrainConfig` from a plain mapping (what a YAML file holds), strictly checked.

    An unknown key is an error naming the dotted key and the keys known there; a value of the wrong type names the
    key, the expected and the given type (an int is accepted for a float). ``model.config`` is checked by the
    model's own config class (unless ``check_model`` is false, e.g. for a model that is not in the table yet).
    """
    cfg = _build(TrainConfig, data, "")
    _validate(cfg, check_model)
    return cfg


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; learning rates are written that way, so read it as a float."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader) if text.strip() else None


def _apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value (e.g. run.steps=1000)")
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])!r} is not a mapping")
        node = child
    node[parts[-1]] = _parse_value(raw)


def load_config(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), *, check_model: bool = True
) -> TrainConfig:
    """Read a YAML training config and apply ``overrides`` (``"a.b=value"``, the value read as YAML) first.

    See :func:`parse_config` for the checks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_YamlLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_given(data)}")
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        _apply_override(data, item)
    return parse_config(data, check_model=check_model)


def plain(value: Any) -> Any:
    """Nested dicts, lists and tuples as dicts and lists (what YAML and JSON write)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-ready values (tuples become lists)."""
    return plain(dataclasses.asdict(cfg))



def model_change(saved: Any, current: ModelSection) -> str | None:
    """What differs between the ``model`` section a run was started with (as :func:`config_to_dict` saved it) and
    ``current``, in words; None when they describe the same model."""
    if not isinstance(saved, Mapping):
        return None
    if saved.get("name") != current.name:
        return f"model.name was {saved.get('name')!r}, now {current.name!r}"
    before_raw = dict(saved.get("config") or {})
    try:
        # Both completed with the model's defaults, so that spelling out a default value is no change.
        spec = registry.get_spec(current.name)
        before = plain(dataclasses.asdict(registry.build_config(spec, before_raw)))
        now = plain(dataclasses.asdict(registry.build_config(spec, current.config)))
    except (registry.ModelError, TypeError, ValueError):  # the model's config class changed since
        before, now = plain(before_raw), plain(dict(current.config))
    changed = [
        f"{k} {before.get(k, 'unset')!r} -> {now.get(k, 'unset')!r}"
        for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)
    ]
    return f"model.config changed ({', '.join(changed)})" if changed else None
