"""Process memory: measure what a model's forward pass costs, plan tile batches that fit a budget, tune malloc.

A learned model's activations grow with the pixels of a batch: a batch of four 544 x 544 tiles of the paper-size
RSDehamba peaks near 7 GB. Rather than a fixed number of tiles per batch, the tiling engine measures the model once on
two small probe tiles (the peak resident memory each forward adds, Linux's VmHWM after a reset), fits
``fixed + per_pixel * pixels`` and takes as many tiles per batch as fit the budget left beside what the process already
holds -- and a smaller tile when even one does not fit. A probe measures the model as configured (width, depth, bf16,
SAR inputs), which a per-model constant could not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import psutil

MiB = 2**20
DEFAULT_MAX_MEMORY_MB = 1400  # the CLI's default: the whole process under 1.5 GB
PROBE_SIDE = 64  # probe tiles are PROBE_SIDE and 2 * PROBE_SIDE pixels square
PROBE_MARGIN = 1.15  # measured costs are scaled by this much: two small probes extrapolated to a full tile
_PEAK_RESET = "/proc/self/clear_refs"  # writing "5" resets the peak resident size (Linux 4.0+)


@dataclass(frozen=True)
class ForwardMemory:
    """Peak memory a forward pass adds, in bytes: `fixed` whatever the input's size, plus `per_pixel` per input pixel
    of the batch (all tiles together)."""

    fixed: float
    per_pixel: float

    def bytes(self, pixels: int) -> float:
        return self.fixed + self.per_pixel * pixels


def resident_bytes() -> int:
    return psutil.Process().memory_info().rss


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_free_memory() -> None:
    """Give memory that malloc holds free back to the system (glibc's malloc_trim), so that what a measurement sees
    as new resident memory is what the measured code allocated, not a reuse of blocks freed earlier."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


#: glibc's mallopt parameter for the size from which allocations get their own mapping, returned on free.
_M_MMAP_THRESHOLD = -3
#: Environment variable fixing glibc's mmap threshold (bytes) while a memory budget is in effect; unset or 0 leaves
#: glibc's own rule. glibc starts at 128 kB but raises the threshold to the size of each mapped block freed (up to
#: 32 MB), so after the first tiles most activations come from the heap, whose free holes it keeps. Restoring a 2800^2
#: scene with RSDehamba through the CLI (2 threads, quiet machine): glibc's rule 1347 MB peak, 125 s; 16 MB 1270 MB,
#: 155 s; 4 MB 1098 MB, 190 s (the system time of the page faults nearly triples). The default stays glibc's: the
#: budget holds without it, and the time is not worth it unless memory is tight.
MMAP_THRESHOLD_ENV = "RSRESTORE_MMAP_THRESHOLD"


def bound_heap_fragmentation(threshold: int | None = None) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (default ``$RSRESTORE_MMAP_THRESHOLD``) for this process, so
    that large blocks (a model's activations) go back to the system when freed and resident memory follows what is in
    use. Called by a memory budget (``--max-memory``); True where it took effect (Linux with glibc, a threshold > 0)."""
    if threshold is None:
        threshold = int(os.environ.get(MMAP_THRESHOLD_ENV) or 0)
    libc = _libc()
    if threshold <= 0 or libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def _peak_resident_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measure_peak(fn: Callable[[], object]) -> int | None:
    """Peak resident memory `fn()` adds to the process, in bytes; None where the platform cannot reset the peak."""
    release_free_memory()
    try:
        with open(_PEAK_RESET, "w") as f:
            f.write("5")
    except OSError:
        return None
    before = resident_bytes()
    fn()
    peak = _peak_resident_bytes()
    return None if peak is None else max(0, peak - before)


def measure_forward_memory(forward: Callable[[int], object], side: int = PROBE_SIDE,
                           buffer_bytes_per_pixel: float = 0.0) -> ForwardMemory | None:
    """Fit the peak memory of `forward(s)` (one s x s tile) at s = side and 2 * side; `buffer_bytes_per_pixel` adds
    the engine's own arrays around the model (tiles read, stacked, restored and accumulated). None where the platform
    cannot measure a peak."""
    forward(side)  # the first call allocates what every call shares (lazy initialisation, kernel caches)
    small, large = measure_peak(lambda: forward(side)), measure_peak(lambda: forward(2 * side))
    if small is None or large is None:
        return None
    per_pixel = max(large - small, 0) / (3 * side * side)
    fixed = max(small - per_pixel * side * side, 0)
    return ForwardMemory(fixed * PROBE_MARGIN, per_pixel * PROBE_MARGIN + buffer_bytes_per_pixel)


def tiles_per_batch(cost: ForwardMemory, budget: float, tile_pixels: int, most: int) -> int:
    """The most tiles of `tile_pixels` (at most `most`, never fewer than one) whose forward fits `budget` bytes."""
    fits = math.floor((budget - cost.fixed) / max(cost.per_pixel * tile_pixels, 1.0))
    return max(1, min(most, fits))
