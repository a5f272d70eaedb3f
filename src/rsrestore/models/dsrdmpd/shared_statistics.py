"""Statistics shared across tiles: the whole-image quantities of DS-RDMPD's layers, recorded once and replayed.

Several layers of the two networks reduce over every position of their input: the channel attentions of stage 1
(the MSCA block's, ASFusion's MLPs, ECA, scSE) pool the map to one vector per channel; stage 2 normalises by
GroupNorm's per-group mean and variance, its linear attention sums keys times values over all positions into a
context matrix, and its middle attention lets every position attend to every other. Run on a tile, each of these
sees only that tile: neighbouring tiles compute different values and the blend shows seams.

A layer computes such a quantity through :func:`shared` (or :func:`spatial_mean`, :class:`SharedGroupNorm`):

* outside a session (training, a plain forward) the quantity is computed as it always was;
* inside :func:`recording`, it is computed and kept, per layer and in call order -- the denoiser runs once per
  sampling step, so its values are kept per step;
* inside :func:`replaying`, the layer's next recorded value is used instead, whatever the input's size.

A restorer records on the scene downsampled to at most :data:`STATS_SIDE` a side and replays on every tile
(:class:`SceneStatistics`, :func:`restore_with_scene_statistics`; :class:`~.restorer.DSRDMPD` and ASPDiff both do).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StatisticsRecord", "recording", "replaying", "shared", "spatial_mean", "positions_ratio",
           "SharedGroupNorm", "STATS_SIDE", "statistics_image", "exceeds_statistics_side", "SceneStatistics",
           "restore_with_scene_statistics"]

#: Scene statistics are recorded on the scene downsampled to at most this many pixels a side: the record costs at
#: most one restore of 512 x 512 per scene.
STATS_SIDE = 512

Value = Tensor | tuple[Tensor, ...]


@dataclass
class StatisticsRecord:
    """Values recorded per (layer, quantity), in call order.

    ``positions_ratio``: positions of the scene per position of the recorded (downsampled) image, for quantities that
    scale with the number of positions rather than average over them.
    """

    positions_ratio: float = 1.0
    values: dict[tuple[nn.Module, str], list[Value]] = field(default_factory=dict)


@dataclass
class _Session:
    record: StatisticsRecord
    replay: bool
    cursor: dict[tuple[nn.Module, str], int] = field(default_factory=dict)


_session: ContextVar[_Session | None] = ContextVar("dsrdmpd_statistics_session", default=None)


@contextmanager
def _open(session: _Session) -> Iterator[StatisticsRecord]:
    token = _session.set(session)
    try:
        yield session.record
    finally:
        _session.reset(token)


def recording(positions_ratio: float = 1.0) -> AbstractContextManager[StatisticsRecord]:
    """Record every shared quantity computed inside the block; yields the :class:`StatisticsRecord`."""
    return _open(_Session(StatisticsRecord(positions_ratio), replay=False))


def replaying(record: StatisticsRecord) -> AbstractContextManager[StatisticsRecord]:
    """Use ``record``'s values inside the block, each layer's in the order they were recorded."""
    return _open(_Session(record, replay=True))


def _expand(value: Value, batch: int) -> Value:
    if isinstance(value, tuple):
        return tuple(_expand(v, batch) for v in value)
    if value.shape[0] == batch:
        return value
    if value.shape[0] != 1:
        raise ValueError(f"statistics recorded for a batch of {value.shape[0]} cannot serve a batch of {batch}")
    return value.expand(batch, *value.shape[1:])


def shared(module: nn.Module, name: str, compute: Callable[[], Value], batch: int) -> Value:
    """``compute()`` -- or, while replaying, ``module``'s next recorded ``name`` (expanded to ``batch`` when it was
    recorded for one image). Values have the batch first."""
    session = _session.get()
    if session is None:
        return compute()
    key = (module, name)
    if not session.replay:
        value = compute()
        session.record.values.setdefault(key, []).append(value)
        return value
    values = session.record.values.get(key, [])
    i = session.cursor.get(key, 0)
    if i >= len(values):
        raise RuntimeError(f"no recorded {name} left for {type(module).__name__} (call {i + 1}): statistics must be "
                           f"recorded by the same network with the same number of sampling steps")
    session.cursor[key] = i + 1
    return _expand(values[i], batch)


def positions_ratio() -> float:
    """Scene positions per input position while recording a downsampled scene; 1 otherwise."""
    session = _session.get()
    return 1.0 if session is None else session.record.positions_ratio


def spatial_mean(module: nn.Module, x: Tensor) -> Tensor:
    """The (B, C) mean of a (B, C, H, W) map over its positions (global average pooling), shared."""
    return shared(module, "mean", lambda: x.mean(dim=(2, 3)), x.shape[0])


class SharedGroupNorm(nn.GroupNorm):
    """GroupNorm whose per-group mean and variance are shared (same parameters and state dict as ``nn.GroupNorm``)."""

    def forward(self, x: Tensor) -> Tensor:
        if _session.get() is None:
            return super().forward(x)
        b = x.shape[0]
        groups = x.float().reshape(b, self.num_groups, -1)
        var, mean = shared(self, "moments", lambda: torch.var_mean(groups, dim=-1, correction=0), b)
        y = ((groups - mean[..., None]) * torch.rsqrt(var[..., None] + self.eps)).reshape(x.shape)
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y.to(x.dtype)



def statistics_image(x: Tensor, side: int | None = None) -> Tensor:
    """``x`` downsampled by area averaging so that its longer side is at most ``side`` (default :data:`STATS_SIDE`;
    ``x`` itself if it is)."""
    side = side or STATS_SIDE
    h, w = x.shape[-2:]
    factor = max(h, w) / side
    if factor <= 1:
        return x
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    return F.interpolate(x.float(), size=size, mode="area")


def exceeds_statistics_side(x: Tensor) -> bool:
    """Whether ``x`` is larger than its statistics' copy: restored in one piece, it too replays that copy's."""
    return max(x.shape[-2:]) > STATS_SIDE


@dataclass
class SceneStatistics:
    """A scene as its statistics see it: its downsampled copy and its full size.

    The layers' statistics are recorded from a restore of ``image`` the first time a tile needs them, once per
    ``key`` (the number of sampling steps); a scene that is its own downsampled copy and comes as one tile never
    needs them.
    """

    image: Tensor  # (B, C, h, w), at most STATS_SIDE a side
    scene_shape: tuple[int, int]  # (H, W) of the scene at full resolution
    records: dict[Hashable, StatisticsRecord] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, x: Tensor, decimation: float = 1.0) -> SceneStatistics:
        """The statistics of the scene ``x`` is a read of, ``decimation`` times smaller than the scene."""
        scene_shape = (round(x.shape[-2] * decimation), round(x.shape[-1] * decimation))
        return cls(statistics_image(x), scene_shape)

    def is_image(self, x: Tensor, origins: Sequence[tuple[int, int]] | None) -> bool:
        """Whether ``x`` is the scene itself at the resolution it was recorded at: its own statistics are the
        scene's."""
        shape = tuple(x.shape[-2:])
        return (shape == tuple(self.image.shape[-2:]) == tuple(self.scene_shape)
                and (origins is None or all(tuple(o) == (0, 0) for o in origins)))

    def record(self, key: Hashable, restore: Callable[[Tensor], object]) -> StatisticsRecord:
        """What ``restore(image)`` computes through :func:`shared`, recorded the first time ``key`` is asked for
        and kept for the next tiles."""
        if key not in self.records:
            h, w = self.image.shape[-2:]
            with recording(self.scene_shape[0] * self.scene_shape[1] / (h * w)) as record:
                restore(self.image)
            self.records[key] = record
        return self.records[key]


def restore_with_scene_statistics(x: Tensor, origins: Sequence[tuple[int, int]] | None,
                                  scene: SceneStatistics | None, record: Callable[[SceneStatistics], StatisticsRecord],
                                  restore: Callable[[], Tensor]) -> Tensor:
    """``restore()`` of ``x`` (at scene positions ``origins``), replaying ``record(scene)``: the statistics of the
    scene ``x`` is part of; on its own statistics when there is no scene or ``x`` is the scene itself."""
    if scene is None or scene.is_image(x, origins):
        return restore()
    with replaying(record(scene)):
        return restore()
