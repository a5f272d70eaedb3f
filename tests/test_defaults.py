"""Honest defaults: a task's default is its classical baseline until a learned method beats it on real scenes."""

import json

import pytest
from typer.testing import CliRunner

from rsrestore.cli import app
from rsrestore.models.registry import (DEFAULT_METHODS, MODELS, ModelError, default_method, describe_models,
                                       held_out_losses)


def test_defaults_are_the_classical_baselines_and_cloud_has_none():
    assert default_method("haze") == "dcp"
    assert default_method("dust") == "rop"
    for task, name in DEFAULT_METHODS.items():
        if name is not None:
            assert MODELS[name].task == task and not MODELS[name].experimental


def test_cloud_without_a_method_explains_and_names_the_experimental_models():
    with pytest.raises(ModelError) as e:
        default_method("cloud")
    msg = str(e.value)
    assert "no bundled cloud model" in msg and "sarcr" in msg and "dsen2cr" in msg and "\n" not in msg


def test_cli_task_cloud_without_method_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["restore", "missing.tif", "-o", str(tmp_path / "o.tif"), "--task", "cloud"])
    assert res.exit_code == 2
    assert "experimental" in res.output and "--method" in res.output


def test_models_lists_held_out_scores_beside_the_baseline():
    rows = {r["name"]: r for r in describe_models()}
    assert rows["aosrnet"]["experimental"] and not rows["aosrnet"]["default_for_task"]
    assert rows["rop"]["default_for_task"] and rows["dcp"]["default_for_task"]
    dust = rows["aosrnet"]["held_out"]
    assert dust and all(r["baseline"] == "rop" for r in dust)
    assert set(dust[0]["scores"]) == {"psnr", "ssim", "ciede2000"} == set(dust[0]["baseline_scores"])
    assert rows["sarcr"]["held_out"][0]["baseline"] == "input"
    out = CliRunner().invoke(app, ["models"]).output
    assert "vs rop" in out and "vs dcp" in out and "experimental" in out
    js = json.loads(CliRunner().invoke(app, ["models", "--json"]).output)
    assert {r["name"] for r in js if r["default_for_task"]} == {"dcp", "rop"}


def test_models_marks_held_out_sets_that_did_not_decide():
    """APEM's weights record Landsat-8 read as DN / 16000 beside the deciding TOA set: the listing says which is which."""
    rows = {r["name"]: r for r in describe_models()}
    sets = {r["test_set"]: r["deciding"] for r in rows["apem"]["held_out"]}
    assert sets["landsat8_toa"] and not sets["landsat8"] and sets["planet"]
    lines = CliRunner().invoke(app, ["models"]).output.splitlines()
    apem = lines[next(k for k, line in enumerate(lines) if line.startswith("apem ")) + 1]  # its held-out line
    assert "landsat8 (not deciding)" in apem and "landsat8_toa (not deciding)" not in apem


def test_models_says_which_deciding_scores_shipped_weights_lose(monkeypatch):
    """Weights exported by hand despite a lost deciding score say so in the listing; weights that won everywhere, or
    metadata without a per-metric verdict, list nothing. No bundled weights lose one now."""
    assert all(r["held_out_losses"] == [] for r in describe_models())
    verdict = {"baseline": "dcp", "vs_dcp": {"neon": {"psnr": True, "ssim": False}},
               "vs_input": {"neon": {"psnr": False}}}
    assert held_out_losses({"heldout_decision": verdict}) == ["ssim on neon"]  # against the baseline, not the input
    assert held_out_losses(None) == [] and held_out_losses({"heldout_decision": {"wins": True}}) == []
    # Weights shipped with a loss (as sarcr's former weights were, on SAM of the real-Sentinel-1 set):
    real = MODELS["sarcr"].weights_metadata()
    lost = {**real, "heldout_decision": {**real["heldout_decision"], "wins": False,
                                         "vs_input": {"real_sar": {"psnr": True, "sam": False}}}}
    original = type(MODELS["sarcr"]).weights_metadata
    monkeypatch.setattr(type(MODELS["sarcr"]), "weights_metadata",
                        lambda spec: lost if spec.name == "sarcr" else original(spec))
    assert {r["name"]: r for r in describe_models()}["sarcr"]["held_out_losses"] == ["sam on real_sar"]
    out = CliRunner().invoke(app, ["models"]).output
    assert "lose to the baseline on: sam on real_sar" in out
