"""Generic paired folders: degraded inputs and clean targets matched by file stem.

Layout (``<split>/`` is optional)::

    root/[<split>/]<input>/NAME.ext     <input>  is one of input | hazy | cloudy | dusty | cloud
    root/[<split>/]<target>/NAME.ext    <target> is one of target | gt | GT | clear | label
    root/[<split>/]phi/NAME.tif|.npy    optional, float32, loaded as "phi" (e.g. the sand-dust variable)
    root/[<split>/]mask/NAME.png|...    optional, loaded as "mask" (1, H, W) in [0, 1]

This is also the layout the project's synthetic-pair writer produces. Extensions may differ between an input and its
target (``a.png`` pairs ``a.jpg``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    MASK_SUFFIXES,
    PHI_SUFFIXES,
    RestorationDataset,
    check_root,
    find_companions,
    find_one_subdir,
    find_subdirs,
    list_images,
    match_by_stem,
    read_mask,
    read_phi,
    require_pairs,
    to_tensor,
)

INPUT_DIR_NAMES: tuple[str, ...] = ("input", "hazy", "cloudy", "dusty", "cloud")
TARGET_DIR_NAMES: tuple[str, ...] = ("target", "gt", "GT", "clear", "label")


def resolve_split_dir(root: Path, split: str | None, input_dir_names: Sequence[str]) -> Path:
    """``root/<split>`` when a split is asked for, else ``root``; errors say which splits exist."""
    if split is not None:
        if not isinstance(split, str) or not split or Path(split).name != split:
            raise ValueError(f"split must be a folder name such as 'train' or 'test', got {split!r}")
        base = root / split
        if not base.is_dir():
            options = sorted(p.name for p in root.iterdir() if p.is_dir() and find_subdirs(p, input_dir_names))
            raise FileNotFoundError(
                f"split folder {base} does not exist; splits found under {root}: {', '.join(options) or 'none'}"
            )
        return base
    if not find_subdirs(root, input_dir_names):
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and find_subdirs(p, input_dir_names))
        if splits:
            raise FileNotFoundError(
                f"{root} has no input folder ({'|'.join(input_dir_names)}) but its subfolders"
                f" {', '.join(splits)} do: pass split= one of them"
            )
    return root


class PairedDataset(RestorationDataset):
    """Paired degraded/clean images from two folders matched by stem (see the module docstring for the layout).

    Args:
        root: dataset folder.
        split: optional subfolder of ``root`` holding the input/target folders (e.g. ``"train"``).
        input_dirs, target_dirs: accepted folder names, in order of preference; exactly one of each must exist.
        load_phi, load_mask: read ``phi/`` and ``mask/`` when those folders exist (every sample must have one).
        crop, flip, seed, bands, scale: see :class:`~rsrestore.data.common.RestorationDataset`.

    Items: ``{"input", "target", "valid", "phi"?, "mask"?, "meta": {"name", "path", "target_path", ...}}``, images
    ``(C, H, W)`` float32 scaled as :mod:`rsrestore.raster` scales them, ``valid`` ``(H, W)`` bool.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
        bands: Sequence[int] | str | None = None,
        scale: float | None = None,
        input_dirs: Sequence[str] = INPUT_DIR_NAMES,
        target_dirs: Sequence[str] = TARGET_DIR_NAMES,
        load_phi: bool = True,
        load_mask: bool = True,
    ) -> None:
        super().__init__(crop=crop, flip=flip, seed=seed, bands=bands, scale=scale)
        self.root = check_root(root)
        self.split = split
        base = resolve_split_dir(self.root, split, input_dirs)
        self.input_dir = find_one_subdir(base, input_dirs, "input")
        self.target_dir = find_one_subdir(base, target_dirs, "target")
        inputs = list_images(self.input_dir)
        targets = list_images(self.target_dir)
        if not inputs:
            raise FileNotFoundError(f"no image files in {self.input_dir}")
        matched = match_by_stem(inputs, targets)
        require_pairs(matched, self.input_dir, self.target_dir)
        stems = [inp.stem for inp, _ in matched.pairs]
        phi_dir = base / "phi"
        mask_dir = base / "mask"
        phis = find_companions(stems, phi_dir, PHI_SUFFIXES, "phi") if load_phi and phi_dir.is_dir() else None
        masks = find_companions(stems, mask_dir, MASK_SUFFIXES, "mask") if load_mask and mask_dir.is_dir() else None
        for i, (inp, tgt) in enumerate(matched.pairs):
            entry: dict[str, Path] = {"input": inp, "target": tgt}
            if phis is not None:
                entry["phi"] = phis[i]
            if masks is not None:
                entry["mask"] = masks[i]
            self.samples.append(entry)

    def load(self, index: int) -> dict[str, Any]:
        entry = self.samples[index]
        sample: dict[str, Any]
        sample, info = self.read_pair(entry["input"], entry["target"])
        meta: dict[str, Any] = {
            "name": entry["input"].stem,
            "path": str(entry["input"]),
            "target_path": str(entry["target"]),
        }
        if "phi" in entry:
            phi = read_phi(entry["phi"])
            # Phi is per band like the image, so a band selection applies to it too; a single-band map is shared.
            if self.bands is not None and phi.shape[0] == info.count > 1:
                phi = phi[[b - 1 for b in self.bands]]
            sample["phi"] = to_tensor(phi)
        if "mask" in entry:
            sample["mask"] = to_tensor(read_mask(entry["mask"]))
        sample["meta"] = meta
        return sample
