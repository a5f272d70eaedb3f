"""Training engine: strict configs, schedules against torch's schedulers, the sampler, losses, EMA, a tiny overfit run,
exported weights that the registry loads, the SAR/CARL path and every YAML under configs/."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from _train_data import base_config, make_pairs, write_yaml

from rsrestore.losses import build_loss, loss_params
from rsrestore.metrics.full_reference import ssim
from rsrestore.models import registry
from rsrestore.train import (
    EMA,
    ConfigError,
    EpochSampler,
    OptimConfig,
    ScheduleConfig,
    collate,
    config_to_dict,
    export_weights,
    learning_rate,
    load_config,
    main,
    parse_config,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

# Model modules of the project, for registering them here when the MODELS table does not list them yet.
KNOWN_MODELS = {
    "aosrnet": ("rsrestore.models.aosrnet", "AOSRNet", "AOSRNetConfig", "dust", False),
    "dsen2cr": ("rsrestore.models.dsen2cr", "DSen2CR", "DSen2CRConfig", "cloud", True),
    "sarcr": ("rsrestore.models.sarcr", "SARCloudRemoval", "SARCRConfig", "cloud", True),
    "rsdehamba": ("rsrestore.models.rsdehamba", "RSDehamba", "RSDehambaConfig", "haze", False),
}


def ensure_model(monkeypatch, name: str) -> bool:
    """Register `name` for this test if the table lacks it and its module exists; False when it cannot be built."""
    if name in registry.MODELS:
        try:
            registry.MODELS[name].classes()
        except ImportError:
            return False
        return True
    module_name, cls_name, cfg_name, task, sar = KNOWN_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return False
    classes = (getattr(module, cls_name), getattr(module, cfg_name))
    spec = registry.ModelSpec(name=name, task=task, summary="test", classes=lambda: classes, needs_sar=sar)
    monkeypatch.setitem(registry.MODELS, name, spec)
    return True


@pytest.fixture
def aosrnet(monkeypatch):
    assert ensure_model(monkeypatch, "aosrnet")


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


def test_config_types_are_coerced_and_defaults_filled(tmp_path, aosrnet):
    text = """
model: {name: aosrnet, config: {width: 4}}
data: {train: {kind: paired, root: somewhere}}
optim: {lr: 1e-3, betas: [0.5, 0.9], weight_decay: 0}
schedule: {name: cosine, min_lr: 1e-6}
run: {steps: 10}
"""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = load_config(path)
    # YAML 1.1 reads "1e-3" as a string; the loader reads it as the float it is meant to be.
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.min_lr == pytest.approx(1e-6)
    assert cfg.optim.betas == (0.5, 0.9)
    assert isinstance(cfg.optim.weight_decay, float)
    assert cfg.data.val is None and cfg.data.batch_size == 4
    assert cfg.run.epochs is None and cfg.run.steps == 10
    # The plain-dict form goes back through the parser unchanged.
    assert parse_config(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"optim": {"lrr": 0.1}}, ["optim.lrr", "lr", "betas"]),
        ({"run": {"steps": 5, "epoch": 3}}, ["run.epoch", "epochs"]),
        ({"bogus": 1}, ["'bogus'", "model", "data"]),
        ({"data": {"train": {"kind": "paired", "rot": "x"}}}, ["data.train.rot", "root"]),
        ({"run": {"steps": "ten"}}, ["run.steps", "int", "str"]),
        ({"run": {"steps": 2.5}}, ["run.steps", "int", "float"]),
        ({"run": {"steps": 3, "amp": 1}}, ["run.amp", "bool", "int"]),
        ({"optim": {"lr": "fast"}}, ["optim.lr", "float", "str"]),
        ({"optim": {"betas": [0.9]}}, ["optim.betas", "1 value"]),
        ({"data": {"train": "folder"}}, ["data.train", "mapping", "str"]),
        ({"optim": {"name": "sgd"}}, ["optim.name", "adamw"]),
        ({"schedule": {"name": "linear"}}, ["schedule.name", "cosine"]),
        ({"run": {"steps": None, "epochs": None}}, ["run.steps", "run.epochs"]),
        ({"loss": {"name": "l1", "params": {"weight": 2}}}, ["loss.params.weight"]),
        ({"loss": {"name": "perceptual"}}, ["loss.name", "carl"]),
        ({"model": {"name": "aosrnet", "config": {"widht": 4}}}, ["model.config.widht", "width"]),
        ({"model": {"name": "aosrnet", "config": {"width": "8"}}}, ["model.config.width", "int", "str"]),
        ({"model": {"name": "aosrnet", "config": {"mix_init": [1.0]}}}, ["model.config.mix_init"]),
        ({"model": {"name": "aosrnet", "config": {"alpha": 0.5}}}, ["model.config", "alpha"]),
        ({"model": {"name": "nope"}}, ["nope", "dcp"]),
        ({"model": {"name": "dcp"}}, ["model.name", "training-free"]),
        ({"run": {"steps": 3, "final_weights": "first"}}, ["run.final_weights", "'best'"]),
    ],
)
def test_config_errors_name_the_key(tmp_path, aosrnet, change, words):
    data = {"model": {"name": "aosrnet"}, "data": {"train": {"kind": "paired", "root": "x"}}, "run": {"steps": 3}}
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_missing_required_key(aosrnet):
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        parse_config({"model": {"name": "aosrnet"}, "run": {"steps": 1}})


def test_overrides(tmp_path, aosrnet):
    path = write_yaml(tmp_path / "c.yaml", base_config(tmp_path / "p", tmp_path / "o"))
    cfg = load_config(
        path,
        ["run.steps=7", "optim.lr=2e-4", "model.config.width=6", "data.val.kind=paired", "data.val.root=v",
         "run.grad_clip=null", "loss.params.lam=0.5", "loss.name=carl"],
    )
    assert cfg.run.steps == 7 and cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.model.config["width"] == 6
    assert cfg.data.val is not None and cfg.data.val.root == "v"
    assert cfg.loss.params == {"lam": 0.5}
    with pytest.raises(ConfigError, match="optim.lrate"):
        load_config(path, ["optim.lrate=1"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(path, ["run.steps"])
    with pytest.raises(ConfigError, match="'run.steps' is not a mapping"):
        load_config(path, ["run.steps.x=1"])


def test_every_shipped_config_validates(monkeypatch):
    from rsrestore.data import DATASETS, dataset_options

    assert {p.name for p in CONFIGS} >= {
        "aosrnet_sanddust.yaml", "rsdehamba_satehaze1k_thin.yaml", "rsdehamba_satehaze1k_moderate.yaml",
        "rsdehamba_satehaze1k_thick.yaml", "sarcr_sen12mscr.yaml", "dsen2cr_sen12mscr.yaml",
    }
    unchecked = []
    for path in CONFIGS:
        name = yaml.safe_load(path.read_text())["model"]["name"]
        buildable = ensure_model(monkeypatch, name)
        cfg = load_config(path, check_model=buildable)
        if not buildable:
            unchecked.append(name)
        for spec in (cfg.data.train, cfg.data.val):
            # Dataset kinds still being written are checked once they are registered.
            if spec is not None and spec.kind in DATASETS:
                extra = set(spec.options) - set(dataset_options(spec.kind))
                assert not extra, (path.name, extra)
    # Only a model whose module does not exist yet may skip the model-config check.
    assert set(unchecked) <= {"rsdehamba"}


# --------------------------------------------------------------------------------------------------------------------
# Schedules, sampler, collate, EMA, losses
# --------------------------------------------------------------------------------------------------------------------


def _torch_lrs(make_scheduler, n: int, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedules_match_torch():
    optim = OptimConfig(lr=0.1)
    n = 23
    cases = [
        (ScheduleConfig(name="cosine", min_lr=1e-3),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=n, eta_min=1e-3)),
        (ScheduleConfig(name="exponential", gamma=0.9), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
        (ScheduleConfig(name="step", gamma=0.5, step_size=4), lambda o: torch.optim.lr_scheduler.StepLR(o, 4, 0.5)),
        (ScheduleConfig(name="constant"), lambda o: torch.optim.lr_scheduler.ConstantLR(o, 1.0, total_iters=0)),
    ]
    for sched, reference in cases:
        ours = [learning_rate(optim, sched, s, 0, n, 1) for s in range(n)]
        np.testing.assert_allclose(ours, _torch_lrs(reference, n), rtol=1e-12, err_msg=sched.name)


def test_epoch_interval_warmup_and_floor():
    optim = OptimConfig(lr=1e-3)
    exp = ScheduleConfig(name="exponential", gamma=0.8, interval="epoch")
    # SAR-CR's schedule: x0.8 per epoch, constant within an epoch.
    assert learning_rate(optim, exp, 0, 0, 100, 10) == pytest.approx(1e-3)
    assert learning_rate(optim, exp, 57, 3, 100, 10) == pytest.approx(1e-3 * 0.8**3)
    cos = ScheduleConfig(name="cosine", min_lr=1e-6, warmup_steps=4)
    assert [learning_rate(optim, cos, s, 0, 104, 1) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert learning_rate(optim, cos, 4, 0, 104, 1) == pytest.approx(1e-3)
    assert learning_rate(optim, cos, 54, 0, 104, 1) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert learning_rate(optim, cos, 104, 0, 104, 1) == pytest.approx(1e-6)
    floor = ScheduleConfig(name="exponential", gamma=0.1, min_lr=1e-5)
    assert learning_rate(optim, floor, 10, 0, 100, 1) == pytest.approx(1e-5)


def test_sampler_ranks_partition_the_single_process_batches():
    n, b, w = 23, 3, 2
    single = list(EpochSampler(n, b * w, seed=5, epoch=2))
    ranks = [list(EpochSampler(n, b, seed=5, epoch=2, rank=r, world_size=w)) for r in range(w)]
    steps = n // (b * w)
    assert len(single) == steps * b * w and all(len(r) == steps * b for r in ranks)
    for i in range(steps):
        together = sorted(sum((r[i * b : (i + 1) * b] for r in ranks), []))
        assert together == sorted(single[i * b * w : (i + 1) * b * w])
    assert len(set(single)) == len(single)
    # Another epoch is another permutation; the same (seed, epoch) the same one.
    assert list(EpochSampler(n, b * w, seed=5, epoch=3)) != single
    assert list(EpochSampler(n, b * w, seed=5, epoch=2)) == single
    # Starting late yields the tail of the full epoch.
    late = EpochSampler(n, b * w, seed=5, epoch=2, start_batch=2)
    assert list(late) == single[2 * b * w :] and len(late) == len(single) - 2 * b * w
    with pytest.raises(ValueError):
        EpochSampler(n, b, start_batch=n // b + 1)


def test_collate_stacks_tensors_and_keeps_meta():
    items = [{"input": torch.zeros(3, 4, 4), "meta": {"name": str(i)}} for i in range(2)]
    batch = collate(items)
    assert batch["input"].shape == (2, 3, 4, 4) and [m["name"] for m in batch["meta"]] == ["0", "1"]
    with pytest.raises(ValueError, match="differ in 'input' shape"):
        collate([{"input": torch.zeros(3, 4, 4)}, {"input": torch.zeros(3, 5, 4)}])


def test_ema_matches_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = EMA(model, 0.9)
    values = []
    for k in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        values.append(model.weight.detach().clone())
        ema.update(model)
    expected = w0
    for v in values:
        expected = 0.9 * expected + 0.1 * v
    torch.testing.assert_close(ema.module.weight, expected, rtol=0, atol=1e-6)
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_losses():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    total, parts = build_loss("l1")(pred, {"target": target})
    assert float(total) == pytest.approx(float(F.l1_loss(pred, target))) and parts["l1"] == pytest.approx(float(total))
    # A tuple output (AOSR-Net's (J, Phi)) is reduced to its image.
    assert float(build_loss("l1")((pred, None), {"target": target})[0]) == pytest.approx(float(total))
    # The spectral term: zero for a spectrum scaled by a constant (same angle), positive for a reshaped one.
    spectral = build_loss("l1", spectral_weight=2.0)
    _, parts = spectral(0.5 * target, {"target": target})
    assert parts["spectral"] == pytest.approx(0.0, abs=1e-6) and parts["l1"] > 0
    reshaped = target.flip(1)
    total, parts = spectral(reshaped, {"target": target})
    angle = (1 - F.cosine_similarity(reshaped, target, dim=1)).mean()
    assert parts["spectral"] == pytest.approx(float(angle), rel=1e-5)
    assert float(total) == pytest.approx(float(F.l1_loss(reshaped, target) + 2.0 * angle), rel=1e-5)
    with pytest.raises(ValueError, match="spectral_weight"):
        build_loss("l1", spectral_weight=-1.0)
    # The gradient term: zero for a prediction off by a constant (same edges), charges faint detail.
    edges = build_loss("l1", gradient_weight=3.0)
    total, parts = edges(target + 0.1, {"target": target})
    assert parts["gradient"] == pytest.approx(0.0, abs=1e-6) and float(total) == pytest.approx(0.1, rel=1e-5)
    faint = 0.5 * target + 0.25
    total, parts = edges(faint, {"target": target})
    expected = (F.l1_loss(0.5 * target.diff(dim=-1), target.diff(dim=-1))
                + F.l1_loss(0.5 * target.diff(dim=-2), target.diff(dim=-2))) / 2
    assert parts["gradient"] == pytest.approx(float(expected), rel=1e-5) and parts["gradient"] > 0.05
    assert float(total) == pytest.approx(float(F.l1_loss(faint, target) + 3.0 * expected), rel=1e-5)
    with pytest.raises(ValueError, match="gradient_weight"):
        build_loss("l1", gradient_weight=-1.0)
    # The texture term: a texture moved by a pixel costs little, the same texture smoothed away costs much, where
    # the edge loss charges both alike.
    texture = build_loss("l1", texture_weight=1.0)
    stripes = torch.zeros(1, 2, 32, 32)
    stripes[..., ::4, :] = 1.0
    moved, smoothed = stripes.roll(1, dims=-2), torch.full_like(stripes, 0.25)
    moved_cost = texture(moved, {"target": stripes})[1]["texture"]
    smoothed_cost = texture(smoothed, {"target": stripes})[1]["texture"]
    assert smoothed_cost > 0.3 and moved_cost < 0.1 * smoothed_cost
    assert edges(moved, {"target": stripes})[1]["gradient"] >= edges(smoothed, {"target": stripes})[1]["gradient"]
    assert texture(stripes, {"target": stripes})[1]["texture"] == 0.0
    for bad, match in (({"texture_weight": -1.0}, "texture_weight"), ({"texture_window": 1}, "texture_window")):
        with pytest.raises(ValueError, match=match):
            build_loss("l1", **bad)
    # The SSIM term: 1 - SSIM as the metric computes it, zero for the target itself, with a gradient, and finite
    # under bf16 autocast (where the moments' cancellation would otherwise break it).
    similarity = build_loss("l1", ssim_weight=0.5)
    big_pred, big_target = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    assert similarity(big_target, {"target": big_target})[1]["ssim"] == pytest.approx(0.0, abs=1e-6)
    soft = (0.5 * big_target + 0.5 * big_pred).requires_grad_()
    total, parts = similarity(soft, {"target": big_target})
    expected_ssim = 1.0 - float(ssim(soft.detach(), big_target).mean())
    assert parts["ssim"] == pytest.approx(expected_ssim, rel=1e-5) and parts["ssim"] > 0.1
    assert float(total) == pytest.approx(float(F.l1_loss(soft, big_target)) + 0.5 * expected_ssim, rel=1e-5)
    total.backward()
    assert soft.grad is not None and float(soft.grad.abs().sum()) > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, parts_bf16 = similarity(soft.detach(), {"target": big_target})
    assert parts_bf16["ssim"] == pytest.approx(expected_ssim, rel=1e-4)
    with pytest.raises(ValueError, match="ssim_weight"):
        build_loss("l1", ssim_weight=-1.0)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("ssim")
    with pytest.raises(ValueError, match="accepted"):
        build_loss("carl", lamda=1.0)
    assert loss_params("carl") == ["lam", "threshold"]

    carl = build_loss("carl", lam=0.5)
    cloudy = torch.rand(2, 13, 16, 16)
    p, t = torch.rand(2, 13, 16, 16), torch.rand(2, 13, 16, 16)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    got, _ = carl(p, {"input": cloudy, "target": t, "mask": mask})
    expected = (mask * (p - t).abs() + (1 - mask) * (p - cloudy).abs()).mean() + 0.5 * (p - t).abs().mean()
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    from rsrestore.losses.carl import carl_loss, cloud_shadow_mask

    fallback, _ = carl(p, {"input": cloudy, "target": t})
    assert float(fallback) == pytest.approx(float(carl_loss(p, cloudy, t, cloud_shadow_mask(cloudy), 0.5)), rel=1e-6)
    with pytest.raises(ValueError, match="13 Sentinel-2 bands"):
        carl(pred, {"input": pred, "target": target})

    aosr = build_loss("aosr", lambda2=0.0)
    assert aosr.model_kwargs == {"return_phi": True}


# --------------------------------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------------------------------


def test_overfit_run_writes_outputs_and_exports(tmp_path, aosrnet):
    pairs = make_pairs(tmp_path / "pairs")
    out = tmp_path / "run"
    data = base_config(pairs, out, steps=96, log_every=1, val_every=48, ckpt_every=48, ema=0.8, grad_clip=5.0)
    data["model"]["config"]["width"] = 8
    data["data"]["val"] = {"kind": "paired", "root": str(pairs)}
    data["data"]["train"]["options"] = {"flip": True}
    data["schedule"] = {"name": "cosine", "min_lr": 1e-3}
    cfg = parse_config(data)
    torch.manual_seed(123)  # the run seeds itself; this must not matter
    result = train(cfg)
    assert result.finished and result.step == 96 and result.epoch == 23

    log = list(__import__("csv").DictReader(open(out / "log.csv")))
    steps = [int(r["step"]) for r in log]
    assert steps == list(range(1, 97))
    losses = [float(r["loss"]) for r in log]
    # Each step sees another batch, so the end is judged by a mean over the last epochs.
    assert np.mean(losses[-16:]) < 0.4 * losses[0], losses[::8]
    assert float(log[-1]["lr"]) == pytest.approx(1e-3 + (3e-3 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 95 / 96)))
    assert [int(r["step"]) for r in log if r["val_psnr"]] == [48, 96]
    assert all(float(r["grad_norm"]) >= 0 for r in log)

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000048", "step_0000096"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000096"
    assert {p.name for p in (out / "checkpoints" / "step_0000096").iterdir()} == {
        "model.safetensors", "ema.safetensors", "state.pt"}
    meta = json.loads((out / "final.json").read_text())
    assert meta["model"] == "aosrnet" and meta["steps"] == 96 and meta["ema"] is True
    assert meta["config"]["width"] == 8 and meta["train_data"]["train"]["samples"] == 8
    assert meta["sha256"] == registry.sha256_of(out / "final.safetensors")
    assert meta["val_scores"]["val_psnr"] == pytest.approx(result.val_scores["val_psnr"])
    assert meta["val_scores"]["val_psnr"] > float(log[47]["val_psnr"]) > 12.0
    # final = EMA weights, best = the EMA weights of the best validation so far.
    final = registry.read_state_dict(out / "final.safetensors")
    ema = registry.read_state_dict(out / "checkpoints" / "step_0000096" / "ema.safetensors")
    raw = registry.read_state_dict(out / "checkpoints" / "step_0000096" / "model.safetensors")
    assert all(torch.equal(final[k], ema[k]) for k in final)
    assert any(not torch.equal(final[k], raw[k]) for k in final)
    assert (out / "best.safetensors").exists()

    dest = export_weights(out, tmp_path / "weights", "aosrnet_tiny")
    exported = json.loads((tmp_path / "weights" / "aosrnet_tiny.json").read_text())
    assert exported["sha256"] == registry.sha256_of(dest) and exported["config"]["width"] == 8
    assert exported["bands"] == 3 and exported["steps"] == 96
    model = registry.load_model("aosrnet", weights=dest, config=exported["config"])
    x = torch.rand(1, 3, 19, 23)
    reference = registry.load_model("aosrnet", weights=out / "final.safetensors", config=meta["config"])
    torch.testing.assert_close(model(x), reference(x))

    # The same out_dir again without --resume would mix two runs.
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)


def test_sar_model_with_carl_loss(tmp_path, monkeypatch):
    """A model that needs SAR gets batch["sar"]; CARL falls back to the rule-based mask of the 13-band input."""
    from torch.utils.data import Dataset

    from rsrestore import data as data_module

    assert ensure_model(monkeypatch, "dsen2cr")

    class FakeSEN12(Dataset):
        def __init__(self, root, seed=0):
            g = torch.Generator().manual_seed(seed)
            self.items = [
                {"input": torch.rand(13, 24, 24, generator=g) * 0.5,
                 "target": torch.rand(13, 24, 24, generator=g) * 0.3,
                 "sar": torch.rand(2, 24, 24, generator=g), "meta": {"name": str(i)}}
                for i in range(4)
            ]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    monkeypatch.setitem(data_module.DATASETS, "fake_sen12", FakeSEN12)
    data = {
        "model": {"name": "dsen2cr", "config": {"features": 8, "blocks": 1}},
        "data": {"train": {"kind": "fake_sen12", "root": str(tmp_path)},
                 "val": {"kind": "fake_sen12", "root": str(tmp_path)}, "batch_size": 2},
        "loss": {"name": "carl"},
        "optim": {"lr": 1e-3},
        "run": {"out_dir": str(tmp_path / "run"), "steps": 3, "device": "cpu", "progress": False, "amp": True},
    }
    result = train(parse_config(data))
    assert result.finished and math.isfinite(result.val_scores["val_loss"])
    assert "loss_carl" in open(tmp_path / "run" / "log.csv").readline()

    # The same model on a dataset without SAR is refused by the model, with a message that says so.
    pairs = make_pairs(tmp_path / "pairs", n=2)
    data["model"]["config"]["optical_bands"] = 3
    data["data"] = {"train": {"kind": "paired", "root": str(pairs)}, "batch_size": 2}
    data["loss"] = {"name": "l1"}
    data["run"]["out_dir"] = str(tmp_path / "run2")
    with pytest.raises(ValueError, match="SAR"):
        train(parse_config(data))
    # Built without SAR bands, the same model trains on optical pairs alone.
    data["model"]["config"]["sar_bands"] = 0
    data["run"]["out_dir"] = str(tmp_path / "run3")
    assert train(parse_config(data)).finished


def test_final_weights_best_are_those_of_the_best_validation(tmp_path, aosrnet):
    """``run.final_weights: best`` (early stopping by a validation set): final.safetensors holds the weights that
    scored best, not the last ones. A learning rate far too high makes the run get worse after its first steps."""
    pairs = make_pairs(tmp_path / "pairs")
    out = tmp_path / "run"
    data = base_config(pairs, out, steps=8, log_every=1, val_every=1, ckpt_every=8)
    data["model"]["config"]["width"] = 8
    data["data"]["val"] = {"kind": "paired", "root": str(pairs)}
    data["optim"] = {"name": "adam", "lr": 0.5}
    data["run"]["final_weights"] = "best"
    train(parse_config(data))
    meta = json.loads((out / "final.json").read_text())
    assert meta["final_weights"] == "best" and meta["steps"] == 8
    assert meta["final_step"] == meta["best_step"] < 8
    final = registry.read_state_dict(out / "final.safetensors")
    best = registry.read_state_dict(out / "best.safetensors")
    last = registry.read_state_dict(out / "checkpoints" / "step_0000008" / "model.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert any(not torch.equal(final[k], last[k]) for k in final)


def test_dataset_smaller_than_a_batch_is_an_error(tmp_path, aosrnet):
    pairs = make_pairs(tmp_path / "pairs", n=3)
    data = base_config(pairs, tmp_path / "run")
    data["data"]["batch_size"] = 4
    with pytest.raises(ConfigError, match="do not fill one global batch"):
        train(parse_config(data))
    data["data"]["train"]["options"] = {"crop": 64}
    with pytest.raises(ConfigError, match="data.train"):
        train(parse_config(data))


def test_train_only_leaves_every_other_parameter_as_the_initial_weights_had_it(tmp_path, aosrnet):
    pairs = make_pairs(tmp_path / "pairs")
    data = base_config(pairs, tmp_path / "run", steps=3)
    data["model"]["config"].update(head="affine", prior="rop", clean_gate=True)
    start = registry.get_spec("aosrnet").classes()[0](registry.build_config(registry.get_spec("aosrnet"),
                                                                              data["model"]["config"]))
    with torch.no_grad():  # a correction that is not zero, so that training would move the heads too
        start.conv4.bias.fill_(0.05)
    save_file(start.state_dict(), str(tmp_path / "init.safetensors"))
    data["model"].update(init_weights=str(tmp_path / "init.safetensors"), train_only=["clean_gate"])
    train(parse_config(data))
    before = start.state_dict()
    after = registry.read_state_dict(tmp_path / "run" / "final.safetensors")  # no EMA: the trained weights
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("clean_gate.") for k in moved), sorted(moved)

    data["run"]["out_dir"] = str(tmp_path / "run2")
    data["model"]["train_only"] = ["gate"]
    with pytest.raises(ConfigError, match="no parameters under 'gate'.*clean_gate"):
        train(parse_config(data))


def test_module_entry_point(tmp_path, aosrnet, capsys):
    pairs = make_pairs(tmp_path / "pairs", n=4)
    path = write_yaml(tmp_path / "c.yaml", base_config(pairs, tmp_path / "run"))
    assert main([str(path), "--set", "run.steps=2", "--set", "run.ckpt_every=1"]) == 0
    assert "finished at step 2/2" in capsys.readouterr().err
    assert (tmp_path / "run" / "final.safetensors").exists()
    assert main([str(path), "--set", "run.stepz=2"]) == 2
    assert "run.stepz" in capsys.readouterr().err


def test_the_aosr_loss_refuses_the_affine_head(tmp_path, aosrnet):
    """Its Phi target is Eq. 5's; the affine head returns a gain map, which that target would train wrongly."""
    pairs = make_pairs(tmp_path / "pairs")
    data = base_config(pairs, tmp_path / "run")
    data["model"]["config"]["head"] = "affine"
    data["loss"] = {"name": "aosr", "params": {"lambda2": 0.0}}
    with pytest.raises(ValueError, match="needs model.config.head = 'phi', got 'affine'"):
        train(parse_config(data))
    data["loss"] = {"name": "l1"}
    assert train(parse_config(data)).finished
