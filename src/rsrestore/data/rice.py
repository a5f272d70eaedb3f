"""RICE: Remote sensing Image Cloud rEmoving dataset.

Lin, Xu, Wang, Wang, Sun and Fu, "A Remote Sensing Image Dataset for Cloud Removal", arXiv:1901.00600 (2019).
RICE1: 500 pairs of 512x512 cloudy / cloud-free images (thin clouds, from Google Earth). RICE2: 512x512 triplets of
cloudy image, cloud-free reference and cloud mask (thick clouds and shadows, from Landsat 8).

Layout, as in the release::

    RICE_DATASET/RICE1/{cloud,label}/N.png
    RICE_DATASET/RICE2/{cloud,label,mask}/N.png

``root`` may be the ``RICE_DATASET`` folder (pass ``version`` when it holds both) or a ``RICE1``/``RICE2`` folder
itself (recognised by its name, or by holding ``cloud/`` and ``label/``; a ``mask/`` folder marks RICE2).

Split: RICE publishes none. This loader sorts the matched stems in natural order (``2`` before ``10``) and takes the
first ``round(train_fraction * n)`` (80 % by default) as ``"train"`` and the rest as ``"test"``; ``"all"`` keeps
every pair. The split is contiguous rather than interleaved, so it depends only on the set of file names: listing
order, file system and Python version cannot change it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    MASK_SUFFIXES,
    RestorationDataset,
    check_choice,
    check_root,
    find_companions,
    find_subdirs,
    list_images,
    match_by_stem,
    natural_key,
    read_mask,
    require_pairs,
    to_tensor,
)

SPLITS: tuple[str, ...] = ("train", "test", "all")
VERSIONS: tuple[int, ...] = (1, 2)


def rice_split(stems: Sequence[str], split: str, train_fraction: float = 0.8) -> list[str]:
    """The stems of ``split`` under the documented deterministic split (see the module docstring)."""
    check_choice("split", split, SPLITS)
    ordered = sorted(stems, key=natural_key)
    if split == "all":
        return ordered
    n_train = math.floor(train_fraction * len(ordered) + 0.5)
    return ordered[:n_train] if split == "train" else ordered[n_train:]


def _version_of_folder(folder: Path) -> int | None:
    name = folder.name.upper()
    if name in ("RICE1", "RICE2"):
        return int(name[-1])
    if (folder / "cloud").is_dir() and (folder / "label").is_dir():
        return 2 if (folder / "mask").is_dir() else 1
    return None


def _resolve_version_dir(root: Path, version: int | None) -> tuple[Path, int]:
    own = _version_of_folder(root)
    if own is not None:
        if version is not None and version != own:
            raise ValueError(f"{root} is a RICE{own} folder but version={version} was asked for")
        return root, own
    children = {v: None for v in VERSIONS}
    for child in root.iterdir():
        if child.is_dir() and child.name.upper() in ("RICE1", "RICE2"):
            children[int(child.name[-1])] = child
    present = [v for v, c in children.items() if c is not None]
    if not present:
        raise FileNotFoundError(
            f"no RICE data under {root}: expected RICE1/ or RICE2/ (each with cloud/ and label/),"
            " or pass the RICE1/RICE2 folder itself"
        )
    if version is None:
        if len(present) > 1:
            raise ValueError(f"{root} holds RICE1 and RICE2: pass version=1 or version=2")
        version = present[0]
    folder = children[version]
    if folder is None:
        raise FileNotFoundError(f"no RICE{version} folder under {root} (found RICE{present[0]})")
    return folder, version


class RICEDataset(RestorationDataset):
    """RICE1 / RICE2 cloud removal pairs (see the module docstring for layout and split).

    Args:
        root: ``RICE_DATASET`` folder, or a ``RICE1`` / ``RICE2`` folder.
        split: ``"train"``, ``"test"`` or ``"all"``.
        version: 1 or 2; None infers it from ``root`` (an error if ``root`` holds both).
        train_fraction: share of the sorted pairs that forms ``"train"``.
        crop, flip, seed, bands, scale: see :class:`~rsrestore.data.common.RestorationDataset`.

    Items: ``{"input", "target", "valid", "mask"? (RICE2, (1, H, W) in [0, 1]), "meta": {"name", "path", "target_path",
    "version"}}``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        version: int | None = None,
        train_fraction: float = 0.8,
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
        bands: Sequence[int] | str | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(crop=crop, flip=flip, seed=seed, bands=bands, scale=scale)
        self.root = check_root(root)
        check_choice("split", split, SPLITS)
        if version is not None:
            check_choice("version", version, VERSIONS)
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
        self.split = split
        self.train_fraction = float(train_fraction)
        folder, self.version = _resolve_version_dir(self.root, version)
        self.folder = folder
        if not find_subdirs(folder, ("cloud",)):
            raise FileNotFoundError(f"no input folder in {folder}: expected cloud/")
        if not find_subdirs(folder, ("label",)):
            raise FileNotFoundError(f"no target folder in {folder}: expected label/")
        input_dir, target_dir = folder / "cloud", folder / "label"
        inputs = list_images(input_dir)
        if not inputs:
            raise FileNotFoundError(f"no image files in {input_dir}")
        matched = match_by_stem(inputs, list_images(target_dir))
        require_pairs(matched, input_dir, target_dir)
        by_stem = {i.stem: (i, t) for i, t in matched.pairs}
        stems = rice_split(list(by_stem), split, self.train_fraction)
        masks: list[Path] | None = None
        if self.version == 2:
            if not (folder / "mask").is_dir():
                raise FileNotFoundError(f"RICE2 folder {folder} has no mask/ folder")
            masks = find_companions(stems, folder / "mask", MASK_SUFFIXES, "mask")
        for i, stem in enumerate(stems):
            entry: dict[str, Path] = {"input": by_stem[stem][0], "target": by_stem[stem][1]}
            if masks is not None:
                entry["mask"] = masks[i]
            self.samples.append(entry)
        if not self.samples:
            raise ValueError(f"split {split!r} of {folder} is empty ({len(by_stem)} pairs in all)")

    def load(self, index: int) -> dict[str, Any]:
        entry = self.samples[index]
        sample: dict[str, Any]
        sample, _ = self.read_pair(entry["input"], entry["target"])
        if "mask" in entry:
            sample["mask"] = to_tensor(read_mask(entry["mask"]))
        sample["meta"] = {
            "name": entry["input"].stem,
            "path": str(entry["input"]),
            "target_path": str(entry["target"]),
            "version": self.version,
        }
        return sample
