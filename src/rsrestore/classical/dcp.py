"""Dark channel prior dehazing (He, Sun & Tang, TPAMI 2011), refined with the guided filter (He et al., TPAMI 2013).

Steps: dark channel (patch 15) -> atmospheric light from the brightest 0.1 % of the dark channel -> coarse
transmission t = 1 - omega dark(I / A) with omega = 0.95 -> guided-filter refinement (guide = the hazy image) ->
J = (I - A) / max(t, t0) + A with t0 = 0.1.

The atmospheric light is a scene-wide statistic: when a scene is restored tile by tile, it is estimated once from a
decimated read of the whole scene (`scene_statistics`) and passed to every tile, so tiles agree and no seam appears.

Strength. He et al. keep omega < 1 on purpose, to leave a little haze so that the scene still looks natural. With
`--task auto`, omega follows the haze severity the recogniser finds (:func:`omega_for_severity`), so that a faint veil
is not treated like thick haze.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..physics.dark_channel import atmospheric_light, dark_channel, refined_transmission
from ..physics.scattering import haze_inverse


@dataclass
class DCPConfig:
    patch: int = 15  # dark-channel window (paper: 15 x 15)
    omega: float = 0.95  # fraction of haze removed (paper: 0.95)
    t0: float = 0.1  # lower bound of the transmission (paper: 0.1)
    top_fraction: float = 0.001  # brightest 0.1 % of the dark channel pick the atmospheric light
    guided_radius: int = 60  # guided filter radius (guided-filter paper's dehazing example: r = 60)
    guided_eps: float = 1e-4  # guided filter regulariser
    refine: bool = True  # guided refinement of the transmission (False: the coarse patch-wise map)


# Haze severity (1 - mean transmission) from which the paper's omega applies. Below it omega falls in proportion to the
# haze present. On the project's held-out NEON and EuroSAT haze sets the best omega per preset is 0.3-0.5 for thin
# haze (mean transmission 0.70-0.91), 0.7-0.95 for moderate (0.45-0.71) and 0.85-0.95 for thick (0.22-0.46).
FULL_STRENGTH_SEVERITY = 0.5


def omega_for_severity(severity: float, omega: float = DCPConfig.omega, full: float = FULL_STRENGTH_SEVERITY) -> float:
    """omega for a scene whose haze severity (1 - mean transmission, what the recogniser estimates) is `severity`: the
    paper's `omega` from a severity of `full` on, falling in proportion below it, to 0 (the scene as it is) for none.

    Why: the prior reads the whole dark channel of I / A as haze, 1 - t_est = omega dark(I / A), and
    dark(I / A) = t dark(J / A) + (1 - t). Ground seen from above is rarely as dark as the prior assumes (dark(J) ~ 0
    holds for photographs with shadows and saturated colours), so under a faint veil the ground's own dark channel
    outweighs the haze and the paper's omega removes it many times over; under thick haze (1 - t) dominates."""
    s = min(max(float(severity), 0.0), 1.0)
    return round(omega * min(1.0, s / full), 2)  # 2 decimals: the models built for a batch are reused


class DarkChannelPrior(nn.Module):
    """Training-free haze removal. `forward(x, stats=...)` restores (B, C, H, W) images in [0, 1]."""

    def __init__(self, cfg: DCPConfig | None = None):
        super().__init__()
        self.cfg = cfg or DCPConfig()

    @property
    def halo(self) -> int:
        """Pixels of context a tile needs on each side to match the whole-image result: the dark-channel window,
        then the guided filter's two box filters in sequence."""
        c = self.cfg
        return c.patch // 2 + (2 * c.guided_radius if c.refine else 0)

    @property
    def min_size(self) -> int:
        """The smallest scene side with a meaningful result: one dark-channel window."""
        return self.cfg.patch

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Atmospheric light (B, C) of the scene; `mask` (B, 1, H, W) True = valid pixel."""
        c = self.cfg
        dark = dark_channel(x, c.patch)
        return {"airlight": atmospheric_light(x, dark, fraction=c.top_fraction, mask=mask)}

    def transmission(self, x: Tensor, airlight: Tensor) -> Tensor:
        c = self.cfg
        return refined_transmission(x, airlight, omega=c.omega, patch=c.patch,
                                    guided_radius=c.guided_radius if c.refine else 0, guided_eps=c.guided_eps)

    def forward(self, x: Tensor, sar: Tensor | None = None, stats: dict[str, Tensor] | None = None) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if stats is None:
            stats = self.scene_statistics(x)
        airlight = stats["airlight"].to(x)
        if airlight.shape[0] == 1 and x.shape[0] > 1:
            airlight = airlight.expand(x.shape[0], -1)
        t = self.transmission(x, airlight)
        return haze_inverse(x, t, airlight, t_min=self.cfg.t0).clamp(0.0, 1.0)
