"""The MODELS table: every method by name, with its task, bands, SAR need and bundled weights.

A plain dict, greppable from name to class: each entry's `classes` function imports its module only when the method is
used, so an unused model costs nothing at import time. Bundled weights live in `rsrestore/weights/<file>` with a JSON
file of metadata beside them (sha256, bands, value range, training data, steps, wall time, scores, and the model
config the weights were trained with, so the same architecture is rebuilt).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
TASKS = ("haze", "dust", "cloud")


class ModelError(Exception):
    """An unknown method, missing or mismatched weights, or a bad model option, explained in one line."""


def _dcp():
    from ..classical.dcp import DarkChannelPrior, DCPConfig

    return DarkChannelPrior, DCPConfig


def _rop():
    from ..classical.rop import RankOnePrior, ROPConfig

    return RankOnePrior, ROPConfig


def _aosrnet():
    from .aosrnet import AOSRNet, AOSRNetConfig

    return AOSRNet, AOSRNetConfig


def _rsdehamba():
    from .rsdehamba import RSDehamba, RSDehambaConfig

    return RSDehamba, RSDehambaConfig


def _sarcr():
    from .sarcr import SARCloudRemoval, SARCRConfig

    return SARCloudRemoval, SARCRConfig


def _dsen2cr():
    from .dsen2cr import DSen2CR, DSen2CRConfig

    return DSen2CR, DSen2CRConfig


def _dsrdmpd():
    from .dsrdmpd import DSRDMPD, DSRDMPDConfig

    return DSRDMPD, DSRDMPDConfig


def _aspdiff():
    from .aspdiff.restorer import ASPDiff, ASPDiffConfig

    return ASPDiff, ASPDiffConfig


def _apem():
    from .aspdiff.apem import APEMConfig
    from .aspdiff.apem_dehazer import APEMDehazer

    return APEMDehazer, APEMConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # haze | dust | cloud
    summary: str
    classes: Callable[[], tuple[type[nn.Module], type]]  # -> (module class, config dataclass)
    bands: tuple[int, ...] | None = None  # accepted input band counts; None = any (or as the config says)
    band_field: str | None = None  # config field fixing the band count of a built model (e.g. "in_channels")
    needs_sar: bool = False
    trainable: bool = True
    weights: str | None = None  # bundled weights file name in rsrestore/weights/
    paper: str = ""
    experimental: bool = False  # bundled weights exist but do not yet restore real scenes better than the baseline
    extra: dict = field(default_factory=dict)

    @property
    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        p = WEIGHTS_DIR / self.weights
        return p if p.exists() else None

    @property
    def usable_out_of_the_box(self) -> bool:
        return not self.trainable or self.weights_path is not None

    def weights_metadata(self) -> dict | None:
        p = self.weights_path
        if p is None:
            return None
        meta = p.with_suffix(".json")
        return json.loads(meta.read_text()) if meta.exists() else {}


MODELS: dict[str, ModelSpec] = {
    "dcp": ModelSpec(
        name="dcp",
        task="haze",
        summary="Dark channel prior dehazing with guided-filter refinement (training-free)",
        classes=_dcp,
        trainable=False,
        paper="He, Sun, Tang. Single Image Haze Removal Using Dark Channel Prior. TPAMI 2011",
    ),
    "rop": ModelSpec(
        name="rop",
        task="dust",
        summary="Rank-one prior scene recovery for sand-dust (training-free)",
        classes=_rop,
        trainable=False,
        paper="Liu, Liu, Sun, Zeng. Rank-One Prior: Toward Real-Time Scene Recovery. CVPR 2021 (TPAMI 2022)",
    ),
    "aosrnet": ModelSpec(
        name="aosrnet",
        task="dust",
        summary="AOSR-Net: estimates the integrated variable Phi, restores J = Phi (I - 1.6) + 1",
        classes=_aosrnet,
        band_field="in_channels",
        weights="aosrnet_dust_rgb.safetensors",
        experimental=True,  # beats rop on every held-out deciding set; no real dusty scene has judged it yet
        paper="Si et al. AOSR-Net: All-in-One Sandstorm Removal Network",
    ),
    "rsdehamba": ModelSpec(
        name="rsdehamba",
        task="haze",
        summary="RSDehamba: Vision-Mamba U-Net with a direction-aware 4-way selective scan",
        classes=_rsdehamba,
        band_field="in_channels",
        weights="rsdehamba_haze_rgb.safetensors",
        experimental=True,  # beats dcp on every held-out deciding set; no real hazy scene has judged it yet
        paper="Zhou, Wu, Chen, Chen, He. RSDehamba: Lightweight Vision Mamba for Remote Sensing Satellite Image "
        "Dehazing. arXiv:2405.10030, 2024",
    ),
    "sarcr": ModelSpec(
        name="sarcr",
        task="cloud",
        summary="SAR-guided cloud removal with attention fusion (optical + Sentinel-1 VV/VH)",
        classes=_sarcr,
        band_field="optical_bands",
        needs_sar=True,
        weights="sarcr_cloud_s2.safetensors",
        experimental=True,  # trained on synthetic clouds only; leaves real clouds (SEN12MS-CR) in place
        paper="SAR-guided cloud removal network based on attention fusion",
    ),
    "dsen2cr": ModelSpec(
        name="dsen2cr",
        task="cloud",
        summary="DSen2-CR: residual network on 13 optical + 2 SAR bands with a long skip (CARL loss)",
        classes=_dsen2cr,
        band_field="optical_bands",
        needs_sar=True,
        weights="dsen2cr_cloud_s2.safetensors",
        experimental=True,  # trained on synthetic clouds only; changes nothing visible on real clouds
        paper="Meraner, Ebel, Zhu, Schmitt. Cloud removal in Sentinel-2 imagery using a deep residual neural "
        "network and SAR-optical data fusion. ISPRS J. 2020",
    ),
    "dsrdmpd": ModelSpec(
        name="dsrdmpd",
        task="haze",
        summary="DS-RDMPD: a U-Net estimate refined by residual diffusion (5 seeded RDDM steps; config steps, seed)",
        classes=_dsrdmpd,
        band_field="in_channels",
        paper="Zhou, Wang, Zhang, Tao, Ren. A Dual-Stage Residual Diffusion Model with Perceptual Decoding for "
        "Remote Sensing Image Dehazing. IEEE TGRS 2025",
    ),
    "aspdiff": ModelSpec(
        name="aspdiff",
        task="haze",
        summary="ASPDiff: diffusion conditioned on refined atmospheric priors, then haze-aware refinement (seeded DDIM "
        "steps: 2 with the bundled weights; config steps, seed)",
        classes=_aspdiff,
        band_field="in_channels",
        weights="aspdiff_haze_rgb.safetensors",
        experimental=True,  # beats dcp on held-out synthetic haze; on a real Landsat-7 crop it tints clouds yellow
        paper="Zhang et al. Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image dehazing "
        "(ASPDiff). IEEE TGRS 2022",
    ),
    "apem": ModelSpec(
        name="apem",
        task="haze",
        summary="APEM: dark-channel priors (t, A) corrected by two light networks, inverted through the scattering "
        "model",
        classes=_apem,
        band_field="in_channels",
        weights="apem_haze_rgb.safetensors",
        experimental=True,  # beats dcp on held-out synthetic haze (two unseen sources); on real scenes it is
        # gentler than dcp, and it has not been judged on real hazy scenes yet
        paper="Zhang et al. Atmospheric Scattering Prior embedded Diffusion Model for remote sensing image dehazing "
        "(ASPDiff, its APEM module). IEEE TGRS 2022",
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown method {name!r}; available: {', '.join(sorted(MODELS))}") from None


# The default method of each task. A learned method takes its task's place here only when its bundled weights beat the
# task's classical baseline on scenes from a source they never trained on (PSNR, SSIM and CIEDE2000) AND look better
# on real degraded scenes; scores on synthetic scenes of the training sources flatter a model and do not count.
# No learned method passes yet (apem wins the held-out sets but has not been judged on real hazy scenes), and no
# bundled cloud model restores real clouds, so cloud has no default.
DEFAULT_METHODS: dict[str, str | None] = {"haze": "dcp", "dust": "rop", "cloud": None}


def default_method(task: str) -> str:
    """The method a task uses when none is named (see DEFAULT_METHODS for the rule)."""
    if task not in TASKS:
        raise ModelError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    name = DEFAULT_METHODS[task]
    if name is None:
        tries = ", ".join(s.name for s in MODELS.values() if s.task == task)
        raise ModelError(
            f"no bundled {task} model restores real {task} scenes yet, so --task {task} has no default; "
            f"the experimental ones ({tries}) can be tried with --method NAME"
        )
    return name


def build_config(spec: ModelSpec, config: dict | Any | None = None, **overrides):
    """The model's config dataclass from a dict (unknown keys are an error naming the key) or an instance."""
    _, config_cls = spec.classes()
    if config is None or isinstance(config, dict):
        values = dict(config or {})
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ModelError(f"{spec.name}: unknown config key(s) {unknown}; known: {sorted(names)}")
        _check_config_types(spec.name, config_cls, values)
        for k, v in values.items():
            if isinstance(v, list):
                values[k] = tuple(v)
        return config_cls(**values)
    if overrides:
        return dataclasses.replace(config, **overrides)
    return config


def _check_config_types(name: str, config_cls: type, values: dict) -> None:
    """Each value has the type of its field's default (an int where the default is an int, ...): a config read from
    JSON or YAML can hold a string where a number belongs, which would otherwise fail deep inside the model."""
    for f in dataclasses.fields(config_cls):
        if f.name not in values:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        v = values[f.name]
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif isinstance(default, str):
            ok = isinstance(v, str)
        elif isinstance(default, (tuple, list)):
            ok = isinstance(v, (tuple, list))
        elif isinstance(default, dict):
            ok = isinstance(v, dict)
        else:
            ok = True  # None or another object: no type to compare with
        if not ok:
            raise ModelError(f"{name}: config key {f.name!r} must be {type(default).__name__} like {default!r}, "
                             f"got {v!r}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors (preferred) or a PyTorch file loaded without executing pickled code.

    `module.` prefixes left by DistributedDataParallel are removed.
    """
    p = _existing_weights(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights_shapes(p)  # a damaged or renamed file is explained before anything is read
        state = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" not in str(e):  # not a refused object: a damaged file
                raise ModelError(f"cannot load weights {p}: {str(e).splitlines()[0][:200]}") from None
            raise ModelError(
                f"{p} holds pickled Python objects besides tensors, which are not loaded because unpickling them can "
                f"run code; convert the checkpoint's state_dict to safetensors where you trust it "
                f"(safetensors.torch.save_file(state_dict, 'weights.safetensors')) and pass that file"
            ) from None
        except Exception as e:  # a damaged file
            raise ModelError(f"cannot load weights {p}: {str(e).splitlines()[0][:200]}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{p} does not hold a state dict")
    return {_unwrapped(k): v for k, v in state.items()}


def _existing_weights(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}" if not p.exists() else f"weights {p} is a folder, not a file")
    return p


def _unwrapped(key: str) -> str:
    """A state-dict key without the ``module.`` prefix DistributedDataParallel adds."""
    return key[len("module.") :] if key.startswith("module.") else key


def weights_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file, read from its header alone (no tensor is loaded).

    A file that is not safetensors (a PyTorch checkpoint renamed ``.safetensors``) or is truncated is a ModelError.
    """
    from safetensors import SafetensorError, safe_open

    p = _existing_weights(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return {_unwrapped(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # a zip archive or a pickle: torch.save's formats
            raise ModelError(
                f"{p} is not a safetensors file but a PyTorch checkpoint (torch.save); give it the .pth extension, "
                f"which loads its tensors without running pickled code"
            ) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{p} is not a valid safetensors file, damaged or truncated ({reason}); copy it again") from None


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sidecar(path: str | Path, name: str | None = None) -> dict | None:
    """The metadata JSON beside a weights file (``W.safetensors`` -> ``W.json``) when it records a model ``config``.

    This is what the trainer writes next to its ``final.safetensors`` and what bundled weights carry, so weights
    trained with a non-default config load without restating it. A sidecar without a ``config`` mapping is ignored;
    one that is unreadable, records another method, or records a sha256 the weights do not have is a ModelError.
    """
    p = Path(path)
    meta_path = p.with_suffix(".json")
    if meta_path == p or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the weights metadata {meta_path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        return None
    recorded = meta.get("method", meta.get("model"))
    if name is not None and isinstance(recorded, str) and recorded in MODELS and recorded != name:
        raise ModelError(f"{meta_path.name} says {p.name} holds {recorded} weights, not {name}")
    if meta.get("sha256") and p.exists() and meta["sha256"] != sha256_of(p):
        raise ModelError(
            f"{p.name} does not match the sha256 recorded in {meta_path.name}; the metadata belongs to other weights"
        )
    return meta


def load_model(
    name: str,
    weights: str | Path | None = "default",
    config: dict | Any | None = None,
    device: str | torch.device = "cpu",
    **overrides,
) -> nn.Module:
    """Build a method by name, in eval mode, with weights: "default" (bundled, if any), a path, or None (untrained).

    Bundled weights carry the config they were trained with; it is used unless `config` is given. So do weights
    given by path when a metadata JSON with a ``config`` sits beside them (see :func:`weights_sidecar`).

    Nothing is allocated before the config is known to fit: the weights' shapes (from a safetensors header) are
    compared with those of the model built on PyTorch's meta device, and a model whose parameters alone exceed the
    available memory is refused.
    """
    spec = get_spec(name)
    device = resolve_device(device)
    if not spec.trainable and weights not in (None, "default"):
        raise ModelError(f"{name} is training-free and takes no weights; drop --weights {weights}")
    path, origin = None, ""
    if spec.trainable and weights is not None:
        if weights == "default":
            path = spec.weights_path
            if path is None:
                raise ModelError(
                    f"{name} has no bundled weights; pass weights=PATH (--weights PATH) or weights=None for an "
                    f"untrained model"
                )
            meta = spec.weights_metadata() or {}
            if meta.get("sha256") and meta["sha256"] != sha256_of(path):
                raise ModelError(f"bundled weights {path.name} do not match their recorded sha256; reinstall")
            if config is None:
                config = meta.get("config")
        else:
            path = _existing_weights(weights)
            if config is None:
                meta = weights_sidecar(path, name)
                if meta is not None:
                    config, origin = meta["config"], f" (config from {path.with_suffix('.json')})"
    try:
        cfg = build_config(spec, config, **overrides)
        expected = _meta_shapes(spec, cfg)
        state = None
        if path is not None:
            if path.suffix == ".safetensors":
                _check_fit(name, weights_shapes(path), expected)
                state = read_state_dict(path)
            else:
                state = read_state_dict(path)
                _check_fit(name, {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}, expected)
        _check_memory(name, expected)
    except ModelError as e:
        raise ModelError(f"{e}{origin}") from None
    model_cls, _ = spec.classes()
    model = model_cls(cfg)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device).eval()


def _meta_shapes(spec: ModelSpec, cfg) -> dict[str, torch.Size] | None:
    """The state-dict shapes of the model `cfg` describes, from a build on the meta device (no memory used).

    None when the model cannot be built there (it computes values while being built); a config the model refuses
    is a ModelError.
    """
    model_cls, _ = spec.classes()
    try:
        with torch.device("meta"):
            model = model_cls(cfg)
    except NotImplementedError:
        return None
    except (TypeError, ValueError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        if "meta" in str(e):
            return None
        raise ModelError(f"{spec.name}: cannot build the model with this config ({str(e).strip()[:200]})") from None
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_fit(name: str, stored: dict[str, tuple[int, ...]], expected: dict[str, torch.Size] | None) -> None:
    if expected is None:
        return
    wrong = [k for k in stored if k in expected and tuple(stored[k]) != tuple(expected[k])]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"weights do not fit {name} with this config: {len(wrong)} tensor(s) of another shape, e.g. {k} "
            f"{tuple(stored[k])} vs {tuple(expected[k])}; pass the config the weights were trained with"
        )
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if missing or unexpected:
        raise ModelError(
            f"weights do not fit {name} with this config: {len(missing)} missing key(s) "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def _check_memory(name: str, expected: dict[str, torch.Size] | None) -> None:
    """Refuse a config whose float32 parameters alone exceed the memory available now (an absurd width, say)."""
    import psutil

    from ..errors import format_bytes

    if expected is None:
        return
    needed = 4 * sum(math.prod(shape) for shape in expected.values())
    available = psutil.virtual_memory().available
    if needed > available:
        raise ModelError(
            f"not enough memory for {name} with this config: its parameters alone take {format_bytes(needed)}, "
            f"{format_bytes(available)} available; check the config's sizes"
        )


def resolve_device(name: str | torch.device) -> str:
    """A device name checked now: "auto" is CUDA when available, else the CPU; a GPU that is not there is a
    ModelError at once rather than an error deep inside the first forward pass."""
    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ModelError(f"device {name!r} asked for, but CUDA is not available ({why}); use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ModelError(f"device {name!r} asked for, but this machine has {count} CUDA device(s) (cuda:0 to "
                             f"cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {name!r} asked for, but Apple's MPS is not available; use cpu")
    return name


def accepted_bands(spec: ModelSpec, model: nn.Module | None = None) -> tuple[int, ...] | None:
    """Band counts a built model takes: fixed by the spec, or by its config (e.g. in_channels), or any (None)."""
    if spec.bands:
        return spec.bands
    if spec.band_field and model is not None and hasattr(model, "cfg"):
        return (int(getattr(model.cfg, spec.band_field)),)
    return None


def describe_models() -> list[dict]:
    """One JSON-ready dict per method (what `rsrestore models --json` prints)."""
    rows = []
    for spec in MODELS.values():
        path = spec.weights_path
        meta = spec.weights_metadata() if path else None
        rows.append(
            {
                "name": spec.name,
                "task": spec.task,
                "summary": spec.summary,
                "bands": _band_summary(spec, meta),
                "needs_sar": spec.needs_sar,
                "trainable": spec.trainable,
                "weights": (
                    "not needed"
                    if not spec.trainable
                    else (str(path.name) if path else "none bundled (pass --weights)")
                ),
                "weights_metadata": meta,
                "default_for_task": _is_default(spec),
                "experimental": spec.experimental,
                "held_out": held_out_scores(meta),
                "held_out_losses": held_out_losses(meta),
                "paper": spec.paper,
            }
        )
    return rows


HELD_OUT_METRICS = ("psnr", "ssim", "ciede2000")


def held_out_scores(meta: dict | None) -> list[dict]:
    """The held-out scores recorded with bundled weights, each test set beside its baseline (classical or input).

    Two layouts exist in the metadata: `scores` / `baseline_scores` per test set (haze and dust weights) and
    `held_out` with `scores` / `cloudy_input_scores` (cloud weights).
    """
    if not meta:
        return []
    rows = []
    pick = lambda d: {k: d[k] for k in HELD_OUT_METRICS if k in d}  # noqa: E731
    if isinstance(meta.get("baseline_scores"), dict):
        deciding = (meta.get("heldout_decision") or {}).get("deciding_sets")  # None: every set decided
        for test_set, ours in meta.get("scores", {}).items():
            baselines = meta["baseline_scores"].get(test_set, {})
            name = next((b for b in baselines if b != "input"), "input")
            if name in baselines:
                rows.append({"test_set": test_set, "n": ours.get("n"), "scores": pick(ours), "baseline": name,
                             "baseline_scores": pick(baselines[name]),
                             "deciding": deciding is None or test_set in deciding})
    elif isinstance(meta.get("held_out"), dict):
        h = meta["held_out"]
        rows.append({"test_set": h.get("data", "held out"), "n": h.get("n"), "scores": pick(h.get("scores", {})),
                     "baseline": "input", "baseline_scores": pick(h.get("cloudy_input_scores", {}))})
    return rows


def held_out_losses(meta: dict | None) -> list[str]:
    """The deciding scores on which bundled weights lose to their baseline ('sam on real_sar'), from the verdict
    recorded in their metadata; empty when they won everywhere (or recorded no per-metric verdict). Weights are
    exported with such losses only by hand (``--force-export``), so the listing says so."""
    decision = (meta or {}).get("heldout_decision") or {}
    per_set = decision.get(f"vs_{decision.get('baseline')}") or {}  # vs_dcp, vs_rop, vs_input, ...
    return [f"{metric} on {test_set}" for test_set, won in per_set.items() if isinstance(won, dict)
            for metric, ok in won.items() if ok is False]


def format_held_out(rows: list[dict]) -> str:
    """'neon 20.04/0.760/13.11 vs rop 18.31/0.854/13.93' (PSNR/SSIM/CIEDE2000) per test set, '; '-joined."""

    def fmt(d: dict) -> str:
        return "/".join(f"{d[k]:.3f}" if k == "ssim" else f"{d[k]:.2f}" for k in HELD_OUT_METRICS if k in d)

    return "; ".join(
        f"{r['test_set'].split(' ')[0]}{'' if r.get('deciding', True) else ' (not deciding)'} {fmt(r['scores'])} vs "
        f"{r['baseline']} {fmt(r['baseline_scores'])}" for r in rows
    )


def _band_summary(spec: ModelSpec, meta: dict | None) -> list[int] | str:
    """Accepted band counts: fixed, or the config's (the bundled weights' config, else the default config)."""
    if spec.bands:
        return list(spec.bands)
    if spec.band_field:
        cfg = build_config(spec, (meta or {}).get("config"))
        return [int(getattr(cfg, spec.band_field))]
    return "any"


def _is_default(spec: ModelSpec) -> bool:
    try:
        return default_method(spec.task) == spec.name
    except ModelError:
        return False
