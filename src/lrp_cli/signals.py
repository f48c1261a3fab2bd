"""Signals in, channel x time maps out: the pictures and JSON summary of a model whose input is [1, C, T].

A model reads a signal when its input has three axes and a convolution reads it (channels x time, as an EEG
classifier). Its heatmap is the C x T relevance raster (each value a block of pixels, the image colormap with
0 at its centre, Eq 35's normalisation); its overlay draws each channel's trace coloured by its relevance.
"""

from __future__ import annotations

import numpy as np

from lrp_cli import render
from lrp_cli.ir.layers import Conv

#: Smallest size in pixels of the raster's longer side, and the most pixels one value may span.
RASTER_SIZE, MAX_BLOCK = 640, 48
#: The JSON's per-time-window sums split the time axis into at most this many equal windows.
WINDOWS = 10


def is_signal(graph) -> bool:
    """Returns True when the graph's input is [N, C, T] and a convolution reads it directly."""
    if graph is None or len(graph.input_shape) != 3:
        return False
    return any(graph.input_name in node.inputs and isinstance(node.layer, Conv) for node in graph.nodes)


def _blocks(channels: int, steps: int) -> tuple[int, int]:
    """Returns the (height, width) in pixels of one raster cell."""
    width = int(np.clip(RASTER_SIZE // steps, 1, MAX_BLOCK))
    height = int(np.clip(RASTER_SIZE // 4 // channels, 1, MAX_BLOCK))
    return height, width


def raster(normalized: np.ndarray, cmap: str) -> np.ndarray:
    """Returns the uint8 [H, W, 3] picture of a [C, T] map in [-1, 1], every value a block of pixels."""
    height, width = _blocks(*normalized.shape)
    return np.repeat(np.repeat(render.colorize(normalized, cmap), height, axis=0), width, axis=1)


def traces(signal: np.ndarray, normalized: np.ndarray, cmap: str) -> np.ndarray:
    """Returns the uint8 [H, W, 3] picture of each channel's trace (one row per channel), every segment coloured
    by the mean normalized relevance of its two ends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    channels, steps = signal.shape
    figure = Figure(figsize=(8, 0.6 + 0.6 * channels), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(channels, 1, sharex=True, squeeze=False)[:, 0]
    colours = render.colorize((normalized[:, :-1] + normalized[:, 1:]) / 2, cmap) / 255.0
    t = np.arange(steps)
    for c, ax in enumerate(axes):
        points = np.stack([t, signal[c]], axis=1)
        ax.add_collection(LineCollection(np.stack([points[:-1], points[1:]], axis=1), colors=colours[c], linewidths=2))
        low, high = float(signal[c].min()), float(signal[c].max())
        pad = 0.1 * (high - low) or 1.0
        ax.set_xlim(0, max(steps - 1, 1))
        ax.set_ylim(low - pad, high + pad)
        ax.set_yticks([])
        ax.set_ylabel(f"ch {c}", rotation=0, ha="right", va="center")
    axes[-1].set_xlabel("time step")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def signal_images(x: np.ndarray, heat: np.ndarray, cmap: str = "jet", scale: render.Scale = render.Scale()) -> dict:
    """Returns {"heatmap": C x T raster, "overlay": coloured traces} for input x [1, C, T] and its [C, T] map."""
    normalized = render.normalize(heat, scale)
    return {"heatmap": raster(normalized, cmap), "overlay": traces(np.asarray(x, np.float64)[0], normalized, cmap)}


def signal_summary(heat: np.ndarray) -> dict:
    """Returns the JSON's `signal` entry: relevance summed per channel and per time window."""
    channels, steps = heat.shape
    size = -(-steps // min(WINDOWS, steps))
    starts = list(range(0, steps, size))
    return {"channels": channels, "steps": steps,
            "per_channel": [float(v) for v in heat.sum(axis=1)],
            "per_window": [{"start": s, "end": min(s + size, steps), "relevance": float(heat[:, s:s + size].sum())}
                           for s in starts]}


def read_signal_csv(path) -> np.ndarray:
    """Returns a `.csv` signal (one column per channel, one row per time step, an optional header row of channel
    names) as a float [channels, time] array; ValueError for a file that is not such a table."""
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    rows = [line.split(",") for line in lines]
    try:
        float(rows[0][0]) if rows else None
    except ValueError:
        rows = rows[1:]  # a header row
    if not rows or len({len(row) for row in rows}) != 1:
        raise ValueError("expected rows of equally many comma-separated numbers")
    return np.array(rows, dtype=np.float64).T
