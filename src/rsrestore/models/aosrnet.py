"""AOSR-Net: All-in-One Sandstorm Removal Network.

Si et al., "AOSR-Net: All-in-One Sandstorm Removal Network", ICTAI 2023 (arXiv:2309.08838).

The sand-dust scattering model  I = A_s + (J - A'_s) t,  A'_s = 1 - A_s  is re-formulated so that one map Phi
carries both the transmission t and the sand-dust light A_s (Eq. 6):

    Phi = (I - A_s + t (A'_s - beta)) / (t (I - alpha)),   alpha = 1.6, beta = 1,

and the clear image follows from Phi alone (Eq. 5):

    J = Phi (I - alpha) + beta.

The network has two parts: a Phi-estimation module (an encoder-decoder of four convolutions and two transposed
convolutions, each followed by PReLU, a residual group of three residual blocks in the latent space, and mixup
fusion f = sigmoid(xi) f1 + (1 - sigmoid(xi)) f2 of shallow features f1 with deep features f2 through a trainable
xi), and the parameter-free post-restoring module of Eq. 5. Both Phi and J are outputs, since the training loss
supervises both.

Where this description leaves kernel sizes, widths and strides open, they follow the AECR-Net backbone that the
design and its mixup come from (Wu et al., CVPR 2021): a 7x7 convolution at full resolution, two stride-2 3x3
convolutions (width 64, 128, 256), two stride-2 3x3 transposed convolutions back up, and a 7x7 convolution to Phi,
with the two mixups initialised at xi = -1 (latent) and xi = -0.6 (half resolution).

The ``affine`` head (``AOSRNetConfig.head``) is this project's departure from Eq. 5. Inverting the scattering model
gives J = I / t + (A'_s - A_s / t): per pixel an affine map of I whose gain 1 / t and offset vary only as slowly as
the dust does. Eq. 5 is affine in I too, J = Phi I + (beta - alpha Phi), but its one map ties the offset to the gain,
so a Phi that varies slowly cannot express both: the detail of I then comes out multiplied by Phi (about 0.6 for
typical dust, where 1 / t is about 2) and the output is softer than the input. Measured on the NEON held-out dust
crops with the exact targets smoothed by a Gaussian of sigma 2 px: Eq. 5's Phi gives SSIM 0.745 (input 0.753),
a gain and an offset smoothed over 4-16 px give 0.945-0.952. The affine head predicts the gain and the offset as two
maps, J = (1 + g) I + o, with the last convolution initialised to zero so that an untrained network is the identity
(a clean scene passes through) and the detail of the output is the input's, amplified where the dust was thick.

With ``prior="rop"`` (our addition, affine head only) the network sees the rank-one prior's output b beside the input
and its maps apply to b, J = (1 + g) b + o, or with ``input_gain`` J = (1 + g) b + h I + o: before training the model
is ``rop`` (see :mod:`.prior`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import affine_output, pad_to_multiple
from .prior import PRIORS, CleanGate, PriorConditioned, build_prior

#: The encoder halves the resolution twice, so inputs are padded to a multiple of this.
STRIDE = 4

#: Output heads: the paper's Eq. 5, or a per-pixel gain and offset (see the module's docstring).
HEADS = ("phi", "affine")


@dataclass
class AOSRNetConfig:
    """Settings of :class:`AOSRNet`; defaults are the paper's, and AECR-Net's for the unstated widths and kernels.

    Attributes:
        in_channels: bands of the input; Phi and the output have the same count.
        width: channels after the first convolution; the encoder doubles it twice (64, 128, 256).
        num_res_blocks: residual blocks in the latent residual group (3 in the paper).
        alpha, beta: constants of Eqs. 5-6 (1.6 and 1). ``alpha`` must exceed 1 so that I - alpha never vanishes for
            inputs in [0, 1].
        mix_init: initial xi of the latent and the half-resolution mixups.
        head: ``"phi"`` (the paper: one map, Eq. 5) or ``"affine"`` (a gain and an offset map, J = (1 + g) I + o; see
            the module's docstring).
        map_smoothing: with the affine head, the standard deviation in pixels of a Gaussian blur of g and o, so that
            the fine detail of the output can only be the input's times the gain; 0 leaves them per pixel. Our
            addition; no parameters, so weights load either way.
        prior: ``"none"``, or the classical restorer whose output the affine maps correct (``"rop"``; see
            :mod:`.prior`).
        input_gain: with a prior, a third map h takes a share of the degraded input too, J = (1 + g) b + h I + o, so
            the model can fall back on I where the prior fails (starts at zero).
        prior_options: settings of the prior other than its defaults (fields of its config, e.g.
            ``{"max_stretch": 4.0}`` for rop).
        clean_gate: with a prior, a per-pixel share s of the correction, J = I + s (J' - I), learned so that a
            clean scene comes back as it is (s near 0); starts at s = 0.9975 (see :class:`.prior.CleanGate`).
    """

    in_channels: int = 3
    width: int = 64
    num_res_blocks: int = 3
    alpha: float = 1.6
    beta: float = 1.0
    mix_init: tuple[float, float] = (-1.0, -0.6)
    head: str = "phi"
    map_smoothing: float = 0.0
    prior: str = "none"
    input_gain: bool = False
    prior_options: dict[str, Any] = field(default_factory=dict)
    clean_gate: bool = False

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if not self.alpha > 1.0:
            raise ValueError(f"alpha must be > 1 so that I - alpha != 0 for I in [0, 1], got {self.alpha}")
        if len(self.mix_init) != 2:
            raise ValueError(f"mix_init needs two values (latent, half resolution), got {self.mix_init}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.map_smoothing < 0 or (self.map_smoothing > 0 and self.head != "affine"):
            raise ValueError(f"map_smoothing must be >= 0 and needs head='affine'; got {self.map_smoothing} with "
                             f"head={self.head!r}")
        if self.prior not in PRIORS or (self.prior != "none" and self.head != "affine"):
            raise ValueError(f"prior must be one of {PRIORS} and needs head='affine' unless 'none'; got "
                             f"{self.prior!r} with head={self.head!r}")
        if self.input_gain and self.prior == "none":
            raise ValueError("input_gain needs a prior")
        if self.clean_gate and self.prior == "none":
            raise ValueError("clean_gate needs a prior")


def restore_from_phi(hazy: Tensor, phi: Tensor, alpha: float = 1.6, beta: float = 1.0) -> Tensor:
    """Post-restoring module, Eq. 5 of Si et al.: J = Phi (I - alpha) + beta."""
    return phi * (hazy - alpha) + beta


def phi_from_clean(clean: Tensor, hazy_input: Tensor, alpha: float = 1.6, beta: float = 1.0) -> Tensor:
    """The Phi target that makes Eq. 5 exact for a (clean, degraded) pair: Phi = (J - beta) / (I - alpha).

    For a pair synthesised with the scattering model and no clipping this equals Eq. 6; it also gives a target for
    datasets that ship only (input, target). Requires every input value to differ from ``alpha`` (true for inputs in
    [0, 1] and alpha > 1).
    """
    if clean.shape != hazy_input.shape:
        raise ValueError(f"clean and hazy_input shapes differ: {tuple(clean.shape)} vs {tuple(hazy_input.shape)}")
    denom = hazy_input - alpha
    if bool((denom == 0).any()):
        raise ValueError(f"hazy_input equals alpha={alpha} somewhere; Phi is undefined there")
    return (clean - beta) / denom




class Mixup(nn.Module):
    """Adaptive mixup f = sigmoid(xi) f1 + (1 - sigmoid(xi)) f2 with a trainable scalar xi (shallow f1, deep f2)."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.xi = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        m = torch.sigmoid(self.xi).to(shallow.dtype)
        return m * shallow + (1 - m) * deep


class ResidualBlock(nn.Module):
    """conv3x3 - PReLU - conv3x3, plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """A chain of residual blocks with a long skip around it."""

    def __init__(self, channels: int, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(num_blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return x + self.blocks(x)


class AOSRNet(PriorConditioned, nn.Module):
    """AOSR-Net (Si et al., ICTAI 2023): Phi-estimation module plus the post-restoring module of Eq. 5.

    ``forward(x)`` returns the restored image J with the shape of ``x``; ``forward(x, return_phi=True)`` returns
    ``(J, Phi)``. Any height and width work: the input is reflect-padded to a multiple of 4 and the outputs are
    cropped back. In eval mode J is clipped to [0, 1]; in training it is left unclipped so that every pixel gets a
    gradient. With a prior, ``stats`` are its scene statistics (from :meth:`scene_statistics` of the whole scene).
    """

    correction_heads = ("conv4",)
    input_conv = "conv1.0"

    def __init__(self, cfg: AOSRNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AOSRNetConfig()
        c, w = cfg.in_channels, cfg.width
        self.prior = build_prior(cfg.prior, cfg.prior_options)
        # Four convolutions and two transposed convolutions, each followed by PReLU, as the paper describes. With a
        # prior the first one sees the degraded input and the prior's output of it.
        seen = c * (1 if self.prior is None else 2)
        self.conv1 = nn.Sequential(nn.Conv2d(seen, w, 7, padding=3, padding_mode="reflect"), nn.PReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.PReLU())
        self.conv3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.PReLU())
        self.latent = ResidualGroup(4 * w, cfg.num_res_blocks)
        self.mix1 = Mixup(cfg.mix_init[0])
        self.deconv1 = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1), nn.PReLU()
        )
        self.mix2 = Mixup(cfg.mix_init[1])
        self.deconv2 = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1), nn.PReLU()
        )
        if cfg.head == "phi":
            # Phi = (J - beta) / (I - alpha) is >= 0 for J <= 1 < alpha; PReLU lets the net learn that bias cheaply.
            self.conv4 = nn.Sequential(nn.Conv2d(w, c, 7, padding=3, padding_mode="reflect"), nn.PReLU())
        else:
            # Gain and offset maps; zero at the start, so the untrained network returns its input.
            self.conv4 = nn.Conv2d(w, (3 if cfg.input_gain else 2) * c, 7, padding=3, padding_mode="reflect")
            nn.init.zeros_(self.conv4.weight)
            nn.init.zeros_(self.conv4.bias)
        self.clean_gate = CleanGate(w, c) if cfg.clean_gate else None

    def estimate_phi(self, x: Tensor) -> Tensor:
        """Phi-estimation module on an input whose height and width are multiples of 4.

        With the affine head the result has 2C channels: the gain less one, then the offset.
        """
        return self.conv4(self._features(x))

    def _features(self, x: Tensor) -> Tensor:
        """The decoder's last features, from which the heads read their maps."""
        f1 = self.conv1(x)
        f2 = self.conv2(f1)
        f3 = self.conv3(f2)
        up1 = self.deconv1(self.mix1(f3, self.latent(f3)))
        return self.deconv2(self.mix2(f2, up1))

    def forward(
        self, x: Tensor, sar: Tensor | None = None, return_phi: bool = False, stats: dict[str, Tensor] | None = None,
        cores: Sequence[Sequence[int]] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Restore a sand-dust degraded batch.

        Args:
            x: (B, C, H, W) float image in [0, 1], C = ``cfg.in_channels``.
            sar: accepted for the common restorer interface and ignored (AOSR-Net is optical only).
            return_phi: also return the estimated Phi (needed by :class:`~rsrestore.losses.aosr.AOSRLoss`); with the
                affine head, the gain map.
            stats: the prior's scene statistics; estimated from x when absent.
            cores: with a prior, the pixels of each item the caller keeps, ``(y0, y1, x0, x1)`` (the tiled engine's
                tiles in their read boxes); the network then runs near them only (:meth:`correct_prior`).
        """
        del sar
        if x.ndim != 4:
            raise ValueError(f"AOSRNet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"AOSRNet was built for {self.cfg.in_channels} bands, got {x.shape[1]}")
        if not x.is_floating_point():
            raise ValueError(f"AOSRNet expects a float tensor in [0, 1], got {x.dtype}")
        if self.prior is None:
            j, phi = self._network(x, x)
        else:
            j, phi = self.correct_prior(x, self.prior_output(x, stats).to(x.dtype), cores, self._network)
        if not self.training:
            j = j.clamp(0.0, 1.0)
        return (j, phi) if return_phi else j

    def _network(self, x: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
        """(J, Phi) from the input x and the image the affine maps correct (x itself, or the prior's output)."""
        h, w = x.shape[-2:]
        seen = x if self.prior is None else torch.cat([x, base], dim=1)
        features = self._features(pad_to_multiple(seen, STRIDE)[0])
        maps = self.conv4(features)[..., :h, :w]
        if self.cfg.head == "phi":
            return restore_from_phi(x, maps, self.cfg.alpha, self.cfg.beta), maps
        # the per-pixel gain takes Phi's place as the map returned beside J
        j, gain = affine_output(base, maps, self.cfg.map_smoothing, x if self.cfg.input_gain else None)
        if self.clean_gate is not None:
            j = self.clean_gate(features[..., :h, :w], x, base, j)
        return j, gain
