"""ASPDiff: dehazing by a diffusion model conditioned on atmospheric scattering priors.

Zhang et al., "ASPDiff: Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image dehazing"
(IEEE TGRS; evaluated on DHID and LHID). No code is public: the paper's equations are followed and every value its
text leaves open is chosen here and marked "chosen" (the config's comments repeat them).

1. APEM (:mod:`.apem`) estimates the transmission ``t`` and the atmospheric light ``A`` (dark channel prior, then
   two light networks that correct them).
2. DAPE (:mod:`.dape`) samples the clean image with a conditional DDPM whose noise predictor reads
   concat(x_t, haze injection, hazy image, t, A): DDIM, deterministic (eta 0), :attr:`ASPDiffConfig.steps` steps.
3. HARM (:mod:`.harm`) refines the sample: frequency channel attention, modulated by SimAM-weighted priors.

Training (:meth:`ASPDiff.losses`, reached through ``forward(x, target=...)`` so that DistributedDataParallel sees the
call): the DDPM's simplified noise loss at a random step, plus image-space losses on HARM's refinement of the clean
image read from that step's prediction: L1 reconstruction, the APEM prior-consistency loss, a frequency-consistency
loss over 16 DCT sub-bands (:func:`frequency_consistency_loss`), a VGG19 perceptual loss when VGG19 weights are given,
and the total variation of ``t``. The paper's loss weights are not in its text; the ones in :class:`ASPDiffConfig` are
chosen.

Tiling: the atmospheric light is a scene statistic (:meth:`ASPDiff.scene_statistics`: A0 and APEM's refined A of
the whole, decimated scene), so every tile uses the same; the sampling noise is drawn by scene position when the
tiling engine passes ``origins``, so overlapping tiles sample the same image (as in DS-RDMPD). What the networks
compute over a whole input (the U-Net's GroupNorm moments and linear-attention context, HARM's pooled spectrum and
SimAM moments) goes through DS-RDMPD's :mod:`~rsrestore.models.dsrdmpd.shared_statistics`, by the same rule: it is
recorded once per scene, by a restore of the scene downsampled to at most
:data:`~rsrestore.models.dsrdmpd.shared_statistics.STATS_SIDE` pixels a side (with the scene's atmospheric light and
noise drawn by position), and every tile replays it, the denoiser's per sampling step. An image larger than that
restored in one piece uses its downsampled copy's statistics too; a smaller one uses its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...diffusion import NoiseFn, position_noise_fn
from ..blocks import pad_to_multiple
from ..dsrdmpd.shared_statistics import (
    SceneStatistics,
    StatisticsRecord,
    exceeds_statistics_side,
    restore_with_scene_statistics,
)
from .apem import APEM, APEMConfig, Priors, apem_loss, invert_priors, total_variation
from .dape import DAPE
from .harm import HARM, dct_matrix

__all__ = ["ASPDiffConfig", "ASPDiff", "frequency_consistency_loss"]


@dataclass
class ASPDiffConfig:
    """Settings of :class:`ASPDiff`. The defaults are paper-sized (a 64-wide 4-level denoiser); the paper gives no
    parameter count, no sampling-step count and no loss weights, so those are chosen (marked below).

    Attributes:
        in_channels: bands of the image (any count; 3 in the paper).
        dim, dim_mults: first-level width and level multipliers of DAPE's U-Net (64, 1-2-4-8; chosen).
        heads, dim_head: its middle linear attention (4 heads of 32; chosen).
        harm_width: HARM's feature width (64; a multiple of 16 for the 16 DCT frequency groups; chosen).
        apem_width: APEM's hidden width (16, APEM's default).
        apem_guided_radius, apem_band_exponents: APEM's guided filter on t0 and per-band exponents (APEM's defaults).
        timesteps, schedule: T and the DDPM variance schedule (1000, "linear": DDPM's; chosen).
        steps: DDIM steps at restore time (10, chosen; any of 1 to ``timesteps``). The bundled CPU weights set 2, the
            best on their validation crops (benchmarks/results/aspdiff_steps.json: 1 step is blurry, more than 2 add
            little for weights trained briefly).
        eta: DDIM stochasticity (0: deterministic given the starting noise).
        seed: seed of the sampling noise, so the same input gives the same output.
        use_apem: False conditions DAPE on the hazy image alone (ablation "without APEM"; HARM keeps only its
            frequency attention).
        use_dape: False makes the same network a one-step regressor (ablation "without DAPE").
        use_harm: False returns DAPE's output unrefined (ablation "without HARM").
        refine_priors: False uses the dark channel prior's t0 and A0 unrefined (ablation "DCP priors").
        prior_supervision: False trains APEM's refinement only through the downstream losses (ablation
            "refinement without prior supervision").
        residual: DAPE diffuses the correction to APEM's inversion of the scattering model, ``J - J_APEM``, instead
            of the image (False: the paper's). This project's departure, for clear scenes: see :mod:`.dape`. Without
            APEM the correction is to the hazy image itself.
        prediction: what the denoiser predicts, "pred_noise" (the paper's DDPM) or "pred_x0" (the diffused quantity
            itself; the residual form's choice).
        w_reconstruction, w_apem, w_frequency, w_perceptual, w_tv: loss weights (1, 0.5, 0.1, 0.04, 0.01; chosen:
            the noise loss has weight 1; the VGG term counts only when VGG19 weights are given to the loss).
    """

    in_channels: int = 3
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    heads: int = 4
    dim_head: int = 32
    harm_width: int = 64
    apem_width: int = 16
    apem_guided_radius: int = 20
    apem_band_exponents: bool = True
    timesteps: int = 1000
    schedule: str = "linear"
    steps: int = 10
    eta: float = 0.0
    seed: int = 0
    use_apem: bool = True
    use_dape: bool = True
    use_harm: bool = True
    refine_priors: bool = True
    prior_supervision: bool = True
    residual: bool = False
    prediction: str = "pred_noise"
    w_reconstruction: float = 1.0
    w_apem: float = 0.5
    w_frequency: float = 0.1
    w_perceptual: float = 0.04
    w_tv: float = 0.01

    def __post_init__(self) -> None:
        self.dim_mults = tuple(int(m) for m in self.dim_mults)
        if not 1 <= self.steps <= self.timesteps:
            raise ValueError(f"steps must be between 1 and timesteps={self.timesteps}, got {self.steps}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.harm_width % 16:
            raise ValueError(f"harm_width must be a multiple of 16 (the DCT frequency groups), got {self.harm_width}")

    @classmethod
    def cpu_small(cls, in_channels: int = 3, **overrides) -> ASPDiffConfig:
        """A CPU-sized variant with the paper's structure: a 16-wide 3-level denoiser, HARM and APEM 16 wide."""
        values = dict(in_channels=in_channels, dim=16, dim_mults=(1, 2, 4), dim_head=16, harm_width=16)
        values.update(overrides)
        return cls(**values)

    @property
    def apem_config(self) -> APEMConfig:
        return APEMConfig(in_channels=self.in_channels, width=self.apem_width, guided_radius=self.apem_guided_radius,
                          band_exponents=self.apem_band_exponents, refine_transmission=self.refine_priors,
                          refine_airlight=self.refine_priors)


def frequency_consistency_loss(pred: Tensor, target: Tensor, block: int = 8, eps: float = 1e-2) -> Tensor:
    """L1 between the block DCTs of two images, averaged over 16 sub-bands, each normalised by the target's mean
    magnitude in it (chosen: 8 x 8 blocks, the frequency plane cut into a 4 x 4 grid of sub-bands; the normalisation
    makes the weak high-frequency sub-bands count as much as the strong low ones)."""
    if block % 4:
        raise ValueError(f"block must be a multiple of 4 (16 sub-bands), got {block}")

    def coefficients(x: Tensor) -> Tensor:
        x, _ = pad_to_multiple(x.float(), block)
        b, c, h, w = x.shape
        blocks = x.reshape(b, c, h // block, block, w // block, block).transpose(3, 4)  # (..., block, block)
        d = dct_matrix(block, x.dtype, x.device)
        coef = d @ blocks @ d.T
        s = block // 4  # sub-band side: (..., 4, s, 4, s) -> one axis of 16 sub-bands
        return coef.reshape(*coef.shape[:-2], 4, s, 4, s).transpose(-3, -2).flatten(-4, -3).flatten(-2)

    cp, ct = coefficients(pred), coefficients(target)
    dims = tuple(i for i in range(cp.ndim) if i != cp.ndim - 2)  # all but the sub-band axis
    per_band = (cp - ct).abs().mean(dim=dims) / (ct.abs().mean(dim=dims) + eps)
    return per_band.mean()


class ASPDiff(nn.Module):
    """``forward(x)`` maps a hazy (B, C, H, W) image in [0, 1] to the dehazed one; any H, W (reflect-padded to the
    denoiser's stride and cropped back).

    Sampling noise comes from ``cfg.seed`` (or a ``generator``), or ``noise_fn(shape, step)``; given ``origins`` (the
    scene position of each image, as the tiling engine passes them) it is
    :func:`rsrestore.diffusion.position_noise_fn` of ``cfg.seed``. ``stats`` is :meth:`scene_statistics` of the whole
    scene; without it, an image larger than ``STATS_SIDE`` gets the statistics of its own downsampled copy. With the
    clean ``target`` it returns the training losses instead (:meth:`losses`; ``vgg`` a
    :class:`rsrestore.vgg.VGG19Features` for the perceptual term).
    """

    def __init__(self, cfg: ASPDiffConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ASPDiffConfig()
        self.apem = APEM(cfg.apem_config) if cfg.use_apem else None
        self.dape = DAPE(cfg.in_channels, cfg.dim, cfg.dim_mults, use_priors=cfg.use_apem, timesteps=cfg.timesteps,
                         schedule=cfg.schedule, heads=cfg.heads, dim_head=cfg.dim_head, residual=cfg.residual,
                         prediction=cfg.prediction)
        self.harm = HARM(cfg.in_channels, cfg.harm_width, use_priors=cfg.use_apem) if cfg.use_harm else None
        self.stride = self.dape.stride

    @property
    def halo(self) -> int:
        """Context a tile is read with: APEM's for the transmission, and at least 8 times the denoiser's stride
        (its coarsest level's 3x3 convolutions see that far; chosen, not a full receptive field)."""
        return max(self.apem.halo if self.apem is not None else 0, 8 * self.stride)

    @property
    def min_size(self) -> int:
        return self.cfg.apem_config.patch

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None, decimation: float = 1.0) -> dict:
        """The scene's statistics, for every tile (``stats=`` of :meth:`forward`), from ``x``, a read of the whole scene
        ``decimation`` times smaller than it: APEM's A0, refined A (and per-band exponents) -- none without APEM --
        and ``"scene"``, the layers' statistics, recorded lazily at the first tile (:meth:`record_statistics`)."""
        self._check(x)
        stats = dict(self.apem.scene_airlight(x, mask)) if self.apem is not None else {}
        stats["scene"] = SceneStatistics.of(x, decimation)
        return stats

    def record_statistics(self, scene: SceneStatistics, airlight: dict[str, Tensor], steps: int) -> StatisticsRecord:
        """Every layer's whole-input quantities (per sampling step for the denoiser), recorded by restoring the scene's
        downsampled copy with the scene's ``airlight`` statistics, ``steps`` steps and noise drawn by position."""
        noise_fn = position_noise_fn(self.cfg.seed, [(0, 0)] * scene.image.shape[0])
        return scene.record(steps, lambda image: self.restore(image, stats=airlight, steps=steps, noise_fn=noise_fn))

    def forward(self, x: Tensor, sar: Tensor | None = None, *, stats: dict | None = None,
                steps: int | None = None, generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None,
                origins: Sequence[tuple[int, int]] | None = None, target: Tensor | None = None,
                vgg: nn.Module | None = None) -> Tensor | dict[str, Tensor]:
        del sar  # optical only; accepted for the common restorer interface
        if target is not None:
            return self.losses(x, target, generator=generator, vgg=vgg)
        if origins is not None and noise_fn is None and generator is None:
            noise_fn = position_noise_fn(self.cfg.seed, origins)
        if stats is None and exceeds_statistics_side(x):
            stats = self.scene_statistics(x)
        airlight = dict(stats or {})
        scene = airlight.pop("scene", None)
        steps = steps or self.cfg.steps
        return restore_with_scene_statistics(
            x, origins, scene, lambda s: self.record_statistics(s, airlight, steps),
            lambda: self.restore(x, stats=airlight, steps=steps, generator=generator, noise_fn=noise_fn))

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"ASPDiff expects (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")

    def priors(self, x: Tensor, stats: dict[str, Tensor] | None = None) -> Priors | None:
        return self.apem(x, stats=stats or None) if self.apem is not None else None

    def base(self, x: Tensor, priors: Priors | None) -> Tensor | None:
        """The first estimate whose correction DAPE diffuses in the residual form (None otherwise): APEM's inversion
        of the scattering model, clamped to [0, 1], or without APEM the hazy image."""
        if not self.cfg.residual:
            return None
        if priors is None:
            return x
        return invert_priors(x, priors, t_min=self.cfg.apem_config.t_min).clamp(0.0, 1.0)

    def refine(self, estimate: Tensor, hazy: Tensor, priors: Priors | None) -> Tensor:
        return self.harm(estimate, hazy, priors) if self.harm is not None else estimate

    @torch.no_grad()
    def restore(self, x: Tensor, stats: dict[str, Tensor] | None = None, steps: int | None = None,
                generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None) -> Tensor:
        """APEM, then ``steps`` (default ``cfg.steps``) DDIM steps (or the one-step regressor), then HARM."""
        self._check(x)
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x.float(), self.stride)
        priors = self.priors(x, stats)
        base = self.base(x, priors)
        if self.cfg.use_dape:
            if generator is None and noise_fn is None:
                generator = torch.Generator(device=x.device).manual_seed(self.cfg.seed)
            estimate = self.dape.sample(x, priors, steps or self.cfg.steps, self.cfg.eta, generator, noise_fn, base)
        else:
            estimate = self.dape.regress(x, priors, base)
        return self.refine(estimate, x, priors)[..., :h, :w].clamp(0.0, 1.0)

    def losses(self, hazy: Tensor, clean: Tensor, generator: torch.Generator | None = None,
               vgg: nn.Module | None = None) -> dict[str, Tensor]:
        """The weighted training losses by name and their sum, ``"total"`` (see the module docstring). Timesteps and
        noise come from ``generator`` (the global generator when None)."""
        self._check(hazy)
        cfg = self.cfg
        hazy, _ = pad_to_multiple(hazy.float(), self.stride)
        clean, _ = pad_to_multiple(clean.float(), self.stride)
        priors = self.priors(hazy)
        # The first estimate is a fixed starting point: the priors learn through their own losses and HARM.
        base = self.base(hazy, priors)
        base = None if base is None else base.detach()
        parts: dict[str, Tensor] = {}
        if cfg.use_dape:
            parts["diffusion"], estimate = self.dape.loss(hazy, clean, priors, generator, base)
        else:
            estimate = self.dape.regress(hazy, priors, base)
        out = self.refine(estimate, hazy, priors)
        parts["reconstruction"] = cfg.w_reconstruction * F.l1_loss(out, clean)
        parts["frequency"] = cfg.w_frequency * frequency_consistency_loss(out, clean)
        if priors is not None and cfg.refine_priors:
            if cfg.prior_supervision:
                parts["apem"] = cfg.w_apem * apem_loss(hazy, priors, clean)
            parts["tv"] = cfg.w_tv * total_variation(priors.t)
        if vgg is not None and cfg.w_perceptual:
            pairs = zip(vgg(out.clamp(0, 1)), vgg(clean))
            parts["perceptual"] = cfg.w_perceptual * sum(F.l1_loss(a, b) for a, b in pairs)
        parts["total"] = sum(parts.values())
        return parts
