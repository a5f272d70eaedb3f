"""Tile batches sized by a memory budget: the chooser, the probe, and outputs that do not depend on the batch."""

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import rsrestore
from _one_line_errors import user_error
from rsrestore.cli import app
from rsrestore.memory import (MMAP_THRESHOLD_ENV, ForwardMemory, MiB, measure_forward_memory, release_free_memory,
                              resident_bytes, tiles_per_batch)
from rsrestore.raster import RasterError
from rsrestore.tiling import MEMORY_RESERVE_MB, ArraySource, fit_memory, largest_read, restore_array


class Wide(nn.Module):
    """A per-pixel model whose forward holds `channels` float32 values per input pixel at its peak (a known cost)."""

    halo = 4

    def __init__(self, channels: int = 256):
        super().__init__()
        self.channels = channels

    def forward(self, x, sar=None):
        wide = x[:, :1].repeat(1, self.channels, 1, 1)
        return x * wide.mean(dim=1, keepdim=True)


class SmallConvNet(nn.Module):
    """Two 3x3 convolutions with fixed random weights: a tile's output depends on its neighbourhood."""

    halo = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x, sar=None):
        return torch.sigmoid(self.net(x))


def test_tiles_per_batch_shrinks_with_the_budget_and_never_reaches_zero():
    cost = ForwardMemory(fixed=20 * MiB, per_pixel=2000.0)
    tile = 544 * 544
    budgets = [10_000 * MiB, 3000 * MiB, 2000 * MiB, 1000 * MiB, 100 * MiB, 0, -500 * MiB]
    counts = [tiles_per_batch(cost, b, tile, most=4) for b in budgets]
    assert counts[0] == 4  # never more than asked for
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # a smaller budget never takes more tiles
    assert counts[1] > counts[3] and counts[-1] == 1  # fewer for less, and never zero
    assert tiles_per_batch(cost, 20 * MiB + 2000.0 * tile * 2, tile, most=8) == 2  # exactly two fit


def test_probe_measures_the_memory_a_forward_holds_per_pixel():
    model = Wide(256)

    def forward(side):
        with torch.inference_mode():
            model(torch.full((1, 3, side, side), 0.5))

    cost = measure_forward_memory(forward)
    if cost is None:
        pytest.skip("this platform cannot measure peak memory")
    assert 0.9 * 1024 < cost.per_pixel < 2 * 1024  # 256 float32 channels: 1 KiB per pixel


def test_budget_chooses_fewer_tiles_then_smaller_tiles():
    model = Wide(256)  # about 1.2 KiB per pixel with the margin
    image = np.random.default_rng(0).random((3, 1200, 1200), dtype=np.float32)
    source = ArraySource(image)
    stats = {"_fill": torch.zeros(3)}

    def fit(extra_mb):  # a budget of `extra_mb` beside what the process holds now
        # counted as fit_memory counts it, after freed memory goes back (earlier tests' heap holes would otherwise
        # count here and not there, and widen the budget by their size)
        release_free_memory()
        max_memory = resident_bytes() / MiB + MEMORY_RESERVE_MB + extra_mb
        return fit_memory(model, source, stats, tile=512, overlap=32, batch_size=4, device=torch.device("cpu"),
                          amp=False, max_memory=max_memory)

    one_tile_mb = largest_read(1200, 1200, 512, 4) * 1.3 * 1024 / MiB  # ~340 MB
    assert fit(10 * one_tile_mb) == (512, 4)
    # Between two and three tiles' worth: fewer tiles per batch, the full size kept. The exact count can move by one:
    # the probe measures peak growth of the process, which heap left free by earlier tests can lower by part of a tile.
    tile, batch = fit(2.5 * one_tile_mb)
    assert tile == 512 and 2 <= batch <= 3
    tile, batch = fit(one_tile_mb / 3)  # one whole tile does not fit: a smaller one does
    assert 128 <= tile < 512 and tile % 32 == 0 and batch >= 1


def test_restored_scene_does_not_depend_on_tiles_per_batch():
    model = SmallConvNet()
    rng = np.random.default_rng(1)
    image = rng.random((3, 150, 170), dtype=np.float32)
    mask = np.ones((150, 170), bool)
    mask[:20, :35] = False
    runs = [restore_array(model, image, mask=mask, tile=64, overlap=8, batch_size=b) for b in (1, 3, 16)]
    # A budget below what the process holds already: one tile per batch.
    with pytest.warns(UserWarning, match="too little"):
        runs.append(restore_array(model, image, mask=mask, tile=64, overlap=8, batch_size=4, max_memory=1))
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=0, atol=1e-6)


def test_max_memory_must_be_positive(geotiff_factory, tmp_path):
    with pytest.raises(RasterError, match="--max-memory"):
        restore_array(SmallConvNet(), np.zeros((3, 16, 16), np.float32), max_memory=0)
    with pytest.raises(RasterError, match="--max-memory"):  # the public API passes it on
        rsrestore.restore(np.zeros((3, 16, 16), np.float32), "dcp", max_memory=-1)
    src, _ = geotiff_factory()
    r = CliRunner().invoke(app, ["restore", str(src), "-o", str(tmp_path / "o.tif"), "--method", "dcp", "-q",
                                 "--max-memory", "-1"])
    user_error(r, "--max-memory")
    r = CliRunner().invoke(app, ["restore", str(src), "-o", str(tmp_path / "o.tif"), "--method", "dcp", "-q",
                                 "--max-memory", "0"])
    assert r.exit_code == 0, r.output


def test_the_mmap_threshold_is_opt_in_and_set_through_mallopt(monkeypatch):
    """$RSRESTORE_MMAP_THRESHOLD fixes glibc's mmap threshold (mallopt M_MMAP_THRESHOLD = -3) while a budget is in
    effect; unset or 0 leaves glibc's own rule."""
    from rsrestore import memory

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(memory, "_libc", lambda: FakeLibc())
    monkeypatch.delenv(MMAP_THRESHOLD_ENV, raising=False)
    assert memory.bound_heap_fragmentation() is False and calls == []
    monkeypatch.setenv(MMAP_THRESHOLD_ENV, "0")
    assert memory.bound_heap_fragmentation() is False and calls == []
    monkeypatch.setenv(MMAP_THRESHOLD_ENV, str(4 << 20))
    assert memory.bound_heap_fragmentation() is True and calls == [(-3, 4 << 20)]
    # A budget on the CPU applies it, once per restore.
    calls.clear()
    image = np.random.default_rng(3).random((3, 150, 170), dtype=np.float32)
    with pytest.warns(UserWarning, match="too little"):
        restore_array(SmallConvNet(), image, tile=64, overlap=8, batch_size=4, max_memory=1)
    assert calls == [(-3, 4 << 20)]


def test_a_memory_budget_gives_freed_memory_back_after_every_batch(monkeypatch):
    """glibc keeps the pages of heap holes a batch freed; with a budget they go back before the next batch."""
    import rsrestore.tiling as tiling

    calls = []
    monkeypatch.setattr(tiling, "release_free_memory", lambda: calls.append(1))
    image = np.random.default_rng(2).random((3, 150, 170), dtype=np.float32)
    restore_array(SmallConvNet(), image, tile=64, overlap=8, batch_size=1)
    assert calls == []  # no budget: glibc's way
    with pytest.warns(UserWarning, match="too little"):  # one tile per batch
        restore_array(SmallConvNet(), image, tile=64, overlap=8, batch_size=4, max_memory=1)
    n_tiles = sum(len(row) for row in tiling.tile_grid(150, 170, 64, 8))
    assert len(calls) >= n_tiles  # after each batch (and once after the probe)
