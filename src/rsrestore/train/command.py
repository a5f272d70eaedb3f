"""``python -m rsrestore.train CONFIG.yaml [--resume] [--set key=value] [--stop-after STEP]`` (also under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..models import registry
from .checkpoint import CheckpointError
from .config import ConfigError
from .loop import train_from_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rsrestore.train",
        description="Train a restoration model from a YAML config (also under torchrun --nproc_per_node N).",
    )
    parser.add_argument("config", type=Path, help="YAML training config (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set run.steps=100 --set optim.lr=2e-4 (repeatable)",
    )
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="end after this global step with a checkpoint, without final outputs")
    args = parser.parse_args(argv)
    try:
        result = train_from_config(args.config, args.overrides, resume=args.resume, stop_after=args.stop_after)
    except (ConfigError, CheckpointError, FileNotFoundError, registry.ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if result.finished else "stopped"
        print(f"{state} at step {result.step}/{result.total_steps}; outputs in {result.out_dir}", file=sys.stderr)
    return 0


