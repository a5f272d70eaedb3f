"""On-the-fly synthetic training pairs from any clean imagery.

Each item is a random crop of a clean image (a folder searched recursively, a file, or a list of either), randomly
flipped/rotated, then degraded by haze, sand-dust or clouds (:mod:`rsrestore.physics`). Everything an item draws comes
from a generator seeded with ``sample_seed(seed, epoch, index)``, so an epoch replays identically whatever the
worker count or visiting order, and :meth:`SyntheticDataset.set_epoch` gives each epoch fresh crops and degradations.

Items are dicts of (C, H, W) float32 tensors in [0, 1]:

* ``input`` (degraded) and ``target`` (clean crop), always;
* ``phi`` for dust: the AOSR-Net Eq. 5 target, ``target = phi * (input - 1.6) + 1`` exactly;
* ``mask`` (1, H, W), 0/1, for clouds;
* ``meta``: ``name``, ``path``, ``index``, ``kind``, ``preset``, ``window`` (row, col, h, w in file pixels, before
  padding), ``pad``, ``rot90``, ``hflip``, ``seed``, the drawn ``params`` and ``sensor`` (the sensor and file effects
  drawn, or None; only when ``sensor`` is on) and ``crop`` (the zoom, angle, gains, stretch, no-data share and bands
  of the clean crop; only when a crop option is on). An item kept clean (``clean_fraction``) has ``input`` equal to
  ``target`` and preset ``"clean"``.

With ``kind="mixed"``, ``clean_fraction`` or ``sensor``, items of one batch may carry different keys or parameters;
use ``collate_fn=SyntheticDataset.collate``, which stacks the tensors every item has and keeps ``meta`` as a list (the
trainer's collate does the same). Otherwise the default collate works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..physics.noise import randint, uniform
from ..physics.sanddust import PHI_ALPHA, PHI_BETA, phi_from_clean
from ..physics.sensor import degrade_sensor, sensor_setting
from .clean_crops import CleanCrops, remove_veil
from .common import check_bands
from ..synthesize import (
    KINDS,
    draw_preset,
    find_images,
    resolve_presets,
    sample_params,
    sample_seed,
    synthesize,
)

__all__ = ["SyntheticDataset"]

_TENSOR_KEYS = ("input", "target", "phi", "mask")


class SyntheticDataset(Dataset):
    """Synthetic degraded/clean pairs, drawn reproducibly per (seed, epoch, index).

    Args:
        sources: folder(s) and/or image files (png, jpg, tif) of clean imagery.
        kind: 'haze' | 'dust' | 'cloud' | 'mixed' (a kind drawn uniformly per item).
        preset: a preset of `kind` (see ``rsrestore.synthesize.PRESETS``), a group of them (``PRESET_GROUPS``, e.g.
            'realistic') or a list of presets and groups, each item drawing one uniformly; None draws among the
            'classic' group (haze: thin / moderate / thick).
        size: side of the square crops; smaller images are reflect-padded up to it.
        length: items per epoch (default: one per source file). Item i reads file ``i % len(files)``.
        seed: base seed.
        flip: random horizontal mirror and quarter turns (the 8 dihedral moves) before degradation.
        bands: 1-based band numbers to keep, e.g. ``[1, 2, 3]`` or ``"1,2,3"`` (default all bands; all files must
            then have the same count), as ``rsrestore restore --bands`` and the other datasets count them; or
            ``"rgb"``: each file's own red, green and blue (see :mod:`rsrestore.data.clean_crops`).
        scale: divisor mapping file values to [0, 1] (default by dtype and format, see :mod:`rsrestore.raster`).
        wavelengths_nm: band centres for band counts without a default (see :mod:`rsrestore.physics.haze`).
        shadow: cast shadows of thick clouds.
        crop: alias of `size`, the option name the other datasets use (so training configs can swap datasets).
        clean_fraction: share of items (drawn per item) whose input is the clean crop itself, untouched (meta preset
            'clean'), so a learned model also learns to leave clear content alone.
        sensor: chance (True = 1) that an item's degraded input also goes through the sensor and the file (blur,
            noise, JPEG, band misregistration; :func:`rsrestore.physics.sensor.degrade_sensor`); the target never.
            A mapping sets the effects too: ``{probability: 0.5, jpeg_probability: 0.8}`` (any
            :class:`~rsrestore.physics.sensor.SensorPreset` field).
        more_sources: more folders or files of clean images, besides `sources` (a training config's ``root``).
        balance: each item first draws one of the sources (`sources` and `more_sources`) in turn, then a file of it
            at random, so a source of 10,000 tiles does not drown one of ten scenes; default: item i reads file
            ``i % len(files)``.
        band_map, stretch, max_invalid, scale_jitter, rotate, brightness_jitter, colour_jitter: how clean crops are
            cut (:class:`rsrestore.data.clean_crops.CleanCrops`): bands by file-name pattern, a per-file stretch of
            16-bit data ('none' | 'auto' | 'all'), the no-data share that makes a window be drawn again, a zoom range
            such as [0.5, 2.0], any-angle rotation, and brightness / per-band gain jitter (0.1 = +-10 %).
        dark_object: targets without their file's veil (:func:`rsrestore.data.clean_crops.remove_veil`, the level
            scaled by the drawn gains); inputs are made from the crop as it is. Clean items keep the crop as it is.
        clean_veil_free: with `dark_object`, clean items show the crop without its veil as both input and target
            (a veil-free clear scene stays as it is), so no item teaches a model to keep a veil.
        veil_free_inputs: with `dark_object`, the share of degraded items synthesised over the crop without its veil
            rather than as it is. A source whose shadows are black (Landsat, Sentinel-2 surface reflectance) under a
            faint veil looks unlike any aerial source with its own veil under one; these items show that case.
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        kind: str = "haze",
        preset: str | Sequence[str] | None = None,
        size: int = 256,
        length: int | None = None,
        seed: int = 0,
        flip: bool = True,
        bands: Sequence[int] | str | None = None,
        *,
        scale: float | None = None,
        wavelengths_nm: Sequence[float] | None = None,
        shadow: bool = True,
        crop: int | None = None,
        clean_fraction: float = 0.0,
        sensor: bool | float | dict = False,
        more_sources: Sequence[str | Path] | None = None,
        balance: bool = False,
        band_map: dict[str, Sequence[int]] | None = None,
        stretch: str = "none",
        max_invalid: float = 0.05,
        scale_jitter: Sequence[float] | None = None,
        rotate: bool = False,
        brightness_jitter: float = 0.0,
        colour_jitter: float = 0.0,
        dark_object: bool = False,
        clean_veil_free: bool = False,
        veil_free_inputs: float = 0.0,
    ) -> None:
        if crop is not None:
            size = crop
        if kind not in (*KINDS, "mixed"):
            raise ValueError(f"kind must be one of {', '.join((*KINDS, 'mixed'))}; got {kind!r}")
        if preset is not None:
            if kind == "mixed":
                raise ValueError("preset must be None with kind='mixed' (each kind draws among its own presets)")
        self.presets = {k: resolve_presets(k, preset if k == kind else None) for k in KINDS}
        clean_fraction = _probability("clean_fraction", clean_fraction)
        sensor, self.sensor_preset = sensor_setting(sensor)
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8; got {size!r}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be a positive int or None; got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        if more_sources is not None and (isinstance(more_sources, (str, Path)) or not all(
                isinstance(m, (str, Path)) for m in more_sources)):
            raise ValueError(f"more_sources must be a list of folders or files; got {more_sources!r}")
        self.files = find_images(_as_list(sources) + list(more_sources or []))
        self.kind = kind
        self.preset = preset
        self.size = size
        self.length = len(self.files) if length is None else length
        self.seed = seed
        self.flip = bool(flip)
        self.bands = "rgb" if bands == "rgb" else check_bands(bands)
        self.scale = scale
        self.wavelengths_nm = None if wavelengths_nm is None else [float(w) for w in wavelengths_nm]
        self.shadow = shadow
        self.clean_fraction = clean_fraction
        self.sensor = sensor
        self.epoch = 0
        if not isinstance(dark_object, bool):
            raise ValueError(f"dark_object must be true or false; got {dark_object!r}")
        self.dark_object = dark_object
        if not isinstance(clean_veil_free, bool):
            raise ValueError(f"clean_veil_free must be true or false; got {clean_veil_free!r}")
        if clean_veil_free and not (dark_object and clean_fraction > 0):
            raise ValueError("clean_veil_free needs dark_object: true and a clean_fraction above 0")
        self.clean_veil_free = clean_veil_free
        if not 0.0 <= float(veil_free_inputs) <= 1.0 or (veil_free_inputs and not dark_object):
            raise ValueError(f"veil_free_inputs must be a share in [0, 1] and needs dark_object: true; "
                             f"got {veil_free_inputs!r}")
        self.veil_free_inputs = float(veil_free_inputs)
        crop_options = {"band_map": band_map, "stretch": stretch, "scale_jitter": scale_jitter, "rotate": rotate,
                        "brightness_jitter": brightness_jitter, "colour_jitter": colour_jitter}
        self.crops = CleanCrops(self.files, size, self.bands, scale, max_invalid=max_invalid, **crop_options)
        # the drawn zoom, angle, gains ... go into meta when any of these is on
        self._crop_options = any(v not in (None, False, 0, 0.0, "none", {}) for v in crop_options.values())
        self.balance = bool(balance)
        self.groups = self._groups(sources, more_sources) if self.balance else []

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and degradations the next items draw."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int; got {epoch!r}")
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} items")
        index %= self.length
        seed = sample_seed(self.seed, self.epoch, index)
        g = torch.Generator().manual_seed(seed)
        fi = index % len(self.files)
        if self.balance:
            group = self.groups[index % len(self.groups)]
            fi = group[randint(g, len(group))]
        path = self.files[fi]

        clean, cut = self.crops.crop(fi, g)
        rot, mirror = 0, False
        if self.flip:
            rot = randint(g, 4)
            mirror = bool(randint(g, 2))
            if mirror:
                clean = clean.flip(-1)
            if rot:
                clean = torch.rot90(clean, rot, dims=(-2, -1))
            clean = clean.contiguous()

        kind = KINDS[randint(g, len(KINDS))] if self.kind == "mixed" else self.kind
        # Draws that a feature switched off would make are skipped, so items stay as they were without it.
        keep_clean = self.clean_fraction > 0 and bool(uniform(g, 1)[0] < self.clean_fraction)
        item: dict[str, Any] = {"target": clean}
        sensor_params = None
        if keep_clean:
            preset, params = "clean", {}
            item["input"] = clean.clone()
            if kind == "cloud":
                item["mask"] = torch.zeros_like(clean[:1])
        else:
            preset = draw_preset(g, self.presets[kind])
            kw: dict[str, Any] = {"wavelengths_nm": self.wavelengths_nm}
            if kind == "cloud":
                kw["shadow"] = self.shadow
            scene = clean
            if self.veil_free_inputs > 0 and bool(uniform(g, 1)[0] < self.veil_free_inputs):
                scene = remove_veil(clean, self._veil_levels(fi, cut))[0]
            out = synthesize(scene[None], kind, g, preset=preset, **kw)
            params = sample_params(out["params"], 0)
            degraded = out["input"]
            if self.sensor > 0 and bool(uniform(g, 1)[0] < self.sensor):
                degraded, drawn = degrade_sensor(degraded, g, self.sensor_preset)
                sensor_params = sample_params(drawn, 0)
            item["input"] = degraded[0].contiguous()
            if kind == "cloud":
                item["mask"] = out["mask"][0].contiguous()
        veil = None
        if self.dark_object and (not keep_clean or self.clean_veil_free):  # else a clear scene is left as it is
            item["target"], veil = remove_veil(clean, self._veil_levels(fi, cut))
            if keep_clean:
                item["input"] = item["target"].clone()
        if kind == "dust":
            # Eq. 5 of AOSR-Net maps this input (clean, or after the sensor) to the target exactly.
            item["phi"] = phi_from_clean(item["target"], item["input"], PHI_ALPHA, PHI_BETA).contiguous()
        item["meta"] = {
            "name": f"{path.stem}_{index}",
            "path": str(path),
            "index": index,
            "kind": kind,
            "preset": preset,
            "window": cut["window"],
            "pad": cut["pad"],
            "rot90": rot,
            "hflip": mirror,
            "seed": seed,
            "params": params,
        }
        if self.sensor > 0:
            item["meta"]["sensor"] = sensor_params
        if veil is not None:
            item["meta"]["dark_object"] = round(veil, 6)
        if self._crop_options:
            item["meta"]["crop"] = {k: cut[k] for k in ("zoom", "angle", "gains", "stretch", "invalid", "bands")}
        return item

    def _veil_levels(self, fi: int, cut: dict[str, Any]) -> Tensor:
        """The veil of file ``fi`` per band (its dark-object levels), scaled by the crop's drawn gains."""
        gains = cut["gains"]
        return torch.from_numpy(self.crops.dark_levels(fi)) * (1.0 if gains is None else torch.tensor(gains))

    def _groups(self, sources: Any, more_sources: Any) -> list[list[int]]:
        """Indices into ``self.files`` of each given source (a folder or a file), in the order given."""
        where = {f: i for i, f in enumerate(self.files)}
        given = _as_list(sources) + list(more_sources or [])
        return [sorted({where[f] for f in find_images(source)}) for source in given]

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack the tensors that every item of `batch` has; ``meta`` stays a list of dicts."""
        out: dict[str, Any] = {}
        for key in _TENSOR_KEYS:
            if all(key in item for item in batch):
                out[key] = torch.stack([item[key] for item in batch])
        out["meta"] = [item["meta"] for item in batch]
        return out


def _probability(name: str, value: bool | float) -> float:
    """A chance in [0, 1] from a YAML value (true / false / a number)."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (or true / false); got {value!r}")
    return float(value)


def _as_list(sources: Any) -> list:
    return [sources] if isinstance(sources, (str, Path)) else list(sources)
