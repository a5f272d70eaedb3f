"""DS-RDMPD trains in two stages through `rsrestore train`: stage 1 alone, then stage 2 started from stage 1's final
weights (`model.init_weights`) with stage 1 frozen; losses fall, a stopped stage-2 run resumes exactly (without
needing the init weights again), and weights that do not fit are refused in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from _one_line_errors import user_error
from _train_data import make_pairs, write_yaml

from rsrestore.cli import app
from rsrestore.train import train_from_config

runner = CliRunner()
TINY = {"stage1_dim": 8, "stage2_dim": 8, "stage2_dim_mults": [1, 2], "stage2_dim_head": 8}


def stage_config(pairs: Path, out: Path, stage: int, **model) -> dict:
    """A config of the shape of configs/dsrdmpd_haze_cpu_stage*.yaml, sized to train in seconds."""
    objective = {"name": "dsrdmpd_stage1"} if stage == 1 else {"name": "dsrdmpd_stage2", "params": {"val_steps": 2}}
    optim = {"name": "adam", "lr": 2e-3, "betas": [0.5, 0.999]} if stage == 1 else {"name": "adam", "lr": 2e-3}
    return {
        "model": {"name": "dsrdmpd", "config": TINY, **model},
        "data": {"train": {"kind": "paired", "root": str(pairs)}, "val": {"kind": "paired", "root": str(pairs)},
                 "batch_size": 4},
        "objective": objective,
        "optim": optim,
        "run": {"out_dir": str(out), "steps": 14, "log_every": 1, "val_every": 0, "ckpt_every": 0,
                "max_val_images": 2, "seed": 0, "device": "cpu", "progress": False},
    }


def losses(run: Path) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


def falls(values: list[float], factor: float) -> bool:
    first, last = sum(values[:4]) / 4, sum(values[-4:]) / 4
    return last < factor * first


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsrdmpd")
    pairs = make_pairs(root / "pairs", n=8, size=32)
    cfg = write_yaml(root / "stage1.yaml", stage_config(pairs, root / "stage1", 1))
    result = runner.invoke(app, ["train", str(cfg)])
    assert result.exit_code == 0, result.output
    return root, pairs


def test_stage1_trains_and_stage2_starts_from_its_final_weights(stage1_run):
    root, pairs = stage1_run
    stage1 = root / "stage1"
    assert falls(losses(stage1), 0.6), losses(stage1)
    meta1 = json.loads((stage1 / "final.json").read_text())
    assert 0 < meta1["val_scores"]["val_psnr"] < 100 and meta1["init_weights"] is None

    init = stage1 / "final.safetensors"
    cfg = write_yaml(root / "stage2.yaml", stage_config(pairs, root / "stage2", 2, init_weights=str(init)))
    result = runner.invoke(app, ["train", str(cfg)])
    assert result.exit_code == 0, result.output
    assert falls(losses(root / "stage2"), 0.7), losses(root / "stage2")

    before, after = load_file(init), load_file(root / "stage2" / "final.safetensors")
    stage1_keys = [k for k in before if k.startswith("stage1.")]
    stage2_keys = [k for k in before if k.startswith("stage2.") and before[k].is_floating_point()]
    # stage 1 came from the file and stayed frozen (BatchNorm statistics included); stage 2 trained
    assert stage1_keys and all(torch.equal(before[k], after[k]) for k in stage1_keys)
    assert any(not torch.equal(before[k], after[k]) for k in stage2_keys)
    meta2 = json.loads((root / "stage2" / "final.json").read_text())
    assert meta2["init_weights"]["path"] == str(init)
    assert meta2["init_weights"]["sha256"] == meta1["sha256"]
    assert meta2["train_config"]["model"]["init_weights"] == str(init)
    assert 0 < meta2["val_scores"]["val_psnr"] < 100  # validation ran the whole two-stage restore


def test_stage2_resumes_exactly_without_the_init_weights(stage1_run, tmp_path):
    root, pairs = stage1_run
    init = tmp_path / "stage1.safetensors"
    init.write_bytes((root / "stage1" / "final.safetensors").read_bytes())
    configs = {}
    for name in ("whole", "split"):
        cfg = stage_config(pairs, tmp_path / name, 2, init_weights=str(init))
        cfg["run"]["steps"] = 8
        configs[name] = write_yaml(tmp_path / f"{name}.yaml", cfg)
    assert runner.invoke(app, ["train", str(configs["whole"])]).exit_code == 0
    stopped = train_from_config(configs["split"], stop_after=4)
    assert stopped.step == 4 and not stopped.finished
    init.unlink()  # a resumed run takes its weights from its checkpoint, not from model.init_weights
    result = runner.invoke(app, ["train", str(configs["split"]), "--resume"])
    assert result.exit_code == 0, result.output
    a, b = load_file(tmp_path / "whole" / "final.safetensors"), load_file(tmp_path / "split" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "split" / "final.json").read_text())
    assert meta["init_weights"]["path"] == str(init)  # recorded at the start, kept through the resume


def test_init_weights_that_do_not_fit_are_one_line_errors(stage1_run, tmp_path):
    root, pairs = stage1_run
    state = load_file(root / "stage1" / "final.safetensors")
    key = next(k for k in state if k.startswith("stage1.") and state[k].ndim == 4)
    wrong = dict(state)
    wrong[key] = torch.zeros(1, *state[key].shape[1:])
    save_file(wrong, tmp_path / "wrong_shape.safetensors")
    save_file({"head.weight": torch.zeros(3)}, tmp_path / "other_model.safetensors")
    cases = [("wrong_shape.safetensors", (key, "shape")), ("other_model.safetensors", ("head.weight",)),
             ("missing.safetensors", ("not found",))]
    for file, phrases in cases:
        cfg = write_yaml(tmp_path / "c.yaml", stage_config(pairs, tmp_path / file, 2,
                                                           init_weights=str(tmp_path / file)))
        result = runner.invoke(app, ["train", str(cfg)])
        user_error(result, "model.init_weights", *phrases)
        assert not (tmp_path / file / "checkpoints").exists()
