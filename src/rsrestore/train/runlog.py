"""The run's log: ``log.csv`` always, TensorBoard events when tensorboard is installed."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import atomic_path

__all__ = ["CsvLog", "tensorboard"]


class CsvLog:
    """``log.csv``: one row per logged step; the header grows when a new column appears (the file is rewritten)."""

    def __init__(self, path: Path, keep_until: int | None) -> None:
        self.path = path
        self.fields: list[str] = []
        if path.exists():
            if keep_until is None:
                path.unlink()
            else:
                # Rows written after the checkpoint being resumed describe steps that will be redone.
                with open(path, newline="") as f:
                    reader = csv.DictReader(f)
                    self.fields = list(reader.fieldnames or [])
                    rows = [r for r in reader if r.get("step") and int(r["step"]) <= keep_until]
                self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, restval="")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Mapping[str, Any]) -> None:
        new = [k for k in row if k not in self.fields]
        if new or not self.path.exists():
            rows: list[dict[str, Any]] = []
            if self.path.exists():
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.fields += new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, restval="").writerow(
                {k: _fmt_csv(v) for k, v in row.items()}
            )

    def rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


def _fmt_csv(v: Any) -> Any:
    return f"{v:.8g}" if isinstance(v, float) else v


def tensorboard(out_dir: Path):
    """A TensorBoard writer for ``out_dir/tb``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed (or broken): the CSV log is enough
        return None
    return SummaryWriter(log_dir=str(out_dir / "tb"))

