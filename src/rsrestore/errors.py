"""What an error means to a user: one line for errors a user can fix, nothing for bugs.

The command line (and anything else that reports failures to a person, such as a batch report) calls
:func:`user_message` on an exception. Errors are sorted by what they mean rather than by a list of classes: a missing
or unreadable file, a full disk or a read-only folder, a damaged raster or weights file, too little memory, a device
that is not there, or a bad value. Anything else is a bug and gets ``None``, so the caller shows it as an internal
error with a way to see the traceback.
"""

from __future__ import annotations

import errno
import json
import re

# The writer streams into a hidden temporary beside the output (``.NAME.[HOST-PID-]TOKEN.scratch.tif`` or
# ``... .partial.EXT``); GDAL names that file in its messages, the user knows only NAME.
_TEMPORARY_NAME = re.compile(r"\.([^/\\\s'\"]+)\.(?:[^/\\\s'\"]+-)?[0-9a-f]{8}\.(?:scratch|partial)(?:\.\w+)?")
_GDAL_FREE_SPACE = re.compile(r"Free disk space available is (\d+) bytes, whereas (\d+) are at least necessary")
_TORCH_CPU_ALLOC = re.compile(r"you tried to allocate (\d+) bytes")
_NO_CUDA = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver", "No CUDA GPUs are available",
            "invalid device ordinal", "CUDA driver initialization failed", "no kernel image is available")


def user_message(exc: BaseException) -> str | None:
    """One line saying what went wrong and what to do, or None when the error is not one a user can fix."""
    text = _first_line(exc)
    memory = _memory_message(exc, text)
    if memory:
        return memory
    if any(marker in str(exc) for marker in _NO_CUDA):
        return f"CUDA is not available ({text}); use --device cpu"
    oserror = _os_message(exc)
    if oserror:
        return oserror
    if _is_library_error(exc, "rasterio", "RasterioError", "CPLE_BaseError"):
        return _gdal_message(text)
    if _is_library_error(exc, "safetensors", "SafetensorError"):
        return f"not a valid safetensors file ({text})"
    if _is_library_error(exc, "yaml", "YAMLError"):
        return f"invalid YAML: {text}"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {text}"
    if isinstance(exc, (ValueError, OSError)) or _is_project_error(exc):
        return _unhide(text)
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if "See previous exception" in text and cause is not None:  # rasterio's wrapper of a GDAL error: say which
        text = f"{text.split('. See previous exception')[0]}: {_first_line(cause)}"
    return text


def _unhide(text: str) -> str:
    return _TEMPORARY_NAME.sub(r"\1", text)


def _is_project_error(exc: BaseException) -> bool:
    from .models.registry import ModelError
    from .raster import RasterError

    return isinstance(exc, (ModelError, RasterError))


def _is_library_error(exc: BaseException, module: str, *class_names: str) -> bool:
    """Whether `exc` derives from one of a library's exception classes, matched by module and name so that a
    library that is not installed is not imported."""
    return any(
        cls.__module__.split(".")[0] == module and cls.__name__ in class_names for cls in type(exc).__mro__
    )


def _memory_message(exc: BaseException, text: str) -> str | None:
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        return f"not enough GPU memory ({text}); use a smaller --tile or --batch-size, or --device cpu"
    wanted = _TORCH_CPU_ALLOC.search(str(exc))
    if wanted:
        return (f"not enough memory: tried to allocate {format_bytes(int(wanted.group(1)))}; a smaller --tile, "
                f"--batch-size or model configuration needs less")
    if isinstance(exc, MemoryError) or _is_library_error(exc, "rasterio", "CPLE_OutOfMemoryError"):
        detail = f" ({text})" if text != type(exc).__name__ else ""
        return f"not enough memory{detail}; a smaller --tile, --batch-size or --size needs less"
    return None


def _os_message(exc: BaseException) -> str | None:
    """A full disk, a read-only folder or a missing file, by errno or as GDAL words it."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    message = str(exc)
    name = _named_file(exc)
    target = name or "the output"
    if code == errno.ENOSPC or "No space left on device" in message:
        return f"no space left on device writing {target}; free some space or write elsewhere"
    if code == errno.EDQUOT or "Disk quota exceeded" in message:
        return f"disk quota exceeded writing {target}; free some space or write elsewhere"
    if code == errno.EROFS or "Read-only file system" in message:
        return f"read-only file system: cannot write {target}; choose another output folder"
    if (code in (errno.EACCES, errno.EPERM) or "Permission denied" in message) and name:
        return f"permission denied: {name}; check the permissions of the file and its folder"
    if code is not None and getattr(exc, "strerror", None) and name:
        return f"{exc.strerror}: {name}"
    return None


def _named_file(exc: BaseException) -> str | None:
    """The file an error is about: an OSError's filename, or the first quoted path in a GDAL message."""
    name = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    if not name:
        quoted = re.search(r"'([^']+)'", str(exc))
        name = quoted.group(1) if quoted else None
    return _unhide(str(name)) if name else None


def _gdal_message(text: str) -> str:
    free = _GDAL_FREE_SPACE.search(text)
    if free:
        available, needed = int(free.group(1)), int(free.group(2))
        target = text.split(":", 1)[0] if ":" in text else "the output"
        return (f"not enough free disk space for {_unhide(target)}: {format_bytes(needed)} needed, {format_bytes(available)} free; "
                f"free some space, write elsewhere, or restore a compressed copy of the input")
    return _unhide(text)


def format_bytes(n: float) -> str:
    """A byte count for people: 1.5 GiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
