"""`rsrestore batch` on dask.distributed, and `restore` of several inputs through the same driver.

Scenes are tiny and restored with `dcp`. Tests that need worker processes share one LocalCluster of two workers
(module fixture) or start their own; every cluster, scheduler and worker process is ended in a teardown or `finally`,
and every test has a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _one_line_errors import user_error
from typer.testing import CliRunner

from rsrestore.batch import REPORT_NAME, BatchError, Scene, is_finished, local_cluster, plan_scenes, run_batch
from rsrestore.cli import app

pytestmark = pytest.mark.timeout(180)

runner = CliRunner()
FAST = dict(method="dcp", progress=False)
FAST_CLI = ["--method", "dcp", "-q"]


@pytest.fixture
def scenes(tmp_path, geotiff_factory):
    """A folder with two good scenes (one in a subfolder), a corrupt one and a truncated one."""
    folder = tmp_path / "scenes"
    (folder / "sub").mkdir(parents=True)
    geotiff_factory("scenes/a.tif", height=40, width=50, seed=1)
    geotiff_factory("scenes/sub/a.tif", height=30, width=45, seed=2)
    (folder / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    truncated, _ = geotiff_factory("scenes/truncated.tif", height=256, width=256, seed=3, tiled=True, blockxsize=64,
                                   blockysize=64, compress="deflate")
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def cluster():
    """The LocalCluster `rsrestore batch --workers 2` starts (its own start is tested through the command line in the
    Ctrl-C test), shared by this module's tests to pay the workers' start and imports once."""
    c = local_cluster(workers=2)
    try:
        yield c
    finally:
        c.close()


def _by_name(out: Path) -> dict[str, dict]:
    """The report's scenes keyed by their output path relative to the output folder."""
    report = json.loads((out / REPORT_NAME).read_text())
    return {Path(s["output"]).relative_to(out).as_posix(): s for s in report["scenes"]}


# --------------------------------------------------------------------------------------------------------------------
# Local cluster, bad scenes, report and exit status


@pytest.mark.slow
def test_batch_on_a_local_cluster_survives_bad_scenes(scenes, tmp_path, cluster):
    out = tmp_path / "out"
    r = runner.invoke(app, ["batch", str(scenes), "-o", str(out), "--scheduler", cluster.scheduler_address, *FAST_CLI])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["summary"] == {"done": 2, "skipped": 0, "failed": 2, "cancelled": 0, "total": 4}
    scenes_by_name = _by_name(out)
    assert scenes_by_name["a.tif"]["status"] == "done" and scenes_by_name["sub/a.tif"]["status"] == "done"
    for bad in ("corrupt.tif", "truncated.tif"):
        row = scenes_by_name[bad]
        assert row["status"] == "failed" and row["attempts"] == 1  # a bad input is not retried
        assert bad in row["reason"] and "\n" not in row["reason"]
        assert f"failed: {scenes / bad}" in r.output
    for row in report["scenes"]:
        assert row["method"] == "dcp" and row["seconds"] >= 0 and row["worker"]
    # The good scenes were restored; the bad ones left nothing behind, not even a hidden temporary.
    with rasterio.open(scenes / "sub" / "a.tif") as a, rasterio.open(out / "sub" / "a.tif") as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        assert not np.array_equal(a.read(), b.read())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.tif", REPORT_NAME, "sub", "sub/a.tif"]


@pytest.mark.slow
def test_rerun_skips_finished_scenes_and_overwrite_redoes_them(scenes, tmp_path, cluster):
    for bad in ("corrupt.tif", "truncated.tif"):
        (scenes / bad).unlink()
    out = tmp_path / "out"
    first = run_batch([scenes], out, scheduler=cluster.scheduler_address, **FAST)
    assert [s.status for s in first.scenes] == ["done", "done"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "a.tif", out / "sub" / "a.tif")}
    # A run that died while writing sub/a.tif leaves only a hidden temporary: it is not a finished output.
    (out / "sub" / "a.tif").unlink()
    (out / "sub" / ".a.tif.0123abcd.scratch.tif").write_bytes(b"II*\x00 half written")
    second = run_batch([scenes], out, scheduler=cluster.scheduler_address, **FAST)
    assert {Path(s.output).relative_to(out).as_posix(): s.status for s in second.scenes} == {
        "a.tif": "skipped", "sub/a.tif": "done"}
    assert (out / "a.tif").stat().st_mtime_ns == stamps[out / "a.tif"]
    assert is_finished(Scene(scenes / "sub" / "a.tif", out / "sub" / "a.tif"))
    # Something at the final name that is not a restore of the input is neither skipped nor replaced.
    (out / "a.tif").write_bytes(b"not a raster")
    third = run_batch([scenes], out, scheduler=cluster.scheduler_address, **FAST)
    assert [s.status for s in third.scenes] == ["failed", "skipped"]
    assert "not a finished restore" in third.scenes[0].reason and (out / "a.tif").read_bytes() == b"not a raster"
    redo = run_batch([scenes], out, scheduler=cluster.scheduler_address, overwrite=True, **FAST)
    assert [s.status for s in redo.scenes] == ["done", "done"]
    assert is_finished(Scene(scenes / "a.tif", out / "a.tif"))
    assert json.loads((out / REPORT_NAME).read_text())["summary"]["done"] == 2
    # Each worker process built the model once and reused it for its later scenes.
    from distributed import Client

    with Client(cluster.scheduler_address, timeout="20s") as client:
        builds = client.run(lambda: __import__("rsrestore.batch").batch._cached_model.cache_info())
    assert all(info.misses <= 1 for info in builds.values()) and sum(info.hits for info in builds.values()) >= 3


# --------------------------------------------------------------------------------------------------------------------
# A worker lost mid-run


def _run_in_thread(**kwargs):
    """run_batch in a thread (the test kills a worker meanwhile); returns the thread and a dict that gets the report."""
    box: dict = {}

    def target():
        try:
            box["report"] = run_batch(**kwargs)
        except BaseException as e:  # surfaced by the test's assertion on box
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _kill_worker_running(cluster, ready, before_kill=lambda: None, timeout: float = 60) -> None:
    """Once `ready()` says the other scenes are finished, the one scene left is blocked reading a FIFO on its worker:
    kill that worker's process."""
    from distributed import Client

    with Client(cluster.scheduler_address, timeout="20s") as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if keys]
            if len(busy) == 1 and ready():
                pid = client.run(os.getpid, workers=busy)[busy[0]]  # the worker's event loop answers while it waits
                before_kill()
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.1)
    raise AssertionError("the blocked scene never was the only one left")


@pytest.mark.slow
def test_a_lost_worker_s_scene_is_retried_elsewhere_and_finishes(tmp_path, geotiff_factory, cluster):
    folder = tmp_path / "scenes"
    folder.mkdir()
    geotiff_factory("scenes/a.tif", height=40, width=50, seed=1)
    geotiff_factory("scenes/b.tif", height=40, width=50, seed=2)
    slow = folder / "slow.tif"
    os.mkfifo(slow)  # opening it blocks until the test is done with the worker
    out = tmp_path / "out"

    def make_slow_scene_readable():  # the retry finds a real scene where the FIFO was
        slow.unlink()
        geotiff_factory("scenes/slow.tif", height=40, width=50, seed=3)

    thread, box = _run_in_thread(inputs=[folder], out_dir=out, scheduler=cluster.scheduler_address, retries=1, **FAST)
    try:
        _kill_worker_running(cluster, lambda: (out / "a.tif").exists() and (out / "b.tif").exists(),
                             before_kill=make_slow_scene_readable)
    finally:
        thread.join(120)
    assert not thread.is_alive() and "error" not in box, box
    rows = {Path(s.input).name: s for s in box["report"].scenes}
    assert [rows[n].status for n in ("a.tif", "b.tif", "slow.tif")] == ["done", "done", "done"]
    assert rows["slow.tif"].attempts == 2 and rows["a.tif"].attempts == 1
    assert is_finished(Scene(slow, out / "slow.tif"))


@pytest.mark.slow
def test_a_scene_that_loses_its_worker_more_than_retries_fails(tmp_path, cluster):
    folder = tmp_path / "scenes"
    folder.mkdir()
    os.mkfifo(folder / "slow.tif")
    out = tmp_path / "out"
    thread, box = _run_in_thread(inputs=[folder], out_dir=out, scheduler=cluster.scheduler_address, retries=0, **FAST)
    try:
        _kill_worker_running(cluster, lambda: True)
    finally:
        thread.join(120)
    assert not thread.is_alive() and "error" not in box, box
    (row,) = box["report"].scenes
    assert row.status == "failed" and row.reason.startswith("worker lost 1 time(s)") and row.attempts == 1
    assert json.loads((out / REPORT_NAME).read_text())["summary"]["failed"] == 1


def _processes_in_session(sid: int) -> list[int]:
    import psutil

    alive = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                alive.append(p.pid)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_writes_the_report_leaves_no_process_and_a_rerun_does_the_rest(tmp_path, geotiff_factory):
    folder = tmp_path / "scenes"
    folder.mkdir()
    geotiff_factory("scenes/a.tif", height=40, width=50, seed=1)
    os.mkfifo(folder / "slow.tif")  # never finishes: the run is still on it when Ctrl-C comes
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("rsrestore")), "batch", str(folder), "-o", str(out), "--method",
               "dcp", "--workers", "1", "--threads-per-worker", "2", "-q"]
    # Its own session, so that Ctrl-C can reach the whole process group as a terminal's does, and so that any
    # process it leaves behind can be found.
    # SIGINT at its default in the child whatever this test process inherited, so that Python turns it into Ctrl-C.
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "a.tif").exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(run.pid, signal.SIGINT)
        # Then the pipe's writer goes away, as a finished upload would, so that closing the cluster does not wait on
        # a worker thread blocked in open() of the pipe (after the run has had time to mark the scene cancelled).
        time.sleep(2.0)
        try:
            os.close(os.open(folder / "slow.tif", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader any more
            pass
        _, err = run.communicate(timeout=80)
        deadline = time.monotonic() + 30
        while _processes_in_session(run.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_in_session(run.pid)  # no worker process left behind
    finally:
        if run.poll() is None or _processes_in_session(run.pid):
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(30)
    assert run.returncode != 0 and "Traceback" not in err and "interrupted" in err
    assert _by_name(out)["slow.tif"]["status"] == "cancelled"
    # A rerun does only what is left: the scenes without a finished output (see the rerun test for the run itself).
    assert [s.input.name for s in plan_scenes([folder], out) if not is_finished(s)] == ["slow.tif"]


# --------------------------------------------------------------------------------------------------------------------
# A scheduler and a worker started by hand


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


@pytest.mark.slow
def test_batch_on_a_scheduler_and_worker_started_by_hand_from_a_list_file(tmp_path, geotiff_factory):
    from distributed import Client

    dask_cli = Path(sys.executable).with_name("dask")
    if not dask_cli.exists():
        pytest.skip(f"the dask command is not installed beside {sys.executable}")
    (tmp_path / "2023" / "01").mkdir(parents=True)
    (tmp_path / "2023" / "02").mkdir(parents=True)
    geotiff_factory("2023/01/scene.tif", height=40, width=50, seed=1)
    geotiff_factory("2023/02/scene.tif", height=30, width=40, seed=2)
    listing = tmp_path / "scenes.txt"
    listing.write_text("# this month's scenes\n2023/01/scene.tif\n\n2023/02/scene.tif\n")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
    processes = []
    try:
        processes.append(subprocess.Popen([str(dask_cli), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                           "--no-dashboard"], **quiet))
        processes.append(subprocess.Popen([str(dask_cli), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                           "--no-dashboard"], **quiet))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
        out = tmp_path / "out"
        r = runner.invoke(app, ["batch", str(listing), "-o", str(out), "--scheduler", address, *FAST_CLI])
        assert r.exit_code == 0, r.output
        rows = _by_name(out)
        assert {k: v["status"] for k, v in rows.items()} == {"2023/01/scene.tif": "done", "2023/02/scene.tif": "done"}
        assert all(row["worker"] and row["worker"] != address for row in rows.values())
        assert "2 done" in r.output
    finally:
        for p in reversed(processes):
            _stop(p)


def test_unreachable_scheduler_is_one_line(tmp_path, geotiff_factory):
    import dask

    geotiff_factory("a.tif", height=20, width=20)
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        r = runner.invoke(app, ["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"), "--scheduler",
                                f"tcp://127.0.0.1:{_free_port()}", *FAST_CLI])
    user_error(r, "cannot reach the Dask scheduler")


# --------------------------------------------------------------------------------------------------------------------
# Outputs: mirroring, collisions, list files


def test_outputs_mirror_the_folders_and_collisions_are_refused(tmp_path, geotiff_factory):
    for sub in ("scenes/x", "scenes/y", "loose1", "loose2"):
        (tmp_path / sub).mkdir(parents=True)
    for name in ("scenes/a.tif", "scenes/x/a.tif", "scenes/y/a.tif", "loose1/a.tif", "loose2/a.tif",
                 "loose1/b.tif"):
        geotiff_factory(name, height=20, width=20)
    (tmp_path / "scenes" / ".hidden.tif").write_bytes(b"temporary of another run")
    out = tmp_path / "out"
    plan = plan_scenes([tmp_path / "scenes", tmp_path / "loose1" / "b.tif"], out)
    assert [(s.input.relative_to(tmp_path).as_posix(), s.output.relative_to(out).as_posix()) for s in plan] == [
        ("scenes/a.tif", "a.tif"), ("scenes/x/a.tif", "x/a.tif"), ("scenes/y/a.tif", "y/a.tif"),
        ("loose1/b.tif", "b.tif")]
    # The same file named twice is one scene.
    assert len(plan_scenes([tmp_path / "scenes", tmp_path / "scenes" / "x"], out)) == 3
    assert len(plan_scenes([tmp_path / "loose1" / "b.tif", tmp_path / "loose1" / "b.tif"], out)) == 1
    with pytest.raises(BatchError, match="would both be written to"):
        plan_scenes([tmp_path / "loose1" / "a.tif", tmp_path / "loose2" / "a.tif"], out)
    with pytest.raises(BatchError, match="would both be written to"):
        plan_scenes([tmp_path / "scenes", tmp_path / "loose1" / "a.tif"], out)
    with pytest.raises(BatchError, match="would replace the input"):
        plan_scenes([tmp_path / "scenes"], tmp_path / "scenes")
    # The output folder inside an input folder is not searched: a rerun does not take outputs for inputs.
    inner = tmp_path / "scenes" / "restored"
    (inner / "x").mkdir(parents=True)
    shutil.copy(tmp_path / "scenes" / "a.tif", inner / "x" / "a.tif")
    assert len(plan_scenes([tmp_path / "scenes"], inner)) == 3
    # Through the CLI: one line, exit status 2, nothing written, before any cluster starts.
    r = runner.invoke(app, ["batch", str(tmp_path / "loose1" / "a.tif"), str(tmp_path / "loose2" / "a.tif"), "-o",
                            str(out), *FAST_CLI])
    user_error(r, "would both be written to")
    assert not out.exists()


def test_list_file_paths_are_relative_to_its_folder(tmp_path, geotiff_factory):
    (tmp_path / "data" / "2023").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    geotiff_factory("data/2023/a.tif", height=20, width=20)
    geotiff_factory("data/2023/b.tif", height=20, width=20)
    geotiff_factory("elsewhere/c.tif", height=20, width=20)
    listing = tmp_path / "data" / "list.lst"
    listing.write_text(f"2023/a.tif\n  # a comment\n{tmp_path / 'elsewhere' / 'c.tif'}\n2023\n")
    out = tmp_path / "out"
    plan = plan_scenes([listing], out)
    assert [s.output.relative_to(out).as_posix() for s in plan] == ["2023/a.tif", "c.tif", "2023/b.tif"]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(BatchError, match="names no path"):
        plan_scenes([tmp_path / "empty.txt"], out)


# --------------------------------------------------------------------------------------------------------------------
# restore with several inputs: the same driver, in this process


def test_restore_of_several_inputs_continues_past_a_bad_file(scenes, tmp_path):
    out = tmp_path / "out"
    good = tmp_path / "good.tif"
    shutil.copy(scenes / "a.tif", good)
    r = runner.invoke(app, ["restore", str(scenes / "corrupt.tif"), str(good), str(scenes / "sub"), "-o", str(out),
                            *FAST_CLI])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "good.tif"]
    assert f"failed: {scenes / 'corrupt.tif'}: cannot read" in r.output
    assert "3 scene(s): 2 done" in r.output and "1 failed" in r.output
    assert not (out / REPORT_NAME).exists()
    # An existing output is refused per scene (restore never skips), the others still run.
    (out / "good.tif").unlink()
    r = runner.invoke(app, ["restore", str(good), str(scenes / "sub"), "-o", str(out), *FAST_CLI])
    assert r.exit_code == 1 and "--overwrite" in r.output and (out / "good.tif").exists()
