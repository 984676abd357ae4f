"""Training loaders whose augmentation depends only on a sample's position in the stream.

detectron2's workers seed their augmentation RNG once per process, so which flip or scale a
sample gets depends on the worker that maps it and on what that worker mapped before: a resumed
run (fresh workers) augments differently from the uninterrupted one. Here the sampler tags each
index with its position in this rank's stream, and the dataset maps it under an RNG seeded from
(seed, rank, position): the same batches for any number of workers, and after ``--resume``.
"""
from __future__ import annotations

import itertools
import random
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetFromList, DatasetMapper
from detectron2.data.build import build_batch_data_loader
from detectron2.utils import comm


class PositionedSampler(torch.utils.data.Sampler):
    """Wrap a per-rank (infinite) detectron2 sampler: yield ``position * num_items + index`` for
    every index it draws, from position ``skip`` on (the first ``skip`` draws were consumed
    before a checkpoint). Exact resume when all images fall in one aspect-ratio group, or
    ASPECT_RATIO_GROUPING is off."""

    def __init__(self, sampler, num_items: int, skip: int = 0):
        self.sampler, self.num_items, self.skip = sampler, int(num_items), int(skip)

    def __iter__(self) -> Iterator[int]:
        draws = itertools.islice(enumerate(iter(self.sampler)), self.skip, None)
        for pos, idx in draws:
            yield pos * self.num_items + int(idx)


class PositionSeededDataset(torch.utils.data.Dataset):
    """Dataset dicts mapped by ``mapper`` under python, numpy and torch RNGs seeded from (seed,
    rank, position); the callers' RNG states are restored afterwards (with no workers the mapper
    runs in the training process, whose RNGs drive proposal sampling)."""

    def __init__(self, dicts: List[Dict], mapper: Callable[[Dict], Optional[Dict]], seed: int):
        self._dicts = DatasetFromList(dicts, copy=False, serialize=True)  # as detectron2 does
        self.mapper, self.seed, self.rank = mapper, int(seed), comm.get_rank()

    def __len__(self) -> int:
        return len(self._dicts)

    def sample_seed(self, position: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.rank, position]).generate_state(1)[0])

    def __getitem__(self, key: int):
        position, index = divmod(int(key), len(self._dicts))
        seed = self.sample_seed(position)
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            np.random.seed(seed)  # detectron2's augmentations draw from numpy's global RNG
            random.seed(seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for attempt in range(len(self._dicts)):
                    # A mapper may reject an image (None); like detectron2's MapDataset, take
                    # another one (the next, so the choice is reproducible too).
                    data = self.mapper(self._dicts[(index + attempt) % len(self._dicts)])
                    if data is not None:
                        return data
                raise RuntimeError("the dataset mapper rejected every training image")
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def build_positioned_train_loader(cfg, dicts: List[Dict], sampler, seed: int, skip: int = 0,
                                  total_batch_size: Optional[int] = None, mapper=None):
    """What detectron2's ``build_detection_train_loader`` builds from ``cfg`` (DatasetMapper,
    aspect-ratio grouping, workers) over ``dicts`` drawn by ``sampler``, with position-seeded
    augmentation and the first ``skip`` draws of this rank dropped."""
    dataset = PositionSeededDataset(dicts, mapper or DatasetMapper(cfg, True), seed)
    return build_batch_data_loader(
        dataset, PositionedSampler(sampler, len(dataset), skip),
        total_batch_size or cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS)
