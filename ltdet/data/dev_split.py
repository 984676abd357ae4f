"""Class-balanced development split held out of the training images (Jamal et al. 2020, 4.2).

Detection images hold several classes, so the split is made class by class, rarest first: each
class gets up to ``per_class`` images containing it (counting images already taken for rarer
classes), drawn in a fixed pseudo-random order (``seed``); an image is held out only if every
class in it keeps at least one training image.
The held-out images leave the training set entirely.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np


def split_dev(
    dataset_dicts: List[Dict],
    num_classes: int,
    per_class: int,
    seed: int = 0,
    allow_uncovered: bool = False,
) -> Tuple[List[int], List[int]]:
    """Return (train indices, dev indices). Raises if a class cannot have a development image
    (fewer than two training images, or every image of it holds another class's last one) unless
    ``allow_uncovered``."""
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
    # training images left per class; an image moves to dev only if every class in it keeps one
    left_count = np.array([len(ims) for ims in images_of])
    uncovered = []
    for c in sorted(range(num_classes), key=lambda c: len(images_of[c])):
        have = sum(i in dev for i in images_of[c])
        for i in sorted((i for i in images_of[c] if i not in dev), key=lambda i: rank[i]):
            if have >= per_class:
                break
            if all(left_count[k] >= 2 for k in classes[i]):
                dev.add(i)
                left_count[list(classes[i])] -= 1
                have += 1
        if have == 0:
            uncovered.append(c)
    if uncovered and not allow_uncovered:
        raise ValueError(
            f"the development set cannot cover classes {uncovered[:10]} ({len(uncovered)} in "
            "all): none of their images can be held out without taking the last training image "
            "of a class (theirs or one sharing the image). Set "
            "LTDET.TWO_COMPONENT.ALLOW_UNCOVERED True to leave them out of the development set"
        )
    train = [i for i in range(len(dataset_dicts)) if i not in dev]
    return train, sorted(dev)


def split_for_config(cfg, dicts: List[Dict]) -> Tuple[List[int], List[int]]:
    """``split_dev`` of the training dicts with LTDET.TWO_COMPONENT's settings."""
    tc = cfg.LTDET.TWO_COMPONENT
    return split_dev(
        dicts,
        cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        tc.DEV_IMAGES_PER_CLASS,
        seed=0,
        allow_uncovered=tc.ALLOW_UNCOVERED,
    )


def holds_out_dev(cfg) -> bool:
    """Whether this run trains without the development split (two-component fine-tuning, or
    any run with LTDET.TWO_COMPONENT.HOLD_OUT_DEV, such as the base model of Algorithm 1)."""
    tc = cfg.LTDET.TWO_COMPONENT
    return bool(tc.ENABLED or tc.HOLD_OUT_DEV)
