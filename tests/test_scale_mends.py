"""Review mends of the batch machinery: --html reuses the batch's pictures (no input decoded twice), a batch
walks its output folder a fixed number of times whatever its size, and check's class names resolve directly."""

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lrp_cli import api, outputs
from lrp_cli.cli import main
from lrp_cli.errors import OptionError
from lrp_cli.kinds import onnx_model
from lrp_cli.preprocess import PreprocessConfig, fit_geometry
from test_batch import make_folder

RUN = CliRunner()


def _count_calls(monkeypatch, module, name):
    """Wraps module.name so that each call is recorded; returns the list of their first arguments."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_html_thumbnails_are_the_batchs_pictures_not_a_second_decode(tiny_cnn_path, tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", 3)
    np.save(data / "t.npy", np.zeros((1, 3, 16, 16), np.float32))
    loads = _count_calls(monkeypatch, onnx_model, "load_input")  # the decode of an image input
    out = tmp_path / "out"
    result = RUN.invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(out), "--html"])
    assert result.exit_code == 0, result.output
    assert sorted(map(str, loads)) == sorted(str(p) for p in data.iterdir())  # each input read once, in the batch
    for k in range(3):  # the thumbnail is the image as the model saw it: resized to the 16 x 16 input
        expected = fit_geometry(Image.open(data / f"im{k:03d}.png").convert("RGB"), PreprocessConfig(preset="unit"),
                                (16, 16))
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"im{k:03d}.input.png")), np.asarray(expected))
    assert "t.input.png" in (out / "index.html").read_text()  # a tensor is shown as the model saw it, too


def test_html_after_skip_existing_decodes_only_the_inputs_an_earlier_run_explained(tiny_cnn_path, tmp_path,
                                                                                    monkeypatch):
    data = make_folder(tmp_path / "data", 3)
    out = tmp_path / "out"
    assert RUN.invoke(main, ["explain", str(data / "im000.png"), "--model", str(tiny_cnn_path), "--out",
                             str(out)]).exit_code == 0  # no --html: no thumbnail yet
    loads = _count_calls(monkeypatch, onnx_model, "load_input")  # the decode of an image input
    result = RUN.invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(out), "--html",
                               "--skip-existing"])
    assert result.exit_code == 0, result.output
    assert sorted(map(str, loads)) == [str(data / name) for name in ("im000.png", "im001.png", "im002.png")]
    assert {p.name for p in out.glob("*.input.png")} == {"im000.input.png", "im001.input.png", "im002.input.png"}


def _folder_walks(monkeypatch, folder):
    """Returns the list that records every os.scandir of `folder` (what Path.glob and rglob call)."""
    walks, real = [], os.scandir
    target = os.path.abspath(folder)

    def counted(path="."):
        if os.path.abspath(path) == target:
            walks.append(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", counted)
    return walks


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_batch_walks_its_output_folder_a_fixed_number_of_times(tiny_cnn_path, tmp_path, monkeypatch, jobs):
    counts = []
    for count in (3, 12):
        data = make_folder(tmp_path / f"data{count}", count)
        out = tmp_path / f"out{count}"
        walks = _folder_walks(monkeypatch, out)
        result = RUN.invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(out),
                                   "--jobs", jobs])
        assert result.exit_code == 0, result.output
        counts.append(len(walks))
        monkeypatch.undo()
    assert counts[0] == counts[1] <= 4  # before: 3 per input (one per file written), O(N^2) in all


def test_a_batch_still_removes_a_killed_runs_temporaries(tiny_cnn_path, tmp_path):
    data = make_folder(tmp_path / "data", 2)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale = [out / ".im001.json.abcd1234.tmp", out / "sub" / ".x.png.abcd1234.tmp"]
    for path in stale:
        path.write_bytes(b"{")
    keep = [out / "notes.tmp", out / ".notes.txt.abcd1234.tmp"]  # not names write_all makes
    for path in keep:
        path.write_text("mine")
    assert RUN.invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(out)]).exit_code == 0
    assert not any(path.exists() for path in stale) and all(path.read_text() == "mine" for path in keep)
    assert not outputs._SWEPT  # the batch is over: single writes search again


def test_class_index_resolves_an_index_or_a_label_without_scores():
    assert api.class_index("7", None, None) == 7  # no labels: any index, the model says later if it has it
    assert api.class_index("Cat", 3, ["ant", "cat", "dog"]) == 1
    for spec, count, labels in (("-1", None, None), ("3", 3, ["a", "b", "c"]), ("cow", 3, ["a", "b", "c"])):
        with pytest.raises(OptionError):
            api.class_index(spec, count, labels)


def test_jobs_share_the_cores_between_their_onnxruntime_sessions(tiny_cnn_path, tmp_path, monkeypatch):
    from lrp_cli import batch
    from lrp_cli.engines import onnx_engine
    monkeypatch.setattr(batch, "CORES", 4)
    monkeypatch.setattr(onnx_engine, "_SESSIONS", {})
    data = make_folder(tmp_path / "data", 4)
    outs = {}
    for jobs in ("1", "2"):
        outs[jobs] = tmp_path / f"out{jobs}"
        result = RUN.invoke(main, ["explain", str(data), "--model", str(tiny_cnn_path), "--out", str(outs[jobs]),
                                   "--jobs", jobs, "--engine", "onnxruntime"])
        assert result.exit_code == 0, result.output
    threads = {key[2]: s.session.get_session_options().intra_op_num_threads
               for key, s in onnx_engine._SESSIONS.items()}
    assert threads == {0: 0, 2: 2}  # --jobs 1: onnxruntime's default; --jobs 2 on 4 cores: 2 each
    for path in outs["1"].glob("*.png"):
        assert path.read_bytes() == (outs["2"] / path.name).read_bytes()
