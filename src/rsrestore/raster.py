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

Writing maps back by the same scale, rounds, and clips to the dtype's range; a valid pixel whose restored value lands on
the nodata value is moved to the nearest value off it, so it never becomes a hole; without a declared nodata, an
unsigned integer value that was not 0 is never written as 0, which most products read as no data. Nodata pixels (the
dataset mask: nodata values, alpha or internal masks) and pixels holding NaN or infinity in a float scene are invalid:
they are copied from the input unchanged and never feed a filter or a statistic. Bands not selected for restoration are
copied unchanged. An internal mask, 1-bit (NBITS) storage and a COG's compression, predictor, block size and overview
levels are kept.

Outputs are written to a scratch GeoTIFF beside the output, ``.<name>.<host>-<pid>-<token>.scratch.tif``, that becomes
the output only when the scene is complete. Scratch files of runs that died (their process no longer exists on this
host) are swept by the next run that writes into the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
import shutil
import socket
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, Interleaving, MaskFlags, Resampling
from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32", "float64")
EXTENSION_DRIVERS = {".tif": "GTiff", ".tiff": "GTiff", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
READABLE_EXTENSIONS = tuple(EXTENSION_DRIVERS)

# SAR backscatter ranges (dB) used to scale Sentinel-1 VV and VH to [0, 1], as DSen2-CR (Meraner et al. 2020) does.
SAR_DB_RANGES = ((-25.0, 0.0), (-32.5, 0.0))


class RasterError(Exception):
    """A problem with an input or output raster, explained in one line for the user."""


def default_scale(dtype: str, driver: str = "GTiff", nbits: int | None = None) -> float:
    """The divisor that maps a file's values to [0, 1] (see the module docstring); 2**nbits - 1 for NBITS storage."""
    if nbits is not None and dtype in ("uint8", "uint16"):
        return float(2**nbits - 1)
    if dtype == "uint8":
        return 255.0
    if dtype == "uint16":
        return 65535.0 if driver == "PNG" else 10000.0
    if dtype == "int16":
        return 10000.0
    if dtype in ("float32", "float64"):
        return 1.0
    raise RasterError(f"unsupported data type {dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")


def check_scale(scale) -> float | None:
    """A user-given scale as a float; None stays None (the dtype's default). Zero, negative and NaN are refused."""
    if scale is None:
        return None
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise RasterError(f"scale (--scale) must be a positive number; got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise RasterError(f"scale (--scale) must be a positive finite number; got {scale!r}")
    return value


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
    nbits: int | None = None  # NBITS storage (e.g. 1-bit masks); None for whole bytes
    has_internal_mask: bool = False  # a per-dataset mask band (GDAL mask, not nodata or alpha)
    overviews: tuple[int, ...] = ()  # decimation factors of the overviews in the file
    predictor: int | None = None  # the TIFF predictor of a compressed GeoTIFF

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or not self.transform.is_identity

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
        with quiet_georeferencing():
            return rasterio.open(p)
    except RasterioIOError as e:
        raise RasterError(f"cannot read {p}: not a supported or valid raster ({_short(e)})") from None


@contextlib.contextmanager
def quiet_georeferencing():
    """Silence rasterio's NotGeoreferencedWarning: PNG and JPEG scenes without a geotransform are read and written
    knowingly (their outputs get no made-up georeferencing either)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@contextlib.contextmanager
def reading(path: str | Path):
    """Turn a failure while reading pixels (a truncated or damaged tile) into one line naming the file."""
    try:
        yield
    except RasterioError as e:
        raise RasterError(f"cannot read {path}: the file is damaged or truncated ({_short(e)})") from None


@functools.lru_cache(maxsize=256)
def _png_jpeg_is_complete(path: str, mtime_ns: int, size: int) -> bool:
    """Whether a PNG or JPEG decodes to its end. GDAL's PNG and JPEG drivers read a file cut short without an error
    and return zeros for the missing rows, which would be restored and written as if they were real pixels; Pillow's
    decoder says "truncated" instead. One decode per file version (the arguments key the cache)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except OSError as e:
        return not any(w in str(e).lower() for w in ("truncat", "broken data stream"))
    except Exception:  # a layout Pillow does not decode (GDAL may): not evidence of damage
        return True
    return True


def check_decodes_to_end(path: str | Path, driver: str) -> None:
    """Refuse a PNG or JPEG that was cut short (see `_png_jpeg_is_complete`)."""
    if driver in ("PNG", "JPEG"):
        st = os.stat(path)
        if not _png_jpeg_is_complete(str(Path(path).resolve()), st.st_mtime_ns, st.st_size):
            raise RasterError(f"cannot read {path}: the file is damaged (its image data ends early: truncated)")


def inspect_raster(
    path: str | Path, bands: list[int] | str | None = None, scale: float | None = None
) -> RasterInfo:
    """Describe a raster and validate the band selection, scale and dtype."""
    scale = check_scale(scale)
    with open_raster(path) as ds:
        check_decodes_to_end(path, ds.driver)
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
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        layout = structure.get("LAYOUT", "")
        nbits = ds.tags(1, ns="IMAGE_STRUCTURE").get("NBITS")
        nbits = int(nbits) if nbits and int(nbits) < np.dtype(dtype).itemsize * 8 else None
        per_dataset = [MaskFlags.per_dataset]  # a mask band shared by all bands, and neither nodata nor alpha
        predictor = structure.get("PREDICTOR")
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
            scale=scale or default_scale(dtype, driver, nbits),
            colorinterp=tuple(ds.colorinterp),
            nbits=nbits,
            has_internal_mask=all(flags == per_dataset for flags in ds.mask_flag_enums),
            overviews=tuple(ds.overviews(1)),
            predictor=int(predictor) if predictor and predictor.isdigit() else None,
        )


def to_unit(raw: np.ndarray, scale: float) -> np.ndarray:
    """File values -> float32 in [0, 1] (not clipped: values above the nominal range stay visible to the caller)."""
    return (raw.astype(np.float32) / np.float32(scale)).astype(np.float32)


def from_unit(
    values: np.ndarray, dtype: str, scale: float, nodata: float | None = None, nbits: int | None = None
) -> np.ndarray:
    """Float values -> the file dtype: multiply by `scale`, round for integers, clip to the dtype's range (or to
    2**nbits - 1). With `nodata`, a value that lands on it is moved to the nearest value off it (see `off_nodata`)."""
    v = np.asarray(values, dtype=np.float64) * scale
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        hi = info.max if nbits is None else min(info.max, 2**nbits - 1)
        out = np.clip(np.rint(v), info.min, hi).astype(dt)
        lo = info.min
    else:
        out = v.astype(dt)
        lo, hi = -np.inf, np.inf
    if nodata is not None:
        out = off_nodata(out, v, nodata, lo, hi)
    return out


def off_nodata(out: np.ndarray, wanted: np.ndarray, nodata: float, lo: float, hi: float) -> np.ndarray:
    """Move values equal to `nodata` to the nearest representable value on the side `wanted` lies (the unrounded
    value), or the other side at the edge of the range [lo, hi]: 0 -> 1 and 255 -> 254 in uint8, the next float for
    float data. GIS software masks every pixel holding the nodata value, so a valid pixel must never hold it."""
    integer = np.issubdtype(out.dtype, np.integer)
    if not lo <= nodata <= hi or (integer and nodata != int(nodata)):  # NaN, or a value the data cannot hold
        return out
    nd = out.dtype.type(nodata)
    hit = out == nd
    if not hit.any():
        return out
    if integer:
        up = nd + 1 if nodata + 1 <= hi else None
        down = nd - 1 if nodata - 1 >= lo else None
    else:
        up = np.nextafter(nd, out.dtype.type(np.inf))
        down = np.nextafter(nd, out.dtype.type(-np.inf))
    if up is None and down is None:  # a 1-value range (NBITS=1 with nodata): nothing else to write
        return out
    out = out.copy()
    go_up = (wanted[hit] >= nodata) if (up is not None and down is not None) else (down is None)
    out[hit] = np.where(go_up, up if up is not None else nd, down if down is not None else nd)
    return out


def off_zero(out: np.ndarray, had: np.ndarray) -> np.ndarray:
    """Unsigned integer data without a declared nodata: a value that was not 0 where ``had`` (the values read) is not
    written as 0 but as 1. Most products read 0 as "no data" whatever the file declares (Sentinel-2 L1C and L2A,
    Landsat), so rounding or clipping a restored value down to 0 would make a hole of a pixel the user had (a cloud
    remover's near-dark cirrus band B10, 1-30 DN, came out 0 on 43 % of a SEN12MS-CR patch). Pixels that were 0
    may stay 0."""
    if not np.issubdtype(out.dtype, np.unsignedinteger):
        return out
    return np.where((out == 0) & (had != 0), out.dtype.type(1), out)


def finite_mask(raw: np.ndarray) -> np.ndarray | None:
    """(H, W) True where every band of a (C, H, W) float read is finite; None for integer data (always finite)."""
    if np.issubdtype(raw.dtype, np.integer):
        return None
    return np.isfinite(raw).all(axis=0)


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
    with warnings.catch_warnings(), reading(ds.name):
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
    with open_raster(path) as ds, reading(path):
        raw = ds.read(info.bands, window=window)
        mask = valid_mask(ds, window)
    finite = finite_mask(raw)
    if finite is not None:
        mask &= finite
    return to_unit(raw, info.scale), mask, info


def output_driver(info: RasterInfo, out_path: Path) -> str:
    """The output format follows the output's extension when it has a known one, else the input's format."""
    return EXTENSION_DRIVERS.get(out_path.suffix.lower(), info.driver)


def exists_message(path: Path) -> str:
    return f"output {path} exists; set overwrite=True (CLI: --overwrite) to replace it"


def check_output_path(src: str | Path, dst: str | Path, overwrite: bool) -> Path:
    """Refuse to overwrite the input, or an existing output without `overwrite`; the folder must exist."""
    s, d = Path(src), Path(dst)
    if d.resolve() == s.resolve():
        raise RasterError(f"output {d} is the input itself; choose another output path")
    if d.exists() and not overwrite:
        raise RasterError(exists_message(d))
    if not d.parent.exists():
        raise RasterError(f"output folder does not exist: {d.parent}")
    return d


def check_output_format(info: RasterInfo, dst: str | Path) -> str:
    """The output driver, after checking it can hold the data (before any pixel is processed); one line if not."""
    dst = Path(dst)
    driver = output_driver(info, dst)
    advice = "write a GeoTIFF (.tif) instead"
    if driver == "JPEG":
        if info.dtype != "uint8":
            raise RasterError(
                f"{dst}: JPEG holds 8-bit data, the scene is {info.dtype} (GDAL would write a 12-bit JPEG that clips "
                f"values above 4095 and few programs open); {advice}"
            )
        if info.count not in (1, 3):
            raise RasterError(f"{dst}: JPEG holds 1 or 3 bands, the scene has {info.count}; {advice}")
    if driver == "PNG":
        if info.dtype not in ("uint8", "uint16"):
            raise RasterError(f"{dst}: PNG holds 8- or 16-bit integers, the scene is {info.dtype}; {advice}")
        if info.count > 4:
            raise RasterError(f"{dst}: PNG holds at most 4 bands, the scene has {info.count}; {advice}")
        if info.count in (2, 4) and (len(info.colorinterp) != info.count or info.colorinterp[-1] != ColorInterp.alpha):
            raise RasterError(
                f"{dst}: PNG would store band {info.count} of the scene as transparency (alpha); {advice}"
            )
        if info.has_internal_mask:
            raise RasterError(f"{dst}: PNG cannot hold the scene's mask band; {advice}")
    return driver


# Scratch files carry the host and process id of their writer, so a later run can tell a dead run's leftovers from a
# live run's file (on this host; a shared folder's files from other hosts are never touched).
SCRATCH_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
_SCRATCH_NAME = re.compile(
    r"^\..+\." + re.escape(SCRATCH_HOST) + r"-(\d+)-[0-9a-f]{8}\.(scratch\.tif|partial\.[A-Za-z0-9]+)(\.aux\.xml)?$"
)
# Overviews of restored outputs are rebuilt at the input's levels; the resampling used to make the input's overviews
# is not recorded in the file, and averaging is the usual choice for imagery.
OVERVIEW_RESAMPLING = Resampling.average


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 probes without sending anything)."""
    if os.name == "nt":  # os.kill would terminate the process on Windows: never sweep there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def sweep_stale_scratch(folder: str | Path) -> list[Path]:
    """Remove scratch files that runs on this host left in `folder` when they died (SIGKILL, a crash, power loss).

    A scratch file whose writer process still exists is kept; returns the files removed.
    """
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return removed
    for entry in entries:
        m = _SCRATCH_NAME.match(entry.name)
        if m and not process_alive(int(m.group(1))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:  # another run swept it first
                pass
    return removed


def scratch_profile(info: RasterInfo, driver: str) -> dict:
    """Creation options of the scratch GeoTIFF: the input's layout when the output is a plain GeoTIFF, else a tiled
    GeoTIFF that window writes keep cheap (the final format is made from it in one copy)."""
    keep = ("dtype", "count", "width", "height", "crs", "transform", "nodata", "blockxsize", "blockysize", "tiled",
            "compress", "interleave", "photometric")
    profile = {k: v for k, v in info.profile.items() if k in keep}
    profile["driver"] = "GTiff"
    if not info.georeferenced:  # no made-up identity geotransform in the output
        profile.pop("crs", None)
        profile.pop("transform", None)
    if info.predictor and profile.get("compress"):
        profile["predictor"] = info.predictor
    if info.nbits:
        profile["nbits"] = info.nbits
    if info.driver != "GTiff" or info.is_cog:
        for k in ("blockxsize", "blockysize", "tiled", "interleave", "photometric"):
            profile.pop(k, None)
        profile.update(tiled=True, blockxsize=256, blockysize=256)
        if info.driver == "JPEG" or driver == "JPEG":
            profile.pop("compress", None)
            profile.pop("predictor", None)
    if profile.get("tiled") and (profile.get("blockxsize", 256) % 16 or profile.get("blockysize", 256) % 16):
        profile.update(blockxsize=256, blockysize=256)
    # A compressed scene's size is unknown in advance: GDAL picks BigTIFF whenever the file might pass 4 GB.
    profile["BIGTIFF"] = "IF_SAFER"
    return profile


def check_complete(path: Path, name: Path) -> None:
    """Check that a closed GeoTIFF opens and holds every block its index points at. GDAL reports a failed block write
    (a full disk, an exhausted quota) only on stderr and closes the file as if nothing happened, so without this check
    a truncated output would be committed with success. A full disk is an OSError(ENOSPC) naming `name`."""
    size = path.stat().st_size
    try:
        with quiet_georeferencing(), rasterio.open(path) as ds:
            end = indexed_end(ds)
    except RasterioError:
        end = None  # not even the index could be written
    if end is not None and end <= size:
        return
    missing = size + 1 if end is None else end - size
    if shutil.disk_usage(path.parent).free < max(missing, 1 << 20):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(name))
    raise RasterError(f"output {name} was not written completely (a write failed); check the disk and try again")


def indexed_end(ds) -> int:
    """The end in bytes of the last block a GeoTIFF's index points at (GDAL's BLOCK_OFFSET/BLOCK_SIZE items)."""
    by, bx = ds.block_shapes[0]
    bands = range(1, ds.count + 1) if ds.interleaving == Interleaving.band else (1,)
    end = 0
    for b in bands:
        for row in range(math.ceil(ds.height / by)):
            for col in range(math.ceil(ds.width / bx)):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=b)
                length = ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=b)
                if offset is not None and length is not None:
                    end = max(end, int(offset) + int(length))
    return end


class RasterWriter:
    """Writes an output raster window by window into a scratch GeoTIFF that becomes the output only on `commit()`.

    An interrupted run leaves no partial file under the final name, and `commit()` refuses to replace a file that
    appeared at the output path during the run unless `overwrite`. The output keeps the input's CRS, transform,
    nodata, internal mask, band descriptions, colour interpretation, NBITS, tiling, compression, predictor and
    overview levels. PNG, JPEG and COG outputs cannot be written window by window by GDAL, so they are converted from
    the finished GeoTIFF in one copy at the end. The output format is checked before anything is written.
    """

    def __init__(self, info: RasterInfo, dst: str | Path, overwrite: bool = False):
        self.info = info
        self.dst = Path(dst)
        self.overwrite = overwrite
        self.driver = check_output_format(info, self.dst)
        sweep_stale_scratch(self.dst.parent)
        token = f"{SCRATCH_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tmp = self.dst.parent / f".{self.dst.name}.{token}.scratch.tif"
        self._final_tmp = self.dst.parent / f".{self.dst.name}.{token}.partial{self.dst.suffix}"
        self._ds = None
        self._committed = False
        try:  # a signal or an error before the caller's `with` takes over must not leave the scratch file behind
            with quiet_georeferencing():
                self._ds = rasterio.open(self._tmp, "w", **scratch_profile(info, self.driver))
            if any(info.descriptions):
                self._ds.descriptions = info.descriptions
            try:
                if info.colorinterp and len(info.colorinterp) == info.count:
                    self._ds.colorinterp = info.colorinterp
            except Exception:  # colour interpretation is cosmetic; some combinations GDAL refuses for GeoTIFF
                pass
        except BaseException:
            self.abort()
            raise

    def write(self, raw: np.ndarray, window: Window, mask: np.ndarray | None = None) -> None:
        """Write all bands (C, h, w) of a window, already in the file dtype, and the input's mask (h, w) where the
        input has an internal mask band."""
        self._ds.write(raw, window=window)
        if self.info.has_internal_mask and mask is not None:
            self._ds.write_mask(np.where(mask, 255, 0).astype(np.uint8), window=window)

    def commit(self) -> Path:
        try:
            if self.info.overviews:
                self._ds.build_overviews(list(self.info.overviews), OVERVIEW_RESAMPLING)
            self._ds.close()
            check_complete(self._tmp, self.dst)
            if self.driver == "GTiff" and not self.info.is_cog:
                self._place(self._tmp)
            else:
                driver, options = self._conversion()
                # Without georeferencing there is nothing for a side-car .aux.xml to hold.
                with quiet_georeferencing(), rasterio.Env(GDAL_PAM_ENABLED="YES" if self.info.georeferenced else "NO"):
                    rasterio.shutil.copy(self._tmp, self._final_tmp, driver=driver, **options)
                if driver == "COG":
                    check_complete(self._final_tmp, self.dst)
                self._place(self._final_tmp)
                self._remove(self._tmp)
                # PNG and JPEG cannot hold a CRS: GDAL keeps it in a side-car .aux.xml, which goes with the output.
                aux = Path(str(self._final_tmp) + ".aux.xml")
                if aux.exists():
                    os.replace(aux, Path(str(self.dst) + ".aux.xml"))
        except BaseException:
            self.abort()
            raise
        self._committed = True
        return self.dst

    def _conversion(self) -> tuple[str, dict]:
        """The final format and its creation options: a COG input's compression, predictor, block size and
        overviews are kept."""
        if self.info.is_cog and self.driver == "GTiff":
            p = self.info.profile
            options = {"COMPRESS": str(p.get("compress") or "NONE").upper(), "BIGTIFF": "IF_SAFER",
                       "OVERVIEWS": "FORCE_USE_EXISTING" if self.info.overviews else "NONE"}
            if p.get("blockxsize"):
                options["BLOCKSIZE"] = p["blockxsize"]
            if self.info.predictor and p.get("compress"):
                options["PREDICTOR"] = self.info.predictor
            return "COG", options
        if self.driver == "JPEG":
            return "JPEG", {"QUALITY": 95}
        if self.driver == "PNG" and self.info.nbits:
            return "PNG", {"NBITS": self.info.nbits}
        return self.driver, {}

    def _place(self, src: Path) -> None:
        """Move the finished file to the output path, refusing (without `overwrite`) a file that appeared there while
        the scene was restored."""
        if self.overwrite:
            os.replace(src, self.dst)
            return
        refused = RasterError(
            f"output {self.dst} appeared while restoring and was not replaced; set overwrite=True (CLI: --overwrite) "
            f"to replace it"
        )
        try:
            os.link(src, self.dst)  # a hard link fails if the name exists: no window between check and move
        except FileExistsError:
            raise refused from None
        except OSError:  # a file system without hard links
            if self.dst.exists():
                raise refused from None
            os.replace(src, self.dst)
            return
        self._remove(src)

    def abort(self) -> None:
        if self._ds is not None and not self._ds.closed:
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
        raise RasterError(exists_message(path))
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
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), quiet_georeferencing():
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(from_unit(values, dtype, scale))
    return path


def _short(e: Exception) -> str:
    """The first line of a GDAL error, which is often long and multi-line."""
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
