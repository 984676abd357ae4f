__all__ = [
    "ClassStats",
    "class_stats",
    "clear_class_stats",
    "frequency_group",
    "training_class_stats",
    "load_lvis_format_json",
    "register_lvis_format",
]

from . import builtin  # noqa: F401  (registers the LVIS and synthetic splits)
from .class_stats import (
    ClassStats,
    class_stats,
    clear_class_stats,
    frequency_group,
    training_class_stats,
)
from .lvis_format import load_lvis_format_json, register_lvis_format
