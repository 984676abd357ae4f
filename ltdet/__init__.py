"""ltdet: long-tailed instance segmentation for detectron2."""
from .compat import apply_runtime_fixes

apply_runtime_fixes()

__version__ = "0.1.0"
