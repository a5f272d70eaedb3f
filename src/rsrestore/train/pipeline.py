"""One pipeline trains any bundled weights from a fresh clone: ``rsrestore train configs/X_cpu.yaml``.

A training config with a ``pipeline:`` section runs four stages, each skipped when its outputs exist and are
current (``--stage`` runs one):

``prepare``
    split the clean sources by scene (:mod:`rsrestore.train.sources`), write the split lists
    (``<work>/split/<part>_<source>.txt``), the link folders the training config reads, and the held-out test sets
    (:func:`rsrestore.synthesize.synthesize_dataset`, fixed seeds); or, for ``build: cloud_triplets``, the
    SEN12MS-CR-style triplets of :mod:`rsrestore.train.cloud_scenes`. Link folders that already hold exactly the
    planned links and test sets whose manifest matches their definition are left untouched.
``train``
    the configs of ``train_first``, each after its own ``train_first`` (their ``prepare`` too), then this config,
    through :func:`rsrestore.train.train` with resume: a finished run of the same model and length is kept, a
    stopped one continues.
``evaluate``
    the evaluator (:func:`rsrestore.evaluate.evaluate`) on every held-out set with the model and the ``compare``
    methods (each method's scores are kept per set and recomputed only when the weights, the set or the options
    change); then the verdict (:func:`verdict`) and the table ``<results>/<table>.{md,json}`` (:func:`write_table`).
``export``
    the weights and their metadata (sources, licences, held-out scores, verdict) into ``src/rsrestore/weights``,
    only when the verdict says they win (or with ``force_export``).

The data root is ``../shared/data`` from the project root (the working directory), ``$RSRESTORE_DATA``, or the
``--data-root`` option. A config without a ``pipeline:`` section trains exactly as before.

The ``pipeline:`` section (paths are relative to the project root; ``sources.*.path`` to the data root)::

    pipeline:
      weights: aosrnet_dust_rgb          # exported as src/rsrestore/weights/<weights>.{safetensors,json}
      task: dust                         # haze | dust | cloud: the degradation of the held-out sets
      method: aosrnet                    # default: model.name
      baseline: rop                      # the verdict: beat it on every deciding metric of every held-out set
      compare: [input, rop]              # methods scored beside the model (default: [input, <baseline>])
      deciding: [psnr, ssim, ciede2000]  # metrics of the verdict (directions from rsrestore.evaluate)
      work: runs/aosrnet_dust_cpu        # split lists (split/), held-out sets (heldout/), scores (eval/)
      eval: runs/aosrnet_dust_cpu/eval   # default <work>/eval
      table: aosrnet_dust_heldout        # benchmarks/results/<table>.{md,json}; default <weights>_heldout
      title: AOSR-Net on held-out synthetic sand-dust scenes
      paper: Si et al., ...              # recorded in the metadata
      notes: contrastive term off        # a sentence for the table and the metadata
      limits: ...                        # what the weights cannot do (table and metadata)
      train_first: []                    # configs trained before this one (e.g. a stage 1, an initialising model)
      restore_config: {}                 # model config values the scored and exported weights restore with
      evaluate: {pictures: 6}            # options of rsrestore.evaluate.evaluate (tile, overlap, no_reference, ...)
      sources:                           # the clean sources (see rsrestore.train.sources.SourceSpec)
        eurosat: {path: eurosat_rgb, split: by_position, train: [0, 900], val: [900, 950], test: [950, 1000],
                  exclude_list: low_contrast_std_lt8.txt, licence: MIT (EuroSAT, Helber et al.)}
        neon: {path: neon, split: by_folder, train: [HARV, OSBS], test: [TEAK, SJER_2017], unused: [SJER],
               test_min_size: 256, repeats: 220, licence: CC0 (NEON data policy)}
        naip: {path: naip, split: whole, use: train, repeats: 200, licence: public domain (USDA NAIP)}
        planet: {path: more_clean/planet_open_california, split: whole, use: test, tiles: 512, licence: ...}
      links:                             # link folders (relative to work): [<source>/<part>, ...]
        split/train: [eurosat/train, neon/train, naip/train]
        split/val: [eurosat/val]
      test_sets:                         # synthesised from a source's test files, or an existing folder (root)
        neon: {source: neon, n: 60, size: 256, seed: 20230915}       # kind: task; folder: <work>/heldout/<name>
        planet: {source: planet, n: 60, size: 256, seed: 20261201, folder: runs/other/heldout/planet}
        real: {root: "{data}/sen12mscr", dataset: sen12mscr, verdict: false}   # scored, not part of the verdict
      build: {kind: cloud_triplets, source: sentinel2, per_scene: 160, seed: 0}   # instead of links (clouds)
      #   with real_sar: sen12mscr, also <work>/test_real_sar: synthetic clouds over the cloud-free SEN12MS-CR
      #   patches with their real Sentinel-1 (a test set then reads it with root: <work>/test_real_sar)

A training file (resolved) that is also a validation or test file, in any source, is refused at ``prepare``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, _build, config_to_dict, load_config
from .sources import PARTS, SourceSpec, check_data_root, check_disjoint, data_root, link_folder, split_source

STAGES = ("prepare", "train", "evaluate", "export")
TASKS = ("haze", "dust", "cloud")
BUILDERS = ("cloud_triplets",)
# Column order of the tables; any other score the evaluator returns (e.g. a newly added metric) follows these.
COLUMN_ORDER = ("psnr", "ssim", "ciede2000", "mae", "sam", "psnr_rgb", "ssim_rgb", "mae_rgb", "sam_rgb", "niqe",
                "sseq", "gradient_ratio", "gradient_ratio_input", "checkerboard_ratio", "checkerboard_ratio_input")
LABELS = {"input": "degraded input", "dcp": "DCP (dark channel prior, classical)",
          "rop": "ROP (rank-one prior, classical)", "rsdehamba": "RSDehamba (bundled weights)"}


@dataclass
class TestSetSpec:
    """A held-out set: ``n`` crops of ``size`` synthesised (``kind``, default the task's) from the test files of
    ``source`` into ``folder`` (default ``<work>/heldout/<name>``), or an existing dataset at ``root`` (``{data}``
    is the data root) read as ``dataset`` (its ``split``: default the evaluator's, the test split of a dataset that
    has splits). ``verdict: false`` scores it without letting it decide; ``dark_object: true`` lifts each source
    file's veil off the references (see the ``synthetic`` dataset's option)."""

    source: str | None = None
    n: int | None = None
    size: int | None = None
    seed: int = 0
    kind: str | None = None
    preset: str | None = None
    scale: float | None = None
    bands: list[int] | None = None
    folder: str | None = None
    root: str | None = None
    dataset: str = "paired"
    split: str | None = None
    verdict: bool = True
    describe: str = ""
    dark_object: bool = False


@dataclass
class BuildSpec:
    """Built triplets instead of link folders (clouds): ``cloud_triplets`` from ``source``, and with ``real_sar`` (a
    source holding SEN12MS-CR patches) a held-out set of synthetic clouds over its cloud-free patches with their real
    Sentinel-1, in ``<work>/test_real_sar`` (:func:`~rsrestore.train.cloud_scenes.build_real_sar_set`)."""

    kind: str
    source: str
    per_scene: int = 160
    seed: int = 0
    real_sar: str | None = None


@dataclass
class PipelineSpec:
    weights: str
    task: str
    baseline: str
    work: str
    sources: dict[str, Any]
    test_sets: dict[str, Any]
    method: str | None = None
    compare: list[str] | None = None
    deciding: list[str] = field(default_factory=lambda: ["psnr", "ssim", "ciede2000"])
    eval: str | None = None
    table: str | None = None
    title: str = ""
    paper: str = ""
    notes: str = ""
    limits: str = ""
    links: dict[str, list[str]] = field(default_factory=dict)
    build: BuildSpec | None = None
    train_first: list[str] = field(default_factory=list)
    restore_config: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    results_dir: str = "benchmarks/results"
    weights_dir: str = "src/rsrestore/weights"

    def __post_init__(self) -> None:
        self.source_specs = {n: SourceSpec.parse(n, d, f"pipeline.sources.{n}") for n, d in self.sources.items()}
        self.test_specs = {n: _build(TestSetSpec, d, f"pipeline.test_sets.{n}") for n, d in self.test_sets.items()}

    @property
    def methods(self) -> list[str]:
        """The methods scored, the model last."""
        compare = self.compare if self.compare is not None else ["input", self.baseline]
        return [m for m in compare if m != self.method] + [self.method]


def higher_is_better(metric: str) -> bool | None:
    """The direction of a score of the evaluator (:func:`rsrestore.evaluate.higher_is_better`)."""
    from ..evaluate import higher_is_better as direction

    return direction(metric)


def parse_pipeline(data: Mapping[str, Any], model_name: str | None = None) -> PipelineSpec:
    """The ``pipeline:`` section as a :class:`PipelineSpec`, checked (unknown keys, unknown sources, a deciding
    metric without a direction); ``model_name`` fills ``method``."""
    spec = _build(PipelineSpec, data, "pipeline")
    if spec.method is None:
        spec.method = model_name
    if spec.task not in TASKS:
        raise ConfigError(f"pipeline.task: must be one of {', '.join(TASKS)}, got {spec.task!r}")
    if not spec.weights or Path(spec.weights).name != spec.weights:
        raise ConfigError(f"pipeline.weights: a plain file stem such as 'aosrnet_dust_rgb', got {spec.weights!r}")
    for m in spec.deciding:
        if higher_is_better(m) is None:
            raise ConfigError(f"pipeline.deciding: {m!r} has no known direction (higher or lower is better)")
    for folder, items in spec.links.items():
        for item in items:
            source, _, part = item.partition("/")
            if source not in spec.source_specs or part not in PARTS:
                raise ConfigError(f"pipeline.links.{folder}: {item!r} is not <source>/<part> with a source of "
                                  f"pipeline.sources and a part among {', '.join(PARTS)}")
    for name, t in spec.test_specs.items():
        where = f"pipeline.test_sets.{name}"
        if (t.source is None) == (t.root is None):
            raise ConfigError(f"{where}: give either source (synthesised) or root (an existing dataset)")
        if t.source is not None:
            if t.source not in spec.source_specs:
                raise ConfigError(f"{where}.source: {t.source!r} is not in pipeline.sources")
            if not t.n or not t.size:
                raise ConfigError(f"{where}: a synthesised set needs n and size")
    if spec.build is not None:
        if spec.build.kind not in BUILDERS:
            raise ConfigError(f"pipeline.build.kind: must be one of {', '.join(BUILDERS)}, got {spec.build.kind!r}")
        for key in ("source", "real_sar"):
            name = getattr(spec.build, key)
            if name is not None and name not in spec.source_specs:
                raise ConfigError(f"pipeline.build.{key}: {name!r} is not in pipeline.sources")
    if not any(t.verdict for t in spec.test_specs.values()):
        raise ConfigError("pipeline.test_sets: at least one held-out set must decide the verdict")
    return spec


# --------------------------------------------------------------------------------------------------------------------
# The plan: a config, its pipeline section and the resolved split


@dataclass
class Plan:
    """What a pipeline will read and write, resolved against the data root (nothing written yet)."""

    config_path: Path
    cfg: TrainConfig
    spec: PipelineSpec
    data: Path
    splits: dict[str, dict[str, list[Path]]]
    overrides: tuple[str, ...] = ()

    @property
    def work(self) -> Path:
        return Path(self.spec.work)

    @property
    def eval_dir(self) -> Path:
        return Path(self.spec.eval or self.work / "eval")

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.out_dir)

    @property
    def table_name(self) -> str:
        return self.spec.table or f"{self.spec.weights}_heldout"

    def test_folder(self, name: str) -> Path:
        t = self.spec.test_specs[name]
        if t.root is not None:
            return Path(t.root.replace("{data}", str(self.data)))
        return Path(t.folder) if t.folder else self.work / "heldout" / name

    def test_files(self, name: str) -> list[Path]:
        return self.splits[self.spec.test_specs[name].source]["test"]

    def display(self, path: Path) -> str:
        """A path as recorded in lists and tables: under the data root as the caller named it (``../shared/data/...``
        by default), else relative to the project root."""
        p = Path(path).resolve()
        for base, label in ((self.data.resolve(), f"{self.data.as_posix()}/"), (Path.cwd().resolve(), "")):
            try:
                return label + p.relative_to(base).as_posix()
            except ValueError:
                continue
        return str(path)


def has_pipeline(config: str | os.PathLike[str], overrides: Sequence[str] = ()) -> bool:
    return load_config(config, overrides, check_model=False).pipeline is not None


def make_plan(config: str | os.PathLike[str], overrides: Sequence[str] = (),
              data: str | os.PathLike[str] | None = None) -> Plan:
    """Read ``config`` and resolve its pipeline's sources against the data root (see :func:`sources.data_root`);
    a missing data root or source folder is a :class:`~rsrestore.train.sources.DataRootError` naming it."""
    cfg = load_config(config, overrides)
    if cfg.pipeline is None:
        raise ConfigError(f"{config} has no pipeline section: train it with `rsrestore train {config}` alone")
    spec = parse_pipeline(cfg.pipeline, cfg.model.name)
    root = data_root(data)
    check_data_root(root, [s.path for s in spec.source_specs.values()])
    splits = {name: split_source(s, root) for name, s in spec.source_specs.items()}
    check_disjoint(splits)
    for name, t in spec.test_specs.items():
        if t.source is not None and not splits[t.source]["test"]:
            raise ConfigError(f"pipeline.test_sets.{name}: the source {t.source!r} has no held-out files")
    return Plan(Path(config), cfg, spec, root, splits, tuple(overrides))


# --------------------------------------------------------------------------------------------------------------------
# prepare


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def _test_set_current(plan: Plan, name: str, files: Sequence[Path] | None) -> bool:
    """Whether the set's manifest matches its definition (and, when known, its number of clean files)."""
    t = plan.spec.test_specs[name]
    manifest = plan.test_folder(name) / "manifest.json"
    if not manifest.is_file():
        return False
    m = json.loads(manifest.read_text())
    want = {"kind": t.kind or plan.spec.task, "n": t.n, "size": t.size, "seed": t.seed, "preset": t.preset,
            "scale": t.scale, "bands": t.bands, "dark_object": t.dark_object}
    if any(m.get(k, False if k == "dark_object" else None) != v for k, v in want.items()):
        return False
    source = plan.spec.source_specs[t.source] if t.source else None
    if source is not None and source.tiles and _tiles_made(Path(m.get("clean_root", "")), source) != \
            _tiles_wanted(source):
        return False  # the tiles were cut another way (their size or the offset taken off)
    return files is None or m.get("num_sources") == len(files)


TILES_RECORD = "tiles.json"  # beside a held-out source's tiles: how they were cut


def _tiles_wanted(source: SourceSpec) -> dict:
    return {"tiles": source.tiles, "offset": float(source.offset)}


def _tiles_made(folder: Path, source: SourceSpec) -> dict:
    """How the tiles in ``folder`` were cut. Tiles cut before the record existed took no offset off (the option did not
    exist) and have the size the source asks for (no other was ever used)."""
    path = folder / TILES_RECORD
    return json.loads(path.read_text()) if path.is_file() else {"tiles": source.tiles, "offset": 0.0}


def _build_current(plan: Plan) -> bool:
    b = plan.spec.build
    manifest = plan.work / "manifest.json"
    if b is None or not manifest.is_file():
        return False
    from .cloud_scenes import COARSE_BANDS_RECORD, SAR_RECORD

    m = json.loads(manifest.read_text())
    # A build from before the known masks were kept lacks "masks", one from before the coarse bands were held in
    # blocks lacks "coarse_bands": both are made again.
    return m.get("seed") == b.seed and len(m.get("train", ())) == b.per_scene * len(m.get("scenes", {})) and \
        m.get("source") == Path(plan.spec.source_specs[b.source].path).name and m.get("sar") == SAR_RECORD and \
        "masks" in m and m.get("coarse_bands") == COARSE_BANDS_RECORD


def _build_real_sar(plan: Plan) -> str:
    """The real-Sentinel-1 held-out set of a cloud build, made unless its manifest says it is current."""
    from .cloud_scenes import build_real_sar_set, real_sar_record

    b, out = plan.spec.build, plan.work / "test_real_sar"
    root = plan.data / plan.spec.source_specs[b.real_sar].path
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("record") == real_sar_record(root, b.seed):
        return "current"
    shutil.rmtree(out, ignore_errors=True)
    build_real_sar_set(root, out, seed=b.seed)
    return "written"


def prepare(plan: Plan, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """The ``prepare`` stage: split lists, link folders (or built triplets) and held-out sets; returns what it did."""
    from ..synthesize import synthesize_dataset
    from .sources import valid_tiles

    log = log or _log
    spec, done = plan.spec, {}
    split_dir = plan.work / "split"
    for source, parts in plan.splits.items():
        for part in ("train", "val", "test"):
            if parts[part]:
                _write_if_changed(split_dir / f"{part}_{source}.txt",
                                  "".join(f"{plan.display(f)}\n" for f in parts[part]))
    unused = sorted(f for parts in plan.splits.values() for f in parts["unused"])
    _write_if_changed(split_dir / "unused.txt", "".join(f"{plan.display(f)}\n" for f in unused))
    for folder, items in spec.links.items():
        groups = []
        for item in items:
            source, _, part = item.partition("/")
            repeats = spec.source_specs[source].repeats if part == "train" else 1
            groups.append((source, plan.splits[source][part], repeats))
        changed = link_folder(plan.work / folder, groups, progress=progress)
        done[f"links {folder}"] = "written" if changed else "current"
    if spec.build is not None:
        from .cloud_scenes import build_cloud_triplets

        if _build_current(plan):
            done["build"] = "current"
        else:
            b = spec.build
            build_cloud_triplets(plan.data / spec.source_specs[b.source].path, plan.work, per_scene=b.per_scene,
                                 seed=b.seed, progress=progress)
            done["build"] = "written"
        if spec.build.real_sar is not None:
            done["build real_sar"] = _build_real_sar(plan)
    for name, t in spec.test_specs.items():
        if t.source is None:
            continue
        s = spec.source_specs[t.source]
        files = None if s.tiles else plan.test_files(name)
        if _test_set_current(plan, name, files):
            done[f"heldout {name}"] = "current"
            continue
        if s.tiles:  # cut the held-out source into nodata-free tiles first
            tiles_dir = plan.work / "sources" / t.source
            shutil.rmtree(tiles_dir, ignore_errors=True)
            tiles_dir.mkdir(parents=True)
            files = [tile for f in plan.test_files(name) for tile in valid_tiles(f, tiles_dir, s.tiles, s.offset)]
            (tiles_dir / TILES_RECORD).write_text(json.dumps(_tiles_wanted(s)) + "\n")
        synthesize_dataset(files, plan.test_folder(name), kind=t.kind or spec.task, preset=t.preset, n=t.n,
                           size=t.size, seed=t.seed, progress=progress, scale=t.scale, bands=t.bands, overwrite=True,
                           dark_object=t.dark_object)
        done[f"heldout {name}"] = "written"
    log("prepare: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return done


def prepared(plan: Plan) -> list[str]:
    """What the ``prepare`` stage has yet to write (folder names), for a clear error before training."""
    missing = [str(plan.work / f) for f in plan.spec.links if not (plan.work / f).is_dir()]
    if plan.spec.build is not None and not (plan.work / "manifest.json").is_file():
        missing.append(str(plan.work))
    if plan.spec.build is not None and plan.spec.build.real_sar is not None and \
            not (plan.work / "test_real_sar" / "manifest.json").is_file():
        missing.append(str(plan.work / "test_real_sar"))
    missing += [str(plan.test_folder(n)) for n, t in plan.spec.test_specs.items()
                if t.source is not None and not (plan.test_folder(n) / "manifest.json").is_file()]
    return missing


# --------------------------------------------------------------------------------------------------------------------
# train


def _producer(weights: Path, near: Path) -> Path | None:
    """The config (beside ``near``) whose run writes ``weights``, to name in an error."""
    for path in sorted(near.parent.glob("*.yaml")):
        try:
            cfg = load_config(path, check_model=False)
        except (ConfigError, OSError):
            continue
        if Path(cfg.run.out_dir) / "final.safetensors" == weights:
            return path
    return None


def _run_current(cfg: TrainConfig) -> bool:
    final = Path(cfg.run.out_dir) / "final.json"
    if not final.is_file():
        return False
    meta = json.loads(final.read_text())
    saved = meta.get("train_config") or {}
    return (cfg.run.steps is None or meta.get("steps") == cfg.run.steps) and \
        saved.get("model", {}).get("config") == config_to_dict(cfg)["model"]["config"]


def train_one(config: Path, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> None:
    """Train one config with resume, unless its finished run already matches it."""
    from .loop import train

    log = log or _log
    if _run_current(cfg):
        log(f"train {config}: up to date ({cfg.run.out_dir}/final.safetensors)")
        return
    init = cfg.model.init_weights
    if init and not Path(init).exists() and not (Path(cfg.run.out_dir) / "checkpoints" / "latest").exists():
        producer = _producer(Path(init), config)
        hint = f"; run `rsrestore train {producer}` first" if producer else ""
        raise FileNotFoundError(f"{init} not found (model.init_weights of {config}){hint}")
    result = train(cfg, resume=True)
    if not result.finished:
        raise RuntimeError(f"{config}: training stopped at step {result.step}/{result.total_steps}; rerun to resume")
    log(f"train {config}: step {result.step}/{result.total_steps} in {result.wall_time_s:.0f} s")


def train_stage(plan: Plan, progress: bool = True, log: Callable[[str], None] | None = None) -> None:
    """The ``train`` stage: the ``train_first`` configs, each after its own ``train_first`` (prepared first when they
    have a pipeline), then this one."""
    seen: set[Path] = set()

    def train_chain(dep: Path) -> None:
        if dep.resolve() in seen:  # a config two others start from trains once
            return
        seen.add(dep.resolve())
        dep_cfg = load_config(dep)
        if dep_cfg.pipeline is not None:
            dep_plan = make_plan(dep, data=plan.data)
            for first in dep_plan.spec.train_first:
                train_chain(Path(first))
            prepare(dep_plan, progress=progress, log=log)
        train_one(dep, dep_cfg, log)

    for dep in plan.spec.train_first:
        train_chain(Path(dep))
    missing = prepared(plan)
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: run `rsrestore train {plan.config_path} --stage prepare` "
                                "first")
    train_one(plan.config_path, plan.cfg, log)


# --------------------------------------------------------------------------------------------------------------------
# evaluate, verdict, table


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scored_weights(plan: Plan) -> Path:
    """The run's final weights, or (with ``restore_config``) a copy whose metadata sets those config values."""
    final = plan.run_dir / "final.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{final} not found: run `rsrestore train {plan.config_path} --stage train` first")
    if not plan.spec.restore_config:
        return final
    copy = plan.eval_dir / "scored.safetensors"
    copy.parent.mkdir(parents=True, exist_ok=True)
    if not copy.is_file() or _sha256(copy) != _sha256(final):
        shutil.copyfile(final, copy)
    meta = json.loads((plan.run_dir / "final.json").read_text())
    meta["config"] = meta["config"] | plan.spec.restore_config
    _write_if_changed(copy.with_suffix(".json"), json.dumps(meta, indent=2, default=str) + "\n")
    return copy


def _set_fingerprint(folder: Path) -> str:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return _sha256(manifest)
    listing = sorted(f"{p.relative_to(folder)}:{p.stat().st_size}" for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()


def evaluate_sets(plan: Plan, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Scores ``{set: {method: mean scores and n}}`` of every method on every held-out set. A method's scores on a set
    are kept in ``<eval>/<set>/scores.json`` and recomputed only when the set, the weights or the options change."""
    from ..evaluate import evaluate

    log = log or _log
    spec = plan.spec
    weights = scored_weights(plan)
    weights_sha = _sha256(weights)
    options = {"pictures": 6, "progress": progress} | spec.evaluate
    scores: dict = {}
    for name in spec.test_specs:
        folder = plan.test_folder(name)
        if not folder.is_dir() or (spec.test_specs[name].source and not (folder / "manifest.json").is_file()):
            raise FileNotFoundError(f"{folder} not found: run `rsrestore train {plan.config_path} --stage prepare` "
                                    "first")
        out = plan.eval_dir / name
        cache_path = out / "scores.json"
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        base = {"set": _set_fingerprint(folder), "split": spec.test_specs[name].split,
                "options": {k: v for k, v in options.items() if k != "progress"}}
        fps = {m: base | ({"weights": weights_sha, "restore_config": spec.restore_config} if m == spec.method else {})
               for m in spec.methods}
        todo = [m for m in spec.methods if cache.get(m, {}).get("fingerprint") != fps[m]]
        if todo:
            t = spec.test_specs[name]
            results = evaluate(todo, t.dataset, folder, out, split=t.split,
                               weights={spec.method: str(weights)} if spec.method in todo else None, **options)
            for m, r in results.items():
                cache[m] = {"fingerprint": fps[m], "scores": r.mean | {"n": len(r.per_image)}}
            out.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache, indent=2) + "\n")
        log(f"evaluate {name}: " + (f"scored {', '.join(todo)}" if todo else "up to date"))
        scores[name] = {m: cache[m]["scores"] for m in spec.methods}
    return scores


def _better(a: float, b: float, metric: str) -> bool:
    return a > b if higher_is_better(metric) else a < b


def verdict(scores: Mapping[str, Mapping[str, Mapping[str, float]]], method: str, baseline: str,
            deciding: Sequence[str], deciding_sets: Sequence[str] | None = None) -> dict:
    """Whether ``method`` beats ``baseline`` on every ``deciding`` metric of every deciding held-out set (all sets
    by default), with the same comparison against every other method scored, for the record."""
    sets = list(scores) if deciding_sets is None else list(deciding_sets)
    others = [m for m in next(iter(scores.values())) if m != method]
    vs = {other: {s: {k: _better(scores[s][method][k], scores[s][other][k], k) for k in deciding
                      if k in scores[s][method] and k in scores[s][other]} for s in sets}
          for other in others}
    for s in sets:
        missing = [k for k in deciding if k not in vs[baseline][s]]
        if missing:
            raise ValueError(f"held-out set {s}: no {', '.join(missing)} score for {method} or {baseline}")
    out = {"wins": all(all(row.values()) for row in vs[baseline].values()), "baseline": baseline,
           "deciding_metrics": list(deciding), "deciding_sets": sets}
    for other, table in vs.items():
        out[f"beats_{other}_on_all"] = all(all(row.values()) for row in table.values())
        out[f"vs_{other}"] = table
    return out


def plan_verdict(plan: Plan, scores: Mapping) -> dict:
    spec = plan.spec
    return verdict(scores, spec.method, spec.baseline, spec.deciding,
                   [n for n, t in spec.test_specs.items() if t.verdict])


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


def _columns(table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    common = set.intersection(*(set(k for k, v in row.items() if isinstance(v, (int, float)) and k != "n")
                                for row in table.values()))
    return [k for k in COLUMN_ORDER if k in common] + sorted(common - set(COLUMN_ORDER))


def score_table(table: Mapping[str, Mapping[str, float]], labels: Mapping[str, str]) -> list[str]:
    """Markdown lines of one held-out set: a row per method, a column per score all rows have."""
    cols = _columns(table)
    from ..evaluate import metric_arrow

    lines = ["| method | " + " | ".join(c + metric_arrow(c) for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for m, row in table.items():
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return lines


def describe_source_part(spec: SourceSpec, part: str) -> str:
    if spec.split == "by_position":
        a, b = getattr(spec, part)
        return f"{spec.path} positions {a}-{b - 1} of each folder"
    if spec.split == "by_folder":
        return f"{spec.path} folders {', '.join(getattr(spec, part))}"
    return f"{spec.path} (whole source" + (", never trained on)" if part == "test" else ")")


def test_descriptions(plan: Plan) -> dict:
    out = {}
    for name, t in plan.spec.test_specs.items():
        d = {"folder": plan.display(plan.test_folder(name)), "dataset": t.dataset, "decides": t.verdict}
        if t.source is not None:
            s = plan.spec.source_specs[t.source]
            frm = describe_source_part(s, "test") + (f", plots >= {s.test_min_size} px" if s.test_min_size else "")
            if s.tiles:
                frm += f", {s.tiles}-px tiles without nodata"
                if s.offset:
                    frm += f", less {s.offset:g} (the product's calibration offset)"
            d |= {"images": t.n, "size": t.size, "seed": t.seed, "kind": t.kind or plan.spec.task,
                  "presets": t.preset or "classic, drawn per image", "scale": t.scale,
                  "clean_files": len(plan.test_files(name)), "from": frm}
            if t.dark_object:
                d["references"] = ("without their scene's veil (the lowest of the source file's per-band 0.1 % "
                                   "percentiles, lifted as a white haze)")
        if t.describe:
            d["describe"] = t.describe
        out[name] = d
    return out


def data_description(plan: Plan) -> dict:
    """Where the training and test images came from, with licences and counts (the weights' metadata)."""
    sources = {}
    for name, s in plan.spec.source_specs.items():
        counts = {p: len(plan.splits[name][p]) for p in PARTS if plan.splits[name][p]}
        sources[name] = {"path": f"{{data}}/{s.path}", "licence": s.licence, "split": s.split, "counts": counts,
                         "repeats_in_training": s.repeats} | ({"note": s.note} if s.note else {})
    held_out_sources = [n for n, c in sources.items() if set(c["counts"]) == {"test"}]
    return {"data_root": "{data} = ../shared/data (or $RSRESTORE_DATA)", "sources": sources,
            "held_out_sources": held_out_sources, "held_out_test": test_descriptions(plan),
            "licences": {n: s.licence for n, s in plan.spec.source_specs.items() if s.licence},
            "split_lists": f"{plan.display(plan.work / 'split')}/*.txt, written by "
                           f"`rsrestore train {plan.config_path} --stage prepare`"}


def _run_meta(plan: Plan) -> dict:
    path = plan.run_dir / "final.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_table(plan: Plan, scores: Mapping, decision: Mapping) -> tuple[Path, Path]:
    """``<results>/<table>.md`` and ``.json``: every held-out set's scores, the verdict, the training summary."""
    from ..metrics.full_reference import CONVENTIONS

    spec, meta = plan.spec, _run_meta(plan)
    out = Path(spec.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    tests = test_descriptions(plan)
    labels = LABELS | {spec.method: f"{spec.method} (these weights)"}
    tc = meta.get("train_config") or config_to_dict(plan.cfg)
    training = (f"{meta.get('steps')} steps of batch {meta.get('global_batch_size')} in "
                f"{meta.get('wall_time_s', 0) / 60:.1f} min; model config {json.dumps(meta.get('config'))}; "
                f"Adam lr {tc['optim']['lr']:g}, {tc['schedule']['name']} schedule" if meta else "not trained yet")
    if spec.restore_config:
        training += f"; restores with {json.dumps(spec.restore_config)}"
    yes = "**yes**" if decision["wins"] else "**no**"
    lines = [f"# {spec.title or spec.weights + ' on held-out sets'}", "",
             f"Weights `{spec.weights}.safetensors` ({spec.method}): {training}.",
             "Scores: data range 1, Gaussian SSIM (window 11, sigma 1.5), CIEDE2000 on sRGB->Lab, SAM in degrees, "
             "mean over images; outputs clamped to [0, 1]. Written by `rsrestore train "
             f"{plan.config_path.as_posix()}` (rsrestore.train.pipeline).", ""]
    if spec.notes:
        lines += [spec.notes, ""]
    lines += [f"Beats {spec.baseline} on {', '.join(spec.deciding)} on every deciding set: {yes} (the condition for "
              "shipping the weights).", ""]
    for name, table in scores.items():
        t = tests[name]
        n = next(iter(table.values())).get("n")
        head = (f"{n} crops of {t['size']}x{t['size']} from {t['from']}" if "from" in t
                else f"{n} images: {t.get('describe') or t['folder']}")
        if "references" in t:
            head += f"; references {t['references']}"
        lines += [f"## {name}: {head}" + ("" if t["decides"] else " (recorded, not deciding)"), ""]
        lines += score_table(table, labels)
        worse = [k for k, ok in decision[f"vs_{spec.baseline}"].get(name, {}).items() if not ok]
        if name in decision["deciding_sets"]:
            lines += ["", f"{spec.method} vs {spec.baseline} here: " +
                      (f"better on {', '.join(spec.deciding)}" if not worse else f"not better on {', '.join(worse)}")]
        lines.append("")
    if spec.limits:
        lines += ["## What these weights cannot do", "", spec.limits, ""]
    md = out / f"{plan.table_name}.md"
    md.write_text("\n".join(lines))
    js = out / f"{plan.table_name}.json"
    js.write_text(json.dumps({
        "weights": f"{spec.weights}.safetensors", "method": spec.method, "config": meta.get("config"),
        "restore_config": spec.restore_config, "steps": meta.get("steps"), "wall_time_s": meta.get("wall_time_s"),
        "train_config": plan.config_path.as_posix(), "test_sets": tests, "scores": scores, "decision": decision,
        "conventions": CONVENTIONS, "licences": data_description(plan)["licences"], "notes": spec.notes,
        "limits": spec.limits, "load_average": list(os.getloadavg()),
    }, indent=2, default=str) + "\n")
    return md, js


# --------------------------------------------------------------------------------------------------------------------
# export


def export(plan: Plan, scores: Mapping, decision: Mapping) -> Path:
    """Copy the run's final weights into ``weights_dir`` with their metadata: the trainer's record plus the data
    (sources, licences, split counts, held-out sets), the held-out scores beside the other methods', the verdict."""
    from ..models.registry import sha256_of
    from .checkpoint import atomic_write_bytes, export_weights

    spec = plan.spec
    dst = export_weights(plan.run_dir, spec.weights_dir, spec.weights)
    meta_path = dst.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["val_scores"] = meta.pop("scores", None)
    meta["config"] = meta["config"] | spec.restore_config
    meta.update({
        "method": spec.method, "task": spec.task, "data": data_description(plan),
        "scores": {name: table[spec.method] for name, table in scores.items()},
        "baseline_scores": {name: {m: row for m, row in table.items() if m != spec.method}
                            for name, table in scores.items()},
        "heldout_decision": dict(decision), "limits": spec.limits, "notes": spec.notes,
        "trained_with": f"rsrestore train {plan.config_path.as_posix()}"
                        + (f" (after {', '.join(spec.train_first)})" if spec.train_first else ""),
        "paper": spec.paper,
    })
    if meta["sha256"] != sha256_of(dst):
        raise RuntimeError("exported weights do not match their recorded sha256")
    atomic_write_bytes(meta_path, (json.dumps(meta, indent=2, default=str) + "\n").encode())
    return dst


def _export_current(plan: Plan, scores: Mapping) -> bool:
    dst = Path(plan.spec.weights_dir) / f"{plan.spec.weights}.safetensors"
    meta = dst.with_suffix(".json")
    if not (dst.is_file() and meta.is_file()):
        return False
    m = json.loads(meta.read_text())
    current = {name: table[plan.spec.method] for name, table in scores.items()}
    return _sha256(dst) == _sha256(plan.run_dir / "final.safetensors") and m.get("scores") == current


# --------------------------------------------------------------------------------------------------------------------
# all stages


@dataclass
class PipelineResult:
    stages: list[str]
    scores: dict | None = None
    decision: dict | None = None
    table: Path | None = None
    exported: Path | None = None
    messages: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_pipeline(config: str | os.PathLike[str], overrides: Sequence[str] = (), *, stage: str | None = None,
                 data: str | os.PathLike[str] | None = None, force_export: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> PipelineResult:
    """Run the stages of ``config``'s pipeline (all, or one: ``stage``); see the module docstring."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    log = log or _log
    plan = make_plan(config, overrides, data)
    stages = list(STAGES) if stage is None else [stage]
    result = PipelineResult(stages)
    if "prepare" in stages:
        prepare(plan, progress, log)
    if "train" in stages:
        train_stage(plan, progress, log)
    if "evaluate" in stages or "export" in stages:
        result.scores = evaluate_sets(plan, progress, log)
        result.decision = plan_verdict(plan, result.scores)
        result.table, _ = write_table(plan, result.scores, result.decision)
        wins = result.decision["wins"]
        log(f"verdict: {plan.spec.method} {'beats' if wins else 'does not beat'} {plan.spec.baseline} on "
            f"{', '.join(plan.spec.deciding)} on every deciding held-out set; table {result.table}")
    if "export" in stages:
        if not (result.decision["wins"] or force_export):
            log(f"export: skipped (the weights do not beat {plan.spec.baseline}; --force-export exports anyway)")
        elif _export_current(plan, result.scores):
            log("export: up to date")
            result.exported = Path(plan.spec.weights_dir) / f"{plan.spec.weights}.safetensors"
        else:
            result.exported = export(plan, result.scores, result.decision)
            log(f"export: {result.exported}")
    return result


__all__ = ["STAGES", "PipelineResult", "PipelineSpec", "Plan", "TestSetSpec", "data_description", "evaluate_sets",
           "export", "has_pipeline", "make_plan", "parse_pipeline", "plan_verdict", "prepare", "run_pipeline",
           "scored_weights", "train_stage", "verdict", "write_table"]
