"""ltdet: long-tailed instance segmentation for detectron2.

Importing ltdet applies the compatibility fixes (ltdet/compat.py), registers the LVIS-format and
synthetic datasets and the LongTail ROI heads.
"""

from .compat import apply_runtime_fixes

apply_runtime_fixes()

from . import data, modeling  # noqa: E402,F401  (registration)

__version__ = "0.1.0"
