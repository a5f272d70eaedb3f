"""Streaming tiled inference: run any restorer over a scene of any size in memory bounded by the tile size.

A scene is covered by tiles of `tile` x `tile` pixels that overlap by at least `overlap` pixels. Each tile is read with
a halo of context on every side (clipped at the scene's edges, so a tile at the border sees exactly what the whole
image would), restored in batches, cropped back, weighted by a raised-cosine ramp over the overlaps, and accumulated.
Tiles are visited row by row; a pixel is final as soon as every tile covering it is done, so only the overlap strip
below the current tile row (overlap x width) and the strip right of the current tile are carried: memory depends on
the tile size (and, through that thin strip, weakly on the width), never on the number of rows.

A dimension no longer than 1.25 tiles is covered by one tile (a 600-pixel side with 512-pixel tiles is one tile, not
two): memory grows by at most 1.56x, and a learned model runs once instead of four times on a 600 x 600 scene.

Invalid pixels (nodata, masked, or NaN/infinite in float scenes) never feed a filter or a statistic and are written
back exactly as they were. Before a tile is restored each takes the value of the nearest valid pixel of its read box
(`fill_invalid`): a constant there would draw a hard edge along the valid-data boundary, which a network answers with
artefacts in the valid pixels beside it. Scene statistics see the mean colour of the valid pixels instead. A scene
that declares no invalid pixels at all (no nodata value, alpha band or mask; an array passed without a mask) has its
pixels that are exactly 0 in every restored band treated the same way (`black_pixels`): that is the black collar of a
scene exported without its nodata value, never a hazy, dusty or cloudy pixel (those carry airlight), and restored as
data it drew a pale frame 15-20 px wide along the collar (AOSR-Net: +0.08 grey within 3 px on the Landsat-7 scene).
A scene smaller than a method's `min_size` (a model attribute; default 1) is refused.

Restorers that need scene-wide statistics (the dark channel prior's atmospheric light, a colour cast) expose
`scene_statistics(x, mask)`: it runs once on a decimated read of the whole scene and the result goes to every tile.
Restorers whose forward takes `origins` (diffusion models) are told where each tile's read box sits in the scene, so
that they draw their noise by scene position and overlapping tiles sample the same image.

With `max_memory`, the tiles per batch (and, when one tile alone is too big, the tile side) are chosen so that the
process stays under that many MB: the model's memory is measured once on two small probe tiles (`rsrestore.memory`).

The same engine serves files (`restore_file`) and in-memory arrays (`restore_array`) through small source/sink
classes.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window
from scipy import ndimage
from torch import Tensor, nn

from .models.prior import NETWORK_HALO
from .memory import (MiB, PROBE_SIDE, bound_heap_fragmentation, measure_forward_memory, release_free_memory,
                     resident_bytes, tiles_per_batch)

from .raster import (
    SAR_DB_RANGES,
    RasterError,
    RasterInfo,
    RasterWriter,
    check_output_path,
    finite_mask,
    from_unit,
    inspect_raster,
    off_zero,
    open_raster,
    reading,
    sar_to_unit,
    to_unit,
    valid_mask,
)

GDAL_CACHE_MB = 128  # GDAL block cache while streaming a scene (MB)
STATS_MAX_SIDE = 1024  # scene statistics are estimated on a read decimated to at most this many pixels per side
MIN_TILE = 16  # smaller tiles are mostly halo and overlap
SMALL_TILE_WARNING = 64  # below this, a warning: many times slower than the default for the same result
ONE_TILE_SLACK = 1.25  # a side up to this many tiles long is covered by one tile
MIN_MEMORY_TILE = 128  # a memory budget shrinks the tile side down to this, not below (halo and overlap would dominate)
MEMORY_TILE_STEP = 32  # ... in steps of this many pixels
MEMORY_RESERVE_MB = GDAL_CACHE_MB + 32  # beside the tiles' work: GDAL's block cache and the carried overlap strips


def check_tiling(tile: int, overlap: int, batch_size: int, max_memory: float | None = None) -> None:
    """Validate the tiling options (library-level, so the Python API and every command get the same one-line errors);
    warn when a tile is so small that the run is much slower than it needs to be."""
    if tile < MIN_TILE:
        raise RasterError(f"tile size (--tile) must be at least {MIN_TILE} pixels; got {tile}")
    if overlap < 0:
        raise RasterError(f"overlap (--overlap) must be 0 or more pixels; got {overlap}")
    if overlap >= tile:
        raise RasterError(f"overlap (--overlap {overlap}) must be smaller than the tile size (--tile {tile})")
    if batch_size < 1:
        raise RasterError(f"batch size (--batch-size) must be at least 1; got {batch_size}")
    if max_memory is not None and not max_memory > 0:
        raise RasterError(f"memory limit (--max-memory) must be a positive number of MB; got {max_memory}")
    if tile < SMALL_TILE_WARNING:
        warnings.warn(
            f"tile size {tile} is very small: most of each tile is context and overlap, so the run is many times "
            f"slower than with the default 512",
            stacklevel=3,
        )


@dataclass(frozen=True)
class TileSpec:
    row: int  # index of the tile row
    y0: int
    y1: int
    x0: int
    x1: int
    # overlaps with the neighbours (0 at the scene's edges)
    top: int
    bottom: int
    left: int
    right: int


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` overlapping by >= `overlap`; the last is end-aligned.

    A length up to ONE_TILE_SLACK tiles gets one tile as long as the whole length."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile * ONE_TILE_SLACK:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[list[TileSpec]]:
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th = height if len(ys) == 1 else tile
    tw = width if len(xs) == 1 else tile
    rows = []
    for r, y0 in enumerate(ys):
        top = (ys[r - 1] + th - y0) if r > 0 else 0
        bottom = (y0 + th - ys[r + 1]) if r + 1 < len(ys) else 0
        row = []
        for c, x0 in enumerate(xs):
            left = (xs[c - 1] + tw - x0) if c > 0 else 0
            right = (x0 + tw - xs[c + 1]) if c + 1 < len(xs) else 0
            row.append(TileSpec(r, y0, y0 + th, x0, x0 + tw, top, bottom, left, right))
        rows.append(row)
    return rows


def ramp(length: int, head: int, tail: int) -> np.ndarray:
    """1-D blending weight: raised-cosine rise over `head`, flat, fall over `tail`. Strictly positive."""
    w = np.ones(length, dtype=np.float32)
    if head:
        w[:head] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(head) + 0.5) / head)
    if tail:
        w[length - tail :] = np.minimum(w[length - tail :], (0.5 - 0.5 * np.cos(np.pi * (np.arange(tail) + 0.5) / tail))[::-1])
    return w


# --------------------------------------------------------------------------------------------------------------------
# Sources and sinks


class ArraySource:
    """An in-memory (C, H, W) float image in [0, 1] with an optional valid mask (H, W) and SAR (S, H, W)."""

    def __init__(self, image: np.ndarray, mask: np.ndarray | None = None, sar: np.ndarray | None = None):
        self.name = "the array"
        self.image = np.asarray(image, dtype=np.float32)
        self.height, self.width = self.image.shape[-2:]
        if mask is None:
            mask = ~black_pixels(self.image)
            mask = mask if mask.any() else np.ones_like(mask)  # an all-black array is an image, not nodata
        self.mask = np.asarray(mask, bool) & finite_mask(self.image)
        self.sar = None if sar is None else np.asarray(sar, dtype=np.float32)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        sar = None if self.sar is None else self.sar[:, y0:y1, x0:x1]
        return self.image[:, y0:y1, x0:x1], self.mask[y0:y1, x0:x1], sar

    def decimated(self, max_side: int) -> tuple[np.ndarray, np.ndarray]:
        f = max(1, math.ceil(max(self.height, self.width) / max_side))
        return self.image[:, ::f, ::f], self.mask[::f, ::f]


class RasterSource:
    """Windows of the selected bands of a raster, scaled to [0, 1], with its valid mask and an optional SAR raster."""

    def __init__(
        self, info: RasterInfo, sar_path: str | Path | None = None, align: bool = False, sar_bands: int | None = None
    ):
        self.info = info
        self.name = str(info.path)
        self.height, self.width = info.height, info.width
        self.ds = open_raster(info.path)
        # Nothing declared invalid (no nodata, alpha or mask): pixels black in every band are, unless all of them are.
        self.black_is_nodata = all(flags == [MaskFlags.all_valid] for flags in self.ds.mask_flag_enums)
        # The decimated read that decides this is kept: the scene statistics read the same copy (decimated()).
        self._decimated_raw: dict[tuple[int, int], np.ndarray] = {}
        if self.black_is_nodata:
            self.black_is_nodata = not bool(black_pixels(self._read_decimated(STATS_MAX_SIDE)[1]).all())
        self.sar_ds = None
        if sar_path is not None:
            try:
                self.sar_ds = open_sar_on_grid(sar_path, info, align, sar_bands)
            except BaseException:
                self.ds.close()
                raise

    def read(self, y0: int, y1: int, x0: int, x1: int):
        win = Window(x0, y0, x1 - x0, y1 - y0)
        with reading(self.info.path):
            raw = self.ds.read(self.info.bands, window=win)
        mask = self.valid(raw, win)
        sar = None
        if self.sar_ds is not None:
            with reading(self.sar_ds.name):
                sar = sar_to_unit(self.sar_ds.read(window=win))
        return to_unit(raw, self.info.scale), mask, sar

    def read_all_bands(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        with reading(self.info.path):
            return self.ds.read(window=Window(x0, y0, x1 - x0, y1 - y0))

    def _read_decimated(self, max_side: int) -> tuple[tuple[int, int], np.ndarray]:
        """The selected bands' raw values decimated to at most ``max_side``, read once per size."""
        shape = decimated_shape(self.height, self.width, max_side)
        if shape not in self._decimated_raw:
            # Nearest-neighbour decimation keeps real pixel values (averaging would blur the brightest dark-channel
            # pixels and mix nodata into valid pixels); GDAL reads from overviews when the file has them.
            with reading(self.info.path):
                self._decimated_raw[shape] = self.ds.read(self.info.bands, out_shape=(len(self.info.bands), *shape),
                                                          resampling=Resampling.nearest)
        return shape, self._decimated_raw[shape]

    def decimated(self, max_side: int) -> tuple[np.ndarray, np.ndarray]:
        shape, raw = self._read_decimated(max_side)
        mask = self.valid(raw, out_shape=shape)
        return to_unit(raw, self.info.scale), mask

    def valid(self, raw: np.ndarray, window: Window | None = None, out_shape=None) -> np.ndarray:
        """Pixels to restore of `raw` (the selected bands of `window`)."""
        return self.restorable(raw, valid_mask(self.ds, window, out_shape=out_shape))

    def restorable(self, raw: np.ndarray, declared: np.ndarray) -> np.ndarray:
        """Of the `declared` valid pixels of `raw` (selected bands), those to restore: finite, and not black when the
        file declares nothing invalid."""
        mask = declared.copy()
        finite = finite_mask(raw)
        if finite is not None:
            mask &= finite
        if self.black_is_nodata:
            mask &= ~black_pixels(raw)
        return mask

    def close(self) -> None:
        self.ds.close()
        if self.sar_ds is not None:
            self.sar_ds.close()


def open_sar_on_grid(sar_path: str | Path, info: RasterInfo, align: bool, sar_bands: int | None = None):
    """Open a SAR raster that must lie on the optical grid; with `align`, resample it onto that grid instead."""
    from rasterio.vrt import WarpedVRT

    ds = open_raster(sar_path)
    expected = sar_bands or len(SAR_DB_RANGES)
    if ds.count != expected:
        ds.close()
        raise RasterError(
            f"SAR {sar_path} has {ds.count} band(s); the method takes {expected} (VV, VH backscatter in dB)"
        )
    differences = grid_differences(ds, info)
    if not differences:
        return ds
    if not align:
        ds.close()
        raise RasterError(
            f"SAR {sar_path} is not on the optical grid of {info.path}: {'; '.join(differences)}; pass --align to "
            f"resample it onto the optical grid"
        )
    if ds.crs is None or info.crs is None:
        ds.close()
        raise RasterError(f"cannot align {sar_path}: both rasters need a CRS")
    # Optical pixels beyond the SAR footprint come out as NaN, which `sar_to_unit` maps to the lowest backscatter (0),
    # as the SEN12MS-CR loader treats holes; GDAL's default fill of 0 would read as 0 dB, the brightest return.
    return WarpedVRT(ds, crs=info.crs, transform=info.transform, width=info.width, height=info.height,
                     resampling=Resampling.bilinear, dtype="float32", nodata=float("nan"))


def grid_differences(ds, info: RasterInfo) -> list[str]:
    """What differs between a raster's grid and another's, with both values ("" when they match)."""
    out = []
    if ds.crs != info.crs:
        out.append(f"CRS {_crs_name(ds.crs)} vs {_crs_name(info.crs)}")
    if not ds.transform.almost_equals(info.transform):
        out.append(f"transform {tuple(round(v, 6) for v in ds.transform[:6])} vs "
                   f"{tuple(round(v, 6) for v in info.transform[:6])}")
    if ds.shape != info.shape:
        out.append(f"size {ds.width}x{ds.height} vs {info.width}x{info.height}")
    return out


def _crs_name(crs) -> str:
    if crs is None:
        return "none"
    return crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"


class ArraySink:
    def __init__(self, channels: int, height: int, width: int):
        self.out = np.zeros((channels, height, width), dtype=np.float32)

    def write(self, values: np.ndarray, y0: int, y1: int, x0: int, x1: int, source) -> None:
        self.out[:, y0:y1, x0:x1] = values


class RasterSink:
    """Writes restored bands back into their places; unselected bands and nodata pixels are copied unchanged."""

    def __init__(self, info: RasterInfo, writer: RasterWriter):
        self.info, self.writer = info, writer
        self.non_finite = 0  # valid pixels holding NaN or infinity in a selected band: left as they were

    def write(self, values: np.ndarray, y0: int, y1: int, x0: int, x1: int, source: RasterSource) -> None:
        window = Window(x0, y0, x1 - x0, y1 - y0)
        raw = source.read_all_bands(y0, y1, x0, x1)
        mask = valid_mask(source.ds, window)
        selected = raw[[b - 1 for b in self.info.bands]]
        restore = source.restorable(selected, mask)  # the rest is written back as it was, as nodata is
        finite = finite_mask(selected)
        if finite is not None:
            self.non_finite += int((mask & ~finite).sum())
        info = self.info
        restored = from_unit(values, info.dtype, info.scale, nodata=info.nodata, nbits=info.nbits)
        if info.nodata is None:
            restored = off_zero(restored, selected)
        out = raw.copy()
        for i, b in enumerate(info.bands):
            out[b - 1] = np.where(restore, restored[i], raw[b - 1])
        self.writer.write(out, window, mask)


# --------------------------------------------------------------------------------------------------------------------
# The engine


def model_halo(model: nn.Module) -> int:
    return int(getattr(model, "halo", NETWORK_HALO))  # a learned model that declares none: a network's


def model_min_size(model: nn.Module) -> int:
    """The smallest scene side a method gives a meaningful result on (a model may declare `min_size`)."""
    return int(getattr(model, "min_size", 1))


def model_sar_bands(model: nn.Module) -> int | None:
    """SAR bands a model takes (its config's `sar_bands`), or None for an optical-only model."""
    n = getattr(getattr(model, "cfg", None), "sar_bands", 0)
    return int(n) if n else None


def compute_scene_statistics(model: nn.Module, source, device: torch.device) -> dict[str, Tensor]:
    """Scene statistics of models that use them, and `_fill`: the mean colour of the valid pixels, which stands in
    for invalid pixels everywhere (statistics included) so that nodata, masked and non-finite pixels feed nothing."""
    img, mask = source.decimated(STATS_MAX_SIDE)
    # a model may have the method and need nothing of it (a learned model without its classical prior)
    needs_stats = getattr(model, "needs_scene_statistics", hasattr(model, "scene_statistics"))
    if not mask.any():
        if needs_stats:
            raise RasterError(f"{source.name} has no valid pixel (all are nodata, masked or not finite)")
        return {"_fill": torch.zeros(img.shape[0], device=device)}
    fill = img[:, mask].mean(axis=1)
    if not needs_stats:
        return {"_fill": torch.from_numpy(fill).to(device)}
    img = np.where(mask[None], img, fill[:, None, None]).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(img))[None].to(device)
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].to(device)
    kwargs = {}
    if "decimation" in inspect.signature(model.scene_statistics).parameters:
        # Statistics that depend on the sampling (e.g. percentiles of a local filter's output) are told its factor.
        kwargs["decimation"] = source.height / img.shape[1]
    with torch.inference_mode():
        stats = model.scene_statistics(x, mask=m, **kwargs)
    stats = dict(stats)
    stats.setdefault("_fill", torch.from_numpy(fill).to(device))
    return stats


def forward_takes(model: nn.Module, name: str) -> bool:
    """Whether a model's forward takes the keyword ``name``. The engine can pass two:

    - ``origins``: the scene position (y0, x0) of each tile's read box, which a diffusion model uses to draw the same
      noise at a scene pixel whichever tile reads it (seamless sampling);
    - ``cores``: each tile's kept pixels (y0, y1, x0, x1) in its read box, so a model whose classical prior needs a
      wide halo runs its network on the tile and its own halo only (:meth:`rsrestore.models.prior.PriorConditioned.
      correct_prior`)."""
    return name in inspect.signature(model.forward).parameters


def run_model(model: nn.Module, batch: Tensor, sar: Tensor | None, stats: dict | None, amp: bool,
              origins: list[tuple[int, int]] | None = None,
              cores: list[tuple[int, int, int, int]] | None = None) -> Tensor:
    kwargs: dict[str, object] = {}
    if sar is not None:
        kwargs["sar"] = sar
    for name, value in (("origins", origins), ("cores", cores)):
        if value is not None and forward_takes(model, name):
            kwargs[name] = value
    model_stats = {k: v for k, v in (stats or {}).items() if not k.startswith("_")}
    if model_stats:
        kwargs["stats"] = model_stats
    use_amp = amp and batch.device.type in ("cpu", "cuda")
    with torch.inference_mode(), torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = model(batch, **kwargs)
    return out.float()


def iter_tiles(
    model: nn.Module,
    source,
    sink,
    *,
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    amp: bool = False,
    progress: bool | Callable = True,
    out_channels: int | None = None,
    max_memory: float | None = None,
) -> None:
    """Restore `source` into `sink` tile by tile (the core loop shared by files and arrays; options are validated by
    `check_tiling` in `restore_file` and `restore_array`). With `max_memory` (MB), `batch_size` is the most tiles per
    batch and `tile` the largest side: both shrink as `fit_memory` finds they must."""
    device = torch.device(device)
    height, width = source.height, source.width
    check_scene_size(model, source)
    halo = model_halo(model)
    stats = compute_scene_statistics(model, source, device)
    fill = stats["_fill"]
    # A budget on the CPU is the process's memory (on a GPU, the device's): see rsrestore.memory for both calls.
    process_budget = max_memory is not None and device.type == "cpu"
    if process_budget:
        bound_heap_fragmentation()  # only with $RSRESTORE_MMAP_THRESHOLD
    if max_memory is not None:
        tile, batch_size = fit_memory(model, source, stats, tile=tile, overlap=overlap, batch_size=batch_size,
                                      device=device, amp=amp, max_memory=max_memory)
    grid = tile_grid(height, width, tile, overlap)
    n_tiles = sum(len(r) for r in grid)
    bar = _progress(progress, n_tiles)

    carry_bottom: np.ndarray | None = None  # (C + 1, bottom overlap, width): weighted sums and weights
    for row in grid:
        th = row[0].y1 - row[0].y0
        next_bottom = None
        carry_right: np.ndarray | None = None
        for chunk in _batches(row, batch_size, halo, height, width):
            outputs = _restore_chunk(model, source, chunk, halo, height, width, device, stats, fill, amp)
            if process_budget:
                # The freed activations' pages go back now: glibc keeps heap holes, whose pages the next batch may not
                # reuse. RSDehamba at 2800^2: peak 1205 MB instead of 1347-1504 MB, wall time +5 % (page faults).
                release_free_memory()
            for spec, out in zip(chunk, outputs):
                c = out.shape[0]
                tw = spec.x1 - spec.x0
                weight = np.outer(ramp(th, spec.top, spec.bottom), ramp(tw, spec.left, spec.right))
                acc = np.empty((c + 1, th, tw), dtype=np.float32)
                acc[:c] = out * weight
                acc[c] = weight
                if carry_bottom is not None and spec.top:
                    # Only columns the previous tile of this row did not already pass on (no double counting).
                    acc[:, : spec.top, spec.left :] += carry_bottom[:, :, spec.x0 + spec.left : spec.x1]
                if carry_right is not None and spec.left:
                    acc[:, :, : spec.left] += carry_right
                final = acc[:, : th - spec.bottom, : tw - spec.right]
                values = final[:c] / final[c]
                sink.write(values, spec.y0, spec.y1 - spec.bottom, spec.x0, spec.x1 - spec.right, source)
                carry_right = acc[:, :, tw - spec.right :].copy() if spec.right else None
                if spec.bottom:
                    if next_bottom is None:
                        next_bottom = np.zeros((c + 1, spec.bottom, width), dtype=np.float32)
                    next_bottom[:, :, spec.x0 : spec.x1 - spec.right] = acc[:, th - spec.bottom :, : tw - spec.right]
                bar.update(1)
        carry_bottom = next_bottom
    bar.close()


def check_scene_size(model: nn.Module, source) -> None:
    """Refuse a scene smaller than the method's minimum: its result there would be meaningless."""
    need = model_min_size(model)
    if min(source.height, source.width) < need:
        raise RasterError(
            f"{source.name} is {source.width}x{source.height} pixels; {type(model).__name__} needs at least "
            f"{need}x{need}"
        )


def _batches(row: list[TileSpec], batch_size: int, halo: int, height: int, width: int) -> Iterator[list[TileSpec]]:
    """Consecutive tiles whose halo-extended reads have the same shape, so they stack into one batch."""
    chunk: list[TileSpec] = []
    shape = None
    for spec in row:
        s = _read_box(spec, halo, height, width)
        s_shape = (s[1] - s[0], s[3] - s[2])
        if chunk and (s_shape != shape or len(chunk) == batch_size):
            yield chunk
            chunk = []
        chunk.append(spec)
        shape = s_shape
    if chunk:
        yield chunk


def _read_box(spec: TileSpec, halo: int, height: int, width: int) -> tuple[int, int, int, int]:
    return max(0, spec.y0 - halo), min(height, spec.y1 + halo), max(0, spec.x0 - halo), min(width, spec.x1 + halo)


def _restore_chunk(model, source, chunk, halo, height, width, device, stats, fill, amp) -> list[np.ndarray]:
    images, sars, origins, cores = [], [], [], []
    fallback = fill.cpu().numpy()
    for spec in chunk:
        y0, y1, x0, x1 = _read_box(spec, halo, height, width)
        img, mask, sar = source.read(y0, y1, x0, x1)
        images.append(fill_invalid(img, mask, fallback))
        sars.append(sar)
        origins.append((y0, x0))  # where the read box sits in the scene
        cores.append((spec.y0 - y0, spec.y1 - y0, spec.x0 - x0, spec.x1 - x0))  # the tile in its read box
    x = _model_input(torch.from_numpy(np.stack(images)).to(device))
    sar = None if sars[0] is None else torch.from_numpy(np.stack(sars)).to(device)
    y = run_model(model, x, sar, stats, amp, origins, cores).cpu().numpy()
    return [y[k, :, cy0:cy1, cx0:cx1] for k, (cy0, cy1, cx0, cx1) in enumerate(cores)]


def _model_input(x: Tensor) -> Tensor:
    """A batch as the models take it: channels_last, which the CPU's convolutions run fastest on."""
    if x.shape[-1] >= 8 and x.shape[-2] >= 8:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def black_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W): True where every band of `image` (C, H, W) is exactly 0 (NaN is not 0)."""
    return ~(image != 0).any(axis=0)


def decimated_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The shape of a scene read decimated by a whole factor to at most `max_side` pixels per side."""
    f = max(1, math.ceil(max(height, width) / max_side))
    return max(1, height // f), max(1, width // f)


def fill_invalid(image: np.ndarray, mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """`image` (C, H, W) with every pixel outside `mask` (H, W) given the value of the nearest valid pixel; valid
    pixels are untouched. A network answers a constant fill's hard edge along the valid-data boundary with artefacts
    in the valid pixels beside it; a nearest-valid fill continues the scene's colours across the boundary instead.
    A read holding no valid pixel takes `fallback` (C,), the scene's mean valid colour."""
    if mask.all():
        return image
    if not mask.any():
        return np.broadcast_to(fallback.astype(np.float32)[:, None, None], image.shape).copy()
    # The Euclidean distance transform of the invalid pixels, with indices: where each one's nearest valid pixel is.
    nearest = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
    return image[:, nearest[0], nearest[1]]


def largest_read(height: int, width: int, tile: int, halo: int) -> int:
    """Pixels of the largest halo-extended read of a scene tiled with `tile` (see `tile_grid`): the most one tile of
    a batch costs."""

    def side(length: int) -> int:
        return length if length <= tile * ONE_TILE_SLACK else min(length, tile + 2 * halo)

    return side(height) * side(width)


def fit_memory(model: nn.Module, source, stats: dict, *, tile: int, overlap: int, batch_size: int,
               device: torch.device, amp: bool, max_memory: float) -> tuple[int, int]:
    """The tile side (at most `tile`) and tiles per batch (at most `batch_size`) that keep the process under
    `max_memory` MB while restoring `source`, from the model's memory measured on two small probe tiles.

    On a GPU the batch's memory is the device's, not the process's: `tile` and `batch_size` are kept."""
    if device.type != "cpu":
        return tile, batch_size
    halo = model_halo(model)
    if batch_size * largest_read(source.height, source.width, tile, halo) <= (2 * PROBE_SIDE) ** 2:
        return tile, batch_size  # no batch is larger than the probe itself
    image, _, sar = source.read(0, 1, 0, 1)
    bands, sar_bands = image.shape[0], 0 if sar is None else sar.shape[0]

    def forward(side: int) -> None:
        x = _model_input(torch.full((1, bands, side, side), 0.5, device=device))
        s = None if sar is None else torch.zeros((1, sar_bands, side, side), device=device)
        run_model(model, x, s, stats, amp, [(0, 0)])

    # float32 arrays around the model, per pixel: the read, the stacked batch, the output and the weighted sum.
    buffers = 4 * (bands + sar_bands + 3 * (bands + 1))
    cost = measure_forward_memory(forward, side=max(PROBE_SIDE, model_min_size(model)), buffer_bytes_per_pixel=buffers)
    if cost is None:
        warnings.warn("this platform cannot measure peak memory; --max-memory is ignored and batches hold "
                      f"{batch_size} tile(s)", stacklevel=3)
        return tile, batch_size
    release_free_memory()  # what the probes freed is not the process's to keep
    held = resident_bytes()
    budget = max_memory * MiB - held - MEMORY_RESERVE_MB * MiB

    def read(side: int) -> int:
        return largest_read(source.height, source.width, side, halo)

    smallest = min(tile, max(MIN_MEMORY_TILE, 2 * overlap))
    fitted = tile
    while fitted > smallest and cost.bytes(read(fitted)) > budget:
        fitted = max(smallest, (fitted - 1) // MEMORY_TILE_STEP * MEMORY_TILE_STEP)
    if cost.bytes(read(fitted)) > budget:
        warnings.warn(f"--max-memory {max_memory:g} MB is too little: the process holds {held / MiB:.0f} MB and one "
                      f"{fitted}-pixel tile needs {cost.bytes(read(fitted)) / MiB:.0f} MB more; restoring one tile at "
                      f"a time", stacklevel=3)
    return fitted, tiles_per_batch(cost, budget, read(fitted), batch_size)


def _progress(progress, total: int):
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="tile", desc="restoring", leave=False)
    if callable(progress):
        return progress(total)

    class _Null:
        def update(self, n: int = 1) -> None: ...
        def close(self) -> None: ...

    return _Null()


def restore_array(
    model: nn.Module,
    image: np.ndarray | Tensor,
    *,
    mask: np.ndarray | None = None,
    sar: np.ndarray | Tensor | None = None,
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    amp: bool = False,
    progress: bool = False,
    max_memory: float | None = None,
) -> np.ndarray:
    """Restore an in-memory (C, H, W) float image in [0, 1] tile by tile; returns (C, H, W) float32.

    Pixels outside `mask` and pixels holding NaN or infinity are returned as they were; so are, when no `mask` is
    given, pixels that are 0 in every band (a black collar; see the module docstring). `max_memory` (MB): see
    `iter_tiles`."""
    check_tiling(tile, overlap, batch_size, max_memory)
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(sar, Tensor):
        sar = sar.detach().cpu().numpy()
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {image.shape}")
    source = ArraySource(image, mask, sar)
    sink = ArraySink(image.shape[0], *image.shape[1:])
    iter_tiles(model, source, sink, tile=tile, overlap=overlap, batch_size=batch_size, device=device, amp=amp,
               progress=progress, max_memory=max_memory)
    warn_non_finite(source.name, int((~finite_mask(source.image)).sum()))
    return np.where(source.mask[None], sink.out, source.image)


def warn_non_finite(name: str, count: int) -> None:
    if count:
        warnings.warn(f"{name}: {count} pixel(s) hold NaN or infinity; they were treated as nodata and left as they "
                      f"were", stacklevel=3)


def restore_file(
    model: nn.Module,
    src: str | Path,
    dst: str | Path,
    *,
    bands: list[int] | str | None = None,
    scale: float | None = None,
    sar: str | Path | None = None,
    align: bool = False,
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    amp: bool = False,
    overwrite: bool = False,
    progress: bool | Callable = True,
    expected_bands: tuple[int, ...] | None = None,
    max_memory: float | None = None,
) -> Path:
    """Restore a raster file into `dst` (same format unless the extension says otherwise), window by window.

    Everything a user can get wrong is checked before the first tile: options, output path and format, bands, SAR.
    With `max_memory` (MB) the process stays under it: tiles per batch and, if need be, the tile side shrink."""
    check_tiling(tile, overlap, batch_size, max_memory)
    dst = check_output_path(src, dst, overwrite)
    info = inspect_raster(src, bands, scale)
    if expected_bands is not None and len(info.bands) not in expected_bands:
        raise RasterError(
            f"{src}: the method takes {' or '.join(map(str, expected_bands))} band(s), got {len(info.bands)}; "
            f"select bands with --bands (e.g. --bands 3,2,1)"
        )
    sar_bands = model_sar_bands(model)
    if sar is not None and sar_bands is None:
        raise RasterError(f"{type(model).__name__} takes no SAR scene; drop --sar {sar} (sar=)")
    # GDAL's block cache defaults to 5 % of RAM and fills with written blocks as the scene streams through; a fixed
    # cap keeps peak memory set by the tile size rather than by the scene size.
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024):  # bytes: rasterio passes it to GDALSetCacheMax
        return _restore_file(model, info, dst, sar, align, sar_bands, tile, overlap, batch_size, device, amp,
                             progress, overwrite, max_memory)


def _restore_file(model, info, dst, sar, align, sar_bands, tile, overlap, batch_size, device, amp, progress,
                  overwrite, max_memory) -> Path:
    source = RasterSource(info, sar_path=sar, align=align, sar_bands=sar_bands)
    try:
        with RasterWriter(info, dst, overwrite=overwrite) as writer:
            sink = RasterSink(info, writer)
            iter_tiles(model, source, sink, tile=tile, overlap=overlap, batch_size=batch_size, device=device, amp=amp,
                       progress=progress, max_memory=max_memory)
            writer.commit()
    finally:
        source.close()
    warn_non_finite(str(info.path), sink.non_finite)
    return dst
