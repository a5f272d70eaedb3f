"""SEN12MS-CR: co-registered Sentinel-1 SAR, cloudy and cloud-free Sentinel-2 patches.

Ebel, Meraner, Schmitt and Zhu, "Multisensor Data Fusion for Cloud Removal in Global and All-Season Sentinel-2
Imagery", IEEE TGRS 59(7), 2021. 256x256 patches at 10 m from 169 scenes in four seasonal sets
(``ROIs1158_spring``, ``ROIs1868_summer``, ``ROIs1970_fall``, ``ROIs2017_winter``).

Layout, as the archives unpack::

    root/ROIs1970_fall_s1/s1_139/ROIs1970_fall_s1_139_p839.tif                 Sentinel-1 VV, VH (float32 dB)
    root/ROIs1970_fall_s2/s2_139/ROIs1970_fall_s2_139_p839.tif                 cloud-free Sentinel-2, 13 bands uint16
    root/ROIs1970_fall_s2_cloudy/s2_cloudy_139/ROIs1970_fall_s2_cloudy_139_p839.tif   cloudy Sentinel-2

``root`` may also be one level above those folders. Sentinel-2 band order: B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9,
B10, B11, B12 (RGB = bands 4, 3, 2, counted from 1 as everywhere in rsrestore).

Files are read through :mod:`rsrestore.raster`, as ``rsrestore restore`` reads them. Values follow DSen2-CR
(Meraner et al., ISPRS J. 2020), mapped to ``[0, 1]``:

- optical: divided by 10000, as ``restore`` divides a uint16 GeoTIFF, then clipped to ``[0, 1]`` (DSen2-CR clips the
  digital numbers to ``[0, 10000]``; thick clouds exceed 10000, and the published models saw only clipped values);
- SAR: VV clipped to ``[-25, 0]`` dB and VH to ``[-32.5, 0]`` dB, then ``(x - low) / (0 - low)``; NaNs (holes in a
  few S1 patches) become 0, as in the UnCRtainTS reference loader (Ebel et al., CVPRW 2023). This is
  :func:`rsrestore.raster.sar_to_unit`, which ``restore --sar`` applies too.

Splits: the release has none on disk. ``"test"`` and ``"val"`` are the scenes held out by the UnCRtainTS reference
loader for SEN12MS-CR (:data:`TEST_SCENES`, :data:`VAL_SCENES`, matched here by exact scene number); ``"train"`` is
every other scene; ``"all"`` is everything.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..raster import SAR_DB_RANGES, RasterError, sar_to_unit
from .common import RestorationDataset, check_choice, check_root, natural_key, read_image, to_tensor

SPLITS: tuple[str, ...] = ("all", "train", "val", "test")
MISSING_POLICIES: tuple[str, ...] = ("skip", "raise")
RGB_BANDS: tuple[int, int, int] = (4, 3, 2)
"""B4, B3, B2: 1-based band numbers in the 13-band order."""

OPTICAL_SCALE = 10000.0
"""Sentinel-2 digital numbers per unit reflectance; the default scale of a uint16 GeoTIFF in rsrestore.raster."""
SAR_CLIP_DB = SAR_DB_RANGES
"""(low, high) dB of VV and VH."""

TEST_SCENES: dict[str, frozenset[str]] = {
    "ROIs1158_spring": frozenset({"106", "123", "140", "31", "44"}),
    "ROIs1868_summer": frozenset({"119", "73"}),
    "ROIs1970_fall": frozenset({"139"}),
    "ROIs2017_winter": frozenset({"108", "63"}),
}
VAL_SCENES: dict[str, frozenset[str]] = {
    "ROIs1158_spring": frozenset({"17"}),
    "ROIs1868_summer": frozenset({"17", "19", "80", "127"}),
    "ROIs1970_fall": frozenset({"65"}),
    "ROIs2017_winter": frozenset({"22", "84", "107", "130"}),
}

_CLOUDY_DIR = re.compile(r"^(ROIs\d+_[A-Za-z]+)_s2_cloudy$")
_SCENE_DIR = re.compile(r"^s2_cloudy_(\d+)$")


def scene_split(roi: str, scene: str) -> str:
    """``"test"``, ``"val"`` or ``"train"`` for a scene (e.g. ``("ROIs1970_fall", "139")`` is test)."""
    if scene in TEST_SCENES.get(roi, ()):
        return "test"
    if scene in VAL_SCENES.get(roi, ()):
        return "val"
    return "train"


def clip_optical(values: torch.Tensor) -> torch.Tensor:
    """DSen2-CR's optical convention on reflectance (digital numbers / 10000): clip to ``[0, 1]``, NaN to 0."""
    return torch.nan_to_num(values.clamp_(0.0, 1.0), nan=0.0)


def scale_sar(raw: np.ndarray, path: str | Path = "SAR") -> np.ndarray:
    """Sentinel-1 ``(2, H, W)`` VV, VH backscatter in dB to ``[0, 1]`` (see :data:`SAR_CLIP_DB`), NaN to 0."""
    if raw.ndim != 3 or raw.shape[0] != 2:
        raise RasterError(f"{path} must have 2 bands (VV, VH in dB); it has {raw.shape[0] if raw.ndim == 3 else 0}")
    return sar_to_unit(raw)


def _season_parents(root: Path) -> list[tuple[Path, str]]:
    """(folder holding the seasonal folders, ROI name) for every ``ROIs*_s2_cloudy`` folder found."""

    def scan(folder: Path) -> list[tuple[Path, str]]:
        out = []
        for child in folder.iterdir():
            m = _CLOUDY_DIR.match(child.name)
            if m and child.is_dir():
                out.append((folder, m.group(1)))
        return out

    found = scan(root)
    if not found:
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            found.extend(scan(child))
    return sorted(found, key=lambda item: natural_key(item[1]))


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


class SEN12MSCRDataset(RestorationDataset):
    """SEN12MS-CR triplets (see the module docstring for layout, value scaling and splits).

    Args:
        root: folder holding the ``ROIs*_{s1,s2,s2_cloudy}`` folders (or one level above them).
        split: ``"all"``, ``"train"``, ``"val"`` or ``"test"``.
        missing_target: ``"skip"`` leaves out patches whose cloud-free target (or, with ``with_sar``, SAR) file
            is absent, with one warning giving the count; ``"raise"`` raises :class:`FileNotFoundError`.
        with_sar: load Sentinel-1 as ``"sar"``.
        rgb_only: keep bands B4, B3, B2 (band numbers 4, 3, 2) only; exclusive with ``bands``.
        crop, flip, seed, bands: see :class:`~rsrestore.data.common.RestorationDataset` (``bands`` are 1-based
            numbers of the 13 optical bands; SAR is never subset).

    Items: ``{"input": cloudy (13|len(bands), H, W), "target": cloud-free, "valid": (H, W) bool, "sar"?: (2, H, W),
    "mask"?: (1, H, W), "meta": {"name", "path", "target_path", "sar_path"?, "mask_path"?, "roi", "scene", "patch",
    "crs", "transform", ...}}``; ``mask`` (1 = cloud or shadow) where a ``ROIs*_mask/mask_<scene>/`` file exists
    for the patch, as :mod:`rsrestore.train.cloud_scenes` writes for synthetic clouds (not part of the release);
    ``crs`` and ``transform`` are those of the cloudy patch (the transform shifted to the crop window).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        *,
        missing_target: str = "skip",
        with_sar: bool = True,
        rgb_only: bool = False,
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
        bands: Sequence[int] | str | None = None,
    ) -> None:
        check_choice("split", split, SPLITS)
        check_choice("missing_target", missing_target, MISSING_POLICIES)
        if rgb_only and bands is not None:
            raise ValueError("pass either rgb_only=True or bands=..., not both")
        super().__init__(crop=crop, flip=flip, seed=seed, bands=list(RGB_BANDS) if rgb_only else bands)
        self.root = check_root(root)
        self.split = split
        self.missing_target = missing_target
        self.with_sar = bool(with_sar)
        self.rgb_only = bool(rgb_only)

        seasons = _season_parents(self.root)
        if not seasons:
            raise FileNotFoundError(
                f"no SEN12MS-CR folders under {self.root}: expected ROIs<id>_<season>_s2_cloudy/ next to"
                " ROIs<id>_<season>_s2/ and ROIs<id>_<season>_s1/"
                " (e.g. ROIs1970_fall_s2_cloudy/s2_cloudy_139/ROIs1970_fall_s2_cloudy_139_p839.tif)"
            )
        no_target: list[Path] = []
        no_sar: list[Path] = []
        n_seen = 0
        for parent, roi in seasons:
            cloudy_root = parent / f"{roi}_s2_cloudy"
            scenes = []
            for child in cloudy_root.iterdir():
                m = _SCENE_DIR.match(child.name)
                if m and child.is_dir():
                    scenes.append(m.group(1))
            for scene in sorted(scenes, key=int):
                if split != "all" and scene_split(roi, scene) != split:
                    continue
                patch_re = re.compile(rf"^{re.escape(roi)}_s2_cloudy_{scene}_p(\d+)\.tif$")
                patches = sorted(
                    (int(m.group(1)) for f in _listing(cloudy_root / f"s2_cloudy_{scene}") if (m := patch_re.match(f))),
                )
                if not patches:
                    continue
                target_dir = parent / f"{roi}_s2" / f"s2_{scene}"
                sar_dir = parent / f"{roi}_s1" / f"s1_{scene}"
                mask_dir = parent / f"{roi}_mask" / f"mask_{scene}"
                targets, sars, masks = _listing(target_dir), _listing(sar_dir), _listing(mask_dir)
                for patch in patches:
                    n_seen += 1
                    entry = {
                        "input": cloudy_root / f"s2_cloudy_{scene}" / f"{roi}_s2_cloudy_{scene}_p{patch}.tif",
                        "target": target_dir / f"{roi}_s2_{scene}_p{patch}.tif",
                        "sar": sar_dir / f"{roi}_s1_{scene}_p{patch}.tif",
                        "roi": roi,
                        "scene": scene,
                        "patch": str(patch),
                    }
                    mask_name = f"{roi}_mask_{scene}_p{patch}.tif"
                    if mask_name in masks:
                        entry["mask"] = mask_dir / mask_name
                    complete = True
                    if entry["target"].name not in targets:
                        no_target.append(entry["target"])
                        complete = False
                    if self.with_sar and entry["sar"].name not in sars:
                        no_sar.append(entry["sar"])
                        complete = False
                    if complete:
                        self.samples.append(entry)

        n_bad = n_seen - len(self.samples)
        if n_bad:
            parts = []
            if no_target:
                parts.append(f"{len(no_target)} without a cloud-free target (e.g. {no_target[0]})")
            if no_sar:
                parts.append(f"{len(no_sar)} without SAR (e.g. {no_sar[0]})")
            detail = "; ".join(parts)
            if missing_target == "raise":
                raise FileNotFoundError(
                    f"{n_bad} of {n_seen} SEN12MS-CR patches in split {split!r} are incomplete: {detail};"
                    " pass missing_target='skip' to leave them out"
                )
            warnings.warn(
                f"skipped {n_bad} of {n_seen} SEN12MS-CR patches in split {split!r}: {detail}", stacklevel=2
            )
        if not self.samples:
            raise FileNotFoundError(
                f"no complete SEN12MS-CR patches in split {split!r} under {self.root}"
                f" ({n_seen} cloudy patch(es) found in this split)"
            )

    def load(self, index: int) -> dict[str, Any]:
        entry = self.samples[index]
        sample: dict[str, Any]
        # The scale is the dataset's (stated, not left to the file's dtype), then DSen2-CR's clip (module docstring).
        sample, info = self.read_pair(entry["input"], entry["target"], scale=OPTICAL_SCALE)
        sample["input"] = clip_optical(sample["input"])
        sample["target"] = clip_optical(sample["target"])
        meta: dict[str, Any] = {
            "name": entry["input"].stem,
            "path": str(entry["input"]),
            "target_path": str(entry["target"]),
            "roi": entry["roi"],
            "scene": entry["scene"],
            "patch": entry["patch"],
            "crs": info.crs.to_string() if info.crs is not None else "",
            "transform": tuple(float(v) for v in info.transform[:6]),
        }
        if "mask" in entry:
            mask, _, _ = read_image(entry["mask"], scale=1.0)
            sample["mask"] = to_tensor(mask[:1] > 0)
            meta["mask_path"] = str(entry["mask"])
        if self.with_sar:
            sar_db, _, _ = read_image(entry["sar"], scale=1.0)  # backscatter in dB, as stored
            sample["sar"] = to_tensor(scale_sar(sar_db, entry["sar"]))
            meta["sar_path"] = str(entry["sar"])
        sample["meta"] = meta
        return sample
