__all__ = [
    "losses",
    "LongTailFastRCNNOutputLayers",
    "LongTailROIHeads",
    "CLS_LOSS_REGISTRY",
    "ClassificationLoss",
    "get_loss",
    "loss_names",
    "register_loss",
]

from . import losses
from .box_predictor import LongTailFastRCNNOutputLayers
from .loss_registry import (
    CLS_LOSS_REGISTRY,
    ClassificationLoss,
    get_loss,
    loss_names,
    register_loss,
)
from .roi_heads import LongTailROIHeads
