import json

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from rsrestore.cli import app
from rsrestore.physics.scattering import haze_forward


def _write_png(path, chw):
    with rasterio.open(path, "w", driver="PNG", dtype="uint8", count=3, height=chw.shape[1], width=chw.shape[2]) as ds:
        ds.write((np.clip(chw, 0, 1) * 255 + 0.5).astype(np.uint8))


@pytest.fixture
def hazy_pairs(tmp_path):
    """A `paired` dataset: folders named `hazy` and `GT` (accepted aliases), pairs matched by stem."""
    root = tmp_path / "pairs"
    (root / "hazy").mkdir(parents=True)
    (root / "GT").mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        yy, xx = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 6, 72), indexing="ij")
        clean = torch.stack([0.3 + 0.2 * torch.sin(xx + i), 0.25 + 0.2 * torch.cos(yy), 0.15 + 0.1 * torch.sin(xx * yy)])
        clean = (clean + 0.05 * torch.rand(3, 64, 72, generator=g)).clamp(0, 1)[None]
        hazy = haze_forward(clean, torch.full((1, 1, 64, 72), 0.55), torch.tensor([[0.9, 0.9, 0.92]]))
        _write_png(root / "hazy" / f"img{i}.png", hazy[0].numpy())
        _write_png(root / "GT" / f"img{i}.png", clean[0].numpy())
    return root


def test_evaluate_writes_table_json_pictures_and_report(hazy_pairs, tmp_path):
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["evaluate", "--method", "input,dcp", "--dataset", "paired", "--root",
                                 str(hazy_pairs), "--out", str(out), "-q", "--pictures", "2"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| input |") and lines[2].startswith("| dcp |")
    for method in ("input", "dcp"):
        m = json.loads((out / method / "metrics.json").read_text())
        assert m["method"] == method and m["dataset"] == "paired" and m["n"] == 3
        assert set(m["mean"]) >= {"psnr", "ssim", "ciede2000", "mae", "sam"}
        assert len(m["per_image"]) == 3 and m["conventions"]["ssim"]
    inp = json.loads((out / "input" / "metrics.json").read_text())["mean"]
    dcp = json.loads((out / "dcp" / "metrics.json").read_text())["mean"]
    assert dcp["psnr"] > inp["psnr"] and dcp["ciede2000"] < inp["ciede2000"]
    assert sorted(p.name for p in out.glob("comparison_*.png")) == ["comparison_00.png", "comparison_01.png"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "dcp" in html


def test_evaluate_unknown_dataset_is_a_clear_error(hazy_pairs, tmp_path):
    r = CliRunner().invoke(app, ["evaluate", "--method", "dcp", "--dataset", "nope", "--root", str(hazy_pairs),
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unknown dataset" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("kind,options", [("synthetic", ["kind=dust", "size=48", "length=2", "flip=false"]),
                                          ("synthetic", ["kind=haze", "size=48", "length=2"])])
def test_evaluate_accepts_the_synthetic_kind(tmp_path, kind, options):
    clean = tmp_path / "clean"
    clean.mkdir()
    g = np.random.default_rng(0)
    for i in range(2):
        _write_png(clean / f"c{i}.png", 0.2 + 0.5 * g.random((3, 64, 64)))
    args = ["evaluate", "--method", "input,rop", "--dataset", kind, "--root", str(clean), "--out", str(tmp_path / "r"),
            "-q"]
    for o in options:
        args += ["--option", o]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "r" / "rop" / "metrics.json").read_text())
    assert m["n"] == 2 and m["dataset"] == "synthetic"


def test_evaluate_sen12mscr_layout_as_downloaded(shared_data, tmp_path):
    r = CliRunner().invoke(app, ["evaluate", "--method", "input", "--dataset", "sen12mscr", "--root",
                                 str(shared_data / "sen12mscr"), "--out", str(tmp_path / "r"), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "r" / "input" / "metrics.json").read_text())
    assert m["n"] == 1 and {"psnr", "psnr_rgb", "sam", "sam_rgb", "ciede2000"} <= set(m["mean"])


def test_evaluate_no_reference_columns(tmp_path):
    """`--nr` adds NIQE and SSEQ to every row (the dust tables of the papers carry them)."""
    root = tmp_path / "pairs"
    (root / "dusty").mkdir(parents=True)
    (root / "clear").mkdir()
    yy, xx = np.meshgrid(np.linspace(0, 12, 112), np.linspace(0, 12, 112), indexing="ij")
    rng = np.random.default_rng(0)
    clean = np.stack([0.4 + 0.2 * np.sin(xx), 0.35 + 0.2 * np.cos(yy), 0.3 + 0.1 * np.sin(xx + yy)])
    clean = np.clip(clean + 0.08 * rng.random(clean.shape), 0, 1)
    _write_png(root / "clear" / "a.png", clean)
    _write_png(root / "dusty" / "a.png", 0.5 * clean + np.array([0.4, 0.3, 0.1])[:, None, None])
    r = CliRunner().invoke(app, ["evaluate", "--method", "input,rop", "--dataset", "paired", "--root", str(root),
                                 "--out", str(tmp_path / "r"), "--nr", "-q"])
    assert r.exit_code == 0, r.output
    header = next(line for line in r.output.splitlines() if line.startswith("| method"))
    assert "niqe" in header and "sseq" in header
    for m in ("input", "rop"):
        mean = json.loads((tmp_path / "r" / m / "metrics.json").read_text())["mean"]
        assert np.isfinite(mean["niqe"]) and np.isfinite(mean["sseq"])
