"""Dark channel prior quantities (He, Sun & Tang, "Single Image Haze Removal Using Dark Channel Prior", TPAMI 2011).

Batched torch on (B, C, H, W). The dark channel (Eq. 5 of the paper) is a per-pixel minimum over bands followed by a
minimum over a square patch; the atmospheric light is taken among the brightest 0.1 % of dark-channel pixels (Sec. 4.4);
the transmission estimate is Eq. 12, t = 1 - omega * dark(I / A).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .guided_filter import guided_filter
from .scattering import as_airlight


def min_filter(x: Tensor, patch: int) -> Tensor:
    """Minimum over a `patch` x `patch` window (odd size), per channel, edges replicated (so no fake dark border)."""
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be a positive odd integer, got {patch}")
    if patch == 1:
        return x
    r = patch // 2
    # Separable: a square-window minimum equals a row minimum of column minima. Max-pool of -x is the fast kernel.
    padded = F.pad(-x, (r, r, r, r), mode="replicate")
    rows = F.max_pool2d(padded, kernel_size=(patch, 1), stride=1)
    return -F.max_pool2d(rows, kernel_size=(1, patch), stride=1)


def dark_channel(x: Tensor, patch: int = 15) -> Tensor:
    """Dark channel: min over bands, then min over a `patch` window. Returns (B, 1, H, W)."""
    return min_filter(x.amin(dim=1, keepdim=True), patch)


def atmospheric_light(
    image: Tensor, dark: Tensor | None = None, fraction: float = 0.001, patch: int = 15, mask: Tensor | None = None
) -> Tensor:
    """Atmospheric light A (B, C): among the brightest `fraction` of dark-channel pixels, the input's pixel of highest
    intensity (mean over bands), as He et al. Sec. 4.4 recommend (not the brightest pixel of the whole image, which is
    often a white object).

    `mask` (B, 1, H, W) bool marks valid pixels: invalid (nodata) pixels never take part.
    """
    if dark is None:
        dark = dark_channel(image, patch)
    b, c, h, w = image.shape
    flat_dark = dark.reshape(b, -1)
    flat_img = image.reshape(b, c, -1)
    intensity = flat_img.mean(dim=1)
    if mask is not None:
        valid = mask.reshape(b, -1).bool()
        flat_dark = torch.where(valid, flat_dark, torch.full_like(flat_dark, -torch.inf))
        n_valid = valid.sum(dim=1).clamp_min(1)
    else:
        n_valid = torch.full((b,), h * w, device=image.device)
    k_per_image = (n_valid.float() * fraction).ceil().long().clamp_min(1)
    k = int(k_per_image.max())
    top_dark, idx = flat_dark.topk(k, dim=1)
    cand_intensity = intensity.gather(1, idx)
    # Candidates beyond each image's own k (or invalid) are excluded from the arg-max.
    rank = torch.arange(k, device=image.device)[None, :]
    keep = (rank < k_per_image[:, None]) & torch.isfinite(top_dark)
    cand_intensity = torch.where(keep, cand_intensity, torch.full_like(cand_intensity, -torch.inf))
    best = idx.gather(1, cand_intensity.argmax(dim=1, keepdim=True))  # (B, 1)
    return flat_img.gather(2, best[:, None, :].expand(b, c, 1)).squeeze(2)


def transmission_estimate(image: Tensor, airlight: Tensor | float, omega: float = 0.95, patch: int = 15) -> Tensor:
    """Coarse transmission t = 1 - omega * dark(I / A) (He et al. Eq. 12). Returns (B, 1, H, W).

    omega < 1 keeps a little haze for distant objects so the result looks natural (aerial perspective).
    """
    a = as_airlight(airlight, image).clamp_min(1e-6)
    return 1.0 - omega * dark_channel(image / a, patch)


def refined_transmission(image: Tensor, airlight: Tensor | float, omega: float = 0.95, patch: int = 15,
                         guided_radius: int = 60, guided_eps: float = 1e-4) -> Tensor:
    """The dark channel prior's transmission: :func:`transmission_estimate`, refined by the guided filter with the
    image as guide (He et al. replace soft matting by it, TPAMI 2013) unless ``guided_radius`` is 0, clamped to
    [0, 1]. Returns (B, 1, H, W)."""
    t = transmission_estimate(image, airlight, omega=omega, patch=patch)
    return guided_refinement(image, t, guided_radius, guided_eps)


def guided_refinement(image: Tensor, t: Tensor, radius: int, eps: float, floor: float = 0.0) -> Tensor:
    """A transmission map ``t`` (B, 1, H, W) refined by the guided filter with the image as guide (none when ``radius``
    is 0), clamped to [``floor``, 1]: the dark channel prior's last step, which learned refinements of its map
    (APEM) share."""
    if radius:
        t = guided_filter(image, t, radius=radius, eps=eps)
    return t.clamp(floor, 1.0)
