"""Pieces shared by the dataset loaders.

- Reading images (GeoTIFF, PNG, JPEG, BMP) through :mod:`rsrestore.raster`, the reader ``rsrestore restore`` uses,
  into ``(C, H, W)`` float32 arrays and a valid-pixel mask.
- Listing image files, natural sorting, and matching inputs to targets by file stem.
- The seeded random crop and dihedral flip that every loader applies identically to all the tensors of one sample.
- :class:`RestorationDataset`, the base class that ties these together (options ``crop``, ``flip``, ``seed``,
  ``bands``, and :meth:`RestorationDataset.set_epoch`).

Values, band numbers and errors follow :mod:`rsrestore.raster`: ``uint8`` divides by 255, ``uint16`` by 10000 in a
GeoTIFF and by 65535 in a PNG, ``int16`` by 10000, floats pass through; bands are 1-based, as GDAL counts them; a
file that cannot be read raises :class:`~rsrestore.raster.RasterError` naming it. A dataset with a documented
convention of its own says so where it reads (SEN12MS-CR clips to ``[0, 10000]`` before dividing by 10000).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.enums import ColorInterp
from torch.utils.data import Dataset

from ..raster import RasterError, RasterInfo, open_raster, parse_bands, read_raster

IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
"""File suffixes (compared case-insensitively) that the folder loaders treat as images."""

PHI_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy")
MASK_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp", ".npy")

# In PNG/JPEG/BMP files a band GDAL labels "alpha" is transparency, never data; in a GeoTIFF an extra band may be NIR
# that some writers mislabel, so only these drivers drop it (when no bands are selected).
_PLAIN_IMAGE_DRIVERS = frozenset({"PNG", "JPEG", "BMP", "GIF"})

_SEED_STRIDE = 1_000_003


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


def read_image(
    path: str | Path, bands: Sequence[int] | str | None = None, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray, RasterInfo]:
    """Read an image through :func:`rsrestore.raster.read_raster`: ``(C, H, W)`` float32, the valid-pixel mask
    ``(H, W)`` bool and the raster's info.

    Values, band numbers (1-based, as GDAL counts them), the valid mask and the errors (:class:`RasterError`
    naming the file) are exactly those of ``rsrestore restore``, so a model is trained and scored on the values it
    later restores. Without a band selection two conventions of plain image formats apply on top: a palette image
    is expanded through its colour table (one band when the palette is grey, else RGB, scaled by 255), and the alpha
    band of a PNG/JPEG/BMP is dropped (it is transparency, which the valid mask already carries).
    """
    values, valid, info = read_raster(path, bands, scale)
    if bands is None and info.colorinterp[:1] == (ColorInterp.palette,) and info.count == 1:
        values = _palette_colours(path, values[0], info.scale)
    elif bands is None and info.driver in _PLAIN_IMAGE_DRIVERS and ColorInterp.alpha in info.colorinterp:
        keep = [i for i, ci in enumerate(info.colorinterp) if ci != ColorInterp.alpha]
        if not keep:
            raise RasterError(f"{path} has no data bands (only alpha)")
        values = values[keep]
    return np.ascontiguousarray(values), valid, info


def _palette_colours(path: str | Path, scaled_index: np.ndarray, scale: float) -> np.ndarray:
    """Colours ``(1 or 3, H, W)`` in [0, 1] of a palette band read as ``index / scale``."""
    with open_raster(path) as ds:
        colormap = ds.colormap(1)
    # index / scale in float32 is within a few ulps of the integer index, so rounding recovers it exactly.
    index = np.rint(scaled_index.astype(np.float64) * scale).astype(np.int64)
    table = np.zeros((max(max(colormap) + 1, int(index.max()) + 1), 3), dtype=np.float32)
    for i, rgba in colormap.items():
        table[i] = rgba[:3]
    table /= np.float32(255.0)
    grey = all(r == g == b for r, g, b, *_ in colormap.values())
    # 8-bit greyscale BMP/PNG files are stored with a grey palette: keep them single-band.
    return table[index, 0][None] if grey else np.moveaxis(table[index], -1, 0)


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise RasterError(f"input not found: {path}")
    return path


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as ``(1, H, W)`` float32 in ``[0, 1]``.

    A mask is a label, not reflectance, so it keeps its own convention: values already in ``[0, 1]`` (0/1 masks,
    palette indices 0/1) stay as stored; other integer masks are divided by the dtype's largest value (0/255 PNGs
    become 0/1 whatever the format). Several bands (an RGB-saved mask) reduce to their maximum.
    """
    path = _check_file(path)
    if path.suffix.lower() == ".npy":
        array = np.load(path)
        if array.ndim == 2:
            array = array[None]
        dtype = array.dtype
    else:
        # scale 1: the stored values (palette indices, not colours); read_raster does the reading and the errors.
        array, _, info = _read_stored(path)
        dtype = np.dtype(info.dtype)
    if array.ndim != 3:
        raise RasterError(f"mask {path} must be (H, W) or (C, H, W), got shape {array.shape}")
    out = array.astype(np.float32)
    if np.issubdtype(dtype, np.integer) and out.size and not (out.min() >= 0 and out.max() <= 1):
        out /= np.float32(np.iinfo(dtype).max)
    return np.ascontiguousarray(out.max(axis=0, keepdims=True))


def read_phi(path: str | Path) -> np.ndarray:
    """Read a per-pixel float map (e.g. the sand-dust variable Phi) as ``(C, H, W)`` float32, values unscaled.

    ``.npy`` arrays must be ``(H, W)`` or ``(C, H, W)``; GeoTIFFs are read band-first as stored.
    """
    path = _check_file(path)
    if path.suffix.lower() == ".npy":
        array = np.load(path)
    else:
        array = _read_stored(path)[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise RasterError(f"{path} must hold an (H, W) or (C, H, W) array, got shape {array.shape}")
    return np.ascontiguousarray(array.astype(np.float32))


def _read_stored(path: Path) -> tuple[np.ndarray, np.ndarray, RasterInfo]:
    """Every band with its stored values (scale 1) as float32, through :func:`rsrestore.raster.read_raster`."""
    return read_raster(path, scale=1.0)


# --------------------------------------------------------------------------------------------------------------------
# Listing and matching files
# --------------------------------------------------------------------------------------------------------------------


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value (``"2" < "10"``), then the rest case-insensitively."""
    parts = _DIGITS.split(text)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts)


def list_images(folder: str | Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files skipped), in natural order of their names."""
    folder = Path(folder)
    wanted = {s.lower() for s in suffixes}
    files = [
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in wanted
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def find_subdirs(parent: Path, names: Sequence[str]) -> list[Path]:
    """The directories among ``parent/<name>`` for ``name`` in ``names`` that exist (exact, case-sensitive names)."""
    if not parent.is_dir():
        return []
    present = {p.name: p for p in parent.iterdir() if p.is_dir()}
    return [present[n] for n in names if n in present]


def find_one_subdir(parent: Path, names: Sequence[str], role: str) -> Path:
    """The single directory of ``parent`` named one of ``names``; clear errors when there is none or several."""
    found = find_subdirs(parent, names)
    if not found:
        present = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise FileNotFoundError(
            f"no {role} folder in {parent}: expected a folder named one of {'|'.join(names)}"
            f" (found folders: {', '.join(present) or 'none'})"
        )
    if len(found) > 1:
        raise ValueError(
            f"ambiguous {role} folder in {parent}: found {', '.join(p.name for p in found)};"
            f" keep only one of {'|'.join(names)}"
        )
    return found[0]


def _index_by_key(files: Sequence[Path], key: Callable[[Path], Any], role: str) -> dict[Any, Path]:
    index: dict[Any, Path] = {}
    for f in files:
        k = key(f)
        if k in index:
            raise ValueError(f"two {role} files share the key {k!r}: {index[k].name} and {f.name}")
        index[k] = f
    return index


@dataclass
class Matched:
    """Result of :func:`match_by_stem`: ``pairs`` in the order of the inputs, and what found no partner."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    unmatched_inputs: list[Path] = field(default_factory=list)
    unmatched_targets: list[Path] = field(default_factory=list)


def match_by_stem(
    inputs: Sequence[Path],
    targets: Sequence[Path],
    key: Callable[[Path], Any] = lambda p: p.stem,
) -> Matched:
    """Pair input and target files whose ``key`` (default: the file stem, so ``a.png`` pairs ``a.jpg``) agree."""
    by_input = _index_by_key(inputs, key, "input")
    by_target = _index_by_key(targets, key, "target")
    out = Matched()
    for k, path in by_input.items():
        if k in by_target:
            out.pairs.append((path, by_target[k]))
        else:
            out.unmatched_inputs.append(path)
    out.unmatched_targets = [p for k, p in by_target.items() if k not in by_input]
    return out


def require_pairs(matched: Matched, input_dir: Path, target_dir: Path) -> None:
    """Raise when nothing matched; warn (with counts) when only some files found a partner."""
    n_in, n_tg = len(matched.unmatched_inputs), len(matched.unmatched_targets)
    if not matched.pairs:
        example = ""
        if matched.unmatched_inputs and matched.unmatched_targets:
            example = f" (e.g. {matched.unmatched_inputs[0].name!r} vs {matched.unmatched_targets[0].name!r})"
        raise FileNotFoundError(
            f"no input/target pairs matched between {input_dir} and {target_dir}: {n_in} input and {n_tg} target"
            f" file(s) unmatched{example}"
        )
    if n_in or n_tg:
        warnings.warn(
            f"{input_dir.parent}: {len(matched.pairs)} pairs matched; skipped {n_in} input file(s) without a target"
            f" and {n_tg} target file(s) without an input",
            stacklevel=3,
        )


def find_companions(stems: Sequence[str], folder: Path, suffixes: Iterable[str], role: str) -> list[Path]:
    """For each stem, the file ``folder/<stem><suffix>``; every stem must have exactly one."""
    index = _index_by_key(list_images(folder, suffixes), lambda p: p.stem, role)
    missing = [s for s in stems if s not in index]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks a {role} file for {len(missing)} of {len(stems)} sample(s), e.g. {missing[0]!r}"
            f" (accepted suffixes: {', '.join(suffixes)}); remove the folder or complete it"
        )
    return [index[s] for s in stems]


def check_root(root: str | Path) -> Path:
    """``root`` as a Path, which must be an existing directory."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset root does not exist: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"dataset root is not a directory: {path}")
    return path


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


# --------------------------------------------------------------------------------------------------------------------
# Seeded crop and flip
# --------------------------------------------------------------------------------------------------------------------


def sample_seed(seed: int, epoch: int, index: int, length: int) -> int:
    """Seed of one sample: ``seed * 1_000_003 + epoch * length + index``.

    Every (epoch, index) of one dataset gets its own stream, and an epoch replays identically whatever the worker
    count or the order in which a sampler visits indices.
    """
    return (seed * _SEED_STRIDE + epoch * max(length, 1) + index) % (2**63)


@dataclass(frozen=True)
class CropFlip:
    """The geometric change drawn for one sample: window ``(top, left, height, width)``, then ``rot90`` quarter turns
    (counter-clockwise, as :func:`torch.rot90` on dims (-2, -1)) of the horizontally flipped (if ``hflip``) crop."""

    top: int
    left: int
    height: int
    width: int
    rot90: int = 0
    hflip: bool = False


def draw_crop_flip(
    height: int, width: int, crop: int | None, flip: bool, generator: torch.Generator | None
) -> CropFlip:
    """Draw a crop window of size ``crop`` (whole image when None) and, if ``flip``, one of the 8 dihedral moves.

    A non-square result can only be turned by 0 or 180 degrees (with or without a mirror), so that every sample of a
    dataset keeps the same shape.
    """
    if crop is not None:
        if crop > height or crop < 1 or crop > width:
            raise ValueError(f"crop {crop} does not fit an image of {height}x{width} pixels")
        top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
        h = w = crop
    else:
        top = left = 0
        h, w = height, width
    k, mirror = 0, False
    if flip:
        k = int(torch.randint(0, 4, (1,), generator=generator))
        if h != w:
            k = (k % 2) * 2
        mirror = bool(torch.randint(0, 2, (1,), generator=generator))
    return CropFlip(top, left, h, w, k, mirror)


def apply_crop_flip(tensor: torch.Tensor, move: CropFlip) -> torch.Tensor:
    """Apply a drawn :class:`CropFlip` to a ``(..., H, W)`` tensor; returns a contiguous tensor."""
    out = tensor[..., move.top : move.top + move.height, move.left : move.left + move.width]
    if move.hflip:
        out = torch.flip(out, dims=(-1,))
    if move.rot90:
        out = torch.rot90(out, move.rot90, dims=(-2, -1))
    return out.contiguous()


def shift_transform(transform: Sequence[float], top: int, left: int) -> tuple[float, ...]:
    """Affine coefficients ``(a, b, c, d, e, f)`` of the window starting at pixel ``(top, left)``."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    return (a, b, c + a * left + b * top, d, e, f + d * left + e * top)


# --------------------------------------------------------------------------------------------------------------------
# Base dataset
# --------------------------------------------------------------------------------------------------------------------

SPATIAL_KEYS = ("input", "target", "sar", "mask", "phi", "valid")


def check_bands(bands: Sequence[int] | str | None) -> list[int] | None:
    """1-based band numbers (``[4, 3, 2]`` or ``"4,3,2"``), validated as ``rsrestore restore --bands`` is."""
    if isinstance(bands, Iterable) and not isinstance(bands, str):
        bands = list(bands)
        if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bands):
            raise RasterError(f"bands must be 1-based band numbers like [4, 3, 2] or '4,3,2'; got {bands!r}")
    elif bands is not None and not isinstance(bands, str):
        raise RasterError(f"bands must be 1-based band numbers like [4, 3, 2] or '4,3,2'; got {bands!r}")
    return parse_bands(bands)


class RestorationDataset(Dataset):
    """Base class of the paired restoration datasets.

    A subclass fills ``self.samples`` (one entry per item, any type) and implements :meth:`load`, which returns the
    sample's tensors at full size and its ``meta`` dict. ``__getitem__`` then applies the seeded crop/flip to every
    tensor under ``input``, ``target``, ``sar``, ``mask``, ``phi`` and ``valid`` alike, and records in ``meta``:
    ``window`` ``(top, left, height, width)`` of the crop in file pixels, ``rot90`` and ``hflip``; a georeferenced
    ``transform`` is shifted to the crop window (it does not describe any later flip or rotation).

    Options:
        crop: side of a random square crop (None: whole images).
        flip: random horizontal mirror and quarter turns (8 dihedral moves), same move for every tensor.
        seed: base seed; the item ``i`` of epoch ``e`` uses ``torch.Generator().manual_seed(seed * 1_000_003 +
            e * len(self) + i)``, so an epoch is reproducible. Call :meth:`set_epoch` each epoch for new crops.
        bands: 1-based band numbers kept from the optical images, in the given order (``[4, 3, 2]`` or ``"4,3,2"``,
            as ``rsrestore restore --bands``); also applied to ``phi`` when it has as many bands as the input file.
        scale: divisor mapping file values to ``[0, 1]``, as ``rsrestore restore --scale`` (default: by dtype and
            format, see :mod:`rsrestore.raster`; e.g. 65535 for uint16 GeoTIFFs that hold full-range values).
    """

    samples: list[Any]

    def __init__(
        self,
        *,
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
        bands: Sequence[int] | str | None = None,
        scale: float | None = None,
    ) -> None:
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 1):
            raise ValueError(f"crop must be a positive int or None, got {crop!r}")
        if not isinstance(flip, (bool, np.bool_)):
            raise ValueError(f"flip must be a bool, got {flip!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.crop = None if crop is None else int(crop)
        self.flip = bool(flip)
        self.seed = int(seed)
        self.bands = check_bands(bands)
        self.scale = None if scale is None else float(scale)
        self.epoch = 0
        self.samples = []

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips the next items draw."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index, len(self)))

    def load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def read_pair(
        self, input_path: Path, target_path: Path, scale: float | None = None
    ) -> tuple[dict[str, torch.Tensor], RasterInfo]:
        """``input`` and ``target`` (the dataset's ``bands`` and ``scale`` unless ``scale`` is given, see
        :func:`read_image`) and ``valid`` ``(H, W)`` bool, True where a pixel is valid in both files; plus the input's
        :class:`~rsrestore.raster.RasterInfo`."""
        scale = self.scale if scale is None else scale
        x, valid_x, info = read_image(input_path, self.bands, scale)
        y, valid_y, _ = read_image(target_path, self.bands, scale)
        # Files of different sizes: __getitem__ reports them by name; the input's mask stands in until then.
        valid = valid_x & valid_y if valid_x.shape == valid_y.shape else valid_x
        return {"input": to_tensor(x), "target": to_tensor(y), "valid": torch.from_numpy(valid)}, info

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index = int(index) % n
        sample = self.load(index)
        meta: dict[str, Any] = sample["meta"]
        tensors: Mapping[str, torch.Tensor] = {k: sample[k] for k in SPATIAL_KEYS if k in sample}
        sizes = {k: tuple(t.shape[-2:]) for k, t in tensors.items()}
        if len(set(sizes.values())) > 1:
            detail = ", ".join(f"{k} {h}x{w}" for k, (h, w) in sizes.items())
            raise ValueError(f"sample {meta.get('path', index)}: images differ in size ({detail})")
        height, width = sizes["input"]
        needs_rng = self.crop is not None or self.flip
        try:
            move = draw_crop_flip(height, width, self.crop, self.flip, self.generator(index) if needs_rng else None)
        except ValueError as err:
            raise ValueError(f"{err} ({meta.get('path', f'sample {index}')})") from None
        for k, t in tensors.items():
            sample[k] = apply_crop_flip(t, move)
        meta["window"] = (move.top, move.left, move.height, move.width)
        meta["rot90"] = move.rot90
        meta["hflip"] = move.hflip
        if "transform" in meta:
            meta["transform"] = shift_transform(meta["transform"], move.top, move.left)
        return sample


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 torch tensor sharing nothing with ``array``'s future writers."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
