"""DAPE, ASPDiff's diffusion with atmospheric prior embedding: a conditional DDPM whose denoiser sees the priors.

Zhang et al., "ASPDiff: Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image dehazing"
(IEEE TGRS). No code is public; where the paper leaves a choice open it is made here and said so.

* A DDPM (Ho et al. 2020) on the clean image in [-1, 1], noise prediction, the simplified loss
  ``|| eps - eps_theta(x_t, t, c) ||^2`` at a uniformly drawn step; sampled with DDIM (eta 0) in few steps
  (:func:`rsrestore.diffusion.ddim_sample`).
* Conditioning by **concatenation** (chosen here; the paper also allows cross-attention): the denoiser reads
  concat(x_t, haze injection, hazy image, refined transmission t as a map, atmospheric light A broadcast to a map).
* **Haze injection** (this project's reading of the paper's term): at every step the current state, mapped to [0, 1],
  is re-hazed with the refined priors through the scattering model, ``H_t = x_t t + A (1 - t)`` -- a hazy observation
  re-synthesised from the priors, which the network can set against the observed hazy image: where the state is the
  clean scene and the priors are right, ``H_t`` equals the observation. It is the one condition that changes with the
  step; the constant ones (hazy image, t, A) pass the first convolution once per image
  (:meth:`PriorUNet.encode_condition`), which is linear, so splitting it changes nothing.
* Without APEM (an ablation) the denoiser is conditioned on the hazy image alone and has no injection.
* **Residual form** (``residual=True``; this project's departure from the paper, off by default): the diffusion runs
  on the correction ``J - base`` to a first estimate ``base`` (the restorer passes APEM's inversion of the scattering
  model), which joins the condition; the haze injection re-hazes ``base + state``. With ``prediction="pred_x0"`` the
  denoiser predicts that correction itself rather than the noise. A clear scene, which APEM leaves nearly as it is,
  then needs a correction near zero, which a few DDIM steps can return; sampling the image itself from noise in two
  steps re-draws the whole scene (a clear input came out 23 dB from itself), and a noise prediction read at the
  first steps (alphabar near 0) amplifies its error by up to 1 / sqrt(alphabar), about 160.

The denoiser, :class:`PriorUNet`, is a compact time-conditioned U-Net built from DS-RDMPD's blocks
(:class:`~rsrestore.models.dsrdmpd.unetres.ResnetBlock` with the timestep as scale-shift, linear attention in the
middle), with skip connections: one ResNet block per level, 2x down/up-sampling between levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...diffusion import (
    DDPMSchedule,
    NoiseFn,
    ddim_sample,
    ddpm_estimate,
    ddpm_training_example,
    random_timesteps,
    to_signed,
)
from ...diffusion.objectives import DDPM_OBJECTIVES, check_objective
from ..dsrdmpd.unetres import LinearAttention, PreNormResidual, ResnetBlock, SinusoidalTimeEmbedding
from .apem import Priors, band_transmission

__all__ = ["PriorUNet", "DAPE", "haze_injection"]


def haze_injection(state: Tensor, priors: Priors) -> Tensor:
    """``H = x t + A (1 - t)`` in [-1, 1] for a state ``x`` in [-1, 1]: the state re-hazed with the priors (with
    APEM's per-band transmission when it has band exponents)."""
    x = ((state + 1) / 2).clamp(0, 1)
    t = band_transmission(priors)
    return to_signed(x * t + priors.airlight[:, :, None, None] * (1 - t))


class PriorUNet(nn.Module):
    """Noise predictor ``forward(x_t, t, cond_features, injection=None) -> eps`` (B, bands, H, W).

    ``cond_features = encode_condition(cond)`` with ``cond`` the ``cond_channels`` constant condition maps; ``injection``
    (B, bands, H, W) when built with ``inject=True``. H, W multiples of :attr:`stride`.
    """

    def __init__(self, bands: int, cond_channels: int, dim: int = 64, dim_mults: tuple[int, ...] = (1, 2, 4, 8),
                 inject: bool = True, groups: int = 8, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.bands, self.inject = bands, inject
        widths = [dim * m for m in dim_mults]
        if any(w % groups for w in widths):
            raise ValueError(f"every level width {widths} must be divisible by groups={groups}")
        time_dim = 4 * dim
        self.stride = 2 ** (len(widths) - 1)
        self.time_mlp = nn.Sequential(SinusoidalTimeEmbedding(dim), nn.Linear(dim, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))
        # one 3x3 convolution over concat(x_t[, injection], cond), kept as two so the condition's part runs once
        self.step_conv = nn.Conv2d(bands * (2 if inject else 1), widths[0], 3, padding=1, bias=False)
        self.cond_conv = nn.Conv2d(cond_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, w in enumerate(widths):
            self.down_blocks.append(ResnetBlock(widths[max(i - 1, 0)], w, time_dim, groups))
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 4, 2, 1))
        mid = widths[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, groups)
        self.mid_attn = PreNormResidual(mid, LinearAttention(mid, heads, dim_head))
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, groups)
        self.upsample = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1))
            for i in range(len(widths) - 1)
        )
        self.up_blocks = nn.ModuleList(ResnetBlock(2 * w, w, time_dim, groups) for w in widths)
        self.out = nn.Conv2d(widths[0], bands, 1)

    def encode_condition(self, cond: Tensor) -> Tensor:
        return self.cond_conv(cond)

    def forward(self, x_t: Tensor, t: Tensor, cond_features: Tensor, injection: Tensor | None = None) -> Tensor:
        if any(s % self.stride for s in x_t.shape[-2:]):
            raise ValueError(f"H and W must be multiples of {self.stride}, got {tuple(x_t.shape[-2:])}")
        step_input = torch.cat([x_t, injection], dim=1) if self.inject else x_t
        x = self.step_conv(step_input) + cond_features
        temb = self.time_mlp(torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0]))
        skips = []
        for i, block in enumerate(self.down_blocks):
            x = block(x, temb)
            skips.append(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, temb)), temb)
        for i in reversed(range(len(self.up_blocks))):
            if i < len(self.upsample):
                x = self.upsample[i](x)
            x = self.up_blocks[i](torch.cat([x, skips[i]], dim=1), temb)
        return self.out(x)


class DAPE(nn.Module):
    """The conditional DDPM: :meth:`loss` for training, :meth:`sample` (DDIM) and :meth:`regress` (the one-step
    ablation: the same network read as the clean image from an all-zero state at step 0) for restoring.

    Images in [0, 1] in and out of the public methods; [-1, 1] inside. ``priors`` None conditions on the hazy image
    alone (build with ``use_priors=False``). Built with ``residual=True`` every public method takes ``base``, the
    first estimate (B, bands, H, W) in [0, 1] whose correction is diffused (see the module docstring); ``prediction``
    is what the denoiser predicts, ``"pred_noise"`` (DDPM's, the paper's) or ``"pred_x0"``.
    """

    def __init__(self, bands: int = 3, dim: int = 64, dim_mults: tuple[int, ...] = (1, 2, 4, 8),
                 use_priors: bool = True, timesteps: int = 1000, schedule: str = "linear", heads: int = 4,
                 dim_head: int = 32, residual: bool = False, prediction: str = "pred_noise") -> None:
        super().__init__()
        check_objective(prediction, DDPM_OBJECTIVES)
        self.bands, self.use_priors, self.residual, self.prediction = bands, use_priors, residual, prediction
        cond_channels = bands + (1 + bands if use_priors else 0) + (bands if residual else 0)
        self.net = PriorUNet(bands, cond_channels, dim, dim_mults, inject=use_priors, heads=heads, dim_head=dim_head)
        if residual and prediction == "pred_x0":
            # A zero correction to start with: untrained, the sample is the first estimate itself.
            nn.init.zeros_(self.net.out.weight)
            nn.init.zeros_(self.net.out.bias)
        self.schedule = DDPMSchedule.named(schedule, timesteps)

    @property
    def stride(self) -> int:
        return self.net.stride

    def condition(self, hazy: Tensor, priors: Priors | None, base: Tensor | None = None) -> Tensor:
        """concat(hazy, t, A as a map[, base]) in [-1, 1]: the condition that stays fixed over sampling."""
        parts = [hazy]
        if self.use_priors:
            if priors is None:
                raise ValueError("DAPE built with use_priors needs the refined priors")
            parts += [priors.t, priors.airlight[:, :, None, None].expand_as(hazy)]
        if self.residual:
            parts.append(self._base(base))
        return to_signed(torch.cat(parts, dim=1))

    def _base(self, base: Tensor | None) -> Tensor:
        if base is None:
            raise ValueError("DAPE built with residual=True needs the first estimate `base`")
        return base

    def _state_image(self, x_t: Tensor, base: Tensor | None) -> Tensor:
        """The image a state stands for, in [-1, 1]: the state itself, or in the residual form base + state."""
        return to_signed(base + x_t) if self.residual else x_t

    def _image(self, x0: Tensor, base: Tensor | None) -> Tensor:
        """A clean-sample estimate of the diffused quantity as an image in [0, 1]."""
        return base + x0 if self.residual else (x0 + 1) / 2

    def denoiser(self, hazy: Tensor, priors: Priors | None, base: Tensor | None = None):
        """``denoise(x_t, t, cond_features)`` for the samplers, with the condition's features computed once."""
        features = self.net.encode_condition(self.condition(hazy, priors, base))

        def denoise(x_t: Tensor, t: Tensor, cond_features: Tensor = features) -> Tensor:
            injection = haze_injection(self._state_image(x_t, base), priors) if self.use_priors else None
            return self.net(x_t, t, cond_features, injection).float()

        return denoise, features

    def loss(self, hazy: Tensor, clean: Tensor, priors: Priors | None,
             generator: torch.Generator | None = None, base: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The simplified DDPM loss (MSE on the predicted quantity) at a random step, and the clean-image estimate
        read from that prediction (in [0, 1], with gradients) for the image-space losses."""
        x0 = clean - self._base(base) if self.residual else to_signed(clean)
        t = random_timesteps(self.schedule.num_timesteps, x0.shape[0], generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None)
        ex = ddpm_training_example(self.schedule, x0, t, noise.to(x0))
        denoise, _ = self.denoiser(hazy, priors, base)
        out = denoise(ex.x_t, t)
        estimate = ddpm_estimate(self.schedule, self.prediction, out, ex.x_t, t, clip=True).x0
        return F.mse_loss(out, ex.target(self.prediction)), self._image(estimate, base)

    def regress(self, hazy: Tensor, priors: Priors | None, base: Tensor | None = None) -> Tensor:
        """The one-step regressor (ablation without diffusion): the clean image in [0, 1], with gradients."""
        denoise, _ = self.denoiser(hazy, priors, base)
        zeros = torch.zeros_like(hazy)
        return self._image(denoise(zeros, torch.zeros(hazy.shape[0], dtype=torch.long, device=hazy.device)), base)

    @torch.no_grad()
    def sample(self, hazy: Tensor, priors: Priors | None, steps: int, eta: float = 0.0,
               generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None,
               base: Tensor | None = None) -> Tensor:
        """DDIM in ``steps`` steps from noise (``generator`` or ``noise_fn``); the clean image in [0, 1]."""
        denoise, features = self.denoiser(hazy, priors, base)
        out = ddim_sample(lambda x, t, c: denoise(x, t, c), self.schedule, tuple(hazy.shape), features, steps=steps,
                          eta=eta, objective=self.prediction, generator=generator, noise_fn=noise_fn,
                          device=hazy.device)
        return self._image(out, base)
