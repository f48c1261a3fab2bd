"""Explanation methods, one module each, registered by name for `--method` (and `lrp evaluate --methods`)."""

from lrp_cli.methods.base import Method, MethodInput
from lrp_cli.methods.gradcam import GradCam
from lrp_cli.methods.gradient import Gradient, GradientXInput
from lrp_cli.methods.lime import Lime
from lrp_cli.methods.lrp import Lrp
from lrp_cli.methods.occlusion import Occlusion
from lrp_cli.methods.random_map import RandomMap

#: name -> method object, in the order --method lists them
METHODS: dict[str, Method] = {m.name: m for m in (Lrp(), Gradient(), GradientXInput(), GradCam(), Occlusion(),
                                                   Lime(), RandomMap())}

__all__ = ["METHODS", "Method", "MethodInput"]
