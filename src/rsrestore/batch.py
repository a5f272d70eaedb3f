"""Restore many scenes: find them, give each its output, skip finished ones, run the rest, report every scene.

One driver, :func:`run_scenes`, serves both ways of running many scenes:

- ``rsrestore restore`` with several inputs runs them one after another in this process (:func:`run_in_process`);
- ``rsrestore batch`` runs each scene as one task on dask.distributed (:func:`run_on_dask`): a ``LocalCluster`` of
  worker processes sized to the machine, or an existing cluster addressed by its scheduler (``tcp://HOST:PORT``).

Each scene goes through the tiling engine (:func:`rsrestore.tiling.restore_file`), so a worker's memory stays near
one scene's tiles whatever the scene size, and each process builds the model once (:func:`scene_model`).

Outputs. A raster found in a folder argument keeps its path relative to that folder; a raster named in a list file
keeps its path relative to the list's folder when it lies beneath it; any other file keeps its name. Two different
inputs that would be written to one output are refused before any work starts (:class:`BatchError`).

Finished outputs. :class:`rsrestore.raster.RasterWriter` writes into a hidden temporary file and renames it to the
final name only once it is complete, so a file under the final name is a whole raster. A rerun counts an output as
finished when it exists under its final name, opens as a raster and has the input's width, height and band count
(:func:`is_finished`); such scenes are skipped unless ``overwrite``. An interrupted run leaves only hidden
temporaries, which never count.

Failures. A scene that fails (an unreadable or truncated input, a band count the method cannot take, a full disk ...)
is reported with a one-line reason and never retried: the same input would fail again. A scene whose worker process
was lost (killed, out of memory) is submitted again, up to ``retries`` times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import user_message
from .memory import DEFAULT_MAX_MEMORY_MB
from .raster import READABLE_EXTENSIONS, RasterError, open_raster

LIST_SUFFIXES = (".txt", ".lst")  # an input with one of these suffixes is a list of paths, one per line
REPORT_NAME = "batch_report.json"
STATUSES = ("done", "skipped", "failed", "cancelled")


class BatchError(ValueError):
    """Inputs or outputs that cannot make a batch (two inputs for one output, an empty folder ...), in one line."""


@dataclass(frozen=True)
class Scene:
    input: Path
    output: Path


@dataclass(frozen=True)
class RestoreOptions:
    """How every scene of a run is restored (the options of `rsrestore restore`)."""

    method: str
    weights: str = "default"
    bands: str | None = None
    scale: float | None = None
    sar: str | None = None
    align: bool = False
    tile: int = 512
    overlap: int = 32
    batch_size: int = 4
    max_memory: float | None = DEFAULT_MAX_MEMORY_MB  # MB a worker process stays under (None: batch_size tiles)
    device: str = "auto"
    amp: bool = False
    overwrite: bool = False
    model_options: tuple = ()  # model config overrides as (key, value) pairs, e.g. (("steps", 10), ("seed", 1))


@dataclass
class SceneResult:
    input: str
    output: str
    status: str  # one of STATUSES
    seconds: float
    method: str
    reason: str | None = None  # one line, for failed and skipped scenes
    attempts: int = 1  # runs of the scene (more than one when a worker was lost)
    worker: str | None = None  # the Dask worker that ran it
    traceback: str | None = None  # for errors that are not about the input: where in the code it happened
    decision: dict | None = None  # --task auto: what the recogniser saw and did (rsrestore.recognise.Decision)


@dataclass
class BatchReport:
    scenes: list[SceneResult]
    method: str
    scheduler: str
    seconds: float
    dashboard: str | None = None

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.scenes)

    @property
    def failed(self) -> list[SceneResult]:
        return [s for s in self.scenes if s.status == "failed"]

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in STATUSES if s != "cancelled" or self.count(s))
        return f"{len(self.scenes)} scene(s): {counts} in {self.seconds:.0f} s [{self.method}]"

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "scheduler": self.scheduler,
            "dashboard": self.dashboard,
            "seconds": round(self.seconds, 3),
            "summary": {s: self.count(s) for s in STATUSES} | {"total": len(self.scenes)},
            "scenes": [dataclasses.asdict(s) for s in self.scenes],
        }

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON; a temporary file renamed into place, so a reader never sees half a report."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path


# --------------------------------------------------------------------------------------------------------------------
# Finding the scenes and their outputs


def is_list_file(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def takes_many(inputs: Sequence[str | Path]) -> bool:
    """Whether `inputs` name several scenes (so the output is a folder): more than one, a folder or a list file."""
    return len(inputs) > 1 or any(Path(p).is_dir() or is_list_file(Path(p)) for p in inputs)


def find_rasters(inputs: Iterable[str | Path], exclude: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Every raster named by `inputs` (files, folders searched recursively, list files), each with its output path
    relative to the output folder. Folders under `exclude` (the output folder) are not searched."""
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, Path]] = []
    for arg in map(Path, inputs):
        if arg.is_dir():
            found += [(f, f.relative_to(arg)) for f in _walk(arg, skip)]
        elif is_list_file(arg):
            found += _read_list(arg, skip)
        else:
            found.append((arg, Path(arg.name)))
    return found


def _walk(folder: Path, skip: Path | None) -> list[Path]:
    """Rasters under `folder` in a stable order; hidden files and folders (e.g. temporaries of a run) are left out."""
    files = []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != skip)
        files += [root_path / n for n in sorted(names)
                  if not n.startswith(".") and Path(n).suffix.lower() in READABLE_EXTENSIONS]
    if not files:
        raise BatchError(f"no raster files ({', '.join(READABLE_EXTENSIONS)}) in folder {folder}")
    return files


def _read_list(list_file: Path, skip: Path | None) -> list[tuple[Path, Path]]:
    """Paths listed one per line (blank lines and lines starting with # are ignored), relative to the list's folder."""
    base = list_file.parent
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"cannot read the list of inputs {list_file}: {e}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise BatchError(f"the list of inputs {list_file} names no path")
    found: list[tuple[Path, Path]] = []
    for entry in entries:
        path = base / entry  # an absolute entry stays absolute
        if path.is_dir():
            root = base if path.resolve().is_relative_to(base.resolve()) else path
            found += [(f, f.resolve().relative_to(root.resolve())) for f in _walk(path, skip)]
        elif path.resolve().is_relative_to(base.resolve()):
            found.append((path, path.resolve().relative_to(base.resolve())))
        else:
            found.append((path, Path(path.name)))
    return found


def plan_scenes(inputs: Sequence[str | Path], out_dir: str | Path) -> list[Scene]:
    """The scenes of `inputs`, each with its output under `out_dir` (see the module docstring).

    The same input named twice is restored once. Two inputs that would be written to one output, or an output that
    would replace an input, are a BatchError naming them.
    """
    out_dir = Path(out_dir)
    scenes: list[Scene] = []
    seen_inputs: set[Path] = set()
    by_output: dict[Path, Path] = {}
    for src, rel in find_rasters(inputs, exclude=out_dir):
        key = src.resolve()
        if key in seen_inputs:
            continue
        seen_inputs.add(key)
        dst = out_dir / rel
        first = by_output.setdefault(dst.resolve(), src)
        if first is not src:
            raise BatchError(
                f"inputs {first} and {src} would both be written to {dst}; pass the folder that holds both (outputs "
                f"keep their subfolders) or restore them into different output folders"
            )
        scenes.append(Scene(src, dst))
    for s in scenes:
        if s.output.resolve() in seen_inputs:
            raise BatchError(f"output {s.output} would replace the input of that name; choose another output folder")
    return scenes


def is_finished(scene: Scene) -> bool:
    """Whether the scene's output is finished: it exists under its final name, opens as a raster and has the input's
    width, height and band count (see the module docstring)."""
    if not scene.output.is_file():
        return False
    try:
        with open_raster(scene.output) as out, open_raster(scene.input) as src:
            return (out.width, out.height, out.count) == (src.width, src.height, src.count)
    except (RasterError, OSError):
        return False


# --------------------------------------------------------------------------------------------------------------------
# One scene (the task)


def scene_model(options: RestoreOptions):
    """The model for `options` and the band counts it takes, built once per process and reused by its scenes.
    Device "auto" is decided here, so each Dask worker picks its own."""
    from .models.registry import resolve_device

    weights = options.weights
    stamp = None
    if weights not in (None, "default"):
        p = Path(weights)
        stamp = p.stat().st_mtime_ns if p.exists() else None  # weights replaced on disk are loaded again
    return _cached_model(options.method, weights, stamp, resolve_device(options.device), options.model_options)


@lru_cache(maxsize=4)
def _cached_model(method: str, weights: str | None, stamp: int | None, device: str, model_options: tuple = ()):
    from .models.registry import accepted_bands, get_spec, load_model

    model = load_model(method, weights=weights, device=device, **dict(model_options))
    return model, accepted_bands(get_spec(method), model)


def restore_scene(scene: Scene, options: RestoreOptions, *, resume: bool = True, progress: bool = False) -> SceneResult:
    """Restore one scene into its output. Never raises for a failing scene: the result says failed, and why.

    With `resume`, a finished output is skipped (a run that lost a worker may find its scene done by then) and an
    output that exists but is not finished is a failure rather than being replaced.
    """
    from .models.registry import resolve_device
    from .tiling import restore_file

    t0 = time.perf_counter()
    decision = None

    def result(status: str, reason: str | None = None, trace: str | None = None) -> SceneResult:
        return SceneResult(str(scene.input), str(scene.output), status, time.perf_counter() - t0, options.method,
                           reason, worker=_worker_address(), traceback=trace,
                           decision=None if decision is None else decision.as_dict())

    try:
        if resume and not options.overwrite and scene.output.exists():
            if is_finished(scene):
                return result("skipped", "a finished output exists")
            return result("failed", f"output {scene.output} exists but is not a finished restore of this input (it "
                                    f"does not open or differs in size); remove it or pass --overwrite")
        scene.output.parent.mkdir(parents=True, exist_ok=True)
        if options.method == "auto":  # --task auto: the recogniser picks this scene's method, or none
            from .recognise import route_scene

            decision, options = route_scene(scene, options)  # the method picked, at the strength the severity calls for
            if decision.method is None:
                return result("done", decision.reason)
        model, expected_bands = scene_model(options)
        restore_file(model, scene.input, scene.output, bands=options.bands, scale=options.scale, sar=options.sar,
                     align=options.align, tile=options.tile, overlap=options.overlap, batch_size=options.batch_size,
                     device=resolve_device(options.device), amp=options.amp, overwrite=options.overwrite,
                     progress=progress, expected_bands=expected_bands, max_memory=options.max_memory)
    except Exception as e:  # any failure belongs to this scene alone; the batch goes on
        return result("failed", *failure_reason(e))
    return result("done")


def failure_reason(e: BaseException) -> tuple[str, str | None]:
    """One line saying why a scene failed (`rsrestore.errors.user_message`), and the traceback when the error is not
    one a user can fix (a bug to report). Call from an `except` block."""
    message = user_message(e)
    if message is not None:
        return message, None
    lines = str(e).strip().splitlines()
    return (f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__), traceback.format_exc()


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not inside a Dask worker
        return None


# --------------------------------------------------------------------------------------------------------------------
# Executors: each yields (position in `scenes`, result) as scenes finish, and reports how many are running


def run_in_process(scenes: Sequence[Scene], options: RestoreOptions, *, resume: bool, tile_progress: bool = False,
                   on_running: Callable[[int], None] = lambda n: None) -> Iterator[tuple[int, SceneResult]]:
    """Scenes one after another in this process (the executor of `rsrestore restore` with several inputs)."""
    for i, scene in enumerate(scenes):
        on_running(1)
        yield i, restore_scene(scene, options, resume=resume, progress=tile_progress)
    on_running(0)


def run_on_dask(scenes: Sequence[Scene], options: RestoreOptions, *, client, resume: bool, retries: int = 2,
                on_running: Callable[[int], None] = lambda n: None,
                on_lost: Callable[[Scene, int], None] = lambda s, n: None) -> Iterator[tuple[int, SceneResult]]:
    """Each scene as one task on the cluster behind `client`; a scene whose worker was lost is submitted again up to
    `retries` times. Paths travel as absolute paths: workers may run in another folder."""
    from distributed import KilledWorker, TimeoutError, wait

    token = uuid.uuid4().hex[:8]
    absolute = dataclasses.replace(options, sar=None if options.sar is None else str(Path(options.sar).absolute()),
                                   weights=_absolute_weights(options.weights))
    attempts = [0] * len(scenes)
    index = {}

    def submit(i: int):
        attempts[i] += 1
        task = Scene(scenes[i].input.absolute(), scenes[i].output.absolute())
        future = client.submit(restore_scene, task, absolute, resume=resume, key=f"restore-{token}-{i}-{attempts[i]}",
                               pure=False)
        index[future.key] = i
        return future

    pending = {submit(i) for i in range(len(scenes))}
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            on_running(_running_tasks(client, token))
            for future in done:
                i = index.pop(future.key)
                try:
                    result = future.result()
                except KilledWorker:
                    if attempts[i] <= retries:
                        on_lost(scenes[i], attempts[i])
                        pending.add(submit(i))
                        continue
                    result = SceneResult(str(scenes[i].input), str(scenes[i].output), "failed", 0.0, options.method,
                                         f"worker lost {attempts[i]} time(s) while restoring this scene (retries: "
                                         f"{retries}); it may need more memory than a worker has")
                except Exception as e:  # the task could not run at all (e.g. rsrestore missing on the worker)
                    reason, trace = failure_reason(e)
                    result = SceneResult(str(scenes[i].input), str(scenes[i].output), "failed", 0.0, options.method,
                                         reason, traceback=trace)
                if result.status == "skipped":
                    # Its output was not finished when the run began: a worker lost after finishing the scene but
                    # before handing back its result (Dask then runs the task again), or another process, did it.
                    result.status, result.reason = "done", "finished by an earlier attempt or another process"
                result.attempts = attempts[i]
                yield i, result
    finally:
        if pending:  # interrupted: do not leave this run's tasks on a shared cluster
            client.cancel(list(pending))
    on_running(0)


def _absolute_weights(weights: str | None) -> str | None:
    return weights if weights in (None, "default") else str(Path(weights).absolute())


def _running_tasks(client, token: str) -> int:
    """Tasks of this run that workers say they are executing (from their heartbeats, so up to a second late).

    The scheduler's `processing` would overcount: it also holds tasks waiting in a worker's queue.
    """
    prefix = f"restore-{token}-"
    try:  # a lambda travels by value: the scheduler needs no rsrestore installed
        return client.run_on_scheduler(lambda dask_scheduler: sum(
            str(ts.key).startswith(prefix) for ws in dask_scheduler.workers.values() for ts in ws.executing))
    except Exception:  # a progress figure is not worth failing the run for
        return 0


# --------------------------------------------------------------------------------------------------------------------
# The driver


def run_scenes(scenes: Sequence[Scene], options: RestoreOptions, executor: Callable[..., Iterator], *,
               resume: bool, progress: bool = True, on_result: Callable[[SceneResult], None] | None = None,
               scheduler: str = "in-process", dashboard: str | None = None, report_path: str | Path | None = None,
               **executor_options) -> BatchReport:
    """Skip finished scenes (with `resume`), run the others with `executor` (:func:`run_in_process` or
    :func:`run_on_dask`, given its `client` among `executor_options`), and collect every scene's result in input order.

    Ctrl-C cancels the scenes not yet finished; they are reported as cancelled. The report is written to
    `report_path` when given, also after Ctrl-C.
    """
    t0 = time.perf_counter()
    results: list[SceneResult | None] = [None] * len(scenes)
    todo = []
    for i, scene in enumerate(scenes):
        if resume and not options.overwrite and is_finished(scene):
            results[i] = SceneResult(str(scene.input), str(scene.output), "skipped", 0.0, options.method,
                                     "a finished output exists", attempts=0)
        else:
            todo.append(i)
    bar = SceneBar(len(scenes), skipped=len(scenes) - len(todo), enabled=progress)
    try:
        for j, result in executor([scenes[i] for i in todo], options, resume=resume, on_running=bar.running,
                                  **executor_options):
            i = todo[j]
            results[i] = dataclasses.replace(result, input=str(scenes[i].input), output=str(scenes[i].output))
            bar.add(results[i])
            if on_result is not None:
                on_result(results[i])
    finally:
        bar.close()
        for i, scene in enumerate(scenes):
            if results[i] is None:
                results[i] = SceneResult(str(scene.input), str(scene.output), "cancelled", 0.0, options.method,
                                         "the run was interrupted", attempts=0)
        report = BatchReport([r for r in results if r is not None], options.method, scheduler,
                             time.perf_counter() - t0, dashboard)
        if report_path is not None:
            report.write(report_path)
    return report


class SceneBar:
    """One progress bar over scenes, with done / failed / running counts beside it."""

    def __init__(self, total: int, skipped: int, enabled: bool):
        self.counts = {"done": 0, "failed": 0, "running": 0, "skipped": skipped}
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=skipped, unit="scene", desc="scenes", dynamic_ncols=True)
            self._show()

    def running(self, n: int) -> None:
        if n != self.counts["running"]:
            self.counts["running"] = n
            self._show()

    def add(self, result: SceneResult) -> None:
        key = result.status if result.status in self.counts else "failed"
        self.counts[key] += 1
        if self.bar is not None:
            if result.status == "failed":
                self.bar.write(f"failed: {result.input}: {result.reason}")
            self.bar.update(1)
            self._show()

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(self.counts, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def local_cluster(workers: int | None = None, threads_per_worker: int | None = None):
    """A LocalCluster of worker processes: one per CPU core by default, each restoring one scene at a time.

    Its scheduler keeps a long queue of scenes to itself, handing a worker only as many as it has threads
    (worker-saturation 1.0; a batch of fewer than twice as many scenes as threads is handed out at once), so a lost
    worker takes few scenes with it; and it hands a lost worker's scenes straight back (allowed-failures 0), so
    `retries` alone counts the runs again. Worker processes start with one BLAS/OpenMP thread each (Dask's default),
    so they do not oversubscribe the cores.
    """
    import dask
    from distributed import LocalCluster

    n = workers or dask.system.CPU_COUNT
    settings = {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(settings), _children_ignore_ctrl_c():
        return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker or 1, processes=True,
                            silence_logs=logging.CRITICAL)


@contextlib.contextmanager
def _children_ignore_ctrl_c():
    """Processes started inside ignore SIGINT (a new Python keeps an ignored SIGINT ignored). Ctrl-C in a terminal
    reaches the whole process group; only this process should act on it (cancel, write the report, close the
    cluster), not every worker printing a KeyboardInterrupt traceback. Ctrl-C waits while the cluster starts."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_batch(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    method: str | None = None,
    task: str = "haze",
    weights: str = "default",
    bands: str | None = None,
    scale: float | None = None,
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    device: str = "auto",
    amp: bool = False,
    scheduler: str = "local",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> BatchReport:
    """Restore every scene of `inputs` into `out_dir` on dask.distributed and write ``out_dir/batch_report.json``.

    `scheduler` is "local" (a :func:`local_cluster` of `workers` processes with `threads_per_worker` threads) or the
    address of a running Dask scheduler (``tcp://HOST:PORT``), whose workers must reach the inputs and `out_dir` under
    the same paths. Finished outputs are skipped unless `overwrite` (see the module docstring).
    """
    from distributed import Client

    from .models.registry import default_method, get_spec, resolve_device

    name = method or ("auto" if task == "auto" else default_method(task))
    if name != "auto" and get_spec(name).needs_sar:
        raise BatchError(f"{name} needs each scene's SAR scene, which batch does not pair; use restore --sar per scene")
    if retries < 0:
        raise BatchError(f"--retries must be 0 or more, got {retries}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"output {out_dir} is a file; batch writes into a folder")
    scenes = plan_scenes(inputs, out_dir)
    options = RestoreOptions(method=name, weights=weights, bands=bands, scale=scale, tile=tile, overlap=overlap,
                             batch_size=batch_size, device=device, amp=amp, overwrite=overwrite)
    local = scheduler == "local"
    if not local and "://" not in scheduler:
        raise BatchError(f"--scheduler must be 'local' or a scheduler address like tcp://HOST:8786, got {scheduler!r}")
    # A bad method, weights file or config is one error now rather than one per scene. The device is checked here only
    # for a local cluster: a remote cluster's workers may have a GPU this machine lacks.
    if local:
        resolve_device(options.device)
    if name != "auto":
        scene_model(dataclasses.replace(options, device="cpu"))
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = local_cluster(workers, threads_per_worker) if local else None
    try:
        try:
            client = Client(cluster if local else scheduler)  # waits distributed.comm.timeouts.connect (30 s)
        except OSError as e:
            raise BatchError(f"cannot reach the Dask scheduler at {scheduler}: {failure_reason(e)[0]}") from None
        with client:
            n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
            where = f"local cluster ({n_workers} workers)" if local else f"{scheduler} ({n_workers} workers)"
            dashboard = client.dashboard_link or None
            if progress:
                echo(f"{len(scenes)} scene(s) on {where}" + (f"; dashboard: {dashboard}" if dashboard else ""))
                if not n_workers:
                    echo("the scheduler has no worker yet: scenes wait until one joins")

            def lost(scene: Scene, attempt: int) -> None:
                if progress:
                    from tqdm.auto import tqdm

                    tqdm.write(f"worker lost while restoring {scene.input}; retrying ({attempt}/{retries})")

            return run_scenes(scenes, options, run_on_dask, resume=True, progress=progress, scheduler=where,
                              dashboard=dashboard, report_path=out_dir / REPORT_NAME, client=client, retries=retries,
                              on_lost=lost)
    finally:
        if cluster is not None:
            cluster.close()
