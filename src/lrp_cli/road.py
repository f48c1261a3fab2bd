"""Noisy linear imputation (ROAD, Rong et al. 2022, "A consistent and efficient evaluation strategy for
attribution methods"): a removed pixel takes the weighted mean of its 8 neighbours, known or removed themselves,
plus Gaussian noise, so the perturbed image carries no sharp mask the model could read the order from.

The removed pixels' values solve one sparse linear system (one equation per removed pixel, one right-hand side
per channel); the weights and the noise level are the paper's.
"""

from __future__ import annotations

import numpy as np

#: (row offset, column offset, weight): ROAD's neighbourhood, edge neighbours 1/6 and corner neighbours 1/12.
NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6),
              (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))
#: ROAD's noise: standard deviation 0.01 on ImageNet-normalized inputs, i.e. 0.01 x the ImageNet std (0.226 on
#: average over the channels) of the [0, 1] pixel range; a channel spanning [lo, hi] gets 0.00226 (hi - lo).
NOISE = 0.01
IMAGENET_STD = 0.226


def noise_std(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Returns the [C] standard deviation of the imputation noise: ROAD's 0.01 scaled to each channel's range."""
    return NOISE * IMAGENET_STD * (np.asarray(high, np.float64) - np.asarray(low, np.float64))


def linear_system(mask: np.ndarray, image: np.ndarray):
    """Returns (A, b, removed) of the imputation: A [n, n] sparse CSC, b [n, C], removed the n flat indices of the
    mask's True pixels; row i says: the weight sum of pixel i's in-image neighbours times x_i, minus each removed
    neighbour's weight times its value, equals the weighted sum of its known neighbours' values."""
    from scipy.sparse import coo_matrix
    height, width = mask.shape
    known = ~mask.ravel()
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    removed = np.flatnonzero(mask.ravel())
    column = np.full(mask.size, -1)
    column[removed] = np.arange(removed.size)
    rows, cols = np.divmod(removed, width)
    diagonal = np.zeros(removed.size)
    b = np.zeros((removed.size, flat.shape[0]))
    entries = ([np.arange(removed.size)], [np.arange(removed.size)], [])
    for dy, dx, weight in NEIGHBOURS:
        inside = (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
        equation = np.flatnonzero(inside)
        neighbour = (rows[inside] + dy) * width + cols[inside] + dx
        diagonal[equation] += weight
        given = known[neighbour]
        b[equation[given]] += weight * flat[:, neighbour[given]].T  # each equation once per offset: no collisions
        entries[0].append(equation[~given])
        entries[1].append(column[neighbour[~given]])
        entries[2].append(np.full(int((~given).sum()), -weight))
    values = np.concatenate([diagonal] + entries[2])
    a = coo_matrix((values, (np.concatenate(entries[0]), np.concatenate(entries[1]))),
                   shape=(removed.size, removed.size)).tocsc()
    return a, b, removed


def impute(image: np.ndarray, mask: np.ndarray, noise: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Returns the [C, H, W] image with the mask's True pixels imputed: the solution of `linear_system` plus
    `noise` ([C, H, W], already scaled); when every pixel is removed there is nothing to interpolate from, and
    they take `fallback` ([C], the mean fill) plus the noise."""
    from scipy.sparse.linalg import spsolve
    result = image.astype(np.float64).reshape(image.shape[0], -1)
    if not mask.any():
        return result.reshape(image.shape)
    removed = np.flatnonzero(mask.ravel())
    if removed.size == mask.size:
        values = np.broadcast_to(np.asarray(fallback, np.float64)[:, None], result.shape)
    else:
        a, b, removed = linear_system(mask, image)
        values = np.asarray(spsolve(a, b)).reshape(removed.size, -1).T
    result[:, removed] = values + noise.reshape(result.shape)[:, removed]
    return result.reshape(image.shape)


def imputed_stack(x: np.ndarray, ranks: np.ndarray, counts: np.ndarray, noise: np.ndarray,
                  fallback: np.ndarray) -> np.ndarray:
    """Returns the [len(counts), C, H, W] inputs whose k-th has the pixels of rank < counts[k] imputed (x: [1, C,
    H, W]); the same noise field serves every step, so the methods are compared on the same draws."""
    return np.stack([impute(x[0], ranks < count, noise[0], fallback) for count in counts])
