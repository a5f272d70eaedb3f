"""`rsrestore evaluate --dataset sen12mscr` on the real SEN12MS-CR miniature in ../shared/data/sen12mscr.

Scores are checked against NumPy / scikit-image computed independently from the GeoTIFFs, in the units of the
SEN12MS-CR literature (Meraner et al. 2020; Ebel et al. 2021, 2023): reflectance = digital number / 10000 clipped to
[0, 1]; PSNR in dB with data range 1 over all 13 bands; SSIM; MAE on the [0, 1] scale; SAM in degrees.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors.torch import save_file
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from rsrestore.cli import app
from rsrestore.evaluate import evaluate
from rsrestore.models.registry import load_model, sha256_of
from rsrestore.raster import sar_to_unit

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sen12mscr"
CLOUDY = DATA / "ROIs1970_fall_s2_cloudy" / "s2_cloudy_139" / "ROIs1970_fall_s2_cloudy_139_p839.tif"
CLEAR = DATA / "ROIs1970_fall_s2" / "s2_139" / "ROIs1970_fall_s2_139_p839.tif"
S1 = DATA / "ROIs1970_fall_s1" / "s1_139" / "ROIs1970_fall_s1_139_p839.tif"
TINY_DSEN2CR = {"optical_bands": 13, "sar_bands": 2, "features": 8, "blocks": 2}
RGB = [3, 2, 1]  # B4, B3, B2
ALL_BAND_KEYS = {"psnr", "ssim", "mae", "sam"}
RGB_KEYS = {"psnr_rgb", "ssim_rgb", "mae_rgb", "sam_rgb", "ciede2000"}

runner = CliRunner()
# The miniature's ROIs1868_summer patch has no cloud-free target; the loader skips it with this warning.
pytestmark = pytest.mark.filterwarnings("ignore:skipped 1 of 2 SEN12MS-CR patches:UserWarning")


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    if not all(p.exists() for p in (CLOUDY, CLEAR, S1)):
        pytest.skip(f"SEN12MS-CR triplet 139_p839 not found under {DATA} (the shared data folder is absent)")

    def optical(p: Path) -> np.ndarray:
        with rasterio.open(p) as ds:
            return np.clip(ds.read().astype(np.float64) / 10000.0, 0.0, 1.0)

    with rasterio.open(S1) as ds:
        sar = sar_to_unit(ds.read())
    return {"cloudy": optical(CLOUDY), "clear": optical(CLEAR), "sar": sar}


@pytest.fixture
def tiny_weights(tmp_path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = load_model("dsen2cr", weights=None, config=TINY_DSEN2CR)
    path = tmp_path / "dsen2cr_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(
        json.dumps({"method": "dsen2cr", "config": dataclasses.asdict(model.cfg), "sha256": sha256_of(path)})
    )
    return path, model


def reference_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM, MAE, SAM over all bands and over RGB, and CIEDE2000 on RGB, computed with NumPy / scikit-image."""

    def four(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
        cos = (p * t).sum(0) / (np.linalg.norm(p, axis=0) * np.linalg.norm(t, axis=0))
        return {
            "psnr": 10.0 * np.log10(1.0 / np.mean((p - t) ** 2)),
            "ssim": structural_similarity(p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=1.0, channel_axis=0),
            "mae": np.mean(np.abs(p - t)),
            "sam": np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean(),
        }

    out = four(pred, target)
    out.update({f"{k}_rgb": v for k, v in four(pred[RGB], target[RGB]).items()})
    lab_p = rgb2lab(np.moveaxis(pred[RGB], 0, -1))
    lab_t = rgb2lab(np.moveaxis(target[RGB], 0, -1))
    out["ciede2000"] = float(deltaE_ciede2000(lab_p, lab_t).mean())
    return out


def assert_scores_close(got: dict, want: dict) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def test_evaluate_input_and_dsen2cr_on_real_sen12mscr(arrays, tiny_weights, tmp_path):
    weights, model = tiny_weights
    out = tmp_path / "report"
    results = evaluate(["input", "dsen2cr"], "sen12mscr", DATA, out, weights={"dsen2cr": str(weights)},
                       device="cpu", pictures=1, progress=False)
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"] == "sen12mscr" and report["n"] == 1
    assert report["conventions"]["data_range"] == 1.0
    for method in ("input", "dsen2cr"):
        mean = report["methods"][method]["mean"]
        assert ALL_BAND_KEYS | RGB_KEYS <= set(mean), sorted(mean)
        assert all(np.isfinite(v) for v in mean.values())
        assert json.loads((out / method / "metrics.json").read_text())["mean"] == mean
        assert report["methods"][method]["per_image"][0]["name"] == CLOUDY.stem
    assert (out / "table.md").exists() and (out / "report.html").exists() and (out / "comparison_00.png").exists()

    # The cloudy input itself, against scores computed from the files independently.
    assert_scores_close(report["methods"]["input"]["mean"], reference_scores(arrays["cloudy"], arrays["clear"]))

    # The network's scores are those of its whole-image forward pass with the SAR (one 256x256 tile), clamped.
    x = torch.from_numpy(arrays["cloudy"]).float()[None]
    sar = torch.from_numpy(arrays["sar"])[None]
    with torch.no_grad():
        pred = model.eval()(x, sar)[0].clamp(0.0, 1.0).double().numpy()
    assert_scores_close(results["dsen2cr"].mean, reference_scores(pred, arrays["clear"]))
    # An untrained network is not the input: the SAR path changed the prediction.
    assert results["dsen2cr"].mean["psnr"] != pytest.approx(results["input"].mean["psnr"])


def test_cli_evaluate_sen12mscr_prints_table_and_writes_report(arrays, tiny_weights, tmp_path):
    weights, _ = tiny_weights
    out = tmp_path / "cli_report"
    result = runner.invoke(app, ["evaluate", "--method", "input,dsen2cr", "--dataset", "sen12mscr", "--root",
                                 str(DATA), "--weights", f"dsen2cr={weights}", "--out", str(out), "--device", "cpu",
                                 "--pictures", "0", "-q"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("| method"))
    for col in ("psnr ↑", "ssim ↑", "mae ↓", "sam ↓", "psnr_rgb ↑", "ssim_rgb ↑", "mae_rgb ↓", "sam_rgb ↓",
                "ciede2000 ↓"):
        assert col in header
    assert any(line.startswith("| input | 1 |") for line in result.output.splitlines())
    assert any(line.startswith("| dsen2cr | 1 |") for line in result.output.splitlines())
    mean = json.loads((out / "metrics.json").read_text())["methods"]["input"]["mean"]
    assert mean["psnr"] == pytest.approx(reference_scores(arrays["cloudy"], arrays["clear"])["psnr"], rel=1e-6)


def test_sar_method_on_sen12mscr_without_sar_is_a_clear_error(arrays, tiny_weights, tmp_path):
    weights, _ = tiny_weights
    result = runner.invoke(app, ["evaluate", "--method", "dsen2cr", "--dataset", "sen12mscr", "--root", str(DATA),
                                 "--weights", str(weights), "--option", "with_sar=false", "--out",
                                 str(tmp_path / "r"), "--device", "cpu", "-q"])
    assert result.exit_code == 2, result.output
    assert "needs SAR" in result.output and "Traceback" not in result.output
