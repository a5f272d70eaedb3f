"""Files of a run: atomic writes, checkpoints (save, find, read, prune), stale temporaries, exported weights.

Every file and checkpoint folder is written under a temporary name next to its final one,
``.<name>.<pid>.tmp``, and renamed into place when complete; ``checkpoints/latest`` is replaced the same way after
the checkpoint folder. A run killed at any moment thus leaves the previous checkpoint intact. A write that fails or
is interrupted (Ctrl-C, SIGTERM) removes its temporary; one killed outright (SIGKILL, a power cut) leaves it, and
:func:`sweep_temporaries` removes it when the next run starts, recognising temporaries of dead processes by the
process id in their names, so a run never deletes those of a live one.

On ``--resume``, :func:`resume_point` takes the checkpoint ``latest`` names, or when that one cannot be read the
newest older checkpoint that can, and says which it skipped and why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import registry

__all__ = [
    "STATE_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "atomic_path",
    "atomic_save_weights",
    "atomic_write_bytes",
    "export_weights",
    "prune_checkpoints",
    "read_checkpoint",
    "resume_point",
    "sweep_temporaries",
    "write_checkpoint",
]

STATE_FORMAT = 1
# What the loop needs from state.pt to continue; the other entries have defaults.
_STATE_KEYS = ("step", "epoch", "batch_in_epoch", "optimizer", "rng")
# ".<name>.<pid>.tmp" and, from earlier versions of the trainer, checkpoint folders ".tmp_step_<n>_<pid>".
_TEMPORARY = re.compile(r"^\.(?:.+\.(?P<pid>\d+)\.tmp|tmp_step_\d+_(?P<folder_pid>\d+))$")
_STEP = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (unreadable, incomplete, of another format), or none at all."""


# --------------------------------------------------------------------------------------------------------------------
# Atomic writes and their temporaries
# --------------------------------------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path`` for the block to write a file or a folder at; renamed onto ``path`` (which
    it replaces) when the block completes, removed when the block raises."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # os.replace cannot replace a folder that holds files
        os.replace(tmp, path)
    finally:
        _remove(tmp)  # gone after the rename; still there only when the block failed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _tensors_for_file(module: nn.Module) -> dict[str, torch.Tensor]:
    # Clones: safetensors refuses tensors that share storage (tied weights) and views into larger buffers.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def _save_weights(module: nn.Module, path: Path, metadata: Mapping[str, str] | None) -> None:
    from safetensors.torch import save_file

    save_file(_tensors_for_file(module), str(path), metadata=dict(metadata or {}))
    _fsync(path)


def atomic_save_weights(module: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        _save_weights(module, tmp, metadata)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # never judge our own files, nor without a way to ask (Windows' os.kill would end the process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: a live process of another user
        return True
    return True


def sweep_temporaries(*folders: Path) -> list[Path]:
    """Remove the temporaries of atomic writes that processes no longer running left in ``folders``; returns them.

    A process id can be reused, so a temporary whose writer died may survive a sweep; one of a live writer never
    goes.
    """
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = _TEMPORARY.match(path.name)
            if m is not None and not _process_alive(int(m["pid"] or m["folder_pid"])):
                _remove(path)
                removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------


def _step_of(name: str) -> int | None:
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


def write_checkpoint(
    ckpt_root: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module | None,
    state: Mapping[str, Any],
    metadata: Mapping[str, str],
    keep: int | None,
) -> Path:
    """Write ``ckpt_root/step_<step>/`` (``model.safetensors``, ``ema.safetensors`` when there is an EMA, and
    ``state.pt``), point ``latest`` at it, and keep only the ``keep`` newest checkpoints (None keeps all)."""
    name = f"step_{step:07d}"
    final = ckpt_root / name
    ckpt_root.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        _save_weights(model, tmp / "model.safetensors", metadata)
        if ema is not None:
            _save_weights(ema, tmp / "ema.safetensors", metadata)
        torch.save({"format": STATE_FORMAT, **state}, tmp / "state.pt")
        _fsync(tmp / "state.pt")
    atomic_write_bytes(ckpt_root / "latest", (name + "\n").encode())
    prune_checkpoints(ckpt_root, keep, step)
    return final


def prune_checkpoints(ckpt_root: Path, keep: int | None, newest: int) -> None:
    """Delete all but the ``keep`` newest checkpoints up to step ``newest`` (None keeps all). Newer folders, left by
    a run resumed from an older checkpoint, are not counted: the run overwrites them when it gets there."""
    if keep is None:
        return
    found = sorted(
        (step, p) for p in ckpt_root.glob("step_*") if p.is_dir() and (step := _step_of(p.name)) is not None
    )
    for _, old in [item for item in found if item[0] <= newest][:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Checkpoint:
    """A checkpoint read into memory: ``state.pt``'s dict and the state dicts of the model and its EMA."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0][:160] if text else "") or type(e).__name__


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return registry.read_state_dict(path)
    except Exception as e:  # truncated, not safetensors, unreadable: all mean this checkpoint cannot be used
        raise CheckpointError(f"{path.name} cannot be read ({_reason(e)})") from None


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder whole, so that an unreadable file is found before any of it is applied."""
    state_path = path / "state.pt"
    if not state_path.is_file():
        raise CheckpointError("missing or incomplete (no state.pt)")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or overwritten file fails in many ways (zip, pickle, EOF)
        raise CheckpointError(f"state.pt cannot be read ({_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"state.pt has format {found}, expected {STATE_FORMAT}")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"state.pt lacks {', '.join(missing)}")
    model = _read_weights(path / "model.safetensors")
    ema = _read_weights(path / "ema.safetensors") if (path / "ema.safetensors").exists() else None
    return Checkpoint(path, state, model, ema)


def resume_point(
    ckpt_root: Path, problem: Callable[[Checkpoint], str | None] = lambda ckpt: None
) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint to resume from and a note for each newer one skipped as unusable.

    That is the checkpoint ``latest`` names; when it cannot be read (or ``problem`` describes what is wrong with it),
    the newest older one that can. ``problem`` may also raise, for what no other checkpoint of the run would fix.
    Without a ``latest`` there is nothing to resume: ``(None, [])``. With one but no usable checkpoint, a
    :class:`CheckpointError` lists what was tried.
    """
    pointer = ckpt_root / "latest"
    if not pointer.exists():
        return None, []
    try:
        named = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    newest = _step_of(named)
    candidates = [ckpt_root / named] if newest is not None else []
    older = [
        (step, p) for p in ckpt_root.glob("step_*")
        if p.is_dir() and (step := _step_of(p.name)) is not None and (newest is None or step < newest)
    ]
    candidates += [p for _, p in sorted(older, reverse=True)]
    skipped = [] if newest is not None else [f"latest: does not name a checkpoint ({named[:40]!r})"]
    for path in candidates:
        try:
            ckpt = read_checkpoint(path)
            reason = problem(ckpt)
        except CheckpointError as e:
            reason = str(e)
        if reason is None:
            return ckpt, skipped
        skipped.append(f"{path.name}: {reason}")
    raise CheckpointError(
        f"no usable checkpoint to resume under {ckpt_root} ({'; '.join(skipped) or 'no step_* folders'}); "
        "start the run again without --resume in a new run.out_dir"
    )


# --------------------------------------------------------------------------------------------------------------------
# Exported weights
# --------------------------------------------------------------------------------------------------------------------


def export_weights(run_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str], name: str) -> Path:
    """Copy a finished run's ``final.safetensors`` to ``dest_dir/<name>.safetensors`` with the metadata file
    ``dest_dir/<name>.json`` that the MODELS table reads (``config``, ``sha256``, bands, value range, training data,
    steps, wall time, scores). Returns the weights path."""
    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    if not name or Path(name).name != name or name.endswith(".safetensors"):
        raise ValueError(f"name must be a plain file stem such as 'aosrnet_sanddust', got {name!r}")
    src, meta_src = run_dir / "final.safetensors", run_dir / "final.json"
    if not src.exists() or not meta_src.exists():
        raise FileNotFoundError(f"{run_dir} has no final.safetensors/final.json: the run has not finished")
    meta = json.loads(meta_src.read_text())
    if meta.get("sha256") and registry.sha256_of(src) != meta["sha256"]:
        raise ValueError(f"{src} does not match the sha256 recorded in {meta_src}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dst = dest_dir / f"{name}.safetensors"
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        _fsync(tmp)
    config = meta.get("config", {})
    bands = config.get("in_channels", config.get("optical_bands"))
    out = {
        "method": meta.get("model"),
        "file": dst.name,
        "sha256": registry.sha256_of(dst),
        "config": config,
        "bands": bands,
        "value_range": meta.get("value_range", [0.0, 1.0]),
        "trained_on": meta.get("train_data"),
        "steps": meta.get("steps"),
        "epochs": meta.get("epochs"),
        "global_batch_size": meta.get("global_batch_size"),
        "wall_time_s": meta.get("wall_time_s"),
        "ema": meta.get("ema"),
        "loss": meta.get("loss"),
        "scores": meta.get("val_scores"),
        "scores_convention": (
            "all bands, data range 1, Gaussian SSIM (window 11, sigma 1.5); outputs clamped to [0, 1]"
        ),
        "train_config": meta.get("train_config"),
    }
    atomic_write_bytes(dest_dir / f"{name}.json", (json.dumps(out, indent=2, default=str) + "\n").encode())
    return dst
