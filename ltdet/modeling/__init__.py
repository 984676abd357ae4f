from . import losses
from .box_predictor import LongTailFastRCNNOutputLayers
from .roi_heads import LongTailROIHeads
