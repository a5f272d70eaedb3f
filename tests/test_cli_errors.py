"""Errors at the command line's edge: one line and exit status 2 for what a user can fix (a full disk, a read-only
folder, a scene too large for the free space, an absurd crop size), one line and exit status 1 for a bug, the
traceback behind --debug, and usage lines that name values rather than Python types."""

import errno
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from _one_line_errors import one_error_line, user_error
from rsrestore import synthesize as synthesize_module
from rsrestore.cli import app
from rsrestore.errors import user_message

runner = CliRunner()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- errors sorted by meaning ------------------------------------------------------------------------------------


def test_user_messages_by_meaning():
    assert user_message(OSError(errno.ENOSPC, "No space left on device", "out/a.tif")) == (
        "no space left on device writing out/a.tif; free some space or write elsewhere")
    assert "read-only file system: cannot write out/a.tif" in user_message(
        OSError(errno.EROFS, "Read-only file system", "out/a.tif"))
    assert "permission denied: out" in user_message(PermissionError(errno.EACCES, "Permission denied", "out"))
    gdal = rasterio.errors.RasterioIOError(
        "Attempt to create new tiff file 'ro/.o.tif.host-12-0123abcd.scratch.tif' failed: Read-only file system")
    assert user_message(gdal) == "read-only file system: cannot write ro/o.tif; choose another output folder"
    tight = rasterio.errors.RasterioIOError(
        ".big.tif.0123abcd.scratch.tif: Free disk space available is 1073741824 bytes, whereas 2147483648 are at "
        "least necessary. You can disable this check by defining the CHECK_DISK_FREE_SPACE configuration option")
    assert user_message(tight).startswith("not enough free disk space for big.tif: 2.0 GiB needed, 1.0 GiB free")
    alloc = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                         "to allocate 7200000000000 bytes. Error code 12")
    assert user_message(alloc).startswith("not enough memory: tried to allocate 6.5 TiB")
    assert user_message(MemoryError("Unable to allocate 112. GiB")).startswith("not enough memory (Unable")
    assert user_message(AssertionError("Torch not compiled with CUDA enabled")).startswith("CUDA is not available")
    assert user_message(json.JSONDecodeError("Expecting value", "x", 0)).startswith("invalid JSON")
    assert user_message(ValueError("bad --scale\nsecond line")) == "bad --scale"
    wrapped = rasterio.errors.RasterioIOError("Write failed. See previous exception for details.")
    wrapped.__cause__ = rasterio.errors.RasterioIOError("TIFFAppendToStrip:Write error at scanline 0")
    assert user_message(wrapped) == "Write failed: TIFFAppendToStrip:Write error at scanline 0"
    # Bugs are not the user's to fix: no one-line excuse for them.
    assert user_message(TypeError("unsupported operand")) is None
    assert user_message(KeyError("x")) is None
    assert user_message(AttributeError("no attribute")) is None


def test_a_bug_is_one_line_with_exit_1_and_debug_shows_the_traceback(monkeypatch):
    from rsrestore.models import registry

    def broken():
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(registry, "describe_models", broken)
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "internal error: TypeError: unsupported operand type(s) for +: 'int' and 'str' (run with --debug for the "
        "traceback)"
    ]
    r = runner.invoke(app, ["--debug", "models"])
    assert r.exit_code == 1 and isinstance(r.exception, TypeError)  # propagated, so Python prints the traceback


def test_debug_shows_the_traceback_of_a_user_error_too(tmp_path):
    r = runner.invoke(app, ["--debug", "synthesize", str(tmp_path / "absent"), "-o", str(tmp_path / "o"), "--kind",
                            "haze", "-q"])
    assert isinstance(r.exception, FileNotFoundError)
    user_error(runner.invoke(app, ["synthesize", str(tmp_path / "absent"), "-o", str(tmp_path / "o"), "--kind",
                                    "haze", "-q"]), "not found", "absent")


# --- disk and memory ---------------------------------------------------------------------------------------------


def _clean_png(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "clean.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_full_disk_while_writing_a_dataset_is_one_line_and_leaves_nothing(monkeypatch, tmp_path):
    src = _clean_png(tmp_path / "clean")
    out = tmp_path / "pairs"
    written = []

    def disk_fills_after_two(path, a):  # what PIL's write() raises on a full disk: an errno, no file name
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real_write_png(path, a)

    real_write_png = synthesize_module._write_png
    monkeypatch.setattr(synthesize_module, "_write_png", disk_fills_after_two)
    r = runner.invoke(app, ["synthesize", str(src), "-o", str(out), "--kind", "haze", "--n", "3", "--size", "32",
                            "-q"])
    user_error(r, "no space left on device writing", "00001.png")
    assert not out.exists()


def _namespace_tools() -> bool:
    """A user and mount namespace (util-linux `unshare -rm`) lets a test mount a tiny tmpfs or a read-only bind."""
    if not shutil.which("unshare") or sys.platform != "linux":
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespace_tools(), reason="needs `unshare -rm` (user mount namespaces)")


def _in_namespace(setup: str, args: list[str]) -> subprocess.CompletedProcess:
    cli = " ".join([sys.executable, "-m", "rsrestore.cli", *args])
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"{setup} && exec {cli}"], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
@needs_namespaces
def test_real_full_disk(tmp_path):
    src = _clean_png(tmp_path / "clean")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = _in_namespace(f"mount -t tmpfs -o size=16k tmpfs {disk}",
                         ["synthesize", str(src), "-o", str(disk / "pairs"), "--kind", "haze", "--n", "50",
                          "--size", "40", "-q"])
    one_error_line(proc.stderr, proc.returncode, "no space left on device writing", str(disk / "pairs"))


@pytest.mark.slow
@needs_namespaces
def test_real_full_disk_while_restoring(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=64, width=64)
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = _in_namespace(f"mount -t tmpfs -o size=8k tmpfs {disk}",
                         ["restore", str(src), "-o", str(disk / "out.tif"), "--method", "dcp", "-q"])
    one_error_line(proc.stderr, proc.returncode, "no space left on device writing", "out.tif")


@pytest.mark.slow
@needs_namespaces
def test_read_only_output_folder(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=40, width=40)
    folder = tmp_path / "ro"
    folder.mkdir()
    proc = _in_namespace(f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}",
                         ["restore", str(src), "-o", str(folder / "out.tif"), "--method", "dcp", "-q"])
    one_error_line(proc.stderr, proc.returncode, "read-only", "out.tif")
    assert _files(folder) == []


def test_output_folder_without_write_permission(monkeypatch, geotiff_factory, tmp_path):
    """As a non-root user the folder's mode refuses the write; root writes anyway, so there the error GDAL raises
    on a refused create is simulated."""
    import os

    src, _ = geotiff_factory(height=40, width=40)
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        from rsrestore import raster

        real_open = raster.rasterio.open

        def refusing_open(path, mode="r", *args, **kwargs):
            if mode == "w" and Path(path).parent == folder:
                raise rasterio.errors.RasterioIOError(
                    f"Attempt to create new tiff file '{path}' failed: {path}: Permission denied")
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(raster.rasterio, "open", refusing_open)
    try:
        r = runner.invoke(app, ["restore", str(src), "-o", str(folder / "out.tif"), "--method", "dcp", "-q"])
        user_error(r, "permission denied", "out.tif")
        assert _files(folder) == []
    finally:
        folder.chmod(0o755)


def test_scene_larger_than_the_free_disk_space(tmp_path):
    """An uncompressed scene whose output cannot fit: GDAL's free-space check, one line, nothing written. The
    input is a sparse GeoTIFF (a header and no pixels) sized from the free space so that it can never fit."""
    free = shutil.disk_usage(tmp_path).free
    side = max(200_000, math.isqrt(free // 3) * 2)
    side -= side % 4096
    big = tmp_path / "big.tif"
    with rasterio.open(big, "w", driver="GTiff", dtype="uint8", count=3, width=side, height=side, tiled=True,
                       blockxsize=4096, blockysize=4096, sparse_ok=True, BIGTIFF="YES", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 10, 10)):
        pass
    assert big.stat().st_size < 10e6
    out = tmp_path / "out"
    out.mkdir()
    r = runner.invoke(app, ["restore", str(big), "-o", str(out / "restored.tif"), "--method", "dcp", "-q"])
    user_error(r, "disk space", "restored.tif")
    assert _files(out) == []


def test_absurd_synthesize_size(tmp_path):
    src = _clean_png(tmp_path / "clean")
    out = tmp_path / "pairs"
    user_error(runner.invoke(app, ["synthesize", str(src), "-o", str(out), "--kind", "haze", "--size", "100000",
                                    "-q"]), "--size 100000", "memory", "clean.png", "48")
    assert not out.exists()


# --- usage lines and help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["restore", "evaluate", "synthesize", "train", "models", "demo"])
def test_usage_names_values_not_python_types(command):
    r = runner.invoke(app, [command, "--help"])
    assert r.exit_code == 0
    for typed in ("{", "<list[", "<str>", "<int>", "<path>", "<float>"):
        assert typed not in r.output, (typed, r.output)


def test_usage_line_of_restore():
    r = runner.invoke(app, ["restore", "--help"])
    assert r.output.splitlines()[0].endswith(" restore [OPTIONS] INPUTS...")
    assert "--output OUTPUT" in r.output


def test_every_evaluate_option_has_help():
    r = runner.invoke(app, ["evaluate", "--help"])
    options = r.output.split("Options:")[1]
    for flag in ("--tile", "--overlap", "--device", "--quiet"):
        row = next(line for line in options.splitlines() if flag in line)
        words = [w for w in row.split(flag, 1)[1].split() if not w.isupper()]  # drop the value's placeholder
        assert words and not words[0].startswith("[default"), row
