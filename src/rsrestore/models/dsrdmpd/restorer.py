"""DS-RDMPD: a two-stage dehazer, a U-Net estimate refined by residual diffusion.

Zhou, Wang, Zhang, Tao, Ren, "A Dual-Stage Residual Diffusion Model with Perceptual Decoding for Remote Sensing Image
Dehazing", IEEE TGRS 2025 (doi 10.1109/TGRS.2025.3600540).

1. Stage 1, :class:`~.mcess_unet.MCESSUNet`, maps the hazy image to a first estimate.
2. Stage 2 treats that estimate as the degraded input of a residual diffusion model (RDDM): the residual is
   ``stage-1 output - clean``, and :class:`~.unetres.UNetRes` predicts it from concat(I_t, stage-1 output, hazy)
   (objective ``pred_res``). Sampling starts at ``I_T = stage-1 output + sqrt(sum_scale) eps`` and takes ``steps``
   deterministic DDIM-style steps (RDDM's ``use_x_start`` update, eta 0) over a T = 1000 step schedule; the last step
   returns the clean-image estimate. Images are mapped to [-1, 1] for stage 2, as the authors do.

Where the architecture allows, work is done once per image rather than once per step: the condition's part of the
denoiser's first convolution (:meth:`UNetRes.encode_condition`), and stage 1 itself. The denoiser's second decoder,
which ``pred_res`` does not use, is never evaluated.

Training follows the authors' code: stage 1 alone with ``511 L1 + MSE`` (an L1, an MSE and twice the L1 on the
0-255 scale, :meth:`DSRDMPD.stage1_loss`); then stage 2 with stage 1 frozen, L1 on the predicted residual at a
uniformly drawn timestep (:meth:`DSRDMPD.stage2_loss`).

Whole scenes, tile by tile. Many layers compute a quantity over their whole input (channel attentions' global
pooling, GroupNorm's moments, the attentions' contexts; :mod:`.shared_statistics`); on tiles those would differ from
tile to tile and show as seams. So a scene's statistics are recorded once, by a restore of the scene downsampled to
at most :data:`STATS_SIDE` pixels a side (:meth:`DSRDMPD.scene_statistics`, which the tiling engine calls on its
decimated read), and every tile replays them, the denoiser's per sampling step. The same rule holds without tiling:
an image larger than :data:`STATS_SIDE` restored in one piece uses the statistics of its downsampled copy too, so a
tiled restore matches a whole-image one up to what the tiles' borders cut from the convolutions' view. An image no
larger than :data:`STATS_SIDE` is its own downsampled copy: restored in one piece it uses its own statistics (the
network exactly as trained, at no extra cost), and so does a scene that the tiling engine reads as one tile.

Downsampled statistics are not the full-resolution ones. What moves the output is GroupNorm's moments (replacing
only those by the downsampled copy's accounts for nearly all of the change; the channel attentions' pooled vectors
and the attentions move it by under 1/255): on a 1024 x 1024 scene, statistics from the 512 x 512 copy move the
result by 3.7 levels (of 255) on average and up to 109 against the image's own statistics -- as much as each tile
on its own statistics did, but the same for every tile, so without seams; on a 512 x 512 crop of that scene with
statistics from its 256 x 256 copy, the restore was no further from the clean image (16.1 dB PSNR against 15.7 dB
with its own statistics; CPU-sized weights). Area averaging and
nearest-neighbour decimation give the same; native-resolution crops of the scene as the statistics' sample were
worse (8.2 levels on average for four crops of a quarter of the side). The linear attention's context is a sum over
positions divided by their number; it is divided by the number of positions of the whole scene, not of the copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...diffusion import (
    NoiseFn,
    ResidualSchedule,
    position_noise_fn,
    random_timesteps,
    rddm_sample,
    residual_training_example,
    to_signed,
    to_unit,
)
from ..blocks import pad_to_multiple
from .mcess_unet import MCESSUNet, MCESSUNetConfig
from .shared_statistics import (
    STATS_SIDE,
    SceneStatistics,
    StatisticsRecord,
    exceeds_statistics_side,
    restore_with_scene_statistics,
    statistics_image,
)
from .unetres import UNetRes, UNetResConfig

__all__ = ["DSRDMPDConfig", "DSRDMPD", "SceneStatistics", "STATS_SIDE", "statistics_image"]

@dataclass
class DSRDMPDConfig:
    """Settings of :class:`DSRDMPD`; the defaults are the paper's (58.7M + 52.0M parameters, 5 sampling steps).

    Attributes:
        in_channels: bands of the image (any count; 3 in the paper).
        stage1_dim: first-level width of the stage-1 U-Net (64).
        stage2_dim, stage2_dim_mults: first-level width and level multipliers of the stage-2 denoiser (64, 1-2-4-8).
        stage2_dim_head: width of each of the denoiser's 4 attention heads (32).
        timesteps: T of the residual schedule (1000).
        sum_scale: total noise variance of the schedule, betabar_T^2 (1).
        steps: sampling steps at restore time (5).
        eta: stochasticity of the sampler (0: deterministic given the starting noise).
        seed: seed of the sampling noise, so the same input gives the same output.
        stage2_amp: let autocast reach the stage-2 denoiser too (about 2x faster steps on a CPU with bfloat16
            units, but up to 13/255 away from float32); by default autocast speeds up stage 1 only.
    """

    in_channels: int = 3
    stage1_dim: int = 64
    stage2_dim: int = 64
    stage2_dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    stage2_dim_head: int = 32
    timesteps: int = 1000
    sum_scale: float = 1.0
    steps: int = 5
    eta: float = 0.0
    seed: int = 0
    stage2_amp: bool = False

    def __post_init__(self) -> None:
        self.stage2_dim_mults = tuple(int(m) for m in self.stage2_dim_mults)
        if not 1 <= self.steps <= self.timesteps:
            raise ValueError(f"steps must be between 1 and timesteps={self.timesteps}, got {self.steps}")
        if self.sum_scale <= 0 or self.eta < 0:
            raise ValueError(f"need sum_scale > 0 and eta >= 0, got {self.sum_scale}, {self.eta}")
        # Build the stage configs now so that a bad width fails here, with the stage's own message.
        self.stage1_config, self.stage2_config  # noqa: B018

    @classmethod
    def cpu_small(cls, in_channels: int = 3, **overrides) -> DSRDMPDConfig:
        """A CPU-sized variant (3.7M + 3.4M parameters for 3 bands) with the paper's structure."""
        values = dict(in_channels=in_channels, stage1_dim=16, stage2_dim=16, stage2_dim_head=16)
        values.update(overrides)
        return cls(**values)

    @property
    def stage1_config(self) -> MCESSUNetConfig:
        return MCESSUNetConfig(in_channels=self.in_channels, dim=self.stage1_dim)

    @property
    def stage2_config(self) -> UNetResConfig:
        return UNetResConfig(in_channels=self.in_channels, dim=self.stage2_dim, dim_mults=self.stage2_dim_mults,
                             dim_head=self.stage2_dim_head)


class DSRDMPD(nn.Module):
    """The two-stage restorer: ``forward(x)`` maps a hazy (B, C, H, W) image in [0, 1] to the dehazed one in [0, 1].

    Any H, W: the input is reflect-padded to a multiple of 16 for both stages and the output cropped back. The
    sampling noise comes from ``cfg.seed`` (or a ``generator``), or from ``noise_fn(shape, step)``. Given
    ``origins``, the scene position (y0, x0) of each image of the batch (what the tiling engine passes), it is
    :func:`rsrestore.diffusion.position_noise_fn` of ``cfg.seed``: a function of the scene pixel, so overlapping
    tiles draw the same noise and a tiled restore matches a whole-image one with ``origins=[(0, 0)]``.
    """

    #: Pixels of context the tiling engine reads around each tile. The U-Nets see far; with the CPU-sized weights on a
    #: 1024 x 1024 scene in 512-pixel tiles, 32 pixels instead of 16 brought the largest step across a tile border
    #: from 3.3 to 1.9 levels (of 255) for 12 % more work (``benchmarks/bench_dsrdmpd_seams.py``).
    halo = 32

    def __init__(self, cfg: DSRDMPDConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DSRDMPDConfig()
        self.stage1 = MCESSUNet(cfg.stage1_config)
        self.stage2 = UNetRes(cfg.stage2_config)
        self.schedule = ResidualSchedule.rddm(cfg.timesteps, cfg.sum_scale)
        self.stride = max(self.stage1.stride, cfg.stage2_config.stride)

    def forward(self, x: Tensor, sar: Tensor | None = None, *, steps: int | None = None,
                generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None,
                train_stage: int | None = None, target: Tensor | None = None,
                origins: Sequence[tuple[int, int]] | None = None,
                stats: dict[str, SceneStatistics] | None = None) -> Tensor:
        """The restored image; or, with ``train_stage`` (1 or 2) and the clean ``target``, that stage's training loss
        (:meth:`stage1_loss`, :meth:`stage2_loss` with ``generator``). The losses are reached through ``forward`` so
        that a DistributedDataParallel wrapper sees the call and synchronises the gradients.

        ``stats``: what :meth:`scene_statistics` returned for the scene ``x`` is a tile of (the tiling engine passes
        it); without it, an image larger than :data:`STATS_SIDE` gets the statistics of its own downsampled copy."""
        del sar  # optical only; accepted for the common restorer interface
        if train_stage is not None:
            if target is None:
                raise ValueError("train_stage needs the clean target image")
            if train_stage == 1:
                return self.stage1_loss(x, target)
            if train_stage == 2:
                return self.stage2_loss(x, target, generator)
            raise ValueError(f"train_stage must be 1 or 2, got {train_stage}")
        if origins is not None and noise_fn is None and generator is None:
            noise_fn = position_noise_fn(self.cfg.seed, origins)
        scene = (stats or {}).get("scene")
        if scene is None and exceeds_statistics_side(x):
            scene = self.scene_statistics(x)["scene"]
        return restore_with_scene_statistics(
            x, origins, scene, lambda s: self.record_statistics(s, steps or self.cfg.steps),
            lambda: self.restore(x, steps=steps, generator=generator, noise_fn=noise_fn))

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None, decimation: float = 1.0
                         ) -> dict[str, SceneStatistics]:
        """The scene's statistics, for every tile (``stats=`` of :meth:`forward`): ``x`` is a read of the whole scene,
        ``decimation`` times smaller than the scene (the tiling engine's). Cheap: the record is made lazily, by
        :meth:`record_statistics` at the first tile."""
        del mask  # the tiling engine fills invalid pixels with the mean colour of the valid ones before this call
        self._check(x)
        return {"scene": SceneStatistics.of(x, decimation)}

    def record_statistics(self, scene: SceneStatistics, steps: int) -> StatisticsRecord:
        """Every layer's scene-wide quantities (per sampling step for the denoiser), recorded by restoring the scene's
        downsampled copy with ``steps`` steps and noise drawn by position; kept in ``scene`` for the next tiles."""
        noise_fn = position_noise_fn(self.cfg.seed, [(0, 0)] * scene.image.shape[0])
        return scene.record(steps, lambda image: self.restore(image, steps=steps, noise_fn=noise_fn))

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"DS-RDMPD expects (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")

    @torch.no_grad()
    def restore(self, x: Tensor, steps: int | None = None, generator: torch.Generator | None = None,
                noise_fn: NoiseFn | None = None) -> Tensor:
        """Stage 1, then ``steps`` (default ``cfg.steps``) RDDM steps; returns the dehazed image clipped to [0, 1].

        Under autocast (``--amp``) only stage 1 runs in reduced precision unless ``cfg.stage2_amp`` is set: in bfloat16
        the denoiser's steps moved the output by up to 13/255, stage 1 by under 1/255.
        """
        self._check(x)
        h, w = x.shape[-2:]
        xp, _ = pad_to_multiple(x.float(), self.stride)
        hazy = to_signed(xp)
        coarse = to_signed(self.stage1(xp).float())
        if generator is None and noise_fn is None:
            generator = torch.Generator(device=x.device).manual_seed(self.cfg.seed)
        keep_autocast = self.cfg.stage2_amp or not torch.is_autocast_enabled(x.device.type)
        with nullcontext() if keep_autocast else torch.autocast(x.device.type, enabled=False):
            cond_features = self.stage2.encode_condition(torch.cat([coarse, hazy], dim=1))

            def denoise(x_t: Tensor, t: Tensor, features: Tensor) -> Tensor:
                return self.stage2(x_t, t, cond_features=features).float()

            out = rddm_sample(denoise, self.schedule, coarse, cond_features, steps=steps or self.cfg.steps,
                              eta=self.cfg.eta, update="use_x_start", objective="pred_res", generator=generator,
                              noise_fn=noise_fn)
        return to_unit(out)[..., :h, :w].clamp(0.0, 1.0)

    def stage1_loss(self, hazy: Tensor, clean: Tensor) -> Tensor:
        """Stage-1 training loss of the authors' code: L1 + MSE + 2 L1 on the 0-255 scale (= 511 L1 + MSE)."""
        self._check(hazy)
        pred = self.stage1(hazy)
        return 511.0 * F.l1_loss(pred, clean) + F.mse_loss(pred, clean)

    @torch.no_grad()
    def frozen_stage1(self, hazy: Tensor) -> Tensor:
        """Stage 1 in eval mode (BatchNorm on its running statistics) without gradients, whatever the mode of the
        whole model: stage 2 trains on top of a fixed stage 1."""
        was_training = self.stage1.training
        self.stage1.eval()
        try:
            return self.stage1(hazy)
        finally:
            self.stage1.train(was_training)

    def stage2_loss(self, hazy: Tensor, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Stage-2 training loss: L1 between the predicted and the true residual (stage-1 output - clean) at a
        random timestep; stage 1 runs without gradients (train it first and freeze it). Timesteps and noise come from
        ``generator``, or the global generator when None."""
        self._check(hazy)
        coarse = to_signed(self.frozen_stage1(hazy))
        x0 = to_signed(clean)
        t = random_timesteps(self.schedule.num_timesteps, x0.shape[0], generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None)
        ex = residual_training_example(self.schedule, x0, coarse, t, noise.to(x0.device))
        pred = self.stage2.forward_any_size(ex.x_t, t, torch.cat([coarse, to_signed(hazy)], dim=1))
        return F.l1_loss(pred, ex.target("pred_res"))
