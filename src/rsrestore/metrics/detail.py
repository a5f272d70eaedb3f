"""Detail metrics: does an output keep the detail of its reference (or of its input), and does it add a grid?

Two energy ratios, one value per image, output over reference. Against the clean reference they are full-reference
scores (1 is ideal); against the degraded input (pass the input as ``reference``) they are usable on real scenes that
have no clean reference: a dehazed or dust-removed output should keep at least the input's detail (gradient ratio
>= 1: no blurrier than the input) and add no grid (checkerboard ratio near 1).

The convention (also :data:`DETAIL_CONVENTIONS`, stored next to the scores):

* **Bands.** Every band passed, each the same weight (never the Y channel, as for the other metrics); an energy is the
  mean over bands and positions, so the ratio does not depend on the band count or the image size.
* **Gradient energy** = mean over bands and valid pairs of ``(x[i, j+1] - x[i, j])^2`` plus the same mean of
  ``(x[i+1, j] - x[i, j])^2`` (forward differences; a difference counts only where both its pixels are valid), so a
  ramp of slopes (gx, gy) has energy gx^2 + gy^2. A blur lowers it (for a blur
  kernel of frequency response H, each frequency's energy is scaled by |H|^2 <= 1); sharpening raises it.
* **Checkerboard (Nyquist) energy**: the image's energy at the 2-pixel period, the frequencies of a pattern that
  repeats every 2 pixels (what stride-2 transposed convolutions and pixel shuffles leave): the components
  ``(-1)^(x+y)``, ``(-1)^x`` and ``(-1)^y``. Each is demodulated (the image multiplied by it, which moves that
  frequency to 0) and low-passed by the 13-tap binomial filter (separable, "valid" positions only: the window lies in
  the image and all of its pixels are valid); the energy is the mean of the three squared local amplitudes, summed
  over the three components. A pattern ``a * (-1)^(x+y)`` adds exactly ``a`` to the local amplitude. The binomial
  filter's response ``cos^12(w / 2)`` (a Gaussian of sigma sqrt(3) in effect) passes frequencies within about 0.48
  radians of the Nyquist frequency at half energy (periods 2 to 2.4 pixels) and is exactly 0 at frequency 0 with
  twelve vanishing derivatives, so an image's smooth content (constants, ramps, polynomials of degree < 12) leaks
  nothing into it; a Gaussian truncated to the same 13 taps would leak 7.5e-4 of it.
* **Floor.** Both energies of both images get ``(1/255)^2 / 12`` added (the variance of 8-bit quantisation noise), so
  that a flat reference (calm water, a synthetic constant) gives a finite ratio; identical images still give exactly
  1. With real 8-bit data neither image can be cleaner than that anyway.
* **Precision.** Filters run in the input's precision (float32 unless float64 is given), sums in float64.
* **Reduction.** One ratio per image; a data set's score is the mean over images like every other metric.

Written by hand on torch (a few separable convolutions): no library metric computes energy at the Nyquist frequency
in local windows with nodata masks, and this keeps it batched on the caller's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rsrestore.metrics.full_reference import _check_image, _check_mask, _work_dtype

__all__ = [
    "DETAIL_CONVENTIONS",
    "ENERGY_FLOOR",
    "NYQUIST_RADIUS",
    "gradient_energy",
    "nyquist_energy",
    "nyquist_energy_map",
    "gradient_energy_ratio",
    "checkerboard_energy_ratio",
    "detail_scores",
]

#: Variance of 8-bit quantisation noise on the [0, 1] scale, added to every energy (see the module docstring).
ENERGY_FLOOR = (1.0 / 255.0) ** 2 / 12.0
#: Half width of the binomial low-pass applied to the demodulated image (13 taps, order 12).
NYQUIST_RADIUS = 6
#: The three period-2 components, as (sign along y, sign along x): (-1)^(x+y), (-1)^x, (-1)^y.
COMPONENTS = ("xy", "x", "y")

DETAIL_CONVENTIONS: dict[str, str] = {
    "gradient_ratio": (
        "gradient energy of output / of reference: mean over bands and valid pairs of squared forward differences "
        "along x plus that along y (both pixels valid); (1/255)^2/12 added to both; 1 ideal, < 1 blurrier"
    ),
    "checkerboard_ratio": (
        "2-pixel-period energy of output / of reference: the image demodulated by (-1)^(x+y), (-1)^x, (-1)^y, each "
        "low-passed by the 13-tap binomial filter (windows fully valid), squared amplitudes summed over the three "
        "and averaged over positions and bands; (1/255)^2/12 added to both; 1 ideal, > 1 a grid was added"
    ),
    "gradient_ratio_input": (
        "as gradient_ratio, against the degraded input instead of the reference (>= 1: no blurrier than the input)"
    ),
    "checkerboard_ratio_input": "as checkerboard_ratio, against the degraded input instead of the reference",
}


def _prepare_one(x: torch.Tensor, mask: torch.Tensor | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with invalid pixels zeroed, and the valid mask (B, 1, H, W).

    Filtering is done in the input's own precision (float32, or float64 when given; half precision is raised to
    float32), and only the sums in float64: float64 convolutions are about 9x slower on CPUs, and float32 rounding
    (~1e-8 in a local amplitude) is far below the energy floor.
    """
    x = _check_image(x, name)
    if x.dtype != torch.float64 or _work_dtype(x.device) != torch.float64:
        x = x.float()
    if mask is None:
        valid = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
    else:
        valid = _check_mask(mask, x.shape, x.device)
        x = torch.where(valid, x, 0.0)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has NaN or inf at valid pixels; mark them invalid with mask")
    return x, valid


def _gradient_energy(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    means = []
    for d in (-1, -2):  # along x, then along y
        n = x.shape[d]
        diff2 = (x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1)) ** 2
        if bool(valid.all()):
            means.append(diff2.mean(dim=(1, 2, 3), dtype=torch.float64))
            continue
        both = valid.narrow(d, 1, n - 1) & valid.narrow(d, 0, n - 1)
        total = (diff2 * both).sum(dim=(1, 2, 3), dtype=torch.float64)
        means.append(total / (both.sum(dim=(1, 2, 3), dtype=torch.float64) * c))
    # The mean squared difference along x plus the one along y: a ramp of slopes (gx, gy) gives gx^2 + gy^2 exactly.
    return means[0] + means[1]


def _binomial(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    n = 2 * NYQUIST_RADIUS
    g = torch.tensor([math.comb(n, k) for k in range(n + 1)], dtype=dtype, device=device)
    return g / 2.0**n


def _nyquist_amplitudes(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 3, H - 12, W - 12) local amplitudes of (-1)^(x+y), (-1)^x, (-1)^y at every full 13x13 window."""
    b, c, h, w = x.shape
    size = 2 * NYQUIST_RADIUS + 1
    if h < size or w < size:
        raise ValueError(f"checkerboard energy needs images of at least {size}x{size} pixels, got {h}x{w}")
    sy = 1.0 - 2.0 * (torch.arange(h, device=x.device) % 2).to(x.dtype)  # (-1)^y
    sx = 1.0 - 2.0 * (torch.arange(w, device=x.device) % 2).to(x.dtype)  # (-1)^x
    mods = torch.stack((sy[:, None] * sx[None, :], sx[None, :].expand(h, w), sy[:, None].expand(h, w)))  # (3, H, W)
    demod = (x[:, :, None] * mods).reshape(b, c * 3, h, w)
    # One grouped convolution over all maps (channels) is several times faster than a batch of one-channel maps.
    g = _binomial(x.dtype, x.device)
    amp = F.conv2d(demod, g.view(1, 1, 1, -1).expand(c * 3, 1, 1, size), groups=c * 3)
    amp = F.conv2d(amp, g.view(1, 1, -1, 1).expand(c * 3, 1, size, 1), groups=c * 3)
    return amp.reshape(b, c, 3, h - size + 1, w - size + 1)


def _fully_valid_windows(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, H - 12, W - 12): True where the whole 13x13 window is valid."""
    size = 2 * NYQUIST_RADIUS + 1
    return F.max_pool2d((~valid).to(torch.float32), kernel_size=size, stride=1) == 0


def _nyquist_energy(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 3) energy of the components (-1)^(x+y), (-1)^x, (-1)^y, each a mean over valid windows and bands."""
    c = x.shape[1]
    energy = _nyquist_amplitudes(x) ** 2
    if bool(valid.all()):
        return energy.mean(dim=(1, 3, 4), dtype=torch.float64)
    # A window counts only if all of its pixels are valid, so nodata (zeroed) never draws an edge into the energy.
    keep = _fully_valid_windows(valid)[:, :, None]  # (B, 1, 1, h', w')
    total = (energy * keep).sum(dim=(1, 3, 4), dtype=torch.float64)  # (B, 3)
    count = keep.sum(dim=(1, 2, 3, 4), dtype=torch.float64) * c
    return total / count[:, None]


def nyquist_energy_map(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Local 2-pixel-period energy ``(B, H, W)`` (float64): the three components summed and averaged over bands at
    the centre of each 13x13 window; NaN where the window leaves the image or holds an invalid pixel. Its mean over
    the finite entries is :func:`nyquist_energy`. For finding where a grid is, e.g. the worst crop of an output."""
    x, valid = _prepare_one(x, mask, "x")
    r = NYQUIST_RADIUS
    local = (_nyquist_amplitudes(x) ** 2).sum(dim=2).mean(dim=1, dtype=torch.float64)  # (B, h', w')
    local = torch.where(_fully_valid_windows(valid)[:, 0], local, torch.nan)
    return F.pad(local, (r, r, r, r), value=float("nan"))


def gradient_energy(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared forward difference along x plus along y per image (over valid pairs and bands); ``(B,)``.

    No floor is added here (see :func:`gradient_energy_ratio`). An image with no pair of valid neighbours along a
    direction gives NaN.
    """
    return _gradient_energy(*_prepare_one(x, mask, "x"))


def nyquist_energy(x: torch.Tensor, mask: torch.Tensor | None = None, per_component: bool = False) -> torch.Tensor:
    """Energy at the 2-pixel period per image: ``(B,)``, or ``(B, 3)`` for the components (-1)^(x+y), (-1)^x,
    (-1)^y with ``per_component``. A pattern ``a (-1)^(x+y)`` on a smooth image gives ``a^2`` in the first column.

    No floor is added here. Images must be at least 13x13; with no fully valid 13x13 window the result is NaN.
    """
    e = _nyquist_energy(*_prepare_one(x, mask, "x"))
    return e if per_component else e.sum(dim=1)


def block_edge_contrast(x: torch.Tensor, period: int, phase: tuple[int, int] = (0, 0),
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Whether blocks of a ``period``-pixel grid show in ``x``: the mean absolute step between neighbours across the
    grid's edges over the mean absolute step between the other neighbours, along rows and along columns (their mean),
    bands averaged; ``(B,)``. The edges lie before rows ``phase[0] + k * period`` and columns ``phase[1] + k *
    period``; a step counts only where both pixels are valid. About 1 for content that does not know the grid; above
    1 where blocks of it show (an output that copies a coarse band held in blocks, as SEN12MS-CR holds its 20 m and
    60 m bands, draws its blocks). No floor: a step-free image gives NaN."""
    if period < 2:
        raise ValueError(f"period must be >= 2, got {period}")
    x, valid = _prepare_one(x, mask, "x")
    ratios = []
    for d, start in ((-1, phase[1]), (-2, phase[0])):
        n = x.shape[d]
        step = (x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1)).abs().mean(dim=1, keepdim=True, dtype=torch.float64)
        both = valid.narrow(d, 1, n - 1) & valid.narrow(d, 0, n - 1)
        # the step from pixel i - 1 to pixel i crosses an edge when i is a block's first pixel
        edge = (torch.arange(1, n, device=x.device) - start) % period == 0
        edge = edge.view(-1, 1) if d == -2 else edge.view(1, -1)
        across, within = both & edge, both & ~edge
        mean_across = (step * across).sum(dim=(1, 2, 3)) / across.sum(dim=(1, 2, 3))
        mean_within = (step * within).sum(dim=(1, 2, 3)) / within.sum(dim=(1, 2, 3))
        ratios.append(mean_across / mean_within)
    return (ratios[0] + ratios[1]) / 2


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return (num + ENERGY_FLOOR) / (den + ENERGY_FLOOR)


def _pair(pred, reference, mask):
    pred_w, valid = _prepare_one(pred, mask, "pred")
    ref_w, _ = _prepare_one(reference, mask, "reference")
    if pred_w.shape != ref_w.shape:
        raise ValueError(
            f"pred and reference must have the same shape, got {tuple(pred_w.shape)} and {tuple(ref_w.shape)}"
        )
    return pred_w, ref_w, valid


def gradient_energy_ratio(
    pred: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Gradient energy of ``pred`` over that of ``reference`` per image, each plus :data:`ENERGY_FLOOR`; ``(B,)``.

    With the clean reference, 1 is ideal and < 1 means the output is blurrier; with the degraded input as
    ``reference`` (the no-reference variant), < 1 means the output lost detail the input had.
    """
    p, r, valid = _pair(pred, reference, mask)
    return _ratio(_gradient_energy(p, valid), _gradient_energy(r, valid))


def checkerboard_energy_ratio(
    pred: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """2-pixel-period energy of ``pred`` over that of ``reference`` per image, each plus :data:`ENERGY_FLOOR`;
    ``(B,)``. Well above 1: the output carries a grid the reference (or, as the no-reference variant, the input)
    does not have."""
    p, r, valid = _pair(pred, reference, mask)
    return _ratio(_nyquist_energy(p, valid).sum(dim=1), _nyquist_energy(r, valid).sum(dim=1))


def detail_scores(
    pred: torch.Tensor,
    reference: torch.Tensor | None = None,
    inp: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """The ratios against the reference and/or the input, keyed as :data:`DETAIL_CONVENTIONS`; per-image lists.

    The output's energies are computed once and shared by both comparisons.
    """
    p, valid = _prepare_one(pred, mask, "pred")
    grad_p = _gradient_energy(p, valid)
    nyq_p = _nyquist_energy(p, valid).sum(dim=1)
    scores: dict[str, list[float]] = {}
    for other, suffix, name in ((reference, "", "reference"), (inp, "_input", "input")):
        if other is None:
            continue
        o, _ = _prepare_one(other, mask, name)
        if o.shape != p.shape:
            raise ValueError(f"pred and {name} must have the same shape, got {tuple(p.shape)} and {tuple(o.shape)}")
        scores[f"gradient_ratio{suffix}"] = _ratio(grad_p, _gradient_energy(o, valid)).tolist()
        scores[f"checkerboard_ratio{suffix}"] = _ratio(nyq_p, _nyquist_energy(o, valid).sum(dim=1)).tolist()
    return scores
