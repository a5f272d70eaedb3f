"""Training engine: one YAML file describes a run; ``python -m rsrestore.train CONFIG.yaml [--resume] [--set k=v]``.

The same command under ``torchrun --nproc_per_node N`` trains with DistributedDataParallel (see
:mod:`rsrestore.distributed`). A run writes, under ``run.out_dir``::

    log.csv                               step, epoch, lr, loss (and its parts), val scores, wall time
    checkpoints/step_0001000/             model.safetensors, ema.safetensors (with EMA), state.pt
    checkpoints/latest                    name of the newest complete checkpoint
    best.safetensors                      weights with the best validation PSNR so far
    final.safetensors, final.json         weights at the end (the EMA weights when EMA is on) and their metadata
    tb/                                   TensorBoard events, only when tensorboard is installed

Reproducibility. Every random draw comes from a seeded source: the model is initialised under ``run.seed``; the
data order of epoch ``e`` is a permutation drawn from ``seed + e`` (:class:`EpochSampler`); datasets draw their crops
and flips from ``(seed, epoch, index)`` (their ``set_epoch`` is called); each rank's global RNGs (dropout) are
seeded per rank and saved in every checkpoint; loader workers get their seeds from a generator of their own, so
building a loader never consumes the global RNG. Together these make ``--resume`` exact: a run stopped after a
checkpoint at step k and resumed reaches bit-identical weights at step n, because the resumed run restarts the
interrupted epoch's sampler at the batch where it stopped instead of replaying the loader.

Checkpoints are written to a temporary folder and renamed into place, and ``latest`` is replaced atomically, so a
run killed while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import time
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import distributed as dist_utils
from .losses import build_loss, loss_params, prediction_of
from .models import registry

__all__ = [
    "ConfigError",
    "DataSection",
    "DatasetSpec",
    "EMA",
    "EpochSampler",
    "LossConfig",
    "ModelSection",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "collate",
    "config_to_dict",
    "export_weights",
    "learning_rate",
    "load_config",
    "main",
    "parse_config",
    "train",
    "train_from_config",
]

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "exponential", "step")
INTERVALS = ("step", "epoch")
DEVICES = ("auto", "cpu", "cuda")
VAL_METRICS = ("psnr", "ssim")
STATE_FORMAT = 1


class ConfigError(ValueError):
    """A training configuration that cannot be used, with the dotted key at fault in the message."""


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSection:
    """A method of the MODELS table and its config (validated by the model's own config dataclass)."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)


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
class RunConfig:
    """Length, schedule of side tasks, and devices of a run.

    The run lasts ``steps`` optimiser steps, or ``epochs`` passes over the training set, or whichever ends first
    when both are given. ``val_every``, ``log_every`` and ``ckpt_every`` count steps (0 turns the periodic action
    off; a checkpoint and, with validation data, a validation are always made at the end). ``ema`` is the decay of an
    exponential moving average of the weights (e.g. 0.999), used for validation and the final weights.
    ``amp`` runs forward passes under autocast (bfloat16 on the CPU and on GPUs that support it, else float16 with
    loss scaling). ``keep_checkpoints`` keeps only that many newest checkpoints (None keeps all).
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


@dataclass
class TrainConfig:
    model: ModelSection
    data: DataSection
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)


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
    if not run.out_dir:
        raise ConfigError("run.out_dir: must be a folder path")


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


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-ready values (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


# --------------------------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------------------------


def learning_rate(
    optim: OptimConfig, schedule: ScheduleConfig, step: int, epoch: int, total_steps: int, total_epochs: int
) -> float:
    """The learning rate of optimiser step ``step`` (0-based) taken during epoch ``epoch`` (0-based).

    With ``t`` the step (``interval: step``) or the epoch (``interval: epoch``) and ``T`` the run's length in the
    same unit (after warm-up, for steps):

    - constant: ``lr``
    - cosine (SGDR without restarts, Loshchilov & Hutter 2017, Eq. 5):
      ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2``
    - exponential: ``lr * gamma ** t``
    - step: ``lr * gamma ** floor(t / step_size)``

    the decays floored at ``min_lr``; during the first ``warmup_steps`` steps the rate is ``lr (step + 1) / warmup``.
    """
    lr = optim.lr
    warm = schedule.warmup_steps
    if step < warm:
        return lr * (step + 1) / warm
    if schedule.interval == "epoch":
        t, total = epoch, total_epochs
    else:
        t, total = step - warm, total_steps - warm
    name = schedule.name
    if name == "constant":
        return lr
    if name == "cosine":
        frac = min(t / total, 1.0) if total > 0 else 1.0
        return schedule.min_lr + (lr - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if name == "exponential":
        return max(schedule.min_lr, lr * schedule.gamma**t)
    if name == "step":
        return max(schedule.min_lr, lr * schedule.gamma ** (t // schedule.step_size))
    raise ConfigError(f"schedule.name: unknown schedule {name!r}")


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


class EpochSampler(Sampler[int]):
    """Indices of one rank for one epoch: a permutation drawn from ``seed + epoch``, cut to whole global batches.

    The permutation's first ``steps_per_epoch * batch_size * world_size`` indices are dealt round-robin to the
    ranks (rank r takes positions r, r + W, ...), so that batch i of every rank together hold exactly batch i of a
    single process with a ``W`` times larger batch. ``start_batch`` skips the batches an interrupted epoch already
    consumed: resuming starts the sampler late instead of replaying the loader.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler layout: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.steps_per_epoch = length // (batch_size * world_size)
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.steps_per_epoch}")
        self.start_batch = start_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        used = order[: self.steps_per_epoch * self.batch_size * self.world_size]
        mine = used[self.rank :: self.world_size]
        return iter(mine[self.start_batch * self.batch_size :])


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of dataset items; ``meta`` (and any non-tensor entry) stays a list.

    Only keys that every item has are kept (a "mixed" synthetic batch has a ``phi`` in its dust items alone).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in [k for k in samples[0] if all(k in s for s in samples[1:])]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"items of one batch differ in {key!r} shape {sorted(shapes)}: crop them to one size "
                    "(options.crop) or use a batch size of 1"
                )
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


def _build_dataset(spec: DatasetSpec, seed: int, where: str) -> Dataset:
    from .data import build_dataset, dataset_options

    try:
        options = dict(spec.options)
        if "seed" not in options and "seed" in dataset_options(spec.kind):
            options["seed"] = seed
        if spec.root is None:
            raise ValueError(f"{where}.root: the dataset folder is not set")
        ds = build_dataset(spec.kind, spec.root, split=spec.split, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if len(ds) == 0:
        raise ConfigError(f"{where}: the dataset {spec.kind!r} at {spec.root} is empty")
    return ds


def _describe_dataset(spec: DatasetSpec, ds: Dataset) -> dict[str, Any]:
    return {
        "kind": spec.kind, "root": spec.root, "split": spec.split, "options": _plain(spec.options), "samples": len(ds),
    }


def _to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------------------------
# EMA, checkpoints, logs
# --------------------------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's parameters: ``shadow <- decay * shadow + (1 - decay) * param``
    after every step (Polyak & Juditsky 1992); buffers (e.g. normalisation statistics) are copied as they are.

    ``module`` is a frozen copy of the model in eval mode holding the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = _clone_module(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, p in zip(self.module.parameters(), model.parameters()):
            shadow.lerp_(p.detach(), 1.0 - self.decay)
        for shadow, b in zip(self.module.buffers(), model.buffers()):
            shadow.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def _clone_module(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _tensors_for_file(module: nn.Module) -> dict[str, torch.Tensor]:
    # Clones: safetensors refuses tensors that share storage (tied weights) and views into larger buffers.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_weights(module: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(_tensors_for_file(module), str(tmp), metadata=dict(metadata or {}))
    _fsync(tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as values ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CsvLog:
    """``log.csv``: one row per logged step; the header grows when a new column appears (the file is rewritten)."""

    def __init__(self, path: Path, keep_until: int | None) -> None:
        self.path = path
        self.fields: list[str] = []
        if path.exists():
            if keep_until is None:
                path.unlink()
            else:
                # Rows written after the checkpoint being resumed describe steps that will be redone.
                with open(path, newline="") as f:
                    reader = csv.DictReader(f)
                    self.fields = list(reader.fieldnames or [])
                    rows = [r for r in reader if r.get("step") and int(r["step"]) <= keep_until]
                self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: Mapping[str, Any]) -> None:
        new = [k for k in row if k not in self.fields]
        if new or not self.path.exists():
            rows: list[dict[str, Any]] = []
            if self.path.exists():
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.fields += new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, restval="").writerow(
                {k: _fmt_csv(v) for k, v in row.items()}
            )

    def rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


def _fmt_csv(v: Any) -> Any:
    return f"{v:.8g}" if isinstance(v, float) else v


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed (or broken): the CSV log is enough
        return None
    return SummaryWriter(log_dir=str(out_dir / "tb"))


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a call to :func:`train` did: where it wrote, where it stopped, and the last validation scores."""

    out_dir: Path
    step: int
    epoch: int
    total_steps: int
    finished: bool
    final_weights: Path | None
    val_scores: dict[str, float]
    best_psnr: float | None
    wall_time_s: float


class _Trainer:
    def __init__(self, cfg: TrainConfig, ctx: dist_utils.DistContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.out_dir = Path(cfg.run.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        run = cfg.run

        # Same initial weights on every rank (DDP would broadcast rank 0's anyway, but EMA copies are made first).
        _seed_all(run.seed)
        self.spec = registry.get_spec(cfg.model.name)
        model_cls, _ = self.spec.classes()
        self.model_cfg = registry.build_config(self.spec, cfg.model.config)
        model = model_cls(self.model_cfg).to(self.device)
        if run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        self.ema = EMA(model, run.ema) if run.ema is not None else None
        self.model = dist_utils.wrap(model, ctx, run.find_unused_parameters)

        self.loss = build_loss(cfg.loss.name, **cfg.loss.params)
        if isinstance(self.loss, nn.Module):
            self.loss = self.loss.to(self.device)
        self.model_kwargs = dict(getattr(self.loss, "model_kwargs", {}) or {})

        self.train_set = _build_dataset(cfg.data.train, run.seed, "data.train")
        self.val_set: Dataset | None = None
        if cfg.data.val is not None:
            val = _build_dataset(cfg.data.val, run.seed, "data.val")
            if run.max_val_images is not None and run.max_val_images < len(val):
                val = Subset(val, range(run.max_val_images))
            self.val_set = val
        per_step = cfg.data.batch_size * ctx.world_size
        self.steps_per_epoch = len(self.train_set) // per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.train: {len(self.train_set)} sample(s) do not fill one global batch of {per_step} "
                f"(data.batch_size {cfg.data.batch_size} x {ctx.world_size} process(es))"
            )
        limits = []
        if run.steps is not None:
            limits.append(run.steps)
        if run.epochs is not None:
            limits.append(run.epochs * self.steps_per_epoch)
        self.total_steps = min(limits)
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"model {cfg.model.name!r} has no trainable parameters")
        opt_cls = torch.optim.Adam if cfg.optim.name == "adam" else torch.optim.AdamW
        self.optimizer = opt_cls(
            params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
        )
        self.params = params
        self.amp_dtype: torch.dtype | None = None
        if run.amp:
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                self.amp_dtype = torch.float16
            else:
                self.amp_dtype = torch.bfloat16
        # Loss scaling is only needed for float16, whose small exponent range underflows gradients.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_psnr: float | None = None
        self.best_step: int | None = None
        self.last_val: dict[str, float] = {}
        self.elapsed_before = 0.0
        self.lr = cfg.optim.lr
        self.checked_batch = False

    # ----------------------------------------------------------------------------------------------------------------

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        if self.spec.needs_sar:
            return model(batch["input"], sar=batch.get("sar"), **self.model_kwargs)
        return model(batch["input"], **self.model_kwargs)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        for key in ("input", "target"):
            if key not in batch:
                raise ConfigError(f"data.train: dataset items have no {key!r} (keys: {sorted(batch)})")
        # A SAR model given no "sar" is left to the model, which knows whether its config uses SAR bands at all.
        self.checked_batch = True

    def train_loader(self) -> DataLoader:
        cfg = self.cfg
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        sampler = EpochSampler(
            len(self.train_set),
            cfg.data.batch_size,
            seed=cfg.run.seed,
            epoch=self.epoch,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            start_batch=self.batch_in_epoch,
        )
        # Worker seeds come from this generator, not from the global RNG that dropout uses.
        g = torch.Generator().manual_seed((cfg.run.seed * 1_000_003 + self.epoch) * 4099 + self.ctx.rank)
        return DataLoader(
            self.train_set,
            batch_size=cfg.data.batch_size,
            sampler=sampler,
            num_workers=cfg.data.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            generator=g,
        )

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        self.model.train()
        batch = _to_device(batch, self.device, self.cfg.run.channels_last)
        with self.autocast():
            output = self.forward(self.model, batch)
            total, parts = self.loss(output, batch)
        if not bool(torch.isfinite(total.detach())):
            raise FloatingPointError(
                f"the loss is {float(total)} at step {self.step} (epoch {self.epoch}); lower optim.lr or set "
                "run.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        logged = {"loss": float(total.detach())}
        if self.cfg.run.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.run.grad_clip)
            logged["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.raw_model)
        for k, v in parts.items():
            if k != "total":
                logged[f"loss_{k}"] = float(v)
        return logged

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from .metrics.full_reference import compute_metrics, mean_metrics

        assert self.val_set is not None
        model = self.ema.module if self.ema is not None else self.raw_model
        was_training = model.training
        model.eval()
        loader = DataLoader(
            self.val_set, batch_size=self.cfg.data.val_batch_size, shuffle=False, collate_fn=collate,
            num_workers=self.cfg.data.num_workers,
            # A loader without a generator draws its worker seed from the global RNG; validating must not move it.
            generator=torch.Generator().manual_seed(0),
        )
        per_image: list[dict[str, list[float]]] = []
        loss_sum, count = 0.0, 0
        for batch in loader:
            batch = _to_device(batch, self.device, self.cfg.run.channels_last)
            with self.autocast():
                output = self.forward(model, batch)
                total, _ = self.loss(output, batch)
            n = batch["input"].shape[0]
            loss_sum += float(total) * n
            count += n
            pred = prediction_of(output).float().clamp(0.0, 1.0)
            target = batch["target"].float().clamp(0.0, 1.0)
            per_image.append(compute_metrics(pred, target, names=VAL_METRICS))
        model.train(was_training)
        scores = {f"val_{k}": v for k, v in mean_metrics(per_image).items()}
        scores["val_loss"] = loss_sum / max(count, 1)
        return scores

    # ----------------------------------------------------------------------------------------------------------------

    def final_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def save_checkpoint(self) -> None:
        rng = dist_utils.all_gather_object(_rng_state(), self.ctx)
        if self.ctx.is_main:
            name = f"step_{self.step:07d}"
            final = self.ckpt_root / name
            tmp = self.ckpt_root / f".tmp_{name}_{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            meta = {"step": str(self.step), "model": self.cfg.model.name}
            _atomic_save_weights(self.raw_model, tmp / "model.safetensors", meta)
            if self.ema is not None:
                _atomic_save_weights(self.ema.module, tmp / "ema.safetensors", meta)
            state = {
                "format": STATE_FORMAT,
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"name": self.cfg.schedule.name, "lr": self.lr},
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "best_psnr": self.best_psnr,
                "best_step": self.best_step,
                "last_val": self.last_val,
                "wall_time_s": self.elapsed(),
                "world_size": self.ctx.world_size,
                "config": config_to_dict(self.cfg),
            }
            torch.save(state, tmp / "state.pt")
            _fsync(tmp / "state.pt")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _atomic_write_bytes(self.ckpt_root / "latest", (name + "\n").encode())
            self.prune_checkpoints()
        dist_utils.barrier(self.ctx)

    def prune_checkpoints(self) -> None:
        keep = self.cfg.run.keep_checkpoints
        if keep is None:
            return
        found = sorted(p for p in self.ckpt_root.glob("step_*") if p.is_dir())
        for old in found[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_root / "latest"
        if not pointer.exists():
            return None
        path = self.ckpt_root / pointer.read_text().strip()
        if not (path / "state.pt").exists():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete")
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path / 'state.pt'} has format {state.get('format')}, expected {STATE_FORMAT}")
        self.raw_model.load_state_dict(registry.read_state_dict(path / "model.safetensors"))
        if self.ema is not None:
            ema_path = path / "ema.safetensors"
            # A run that turns EMA on when resuming starts its average from the current weights.
            source = ema_path if ema_path.exists() else path / "model.safetensors"
            self.ema.load_state_dict(registry.read_state_dict(source))
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_psnr = state.get("best_psnr")
        self.best_step = state.get("best_step")
        self.last_val = dict(state.get("last_val") or {})
        self.elapsed_before = float(state.get("wall_time_s", 0.0))
        rng = state["rng"]
        if len(rng) != self.ctx.world_size:
            warnings.warn(
                f"resuming a {len(rng)}-process run with {self.ctx.world_size} process(es): data order and random "
                "draws will differ from an uninterrupted run",
                stacklevel=2,
            )
            _seed_all(self.cfg.run.seed + 1 + self.ctx.rank + self.step)
        else:
            _set_rng_state(rng[self.ctx.rank])
        if self.batch_in_epoch > self.steps_per_epoch:
            raise ValueError(
                f"{path} stopped after batch {self.batch_in_epoch} of an epoch that now has {self.steps_per_epoch}: "
                "the dataset or batch size changed since"
            )

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.started)

    def write_final(self, data_description: dict[str, Any]) -> Path:
        path = self.out_dir / "final.safetensors"
        _atomic_save_weights(self.final_module(), path, {"model": self.cfg.model.name, "step": str(self.step)})
        meta = {
            "model": self.cfg.model.name,
            "config": _plain(dataclasses.asdict(self.model_cfg)),
            "sha256": registry.sha256_of(path),
            "file": path.name,
            "ema": self.ema is not None,
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "global_batch_size": self.cfg.data.batch_size * self.ctx.world_size,
            "world_size": self.ctx.world_size,
            "wall_time_s": round(self.elapsed(), 3),
            "train_data": data_description,
            "val_scores": self.last_val,
            "best_val_psnr": self.best_psnr,
            "best_step": self.best_step,
            "value_range": [0.0, 1.0],
            "loss": {"name": self.cfg.loss.name, "params": _plain(self.cfg.loss.params)},
            "train_config": config_to_dict(self.cfg),
            "torch_version": torch.__version__,
        }
        _atomic_write_bytes(self.out_dir / "final.json", (json.dumps(meta, indent=2, default=str) + "\n").encode())
        return path

    # ----------------------------------------------------------------------------------------------------------------

    def fit(self, resume: bool, stop_after: int | None) -> TrainResult:
        cfg, ctx, run = self.cfg, self.ctx, self.cfg.run
        self.started = time.perf_counter()
        ckpt = self.latest_checkpoint() if resume else None
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        else:
            if resume and ctx.is_main:
                print(f"no checkpoint under {self.ckpt_root}: starting from scratch", file=sys.stderr)
            # Distinct streams per rank for dropout and the like; the weights were already initialised identically.
            _seed_all(run.seed + 1 + ctx.rank)
        dist_utils.barrier(ctx)

        log = tb = bar = None
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log = CsvLog(self.out_dir / "log.csv", keep_until=self.step if ckpt is not None else None)
            tb = _tensorboard(self.out_dir)
            if run.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        description = {"train": _describe_dataset(cfg.data.train, self.train_set)}
        if self.val_set is not None and cfg.data.val is not None:
            description["val"] = _describe_dataset(cfg.data.val, self.val_set)

        window: dict[str, list[float]] = {}
        last_ckpt = self.step if ckpt is not None else -1
        stopped = False
        try:
            while self.step < self.total_steps and not stopped:
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                for batch in self.train_loader():
                    if not self.checked_batch:
                        self.check_batch(batch)
                    self.lr = learning_rate(
                        cfg.optim, cfg.schedule, self.step, self.epoch, self.total_steps, self.total_epochs
                    )
                    for group in self.optimizer.param_groups:
                        group["lr"] = self.lr
                    logged = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    for k, v in logged.items():
                        window.setdefault(k, []).append(v)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logged['loss']:.4g}", lr=f"{self.lr:.3g}", refresh=False)

                    done = self.step >= self.total_steps
                    stopped = stop_after is not None and self.step >= stop_after and not done
                    row: dict[str, Any] = {}
                    if done or stopped or (run.log_every and self.step % run.log_every == 0):
                        names = sorted(window)
                        means = dist_utils.all_reduce_mean([sum(window[k]) / len(window[k]) for k in names], ctx)
                        row.update(
                            {"step": self.step, "epoch": self.epoch, "lr": self.lr, **dict(zip(names, means))}
                        )
                        window = {}
                    if self.val_set is not None and (done or (run.val_every and self.step % run.val_every == 0)):
                        if ctx.is_main:
                            self.last_val = self.validate()
                            row.update({"step": self.step, "epoch": self.epoch, **self.last_val})
                            psnr = self.last_val.get("val_psnr")
                            if psnr is not None and not math.isnan(psnr) and (
                                self.best_psnr is None or psnr > self.best_psnr
                            ):
                                self.best_psnr, self.best_step = psnr, self.step
                                _atomic_save_weights(
                                    self.final_module(), self.out_dir / "best.safetensors",
                                    {"step": str(self.step), "val_psnr": f"{psnr:.6f}"},
                                )
                        dist_utils.barrier(ctx)
                    if row and log is not None:
                        row["time_s"] = round(self.elapsed(), 3)
                        log.write(row)
                        if tb is not None:
                            for k, v in row.items():
                                if k not in ("step", "epoch") and isinstance(v, float):
                                    tb.add_scalar(k, v, self.step)
                    if done or stopped or (run.ckpt_every and self.step % run.ckpt_every == 0):
                        self.save_checkpoint()
                        last_ckpt = self.step
                    if done or stopped:
                        break
            if self.step > 0 and last_ckpt != self.step:
                self.save_checkpoint()
            final_path = None
            finished = self.step >= self.total_steps
            if finished and ctx.is_main:
                if self.val_set is not None and not self.last_val:
                    self.last_val = self.validate()
                final_path = self.write_final(description)
            dist_utils.barrier(ctx)
        finally:
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
        if finished and final_path is None:
            final_path = self.out_dir / "final.safetensors"
        return TrainResult(
            out_dir=self.out_dir,
            step=self.step,
            epoch=self.epoch,
            total_steps=self.total_steps,
            finished=finished,
            final_weights=final_path,
            val_scores=dict(self.last_val),
            best_psnr=self.best_psnr,
            wall_time_s=self.elapsed(),
        )


def train(cfg: TrainConfig, resume: bool = False, *, stop_after: int | None = None) -> TrainResult:
    """Run the training that ``cfg`` describes (single process, or one rank of a torchrun launch).

    Args:
        cfg: a checked config (see :func:`load_config`).
        resume: continue from ``out_dir/checkpoints/latest``; without a checkpoint the run starts from scratch, so a
            preemptible job can always pass it.
        stop_after: end this invocation after that global step, with a checkpoint but without the final outputs, as
            a preempted job would (a later ``resume`` continues); for time-boxed jobs and for testing resumption.
    """
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    out_dir = Path(cfg.run.out_dir)
    if not resume and (out_dir / "checkpoints" / "latest").exists():
        raise ConfigError(f"run.out_dir: {out_dir} already holds a run; resume it (--resume) or choose another out_dir")
    ctx = dist_utils.setup(cfg.run.device)
    try:
        return _Trainer(cfg, ctx).fit(resume, stop_after)
    finally:
        dist_utils.cleanup(ctx)


def train_from_config(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    resume: bool = False,
    *,
    stop_after: int | None = None,
) -> TrainResult:
    """``rsrestore train CONFIG.yaml [--resume] [--set key=value ...]``: :func:`load_config` then :func:`train`."""
    return train(load_config(path, overrides), resume=resume, stop_after=stop_after)


def export_weights(run_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str], name: str) -> Path:
    """Copy a finished run's ``final.safetensors`` to ``dest_dir/<name>.safetensors`` with the metadata file
    ``dest_dir/<name>.json`` that the MODELS table reads (``config``, ``sha256``, bands, value range, training data,
    steps, wall time, scores). Returns the weights path."""
    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    if not name or Path(name).name != name or name.endswith(".safetensors"):
        raise ValueError(f"name must be a plain file stem such as 'aosrnet_sanddust', got {name!r}")
    src, meta_src = run_dir / "final.safetensors", run_dir / "final.json"
    if not src.exists() or not meta_src.exists():
        raise FileNotFoundError(f"{run_dir} has no final.safetensors/final.json: the run has not finished")
    meta = json.loads(meta_src.read_text())
    if meta.get("sha256") and registry.sha256_of(src) != meta["sha256"]:
        raise ValueError(f"{src} does not match the sha256 recorded in {meta_src}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dst = dest_dir / f"{name}.safetensors"
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    _fsync(tmp)
    os.replace(tmp, dst)
    config = meta.get("config", {})
    bands = config.get("in_channels", config.get("optical_bands"))
    out = {
        "method": meta.get("model"),
        "file": dst.name,
        "sha256": registry.sha256_of(dst),
        "config": config,
        "bands": bands,
        "value_range": meta.get("value_range", [0.0, 1.0]),
        "trained_on": meta.get("train_data"),
        "steps": meta.get("steps"),
        "epochs": meta.get("epochs"),
        "global_batch_size": meta.get("global_batch_size"),
        "wall_time_s": meta.get("wall_time_s"),
        "ema": meta.get("ema"),
        "loss": meta.get("loss"),
        "scores": meta.get("val_scores"),
        "scores_convention": (
            "all bands, data range 1, Gaussian SSIM (window 11, sigma 1.5); outputs clamped to [0, 1]"
        ),
        "train_config": meta.get("train_config"),
    }
    _atomic_write_bytes(dest_dir / f"{name}.json", (json.dumps(out, indent=2, default=str) + "\n").encode())
    return dst


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rsrestore.train",
        description="Train a restoration model from a YAML config (also under torchrun --nproc_per_node N).",
    )
    parser.add_argument("config", type=Path, help="YAML training config (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set run.steps=100 --set optim.lr=2e-4 (repeatable)",
    )
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="end after this global step with a checkpoint, without final outputs")
    args = parser.parse_args(argv)
    try:
        result = train_from_config(args.config, args.overrides, resume=args.resume, stop_after=args.stop_after)
    except (ConfigError, FileNotFoundError, registry.ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if result.finished else "stopped"
        print(f"{state} at step {result.step}/{result.total_steps}; outputs in {result.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
