"""Shared test helpers: tiny ONNX models built in memory, and access to ../shared when it is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def compiled_graph_cache(tmp_path_factory):
    """Keeps the compiled engine's graphs in a temporary folder shared by the whole session."""
    folder = tmp_path_factory.mktemp("lrp-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("LRP_CLI_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


def shared_path(*parts: str) -> Path:
    """Returns a path under ../shared, skipping the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only beside the repository on development machines and CI)")
    return path


def onnx_model(nodes, input_shape, output_name="y", initializers=None, opset=13, input_name="x",
               output_shape=None) -> onnx.ModelProto:
    """Returns an ONNX model of the given nodes with one float input and one float output."""
    inits = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Writes the model and returns its path."""
    onnx.save(model, str(path))
    return path


def tiny_cnn(seed: int = 0, softmax: bool = True) -> onnx.ModelProto:
    """Returns a small random Conv-BN-ReLU-MaxPool-Dense classifier on 1x3x16x16 inputs with 4 classes."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = {
        "w1": rng.standard_normal((6, 3, 3, 3)).astype(f32) * 0.5, "b1": rng.standard_normal(6).astype(f32) * 0.1,
        "g": rng.uniform(0.5, 1.5, 6).astype(f32), "beta": rng.standard_normal(6).astype(f32) * 0.1,
        "mean": rng.standard_normal(6).astype(f32) * 0.1, "var": rng.uniform(0.5, 1.5, 6).astype(f32),
        "w2": rng.standard_normal((6 * 8 * 8, 4)).astype(f32) * 0.1, "b2": rng.standard_normal(4).astype(f32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flatten"),
        helper.make_node("MatMul", ["f1", "w2"], ["m2"], name="fc"),
        helper.make_node("Add", ["m2", "b2"], ["logits" if not softmax else "l2"], name="fc_bias"),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["l2"], ["logits"], name="softmax", axis=1))
    return onnx_model(nodes, [1, 3, 16, 16], "logits", inits)


@pytest.fixture
def tiny_cnn_path(tmp_path) -> Path:
    """Returns the path of a saved tiny CNN with a sidecar (unit preset, four labels)."""
    path = save_model(tiny_cnn(), tmp_path / "tiny.onnx")
    (tmp_path / "tiny.lrp.toml").write_text(
        'preset = "unit"\nlabels = ["ant", "bee", "cat", "dog"]\ncomposite = "epsilon-plus-flat"\n')
    return path


@pytest.fixture
def rgb_image(tmp_path) -> Path:
    """Returns the path of a 20x24 RGB PNG with some structure."""
    from PIL import Image
    yy, xx = np.mgrid[0:20, 0:24]
    pixels = np.stack([xx * 10, yy * 12, (xx + yy) * 5], axis=-1).astype(np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(pixels).save(path)
    return path


def compiled_relevance(model: onnx.ModelProto, x: np.ndarray, method: str = "lrp", rules: dict | None = None):
    """Returns target -> the input relevance of the compiled engine for an in-memory ONNX model and input x
    (float32; `rules` maps a node name, or "*" for every other linear node, to a rule object; a MaxPool node
    named in `rules` gets its tie rule)."""
    import onnxruntime as ort

    from lrp_cli.engines.onnx_compiler import compile_relevance
    from lrp_cli.importers.onnx_import import import_onnx
    graph = import_onnx(Path("<memory>"), model=model)
    rules = rules or {}
    node_rules = {n.name: rules.get(n.name, rules.get("*")) for n in graph.linear_nodes()} if method == "lrp" else {}
    if method == "lrp":
        node_rules |= {name: rule for name, rule in rules.items() if name != "*"}
    compiled = compile_relevance(model, graph, method, node_rules)
    session = ort.InferenceSession(compiled.model.SerializeToString(), providers=["CPUExecutionProvider"])

    def relevance(target: int) -> np.ndarray:
        feeds = {graph.input_name: x.astype(np.float32), "target": np.array([target], dtype=np.int64)}
        return session.run(["relevance"], feeds)[0]
    return relevance
