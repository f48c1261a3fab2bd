"""Brute-force float64 checks of the BoW relevance equations (paper Eqs 24, 25, 27, 31, 32, 34)."""

import zlib

import numpy as np
import pytest
from sklearn.svm import SVC

from lrp_cli.bow.classifier import BinaryDecision, pair_decision
from lrp_cli.bow.kernels import BowKernel, make_part
from lrp_cli.bow.pooling import pmean
from lrp_cli.bow.relevance import find_root, layer1, layer2_block, layer3, layer3_exact, layer3_taylor

RNG = np.random.default_rng(7)


def _decision(name, n_sv=5, dims=6, **kw):
    """Return a random BinaryDecision with non-negative support vectors and a mix of coefficient signs."""
    # crc32, not hash(): str hashes are salted per process, which made these tests flaky.
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    S = rng.random((n_sv, dims))
    S[0, 1] = 0.0  # exercise the 0/0 conventions
    coef = rng.normal(size=n_sv)
    coef[0], coef[1] = 1.0, -1.0
    return BinaryDecision(S, coef, 0.3, BowKernel([make_part(name, 0, dims, **kw)]))


def _kd(name, s, x):
    """Return the scalar per-dimension kernel term k^(d)(s, x), written out directly."""
    if name == "linear":
        return s * x
    if name == "hik":
        return min(s, x)
    return 0.0 if s + x == 0 else 2 * s * x / (s + x)


@pytest.mark.parametrize("name", ["linear", "hik", "additive_chi2"])
def test_eq24_matches_loops_and_conserves(name):
    dec = _decision(name)
    x = RNG.random(6)
    x[1] = 0.0
    r3 = layer3_exact(dec, x)
    V = x.size
    for d in range(V):
        expect = dec.intercept / V + sum(dec.coef[i] * _kd(name, dec.support[i, d], x[d])
                                         for i in range(dec.support.shape[0]))
        assert r3[d] == pytest.approx(expect, abs=1e-14)
    fx = dec.value(x[None])[0]
    assert abs(r3.sum() - fx) <= 1e-12 * max(1.0, abs(fx))


def test_multi_kernel_sum_is_exact():
    S, x = RNG.random((4, 8)), RNG.random(8)
    k = BowKernel([make_part("hik", 0, 4), make_part("additive_chi2", 4, 8, weight=0.5)])
    dec = BinaryDecision(S, np.array([1.0, -2.0, 0.5, 0.7]), -0.2, k)
    assert layer3_exact(dec, x).sum() == pytest.approx(dec.value(x[None])[0], abs=1e-13)


def _brute_eq31(r3, m, p):
    """Return Eq 31 (Eq 27 for p = 1) computed with explicit loops."""
    n, V = m.shape
    out = np.zeros(n)
    for feature in range(n):
        for d in range(V):
            total = sum(m[j, d] ** p for j in range(n))
            out[feature] += r3[d] * (m[feature, d] ** p / total if total != 0 else 1.0 / n)
    return out


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
def test_eq27_eq31_match_loops(p):
    m = RNG.random((5, 4))
    m[:, 2] = 0.0  # a dimension in Z(x): its relevance is split equally
    m[1, 0] = 0.0
    r3 = RNG.normal(size=4)
    r2 = layer2_block(r3, m, p)
    np.testing.assert_allclose(r2, _brute_eq31(r3, m, p), rtol=1e-12, atol=1e-14)
    assert r2.sum() == pytest.approx(r3.sum(), abs=1e-13)


def test_pmeans_tends_to_max_indicator():
    m = RNG.random((6, 5))
    m[:, 4] = 0.0
    r3 = RNG.normal(size=5)
    r_max = layer2_block(r3, m, "max")
    expect = np.zeros(6)
    for d in range(4):
        expect[np.argmax(m[:, d])] += r3[d]
    expect += r3[4] / 6
    np.testing.assert_allclose(r_max, expect, atol=1e-14)
    errors = [np.abs(layer2_block(r3, m, p) - r_max).max() for p in (4, 16, 64, 256, 4096)]
    assert all(a >= b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-6


def test_pmeans_pooling_tends_to_max():
    m = RNG.random((7, 3))
    gaps = [np.abs(pmean(m, p) - m.max(axis=0)).max() for p in (1, 8, 64, 1024)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-2
    np.testing.assert_allclose(pmean(m, 1.0), m.mean(axis=0))
    np.testing.assert_allclose(pmean(m, "max"), m.max(axis=0))
    np.testing.assert_allclose(pmean(m, 3.0), np.mean(m ** 3, axis=0) ** (1 / 3))


def test_max_pooling_ties_share_relevance():
    m = np.array([[1.0, 0.2], [1.0, 0.1], [0.5, 0.0]])
    r2 = layer2_block(np.array([2.0, 3.0]), m, "max")
    np.testing.assert_allclose(r2, [1.0 + 3.0, 1.0, 0.0])


def test_eq34_matches_per_pixel_loops():
    shape = (9, 11)
    boxes = [np.array([[0, 0, 4, 4], [2, 3, 7, 9]]), np.array([[5, 5, 9, 11]])]
    r2 = [np.array([1.5, -2.0]), np.array([0.7])]
    r1 = layer1(r2, boxes, shape)
    brute = np.zeros(shape)
    for rg, bg in zip(r2, boxes):
        for r, (y0, x0, y1, x1) in zip(rg, bg):
            for yy in range(shape[0]):
                for xx in range(shape[1]):
                    if y0 <= yy < y1 and x0 <= xx < x1:
                        brute[yy, xx] += r / ((y1 - y0) * (x1 - x0))
    np.testing.assert_allclose(r1, brute, atol=1e-14)
    assert r1.sum() == pytest.approx(sum(r.sum() for r in r2), abs=1e-13)


@pytest.mark.parametrize("name,kw", [("chi2", {"gamma": 0.7}), ("rbf", {"gamma": 1.3}),
                                     ("poly", {"gamma": 0.5, "degree": 3, "coef0": 1.0}),
                                     ("additive_chi2", {}), ("linear", {}), ("hik", {})])
def test_gradients_match_finite_differences(name, kw):
    dec = _decision(name, **kw)
    x0 = RNG.random(6) + 0.05
    grad = dec.coef @ dec.kernel.grad(dec.support, x0)
    eps = 1e-6
    for d in range(6):
        e = np.zeros(6)
        e[d] = eps
        fd = (dec.value((x0 + e)[None])[0] - dec.value((x0 - e)[None])[0]) / (2 * eps)
        assert grad[d] == pytest.approx(fd, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name,kw", [("chi2", {"gamma": 2.0}), ("rbf", {"gamma": 2.0}),
                                     ("poly", {"gamma": 1.0, "degree": 2, "coef0": 0.5})])
def test_taylor_root_and_residual_bound(name, kw):
    dec = _decision(name, n_sv=8, **kw)
    f_sv = dec.value(dec.support)
    dec.intercept -= np.median(f_sv)  # support vectors on both sides of the boundary
    x = dec.support[np.argmax(f_sv)] * 0.9 + 0.05
    fx = dec.value(x[None])[0]
    root = find_root(dec, x)
    assert root.found and abs(root.f_x0) < 1e-9 * max(1.0, abs(fx))
    r3, residual, _ = layer3(dec, x)
    assert residual == pytest.approx(fx - r3.sum(), abs=1e-15)
    # First-order Taylor: the residual is O(t^2) on the segment from x0 towards x, so residual / t^2
    # stays bounded as t shrinks (a wrong gradient would leave an O(t) term and make it grow like 1/t).
    ratios = []
    for t in (0.2, 0.1, 0.05, 0.025, 0.0125):
        xt = root.x0 + t * (x - root.x0)
        res = dec.value(xt[None])[0] - layer3_taylor(dec, xt, root.x0).sum()
        ratios.append(abs(res) / t ** 2)
    assert max(ratios[2:]) <= 2.0 * max(ratios[:2]) + 1e-9


def test_root_is_nearest_of_candidates():
    dec = _decision("rbf", n_sv=10, gamma=3.0)
    x = dec.support[0].copy()
    dec.intercept -= np.median(dec.value(dec.support))
    root = find_root(dec, x, n_candidates=10)
    fx = dec.value(x[None])[0]
    # No point of the other sign may be closer on the segments to other-sign support vectors.
    other = dec.support[(np.sign(fx) * dec.coef < 0)]
    for z in other:
        ts = np.linspace(0, 1, 2001)[1:]
        vals = dec.value(x[None] + ts[:, None] * (z - x)[None])
        cross = np.nonzero(np.sign(fx) * vals <= 0)[0]
        if cross.size:
            assert ts[cross[0]] * np.linalg.norm(z - x) >= root.distance - 1e-3


def test_one_vs_one_pair_decision_matches_sklearn():
    X = RNG.random((60, 4))
    y = np.digitize(X[:, 0] + 0.3 * X[:, 1], [0.45, 0.8])
    svc = SVC(kernel="rbf", gamma=2.0, decision_function_shape="ovo").fit(X, y)
    ovo = svc.decision_function(X[:5])
    k = 0
    for i in range(3):
        for j in range(i + 1, 3):
            np.testing.assert_allclose(pair_decision(svc, i, j).value(X[:5]), ovo[:, k], atol=1e-10)
            k += 1


def test_sparse_mapping_solves_the_regularized_coding_problem():
    # Eqs 37-38 with B fixed: the codes satisfy the optimality (KKT) conditions of
    # min_c 1/2 ||l - B c||^2 + alpha ||c||_1, c >= 0 (sklearn's scaling of the objective).
    from lrp_cli.bow.codebook import sparse_mapping
    centers = RNG.normal(size=(6, 10))
    descriptors = RNG.normal(size=(4, 10))
    alpha = 0.3
    codes = sparse_mapping(descriptors, centers, alpha)
    assert (codes >= 0).all() and (codes == 0).any()
    gradient = (descriptors - codes @ centers) @ centers.T  # minus the gradient of the squared error
    active = codes > 0
    np.testing.assert_allclose(gradient[active], alpha, atol=1e-3)
    assert (gradient[~active] <= alpha + 1e-3).all()
