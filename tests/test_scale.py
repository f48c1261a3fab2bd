"""--scale: heatmaps divided by max|R| (Eq 35, the default) or by a percentile of |R| with clipping, per image or
shared by a batch (--normalize global). Expected divisors and colours are worked by hand below."""

import json

import numpy as np
import pytest
from test_cli_effects import explain, heatmap, level_tensor, probe_model

from lrp_cli import render
from lrp_cli.errors import OptionError

#: |R| sorted: 0 1 2 3 4 5 6 100. The 75th percentile (linear, numpy's default) sits at rank 0.75 * 7 = 5.25,
#: between 5 and 6: 5.25. Max |R| is 100.
HEAT = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, -100.0]])


def test_parse_scale():
    assert render.parse_scale("max") == render.Scale()
    assert render.parse_scale(" percentile:99.5 ") == render.Scale(99.5)
    assert render.parse_scale("percentile:100").spec() == "percentile:100"
    for bad in ("percentile:0", "percentile:100.5", "percentile:", "percentile:x", "median", "max:1", "percentile:nan"):
        with pytest.raises(OptionError, match=rf"--scale {bad.strip()}: expected max or percentile:P"):
            render.parse_scale(bad)


def test_percentile_divisor_and_clipped_fraction_by_hand():
    scale = render.Scale(75)
    assert scale.divisor_of(HEAT) == pytest.approx(5.25, rel=1e-12)
    assert render.Scale().divisor_of(HEAT) == 100.0 and render.Scale(100).divisor_of(HEAT) == 100.0
    # 6 and -100 lie beyond 5.25: 2 of 8 pixels clipped.
    assert scale.document(HEAT) == {"scale": "percentile:75", "normalize": "image", "divisor": pytest.approx(5.25),
                                    "clipped": 0.25}
    assert render.Scale().document(HEAT)["clipped"] == 0.0
    np.testing.assert_allclose(render.normalize(HEAT, scale)[1], [4 / 5.25, 5 / 5.25, 1.0, -1.0], rtol=1e-12)


def test_percentile_scaling_changes_a_known_pixels_colour():
    # jet: r, g, b = clip(1.5 - |4t - k|) for k = 3, 2, 1, at t = (n + 1) / 2, times 255, rounded.
    # Pixel 4 under max: n = 0.04, t = 0.52, 4t = 2.08 -> (0.58, 1.42 -> 1, 0.42) -> (148, 255, 107): green.
    # Under percentile:75: n = 4 / 5.25, 4t = 3.5238 -> (0.9762, -0.024 -> 0, 0) -> (249, 0, 0): red.
    # Pixel 6 is clipped to n = 1 -> (0.5, 0, 0) -> (128, 0, 0); -100 is n = -1 in both -> (0, 0, 128).
    default = render.heatmap_images(HEAT, None)["heatmap"]
    robust = render.heatmap_images(HEAT, None, scale=render.Scale(75))["heatmap"]
    assert default[1, 0].tolist() == [148, 255, 107] and robust[1, 0].tolist() == [249, 0, 0]
    assert robust[1, 2].tolist() == [128, 0, 0]
    assert default[1, 3].tolist() == robust[1, 3].tolist() == [0, 0, 128]


def test_a_sparse_map_falls_back_to_the_max():
    sparse = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])  # the median |R| is 0
    assert render.Scale(50).divisor_of(sparse) == 3.0
    assert render.Scale(50).divisor_of(np.zeros((2, 2))) == 0.0
    np.testing.assert_array_equal(render.normalize(np.zeros((2, 2)), render.Scale(50)), np.zeros((2, 2)))


def test_global_pools_every_maps_pixels():
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[10.0, 20.0], [30.0, -40.0]])
    # pooled |R|: 1 2 3 4 10 20 30 40, median (4 + 10) / 2 = 7; each map's own: 2.5 and 25; pooled max 40.
    shared = render.Scale(50).shared([a, b])
    assert shared.divisor == pytest.approx(7.0) and shared.divisor_of(a) == shared.divisor_of(b) == shared.divisor
    assert render.Scale(50).divisor_of(a) == 2.5 and render.Scale(50).divisor_of(b) == 25.0
    assert render.Scale().shared([a, b]).divisor == 40.0
    assert shared.document(b) == {"scale": "percentile:50", "normalize": "global", "divisor": pytest.approx(7.0),
                                  "clipped": 1.0}


# End to end: the probe model under LRP-0 with no bias gives R = x, so each input's pixel map is its channel 0.
# A = 1..16, B = 10 * A. percentile:50 per image: 8.5 and 85. Pooled, the 32 values sorted begin 1..9, 10, 10,
# 11..16: the 16th and 17th are 15 and 16, so the global median is 15.5; the global max is 160.
LEVELS = np.arange(1.0, 17.0).reshape(4, 4)


def _run(tmp_path, *options):
    np.save(tmp_path / "a.npy", level_tensor(LEVELS, 1.0))
    np.save(tmp_path / "b.npy", level_tensor(LEVELS, 10.0))
    out = tmp_path / "_".join(options).replace(":", "")
    result = explain(tmp_path / "a.npy", tmp_path / "b.npy", "--model", probe_model(tmp_path), "--out", out,
                     "--rule", "z", *options)
    assert result.exit_code == 0, result.output
    docs = {stem: json.loads((out / f"{stem}.json").read_text())["heatmap_scale"] for stem in "ab"}
    return docs, {stem: heatmap(out / f"{stem}.heatmap.png") for stem in "ab"}


@pytest.mark.parametrize("normalize, divisors, clipped", [
    ("image", (8.5, 85.0), (0.5, 0.5)),
    ("global", (15.5, 15.5), (1 / 16, 15 / 16)),  # A: only 16 exceeds 15.5; B: all but 10
])
def test_explain_scale_percentile_with_normalize(tmp_path, normalize, divisors, clipped):
    docs, maps = _run(tmp_path, "--scale", "percentile:50", "--normalize", normalize)
    for stem, divisor, share in zip("ab", divisors, clipped):
        # float32 relevance of small integers: exact to a few ulps.
        assert docs[stem] == {"scale": "percentile:50", "normalize": normalize,
                              "divisor": pytest.approx(divisor, rel=1e-6), "clipped": share}
    if normalize == "global":
        # A's pixel 8: n = 8 / 15.5, 4t = 3.0323 -> (1.468 -> 1, 0.4677, 0) -> (255, 119, 0); its 16 is clipped.
        assert maps["a"][1, 3].tolist() == [255, 119, 0] and maps["a"][3, 3].tolist() == [128, 0, 0]


def test_explain_default_stays_max_and_global_max_is_the_batch_max(tmp_path):
    docs, maps = _run(tmp_path, "--normalize", "global")
    assert docs["a"] == {"scale": "max", "normalize": "global", "divisor": pytest.approx(160.0), "clipped": 0.0}
    # A's pixel 8 under the batch max: n = 0.05, 4t = 2.1 -> (0.6, 1.4 -> 1, 0.4) -> (153, 255, 102).
    assert maps["a"][1, 3].tolist() == [153, 255, 102]
    docs, _ = _run(tmp_path)
    assert docs["b"] == {"scale": "max", "normalize": "image", "divisor": pytest.approx(160.0), "clipped": 0.0}


def test_bad_scale_is_a_usage_error_before_any_output(tmp_path):
    np.save(tmp_path / "a.npy", level_tensor(LEVELS))
    result = explain(tmp_path / "a.npy", "--model", probe_model(tmp_path), "--out", tmp_path / "o",
                     "--scale", "percentile:0")
    assert result.exit_code == 2 and "--scale percentile:0: expected max or percentile:P" in result.output
    assert not (tmp_path / "o").exists()


def test_html_report_says_how_heatmaps_were_scaled(tmp_path):
    np.save(tmp_path / "a.npy", level_tensor(LEVELS))
    for options, words in [((), "each heatmap scaled by its own max|R| (Eq 35)"),
                           (("--scale", "percentile:99.5"),
                            "each heatmap scaled by its own 99.5th percentile of |R|, larger values clipped"),
                           (("--scale", "percentile:99.5", "--normalize", "global"),
                            "the 99.5th percentile of |R| over the whole batch (--normalize global), larger values "
                            "clipped")]:
        out = tmp_path / str(len(options))
        result = explain(tmp_path / "a.npy", "--model", probe_model(tmp_path), "--out", out, "--html", *options)
        assert result.exit_code == 0, result.output
        assert words in (out / "index.html").read_text()
