"""The `rsrestore` command: a thin layer over the library (restore, evaluate, synthesize, train, models).

Errors a user can fix (a missing file, a bad option, an unknown method, a full disk, a damaged weights file) print
one line and exit with status 2; any other error is an internal error, one line and status 1. ``--debug`` shows the
traceback instead. Every error passes through one place, `_explain`, which sorts errors by what they mean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, NoReturn, Optional

import typer
from typer.core import TyperArgument, TyperGroup

from .errors import user_message
from .memory import DEFAULT_MAX_MEMORY_MB


def _is_command_line_exit(e: BaseException) -> bool:
    """An exit or usage error of typer (or of the click it builds on), which passes the edge untouched."""
    return any(cls.__module__.split(".")[0] in ("typer", "click") for cls in type(e).__mro__[:-2])


class _PlainArgument(TyperArgument):
    """An argument written the usual way in usage lines, ``INPUTS...`` or ``[NAME]``, where typer writes
    ``{inputs}...``."""

    def _rich_display_name(self) -> str:  # its name in the list of arguments
        name = self.metavar or (self.name or "").upper()
        return name + "..." if self.nargs != 1 and not name.endswith("...") else name

    def display_type_rich(self, ctx) -> None:  # no Python type beside it
        return None

    def get_usage_pieces(self, ctx) -> list[str]:
        name = self._rich_display_name()
        return [name if self.required else f"[{name}]"]


class _CommandLineEdge(TyperGroup):
    """The command line's edge: an error escaping any command is explained here (see `_explain`); every value a
    command takes is shown by name (``--root ROOT``) rather than by Python type (``<path>``, ``<list[str]>``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            for param in command.params:
                if isinstance(param, TyperArgument):
                    param.__class__ = _PlainArgument
                elif param.metavar is None and not getattr(param, "is_flag", False):
                    param.metavar = (param.name or "").upper()

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:  # KeyboardInterrupt and SystemExit are not Exceptions: Ctrl-C and signals pass
            if _is_command_line_exit(e):
                raise
            _explain(e)


app = typer.Typer(
    cls=_CommandLineEdge,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Restore remote-sensing images degraded by haze, sand-dust and clouds.\n\n"
    "Examples:\n\n"
    "  rsrestore restore scene.tif -o restored.tif\n\n"
    "  rsrestore restore a.tif b.png scenes/ -o out/ --method dcp --tile 512 --overlap 32\n\n"
    "  rsrestore evaluate --method input,dcp --dataset paired --root DIR --out report/\n\n"
    "  rsrestore models --json",
)

# Options of the whole command line, set by `_global_options` before any command runs.
_options = {"debug": False}


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error instead of one line."),
):
    _options["debug"] = debug
    _process_setup()


def _process_setup() -> None:
    """SIGTERM (kill, a job scheduler, a container stopping) unwinds the stack like Ctrl-C, so unfinished outputs
    remove their scratch files; warnings print as one line each."""
    import signal
    import threading
    import warnings

    def _terminate(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():  # Python installs handlers only there
        signal.signal(signal.SIGTERM, _terminate)
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _explain(e: Exception) -> NoReturn:
    """Report an error by what it means: one line and exit status 2 when the user can fix it (see
    `rsrestore.errors.user_message`), else one line calling it an internal error and exit status 1. With --debug
    the error propagates with its full traceback instead. Call only from an `except` block."""
    if _options["debug"]:
        raise
    message = user_message(e)
    if message is not None:
        _fail(message)
    lines = str(e).strip().splitlines()
    detail = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    typer.echo(f"internal error: {detail} (run with --debug for the traceback)", err=True)
    raise typer.Exit(1)


def _run(fn, *args, **kwargs):
    """Call library code; an error ends the command at once with its explanation (see `_explain`)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        if _is_command_line_exit(e):
            raise
        _explain(e)


def _device(name: str) -> str:
    from .models.registry import resolve_device

    return resolve_device(name)


@app.command()
def restore(
    inputs: List[Path] = typer.Argument(..., help="Raster files (GeoTIFF, PNG, JPEG), folders of them (searched "
                                        "recursively) and/or .txt/.lst files listing paths, one per line."),
    output: Path = typer.Option(..., "-o", "--output", help="Output file (one input) or folder (several inputs)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method name (see `rsrestore models`); "
                                         "default: the default method of --task (marked by `rsrestore models`)."),
    task: str = typer.Option("haze", help="haze | dust | cloud: picks the default method; auto: the recogniser "
                             "picks it per scene, dcp's omega from the severity (a clean scene is written unchanged; "
                             "see `rsrestore inspect`)."),
    weights: str = typer.Option("default", help="Weights file (.safetensors or .pth), or 'default' for bundled ones."),
    bands: Optional[str] = typer.Option(None, help="1-based bands to restore, e.g. 4,3,2; others pass through."),
    scale: Optional[float] = typer.Option(None, help="Divisor mapping file values to [0,1] (default by dtype: "
                                          "uint8 255, uint16 10000 in GeoTIFF / 65535 in PNG, float 1)."),
    sar: Optional[Path] = typer.Option(None, help="Co-registered Sentinel-1 SAR raster (VV, VH in dB) for SAR methods."),
    align: bool = typer.Option(False, help="Resample --sar onto the optical grid when the grids differ."),
    tile: int = typer.Option(512, help="Tile size in pixels (memory grows with it, not with the scene)."),
    overlap: int = typer.Option(32, help="Overlap between tiles, blended smoothly."),
    batch_size: int = typer.Option(4, help="Tiles per forward pass (at most; see --max-memory)."),
    max_memory: float = typer.Option(DEFAULT_MAX_MEMORY_MB, help="Peak memory of the process in MB on the CPU: "
                                     "fewer tiles per pass, and smaller tiles if need be, keep it under this. "
                                     "0: no limit."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, ... or auto."),
    amp: bool = typer.Option(False, help="bf16 autocast for learned models (about 2x faster on recent CPUs)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps of a diffusion method (dsrdmpd: 5, aspdiff: 10)."),
    seed: Optional[int] = typer.Option(None, help="Seed of a diffusion method's sampling noise (default 0); the "
                                       "same seed gives the same output."),
    clean_odds: Optional[float] = typer.Option(None, help="rsdehamba: a scene the recogniser reads clean at these "
                                               "odds or better comes back unchanged (bundled weights: 2, i.e. 2:1); "
                                               "0 restores every scene."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Restore hazy, dusty or cloudy scenes, keeping georeferencing, nodata and untouched bands.

    Examples:

      rsrestore restore scene.tif -o restored.tif

      rsrestore restore a.tif b.png scenes/ -o out/ --method dcp --tile 512 --overlap 32

      rsrestore restore s2.tif -o rgb_restored.tif --bands 4,3,2 --scale 10000
    """
    from .batch import RestoreOptions, plan_scenes, run_in_process, run_scenes, scene_model, takes_many
    from .models.registry import default_method, get_spec
    from .tiling import restore_file

    name = method or ("auto" if task == "auto" else _run(default_method, task))
    spec = None if name == "auto" else _run(get_spec, name)
    if spec is not None and spec.needs_sar and sar is None:
        _fail(f"{name} needs a co-registered SAR scene: pass --sar S1.tif")
    model_options = tuple((k, v) for k, v in (("steps", steps), ("seed", seed)) if v is not None)
    fields = set(getattr(spec.classes()[1], "__dataclass_fields__", {})) if spec is not None else set()
    if model_options:  # options of the model's config, which only diffusion methods have
        if not {k for k, _ in model_options} <= fields:
            _fail(f"--steps and --seed apply to diffusion methods (dsrdmpd, aspdiff), not to {name}; drop them")
        if steps is not None and steps < 1:
            _fail(f"--steps must be 1 or more, got {steps}")
        if seed is not None and seed < 0:
            _fail(f"--seed must be 0 or more, got {seed}")
    if clean_odds is not None:
        if "clean_odds" not in fields:
            _fail(f"--clean-odds applies to rsdehamba, not to {name}; drop it")
        if clean_odds < 0:
            _fail(f"--clean-odds must be 0 or more, got {clean_odds:g}")
        model_options += (("clean_odds", clean_odds),)
    options = RestoreOptions(method=name, weights=weights, bands=bands, scale=scale,
                             sar=None if sar is None else str(sar), align=align, tile=tile, overlap=overlap,
                             batch_size=batch_size, max_memory=max_memory or None, device=_device(device), amp=amp,
                             overwrite=overwrite, model_options=model_options)
    if not takes_many(inputs):  # one scene: any error ends the command with one line
        dst = output / inputs[0].name if output.is_dir() else output
        if name == "auto":  # the recogniser picks the method, or writes the scene unchanged (rsrestore.recognise)
            from .batch import Scene, restore_scene

            result = restore_scene(Scene(inputs[0], dst), options, resume=False, progress=not quiet)
            if result.status == "failed":
                _fail(result.reason)
            return _echo_scene(result)
        model, expected_bands = _run(scene_model, options)
        _run(restore_file, model, inputs[0], dst, bands=bands, scale=scale, sar=sar, align=align, tile=tile,
             overlap=overlap, batch_size=batch_size, device=options.device, amp=amp, overwrite=overwrite,
             progress=not quiet, expected_bands=expected_bands, max_memory=options.max_memory)
        typer.echo(f"{inputs[0]} -> {dst}  [{name}]")
        return
    # Several scenes: the same driver as `rsrestore batch`, run in this process; a failing scene does not stop the rest.
    scenes = _run(plan_scenes, inputs, output)
    if name != "auto":
        _run(scene_model, options)  # a bad method or weights file stops everything now, with one line
    output.mkdir(parents=True, exist_ok=True)
    report = run_scenes(scenes, options, run_in_process, resume=False, progress=False, on_result=_echo_scene,
                        tile_progress=not quiet)
    _finish(report)


def _echo_scene(result) -> None:
    if result.status == "failed":
        typer.echo(f"failed: {result.input}: {result.reason}", err=True)
        if _options["debug"] and result.traceback:
            typer.echo(result.traceback, err=True)
    else:
        said = f" ({result.decision['reason']})" if result.decision else ""
        typer.echo(f"{result.input} -> {result.output}  [{result.method}]{said}")


def _finish(report, report_path: Path | None = None) -> None:
    """Print a run's summary; exit status 1 when a scene failed."""
    where = f"; report: {report_path}" if report_path else ""
    typer.echo(report.summary() + where, err=bool(report.failed))
    for r in report.failed:
        typer.echo(f"  failed: {r.input}: {r.reason}", err=True)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def batch(
    inputs: List[Path] = typer.Argument(..., help="Raster files, folders (searched recursively) and/or text files "
                                        "(.txt, .lst) listing paths, one per line, relative to the list's folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder; outputs keep the inputs' subfolders, and "
                                "batch_report.json lists every scene."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method name (see `rsrestore models`); "
                                         "default: the default method of --task (marked by `rsrestore models`)."),
    task: str = typer.Option("haze", help="haze | dust | cloud: picks the default method; auto: the recogniser "
                             "picks it per scene, dcp's omega from the severity (a clean scene is written unchanged; "
                             "see `rsrestore inspect`)."),
    weights: str = typer.Option("default", help="Weights file (.safetensors or .pth), or 'default' for bundled ones."),
    bands: Optional[str] = typer.Option(None, help="1-based bands to restore, e.g. 4,3,2; others pass through."),
    scale: Optional[float] = typer.Option(None, help="Divisor mapping file values to [0,1] (default by dtype)."),
    tile: int = typer.Option(512, help="Tile size in pixels (a worker's memory grows with it, not with the scene)."),
    overlap: int = typer.Option(32, help="Overlap between tiles, blended smoothly."),
    batch_size: int = typer.Option(4, help="Tiles per forward pass."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, ... or auto (each worker picks its own)."),
    amp: bool = typer.Option(False, help="bf16 autocast for learned models."),
    scheduler: str = typer.Option("local", help="'local': worker processes on this machine; or the address of a "
                                  "running Dask scheduler, e.g. tcp://10.0.0.5:8786."),
    workers: Optional[int] = typer.Option(None, help="Local worker processes (default: one per CPU core)."),
    threads_per_worker: Optional[int] = typer.Option(None, help="Scenes each local worker restores at once "
                                                     "(default 1)."),
    retries: int = typer.Option(2, help="Times a scene runs again after its worker process was lost (killed, out of "
                                "memory); a bad input is never retried."),
    overwrite: bool = typer.Option(False, help="Redo every scene; by default scenes with a finished output are "
                                   "skipped."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Restore many scenes as tasks on Dask, on this machine or a cluster: resumable, with a report.

    A rerun skips scenes whose output is finished. A failing scene does not stop the others; the exit status is 1
    when any scene failed.

    Examples:

      rsrestore batch scenes/ -o restored/ --method dcp

      rsrestore batch list.txt -o restored/ --scheduler tcp://10.0.0.5:8786
    """
    from .batch import REPORT_NAME, run_batch

    try:
        report = _run(run_batch, inputs, output, method=method, task=task, weights=weights, bands=bands, scale=scale,
                      tile=tile, overlap=overlap, batch_size=batch_size, device=device, amp=amp, scheduler=scheduler,
                      workers=workers, threads_per_worker=threads_per_worker, retries=retries, overwrite=overwrite,
                      progress=not quiet, echo=lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:
        if (output / REPORT_NAME).exists():
            typer.echo(f"interrupted: {output / REPORT_NAME} says what was done; the same command does the rest",
                       err=True)
        raise
    _finish(report, output / REPORT_NAME)


@app.command("inspect")
def inspect_scene_command(
    scene: Path = typer.Argument(..., help="A raster file (GeoTIFF, PNG, JPEG)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    map_png: Optional[Path] = typer.Option(None, "--map", help="Write a PNG: the scene's thumbnail beside its "
                                           "per-tile class map, with a legend."),
    bands: Optional[str] = typer.Option(None, help="R,G,B band numbers (default: 1,2,3 for 3 or 4 bands, 4,3,2 for "
                                        "13-band Sentinel-2)."),
    scale: Optional[float] = typer.Option(None, help="Divisor mapping file values to [0,1] (default by dtype)."),
):
    """Say what degrades a scene -- clean, haze, dust, thin or thick cloud, with a severity in [0, 1] -- per tile too,
    and the facts of the file (size, bands, data type, CRS, nodata share, default scale).

    Examples:

      rsrestore inspect scene.tif

      rsrestore inspect s2.tif --json --map s2_map.png
    """
    from .recognise import check_map_path, format_inspection, inspect_scene, inspection_json, write_map

    if map_png is not None:
        _run(check_map_path, map_png)
    report, rgb, mask = _run(inspect_scene, scene, bands=bands, scale=scale, with_map=True)
    if map_png is not None:
        _run(write_map, report, rgb, mask, map_png)
    typer.echo(inspection_json(report) if as_json else format_inspection(report))


@app.command()
def evaluate(
    method: str = typer.Option(..., "--method", "-m", metavar="NAME[,NAME...]", help="Comma-separated methods; "
                               "'input' scores the degraded input itself (put it first: the first row of the table)."),
    dataset: str = typer.Option("paired", help="paired | satehaze1k | rice | rsid | sen12mscr | synthetic"),
    root: Path = typer.Option(..., help="Dataset root folder as downloaded."),
    out: Path = typer.Option(Path("report"), help="Folder for metrics.json, table.md, report.html and pictures."),
    split: Optional[str] = typer.Option(None, help="Split (train/valid/test) when the dataset has them; default: "
                                        "test (the output says which split was scored)."),
    weights: Optional[List[str]] = typer.Option(None, metavar="METHOD=PATH", help="METHOD=PATH (repeatable), or "
                                                "PATH for a single method."),
    option: Optional[List[str]] = typer.Option(None, "--option", metavar="KEY=VALUE", help="Dataset option "
                                               "KEY=VALUE (repeatable), e.g. "
                                               "subset=thick."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N images."),
    pictures: int = typer.Option(4, help="Comparison pictures for the first N images."),
    no_reference: bool = typer.Option(False, "--nr", help="Also compute NIQE and SSEQ (slower)."),
    tile: int = typer.Option(512, help="Tile size in pixels for the methods (memory grows with it, not with the image)."),
    overlap: int = typer.Option(32, help="Overlap between tiles, blended smoothly."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, ... or auto."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Score methods against references with PSNR, SSIM, CIEDE2000, MAE, SAM (and NIQE, SSEQ with --nr).

    Example:

      rsrestore evaluate --method input,dcp --dataset paired --root pairs/ --out report/
    """
    from .evaluate import evaluate as _evaluate
    from .evaluate import format_table

    methods = [m.strip() for m in method.split(",") if m.strip()]
    weight_map = _parse_weights(weights or [], methods)
    options = dict(_parse_kv(o) for o in (option or []))
    results = _run(_evaluate, methods, dataset, root, out, split=split, weights=weight_map, dataset_options=options,
                   device=_device(device), tile=tile, overlap=overlap, limit=limit, pictures=pictures,
                   no_reference=no_reference, progress=not quiet)
    typer.echo(format_table(results))
    scored = next(iter(results.values()))
    split_text = f"the {scored.split} split of " if scored.split else ""
    typer.echo(f"scored {len(scored.per_image)} image(s) of {split_text}{dataset} at {root}")
    typer.echo(f"report: {out / 'report.html'}")


def _parse_weights(items: list[str], methods: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
        else:
            learned = [m for m in methods if m != "input"]
            if len(learned) != 1:
                _fail("with several methods, give weights as METHOD=PATH")
            out[learned[0]] = item
    return out


def _parse_kv(item: str) -> tuple[str, object]:
    if "=" not in item:
        _fail(f"--option needs KEY=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    import yaml

    return k, yaml.safe_load(v)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")):
    """List the methods: task, input bands, SAR need, weights, which is the default per task, and the held-out
    scores of bundled weights beside the baseline's (PSNR/SSIM/CIEDE2000)."""
    from .models.registry import describe_models, format_held_out

    rows = describe_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'name':<10} {'task':<6} {'bands':<8} {'sar':<4} {'status':<13} weights")
    for r in rows:
        bands = r["bands"] if isinstance(r["bands"], str) else ",".join(map(str, r["bands"]))
        status = "default" if r["default_for_task"] else ("experimental" if r["experimental"] else "")
        typer.echo(f"{r['name']:<10} {r['task']:<6} {bands:<8} {'yes' if r['needs_sar'] else 'no':<4} "
                   f"{status:<13} {r['weights']}")
        if r["held_out"]:
            typer.echo(f"{'':<10} held out (PSNR/SSIM/CIEDE2000): {format_held_out(r['held_out'])}")
        if r["held_out_losses"]:
            typer.echo(f"{'':<10} shipped although they lose to the baseline on: {', '.join(r['held_out_losses'])}")
    typer.echo("\nA learned method becomes a task's default only when it beats the task's classical baseline on "
               "scenes from sources it never trained on and looks better on real degraded scenes.")


@app.command()
def synthesize(
    clean: List[Path] = typer.Argument(..., help="Clean images or folders of them (PNG, JPEG, GeoTIFF; any bands)."),
    out: Path = typer.Option(..., "-o", "--out", help="Dataset folder to write (paired layout + manifest.json)."),
    kind: str = typer.Option(..., help="haze | dust | cloud"),
    preset: Optional[str] = typer.Option(None, help="A preset or a group, drawn per sample. haze: thin|moderate|thick "
                                         "(group classic, the default), veil|patchy|bank|dense (group realistic); "
                                         "dust: light|moderate|heavy (classic), suspended|blowing|storm "
                                         "(realistic); cloud: thin|thick."),
    n: int = typer.Option(1000, help="Number of pairs."),
    size: int = typer.Option(256, help="Crop size in pixels."),
    seed: int = typer.Option(0, help="Seed: the same seed regenerates the dataset bit for bit."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset folder."),
    dark_object: bool = typer.Option(False, "--dark-object", help="Targets without their scene's veil: v, the "
                                     "lowest of the source file's per-band 0.1 % percentiles (path radiance, itself "
                                     "a thin haze), lifted as a white haze, (x - v) / (1 - v); the inputs are "
                                     "unchanged."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Synthesise degraded/clean pairs from clean imagery with the physics models.

    Writes input/, target/ (and phi/ for dust, mask/ for clouds) plus manifest.json with every sample's parameters.

    Example:

      rsrestore synthesize ../shared/data/neon -o dust_pairs --kind dust --n 500 --size 256 --seed 0
    """
    from .synthesize import synthesize_dataset

    sources = clean[0] if len(clean) == 1 else list(clean)
    path = _run(synthesize_dataset, sources, out, kind, preset=preset, n=n, size=size, seed=seed, progress=not quiet,
                overwrite=overwrite, dark_object=dark_object)
    typer.echo(f"wrote {n} {kind} pairs to {path}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML training config (see configs/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from the run's latest checkpoint."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="KEY=VALUE override, repeatable, e.g. "
                                                  "--set run.steps=1000 --set optim.lr=2e-4."),
    stage: Optional[str] = typer.Option(None, "--stage", help="With a config's pipeline section: run one stage "
                                        "(prepare, train, evaluate, export) instead of all."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Clean imagery for the pipeline (default "
                                             "$RSRESTORE_DATA, else ../shared/data)."),
    force_export: bool = typer.Option(False, "--force-export", help="Export the weights even when they do not beat "
                                      "the pipeline's baseline."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Train a model from a YAML config: checkpoints, exact --resume, EMA, validation, CSV log.

    A config with a `pipeline:` section (the configs/*_cpu.yaml that made the bundled weights) runs the whole
    pipeline: prepare the split and held-out sets from the clean imagery, train (resuming), evaluate against the
    baseline, write benchmarks/results/<table>.md/.json, and export the weights when they win. Each stage is skipped
    when its outputs are current.

    Examples:

      rsrestore train configs/aosrnet_dust_affine_cpu.yaml

      rsrestore train configs/apem_haze_cpu.yaml --stage prepare --data-root /data/clean

      rsrestore train configs/aosrnet_sanddust.yaml --set loss.params.lambda2=0

      torchrun --nproc_per_node 2 -m rsrestore.train configs/rsdehamba_satehaze1k_thick.yaml
    """
    from .train import train_from_config
    from .train.pipeline import STAGES, has_pipeline, run_pipeline

    if stage is not None and stage not in STAGES:
        _fail(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if _run(has_pipeline, config, overrides or []):
        result = _run(run_pipeline, config, overrides or [], stage=stage, data=data_root, force_export=force_export,
                      progress=not quiet, log=lambda message: typer.echo(message, err=True))
        if result.exported is not None:
            typer.echo(f"weights: {result.exported}")
        if result.table is not None:
            typer.echo(f"table: {result.table}")
        return
    if stage is not None or data_root is not None or force_export:
        _fail(f"--stage, --data-root and --force-export need a config with a pipeline section; {config} has none")
    result = _run(train_from_config, config, overrides or [], resume=resume)
    typer.echo(f"trained {result.step} steps in {result.wall_time_s:.0f} s; outputs in {result.out_dir}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Folder for the degraded, restored and comparison images."),
    seed: int = typer.Option(0, help="Seed of the synthetic degradation."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Degrade the bundled sample scenes, restore them, print PSNR/SSIM and write side-by-side pictures."""
    from .demo import format_rows, run_demo

    rows = _run(run_demo, out, seed=seed, progress=not quiet)
    typer.echo(format_rows(rows))
    typer.echo(f"pictures and rasters in {out}/")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
