"""Exact resumption: a run stopped after a checkpoint at step k and resumed reaches the same weights at step n as a
run that was never interrupted (mid-epoch, with EMA, dropout, augmentation and a schedule that depends on the run
length)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rsrestore.models import registry
from rsrestore.train import parse_config, train


@dataclass
class DropNetConfig:
    in_channels: int = 3
    width: int = 6
    p: float = 0.3


class DropNet(nn.Module):
    """A residual conv net with dropout: its training draws from the global RNG, which a resume must restore."""

    def __init__(self, cfg: DropNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DropNetConfig()
        self.body = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1), nn.ReLU(), nn.Dropout2d(cfg.p),
            nn.Conv2d(cfg.width, cfg.in_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, sar: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.body(x)


@pytest.fixture
def models(monkeypatch):
    monkeypatch.setitem(
        registry.MODELS,
        "dropnet",
        registry.ModelSpec(name="dropnet", task="haze", summary="test", classes=lambda: (DropNet, DropNetConfig)),
    )
    if "aosrnet" not in registry.MODELS:
        from rsrestore.models.aosrnet import AOSRNet, AOSRNetConfig

        spec = registry.ModelSpec(name="aosrnet", task="dust", summary="t", classes=lambda: (AOSRNet, AOSRNetConfig))
        monkeypatch.setitem(registry.MODELS, "aosrnet", spec)


@pytest.fixture
def pairs(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "pairs"
    for d in ("input", "target"):
        (root / d).mkdir(parents=True)
    for i in range(10):
        clean = rng.uniform(0.1, 0.9, (40, 40, 3))
        hazy = 0.6 * clean + 0.35
        Image.fromarray((clean * 255).astype(np.uint8)).save(root / "target" / f"{i}.png")
        Image.fromarray((hazy * 255).astype(np.uint8)).save(root / "input" / f"{i}.png")
    return root


def config(pairs: Path, out: Path, model: str, steps: int, **extra) -> dict:
    data = {
        "model": {"name": model, "config": {"width": 4} if model == "aosrnet" else {}},
        # 10 samples, batch 3: 3 steps per epoch and one sample left over, so epochs and drop_last both matter.
        "data": {"train": {"kind": "paired", "root": str(pairs), "options": {"crop": 24, "flip": True}},
                 "val": {"kind": "paired", "root": str(pairs)}, "batch_size": 3},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01},
        "run": {"out_dir": str(out), "steps": steps, "log_every": 1, "val_every": 4, "ckpt_every": 0,
                "device": "cpu", "progress": False, "seed": 7},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return data


def weights(path: Path) -> dict[str, torch.Tensor]:
    return registry.read_state_dict(path)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def test_resume_with_longer_run_is_exact(tmp_path, pairs, models):
    """The issue's recipe: train k steps (the run ends with a checkpoint at k), then resume with steps = n."""
    n, k = 10, 4  # k = 4 stops one batch into the second epoch
    kwargs = dict(loss__name="aosr", loss__params={"lambda2": 0.0}, run__ema=0.9, run__grad_clip=0.5)
    kwargs["schedule__name"], kwargs["schedule__gamma"], kwargs["schedule__interval"] = "exponential", 0.7, "epoch"
    full = train(parse_config(config(pairs, tmp_path / "full", "aosrnet", n, **kwargs)))
    part = train(parse_config(config(pairs, tmp_path / "part", "aosrnet", k, **kwargs)))
    assert part.finished and part.step == k
    resumed = train(parse_config(config(pairs, tmp_path / "part", "aosrnet", n, **kwargs)), resume=True)
    assert full.finished and resumed.finished and resumed.step == n and resumed.epoch == full.epoch == 3
    assert_same(weights(tmp_path / "full" / "final.safetensors"), weights(tmp_path / "part" / "final.safetensors"))
    last = f"step_{n:07d}"
    assert_same(
        weights(tmp_path / "full" / "checkpoints" / last / "model.safetensors"),
        weights(tmp_path / "part" / "checkpoints" / last / "model.safetensors"),
    )
    a = torch.load(tmp_path / "full" / "checkpoints" / last / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoints" / last / "state.pt", weights_only=True)
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert ka == kb and all(torch.equal(torch.as_tensor(va[s]), torch.as_tensor(vb[s])) for s in va)
    assert resumed.val_scores == full.val_scores


def test_interrupted_run_resumes_exactly_with_dropout_and_cosine(tmp_path, pairs, models):
    """A run stopped mid-epoch (as a preempted job would) and resumed equals the uninterrupted run, although its
    schedule depends on the total length and its dropout draws from the global RNG; the log has no duplicate rows."""
    n, k = 11, 5
    kwargs = dict(run__ema=0.95, run__ckpt_every=2, schedule__name="cosine", schedule__min_lr=1e-4,
                  schedule__warmup_steps=2)
    cfg = parse_config(config(pairs, tmp_path / "full", "dropnet", n, **kwargs))
    train(cfg)
    interrupted = parse_config(config(pairs, tmp_path / "part", "dropnet", n, **kwargs))
    first = train(interrupted, stop_after=k)
    assert not first.finished and first.step == k and first.final_weights is None
    assert not (tmp_path / "part" / "final.safetensors").exists()
    assert (tmp_path / "part" / "checkpoints" / "latest").read_text().strip() == f"step_{k:07d}"
    # A crash after the checkpoint at k leaves log rows past it; the resumed run replaces them.
    with open(tmp_path / "part" / "log.csv", "a") as f:
        f.write(f"{k + 1},9,0.1,9.9\n")
    second = train(interrupted, resume=True)
    assert second.finished and second.step == n
    assert_same(weights(tmp_path / "full" / "final.safetensors"), weights(tmp_path / "part" / "final.safetensors"))
    full_model = weights(tmp_path / "full" / "checkpoints" / f"step_{n:07d}" / "model.safetensors")
    assert_same(full_model, weights(tmp_path / "part" / "checkpoints" / f"step_{n:07d}" / "model.safetensors"))

    rows_full = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    rows_part = list(csv.DictReader(open(tmp_path / "part" / "log.csv")))
    assert [int(r["step"]) for r in rows_part] == list(range(1, n + 1))
    for a, b in zip(rows_full, rows_part):
        assert (a["step"], a["epoch"], a["lr"], a["loss"]) == (b["step"], b["epoch"], b["lr"], b["loss"])
        assert a.get("val_psnr", "") == b.get("val_psnr", "")

    # Resuming a finished run changes nothing.
    again = train(interrupted, resume=True)
    assert again.finished and again.step == n
    assert_same(full_model, weights(tmp_path / "part" / "checkpoints" / f"step_{n:07d}" / "model.safetensors"))


def test_resume_without_checkpoint_starts_fresh_and_keep_last(tmp_path, pairs, models):
    cfg = parse_config(config(pairs, tmp_path / "run", "dropnet", 6, run__ckpt_every=1, run__keep_checkpoints=2))
    result = train(cfg, resume=True)
    assert result.finished and result.step == 6
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert kept == ["step_0000005", "step_0000006"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "run" / "checkpoints").iterdir())
