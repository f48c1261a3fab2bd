"""Grad-CAM (Selvaraju et al. 2017): feature maps of one layer weighted by the spatial mean of the target score's
gradient there, rectified and upsampled bilinearly to the input size."""

from __future__ import annotations

import numpy as np

from lrp_cli.errors import OptionError
from lrp_cli.ir.graph import Graph, Node
from lrp_cli.ir.layers import Conv
from lrp_cli.methods.base import Method, MethodInput
from lrp_cli.methods.gradient import tensor_gradient
from lrp_cli.propagate import Propagation


def is_spatial(graph: Graph, node: Node) -> bool:
    """Returns True when the node writes a [1, C, H, W] tensor with more than one position."""
    shape = graph.shapes.get(node.output, ())
    return len(shape) == 4 and shape[2] * shape[3] > 1


def default_layer(graph: Graph) -> Node:
    """Returns the last Conv node with a spatial output (OptionError when the graph has none)."""
    convs = [node for node in graph.nodes if isinstance(node.layer, Conv) and is_spatial(graph, node)]
    if not convs:
        raise OptionError("--method gradcam: the model has no Conv layer with a spatial output")
    return convs[-1]


def find_layer(graph: Graph, name: str | None) -> Node:
    """Returns the node --layer names (node or output tensor name), or the default layer when it is None."""
    if name is None:
        return default_layer(graph)
    for node in graph.nodes:
        if name in (node.name, node.output):
            if not is_spatial(graph, node):
                raise OptionError(f"--layer {name}: its output {list(graph.shapes.get(node.output, ()))} is not "
                                  "a [1, C, H, W] feature map")
            return node
    spatial = [node.name for node in graph.nodes if isinstance(node.layer, Conv) and is_spatial(graph, node)]
    known = f"the last spatial Conv layers are {', '.join(spatial[-3:])}" if spatial else "no Conv has a spatial output"
    raise OptionError(f"--layer {name}: no such node; {known}")


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Returns the [n_out, n_in] matrix of 1-D linear interpolation with half-pixel centres, clamped at the
    borders (align_corners=False, as PyTorch and OpenCV resize)."""
    source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = source - low
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), low), 1 - frac)
    np.add.at(matrix, (np.arange(n_out), high), frac)
    return matrix


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Returns a [h, w] map bilinearly resized to size (H, W)."""
    return bilinear_matrix(size[0], cam.shape[0]) @ cam @ bilinear_matrix(size[1], cam.shape[1]).T


def grad_cam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Returns ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of the gradient of channel k ([C, h, w])."""
    alpha = gradient.mean(axis=(1, 2))
    return np.maximum(np.tensordot(alpha, activation, axes=1), 0)


class GradCam(Method):
    """Grad-CAM at --layer (default: the last Conv with a spatial output); the map spread over input channels."""

    name = "gradcam"
    defaults = {"layer": None}

    def check(self, graph: Graph, options: dict) -> None:
        """Raises OptionError when --layer names no spatial node (or the model has no spatial Conv)."""
        find_layer(graph, options["layer"])

    def options_for(self, job: MethodInput) -> dict:
        """Returns the options with the layer actually used."""
        return {"layer": find_layer(job.graph, job.options["layer"]).name}

    def explain(self, job: MethodInput, target: int) -> Propagation:
        """Returns the upsampled Grad-CAM map of the target, each channel holding map / C."""
        _, height, width = job.image_shape(self.name)
        node = find_layer(job.graph, job.options["layer"])
        gradient, records = tensor_gradient(job.graph, job.values, target, node.output)
        cam = grad_cam(job.values[node.output][0].astype(np.float64), gradient[0].astype(np.float64))
        return Propagation(job.spread(upsample(cam, (height, width))), job.score(target), records)
