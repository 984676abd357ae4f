from . import builtin  # noqa: F401  (registers the LVIS and synthetic splits)
from .lvis_format import (
    ClassStats,
    class_stats,
    frequency_group,
    load_lvis_format_json,
    register_lvis_format,
)
from .dev_split import training_class_stats
