"""Feeding the loop: the seeded per-epoch sampler, batch collation, datasets built from the config's sections."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from .config import ConfigError, DatasetSpec, plain

__all__ = ["EpochSampler", "build_dataset", "collate", "describe_dataset", "to_device"]


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


def build_dataset(spec: DatasetSpec, seed: int, where: str) -> Dataset:
    """The dataset a ``data.train``/``data.val`` section describes (``where`` names the section in errors)."""
    from ..data import build_dataset as build, dataset_options

    try:
        options = dict(spec.options)
        if "seed" not in options and "seed" in dataset_options(spec.kind):
            options["seed"] = seed
        if spec.root is None:
            raise ValueError(f"{where}.root: the dataset folder is not set")
        ds = build(spec.kind, spec.root, split=spec.split, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if len(ds) == 0:
        raise ConfigError(f"{where}: the dataset {spec.kind!r} at {spec.root} is empty")
    return ds


def describe_dataset(spec: DatasetSpec, ds: Dataset) -> dict[str, Any]:
    """A dataset section and its size, for the metadata of the final weights."""
    return {
        "kind": spec.kind, "root": spec.root, "split": spec.split, "options": plain(spec.options), "samples": len(ds),
    }


def to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """The batch's tensors on ``device`` (4-D ones in channels-last layout when asked); other entries as they are."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out
