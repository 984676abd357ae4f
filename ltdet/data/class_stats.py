"""Per-class training statistics: the one home of what the balanced losses, samplers, M2m, the
two-component weights, the Meta Reweigher's hook and the evaluation read about class frequency.

* ``ClassStats``: names, image and instance counts, annotated images, LVIS frequency groups.
* ``class_stats(datasets)``: computed from the annotations of registered datasets (summed over
  several), cached; ``training_class_stats(cfg)``: of the images a run trains on (without a
  held-out development split); ``clear_class_stats`` drops cached entries.
* ``validate_counts`` / ``count_floor`` / ``config_class_counts``: counts as a config asks for
  them (LTDET.CLASS_STATS.SOURCE and FLOOR), checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from torch import Tensor

from .dev_split import holds_out_dev, split_for_config
from .lvis_format import (
    COMMON_MAX_IMAGES,
    RARE_MAX_IMAGES,
    is_registered_lvis_format,
    lvis_format_dicts,
)

COUNT_SOURCES = ("image_count", "instance_count")

CountsLike = Union[Tensor, Sequence[float], np.ndarray]


def frequency_group(image_count: int) -> str:
    """'r' (<= 10 training images), 'c' (11-100) or 'f' (> 100): the LVIS rule."""
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    return "c" if image_count <= COMMON_MAX_IMAGES else "f"


def check_count_source(source: str) -> None:
    """Raise unless ``source`` names a count of ClassStats (LTDET.CLASS_STATS.SOURCE)."""
    if source not in COUNT_SOURCES:
        raise ValueError(
            f"LTDET.CLASS_STATS.SOURCE = {source!r} is not valid: use 'image_count' or "
            "'instance_count'"
        )


@dataclass(frozen=True)
class ClassStats:
    """Per-class statistics of a training set, indexed by contiguous class id."""

    names: List[str]
    image_counts: np.ndarray  # images containing the class
    instance_counts: np.ndarray  # annotated instances
    # Images with at least one annotation: the original BALMS code's prior denominator, and what
    # the loader trains on with detectron2's default DATALOADER.FILTER_EMPTY_ANNOTATIONS True.
    num_images: int

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def frequency(self) -> List[str]:
        return [frequency_group(int(n)) for n in self.image_counts]

    def counts(self, source: str) -> np.ndarray:
        """``source`` is "image_count" or "instance_count" (LTDET.CLASS_STATS.SOURCE)."""
        check_count_source(source)
        return self.image_counts if source == "image_count" else self.instance_counts


# --------------------------------------------------------------------------- the cache
# Keys: a dataset name, a tuple of names (a sum), or a tuple of names with a development-split
# marker last. The names are always top-level entries, so ``clear_class_stats(name)`` finds them.
_CACHE: Dict[Union[str, tuple], ClassStats] = {}


def clear_class_stats(name: Optional[str] = None) -> None:
    """Drop cached statistics: all of them, or every entry that involves dataset ``name`` (alone,
    in a sum, or split). ``register_lvis_format`` calls it when a name is registered again."""
    if name is None:
        _CACHE.clear()
        return
    for key in [k for k in _CACHE if k == name or (isinstance(k, tuple) and name in k)]:
        del _CACHE[key]


def class_stats(datasets: Union[str, Sequence[str]]) -> ClassStats:
    """Per-class image/instance counts and LVIS frequency groups of a registered dataset, or summed
    over several (``DATASETS.TRAIN``: what the training loader concatenates), computed from the
    annotations (the one place later stages read class statistics from)."""
    if isinstance(datasets, str):
        return _dataset_stats(datasets)
    names = tuple(datasets)
    if not names:
        raise ValueError("no training dataset: DATASETS.TRAIN is empty")
    if len(names) == 1:
        return _dataset_stats(names[0])
    if names not in _CACHE:
        parts = [_dataset_stats(n) for n in names]
        for n, part in zip(names[1:], parts[1:]):
            if part.names != parts[0].names:
                raise ValueError(
                    f"training sets {names[0]} ({parts[0].num_classes} classes) and {n} "
                    f"({part.num_classes}) have different category lists; the sets of "
                    "DATASETS.TRAIN must share one"
                )
        _CACHE[names] = ClassStats(
            parts[0].names,
            sum(p.image_counts for p in parts),
            sum(p.instance_counts for p in parts),
            sum(p.num_images for p in parts),
        )
    return _CACHE[names]


def _dataset_stats(dataset_name: str) -> ClassStats:
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {dataset_name!r} is not registered; registered LVIS-format sets: "
            f"{sorted(n for n in DatasetCatalog.list() if 'lvis' in n or 'ltdet' in n)}"
        )
    if dataset_name not in _CACHE:
        meta = MetadataCatalog.get(dataset_name)
        dicts = annotation_dicts([dataset_name], filter_empty=False)
        _CACHE[dataset_name] = stats_of_dicts(dicts, list(meta.thing_classes))
    return _CACHE[dataset_name]


def stats_of_dicts(dicts: Sequence[Dict], names: List[str]) -> ClassStats:
    """``ClassStats`` of detectron2 dataset dicts (contiguous ``category_id``)."""
    image_counts = np.zeros(len(names), dtype=np.int64)
    instance_counts = np.zeros(len(names), dtype=np.int64)
    annotated = 0
    for d in dicts:
        cls = np.fromiter((a["category_id"] for a in d["annotations"]), dtype=np.int64)
        np.add.at(instance_counts, cls, 1)
        image_counts[np.unique(cls)] += 1
        annotated += cls.size > 0
    return ClassStats(names, image_counts, instance_counts, annotated)


def annotation_dicts(datasets: Sequence[str], filter_empty: bool = True) -> List[Dict]:
    """The dicts of ``datasets`` concatenated in order, images without annotations dropped when
    ``filter_empty``: the list detectron2's ``get_detection_dataset_dicts`` gives the training
    loader (LVIS has no crowd annotations). ltdet's LVIS-format sets are read without checking
    that the images exist: evaluating a model (whose losses need the training statistics) must
    not require the training images on disk."""
    dicts: List[Dict] = []
    for name in datasets:
        if is_registered_lvis_format(name):
            dicts += lvis_format_dicts(name, check_images=False)
        else:
            dicts += DatasetCatalog.get(name)
    return [d for d in dicts if d["annotations"]] if filter_empty else dicts


def training_class_stats(cfg) -> ClassStats:
    """Class statistics of what the model trains on: ``class_stats(DATASETS.TRAIN)``, or when
    ``holds_out_dev(cfg)`` those of the images left after the development split (a class with 3
    images, 2 of them held out, trains on 1: its prior and class weight must say 1)."""
    stats = class_stats(cfg.DATASETS.TRAIN)
    if not holds_out_dev(cfg):
        return stats
    # Cached: the heads, M2m, w_y, hooks and every evaluation ask for these, and each miss
    # re-reads the training json.
    tc = cfg.LTDET.TWO_COMPONENT
    key = (
        *cfg.DATASETS.TRAIN,
        (
            "dev_split",
            cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            tc.DEV_IMAGES_PER_CLASS,
            tc.ALLOW_UNCOVERED,
        ),
    )
    if key not in _CACHE:
        dicts = annotation_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        train, _ = split_for_config(cfg, dicts)
        _CACHE[key] = stats_of_dicts([dicts[i] for i in train], stats.names)
    return _CACHE[key]


# --------------------------------------------------------------------------- counts, checked
def _check_counts(counts: CountsLike, num_classes: int, name: str) -> Tensor:
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() != num_classes:
        raise ValueError(
            f"{name} must be a 1-D tensor of length num_classes={num_classes}, got shape "
            f"{list(counts.shape)} ({counts.numel()} entries); check MODEL.ROI_HEADS.NUM_CLASSES "
            f"vs the dataset's number of categories"
        )
    if not torch.isfinite(counts).all():
        raise ValueError(f"{name} contain non-finite values (NaN or inf)")
    if (counts < 0).any():
        bad = torch.nonzero(counts < 0).flatten()[:10].tolist()
        raise ValueError(f"{name} must be non-negative; negative at class indices {bad}")
    return counts


def check_num_images(counts: Tensor, num_images: float, name: str) -> None:
    """Raise unless ``num_images`` is a positive image total at least the largest count."""
    if not num_images > 0:
        raise ValueError(f"num_images must be > 0, got {num_images}")
    largest = counts.max().item() if counts.numel() else 0.0
    if num_images < largest:
        raise ValueError(
            f"num_images ({num_images}) is smaller than the largest of the {name} ({largest}); "
            f"counts must be image counts (training images containing each class), not "
            f"instance counts, and num_images the number of training images"
        )


def validate_counts(
    counts: CountsLike,
    num_classes: int,
    name: str = "class counts",
    floor: Optional[float] = None,
    allow_zero: bool = False,
) -> Tensor:
    """Check per-class counts and return them as a float64 ``[K]`` tensor.

    Raises ValueError on a wrong length, non-finite or negative values, and on zero counts unless
    ``floor`` (> 0) is given, in which case every count is clamped to at least ``floor``, or
    ``allow_zero`` (statistics that stay defined at zero, such as EQL's frequency).
    """
    counts = _check_counts(counts, num_classes, name)
    if allow_zero and floor is None:
        return counts
    if floor is not None:
        if not floor > 0:
            raise ValueError(f"floor must be > 0 (a floor count for empty classes), got {floor}")
        return counts.clamp(min=floor)
    zero = torch.nonzero(counts == 0).flatten()
    if zero.numel():
        shown = zero[:10].tolist()
        more = f" (and {zero.numel() - 10} more)" if zero.numel() > 10 else ""
        raise ValueError(
            f"{name}: {zero.numel()} classes have zero count, e.g. class indices {shown}{more}; "
            f"their log prior would be -inf. Set LTDET.CLASS_STATS.FLOOR (e.g. 1.0) to give them "
            f"a floor count"
        )
    return counts


def count_floor(floor: float) -> Optional[float]:
    """LTDET.CLASS_STATS.FLOOR as ``validate_counts``' ``floor``: 0 means none (zero counts are
    an error); a positive value raises every smaller count to it."""
    if not floor >= 0:
        raise ValueError(
            f"LTDET.CLASS_STATS.FLOOR must be >= 0 (0: classes without a training "
            f"image are an error; > 0: counts below it are raised to it), got {floor}"
        )
    return floor if floor > 0 else None


def config_class_counts(cfg, name: str) -> Tensor:
    """Counts of the images the run trains on (``training_class_stats``: without a held-out
    development split), of LTDET.CLASS_STATS.SOURCE, floored by FLOOR, one per class of
    MODEL.ROI_HEADS.NUM_CLASSES; ``name`` says who asks, in errors (zero counts name FLOOR)."""
    counts = training_class_stats(cfg).counts(cfg.LTDET.CLASS_STATS.SOURCE)
    return validate_counts(
        counts,
        cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        name,
        floor=count_floor(cfg.LTDET.CLASS_STATS.FLOOR),
    )
