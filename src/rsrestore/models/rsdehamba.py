"""RSDehamba: a lightweight vision Mamba U-Net for remote-sensing image dehazing.

Zhou, Wu, Chen, Chen, He, "RSDehamba: Lightweight Vision Mamba for Remote Sensing Satellite Image Dehazing",
arXiv:2405.10030, 2024.

* A shallow 3x3 convolution embeds the image; a three-level symmetric U-Net of Vision Dehamba Blocks (VDB) follows,
  with (2, 3, 3) blocks at levels 1, 2, 3 (level 3 is the bottleneck; the decoder repeats levels 2 and 1 with 3 and
  2 blocks), stride-2 convolutions down, 2x2 transposed convolutions up, and skip connections fused by concatenation
  and a 1x1 convolution. A final 3x3 convolution predicts a residual that is added to the input.
* ``head="affine"`` (this project's addition, not the paper's): a second 3x3 convolution predicts a per-pixel gain
  too, J = (1 + g) I + r. Inverting the scattering model, J = I / t - A (1 - t) / t, is per pixel an affine map of I
  whose gain 1 / t and offset vary only as slowly as the haze does, so the detail of a hazy scene comes out amplified
  by 1 / t. The residual alone must rebuild that amplified detail from features, and briefly trained weights do not:
  their outputs are softer than the reference (gradient energy 0.5 of it on the held-out sets, where ``dcp``, an
  affine map of I, keeps 0.99). The gain convolution starts at zero, so weights of the residual head load unchanged
  and start from exactly the model they were. Measured, the gain alone kept little more detail: gradient energy on
  the Rocky Mountain NP sample went from 0.51 to 0.53 of the reference's (0.58 with an edge loss; ``dcp`` 0.86). Free
  per-pixel maps can still cancel the input's detail and repaint it softer.
* ``map_smoothing`` (with the affine head): a Gaussian blur of that width (pixels) on the gain and offset maps, so
  they can only vary as slowly as haze does and the fine detail of the output is the input's, amplified by the gain.
* ``prior`` (this project's addition): ``"dcp"`` makes the model a correction of the dark channel prior's output b,
  which it computes itself and sees beside the input: J = b + r, or with the affine head J = (1 + g) b + r, and with
  ``input_gain`` J = (1 + g) b + h I + r. The heads start at zero, so before training the model is ``dcp`` (see
  :mod:`.prior`).
* VDB: x <- x + SSM(LN(conv(x))); x <- x + FFN(conv(LN(x))), with depth-wise 3x3 convolutions for the local
  mixing.
* SSM: two branches. Branch 1 = linear + SiLU. Branch 2 = linear -> depth-wise conv -> SiLU -> Direction-aware Scan
  Module -> LayerNorm. Output = linear(branch 1 * branch 2).
* Direction-aware Scan Module (DSM): the map is unfolded into four sequences (row-major forward and backward,
  column-major forward and backward); each is scanned by a selective SSM (Mamba's S6, :mod:`.scan`) with its own
  projections and parameters; the four outputs are folded back to the map and summed. The four directions run as
  the four groups of a single scan call.

The paper reports 1.80M parameters but not the widths. With its stated structure, the defaults here (embed_dim 36,
so widths 36/72/144 at the three levels; d_state 16, expand 2 and dt_rank = ceil(width / 16) as in Mamba/VMamba;
FFN hidden width 2.66x as in Restormer) give 1,793,436 parameters (-0.4 %).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import LayerNorm2d, affine_output, count_parameters, pad_to_multiple
from .prior import EVIDENCE_KEY, PRIORS, SEVERITY_KEY, CleanGate, PriorConditioned, build_prior
from . import scan as _scan
from .scan import selective_scan

__all__ = ["RSDehambaConfig", "RSDehamba", "VisionDehambaBlock", "DirectionAwareSSM", "paper_parameter_count"]

#: Parameters of the model as the paper reports them.
PAPER_PARAMETERS = 1.80e6
#: Scan directions of the DSM: row-major, column-major, and both reversed.
DIRECTIONS = 4
#: Output heads: the paper's residual, or a per-pixel gain and a residual (see the module's docstring).
HEADS = ("residual", "affine")
#: What the clean gate falls back on where it hands the scene back (RSDehambaConfig.gate_fallback).
GATE_FALLBACKS = ("input", "gentle_prior")


@dataclass
class RSDehambaConfig:
    """Settings of :class:`RSDehamba`; defaults reproduce the paper's size (1.80M parameters).

    Attributes:
        in_channels: bands of the input and output.
        embed_dim: channels at level 1; levels 2 and 3 have 2x and 4x.
        depths: VDBs at levels 1, 2, 3 of the encoder; the decoder mirrors levels 2 and 1.
        d_state: SSM state size N per channel.
        expand: inner width of the SSM branch as a multiple of the block width.
        dt_rank: rank of the delta projection; 0 means ceil(width / 16), as in Mamba.
        d_conv: kernel of the SSM's depth-wise convolution.
        mlp_ratio: hidden width of the FFN as a multiple of the block width.
        dt_min, dt_max: range of the initial step sizes delta (log-uniform, Mamba's initialisation).
        scan_impl: selective scan implementation (see :func:`rsrestore.models.scan.selective_scan`).
        tied_last_upsampling: the last (full-resolution) 2x2 stride-2 transposed convolution uses the mean of its
            four kernel taps for every output pixel of a 2x2 block (a 1x1 projection, then nearest up-sampling). Our
            addition, not the paper's: with four free taps a flat feature map comes out as a 2-pixel-period pattern
            the decoder must learn to cancel, and briefly trained weights do not (160-218x the input's energy at
            that period on real cloud, ``benchmarks/results/detail.json``). Same parameters, so weights trained
            either way load either way.
        head: ``"residual"`` (the paper: J = I + r) or ``"affine"`` (a per-pixel gain too: J = (1 + g) I + r; see the
            module's docstring).
        map_smoothing: with the affine head, the standard deviation in pixels of a Gaussian blur of g and r; 0 leaves
            them per pixel. Our addition; no parameters, so weights load either way.
        prior: ``"none"``, or the classical restorer whose output the model corrects (``"dcp"``; see :mod:`.prior`).
        input_gain: with a prior and the affine head, a third map h takes a share of the hazy input too,
            J = (1 + g) b + h I + r, so the model can fall back on I where the prior fails (starts at zero).
        prior_options: settings of the prior other than its defaults (fields of its config, e.g.
            ``{"max_stretch": 4.0}`` for rop).
        clean_gate: with a prior, a per-pixel share s of the correction, J = I + s (J' - I), learned so that a
            clean scene comes back as it is (s near 0); starts at s = 0.9975 (see :class:`.prior.CleanGate`).
        gate_evidence: the clean gate also weighs the recogniser's verdict on the whole scene (its log-odds that the
            scene is degraded; a learned weight that starts at zero, so gated weights without it load as they are).
        gate_fallback: what the clean gate falls back on where it hands the scene back: ``"input"`` (the scene as it
            is) or ``"gentle_prior"`` (the prior at the strength the recogniser's haze severity calls for, as
            ``--task auto`` runs dcp: the input itself for a clean scene, part of the veil lifted for a faint one).
        clean_odds: with a prior, at inference, a scene the recogniser reads clean at odds of at least
            ``clean_odds`` to 1 (P(clean) / (1 - P(clean)), from the whole scene, so every tile agrees) comes back
            as it is, bit for bit; 0 never. Our addition, no parameters. A fixed rule rather than a learned gate:
            a faint veil over black-shadowed ground and a clean scene with its own veil look alike to any gate (see
            the README), so the model restores what the recogniser is not clearly sure is clean.
    """

    in_channels: int = 3
    embed_dim: int = 36
    depths: tuple[int, int, int] = (2, 3, 3)
    d_state: int = 16
    expand: float = 2.0
    dt_rank: int = 0
    d_conv: int = 3
    mlp_ratio: float = 2.66
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    scan_impl: str = "auto"
    tied_last_upsampling: bool = False
    head: str = "residual"
    map_smoothing: float = 0.0
    prior: str = "none"
    input_gain: bool = False
    prior_options: dict[str, Any] = field(default_factory=dict)
    clean_gate: bool = False
    gate_evidence: bool = False
    gate_fallback: str = "input"
    clean_odds: float = 0.0

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if len(self.depths) != 3 or min(self.depths) < 0:
            raise ValueError(f"depths must be three non-negative block counts, got {self.depths}")
        if self.d_state < 1 or self.expand <= 0 or self.mlp_ratio <= 0 or self.dt_rank < 0:
            raise ValueError(
                f"need d_state >= 1, expand > 0, mlp_ratio > 0, dt_rank >= 0; got {self.d_state}, {self.expand}, "
                f"{self.mlp_ratio}, {self.dt_rank}"
            )
        if self.d_conv < 1 or self.d_conv % 2 == 0:
            raise ValueError(f"d_conv must be a positive odd kernel size, got {self.d_conv}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.map_smoothing < 0 or (self.map_smoothing > 0 and self.head != "affine"):
            raise ValueError(f"map_smoothing must be >= 0 and needs head='affine'; got {self.map_smoothing} with "
                             f"head={self.head!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.input_gain and (self.prior == "none" or self.head != "affine"):
            raise ValueError("input_gain needs a prior and head='affine'")
        if self.clean_gate and self.prior == "none":
            raise ValueError("clean_gate needs a prior")
        if (self.gate_evidence or self.gate_fallback != "input") and not self.clean_gate:
            raise ValueError("gate_evidence and gate_fallback need clean_gate")
        if self.gate_fallback not in GATE_FALLBACKS:
            raise ValueError(f"gate_fallback must be one of {GATE_FALLBACKS}, got {self.gate_fallback!r}")
        if self.clean_odds < 0 or (self.clean_odds > 0 and self.prior == "none"):
            raise ValueError(f"clean_odds must be >= 0 and needs a prior; got {self.clean_odds} with "
                             f"prior={self.prior!r}")

    @property
    def widths(self) -> tuple[int, int, int]:
        return (self.embed_dim, 2 * self.embed_dim, 4 * self.embed_dim)


class DirectionAwareSSM(nn.Module):
    """The SSM of a VDB with its Direction-aware Scan Module, on (B, H, W, C) channel-last features."""

    def __init__(self, dim: int, cfg: RSDehambaConfig):
        super().__init__()
        inner = max(1, int(round(cfg.expand * dim)))
        rank = cfg.dt_rank or math.ceil(dim / 16)
        n, k = cfg.d_state, DIRECTIONS
        self.inner, self.rank, self.d_state, self.scan_impl = inner, rank, n, cfg.scan_impl
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, cfg.d_conv, padding=cfg.d_conv // 2, groups=inner)
        # per direction: x -> (delta of rank `rank`, B, C), then delta -> one step size per channel
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * n, inner))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, inner, rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, inner))
        self.A_log = nn.Parameter(torch.empty(k * inner, n))
        self.D = nn.Parameter(torch.empty(k * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self._init(cfg)

    @torch.no_grad()
    def _init(self, cfg: RSDehambaConfig) -> None:
        # Mamba's initialisation: S4D-real A = -(1..N); delta log-uniform in [dt_min, dt_max] through softplus
        nn.init.uniform_(self.x_proj_weight, -self.inner**-0.5, self.inner**-0.5)
        nn.init.uniform_(self.dt_proj_weight, -self.rank**-0.5, self.rank**-0.5)
        dt = torch.exp(
            torch.rand(self.dt_proj_bias.shape) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        ).clamp_min(1e-4)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        s4d_real = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(s4d_real).repeat(self.A_log.shape[0], 1))
        self.D.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        xz = self.in_proj(x)
        u, z = xz.split(self.inner, dim=-1)
        u = F.silu(self.conv(u.permute(0, 3, 1, 2)))  # (B, inner, H, W), channels_last in memory
        return by_rows(self._gated_output, self.scan(u), z)

    def _gated_output(self, y: Tensor, z: Tensor) -> Tensor:
        return self.out_proj(self.out_norm(y) * F.silu(z))

    def scan(self, u: Tensor) -> Tensor:
        """Direction-aware scan of u (B, inner, H, W): four unfoldings, one selective scan, folded back and summed.

        Returns (B, H, W, inner). On the CPU with numba (``scan_impl`` "auto" or "numba") the fused kernels walk
        the four orders over the row-major map itself (:func:`.scan.cross_scan_numba`): no reordered copies, and
        the projections, which act per pixel, run once on the map. Otherwise the four sequences are built
        time-major, (B, L, K, inner), which is what the chunked scan works in, so it receives (B, K * inner, L)
        views and copies nothing more.
        """
        if _scan.resolve_impl(self.scan_impl, u) == "numba":
            return self._scan_fused(u)
        b, d, h, w = u.shape
        n, k, L = self.d_state, DIRECTIONS, h * w
        rows = u.permute(0, 2, 3, 1).reshape(b, L, d)  # row-major; free for a channels_last map
        cols = u.permute(0, 3, 2, 1).reshape(b, L, d)  # column-major
        xs = torch.stack([rows, cols, rows.flip(1), cols.flip(1)], dim=2)  # (B, L, K, inner)
        proj = torch.einsum("blkd,kcd->blkc", xs, self.x_proj_weight)
        dts, Bs, Cs = proj.split([self.rank, n, n], dim=-1)
        dts = torch.einsum("blkr,kdr->blkd", dts, self.dt_proj_weight)
        ys = selective_scan(
            xs.view(b, L, k * d).transpose(1, 2),
            dts.reshape(b, L, k * d).transpose(1, 2),
            -torch.exp(self.A_log.float()),
            Bs.permute(0, 2, 3, 1),
            Cs.permute(0, 2, 3, 1),
            self.D.float(),
            delta_bias=self.dt_proj_bias.reshape(-1).float(),
            delta_softplus=True,
            impl=self.scan_impl,
        )
        ys = ys.transpose(1, 2).reshape(b, L, k, d)
        row = ys[:, :, 0] + ys[:, :, 2].flip(1)
        col = ys[:, :, 1] + ys[:, :, 3].flip(1)
        return row.view(b, h, w, d) + col.view(b, w, h, d).transpose(1, 2)

    def _scan_fused(self, u: Tensor) -> Tensor:
        """:meth:`scan` by :func:`.scan.cross_scan_numba` (same result within float32 rounding)."""
        b, d, h, w = u.shape
        n, k, L = self.d_state, DIRECTIONS, h * w
        x = u.permute(0, 2, 3, 1).reshape(b, L, d)  # row-major sequence; free for a channels_last map
        # x_proj for all four directions as one matrix product (its weights are per direction, its input is not)
        proj = F.linear(x, self.x_proj_weight.reshape(-1, d)).view(b, L, k, -1)
        dts, Bs, Cs = proj.split([self.rank, n, n], dim=-1)
        # dt_proj applied and the four directions summed inside the kernels: no (B, L, K, inner) tensor
        ys = _scan.cross_scan_numba(
            x, dts, -torch.exp(self.A_log.float()), Bs, Cs, self.D.float(), self.dt_proj_bias.reshape(-1).float(),
            _positions(h, w, u.device), delta_softplus=True, delta_proj=self.dt_proj_weight, sum_groups=True,
        )
        return ys.view(b, h, w, d)


#: Pixels of a map that a block's per-pixel layers take at a time without gradients (see :func:`by_rows`).
ROW_CHUNK_PIXELS = 16384


def by_rows(fn: Callable[..., Tensor], *maps: Tensor) -> Tensor:
    """``fn`` of (B, H, W, C) maps, which acts on each pixel alone. Without gradients it runs on bands of rows of
    about ``ROW_CHUNK_PIXELS`` pixels, each written into one output as it comes: a chain of per-pixel layers then
    reads and writes each band while it is in the CPU's caches. PyTorch runs a chain layer by layer over the whole
    map, and past 256² the maps (tens of MB at 512²) no longer fit in the last-level cache, so each layer read its
    input back from memory; that made a 512² forward cost 1.7x a 256² one per pixel. With gradients the maps are
    kept for the backward anyway, and ``fn`` runs once on them as they are."""
    h, w = maps[0].shape[1:3]
    step = max(1, ROW_CHUNK_PIXELS // max(1, w))
    if torch.is_grad_enabled() or step >= h:
        return fn(*maps)
    out = None
    for r in range(0, h, step):
        y = fn(*(m[:, r : r + step] for m in maps))
        if out is None:
            out = y.new_empty((y.shape[0], h, *y.shape[2:]))
        out[:, r : r + step] = y
    return out


@functools.lru_cache(maxsize=8)
def _positions(h: int, w: int, device: torch.device) -> Tensor:
    with torch.inference_mode(False):  # a normal tensor, which autograd may save, even when first made for inference
        return _scan.cross_scan_positions(h, w).to(device)


class VisionDehambaBlock(nn.Module):
    """VDB: x + SSM(LN(conv(x))), then + FFN(conv(LN(x))). Input and output (B, C, H, W)."""

    def __init__(self, dim: int, cfg: RSDehambaConfig):
        super().__init__()
        hidden = max(1, int(round(cfg.mlp_ratio * dim)))
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ssm = DirectionAwareSSM(dim, cfg)
        self.norm2 = LayerNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ffn = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        s = self.ssm(self.norm1(self.conv1(x).permute(0, 2, 3, 1)))  # (B, H, W, C)
        x = x + s.permute(0, 3, 1, 2)
        mixed = self.conv2(self.norm2(x))
        return by_rows(self._ffn_residual, mixed.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _ffn_residual(self, mixed: Tensor, x: Tensor) -> Tensor:
        """x + FFN(mixed) on (B, H, W, C) maps (channels_last views of the block's maps)."""
        return x + self.ffn(mixed.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class RSDehamba(PriorConditioned, nn.Module):
    """RSDehamba restorer: ``forward(x, sar=None)`` maps a hazy (B, C, H, W) image in [0, 1] to the dehazed one.

    Any H, W: the input is reflect-padded to a multiple of 4 (two stride-2 levels) and the output cropped back.
    With a prior, ``stats`` are its scene statistics (from :meth:`scene_statistics` of the whole scene).
    """

    stride = 4
    correction_heads = ("head", "gain_head", "input_gain_head")
    input_conv = "embed"

    def __init__(self, cfg: RSDehambaConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RSDehambaConfig()
        c1, c2, c3 = cfg.widths
        n1, n2, n3 = cfg.depths
        self.prior = build_prior(cfg.prior, cfg.prior_options)
        # with a prior the network sees the degraded input and the prior's output of it
        self.embed = nn.Conv2d(cfg.in_channels * (1 if self.prior is None else 2), c1, 3, padding=1)
        self.enc1 = nn.Sequential(*[VisionDehambaBlock(c1, cfg) for _ in range(n1)])
        self.down1 = nn.Conv2d(c1, c2, 2, stride=2)
        self.enc2 = nn.Sequential(*[VisionDehambaBlock(c2, cfg) for _ in range(n2)])
        self.down2 = nn.Conv2d(c2, c3, 2, stride=2)
        self.bottleneck = nn.Sequential(*[VisionDehambaBlock(c3, cfg) for _ in range(n3)])
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.fuse2 = nn.Conv2d(2 * c2, c2, 1)
        self.dec2 = nn.Sequential(*[VisionDehambaBlock(c2, cfg) for _ in range(n2)])
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.fuse1 = nn.Conv2d(2 * c1, c1, 1)
        self.dec1 = nn.Sequential(*[VisionDehambaBlock(c1, cfg) for _ in range(n1)])
        self.head = nn.Conv2d(c1, cfg.in_channels, 3, padding=1)
        if cfg.head == "affine":
            # zero at the start: the model is the residual one until the gain is learned
            self.gain_head = nn.Conv2d(c1, cfg.in_channels, 3, padding=1)
            nn.init.zeros_(self.gain_head.weight)
            nn.init.zeros_(self.gain_head.bias)
        if cfg.input_gain:
            self.input_gain_head = nn.Conv2d(c1, cfg.in_channels, 3, padding=1)
            nn.init.zeros_(self.input_gain_head.weight)
            nn.init.zeros_(self.input_gain_head.bias)
        if self.prior is not None:  # the correction starts at zero: the model starts as its prior
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.clean_gate = CleanGate(c1, cfg.in_channels, cfg.gate_evidence) if cfg.clean_gate else None

    def forward(self, x: Tensor, sar: Tensor | None = None, stats: dict[str, Tensor] | None = None,
                cores: Sequence[Sequence[int]] | None = None) -> Tensor:
        """``cores``: with a prior, the pixels of each item the caller keeps, ``(y0, y1, x0, x1)`` (the tiled
        engine's tiles in their read boxes); the network then runs near them only (:meth:`correct_prior`)."""
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected input (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if sar is not None:
            raise ValueError("RSDehamba does not use SAR; pass sar=None")
        if self.prior is None:
            return self._network(x, x)
        verdict = self.verdict(x, stats)
        evidence = verdict.get(EVIDENCE_KEY) if self.cfg.gate_evidence else None

        def restore() -> Tensor:
            extra = []
            if self.cfg.gate_fallback == "gentle_prior":
                extra.append(self.gentle_prior_output(x, stats, verdict[SEVERITY_KEY]).to(x.dtype))
            return self.correct_prior(x, self.prior_output(x, stats).to(x.dtype), cores,
                                      lambda xi, bi, *rest: self._network(xi, bi, evidence, *rest), *extra)

        return self.hand_back_clean(x, verdict, restore)

    def _network(self, x: Tensor, base: Tensor, evidence: Tensor | None = None,
                 fallback: Tensor | None = None) -> Tensor:
        """The restored image from the input x and the image the heads correct (x itself, or the prior's output)."""
        xp, (h, w) = pad_to_multiple(x if self.prior is None else torch.cat([x, base], dim=1), self.stride)
        xp = xp.contiguous(memory_format=torch.channels_last)
        bp = xp[:, -self.cfg.in_channels:]  # what the heads correct: the input, or the prior's output
        f1 = self.enc1(self.embed(xp))
        f2 = self.enc2(self.down1(f1))
        f3 = self.bottleneck(self.down2(f2))
        d2 = self.dec2(self.fuse2(torch.cat([self.up2(f3), f2], dim=1)))
        d1 = self.dec1(self.fuse1(torch.cat([self._last_upsampling(d2), f1], dim=1)))
        offset = self.head(d1)
        xs = xp[:, :self.cfg.in_channels]  # the input, padded
        if self.cfg.head == "residual":
            out = bp + offset
        else:
            maps = [self.gain_head(d1), offset] + ([self.input_gain_head(d1)] if self.cfg.input_gain else [])
            out, _ = affine_output(bp, torch.cat(maps, dim=1), self.cfg.map_smoothing,
                                   xs if self.cfg.input_gain else None)
        if self.clean_gate is not None:
            fp = None if fallback is None else pad_to_multiple(fallback, self.stride)[0]
            out = self.clean_gate(d1, xs, bp, out, evidence, fp)
        return out[..., :h, :w].contiguous()

    def _last_upsampling(self, x: Tensor) -> Tensor:
        if not self.cfg.tied_last_upsampling:
            return self.up1(x)
        tied = self.up1.weight.mean(dim=(2, 3), keepdim=True).expand_as(self.up1.weight)
        return F.conv_transpose2d(x, tied, self.up1.bias, stride=2)

    def num_parameters(self) -> int:
        """Trainable parameters (1,793,436 with the default config; the paper reports 1.80M)."""
        return count_parameters(self)


def paper_parameter_count() -> float:
    """The parameter count the paper reports, for comparison with ``RSDehamba().num_parameters()``."""
    return PAPER_PARAMETERS
