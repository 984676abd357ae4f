"""Per-class training counts as a config asks for them (LTDET.CLASS_STATS), checked."""
from __future__ import annotations

from typing import Optional

from detectron2.config import CfgNode
from torch import Tensor

from .losses import validate_counts


def count_floor(floor: float) -> Optional[float]:
    """LTDET.CLASS_STATS.FLOOR as ``validate_counts``' ``floor``: 0 means none (zero counts are
    an error); a positive value raises every smaller count to it."""
    if not floor >= 0:
        raise ValueError(f"LTDET.CLASS_STATS.FLOOR must be >= 0 (0: classes without a training "
                         f"image are an error; > 0: counts below it are raised to it), got {floor}")
    return floor if floor > 0 else None


def config_class_counts(cfg: CfgNode, name: str) -> Tensor:
    """Counts of the images the run trains on (``training_class_stats``: without a held-out
    development split), of LTDET.CLASS_STATS.SOURCE, floored by FLOOR, one per class of
    MODEL.ROI_HEADS.NUM_CLASSES; ``name`` says who asks, in errors (zero counts name FLOOR)."""
    from ..data import training_class_stats

    counts = training_class_stats(cfg).counts(cfg.LTDET.CLASS_STATS.SOURCE)
    return validate_counts(counts, cfg.MODEL.ROI_HEADS.NUM_CLASSES, name,
                           floor=count_floor(cfg.LTDET.CLASS_STATS.FLOOR))
