from .fast_lvis import FastLVISEval, LVISDetections
from .lvis_evaluation import BACKENDS, LongTailLVISEvaluator, score_lvis, write_lvis_outputs
from .offline import evaluate_files
from .per_class import per_class_ap, plot_per_class_ap, write_per_class_csv

__all__ = [
    "BACKENDS",
    "FastLVISEval",
    "LVISDetections",
    "LongTailLVISEvaluator",
    "evaluate_files",
    "per_class_ap",
    "plot_per_class_ap",
    "score_lvis",
    "write_lvis_outputs",
    "write_per_class_csv",
]
