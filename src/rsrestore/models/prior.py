"""A classical restorer as the starting point of a learned one: J = baseline(I) + a learned correction.

Our addition to the learned models, not their papers'. Trained on synthetic degradations, a network that rebuilds
the whole scene from the degraded input transfers badly to sources it never saw: it lifts only part of the haze or
dust there and its outputs come out soft (gradient energy 0.3-0.6 of the reference's, where the dark channel prior
keeps about 1.0). A classical restorer transfers in structure (its output is an affine map of the input, so it keeps
the detail) but not in colour. With ``prior`` set, a model computes the classical output b itself, sees it beside
the degraded input, and predicts only a correction of b; its output heads start at zero, so before training it *is*
the classical method, and training moves it only where the correction pays on the training sources.

The prior runs in float32 without gradients (it has no parameters) and takes the scene's statistics from the tiled
engine, like the classical method alone, so tiles agree. It widens the model's halo by its own.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..physics.sensor import gaussian_blur  # the sensor chain's blur: 3 sigma, reflected edges

__all__ = ["PRIORS", "build_prior", "PriorConditioned", "CleanGate", "scene_verdict"]

#: Classical restorers a learned model may start from: the task's baselines.
PRIORS = ("none", "dcp", "rop")
#: Context a network needs around a tile (the tiled engine's default for a model that declares no ``halo``).
NETWORK_HALO = 16
#: The clean gate's starting logit: a share sigmoid(6) = 0.9975 of the correction, so the model starts within 0.25 %
#: of the corrected prior's output.
GATE_START = 6.0
#: Bound of the gate's logits (GATE_LIMIT tanh(z / GATE_LIMIT)): shares from 3e-4 to 0.9997. Unbounded, a logit
#: pushed past ~17 rounds the share to exactly 1 in float32, its gradient to 0, and the gate never moves again.
GATE_LIMIT = 8.0
#: Width (pixels) of the Gaussian that smooths the gate's logits: the gate is a property of regions, not of pixels,
#: and a per-pixel share would print the features' texture into the output. 3 sigma stays inside NETWORK_HALO.
GATE_SMOOTHING = 4.0
#: Keys of the recogniser's verdict on the scene in a model's scene statistics (:func:`scene_verdict`): the log-odds
#: that it is degraded (the clean gate's scene evidence) and the severity of the prior's degradation (its strength).
EVIDENCE_KEY = "degraded_log_odds"
SEVERITY_KEY = "severity"
#: The degradation each prior restores, as the recogniser names it.
PRIOR_KIND = {"dcp": "haze", "rop": "dust"}
#: Bound of the scene evidence (log-odds): P(clean) from 0.0025 to 0.9975.
EVIDENCE_LIMIT = 6.0


def build_prior(name: str, options: dict[str, Any] | None = None) -> nn.Module | None:
    """The classical restorer called ``name``, with its default settings changed by ``options`` (fields of its
    config dataclass, e.g. ``{"max_stretch": 4.0}`` for rop), or None for ``"none"``."""
    if name not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {name!r}")
    options = dict(options or {})
    if name == "none":
        if options:
            raise ValueError(f"prior_options need a prior, got {options} with prior='none'")
        return None
    if name == "dcp":
        from ..classical.dcp import DarkChannelPrior, DCPConfig

        restorer, settings = DarkChannelPrior, DCPConfig
    else:
        from ..classical.rop import RankOnePrior, ROPConfig

        restorer, settings = RankOnePrior, ROPConfig
    known = {f.name for f in dataclasses.fields(settings)}
    if unknown := sorted(set(options) - known):
        raise ValueError(f"prior_options for {name!r} may set {sorted(known)}, got unknown {unknown}")
    return restorer(settings(**options))


class PriorConditioned:
    """Mixin for a model with an optional ``self.prior`` (set it in ``__init__``, from :func:`build_prior`).

    It gives the tiled engine what the prior needs (``halo``, ``min_size``, ``scene_statistics``) and the model its
    prior's output (:meth:`prior_output`), and adapts weights of the same model trained without a prior
    (:meth:`adapt_init_state`).
    """

    prior: nn.Module | None
    #: Weight names of the output heads: with a prior they start at zero, so the model starts as the prior.
    correction_heads: tuple[str, ...] = ()
    #: Weight name of the first convolution, which sees the degraded input and, with a prior, its output too.
    input_conv: str = ""

    @property
    def halo(self) -> int:
        return NETWORK_HALO + (int(self.prior.halo) if self.prior is not None else 0)

    @property
    def needs_scene_statistics(self) -> bool:
        return self.prior is not None

    @property
    def min_size(self) -> int:
        return int(getattr(self.prior, "min_size", 1)) if self.prior is not None else 1

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None, *, decimation: float = 1.0) -> dict[str, Tensor]:
        """The prior's scene-wide statistics (none without a prior), and the recogniser's verdict on the scene when
        the clean gate uses it."""
        if self.prior is None:
            return {}
        if "decimation" in _parameters(self.prior.scene_statistics):
            stats = self.prior.scene_statistics(x, mask=mask, decimation=decimation)
        else:
            stats = self.prior.scene_statistics(x, mask=mask)
        if self._uses_verdict:
            stats = {**stats, **scene_verdict(x, mask, PRIOR_KIND[self.cfg.prior])}
            if self._hands_back and bool(self._read_clean(stats[EVIDENCE_KEY]).all()):
                odds = self.cfg.clean_odds  # type: ignore[attr-defined]
                warnings.warn(f"the recogniser reads this scene clean at odds of {odds:g}:1 or better, so the model "
                              f"returns it unchanged (restore it anyway with --clean-odds 0, in Python "
                              f"model_options={{'clean_odds': 0}})", stacklevel=2)
        return stats

    @property
    def _uses_verdict(self) -> bool:
        gate = getattr(self, "clean_gate", None)
        gentle = getattr(self.cfg, "gate_fallback", "input") == "gentle_prior"  # type: ignore[attr-defined]
        return (gate is not None and (gate.evidence_weight is not None or gentle)) or self._hands_back

    @property
    def _hands_back(self) -> bool:
        """Whether scenes read clean come back as they are: at inference, with the config's ``clean_odds`` set."""
        return not self.training and getattr(self.cfg, "clean_odds", 0.0) > 0  # type: ignore[attr-defined]

    def _read_clean(self, evidence: Tensor) -> Tensor:
        """Which items the recogniser reads clean at odds of ``cfg.clean_odds`` to 1 or better: degraded log-odds
        (:func:`scene_verdict`'s evidence) at most -log(clean_odds)."""
        return evidence <= -math.log(self.cfg.clean_odds)  # type: ignore[attr-defined]

    def hand_back_clean(self, x: Tensor, verdict: dict[str, Tensor], restore: Callable[[], Tensor]) -> Tensor:
        """``restore()``, with each item the recogniser reads clean at odds of ``cfg.clean_odds`` to 1 or better
        (:meth:`_read_clean`) returned as it is. When every item is, the network and the prior do not run: a clean
        scene comes back bit for bit, at the cost of reading it."""
        if not self._hands_back:
            return restore()
        clean = self._read_clean(verdict[EVIDENCE_KEY].to(x.device))
        if bool(clean.all()):
            return x.clone()
        out = restore()
        return torch.where(clean.view(-1, 1, 1, 1), x.to(out.dtype), out)

    def verdict(self, x: Tensor, stats: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """The recogniser's verdict on the scene (:func:`scene_verdict`): the whole scene's, from ``stats``, so every
        tile gets the same; else each item's own (a training crop is its own scene). Empty when the gate uses none."""
        if not self._uses_verdict:
            return {}
        if stats and EVIDENCE_KEY in stats:
            return {k: stats[k] for k in (EVIDENCE_KEY, SEVERITY_KEY)}
        return scene_verdict(x, None, PRIOR_KIND[self.cfg.prior])  # type: ignore[attr-defined]

    def prior_output(self, x: Tensor, stats: dict[str, Tensor] | None, prior: nn.Module | None = None) -> Tensor:
        """The prior's restoration of x (or ``prior``'s, a variant of it), in float32, outside autocast and
        autograd."""
        assert self.prior is not None
        stats = {k: v for k, v in (stats or {}).items() if k not in (EVIDENCE_KEY, SEVERITY_KEY)}
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return (prior or self.prior)(x.float(), stats=stats or None)

    def gentle_prior_output(self, x: Tensor, stats: dict[str, Tensor] | None, severity: Tensor) -> Tensor:
        """The prior at the strength the scene's severity calls for (``--task auto``'s rule,
        :func:`rsrestore.recognise.auto_strength`: dcp's omega falls with the haze found, to the input itself for
        none), item by item; the input itself for a prior without a strength to set (rop)."""
        from ..recognise import auto_strength

        cfg = self.cfg  # type: ignore[attr-defined]
        out = []
        for i in range(x.shape[0]):
            options = auto_strength(cfg.prior, float(severity[min(i, severity.shape[0] - 1)]))
            if not options:
                out.append(x[i:i + 1].float())
                continue
            item_stats = {k: v[i:i + 1] if v.shape[0] == x.shape[0] else v for k, v in (stats or {}).items()}
            prior = _prior_at(cfg.prior, tuple(sorted({**cfg.prior_options, **options}.items())))
            out.append(self.prior_output(x[i:i + 1], item_stats, prior))
        return torch.cat(out)

    def network_window(self, size: tuple[int, int], cores: Sequence[Sequence[int]] | None) -> tuple[slice, slice]:
        """Rows and columns of a read box of ``size`` that the network must see for the outputs at ``cores``.

        ``cores`` (one ``(y0, y1, x0, x1)`` per batch item, in the box) are the pixels the tiled engine keeps. The
        prior needs its wide halo (dcp: 127 px) around them, the network only its own: the window is the cores'
        union widened by ``NETWORK_HALO`` and clipped to the box. It is the whole box without a prior or cores.
        """
        h, w = size
        if self.prior is None or not cores:
            return slice(0, h), slice(0, w)
        y0, y1 = min(c[0] for c in cores) - NETWORK_HALO, max(c[1] for c in cores) + NETWORK_HALO
        x0, x1 = min(c[2] for c in cores) - NETWORK_HALO, max(c[3] for c in cores) + NETWORK_HALO
        return slice(max(0, y0), min(h, y1)), slice(max(0, x0), min(w, x1))

    def correct_prior(self, x: Tensor, base: Tensor, cores: Sequence[Sequence[int]] | None,
                      network: Callable[..., Any], *images: Tensor) -> Any:
        """``network(x, base, *images)`` (an image, or a tuple whose first item is the image) on
        :meth:`network_window` only (``images``: further images of the read box the network needs, cut the same way).

        Outside the window the image is the prior's output and any further map is zero: the tiled engine never keeps
        those pixels. Without this the network would run on the prior's whole context, about 4x the pixels of a
        512-px tile with dcp's halo, for outputs that are thrown away.
        """
        rows, cols = self.network_window((x.shape[-2], x.shape[-1]), cores)
        if rows.stop - rows.start == x.shape[-2] and cols.stop - cols.start == x.shape[-1]:
            return network(x, base, *images)
        # A crop of a channels_last batch is a strided view; copied back to channels_last, the convolutions keep
        # their fast path (measured: without it the cropped network ran slower than the whole box).
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        inner = network(*(a[..., rows, cols].contiguous(memory_format=layout) for a in (x, base, *images)))
        parts = inner if isinstance(inner, tuple) else (inner,)
        whole = []
        for k, part in enumerate(parts):
            full = base.to(part.dtype) if k == 0 else part.new_zeros((*part.shape[:2], *x.shape[-2:]))
            full = full.clone()
            full[..., rows, cols] = part
            whole.append(full)
        return tuple(whole) if isinstance(inner, tuple) else whole[0]

    def adapt_init_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weights of the same model trained without a prior, made to fit this one: the output heads are left out
        (they stay at zero: the model starts as its prior), and the first convolution's kernel for the prior's
        channels starts at zero (the features start as they were). Weights trained with a prior (their first
        convolution already sees its output) load as they are, heads included."""
        key = f"{self.input_conv}.weight"
        own = self.state_dict()[key]  # type: ignore[attr-defined]
        if self.prior is None or key not in state or state[key].shape[1] * 2 != own.shape[1]:
            return state
        state = {k: v for k, v in state.items() if k.split(".")[0] not in self.correction_heads}
        state[key] = torch.cat([state[key], torch.zeros_like(state[key])], dim=1)
        return state


class CleanGate(nn.Module):
    """How much of its correction a prior model applies, pixel by pixel: J = I + s (J' - I), s in (0, 1).

    A classical prior changes a clean scene too (dcp: about 22 dB against the scene itself, rop: 16 dB), and a
    correction head that must undo it exactly (gain -1 on the prior's output, +1 on the input, everywhere) only gets
    near: weights that beat the baselines on hazy sources came out at 22-27 dB on clean ones. A sigmoid saturates, so
    "leave this alone" is easy to learn: clean training items push s towards 0 and the output towards the input
    itself. The share comes from the network's last features beside the input and the prior's output (their
    difference says how much the prior changes); it starts at ``sigmoid(GATE_START)`` everywhere.

    Scene evidence (``scene_evidence=True``): a faint veil over a bright scene looks, pixel by pixel, like a clean
    scene with its own veil (the darkest pixels of clean aerial crops sit at 0.08-0.27, those of thin haze over Rocky
    Mountain NP at 0.08-0.18), and a gate that sees only its neighbourhood hands such haze back. The recogniser
    looks at the whole picture and was trained on many sources: its log-odds that the picture is degraded
    (``EVIDENCE_KEY`` of :func:`scene_verdict`) enter every logit with a learned weight, which starts at zero (weights
    of a gate without it load as they are and start the same). Measured, it helps little: thin haze over Rocky
    Mountain NP gets P(clean) 0.11-0.62 from the recogniser too, the range of real clean crops.

    The fallback: where the gate hands the scene back, ``forward`` returns the input, or ``fallback`` (a model's
    ``gate_fallback: gentle_prior``: its prior at the strength ``--task auto`` would run it).

    Learned through the output alone, the gate dies: the degraded items' larger corrections push every share to 1
    before the gate tells clean from degraded, and saturated shares carry no gradient. So in training it keeps its
    last ``logits`` (``None`` in eval mode), and the ``clean_gate`` objective teaches them as a classifier: 0 on clean
    items, 1 on degraded ones (:func:`rsrestore.train.objectives.clean_gate`).
    """

    logits: Tensor | None = None

    def __init__(self, features: int, channels: int, scene_evidence: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(features + 2 * channels, features, 3, padding=1), nn.PReLU(),
                                  nn.Conv2d(features, 1, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.constant_(self.body[-1].bias, GATE_LIMIT * math.atanh(GATE_START / GATE_LIMIT))
        self.evidence_weight = nn.Parameter(torch.zeros(())) if scene_evidence else None

    def share(self, features: Tensor, x: Tensor, base: Tensor, evidence: Tensor | None = None) -> Tensor:
        """The share s of the correction, (B, 1, H, W) in float32. ``evidence``: the scene evidence, one value per
        item or one for the batch, when the gate uses it."""
        raw = self.body(torch.cat([features, x.to(features.dtype), base.to(features.dtype)], dim=1)).float()
        if self.evidence_weight is not None:
            if evidence is None:
                raise ValueError("this clean gate needs the scene evidence (scene_verdict)")
            raw = raw + self.evidence_weight * evidence.to(raw).reshape(-1, 1, 1, 1)
        # the blur of a channels_last map: kornia's depthwise conv wants it contiguous
        logits = gaussian_blur((GATE_LIMIT * torch.tanh(raw / GATE_LIMIT)).contiguous(), GATE_SMOOTHING)
        self.logits = logits if self.training else None
        return torch.sigmoid(logits)

    def forward(self, features: Tensor, x: Tensor, base: Tensor, restored: Tensor,
                evidence: Tensor | None = None, fallback: Tensor | None = None) -> Tensor:
        """``restored`` (the corrected prior's output) brought back towards the input ``x`` (or ``fallback``) where
        the gate says so."""
        s = self.share(features, x, base, evidence).to(restored.dtype)
        anchor = (x if fallback is None else fallback).to(restored.dtype)
        return anchor + s * (restored - anchor)


def scene_verdict(x: Tensor, mask: Tensor | None = None, kind: str = "haze") -> dict[str, Tensor]:
    """The recogniser's verdict on each picture of (B, C, H, W) ``x`` in [0, 1]: ``EVIDENCE_KEY``, the log-odds that
    it is degraded, log((1 - P(clean)) / P(clean)), clipped to +-EVIDENCE_LIMIT, and ``SEVERITY_KEY``, the severity
    of degradation ``kind`` it reads (0 when it reads the picture clean); each (B,) float32. The first three bands
    are read as R, G, B; a picture with fewer bands or too few valid pixels (``mask``: (B or 1, 1, H, W)) gets 0 for
    both: undecided, and nothing to restore."""
    from ..recognise import RecogniserError, recognise_array  # the recogniser's module imports the models' physics

    evidence = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    severity = torch.zeros_like(evidence)
    if x.shape[1] >= 3:
        rgb = x[:, :3].detach().float().cpu().numpy()
        valid = None if mask is None else mask.detach().bool().cpu().numpy()
        for i in range(x.shape[0]):
            m = None if valid is None else valid[min(i, valid.shape[0] - 1), 0]
            try:
                with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # the recogniser runs in float32
                    rec = recognise_array(rgb[i], m)
            except RecogniserError:
                continue
            p = min(max(rec.probabilities["clean"], 1e-6), 1 - 1e-6)
            evidence[i] = max(-EVIDENCE_LIMIT, min(EVIDENCE_LIMIT, math.log((1 - p) / p)))
            # as --task auto routes it: a scene read clean is left as it is, whatever severity it would have
            severity[i] = 0.0 if rec.label == "clean" else rec.severities[kind]
    return {EVIDENCE_KEY: evidence, SEVERITY_KEY: severity}


@functools.lru_cache(maxsize=16)
def _prior_at(name: str, options: tuple[tuple[str, Any], ...]) -> nn.Module:
    """The prior ``name`` with these settings, built once (a batch of tiles shares one strength)."""
    prior = build_prior(name, dict(options))
    assert prior is not None
    return prior


def _parameters(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)
