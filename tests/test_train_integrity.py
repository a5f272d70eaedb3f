"""A run's files survive interruptions: SIGTERM removes the temporaries of writes under way, the next run sweeps those
of killed runs (never a live run's), and `rsrestore train --resume` falls back past an unreadable checkpoint, says so
in one line, and refuses a changed model config in one line with exit status 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from typer.testing import CliRunner

from _train_data import base_config, make_pairs, write_yaml

from rsrestore.cli import app
from rsrestore.models import registry
from rsrestore.train import parse_config, train
from rsrestore.train.checkpoint import prune_checkpoints, read_checkpoint

runner = CliRunner()


def dotfiles(root: Path) -> list[str]:
    """Every hidden file or folder under ``root``: what atomic writes use as temporaries."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def run_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------------------------------------------------
# Temporaries
# --------------------------------------------------------------------------------------------------------------------


SIGTERM_DURING_CHECKPOINT = """
import os, signal, sys, yaml
from rsrestore.models import registry
from rsrestore.models.aosrnet import AOSRNet, AOSRNetConfig
from rsrestore.train import parse_config, train

class TermOnSave(AOSRNet):
    # The 4th state_dict() is the EMA's in the checkpoint of step 4: model.safetensors is already in the temporary
    # folder when SIGTERM arrives.
    calls = 0

    def state_dict(self, *args, **kwargs):
        TermOnSave.calls += 1
        if TermOnSave.calls == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().state_dict(*args, **kwargs)

registry.MODELS["termonsave"] = registry.ModelSpec(
    name="termonsave", task="dust", summary="test", classes=lambda: (TermOnSave, AOSRNetConfig))
train(parse_config(yaml.safe_load(open(sys.argv[1]))))
"""


def test_sigterm_during_a_checkpoint_write_removes_its_temporary(tmp_path):
    pairs = make_pairs(tmp_path / "pairs", n=4)
    out = tmp_path / "run"
    data = base_config(pairs, out, steps=6, ckpt_every=2, ema=0.9)
    data["model"]["name"] = "termonsave"
    script = tmp_path / "term.py"
    script.write_text(textwrap.dedent(SIGTERM_DURING_CHECKPOINT))
    proc = subprocess.run([sys.executable, str(script), str(write_yaml(tmp_path / "c.yaml", data))],
                          env=run_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    # The checkpoint being written is gone whole; the previous one is intact and still the latest.
    assert dotfiles(out) == []
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert read_checkpoint(out / "checkpoints" / "step_0000002").state["step"] == 2


def test_sigterm_from_outside_leaves_a_resumable_run_and_no_temporaries(tmp_path):
    pairs = make_pairs(tmp_path / "pairs", n=4)
    out = tmp_path / "run"
    cfg = write_yaml(tmp_path / "c.yaml", base_config(pairs, out, steps=100000, ckpt_every=1, keep_checkpoints=2))
    proc = subprocess.Popen([sys.executable, "-m", "rsrestore.train", str(cfg)], env=run_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few more steps, each writing a checkpoint
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert dotfiles(out) == []
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert read_checkpoint(out / "checkpoints" / latest).state["step"] >= 1


def test_stale_temporaries_of_dead_runs_are_swept_and_a_live_runs_kept(tmp_path):
    pairs = make_pairs(tmp_path / "pairs", n=4)
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [
            ckpts / f".step_0000002.{dead}.tmp",  # a checkpoint folder being written
            ckpts / f".tmp_step_0000002_{dead}",  # the same, as earlier versions named it
            ckpts / f".latest.{dead}.tmp",
            out / f".final.safetensors.{dead}.tmp",
            out / f".best.safetensors.{dead}.tmp",
            out / f".log.csv.{dead}.tmp",
        ]
        kept = [ckpts / f".latest.{live.pid}.tmp", out / f".final.json.{live.pid}.tmp", out / "notes.tmp",
                out / ".keep"]
        for p in stale[:2]:
            p.mkdir()
            (p / "model.safetensors").write_bytes(b"partial")
        for p in stale[2:] + kept:
            p.write_bytes(b"partial")
        assert train(parse_config(base_config(pairs, out, steps=2))).finished
        assert [p.name for p in stale if p.exists()] == []
        assert all(p.exists() for p in kept)
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------------------------------------------------
# --resume
# --------------------------------------------------------------------------------------------------------------------


def interrupted_run(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A 6-step run stopped after step 4, with checkpoints at steps 2 and 4."""
    pairs = make_pairs(tmp_path / "pairs", n=4)
    data = base_config(pairs, tmp_path / "run", steps=6, ckpt_every=2, ema=0.9)
    assert not train(parse_config(data), stop_after=4).finished
    return write_yaml(tmp_path / "c.yaml", data), tmp_path / "run" / "checkpoints", data


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


def test_resume_falls_back_past_a_corrupt_latest_checkpoint(tmp_path):
    cfg, ckpts, data = interrupted_run(tmp_path)
    truncate(ckpts / "step_0000004" / "state.pt")
    result = runner.invoke(app, ["train", str(cfg), "--resume"])
    assert result.exit_code == 0, result.output
    warnings = warning_lines(result.stderr)
    assert len(warnings) == 1, result.stderr
    assert "resuming from step_0000002" in warnings[0] and "step_0000004: state.pt cannot be read" in warnings[0]
    # The run redid steps 3 and 4 and ended where an uninterrupted run ends.
    data["run"]["out_dir"] = str(tmp_path / "full")
    assert train(parse_config(data)).finished
    final = registry.read_state_dict(tmp_path / "run" / "final.safetensors")
    reference = registry.read_state_dict(tmp_path / "full" / "final.safetensors")
    assert final.keys() == reference.keys() and all((final[k] == reference[k]).all() for k in final)
    assert (ckpts / "latest").read_text().strip() == "step_0000006"


def test_resume_without_a_usable_checkpoint_is_one_line(tmp_path):
    cfg, ckpts, _ = interrupted_run(tmp_path)
    truncate(ckpts / "step_0000004" / "state.pt")
    truncate(ckpts / "step_0000002" / "model.safetensors")
    result = runner.invoke(app, ["train", str(cfg), "--resume"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no usable checkpoint"), result.stderr
    assert "step_0000004: state.pt" in lines[0] and "step_0000002: model.safetensors" in lines[0]


def test_resume_with_a_changed_model_config_is_refused(tmp_path):
    cfg, ckpts, _ = interrupted_run(tmp_path)
    result = runner.invoke(app, ["train", str(cfg), "--resume", "--set", "model.config.width=6"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot resume"), result.stderr
    assert "model.config changed (width 4 -> 6)" in lines[0]
    assert (ckpts / "latest").read_text().strip() == "step_0000004"
    # Spelling out a default value is no change: the run resumes.
    result = runner.invoke(app, ["train", str(cfg), "--resume", "--set", "model.config.in_channels=3"])
    assert result.exit_code == 0, result.output
    assert warning_lines(result.stderr) == [] and (ckpts / "latest").read_text().strip() == "step_0000006"


def test_resume_with_another_model_is_refused(tmp_path, monkeypatch):
    cfg, _, _ = interrupted_run(tmp_path)
    # The same architecture under another name is still another model's run.
    monkeypatch.setitem(registry.MODELS, "other", registry.MODELS["aosrnet"])
    result = runner.invoke(app, ["train", str(cfg), "--resume", "--set", "model.name=other"])
    assert result.exit_code == 2, result.output
    assert "model.name was 'aosrnet', now 'other'" in result.stderr


def test_pruning_counts_only_checkpoints_up_to_the_new_one(tmp_path):
    """After a fallback, the unusable newer checkpoint must not push the one just written out of `keep`."""
    for step in (2, 4, 6):
        (tmp_path / f"step_{step:07d}").mkdir()
    prune_checkpoints(tmp_path, keep=1, newest=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000004", "step_0000006"]
    prune_checkpoints(tmp_path, keep=None, newest=6)
    assert len(list(tmp_path.iterdir())) == 2
