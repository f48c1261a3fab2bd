"""The compiled engine's conv adjoints (a Conv by the flipped kernel at stride 1, else ConvTranspose) against the
NumPy layer's float64 `apply_transposed` of a one-hot, for strided, padded, dilated, grouped and depthwise windows.
Bound: 1e-5 of max |adjoint| (float32 weights)."""

import numpy as np
import pytest

from conftest import compiled_relevance
from lrp_cli.ir.layers import Conv
from lrp_cli.ir.windows import Window
from test_rules import one_layer_model

WINDOWS = [  # (out channels, in channels, group, kernel, strides, pads, dilations)
    (8, 8, 8, 3, (2, 2), (1, 1, 1, 1), (1, 1)),      # depthwise, stride 2 (MobileNet / EfficientNet)
    (8, 8, 8, 5, (2, 2), (1, 2, 2, 1), (1, 1)),      # depthwise 5x5, asymmetric pads
    (16, 8, 8, 3, (3, 2), (0, 1, 2, 0), (1, 2)),     # depthwise with channel multiplier 2, dilated
    (6, 3, 1, 3, (2, 2), (1, 1, 0, 0), (1, 1)),      # a first layer, strided
    (5, 8, 1, 3, (2, 2), (1, 1, 1, 1), (1, 1)),      # full conv, strided
    (6, 8, 2, 1, (2, 2), (0, 0, 0, 0), (1, 1)),      # grouped 1x1, strided, odd sizes leave a row unread
    (4, 8, 1, 3, (1, 1), (0, 0, 3, 0), (1, 1)),      # stride 1, an end pad beyond the extent: ConvTranspose
]


@pytest.mark.parametrize("spec", WINDOWS, ids=lambda s: f"o{s[0]}c{s[1]}g{s[2]}k{s[3]}s{s[4]}p{s[5]}d{s[6]}")
def test_conv_adjoint_matches_numpy(spec):
    out, channels, group, k, strides, pads, dilations = spec
    rng = np.random.default_rng(out * 7 + k)
    weight = rng.standard_normal((out, channels // group, k, k)).astype(np.float32).astype(np.float64)
    layer = Conv(weight, None, Window((k, k), strides, pads, dilations), group)
    x = rng.standard_normal((1, channels, 9, 11))
    y_shape = layer.forward(x).shape
    gradient = compiled_relevance(one_layer_model(layer, x.shape), x, "gradient")
    for target in rng.choice(int(np.prod(y_shape)), 4, replace=False):
        hot = np.zeros(int(np.prod(y_shape)))
        hot[target] = 1.0
        want = layer.apply_transposed(hot.reshape(y_shape), layer.weight, x.shape)
        np.testing.assert_allclose(gradient(int(target)), want, rtol=0, atol=1e-5 * np.abs(want).max())
