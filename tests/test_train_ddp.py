"""DistributedDataParallel on the CPU: `python -m torch.distributed.run --nproc_per_node 2 -m rsrestore.train CFG`
(gloo) finishes, only rank 0 writes, and its weights equal a single process trained with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml
from PIL import Image

from rsrestore.models import registry
from rsrestore.train import parse_config, train

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pairs(root: Path, n: int = 8, size: int = 32) -> Path:
    rng = np.random.default_rng(3)
    for d in ("input", "target"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        clean = rng.uniform(0.1, 0.9, (size, size, 3))
        dusty = 0.6 * clean + 0.4 * np.array([0.8, 0.6, 0.4])
        Image.fromarray((clean * 255).astype(np.uint8)).save(root / "target" / f"{i}.png")
        Image.fromarray((dusty * 255).astype(np.uint8)).save(root / "input" / f"{i}.png")
    return root


def config(pairs: Path, out: Path, batch_size: int) -> dict:
    return {
        "model": {"name": "aosrnet", "config": {"width": 4, "num_res_blocks": 1}},
        "data": {
            "train": {"kind": "paired", "root": str(pairs), "options": {"flip": True}},
            "val": {"kind": "paired", "root": str(pairs)},
            "batch_size": batch_size,
        },
        "optim": {"name": "adam", "lr": 3e-3},
        "loss": {"name": "aosr", "params": {"lambda2": 0.0}},
        "run": {"out_dir": str(out), "steps": 6, "log_every": 1, "val_every": 3, "ckpt_every": 2, "ema": 0.9,
                "grad_clip": 1.0, "device": "cpu", "progress": False, "seed": 3},
    }


def test_two_process_cpu_training_matches_single_process(tmp_path):
    assert "aosrnet" in registry.MODELS, "the test trains the registered aosrnet"
    pairs = make_pairs(tmp_path / "pairs")
    out = tmp_path / "ddp"
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(config(pairs, out, batch_size=2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "rsrestore.train", str(cfg_path), "--set", "run.progress=false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One process reports the end: rank 0.
    assert proc.stderr.count("finished at step 6/6") == 1, proc.stderr[-2000:]

    # Rank 0 alone wrote: one log with one row per step, one checkpoint series, no leftovers of atomic writes.
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.safetensors", "checkpoints", "final.json", "final.safetensors", "log.csv"], names
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_0000002", "step_0000004", "step_0000006"], ckpts
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6
    meta = json.loads((out / "final.json").read_text())
    assert meta["world_size"] == 2 and meta["global_batch_size"] == 4 and meta["steps"] == 6

    # Gradient averaging over 2 x 2 samples equals one process over the same 4 samples (no batch-dependent layers).
    single = train(parse_config(config(pairs, tmp_path / "single", batch_size=4)))
    assert single.finished
    for name in ("final.safetensors", "checkpoints/step_0000006/model.safetensors"):
        a = registry.read_state_dict(out / name)
        b = registry.read_state_dict(tmp_path / "single" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=f"{name}: {k}")
    # The weights moved: the comparison is not between two untrained models.
    state = torch.load(out / "checkpoints" / "step_0000002" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["world_size"] == 2
    first = registry.read_state_dict(out / "checkpoints" / "step_0000002" / "model.safetensors")
    last = registry.read_state_dict(out / "checkpoints" / "step_0000006" / "model.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in first)
