"""The training pipeline (`rsrestore train CONFIG` with a `pipeline:` section) on a tiny fake data root: prepare splits
by scene and keeps held-out sources out of training, a tiny model trains, evaluation writes the table, export follows
the verdict, reruns skip what is current; a missing data root is one error line; the real CPU configs' plans resolve
against ../shared/data and keep the held-out sets the shipped scores were measured on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image
from rasterio.transform import from_origin
from typer.testing import CliRunner

from _one_line_errors import user_error

from rsrestore.cli import app
from rsrestore.train import ConfigError, load_config
from rsrestore.train import pipeline as pl

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
runner = CliRunner()


def _scene(rng: np.random.Generator, h: int, w: int, bands: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [0.45 + 0.35 * np.sin(2 * np.pi * rng.uniform(1, 3) * (xx + rng.uniform() * yy) + rng.uniform(0, 6))
              for _ in range(bands)]
    return (np.clip(np.stack(planes, -1) + rng.normal(0, 0.03, (h, w, bands)), 0, 1) * 255).astype(np.uint8)


def fake_data_root(root: Path) -> Path:
    """The real sources' layouts, small: EuroSAT-like classes of numbered JPEG tiles with an exclusion list, NEON-like
    sites of PNG plots, NAIP-like 4-band GeoTIFFs, and a PNG source to hold out whole."""
    rng = np.random.default_rng(0)
    for cls in ("Forest", "River"):
        (root / "eurosat" / cls).mkdir(parents=True)
        for i in range(1, 11):
            Image.fromarray(_scene(rng, 24, 24)).save(root / "eurosat" / cls / f"{cls}_{i}.jpg")
    (root / "eurosat" / "low.txt").write_text("# near-uniform\nRiver/River_2.jpg\tstd=3\n")
    for site, n, size in (("HARV", 3, 48), ("TEAK", 3, 48), ("SJER", 2, 48)):
        (root / "neon" / site).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_scene(rng, size, size)).save(root / "neon" / site / f"{site}_{i:03d}.png")
    Image.fromarray(_scene(rng, 20, 20)).save(root / "neon" / "TEAK" / "TEAK_900.png")  # under test_min_size
    (root / "naip").mkdir()
    with rasterio.open(root / "naip" / "m_1.tif", "w", driver="GTiff", dtype="uint8", count=4, height=40, width=40,
                       crs="EPSG:32614", transform=from_origin(500000, 4000000, 1, 1)) as ds:
        ds.write(np.moveaxis(_scene(rng, 40, 40, 4), -1, 0))
    (root / "more" / "planet").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_scene(rng, 64, 64)).save(root / "more" / "planet" / f"port_{i}.png")
    return root


def tiny_config(tmp: Path, **pipeline) -> dict:
    work = tmp / "runs" / "tiny"
    return {
        "model": {"name": "aosrnet", "config": {"width": 4, "num_res_blocks": 1}},
        "data": {"train": {"kind": "synthetic", "root": str(work / "split" / "train"),
                           "options": {"kind": "dust", "size": 16, "flip": True, "bands": [1, 2, 3]}},
                 "batch_size": 2},
        "loss": {"name": "l1"},
        "optim": {"name": "adam", "lr": 3e-3},
        "run": {"out_dir": str(work / "train"), "steps": 2, "log_every": 1, "val_every": 0, "ckpt_every": 0,
                "device": "cpu", "progress": False},
        "pipeline": {
            "weights": "tiny_dust", "task": "dust", "baseline": "rop", "work": str(work),
            "results_dir": str(tmp / "results"), "weights_dir": str(tmp / "weights"),
            "title": "tiny", "limits": "a test", "paper": "none",
            "evaluate": {"pictures": 1},
            "sources": {
                "eurosat": {"path": "eurosat", "split": "by_position", "train": [0, 6], "val": [6, 8],
                            "test": [8, 10], "exclude_list": "low.txt", "licence": "MIT"},
                "neon": {"path": "neon", "split": "by_folder", "train": ["HARV"], "test": ["TEAK"],
                         "unused": ["SJER"], "test_min_size": 32, "repeats": 3, "licence": "CC0"},
                "naip": {"path": "naip", "split": "whole", "use": "train", "repeats": 2, "licence": "public domain"},
                "planet": {"path": "more/planet", "split": "whole", "use": "test", "tiles": 32,
                           "licence": "CC BY-SA 4.0"},
            },
            "links": {"split/train": ["eurosat/train", "neon/train", "naip/train"], "split/val": ["eurosat/val"]},
            "test_sets": {"neon": {"source": "neon", "n": 2, "size": 32, "seed": 1},
                          "planet": {"source": "planet", "n": 2, "size": 32, "seed": 2}},
            **pipeline,
        },
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full pipeline run (all stages) on the fake data root; returns (tmp, config path, result, log lines)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    data = fake_data_root(tmp / "data")
    config = write_config(tmp / "tiny_cpu.yaml", tiny_config(tmp))
    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only wait on each other on a loaded machine
    try:
        result = pl.run_pipeline(config, data=data, progress=False, log=lines.append)
    finally:
        torch.set_num_threads(threads)
    return tmp, config, data, result, lines


def test_prepare_keeps_held_out_scenes_and_sources_out_of_training(trained):
    tmp, config, data, _, _ = trained
    work = tmp / "runs" / "tiny"
    targets = {Path(os.readlink(p)) for p in (work / "split" / "train").rglob("*") if p.is_symlink()}
    names = {t.name for t in targets}
    # Held out whole (planet), held-out site (TEAK), its copy flown again (SJER), EuroSAT positions 8-9, the excluded
    # tile: none in the training folder. Trained: positions 0-5, HARV x3, NAIP x2.
    assert not any(n.startswith(("port_", "TEAK", "SJER")) for n in names)
    assert "River_2.jpg" not in names and "Forest_9.jpg" not in names and "Forest_6.jpg" in names
    assert len(list((work / "split" / "train" / "neon").iterdir())) == 3 * 3
    assert len(list((work / "split" / "train" / "naip").iterdir())) == 2
    assert sorted(p.name for p in (work / "split" / "val" / "eurosat").iterdir()) == \
        ["Forest_Forest_7.jpg", "Forest_Forest_8.jpg", "River_River_7.jpg", "River_River_8.jpg"]
    assert (work / "split" / "test_neon.txt").read_text().split() == \
        [f"{data}/neon/TEAK/TEAK_{i:03d}.png" for i in range(3)]  # the 20-px plot is too small for a 32 crop
    assert f"{data}/neon/TEAK/TEAK_900.png" in (work / "split" / "unused.txt").read_text().split()
    planet = json.loads((work / "heldout" / "planet" / "manifest.json").read_text())
    assert planet["n"] == 2 and planet["seed"] == 2 and planet["kind"] == "dust"
    assert planet["num_sources"] == 8  # each 64 px scene cut into four 32 px tiles
    assert all(s["source"].startswith("port_") for s in planet["samples"])


def test_full_run_trains_evaluates_writes_the_table_and_exports_by_the_verdict(trained):
    tmp, config, data, result, lines = trained
    assert (tmp / "runs" / "tiny" / "train" / "final.safetensors").is_file()
    table = json.loads((tmp / "results" / "tiny_dust_heldout.json").read_text())
    assert set(table["scores"]) == {"neon", "planet"}
    for name, rows in table["scores"].items():
        assert list(rows) == ["input", "rop", "aosrnet"]
        assert rows["aosrnet"]["n"] == 2 and rows["rop"]["psnr"] > 0
    # The verdict is what the scores say: better than rop on PSNR, SSIM and CIEDE2000 on both sets.
    wins = all(rows["aosrnet"]["psnr"] > rows["rop"]["psnr"] and rows["aosrnet"]["ssim"] > rows["rop"]["ssim"]
               and rows["aosrnet"]["ciede2000"] < rows["rop"]["ciede2000"] for rows in table["scores"].values())
    assert table["decision"]["wins"] is wins
    assert (result.exported is not None) is wins
    assert (tmp / "weights" / "tiny_dust.safetensors").exists() is wins
    md = (tmp / "results" / "tiny_dust_heldout.md").read_text()
    assert "| ROP (rank-one prior, classical) |" in md and "## planet: 2 crops of 32x32" in md
    # Every score the evaluator gives all methods is a column, the newer ones (detail ratios) included.
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    for key in set.intersection(*(set(row) - {"n"} for row in table["scores"]["neon"].values())):
        assert f" {key} " in header, key


def test_rerun_skips_current_stages(trained):
    tmp, config, data, _, _ = trained
    final = tmp / "runs" / "tiny" / "train" / "final.safetensors"
    link = next((tmp / "runs" / "tiny" / "split" / "train" / "neon").iterdir())
    before = (final.stat().st_mtime_ns, link.lstat().st_mtime_ns)
    lines: list[str] = []
    pl.run_pipeline(config, data=data, progress=False, log=lines.append)
    text = "\n".join(lines)
    assert "links split/train current" in text and "heldout planet current" in text
    assert "up to date" in text and "evaluate neon: up to date" in text and "scored" not in text
    assert (final.stat().st_mtime_ns, link.lstat().st_mtime_ns) == before


def _scores_where_model(trained_scores: dict, better: bool) -> dict:
    """The run's real scores with the model's row moved just above (or below) rop's on every deciding metric."""
    out = json.loads(json.dumps(trained_scores))
    step = 1 if better else -1
    for rows in out.values():
        rows["aosrnet"] = dict(rows["rop"], psnr=rows["rop"]["psnr"] + step, ssim=rows["rop"]["ssim"] + 0.01 * step,
                               ciede2000=rows["rop"]["ciede2000"] - step)
    return out


@pytest.mark.parametrize("better, force, exported", [(True, False, True), (False, False, False), (False, True, True)])
def test_export_only_when_the_verdict_wins_unless_forced(trained, tmp_path, monkeypatch, better, force, exported):
    tmp, _, data, result, _ = trained
    scores = _scores_where_model(result.scores, better)
    monkeypatch.setattr(pl, "evaluate_sets", lambda plan, progress=True, log=None: scores)
    config = write_config(tmp_path / "tiny_cpu.yaml",
                          tiny_config(tmp) | {"pipeline": tiny_config(tmp)["pipeline"] |
                                              {"weights_dir": str(tmp_path / "w"), "results_dir": str(tmp_path)}})
    out = pl.run_pipeline(config, stage="export", data=data, force_export=force, progress=False, log=lambda m: None)
    assert out.decision["wins"] is better
    dst = tmp_path / "w" / "tiny_dust.safetensors"
    assert dst.exists() is exported
    if exported:
        meta = json.loads(dst.with_suffix(".json").read_text())
        assert meta["scores"]["neon"]["psnr"] == scores["neon"]["aosrnet"]["psnr"]
        assert meta["heldout_decision"]["wins"] is better
        assert meta["data"]["held_out_sources"] == ["planet"]
        assert meta["data"]["licences"]["planet"] == "CC BY-SA 4.0"
        assert meta["data"]["sources"]["eurosat"]["counts"] == {"train": 11, "val": 4, "test": 4, "unused": 1}


def test_cli_missing_data_root_is_one_line_and_exit_2(tmp_path, monkeypatch):
    config = write_config(tmp_path / "tiny_cpu.yaml", tiny_config(tmp_path))
    monkeypatch.setenv("RSRESTORE_DATA", str(tmp_path / "no_such_data"))
    line = user_error(runner.invoke(app, ["train", str(config)]), "no_such_data", "not found", "--data-root")
    assert "eurosat" in line
    line = user_error(runner.invoke(app, ["train", str(config), "--data-root", str(tmp_path / "elsewhere")]),
                      "elsewhere")
    assert not (tmp_path / "runs").exists()


def test_cli_stage_needs_a_pipeline_and_a_known_stage(tmp_path):
    data = tiny_config(tmp_path)
    plain = write_config(tmp_path / "plain.yaml", {k: v for k, v in data.items() if k != "pipeline"})
    user_error(runner.invoke(app, ["train", str(plain), "--stage", "prepare"]), "pipeline section")
    with_pipeline = write_config(tmp_path / "tiny.yaml", data)
    user_error(runner.invoke(app, ["train", str(with_pipeline), "--stage", "bake"]), "--stage", "prepare")


def test_pipeline_section_is_checked_and_ignored_by_the_trainer(tmp_path):
    data = tiny_config(tmp_path)
    cfg = load_config(write_config(tmp_path / "a.yaml", data))
    assert cfg.pipeline["weights"] == "tiny_dust"
    bad = json.loads(json.dumps(data))
    bad["pipeline"]["test_sets"]["neon"]["seeed"] = 3
    with pytest.raises(ConfigError, match="pipeline.test_sets.neon.seeed"):
        load_config(write_config(tmp_path / "b.yaml", bad))
    bad = json.loads(json.dumps(data))
    bad["pipeline"]["links"]["split/train"].append("landsat/train")
    with pytest.raises(ConfigError, match="landsat/train"):
        load_config(write_config(tmp_path / "c.yaml", bad))
    bad = json.loads(json.dumps(data))
    bad["pipeline"]["build"] = {"kind": "cloud_triplets", "source": "neon", "real_sar": "sen12mscr"}
    with pytest.raises(ConfigError, match="pipeline.build.real_sar: 'sen12mscr'"):
        load_config(write_config(tmp_path / "d.yaml", bad))


# --------------------------------------------------------------------------------------------------------------------
# The project's CPU configs


CPU_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*_cpu*.yaml") if load_config(p).pipeline is not None)


def test_the_cpu_configs_that_made_bundled_weights_have_a_pipeline():
    names = {p.name for p in CPU_CONFIGS}
    for name in ("aosrnet_dust_affine_cpu.yaml", "rsdehamba_haze_realistic_cpu.yaml",
                 "rsdehamba_haze_clean_finetune_cpu.yaml", "rsdehamba_haze_dcp_prior_veil_free_inputs_cpu.yaml",
                 "apem_haze_cpu.yaml",
                 "aspdiff_haze_cpu.yaml",
                 "dsrdmpd_haze_cpu_stage2.yaml", "sarcr_synthetic_clouds_cpu.yaml",
                 "dsen2cr_synthetic_clouds_cpu.yaml"):
        assert name in names


_CHECKED_LINKS: set[Path] = set()


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (the clean imagery) is absent")
@pytest.mark.parametrize("config", CPU_CONFIGS, ids=lambda p: p.name)
def test_cpu_config_plan_resolves_and_keeps_the_held_out_sets(config, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = pl.make_plan(config.relative_to(ROOT), data="../shared/data")
    for name, t in plan.spec.test_specs.items():
        if t.source is not None:
            assert plan.test_files(name), name
            # Held-out sets written before the pipeline existed match their definitions here (so they are reused).
            if (plan.test_folder(name) / "manifest.json").is_file():
                files = None if plan.spec.source_specs[t.source].tiles else plan.test_files(name)
                assert pl._test_set_current(plan, name, files), name
        elif plan.spec.build is not None and plan.work in plan.test_folder(name).parents:
            assert name in pl.test_descriptions(plan)  # written by the build step of prepare
        else:
            assert plan.test_folder(name).is_dir(), name
    # Link folders written before the pipeline existed hold exactly the planned links (so they are left alone).
    from rsrestore.train.sources import existing_links, planned_links

    for folder, items in plan.spec.links.items():
        if (plan.work / folder).is_dir() and (plan.work / folder).resolve() not in _CHECKED_LINKS:
            _CHECKED_LINKS.add((plan.work / folder).resolve())  # configs sharing a split share its folders
            groups = [(src, plan.splits[src][part], plan.spec.source_specs[src].repeats if part == "train" else 1)
                      for src, _, part in (item.partition("/") for item in items)]
            assert existing_links(plan.work / folder) == planned_links(groups), folder
    # Split lists written before the pipeline existed list the same files.
    for path in (plan.work / "split").glob("*_*.txt"):
        part, _, source = path.stem.partition("_")
        if source in plan.splits:
            assert path.read_text().split() == [plan.display(f) for f in plan.splits[source][part]], path.name


def test_training_a_config_whose_init_weights_are_missing_names_the_config_that_makes_them(tmp_path):
    first = tiny_config(tmp_path)
    first.pop("pipeline")
    first["run"]["out_dir"] = str(tmp_path / "stage1")
    stage1 = write_config(tmp_path / "stage1_cpu.yaml", first)
    second = tiny_config(tmp_path)
    second["model"]["init_weights"] = str(tmp_path / "stage1" / "final.safetensors")
    stage2 = write_config(tmp_path / "stage2_cpu.yaml", second)
    with pytest.raises(FileNotFoundError, match=f"run `rsrestore train {stage1}` first"):
        pl.train_one(stage2, load_config(stage2), log=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_train_first_chains_train_each_config_after_the_ones_it_starts_from(tmp_path, monkeypatch):
    """c starts from b's weights and b from a's: training c trains a, then b, then c, each once."""
    data = fake_data_root(tmp_path / "data")
    paths: list[Path] = []
    for k, name in enumerate("abc"):
        cfg = tiny_config(tmp_path)
        cfg["run"]["out_dir"] = str(tmp_path / "runs" / name)
        if k:
            cfg["model"]["init_weights"] = str(tmp_path / "runs" / "abc"[k - 1] / "final.safetensors")
            cfg["pipeline"]["train_first"] = [str(p) for p in reversed(paths)]  # c: b (which starts from a), a
        paths.append(write_config(tmp_path / f"{name}_cpu.yaml", cfg))
    order = []
    train_one = pl.train_one
    monkeypatch.setattr(pl, "train_one", lambda config, cfg, log=None: order.append(Path(config).name)
                        or train_one(config, cfg, log))
    pl.train_stage(pl.make_plan(paths[-1], data=data), progress=False, log=lambda m: None)
    assert order == ["a_cpu.yaml", "b_cpu.yaml", "c_cpu.yaml"]
    assert all((tmp_path / "runs" / name / "final.safetensors").is_file() for name in "abc")


def test_held_out_tiles_subtract_the_products_calibration_offset(tmp_path):
    """Landsat-8 Level-1 numbers are 50000 x TOA reflectance + 5000: tiles cut with ``offset`` hold the reflectance
    part only (clipped at 0, same dtype), and an offset on a source that is not tiled is refused."""
    from rsrestore.train.sources import SourceSpec, valid_tiles

    dn = np.random.default_rng(3).integers(4000, 12000, (3, 64, 64)).astype(np.uint16)
    src = tmp_path / "l8.tif"
    with rasterio.open(src, "w", driver="GTiff", dtype="uint16", count=3, height=64, width=64) as ds:
        ds.write(dn)
    (tmp_path / "raw").mkdir()
    (tmp_path / "toa").mkdir()
    raw = valid_tiles(src, tmp_path / "raw", 32)
    toa = valid_tiles(src, tmp_path / "toa", 32, offset=5000)
    assert len(raw) == len(toa) == 4
    with rasterio.open(raw[1]) as a, rasterio.open(toa[1]) as b:
        r, t = a.read(), b.read()
    assert t.dtype == np.uint16
    np.testing.assert_array_equal(t, np.clip(r.astype(int) - 5000, 0, None))
    assert (r < 5000).any() and t.min() == 0
    with pytest.raises(ConfigError, match="offset"):
        SourceSpec.parse("l8", {"path": "l8", "use": "test", "offset": 5000}, "pipeline.sources.l8")
    with pytest.raises(ConfigError, match="offset"):
        SourceSpec.parse("l8", {"path": "l8", "use": "test", "tiles": 32, "offset": -1}, "pipeline.sources.l8")


def test_a_held_out_set_cut_with_another_offset_is_stale(trained, tmp_path):
    """Tiles record how they were cut: changing a tiled source's offset makes its held-out set be written again."""
    tmp, config, data, _, _ = trained
    plan = pl.make_plan(config, data=data)
    assert pl._test_set_current(plan, "planet", None)
    record = json.loads((tmp / "runs" / "tiny" / "sources" / "planet" / pl.TILES_RECORD).read_text())
    assert record == {"tiles": 32, "offset": 0.0}
    changed = yaml.safe_load(config.read_text())
    changed["pipeline"]["sources"]["planet"]["offset"] = 7
    other = pl.make_plan(write_config(tmp_path / "offset.yaml", changed), data=data)
    assert not pl._test_set_current(other, "planet", None)
    assert pl._test_set_current(other, "neon", None)  # an untiled source's set is unaffected


def test_a_held_out_set_with_dark_object_references_is_its_own_set(trained, tmp_path):
    """Turning on dark_object makes the set stale (its references differ); the table says what its references are."""
    tmp, config, data, _, _ = trained
    changed = yaml.safe_load(config.read_text())
    changed["pipeline"]["test_sets"]["neon"]["dark_object"] = True
    plan = pl.make_plan(write_config(tmp_path / "dark.yaml", changed), data=data)
    assert not pl._test_set_current(plan, "neon", None)
    assert pl._test_set_current(plan, "planet", None)
    assert "without their scene's veil" in pl.test_descriptions(plan)["neon"]["references"]
    assert "references" not in pl.test_descriptions(plan)["planet"]
