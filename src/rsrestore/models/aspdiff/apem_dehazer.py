"""The ``apem`` haze method: ASPDiff's atmospheric prior estimation (:mod:`.apem`) on its own, its refined priors
inverted through the scattering model, J = (I - A (1 - t)) / max(t, t_min), clamped to [0, 1].

It keeps the dark channel prior's physics (an untrained model is the dark channel prior with the guided filter of
radius ``guided_radius``) and learns to correct its transmission and atmospheric light. The atmospheric light is a
scene-wide statistic, as in ``dcp``: through the tiling engine, :meth:`APEMDehazer.scene_statistics` computes A0, the
refined A and the per-band exponents once on a decimated read of the whole scene and every tile uses them, so tiles
agree; the transmission is local and a tile read with :attr:`APEMDehazer.halo` pixels of context matches the
whole-image one.

Speed: f_t and f_A's pixel features run on block means of the image (``ft_scale``, default
:data:`DEFAULT_FT_SCALE`) and the dark channel prior's one guided filter brings the corrected transmission back to
full resolution (see :mod:`.apem`), so the method costs about what ``dcp`` does (benchmarks/bench_apem.py). Tiles are
told their scene position (``origins``) so that their blocks fall on the scene's block grid. Weights trained before
the option ran f_t at full resolution: load them with ``ft_scale: 1``.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from .apem import APEM, APEMConfig, Priors, invert_priors

DEFAULT_FT_SCALE = 2  # f_t at half resolution: see benchmarks/results/apem.json for speed and quality at 1, 2 and 4


class APEMDehazer(nn.Module):
    """``forward(x, sar=None, stats=None) -> J`` in [0, 1]; with ``return_priors=True`` it returns ``(J, priors)``
    (the training objective ``apem`` needs both, through one forward call)."""

    def __init__(self, cfg: APEMConfig | None = None):
        super().__init__()
        cfg = cfg or APEMConfig()
        self.cfg = replace(cfg, ft_scale=DEFAULT_FT_SCALE) if cfg.ft_scale is None else cfg
        self.apem = APEM(self.cfg)

    @property
    def halo(self) -> int:
        return self.apem.halo

    @property
    def min_size(self) -> int:
        """The smallest scene side with a meaningful result: one dark-channel window."""
        return self.cfg.patch

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """A0, refined A and per-band exponents of the scene, (B, C) each; ``mask`` True = valid pixel."""
        return self.apem.scene_airlight(x, mask)

    def forward(self, x: Tensor, sar: Tensor | None = None, stats: dict[str, Tensor] | None = None,
                return_priors: bool = False, origins: list[tuple[int, int]] | None = None
                ) -> Tensor | tuple[Tensor, Priors]:
        """``origins``: the scene position (y0, x0) of each tile (the tiling engine passes them; see
        :class:`.apem.APEM`)."""
        priors = self.apem(x, stats=stats, origins=origins)
        restored = invert_priors(x, priors, t_min=self.cfg.t_min).clamp(0.0, 1.0)
        return (restored, priors) if return_priors else restored
