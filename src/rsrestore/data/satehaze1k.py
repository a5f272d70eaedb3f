"""SateHaze1K: synthetic hazy / clear satellite image pairs at three haze levels.

Huang, Li, Li, Chen and Yang, "Single Satellite Optical Imagery Dehazing using SAR Image Prior Based on conditional
Generative Adversarial Networks", WACV 2020. 400 pairs of 512x512 RGB images per haze level (thin, moderate, thick),
released as 320 train / 35 valid / 45 test.

Two layouts are read, as they come when downloaded:

- the original release::

      root/Haze1k_{thin,moderate,thick}/dataset/{train,valid,test}/input/N-inputs.png
      root/Haze1k_{thin,moderate,thick}/dataset/{train,valid,test}/target/N-targets.png

- the common repack::

      root/Haze1k_{thin,moderate,thick}/{train,test}/{input,target}/...

An input is paired with the target of the same number ``N`` (the leading integer of the stem); stems without a
leading number pair by their full stem. ``root`` may also be the ``Haze1k_<subset>`` folder itself, or a folder one
level above the ``Haze1k_*`` folders (as archives often unpack into ``Haze1k/Haze1k_*``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    RestorationDataset,
    check_choice,
    check_root,
    find_one_subdir,
    list_images,
    match_by_stem,
    require_pairs,
)

SUBSETS: tuple[str, ...] = ("thin", "moderate", "thick")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}
_LEADING_NUMBER = re.compile(r"^(\d+)")


def pair_key(path: Path) -> int | str:
    """``N`` of ``N-inputs.png`` / ``N-targets.png`` (or of ``N.png``), else the stem."""
    m = _LEADING_NUMBER.match(path.stem)
    return int(m.group(1)) if m else path.stem


def _subset_folder(root: Path, subset: str) -> Path | None:
    wanted = f"haze1k_{subset}"
    if root.name.lower() == wanted:
        return root
    for parent in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for child in parent.iterdir():
            if child.is_dir() and child.name.lower() == wanted:
                return child
    return None


def _split_folder(subset_dir: Path, split: str) -> Path:
    candidates = [subset_dir / "dataset", subset_dir]
    for base in candidates:
        if not base.is_dir():
            continue
        for name in _SPLIT_ALIASES[split]:
            if (base / name).is_dir():
                return base / name
    found = sorted(
        ("dataset/" if base != subset_dir else "") + p.name
        for base in candidates
        if base.is_dir()
        for p in base.iterdir()
        if p.is_dir() and p.name != "dataset"
    )
    raise FileNotFoundError(
        f"no {split!r} split in {subset_dir}: looked for dataset/{split}/ and {split}/"
        f" (found: {', '.join(found) or 'nothing'})"
    )


class SateHaze1KDataset(RestorationDataset):
    """SateHaze1K pairs in the original or the repacked layout (see the module docstring).

    Args:
        root: folder holding ``Haze1k_{thin,moderate,thick}`` (or one of them).
        split: ``"train"``, ``"valid"`` (``"val"`` accepted) or ``"test"``; the repack has no ``valid``.
        subset: ``"thin"``, ``"moderate"``, ``"thick"`` or ``"all"`` (the three concatenated in that order).
        crop, flip, seed, bands, scale: see :class:`~rsrestore.data.common.RestorationDataset`.

    Items: ``{"input", "target", "valid", "meta": {"name", "path", "target_path", "subset"}}``, RGB in ``[0, 1]``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        subset: str = "all",
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
        bands: Sequence[int] | str | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(crop=crop, flip=flip, seed=seed, bands=bands, scale=scale)
        self.root = check_root(root)
        split = "valid" if split in ("val", "validation") else split
        check_choice("split", split, SPLITS)
        check_choice("subset", subset, (*SUBSETS, "all"))
        self.split, self.subset = split, subset
        wanted = SUBSETS if subset == "all" else (subset,)
        folders = {s: _subset_folder(self.root, s) for s in wanted}
        missing = [s for s, f in folders.items() if f is None]
        if missing:
            raise FileNotFoundError(
                f"no Haze1k_{{{','.join(missing)}}} folder under {self.root}"
                + (" (pass subset= one of the levels you have)" if subset == "all" else "")
            )
        for name, folder in folders.items():
            assert folder is not None
            split_dir = _split_folder(folder, split)
            input_dir = find_one_subdir(split_dir, ("input", "hazy"), "input")
            target_dir = find_one_subdir(split_dir, ("target", "gt", "GT"), "target")
            inputs = list_images(input_dir)
            if not inputs:
                raise FileNotFoundError(f"no image files in {input_dir}")
            matched = match_by_stem(inputs, list_images(target_dir), key=pair_key)
            require_pairs(matched, input_dir, target_dir)
            self.samples.extend({"input": i, "target": t, "subset": name} for i, t in matched.pairs)

    def load(self, index: int) -> dict[str, Any]:
        entry = self.samples[index]
        sample, _ = self.read_pair(entry["input"], entry["target"])
        return {
            **sample,
            "meta": {
                "name": entry["input"].stem,
                "path": str(entry["input"]),
                "target_path": str(entry["target"]),
                "subset": entry["subset"],
            },
        }
