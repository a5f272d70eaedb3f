"""`rsrestore evaluate` on bad or split datasets: a damaged image or a size mismatch named in one line, methods checked
before any image is scored, the test split scored by default and named in the output and the report, and no partial
report left by a failure."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _one_line_errors import user_error
from rsrestore import evaluate as evaluate_module
from rsrestore.cli import app
from rsrestore.evaluate import evaluation_split

runner = CliRunner()


def _pairs(root: Path, names, size=(32, 40), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        for sub in ("input", "target"):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / sub / f"{name}.png")
    return root


def _evaluate(root, out, *extra):
    return runner.invoke(app, ["evaluate", "--method", "input,dcp", "--root", str(root), "--out", str(out), "-q",
                               *extra])


def test_damaged_png_is_named(tmp_path):
    root = _pairs(tmp_path / "pairs", ["a", "b", "c"])
    damaged = root / "input" / "b.png"
    data = bytearray(damaged.read_bytes())
    data[60:120] = bytes(60)  # the image data's checksum no longer matches
    damaged.write_bytes(bytes(data))
    out = tmp_path / "report"
    user_error(_evaluate(root, out), str(damaged))
    assert not out.exists()


def test_not_an_image_is_named(tmp_path):
    root = _pairs(tmp_path / "pairs", ["a", "b"])
    (root / "target" / "b.png").write_bytes(b"not a png at all" * 8)
    out = tmp_path / "report"
    user_error(_evaluate(root, out), str(root / "target" / "b.png"))
    assert not out.exists()


def test_size_mismatch_names_the_files(tmp_path):
    root = _pairs(tmp_path / "pairs", ["a", "b"])
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "target" / "b.png")
    out = tmp_path / "report"
    line = user_error(_evaluate(root, out), str(root / "input" / "b.png"))
    assert "size" in line or "shape" in line or "(3, 30, 40)" in line
    assert not out.exists()


def test_method_names_are_checked_before_anything_is_scored(monkeypatch, tmp_path):
    root = _pairs(tmp_path / "pairs", ["a"])
    scored = []
    monkeypatch.setattr(evaluate_module, "score_image", lambda *a, **k: scored.append(1) or {})
    out = tmp_path / "report"
    user_error(runner.invoke(app, ["evaluate", "--method", "input,dcp,nope", "--root", str(root), "--out",
                                    str(out), "-q"]), "unknown method 'nope'")
    assert scored == [] and not out.exists()
    user_error(runner.invoke(app, ["evaluate", "--method", "input,dcp", "--weights", "rop=w.safetensors", "--root",
                                    str(root), "--out", str(out), "-q"]), "rop", "not among the methods")
    assert scored == []


def test_weights_are_checked_before_anything_is_scored(monkeypatch, tmp_path):
    root = _pairs(tmp_path / "pairs", ["a"])
    scored = []
    monkeypatch.setattr(evaluate_module, "score_image", lambda *a, **k: scored.append(1) or {})
    user_error(runner.invoke(app, ["evaluate", "--method", "input,dcp,aosrnet", "--weights",
                                    f"aosrnet={tmp_path / 'missing.safetensors'}", "--root", str(root), "--out",
                                    str(tmp_path / "report"), "-q"]), "weights file not found")
    assert scored == []


def test_split_folders_default_to_test_and_the_output_says_so(tmp_path):
    root = tmp_path / "pairs"
    _pairs(root / "train", ["t1", "t2", "t3"], seed=1)
    _pairs(root / "test", ["q1", "q2"], seed=2)
    out = tmp_path / "report"
    r = _evaluate(root, out)
    assert r.exit_code == 0, r.output
    assert f"scored 2 image(s) of the test split of paired at {root}" in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 2 and metrics["root"] == str(root)
    assert [p["name"] for p in metrics["methods"]["dcp"]["per_image"]] == ["q1", "q2"]
    html = (out / "report.html").read_text()
    assert str(root) in html and "<b>test</b>" in html and "q1, q2" in html

    r = _evaluate(root, tmp_path / "report_train", "--split", "train")
    assert r.exit_code == 0, r.output
    assert "scored 3 image(s) of the train split" in r.output


def test_dataset_without_splits_says_none(tmp_path):
    root = _pairs(tmp_path / "pairs", ["a"])
    out = tmp_path / "report"
    r = _evaluate(root, out)
    assert r.exit_code == 0, r.output
    assert f"scored 1 image(s) of paired at {root}" in r.output
    assert "none (no splits)" in (out / "report.html").read_text()


@pytest.mark.parametrize("dataset", ["satehaze1k", "rice", "rsid", "sen12mscr"])
def test_datasets_with_splits_default_to_test(dataset, tmp_path):
    assert evaluation_split(dataset, tmp_path, None) == "test"
    assert evaluation_split(dataset, tmp_path, "train") == "train"


def test_synthetic_dataset_has_no_split(tmp_path):
    assert evaluation_split("synthetic", tmp_path, None) is None
