"""Stage 2 of DS-RDMPD: the residual denoiser of RDDM, one shared encoder and two decoders (UnetRes).

Liu et al., "Residual Denoising Diffusion Models", CVPR 2024; DS-RDMPD (Zhou et al., IEEE TGRS 2025) trains it on top
of the stage-1 estimate.

* Input: concat(I_t, stage-1 output, hazy image), 3 x bands channels, images in [-1, 1]; a 7x7 convolution embeds it.
* Timesteps (0-based indices) are embedded sinusoidally and passed through an MLP (dim -> 4 dim -> 4 dim).
* Encoder levels at widths dim x dim_mults: two ResNet blocks, linear attention, a 4x4 stride-2 convolution down
  (a 3x3 convolution at the last level). ResNet block: [weight-standardised conv3x3 -> GroupNorm(8) -> time
  scale-shift (first only) -> SiLU] x 2, plus a 1x1 shortcut where the width changes.
* Middle: ResNet block, full softmax attention, ResNet block.
* Two decoders mirror the encoder with nearest 2x up + conv3x3. The skip-free one predicts the residual
  I_res = I_in - I_0 (DS-RDMPD's objective ``pred_res``); the one with skip connections serves RDDM's objectives
  that also predict noise. Under ``pred_res`` the second decoder gets no gradient and is never evaluated here
  (``both=False``), but it is kept so the model has the authors' structure and size.

The condition (stage-1 output and hazy image) enters only through the first convolution, which is linear: its
contribution is computed once per image by :meth:`UNetRes.encode_condition` and added at every sampling step.

At ``dim=64, dim_mults=(1, 2, 4, 8)`` and 3 bands this has 51,995,398 parameters against 51,990,022 in the authors'
``UnetRes`` (+0.01 %): the channel LayerNorms here carry a bias as well as a gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import LayerNorm2d, pad_to_multiple
from .shared_statistics import SharedGroupNorm, positions_ratio, shared

__all__ = ["UNetResConfig", "UNetRes", "ResnetBlock", "LinearAttention", "SinusoidalTimeEmbedding"]

#: Epsilon of the channel LayerNorms, as in the authors' code (the output moves by about 1e-2 with 1e-6 instead).
NORM_EPS = 1e-5
#: Parameters of the authors' UnetRes(dim=64, dim_mults=(1, 2, 4, 8)) for 3 bands (counted from their code).
OFFICIAL_PARAMETERS = 51_990_022


@dataclass
class UNetResConfig:
    """Settings of :class:`UNetRes`; the defaults are DS-RDMPD's (52.0M parameters).

    Attributes:
        in_channels: bands of the image; the network reads 3 x this many channels and predicts this many.
        dim: width of the first level; level i has ``dim * dim_mults[i]`` channels.
        dim_mults: width multipliers of the levels (one fewer 2x downsampling than levels).
        groups: GroupNorm groups of the ResNet blocks.
        heads, dim_head: attention heads and their width (linear attention at each level, full in the middle).
    """

    in_channels: int = 3
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    groups: int = 8
    heads: int = 4
    dim_head: int = 32

    def __post_init__(self) -> None:
        self.dim_mults = tuple(int(m) for m in self.dim_mults)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if not self.dim_mults or min(self.dim_mults) < 1:
            raise ValueError(f"dim_mults must be positive multipliers, got {self.dim_mults}")
        if self.dim < 2 or self.dim % 2 or any(self.dim * m % self.groups for m in self.dim_mults):
            raise ValueError(f"dim must be even and every level width divisible by groups={self.groups}; got "
                             f"dim={self.dim}, dim_mults={self.dim_mults}")
        if self.heads < 1 or self.dim_head < 1:
            raise ValueError(f"heads and dim_head must be >= 1, got {self.heads}, {self.dim_head}")

    @property
    def stride(self) -> int:
        """Inputs must be a multiple of this: one 2x downsampling per level but the last."""
        return 2 ** (len(self.dim_mults) - 1)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style embedding of (fractional) timesteps: [sin(t w_k), cos(t w_k)], w_k = 10000^(-k/(d/2-1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1))),
                             persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class WSConv2d(nn.Conv2d):
    """Convolution with weight standardisation (Qiao et al. 2019), which suits GroupNorm.

    Without gradients the standardised weight is kept until the weight changes: a sampler calls the network several
    times per image with the same weights, and standardising them took a fifth of a step's time at 128 x 128.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._standardised: tuple[tuple, Tensor] | None = None

    def standardised_weight(self, eps: float) -> Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device, eps)
        if torch.is_grad_enabled() or self._standardised is None or self._standardised[0] != key:
            var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
            standardised = (w - mean) * (var + eps).rsqrt()
            if torch.is_grad_enabled():
                return standardised
            self._standardised = (key, standardised)
        return self._standardised[1]

    def forward(self, x: Tensor) -> Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        return self._conv_forward(x, self.standardised_weight(eps), self.bias)


class ConvNormAct(nn.Module):
    """WS conv3x3 -> GroupNorm -> optional scale-shift (x (1 + s) + b) -> SiLU."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.proj = WSConv2d(cin, cout, 3, padding=1)
        self.norm = SharedGroupNorm(groups, cout)

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    """Two ConvNormAct with the time embedding as scale-shift of the first, plus a (1x1) shortcut."""

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * cout))
        self.block1 = ConvNormAct(cin, cout, groups)
        self.block2 = ConvNormAct(cout, cout, groups)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        scale, shift = self.time(t_emb)[:, :, None, None].chunk(2, dim=1)
        return self.block2(self.block1(x, (scale, shift))) + self.shortcut(x)


class LinearAttention(nn.Module):
    """Efficient attention (Shen et al. 2021): softmax over features for q, over positions for k; O(HW) in memory."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        hidden = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), LayerNorm2d(dim, eps=NORM_EPS))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale

        def context() -> Tensor:  # (b, heads, d, e)
            # divided by the positions of the whole image, which a downsampled scene has fewer of
            positions = h * w * positions_ratio()
            return k.softmax(dim=-1) @ (v / positions).transpose(-1, -2)

        context = shared(self, "context", context, b)
        out = context.transpose(-1, -2) @ q  # (b, heads, e, n)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full softmax self-attention over all positions (used at the coarsest level only)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        hidden = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for t in self.to_qkv(x).chunk(3, dim=1))
        k, v = shared(self, "keys_values", lambda: (k, v), b)  # a tile's positions attend to the whole scene's
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, d); scale 1/sqrt(d) as in the paper's code
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class PreNormResidual(nn.Module):
    """x + fn(LayerNorm(x))."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=NORM_EPS)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fn(self.norm(x))


class Level(nn.Module):
    """Two ResNet blocks, linear attention, and a resampling convolution (or a 3x3 convolution at the end)."""

    def __init__(self, block_in: tuple[int, int], width: int, out: int, resample: nn.Module, cfg: UNetResConfig,
                 time_dim: int) -> None:
        super().__init__()
        self.block1 = ResnetBlock(block_in[0], width, time_dim, cfg.groups)
        self.block2 = ResnetBlock(block_in[1], width, time_dim, cfg.groups)
        self.attn = PreNormResidual(width, LinearAttention(width, cfg.heads, cfg.dim_head))
        self.resample = resample


def _upsample(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))


class UNetRes(nn.Module):
    """Shared-encoder, two-decoder U-Net of RDDM.

    ``forward(x_t, t, cond)`` returns the predicted residual (B, bands, H, W); ``cond`` is concat(stage-1 output,
    hazy) in [-1, 1], or pass ``cond_features=encode_condition(cond)`` to reuse it across steps. ``both=True`` also
    returns the second decoder's output. H and W must be multiples of ``cfg.stride`` (:meth:`forward_any_size` pads).
    """

    def __init__(self, cfg: UNetResConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or UNetResConfig()
        dim, bands = cfg.dim, cfg.in_channels
        time_dim = 4 * dim
        self.init_conv = nn.Conv2d(3 * bands, dim, 7, padding=3)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        dims = [dim] + [dim * m for m in cfg.dim_mults]
        pairs = list(zip(dims[:-1], dims[1:]))
        n = len(pairs)
        self.downs = nn.ModuleList(
            Level((a, a), a, b, nn.Conv2d(a, b, 4, 2, 1) if i < n - 1 else nn.Conv2d(a, b, 3, padding=1), cfg,
                  time_dim)
            for i, (a, b) in enumerate(pairs)
        )
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, cfg.groups)
        self.mid_attn = PreNormResidual(mid, Attention(mid, cfg.heads, cfg.dim_head))
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, cfg.groups)

        def up(i: int, a: int, b: int) -> nn.Module:
            return _upsample(b, a) if i < n - 1 else nn.Conv2d(b, a, 3, padding=1)

        rev = list(reversed(pairs))
        self.ups_res = nn.ModuleList(Level((b, b), b, a, up(i, a, b), cfg, time_dim) for i, (a, b) in enumerate(rev))
        self.final_res = ResnetBlock(dim, dim, time_dim, cfg.groups)
        self.out_res = nn.Conv2d(dim, bands, 1)
        self.ups_skip = nn.ModuleList(
            Level((b + a, b + a), b, a, up(i, a, b), cfg, time_dim) for i, (a, b) in enumerate(rev)
        )
        self.final_skip = ResnetBlock(2 * dim, dim, time_dim, cfg.groups)
        self.out_skip = nn.Conv2d(dim, bands, 1)

    def encode_condition(self, cond: Tensor) -> Tensor:
        """The first convolution's response to the condition channels (with its bias): constant over sampling."""
        b = self.cfg.in_channels
        if cond.ndim != 4 or cond.shape[1] != 2 * b:
            raise ValueError(f"cond must be (B, {2 * b}, H, W) (stage-1 output, hazy), got {tuple(cond.shape)}")
        return self.init_conv._conv_forward(cond, self.init_conv.weight[:, b:], self.init_conv.bias)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Tensor | None = None,
        *,
        cond_features: Tensor | None = None,
        both: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        b = self.cfg.in_channels
        if x_t.ndim != 4 or x_t.shape[1] != b:
            raise ValueError(f"x_t must be (B, {b}, H, W), got {tuple(x_t.shape)}")
        if any(s % self.cfg.stride for s in x_t.shape[-2:]):
            raise ValueError(f"H and W must be multiples of {self.cfg.stride}, got {tuple(x_t.shape[-2:])}")
        if cond_features is None:
            if cond is None:
                raise ValueError("pass cond (stage-1 output and hazy image) or cond_features")
            cond_features = self.encode_condition(cond)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        x = self.init_conv._conv_forward(x_t, self.init_conv.weight[:, :b], None) + cond_features
        r = x
        temb = self.time_mlp(t)
        hs = []
        for level in self.downs:
            x = level.block1(x, temb)
            hs.append(x)
            x = level.attn(level.block2(x, temb))
            hs.append(x)
            x = level.resample(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, temb)), temb)
        res = x
        for level in self.ups_res:
            res = level.resample(level.attn(level.block2(level.block1(res, temb), temb)))
        res = self.out_res(self.final_res(res, temb))
        if not both:
            return res
        for level in self.ups_skip:
            x = level.block1(torch.cat([x, hs.pop()], dim=1), temb)
            x = level.attn(level.block2(torch.cat([x, hs.pop()], dim=1), temb))
            x = level.resample(x)
        x = self.out_skip(self.final_skip(torch.cat([x, r], dim=1), temb))
        return res, x

    def forward_any_size(self, x_t: Tensor, t: Tensor, cond: Tensor, both: bool = False):
        """:meth:`forward` on inputs of any H, W: reflect-padded to the stride and cropped back."""
        h, w = x_t.shape[-2:]
        x, _ = pad_to_multiple(torch.cat([x_t, cond], dim=1), self.cfg.stride)
        b = self.cfg.in_channels
        out = self.forward(x[:, :b], t, x[:, b:], both=both)
        return tuple(o[..., :h, :w] for o in out) if both else out[..., :h, :w]
