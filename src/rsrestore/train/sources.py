"""Clean imagery for the training pipeline: where it lives, how each source is split, and the folders made from it.

A source is a folder (or one file) under the data root, split by scene so that no held-out scene is trained on:

* ``by_position``: per sub-folder (a EuroSAT class), files ordered by the number that ends their name; position
  ranges ``[start, end)`` go to ``train`` / ``val`` / ``test``;
* ``by_folder``: whole sub-folders (NEON sites) go to ``train`` / ``val`` / ``test`` / ``unused``;
* ``whole``: every file of the source goes to one part (``use``), e.g. a source held out entirely.

The data root is ``../shared/data`` seen from the project root, or the ``RSRESTORE_DATA`` environment variable, or a
path given by the caller (:func:`data_root`). Training reads link folders (:func:`link_folder`): one symbolic link per
clean file and repeat, which the ``synthetic`` dataset reads as one collection of scenes.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATA_ROOT = "../shared/data"
DATA_ENV = "RSRESTORE_DATA"
PARTS = ("train", "val", "test", "unused")
SPLITS = ("by_position", "by_folder", "whole")


class DataRootError(FileNotFoundError):
    """The clean-imagery folder (or a source inside it) is not there; the message says which and how to point at it."""


def data_root(given: str | os.PathLike[str] | None = None) -> Path:
    """The clean-imagery root: ``given``, else ``$RSRESTORE_DATA``, else ``../shared/data`` (from the working
    directory, the project root). Not checked here: :func:`check_data_root` does."""
    if given is not None:
        return Path(given)
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def check_data_root(root: Path, needed: Iterable[str] = ()) -> None:
    """Raise :class:`DataRootError` (one line) when ``root`` or a needed source folder under it is missing."""
    needed = list(needed)
    if not root.is_dir():
        what = f" (needs {', '.join(needed)})" if needed else ""
        raise DataRootError(f"data folder {root} not found{what}: put the clean imagery there, or point "
                            f"${DATA_ENV} or --data-root at it")
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise DataRootError(f"{root / missing[0]} not found: the data folder {root} lacks "
                            f"{', '.join(missing)} (set ${DATA_ENV} or --data-root to a complete copy)")


@dataclass
class SourceSpec:
    """One clean source and its split (see the module docstring). ``repeats`` is how many links each of its training
    files gets in a link folder (it weighs a few large scenes against many small tiles). ``test_min_size`` sends
    held-out files smaller than that (on either side) to ``unused``, so a test crop never scores mirrored padding.
    ``tiles`` cuts held-out files into nodata-free tiles of that size before crops are drawn (:func:`valid_tiles`).
    ``offset`` is subtracted from those tiles' values (clipped at 0) before any scale: a product's calibration offset,
    e.g. 5000 for Landsat-8 Level-1 digital numbers, whose TOA reflectance is 2e-5 DN - 0.1 (USGS), so DN 5000 is
    reflectance 0. Read without it, a "clean" Landsat-8 reference carries a grey floor of 5000 DN that no scene has,
    and a dehazer is scored for keeping it. ``exclude_list`` names a text file in the source whose first column lists
    files (relative to the source) that are used nowhere."""

    name: str
    path: str
    split: str = "whole"
    licence: str = ""
    use: str = "train"
    train: Any = None
    val: Any = None
    test: Any = None
    unused: Any = None
    repeats: int = 1
    exclude_list: str | None = None
    test_min_size: int | None = None
    tiles: int | None = None
    offset: float = 0.0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, data: Mapping[str, Any], where: str) -> SourceSpec:
        from .config import ConfigError

        if not isinstance(data, Mapping) or "path" not in data:
            raise ConfigError(f"{where}: expected a mapping with at least 'path'")
        known = {f for f in cls.__dataclass_fields__ if f not in ("name", "extra")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key '{where}.{unknown[0]}'; known keys: {', '.join(sorted(known))}")
        spec = cls(name=name, **dict(data))
        if spec.split not in SPLITS:
            raise ConfigError(f"{where}.split: must be one of {', '.join(SPLITS)}, got {spec.split!r}")
        if spec.split == "whole" and spec.use not in PARTS:
            raise ConfigError(f"{where}.use: must be one of {', '.join(PARTS)}, got {spec.use!r}")
        if spec.split == "by_position":
            for part in ("train", "val", "test"):
                rng = getattr(spec, part)
                if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and rng[0] <= rng[1]):
                    raise ConfigError(f"{where}.{part}: expected [start, end) positions, got {rng!r}")
        if spec.split == "by_folder":
            for part in PARTS:
                v = getattr(spec, part)
                if v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
                    raise ConfigError(f"{where}.{part}: expected a list of folder names, got {v!r}")
        if not isinstance(spec.offset, (int, float)) or isinstance(spec.offset, bool) or spec.offset < 0:
            raise ConfigError(f"{where}.offset: must be a number >= 0, got {spec.offset!r}")
        if spec.offset and not spec.tiles:
            raise ConfigError(f"{where}.offset: applies to the tiles of a held-out source; set tiles too")
        if not isinstance(spec.repeats, int) or spec.repeats < 1:
            raise ConfigError(f"{where}.repeats: must be an integer >= 1, got {spec.repeats!r}")
        return spec


def _trailing_number(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem)
    if m is None:
        raise ValueError(f"{path}: a by_position split needs file names ending in a number")
    return int(m.group(1))


def _excluded(folder: Path, list_name: str | None) -> set[str]:
    if not list_name:
        return set()
    path = folder / list_name
    if not path.is_file():
        raise DataRootError(f"{path} not found (exclude_list of the source {folder.name})")
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split()[0])
    return names


def split_source(spec: SourceSpec, root: Path) -> dict[str, list[Path]]:
    """``{part: sorted files}`` of one source under ``root`` (parts: train, val, test, unused)."""
    from ..synthesize import find_images, image_shape

    base = root / spec.path
    if not base.exists():
        raise DataRootError(f"{base} not found (source {spec.name!r}): the data folder {root} is incomplete")
    out: dict[str, list[Path]] = {p: [] for p in PARTS}
    if spec.split == "whole":
        out[spec.use] = find_images(base)
    elif spec.split == "by_position":
        skip = _excluded(base, spec.exclude_list)
        for sub in sorted(p for p in base.iterdir() if p.is_dir()):
            for pos, f in enumerate(sorted(find_images(sub), key=_trailing_number)):
                part = "unused"
                if f"{sub.name}/{f.name}" not in skip:
                    for name in ("train", "val", "test"):
                        rng = getattr(spec, name)
                        if rng is not None and rng[0] <= pos < rng[1]:
                            part = name
                            break
                out[part].append(f)
    else:  # by_folder
        for part in PARTS:
            for folder in getattr(spec, part) or ():
                if not (base / folder).is_dir():
                    raise DataRootError(f"{base / folder} not found (source {spec.name!r}, {part})")
                out[part] += find_images(base / folder)
    if spec.test_min_size:
        small = [f for f in out["test"] if min(image_shape(f)[1:]) < spec.test_min_size]
        out["test"] = [f for f in out["test"] if f not in set(small)]
        out["unused"] += small
    return {k: sorted(v) for k, v in out.items()}


def _identity(path: Path) -> tuple[int, int]:
    """The file itself (device, inode), whatever path or link leads to it; one stat, where resolving a path costs
    one per component (10,000 EuroSAT tiles)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def check_disjoint(splits: Mapping[str, Mapping[str, Sequence[Path]]]) -> None:
    """Refuse a split in which a file is both trained on and validated or tested on, across sources (the same file
    reached through another path or a link counts)."""
    train = {_identity(f): name for name, parts in splits.items() for f in parts["train"]}
    for name, parts in splits.items():
        for part in ("val", "test"):
            for f in parts[part]:
                if _identity(f) in train:
                    raise ValueError(f"split overlap: {f} is in {name}/{part} and in {train[_identity(f)]}/train")


def link_name(path: Path, repeat: int, repeats: int) -> str:
    """``<parent>_<stem>[_rNNN]<suffix>``: unique across the sub-folders of a source."""
    return f"{path.parent.name}_{path.stem}" + (f"_r{repeat:03d}" if repeats > 1 else "") + path.suffix


def planned_links(groups: Sequence[tuple[str, Sequence[Path], int]]) -> dict[str, Path]:
    """``{relative link path: resolved target}`` of a link folder made of ``(group, files, repeats)``."""
    out: dict[str, Path] = {}
    folders: dict[Path, Path] = {}  # each folder resolved once: the files themselves are not links
    for group, files, repeats in groups:
        for f in files:
            if f.parent not in folders:
                folders[f.parent] = f.parent.resolve()
            target = folders[f.parent] / f.name
            for r in range(repeats):
                out[f"{group}/{link_name(f, r, repeats)}"] = target
    return out


def existing_links(dest: Path) -> dict[str, Path]:
    if not dest.is_dir():
        return {}
    return {str(p.relative_to(dest)): Path(os.readlink(p)) for p in dest.rglob("*") if p.is_symlink()}


def link_folder(dest: Path, groups: Sequence[tuple[str, Sequence[Path], int]], progress: bool = False) -> bool:
    """Make ``dest`` a folder of links to the clean files of ``groups`` (``(sub-folder, files, repeats)``); returns
    False, touching nothing, when it already holds exactly those links (a training may be reading it)."""
    plan = planned_links(groups)
    if existing_links(dest) == plan and not any(p.is_file() and not p.is_symlink() for p in dest.rglob("*")):
        return False
    if dest.exists():
        for p in sorted(dest.rglob("*"), reverse=True):
            p.unlink() if p.is_symlink() or p.is_file() else p.rmdir()
    items: Iterable[tuple[str, Path]] = plan.items()
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(plan), desc=f"links {dest.name}", unit="link")
    for rel, target in items:
        link = dest / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return True


def valid_tiles(src: Path, dest: Path, tile: int, offset: float = 0.0) -> list[Path]:
    """Cut ``src`` into ``tile`` x ``tile`` GeoTIFFs that hold no nodata or transparent pixel and are not constant
    (raw values kept, less ``offset``, clipped at 0, in the file's data type), so crops of a held-out source never
    score nodata wedges. Returns the tiles written."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # PNG sources and their tiles have no CRS
        with rasterio.open(src) as ds:
            valid = ds.dataset_mask() > 0
            rgba_png = ds.count == 4 and src.suffix.lower() == ".png"
            if rgba_png:  # alpha is the mask
                valid &= ds.read(4) > 0
            bands = [1, 2, 3] if rgba_png else list(range(1, ds.count + 1))
            for row in range(0, ds.height - tile + 1, tile):
                for col in range(0, ds.width - tile + 1, tile):
                    if not valid[row:row + tile, col:col + tile].all():
                        continue
                    arr = ds.read(bands, window=Window(col, row, tile, tile))
                    if offset:
                        arr = (arr.astype("float64") - offset).clip(0, None).astype(arr.dtype)
                    if arr.std() == 0:
                        continue
                    path = dest / f"{src.stem}_{row:05d}_{col:05d}.tif"
                    with rasterio.open(path, "w", driver="GTiff", dtype=arr.dtype, count=arr.shape[0], height=tile,
                                       width=tile) as o:
                        o.write(arr)
                    out.append(path)
    return out
