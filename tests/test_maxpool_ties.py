"""MaxPool tie policies (`maxpool:first`, zennit's; `maxpool:split`, the LRP Toolbox's) against a brute force."""

import itertools
import json

import numpy as np
import pytest

from lrp_cli.ir.layers import MaxPool
from lrp_cli.ir.windows import Window
from lrp_cli.rules import MaxPoolTies, RuleError, assign_rules, parse_rule

WINDOWS = [
    Window((2, 2), (2, 2)),
    Window((3, 3), (2, 2), (1, 1, 1, 1)),            # overlapping windows, padded
    Window((3, 3), (1, 1), (0, 1, 2, 0), (2, 1)),    # asymmetric pads, dilation
    Window((3, 3), (2, 2), ceil_mode=True),          # ceil-mode overhang
]


def brute_force(x, window, r, split):
    """Walks every window in flat row-major order (PyTorch's max_pool2d index) and routes its relevance."""
    n, c, height, width = x.shape
    out = np.zeros_like(x)
    top, left = window.pads[:2]
    for b, ch, oh, ow in itertools.product(range(n), range(c), *map(range, r.shape[2:])):
        cells = []
        for i, j in itertools.product(range(window.kernel[0]), range(window.kernel[1])):
            row = oh * window.strides[0] + i * window.dilations[0] - top
            col = ow * window.strides[1] + j * window.dilations[1] - left
            if 0 <= row < height and 0 <= col < width:
                cells.append((x[b, ch, row, col], row, col))
        best = max(value for value, _, _ in cells)
        winners = [(row, col) for value, row, col in cells if value == best]
        for row, col in winners if split else winners[:1]:
            out[b, ch, row, col] += r[b, ch, oh, ow] / (len(winners) if split else 1)
    return out


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("policy", ["first", "split"])
def test_tie_policy_matches_brute_force(window, policy):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (2, 3, 7, 8)).astype(np.float64)   # three levels: ties in most windows
    layer = MaxPool(window)
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    got = layer.relevance([x], y, r, MaxPoolTies(policy))[0]
    np.testing.assert_allclose(got, brute_force(x, window, r, policy == "split"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(), r.sum(), rtol=1e-12)


def test_policies_differ_exactly_where_windows_tie():
    x = np.array([[[[4.0, 4.0, 1.0, 2.0], [0.0, 4.0, 3.0, 0.0]]]])
    layer = MaxPool(Window((2, 2), (2, 2)))
    y = layer.forward(x)
    r = np.array([[[[3.0, 5.0]]]])
    first = layer.relevance([x], y, r, MaxPoolTies("first"))[0]
    split = layer.relevance([x], y, r, MaxPoolTies("split"))[0]
    np.testing.assert_array_equal(first, [[[[3, 0, 0, 0], [0, 0, 5, 0]]]])
    np.testing.assert_array_equal(split, [[[[1, 1, 0, 0], [0, 1, 5, 0]]]])


def test_gradient_uses_the_first_maximum_too():
    x = np.array([[[[2.0, 2.0], [2.0, 1.0]]]])
    layer = MaxPool(Window((2, 2), (2, 2)))
    g = np.array([[[[1.5]]]])
    np.testing.assert_array_equal(layer.gradient([x], layer.forward(x), g)[0], [[[[1.5, 0], [0, 0]]]])


def test_parse_and_assign_maxpool_rules():
    pool = MaxPool(Window((2, 2), (2, 2)))
    assert parse_rule("maxpool").spec() == "maxpool:first" and parse_rule("MaxPool:Split").spec() == "maxpool:split"
    with pytest.raises(RuleError, match="one of first, split"):
        parse_rule("maxpool:even")
    specs = assign_rules([("pool1", pool), ("pool2", pool)], layer_rules=("pool2=maxpool:split",))
    assert specs == {"pool1": "maxpool:first", "pool2": "maxpool:split"}
    with pytest.raises(RuleError, match="no MaxPool layer matches 'conv'"):
        assign_rules([("pool1", pool)], layer_rules=("conv=maxpool:split",))
    with pytest.raises(RuleError, match=r"'epsilon' does not apply to node 'pool1' \(MaxPool\); rules for it: maxpool"):
        assign_rules([("pool1", pool)], layer_rules=("pool1=epsilon",))
    with pytest.raises(RuleError, match="MaxPool tie policy"):
        assign_rules([("pool1", pool)], rule="maxpool:split")


def test_cli_layer_rule_picks_the_tie_policy(tiny_cnn_path, tmp_path):
    from test_cli import explain   # the CLI runner helper
    x = np.zeros((1, 3, 16, 16), np.float32)
    x[..., ::2, :] = 1.0          # every 2x2 window of the input ties; Conv+ReLU keeps rows of equal values
    np.save(tmp_path / "flat.npy", x)
    maps = {}
    for policy in ("first", "split"):
        out = tmp_path / policy
        result = explain(tmp_path / "flat.npy", "--model", tiny_cnn_path, "--out", out, "--precision", "float64",
                         "--layer-rule", f"pool*=maxpool:{policy}", "--save-raw")
        assert result.exit_code == 0, result.output
        assert json.loads((out / "flat.json").read_text())["rules"]["pool1"] == f"maxpool:{policy}"
        maps[policy] = np.load(out / "flat.relevance.npy")
    assert np.abs(maps["first"] - maps["split"]).max() > 1e-3 * np.abs(maps["first"]).max()
    bad = explain(tmp_path / "flat.npy", "--model", tiny_cnn_path, "--out", tmp_path / "bad", "--rule", "maxpool")
    assert bad.exit_code == 2 and "--layer-rule" in bad.output
