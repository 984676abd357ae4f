import math

import pytest
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler

from ltdet.data.positioned import PositionedSampler
from ltdet.data.samplers import class_balanced_repeat_factors


def dicts(class_sets):
    return [{"annotations": [{"category_id": c} for c in cs]} for cs in class_sets]


# 10 images: class 0 in all of them, class 1 in 2, class 2 in 1; one image without annotations.
IMAGES = [[0, 1, 2]] + [[0, 1]] + [[0]] * 7 + [[]]


def test_repeat_factor_sampling_matches_lvis_formula():
    t = 0.3
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts(IMAGES), t)
    f = {0: 9 / 10, 1: 2 / 10, 2: 1 / 10}
    r = {c: max(1.0, math.sqrt(t / fc)) for c, fc in f.items()}  # r(c) = max(1, sqrt(t / f(c)))
    expected = [max(r[c] for c in cs) if cs else 1.0 for cs in IMAGES]
    torch.testing.assert_close(factors, torch.tensor(expected))
    assert factors[0] == pytest.approx(math.sqrt(3))


def test_class_balanced_meta_factors_by_hand():
    factors = class_balanced_repeat_factors(dicts(IMAGES), num_classes=3)
    # max over the image's classes of 1/f(c), scaled by 1/K
    expected = [10 / 3, 10 / 6, 10 / 27, 10 / 27, 10 / 27, 10 / 27, 10 / 27, 10 / 27, 10 / 27, 0.0]
    torch.testing.assert_close(factors, torch.tensor(expected))


def test_meta_sampler_refuses_classes_without_images():
    with pytest.raises(ValueError, match=r"classes \[3\] have no training image"):
        class_balanced_repeat_factors(dicts(IMAGES), num_classes=4)


def test_positioned_sampler_tags_positions_and_drops_the_consumed_prefix():
    base = RepeatFactorTrainingSampler(torch.tensor([1.0, 2.5, 0.5, 3.0]), seed=7)
    it = iter(base)
    first = [next(it) for _ in range(30)]
    skipped = iter(PositionedSampler(
        RepeatFactorTrainingSampler(torch.tensor([1.0, 2.5, 0.5, 3.0]), seed=7), 4, skip=12))
    keys = [next(skipped) for _ in range(18)]
    assert [divmod(k, 4) for k in keys] == [(12 + i, idx) for i, idx in enumerate(first[12:])]
