"""A restore stopped by SIGTERM (kill, a job scheduler, a container stopping) leaves nothing behind, as Ctrl-C."""

import signal
import subprocess
import sys
import time


def _command(*args) -> list[str]:
    """The command in a fresh Python process (the same interpreter and import path as the tests)."""
    return [sys.executable, "-m", "rsrestore.cli", "restore", *map(str, args), "-q"]


def test_sigterm_removes_the_scratch_file(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=1200, width=1200)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(_command(src, "-o", out_dir / "o.tif", "--method", "dcp", "--tile", "128"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out_dir.glob(".o.tif.*.scratch.tif")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the scratch file never appeared"
        time.sleep(0.05)
    time.sleep(0.5)  # into the tiles
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
