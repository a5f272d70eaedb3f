"""Synthetic degradation: one dispatcher over haze, sand-dust and clouds, and a writer of reproducible paired datasets.

:func:`synthesize` degrades a batch with one of ``KINDS`` and a preset from ``PRESETS``. :func:`synthesize_dataset`
writes ``n`` random crops of clean images with their degraded versions in the ``paired`` layout::

    OUT/input/00000.png    degraded (8-bit PNG for 1- or 3-band images, float32 GeoTIFF otherwise)
    OUT/target/00000.png   the clean crop, same format
    OUT/phi/00000.tif      dust only: float32 Phi such that Eq. 5 of AOSR-Net, target = Phi (input - 1.6) + 1, holds
                           for the *stored* (quantised) input and target
    OUT/mask/00000.png     clouds only: uint8 cloud mask, 0 or 255
    OUT/manifest.json      every sample's source file, crop window, padding, seed, preset and drawn parameters

Each sample ``i`` draws everything (crop window, preset when none is fixed, degradation) from its own generator seeded
with :func:`sample_seed` ``(seed, i)``, and its source file comes from a seeded permutation of the sorted file list;
so :func:`regenerate_sample` rebuilds any sample bit for bit from the manifest alone (given the clean images).

Clean images are read with rasterio through :func:`rsrestore.raster.read_raster` (uint8 / 255, uint16 GeoTIFF / 10000,
uint16 PNG / 65535, floats as they are, unless ``scale`` is given), clipped to [0, 1]. Only the crop window is read, so
large scenes cost little memory. An image smaller than ``size`` along a side is padded to ``size`` by reflection
(mirror without repeating the edge pixel, repeated as often as needed); the manifest records the padding.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from torch import Tensor

from .physics.clouds import CLOUD_PRESETS, synthesize_clouds
from .physics.haze import HAZE_PRESETS, REALISTIC_HAZE, synthesize_haze
from .physics.noise import randint, uniform
from .physics.sensor import degrade_sensor, sensor_setting
from .physics.sanddust import DUST_PRESETS, REALISTIC_DUST, PHI_ALPHA, PHI_BETA, phi_from_clean, synthesize_dust

__all__ = [
    "KINDS",
    "PRESETS",
    "DEFAULT_PRESETS",
    "PRESET_GROUPS",
    "resolve_presets",
    "draw_preset",
    "IMAGE_SUFFIXES",
    "synthesize",
    "sample_seed",
    "find_images",
    "read_crop",
    "draw_window",
    "synthesize_dataset",
    "load_manifest",
    "regenerate_sample",
    "read_sample",
]

KINDS: tuple[str, ...] = ("haze", "dust", "cloud")
PRESETS: dict[str, tuple[str, ...]] = {
    "haze": tuple(HAZE_PRESETS),
    "dust": tuple(DUST_PRESETS),
    "cloud": tuple(CLOUD_PRESETS),
}
DEFAULT_PRESETS: dict[str, str] = {"haze": "moderate", "dust": "moderate", "cloud": "thin"}
#: Named sets of presets: a ``preset`` argument may name one, and each sample then draws one of its members.
#: ``classic`` is what is drawn when no preset is given (so datasets written before the realistic presets existed
#: regenerate as they were); ``realistic`` is haze and dust as they look over real scenes.
PRESET_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "haze": {"classic": ("thin", "moderate", "thick"), "realistic": REALISTIC_HAZE},
    "dust": {"classic": ("light", "moderate", "heavy"), "realistic": REALISTIC_DUST},
    "cloud": {"classic": ("thin", "thick")},
}
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

MANIFEST_FORMAT = "rsrestore-synthetic"
MANIFEST_VERSION = 1

# Parameters that describe the whole call rather than one sample of the batch.
_SHARED_PARAMS = frozenset({"kind", "preset", "wavelengths_nm", "phi_alpha", "phi_beta", "shadow"})


def synthesize(clear: Tensor, kind: str, generator: torch.Generator, preset: str | None = None, **kw: Any) -> dict:
    """Degrade `clear` (B, C, H, W) in [0, 1] with `kind` ('haze' | 'dust' | 'cloud') and a preset of that kind.

    `preset` defaults to ``DEFAULT_PRESETS[kind]``; for clouds the preset is the cloud type ('thin' | 'thick').
    Extra keywords go to :func:`~rsrestore.physics.haze.synthesize_haze`,
    :func:`~rsrestore.physics.sanddust.synthesize_dust` or :func:`~rsrestore.physics.clouds.synthesize_clouds`.
    Returns that function's dict plus ``target`` (= `clear`).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown degradation kind {kind!r}; choose one of {', '.join(KINDS)}")
    preset = DEFAULT_PRESETS[kind] if preset is None else preset
    if isinstance(preset, str) and preset not in PRESETS[kind]:
        raise ValueError(f"unknown {kind} preset {preset!r}; choose one of {', '.join(PRESETS[kind])}")
    if kind == "haze":
        out = synthesize_haze(clear, generator, preset=preset, **kw)
    elif kind == "dust":
        out = synthesize_dust(clear, generator, preset=preset, **kw)
    else:
        out = synthesize_clouds(clear, generator, kind=preset, **kw)
    out["target"] = clear
    return out


def resolve_presets(kind: str, preset: str | Sequence[str] | None) -> tuple[str, ...]:
    """The presets a sample of `kind` draws among: one name, a group of ``PRESET_GROUPS[kind]``, a list of names (or
    groups), or None (the ``classic`` group). Raises ValueError naming the choices for anything else."""
    if kind not in KINDS:
        raise ValueError(f"unknown degradation kind {kind!r}; choose one of {', '.join(KINDS)}")
    groups = PRESET_GROUPS[kind]
    items = ["classic"] if preset is None else [preset] if isinstance(preset, str) else list(preset)
    if not items:
        raise ValueError(f"preset is an empty list; name {kind} presets ({', '.join(PRESETS[kind])}) or groups "
                         f"({', '.join(groups)})")
    out: list[str] = []
    for item in items:
        if isinstance(item, str) and item in groups:
            out += [p for p in groups[item] if p not in out]
        elif isinstance(item, str) and item in PRESETS[kind]:
            out += [item] if item not in out else []
        else:
            raise ValueError(f"unknown {kind} preset {item!r}; choose one of {', '.join(PRESETS[kind])} or a group "
                             f"({', '.join(groups)})")
    return tuple(out)


def draw_preset(generator: torch.Generator, choices: Sequence[str]) -> str:
    """One of `choices`, uniformly; a single choice draws nothing from `generator`."""
    return choices[0] if len(choices) == 1 else choices[randint(generator, len(choices))]


def sample_params(params: dict, i: int) -> dict:
    """The parameters of sample `i` from a batched ``params`` dict (per-sample lists indexed, shared values kept)."""
    return {k: (v if k in _SHARED_PARAMS or not isinstance(v, list) else v[i]) for k, v in params.items()}


def sample_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from (seed, *keys) by NumPy's SeedSequence hashing: distinct keys give unrelated
    streams, unlike ``seed + index`` schemes where seed 0 / index 1 and seed 1 / index 0 collide."""
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError(f"seed and keys must be non-negative; got {seed}, {keys}")
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def find_images(sources: str | Path | Iterable[str | Path], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files from a folder (searched recursively, hidden entries skipped), a single file, or a list of either;
    sorted by path so the order does not depend on the file system."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not items:
        raise ValueError("no clean image sources given")
    wanted = {s.lower() for s in suffixes}
    found: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in wanted]
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"clean image source not found: {p}")
    files = sorted(set(found), key=lambda q: str(q))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(suffixes)}) found in {items}")
    return files


def image_shape(path: str | Path) -> tuple[int, int, int]:
    """(bands, height, width) of a raster, without reading pixels."""
    from .raster import inspect_raster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        info = inspect_raster(path)
    return info.count, info.height, info.width


def draw_window(generator: torch.Generator, height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """A random window (row, col, h, w) of at most `size` x `size` inside a height x width image."""
    row = randint(generator, height - size + 1) if height > size else 0
    col = randint(generator, width - size + 1) if width > size else 0
    return row, col, min(size, height), min(size, width)


def _reflect_pad(a: np.ndarray, size: int) -> tuple[np.ndarray, list[list[int]]]:
    h, w = a.shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    pad = [[ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2]]
    if ph or pw:
        # np.pad reflects repeatedly when the pad exceeds the image, and needs at least 2 pixels to reflect.
        mode = "reflect" if min(h, w) > 1 else "edge"
        a = np.pad(a, [(0, 0), tuple(pad[0]), tuple(pad[1])], mode=mode)
    return a, pad


def read_crop(
    path: str | Path,
    window: tuple[int, int, int, int],
    size: int | None = None,
    scale: float | None = None,
    bands: Sequence[int] | None = None,
    with_mask: bool = False,
) -> tuple[np.ndarray, list[list[int]]] | tuple[np.ndarray, list[list[int]], np.ndarray]:
    """Read `window` (row, col, h, w) of `path` as float32 (C, h, w) in [0, 1], reflect-padded to `size` if smaller.

    `bands` are 0-based band indices. Returns the array and the padding [[top, bottom], [left, right]]; with
    `with_mask` also a boolean (h, w) map of valid pixels (padded alike): not nodata, alpha or NaN, and not black in
    every band, which is how the no-data borders of many PNG and JPEG scenes are stored.
    """
    from .raster import read_raster

    row, col, h, w = window
    sel = None if bands is None else [int(b) + 1 for b in bands]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        a, valid, _ = read_raster(path, bands=sel, scale=scale, window=Window(col, row, w, h))
    a = np.clip(a, 0.0, 1.0).astype(np.float32)
    pad = [[0, 0], [0, 0]]
    if size is not None:
        a, pad = _reflect_pad(a, size)
    if not with_mask:
        return a, pad
    valid = valid & (a[:, pad[0][0]:pad[0][0] + h, pad[1][0]:pad[1][0] + w] > 0).any(axis=0)
    if size is not None:
        valid = _reflect_pad(valid[None].astype(np.uint8), size)[0][0].astype(bool)
    return a, pad, valid


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _is_png(channels: int) -> bool:
    return channels in (1, 3)


def _stored(x: np.ndarray) -> np.ndarray:
    """The array exactly as it will be stored: uint8 for PNG images, float32 otherwise."""
    return _to_uint8(x) if _is_png(x.shape[0]) else x.astype(np.float32)


def _as_unit(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / np.float32(255.0) if stored.dtype == np.uint8 else stored.astype(np.float32)


def _write_png(path: Path, a: np.ndarray) -> None:
    from PIL import Image

    img = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    Image.fromarray(np.ascontiguousarray(img)).save(path, compress_level=1)


def _write_tif(path: Path, a: np.ndarray) -> None:
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0], dtype=a.dtype.name,
            compress="deflate", predictor=3 if a.dtype == np.float32 else 2,
        ) as dst:
            dst.write(a)


def _write(path_stem: Path, a: np.ndarray) -> str:
    path = path_stem.with_suffix(".png" if a.dtype == np.uint8 else ".tif")
    try:
        if a.dtype == np.uint8:
            _write_png(path, a)
        else:
            _write_tif(path, a)
    except OSError as e:
        if e.errno is None or e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # a failed write() names no file: name it
    return path.name


def _make_sample(
    kind: str,
    path: Path,
    sample_seed_: int,
    size: int,
    preset: str | None,
    scale: float | None,
    bands: Sequence[int] | None,
    wavelengths_nm: Sequence[float] | None,
    shadow: bool,
    sensor: bool | float | dict = 0.0,
    dark: Sequence[float] | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Generate one sample (arrays exactly as stored, plus its manifest record) from its seed; the veil of the
    dark-object levels `dark` (:func:`~rsrestore.data.clean_crops.remove_veil`) is taken off the stored target only."""
    g = torch.Generator().manual_seed(sample_seed_)
    _, height, width = image_shape(path)
    window = draw_window(g, height, width, size)
    clean, pad = read_crop(path, window, size, scale, bands)
    chosen = draw_preset(g, resolve_presets(kind, preset))
    kw: dict[str, Any] = {"wavelengths_nm": wavelengths_nm}
    if kind == "cloud":
        kw["shadow"] = shadow
    out = synthesize(torch.from_numpy(clean)[None], kind, g, preset=chosen, **kw)
    degraded, sensor_params = out["input"], None
    chance, effects = sensor_setting(sensor)
    if chance > 0 and bool(uniform(g, 1)[0] < chance):  # no draw when off: older datasets regenerate as they were
        degraded, drawn = degrade_sensor(degraded, g, effects)
        sensor_params = sample_params(drawn, 0)

    target, veil = clean, None
    if dark is not None:
        from .data.clean_crops import remove_veil

        lifted, veil = remove_veil(torch.from_numpy(clean), dark)
        target = lifted.numpy().astype(clean.dtype)
    stored = {"input": _stored(degraded[0].numpy()), "target": _stored(target)}
    if kind == "dust":
        # Phi for the stored, quantised pair, so Eq. 5 maps the file `input` to the file `target`.
        i_q = torch.from_numpy(_as_unit(stored["input"]))
        j_q = torch.from_numpy(_as_unit(stored["target"]))
        stored["phi"] = phi_from_clean(j_q, i_q, PHI_ALPHA, PHI_BETA).numpy().astype(np.float32)
    if kind == "cloud":
        stored["mask"] = (out["mask"][0].numpy() > 0).astype(np.uint8) * np.uint8(255)
    record = {
        "window": list(window),
        "pad": pad,
        "seed": sample_seed_,
        "preset": chosen,
        "params": sample_params(out["params"], 0),
    }
    if chance > 0:
        record["sensor"] = sensor_params
    if veil is not None:
        record["dark_object"] = veil  # unrounded: regenerate_sample lifts the same veil, bit for bit
    return stored, record


def synthesize_dataset(
    clean: str | Path | Sequence[str | Path],
    out: str | Path,
    kind: str,
    preset: str | None = None,
    n: int = 1000,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
    *,
    scale: float | None = None,
    bands: Sequence[int] | None = None,
    wavelengths_nm: Sequence[float] | None = None,
    shadow: bool = True,
    overwrite: bool = False,
    sensor: bool | float | dict = 0.0,
    dark_object: bool = False,
) -> Path:
    """Write a synthetic paired dataset of `n` crops of `size` x `size` degraded by `kind` (see the module docstring).

    Args:
        clean: a folder (searched recursively), an image file, or a list of them.
        out: output folder (created). An existing manifest there raises FileExistsError unless `overwrite`.
        kind: 'haze' | 'dust' | 'cloud'.
        preset: one preset for every sample, or a group of ``PRESET_GROUPS[kind]`` (e.g. 'realistic') or a list of
            presets to draw one per sample uniformly from; None draws from the 'classic' group.
        scale: divisor mapping file values to [0, 1] (default by dtype, see :mod:`rsrestore.raster`).
        bands: 0-based band indices to keep (default all); every source must then have the same band count.
        wavelengths_nm: band centres for images that are not 1, 3 (RGB), 4 (RGB+NIR) or 13 (Sentinel-2) bands.
        shadow: cast shadows of thick clouds.
        sensor: chance that a sample's degraded input also gets blur, noise, JPEG and band misregistration (or a
            mapping of :class:`~rsrestore.physics.sensor.SensorPreset` fields plus ``probability``), as the
            ``synthetic`` dataset's option of the same name; the drawn effects go into the manifest.
        dark_object: each target is the clean crop without its source file's veil (the lowest of its bands' 0.1 %
            percentiles, :func:`~rsrestore.data.clean_crops.remove_veil`), as the ``synthetic`` dataset's option of
            the same name; the inputs are those made without it (the same seed gives the same inputs).

    Returns the output folder.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown degradation kind {kind!r}; choose one of {', '.join(KINDS)}")
    resolve_presets(kind, preset)
    sensor_setting(sensor)  # a bad setting fails before anything is written
    if n < 1 or size < 8:
        raise ValueError(f"n must be >= 1 and size >= 8; got n={n}, size={size}")
    files = find_images(clean)
    _check_size_fits(files, size)
    out = Path(out)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset (manifest.json); pass --overwrite (overwrite=True) to replace it")
        for sub in ("input", "target", "phi", "mask"):
            shutil.rmtree(out / sub, ignore_errors=True)
        manifest_path.unlink()  # it described the files just removed
    dirs = ["input", "target"] + (["phi"] if kind == "dust" else []) + (["mask"] if kind == "cloud" else [])
    out_existed = out.exists()
    for d in dirs:
        (out / d).mkdir(parents=True, exist_ok=True)

    # A dataset is complete once its manifest is written; an error or interruption before then (a full disk, an
    # unreadable source, Ctrl-C) removes what this call wrote, so no half dataset is left to be mistaken for one.
    try:
        root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(sample_seed(seed, 2**31))).tolist()
        width = max(5, len(str(n - 1)))
        samples = []
        bands_seen: set[int] = set()
        it: Iterable[int] = range(n)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"synthesize {kind}", unit="img")
        levels = None
        if dark_object:
            from .data.clean_crops import CleanCrops

            one_based = None if bands is None else [int(b) + 1 for b in bands]
            levels = CleanCrops(files, size, one_based, scale)
        for i in it:
            fi = order[i % len(files)]
            path = files[fi]
            stored, record = _make_sample(kind, path, sample_seed(seed, i), size, preset, scale, bands,
                                          wavelengths_nm, shadow, sensor,
                                          None if levels is None else levels.dark_levels(fi))
            bands_seen.add(stored["target"].shape[0])
            if len(bands_seen) > 1:
                raise ValueError(f"sources have different band counts ({sorted(bands_seen)}); pass bands= to pick some")
            name = f"{i:0{width}d}"
            files_written = {key: f"{key}/{_write(out / key / name, arr)}" for key, arr in stored.items()}
            samples.append({"index": i, "name": name, "source": os.path.relpath(path.resolve(), root), **record,
                            "files": files_written})

        from . import __version__

        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "rsrestore_version": __version__,
            "kind": kind,
            "preset": preset,
            "n": n,
            "size": size,
            "seed": seed,
            "scale": scale,
            "bands": None if bands is None else [int(b) for b in bands],
            "wavelengths_nm": None if wavelengths_nm is None else [float(w) for w in wavelengths_nm],
            "shadow": shadow,
            "sensor": sensor,
            "dark_object": bool(dark_object),
            "clean_root": str(root),
            "num_sources": len(files),
            "phi": {"alpha": PHI_ALPHA, "beta": PHI_BETA} if kind == "dust" else None,
            "samples": samples,
        }
        tmp = manifest_path.with_suffix(".json.tmp")
        tmp.write_text(_dump_manifest(manifest))
        tmp.replace(manifest_path)
    except BaseException:
        for d in dirs:
            shutil.rmtree(out / d, ignore_errors=True)
        manifest_path.with_suffix(".json.tmp").unlink(missing_ok=True)
        if not out_existed and not any(out.iterdir()):
            out.rmdir()
        raise
    return out


def _check_size_fits(files: Sequence[Path], size: int) -> None:
    """Refuse, before any file is written, a crop size whose samples cannot fit in memory (``--size 100000``).

    A crop larger than an image is padded by reflection, so sizes somewhat beyond the largest image are fine; the
    bound is memory: a sample holds at least four float32 arrays of the crop (clean, degraded and the degradation's
    maps).
    """
    import psutil

    from .errors import format_bytes

    shapes = {f: image_shape(f) for f in files}
    largest, (_, h, w) = max(shapes.items(), key=lambda item: max(item[1][1:]))
    bands = max(c for c, _, _ in shapes.values())
    needed = 4 * 4 * bands * size * size
    available = psutil.virtual_memory().available
    if needed > available:
        raise ValueError(
            f"--size {size} needs at least {format_bytes(needed)} of memory per sample, {format_bytes(available)} "
            f"available; the largest clean image ({largest}) is {w} x {h} pixels: choose --size {max(h, w)} or less"
        )


def _dump_manifest(manifest: dict) -> str:
    """JSON with one line per sample: readable, diffable and far shorter than fully indented output."""
    head = {k: v for k, v in manifest.items() if k != "samples"}
    lines = json.dumps(head, indent=1)[:-2].splitlines()  # drop the closing "\n}"
    body = ",\n".join("  " + json.dumps(s, separators=(", ", ": ")) for s in manifest["samples"])
    return "\n".join(lines) + ',\n "samples": [\n' + body + "\n ]\n}\n"


def load_manifest(dataset: str | Path | dict) -> dict:
    """The manifest of a written dataset (a folder or the manifest file), checked for its format."""
    if isinstance(dataset, dict):
        manifest = dataset
    else:
        p = Path(dataset)
        p = p / "manifest.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"no manifest.json at {p}")
        manifest = json.loads(p.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"not a synthetic dataset manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"unsupported manifest version {manifest.get('version')!r} (expected {MANIFEST_VERSION})")
    return manifest


def regenerate_sample(dataset: str | Path | dict, index: int, clean_root: str | Path | None = None) -> dict:
    """Rebuild sample `index` of a written dataset from its manifest: arrays exactly as stored (uint8 for PNG,
    float32 otherwise) under ``input``, ``target`` and ``phi`` / ``mask``. `clean_root` replaces the manifest's
    ``clean_root`` when the clean images have moved."""
    m = load_manifest(dataset)
    try:
        rec = next(s for s in m["samples"] if s["index"] == index)
    except StopIteration:
        raise IndexError(f"sample {index} is not in the manifest ({len(m['samples'])} samples)") from None
    root = Path(clean_root) if clean_root is not None else Path(m["clean_root"])
    path = root / rec["source"]
    if not path.is_file():
        raise FileNotFoundError(f"clean source {path} not found; pass clean_root= to say where the images are")
    stored, again = _make_sample(m["kind"], path, rec["seed"], m["size"], m["preset"], m["scale"], m["bands"],
                                 m["wavelengths_nm"], m["shadow"], m.get("sensor", 0.0),
                                 None if "dark_object" not in rec else [rec["dark_object"]])
    if again["window"] != rec["window"] or again["preset"] != rec["preset"]:
        raise RuntimeError(f"sample {index}: the regenerated crop/preset differ from the manifest "
                           f"({again['window']}, {again['preset']} vs {rec['window']}, {rec['preset']})")
    return stored


def read_sample(dataset: str | Path, index: int) -> dict:
    """Read sample `index` of a written dataset back as stored (uint8 / float32 arrays, (C, H, W))."""
    from .raster import read_raster

    m = load_manifest(dataset)
    rec = next(s for s in m["samples"] if s["index"] == index)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for key, rel in rec["files"].items():
            # scale 1: the stored values (uint8 or float32), exact in float32, back in the file's dtype
            values, _, info = read_raster(Path(dataset) / rel, scale=1.0)
            out[key] = values.astype(info.dtype)
    return out
