import itertools
import math

import pytest
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler

from ltdet.data.positioned import PositionedSampler, PositionSeededDataset
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
    skipped = iter(
        PositionedSampler(
            RepeatFactorTrainingSampler(torch.tensor([1.0, 2.5, 0.5, 3.0]), seed=7), 4, skip=12
        )
    )
    keys = [next(skipped) for _ in range(18)]
    assert [divmod(k, 4) for k in keys] == [(12 + i, idx) for i, idx in enumerate(first[12:])]


def test_position_seeded_dataset_draws_by_position_and_skips_rejected_images():
    """The mapper runs under RNGs seeded by (seed, rank, position) only: the same key gives the
    same draw in any order, other positions or seeds give others, the caller's RNG is left as it
    was; an image the mapper rejects (None) is replaced by the next one."""
    import numpy as np

    items = [{"i": i} for i in range(3)]
    ds = PositionSeededDataset(items, lambda d: (d["i"], float(np.random.rand())), seed=5)
    keys = [p * 3 + p % 3 for p in range(6)]  # key = position * len + index, positions 0..5
    a = [ds[k] for k in keys]
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    assert [ds[k] for k in reversed(keys)] == a[::-1]
    assert (np.random.get_state()[1] == before).all()
    assert len({x[1] for x in a}) == 6
    other = PositionSeededDataset(items, lambda d: (d["i"], float(np.random.rand())), seed=6)
    assert other[0] != a[0] and other[0][0] == 0

    picky = PositionSeededDataset(items, lambda d: None if d["i"] == 1 else d["i"], seed=5)
    assert [picky[k] for k in range(3)] == [0, 2, 2]
    with pytest.raises(RuntimeError, match="rejected every training image"):
        PositionSeededDataset(items, lambda d: None, seed=5)[0]


@pytest.mark.parametrize("grouping", [False, True], ids=["no_grouping", "grouping"])
def test_resumed_loader_continues_the_batches_for_any_number_of_workers(grouping):
    """Batch j of a loader is keys [jB, (j+1)B) of the sampler's stream, with 0, 2 or 3 worker
    processes, and a loader that skips s batches' keys (what --resume builds) yields batches
    s, s+1, ... of the uninterrupted one. detectron2 v0.6 alone shards key by key: without
    grouping, 2 workers resumed after 1 batch gave [[2, 4], [3, 5], ...] for [[1, 3], [4, 6]]."""
    from detectron2.config import get_cfg
    from detectron2.data.samplers import TrainingSampler

    from ltdet.data.positioned import build_positioned_train_loader

    dicts = [{"i": i, "width": 8, "height": 6} for i in range(7)]
    stream = list(itertools.islice(iter(TrainingSampler(7, seed=3)), 40))
    batch = 2
    want = [stream[j * batch : (j + 1) * batch] for j in range(12)]
    for workers in (0, 2, 3):
        cfg = get_cfg()
        cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
        cfg.DATALOADER.NUM_WORKERS = workers
        cfg.SOLVER.IMS_PER_BATCH = batch
        for start in (0, 1, 2, 5):
            loader = build_positioned_train_loader(
                cfg,
                dicts,
                TrainingSampler(7, seed=3),
                seed=0,
                skip=start * batch,
                mapper=lambda d: d,
            )
            it = iter(loader)
            got = [[d["i"] for d in next(it)] for _ in range(6)]
            del it
            assert got == want[start : start + 6], (workers, start)
