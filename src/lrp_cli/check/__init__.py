"""`lrp check`: behaviour specs that decide whether a model looks where it should (a CI gate)."""

from lrp_cli.check.runner import Outcome, run_specs
from lrp_cli.check.spec import SpecError, load_spec

__all__ = ["Outcome", "SpecError", "load_spec", "run_specs"]
