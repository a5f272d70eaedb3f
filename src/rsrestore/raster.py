"""Reading and writing rasters (GeoTIFF incl. tiled and COG, PNG, JPEG) with rasterio, and value scaling.

This is the only module that knows file dtypes. Inside the library an image is float32 in [0, 1]:

============  =========================================================================================
file dtype    default scale (value / scale -> [0, 1]); `--scale` overrides
============  =========================================================================================
uint8         255
uint16        10000 in GeoTIFF (Sentinel-2 / Landsat style reflectance x 10000); 65535 in PNG
int16         10000 (signed reflectance products)
float32/64    1 (already reflectance-like)
============  =========================================================================================

Writing maps back by the same scale, rounds, and clips to the dtype's range. Nodata pixels (the dataset mask: nodata
values, alpha or internal masks) are copied from the input unchanged and never feed statistics. Bands not selected for
restoration are copied unchanged.
"""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning, RasterioIOError
from rasterio.windows import Window

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32", "float64")
EXTENSION_DRIVERS = {".tif": "GTiff", ".tiff": "GTiff", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
READABLE_EXTENSIONS = tuple(EXTENSION_DRIVERS)

# SAR backscatter ranges (dB) used to scale Sentinel-1 VV and VH to [0, 1], as DSen2-CR (Meraner et al. 2020) does.
SAR_DB_RANGES = ((-25.0, 0.0), (-32.5, 0.0))


class RasterError(Exception):
    """A problem with an input or output raster, explained in one line for the user."""


def default_scale(dtype: str, driver: str = "GTiff") -> float:
    """The divisor that maps a file's values to [0, 1] (see the module docstring)."""
    if dtype == "uint8":
        return 255.0
    if dtype == "uint16":
        return 65535.0 if driver == "PNG" else 10000.0
    if dtype == "int16":
        return 10000.0
    if dtype in ("float32", "float64"):
        return 1.0
    raise RasterError(f"unsupported data type {dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")


def parse_bands(spec: str | list[int] | tuple[int, ...] | None) -> list[int] | None:
    """'4,3,2' -> [4, 3, 2] (1-based band numbers, as GDAL counts them)."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        try:
            bands = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError:
            raise RasterError(f"--bands must be comma-separated band numbers like 4,3,2; got {spec!r}") from None
    else:
        bands = [int(b) for b in spec]
    if not bands or min(bands) < 1:
        raise RasterError(f"band numbers start at 1; got {spec!r}")
    if len(set(bands)) != len(bands):
        raise RasterError(f"a band is selected twice in {spec!r}")
    return bands


@dataclass
class RasterInfo:
    """What must survive a restore: georeferencing, nodata, band descriptions, layout and the value scale."""

    path: Path
    driver: str
    dtype: str
    count: int
    height: int
    width: int
    crs: object
    transform: object
    nodata: float | None
    descriptions: tuple
    profile: dict
    is_cog: bool
    bands: list[int]  # 1-based bands given to the restorer, in that order
    scale: float
    colorinterp: tuple = field(default=())

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster, turning every way it can fail into one readable line."""
    p = Path(path)
    if not p.exists():
        raise RasterError(f"input not found: {p}")
    if p.is_dir():
        raise RasterError(f"input is a folder, not a raster: {p}")
    if not os.access(p, os.R_OK):
        raise RasterError(f"input is not readable (permission denied): {p}")
    try:
        return rasterio.open(p)
    except RasterioIOError as e:
        raise RasterError(f"cannot read {p}: not a supported or valid raster ({_short(e)})") from None


def inspect_raster(
    path: str | Path, bands: list[int] | str | None = None, scale: float | None = None
) -> RasterInfo:
    """Describe a raster and validate the band selection and dtype."""
    with open_raster(path) as ds:
        dtypes = set(ds.dtypes)
        if len(dtypes) != 1:
            raise RasterError(f"{path}: bands of different data types ({sorted(dtypes)}) are not supported")
        dtype = ds.dtypes[0]
        if dtype not in SUPPORTED_DTYPES:
            raise RasterError(f"{path}: unsupported data type {dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")
        sel = parse_bands(bands) or list(range(1, ds.count + 1))
        if max(sel) > ds.count:
            raise RasterError(f"{path} has {ds.count} band(s); cannot select band {max(sel)}")
        driver = ds.driver
        layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "")
        return RasterInfo(
            path=Path(path),
            driver=driver,
            dtype=dtype,
            count=ds.count,
            height=ds.height,
            width=ds.width,
            crs=ds.crs,
            transform=ds.transform,
            nodata=ds.nodata,
            descriptions=ds.descriptions,
            profile=dict(ds.profile),
            is_cog=layout.upper() == "COG",
            bands=sel,
            scale=float(scale) if scale else default_scale(dtype, driver),
            colorinterp=tuple(ds.colorinterp),
        )


def to_unit(raw: np.ndarray, scale: float) -> np.ndarray:
    """File values -> float32 in [0, 1] (not clipped: values above the nominal range stay visible to the caller)."""
    return (raw.astype(np.float32) / np.float32(scale)).astype(np.float32)


def from_unit(values: np.ndarray, dtype: str, scale: float) -> np.ndarray:
    """Float values -> the file dtype: multiply by `scale`, round for integers, clip to the dtype's range."""
    v = np.asarray(values, dtype=np.float64) * scale
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(v), info.min, info.max).astype(dtype)
    return v.astype(dtype)


def sar_to_unit(db: np.ndarray) -> np.ndarray:
    """Sentinel-1 backscatter in dB (VV, VH, ...) -> [0, 1] by clipping to each band's range in SAR_DB_RANGES."""
    out = np.empty(db.shape, dtype=np.float32)
    for i in range(db.shape[0]):
        lo, hi = SAR_DB_RANGES[min(i, len(SAR_DB_RANGES) - 1)]
        band = np.nan_to_num(db[i].astype(np.float32), nan=lo)
        out[i] = (np.clip(band, lo, hi) - lo) / (hi - lo)
    return out


def valid_mask(ds, window: Window | None = None, out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Valid-pixel mask (H, W) bool from GDAL's dataset mask: nodata values, an alpha band or an internal mask."""
    kw = {"window": window}
    if out_shape is not None:
        kw.update(out_shape=out_shape, resampling=Resampling.nearest)
    with warnings.catch_warnings():
        # A nodata value beside an alpha band: GDAL follows the nodata value, which is what we want too.
        warnings.simplefilter("ignore", NodataShadowWarning)
        return ds.dataset_mask(**kw) > 0


def read_raster(
    path: str | Path,
    bands: list[int] | str | None = None,
    scale: float | None = None,
    window: Window | None = None,
) -> tuple[np.ndarray, np.ndarray, RasterInfo]:
    """Read a raster (or a window of it) as float32 (C, H, W) in [0, 1], the valid-pixel mask (H, W) and its info."""
    info = inspect_raster(path, bands, scale)
    with open_raster(path) as ds:
        try:
            raw = ds.read(info.bands, window=window)
            mask = valid_mask(ds, window)
        except RasterioIOError as e:
            raise RasterError(f"cannot read {path}: the file is damaged ({_short(e)})") from None
    return to_unit(raw, info.scale), mask, info


def output_driver(info: RasterInfo, out_path: Path) -> str:
    """The output format follows the output's extension when it has a known one, else the input's format."""
    return EXTENSION_DRIVERS.get(out_path.suffix.lower(), info.driver)


def check_output_path(src: str | Path, dst: str | Path, overwrite: bool) -> Path:
    """Refuse to overwrite the input, or an existing output without `overwrite`; the folder must exist."""
    s, d = Path(src), Path(dst)
    if d.exists() and s.exists() and d.resolve() == s.resolve():
        raise RasterError(f"output {d} is the input itself; choose another output path")
    if d.resolve() == s.resolve():
        raise RasterError(f"output {d} is the input itself; choose another output path")
    if d.exists() and not overwrite:
        raise RasterError(f"output {d} exists; pass --overwrite to replace it")
    if not d.parent.exists():
        raise RasterError(f"output folder does not exist: {d.parent}")
    return d


class RasterWriter:
    """Writes an output raster window by window into a temporary GeoTIFF that becomes the output only on `commit()`.

    An interrupted run leaves no partial file under the final name. The GeoTIFF keeps the input's CRS, transform,
    nodata, band descriptions, colour interpretation, tiling and compression. PNG, JPEG and COG outputs cannot be
    written window by window by GDAL, so they are converted from the finished GeoTIFF in one copy at the end.
    """

    def __init__(self, info: RasterInfo, dst: str | Path):
        self.info = info
        self.dst = Path(dst)
        self.driver = output_driver(info, self.dst)
        token = uuid.uuid4().hex[:8]
        self._tmp = self.dst.parent / f".{self.dst.name}.{token}.scratch.tif"
        self._final_tmp = self.dst.parent / f".{self.dst.name}.{token}.partial{self.dst.suffix}"
        profile = {
            k: v
            for k, v in info.profile.items()
            if k in ("dtype", "count", "width", "height", "crs", "transform", "nodata", "blockxsize", "blockysize",
                     "tiled", "compress", "interleave", "predictor", "photometric")
        }
        profile["driver"] = "GTiff"
        if info.driver != "GTiff" or info.is_cog:
            # A scratch GeoTIFF for formats converted at the end: tiled so window writes stay cheap.
            for k in ("blockxsize", "blockysize", "tiled", "interleave", "photometric"):
                profile.pop(k, None)
            profile.update(tiled=True, blockxsize=256, blockysize=256)
            if info.driver == "JPEG" or self.driver == "JPEG":
                profile.pop("compress", None)
        if profile.get("tiled") and (
            profile.get("blockxsize", 256) % 16 or profile.get("blockysize", 256) % 16
        ):
            profile.update(blockxsize=256, blockysize=256)
        self._ds = rasterio.open(self._tmp, "w", **profile)
        if any(info.descriptions):
            self._ds.descriptions = info.descriptions
        try:
            if info.colorinterp and len(info.colorinterp) == info.count:
                self._ds.colorinterp = info.colorinterp
        except Exception:  # colour interpretation is cosmetic; some combinations GDAL refuses for GeoTIFF
            pass
        self._committed = False

    def write(self, raw: np.ndarray, window: Window) -> None:
        """Write all bands (C, h, w) of a window, already in the file dtype."""
        self._ds.write(raw, window=window)

    def commit(self) -> Path:
        self._ds.close()
        try:
            if self.driver == "GTiff" and not self.info.is_cog:
                os.replace(self._tmp, self.dst)
            else:
                driver = "COG" if (self.info.is_cog and self.driver == "GTiff") else self.driver
                opts = {"QUALITY": 95} if driver == "JPEG" else {}
                rasterio.shutil.copy(self._tmp, self._final_tmp, driver=driver, **opts)
                os.replace(self._final_tmp, self.dst)
                self._remove(self._tmp)
                # PNG and JPEG cannot hold a CRS: GDAL keeps it in a side-car .aux.xml, which goes with the output.
                aux = Path(str(self._final_tmp) + ".aux.xml")
                if aux.exists():
                    os.replace(aux, Path(str(self.dst) + ".aux.xml"))
        except Exception:
            self.abort()
            raise
        self._committed = True
        return self.dst

    def abort(self) -> None:
        if not self._ds.closed:
            self._ds.close()
        for p in (self._tmp, self._final_tmp, Path(str(self._final_tmp) + ".aux.xml")):
            self._remove(p)

    @staticmethod
    def _remove(p: Path) -> None:
        try:
            p.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "RasterWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()


def write_raster(
    path: str | Path, values: np.ndarray, like: RasterInfo | None = None, dtype: str = "uint8",
    scale: float | None = None, crs=None, transform=None, nodata=None, overwrite: bool = True,
) -> Path:
    """Write a whole float (C, H, W) array in [0, 1] to a raster, taking georeferencing from `like` if given."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RasterError(f"output {path} exists; pass --overwrite to replace it")
    c, h, w = values.shape
    driver = EXTENSION_DRIVERS.get(path.suffix.lower(), "GTiff")
    if like is not None:
        dtype, scale = like.dtype, like.scale
        crs, transform, nodata = like.crs, like.transform, like.nodata
    scale = scale or default_scale(dtype, driver)
    profile = dict(driver=driver, dtype=dtype, count=c, height=h, width=w)
    if driver == "GTiff":
        profile.update(crs=crs, transform=transform, nodata=nodata, compress="deflate")
        if h >= 256 and w >= 256:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(from_unit(values, dtype, scale))
    return path


def _short(e: Exception) -> str:
    """The first line of a GDAL error, which is often long and multi-line."""
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
