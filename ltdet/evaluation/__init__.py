from .lvis_evaluation import LongTailLVISEvaluator
from .per_class import per_class_ap, plot_per_class_ap, write_per_class_csv
