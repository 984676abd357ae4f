"""Repeat factors for detectron2's RepeatFactorTrainingSampler."""

from __future__ import annotations

from typing import Dict, List

import torch


def _image_classes(dataset_dicts: List[Dict]) -> List[set]:
    return [{a["category_id"] for a in d["annotations"]} for d in dataset_dicts]


def _class_image_freq(classes: List[set], num_images: int) -> Dict[int, float]:
    counts: Dict[int, int] = {}
    for cs in classes:
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    return {c: n / num_images for c, n in counts.items()}


def class_balanced_repeat_factors(
    dataset_dicts: List[Dict], num_classes: int, allow_missing: bool = False
) -> torch.Tensor:
    """Image repeat factors for a class-balanced meta set (BALMS code): the max over the image's
    classes of 1/f(c), f(c) the fraction of images containing c, scaled by 1/K so that an epoch
    is about as long as the dataset (the distribution is unchanged; LVIS would otherwise list
    ~K x N indices per epoch). Images without annotations get 0 (never drawn). A class without
    images is an error unless ``allow_missing`` (a development split that leaves it out)."""
    classes = _image_classes(dataset_dicts)
    freq = _class_image_freq(classes, len(dataset_dicts))
    missing = sorted(set(range(num_classes)) - set(freq))
    if missing and not allow_missing:
        raise ValueError(
            f"class-balanced meta sampler: classes {missing[:10]} have no training image, so no "
            "balanced batch can contain them (LTDET.CLASS_STATS.FLOOR only floors the losses' "
            "counts); remove them from the dataset or disable LTDET.META.ENABLED"
        )
    return torch.tensor(
        [max((1.0 / (num_classes * freq[c]) for c in cs), default=0.0) for cs in classes],
        dtype=torch.float32,
    )
