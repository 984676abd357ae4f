"""Class-balanced development split held out of the training images (Jamal et al. 2020, 4.2).

Detection images hold several classes, so the split is made class by class, rarest first: each
class gets up to ``per_class`` images containing it (counting images already taken for rarer
classes), drawn in a fixed pseudo-random order (``seed``), and never its last training image.
The held-out images leave the training set entirely.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np


def split_dev(dataset_dicts: List[Dict], num_classes: int, per_class: int, seed: int = 0,
              allow_uncovered: bool = False) -> Tuple[List[int], List[int]]:
    """Return (train indices, dev indices). Raises if a class cannot have a development image
    (fewer than two training images) unless ``allow_uncovered``."""
    if per_class < 1:
        raise ValueError(f"LTDET.TWO_COMPONENT.DEV_IMAGES_PER_CLASS must be >= 1, got {per_class}")
    classes = [{a["category_id"] for a in d["annotations"]} for d in dataset_dicts]
    images_of: List[List[int]] = [[] for _ in range(num_classes)]
    for i, cs in enumerate(classes):
        for c in cs:
            images_of[c].append(i)
    order = np.random.default_rng(seed).permutation(len(dataset_dicts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    dev: set = set()
    uncovered = []
    for c in sorted(range(num_classes), key=lambda c: len(images_of[c])):
        have = sum(i in dev for i in images_of[c])
        left = [i for i in images_of[c] if i not in dev]
        take = min(per_class - have, len(left) - 1)  # keep one training image
        for i in sorted(left, key=lambda i: rank[i])[:max(take, 0)]:
            dev.add(i)
        if have == 0 and take <= 0:
            uncovered.append(c)
    if uncovered and not allow_uncovered:
        raise ValueError(
            f"the development set cannot cover classes {uncovered[:10]} ({len(uncovered)} in "
            "all): they have fewer than 2 training images. Set "
            "LTDET.TWO_COMPONENT.ALLOW_UNCOVERED True to leave them out of the development set"
        )
    # classes that lost every training image to the dev set cannot happen (one is always kept)
    train = [i for i in range(len(dataset_dicts)) if i not in dev]
    return train, sorted(dev)
