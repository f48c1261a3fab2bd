"""SIGINT and SIGTERM mid-run end `lrp evaluate` and `lrp check` as they end `lrp explain` (interrupts.py): one
line on stderr, exit 130 / 143, no traceback, no temporary file, and every file written whole."""

import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import REPO

SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


def _pictures(rgb_image, folder, count):
    folder.mkdir()
    picture = Image.open(rgb_image).resize((64, 64))
    for k in range(count):
        picture.save(folder / f"in{k:03d}.png")
    return folder


def _stop_when(args, ready, signum):
    """Runs `python -m lrp_cli ARGS`, sends `signum` once `ready()` holds (within 60 s); returns (exit code,
    stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "lrp_cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not ready(proc) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr.decode()


def _assert_interrupted(code, stderr, signum, expected):
    assert code == expected, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"error: interrupted by {signal.Signals(signum).name}; the files "
                                               "written so far are complete")


@pytest.mark.slow  # subprocesses: Python and onnxruntime start-up alone take seconds on a busy machine
@pytest.mark.parametrize("signum,code", SIGNALS)
def test_evaluate_stops_on_a_signal_and_writes_nothing(tiny_cnn_path, rgb_image, tmp_path, signum, code):
    data = _pictures(rgb_image, tmp_path / "data", 300)
    (data / "a-broken.png").write_bytes(b"not a png")  # sorted first: its error line says the run has begun
    out = tmp_path / "out"
    code_, stderr = _stop_when(["evaluate", data, "--model", tiny_cnn_path, "--methods", "lrp,gradient", "--steps",
                                "8", "--out", out, "--save-maps"],
                               lambda proc: b"a-broken.png" in proc.stderr.peek(), signum)
    _assert_interrupted(code_, stderr, signum, code)
    assert not out.exists() or not list(out.iterdir())  # the evaluation's files are written at its end only


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", SIGNALS)
def test_check_stops_on_a_signal_leaving_whole_evidence(tiny_cnn_path, rgb_image, tmp_path, signum, code):
    data = _pictures(rgb_image, tmp_path / "data", 300)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'model = "{tiny_cnn_path}"\n[[case]]\nname = "never"\ninputs = ["{data}/*.png"]\n'
                    '[[case.region]]\nname = "corner"\nbox = [0, 0, 0.25, 0.25]\nmin_positive_share = 1.0\n')
    evidence, junit = tmp_path / "evidence", tmp_path / "j.xml"
    code_, stderr = _stop_when(["check", spec, "--evidence", evidence, "--junit", junit],
                               lambda proc: any(evidence.rglob("in005.overlay.png")), signum)
    _assert_interrupted(code_, stderr, signum, code)
    names = [p.name for p in evidence.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    stems = {n.split(".")[0] for n in names}
    assert 5 <= len(stems) < 300 and all(f"{stem}.heatmap.png" in names and f"{stem}.overlay.png" in names
                                         for stem in stems)
    assert not junit.exists()  # the reports are written after the last case
