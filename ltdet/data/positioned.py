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


class ShardedStream(torch.utils.data.IterableDataset):
    """``dataset[key]`` for the keys of ``sampler``, split over data-loader workers in chunks of
    ``chunk`` consecutive keys (worker w maps chunks w, w + W, ...).

    Sharding here rather than in detectron2 (v0.6 shards key by key, later versions by batch)
    fixes the order: torch's DataLoader takes the workers' outputs in turn, so with chunks of
    one batch (no aspect-ratio grouping; the DataLoader batches within a worker) batch j is
    keys [jB, (j+1)B), and with chunks of one (grouping; the DataLoader yields single samples)
    samples come in key order. Either way a stream started ``skip`` keys later yields what the
    uninterrupted one yields from there, for any number of workers."""

    def __init__(self, dataset: torch.utils.data.Dataset, sampler, chunk: int):
        self.dataset, self.sampler, self.chunk = dataset, sampler, int(chunk)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for t, key in enumerate(self.sampler):
            if (t // self.chunk) % workers == worker:
                yield self.dataset[key]


def build_positioned_train_loader(
    cfg,
    dicts: List[Dict],
    sampler,
    seed: int,
    skip: int = 0,
    total_batch_size: Optional[int] = None,
    mapper=None,
):
    """What detectron2's ``build_detection_train_loader`` builds from ``cfg`` (DatasetMapper,
    aspect-ratio grouping, workers) over ``dicts`` drawn by ``sampler``, with position-seeded
    augmentation and the first ``skip`` draws of this rank dropped."""
    dataset = PositionSeededDataset(dicts, mapper or DatasetMapper(cfg, True), seed)
    total = total_batch_size or cfg.SOLVER.IMS_PER_BATCH
    grouping = cfg.DATALOADER.ASPECT_RATIO_GROUPING
    per_rank = total // comm.get_world_size()  # divisibility is checked by detectron2 below
    stream = ShardedStream(
        dataset,
        PositionedSampler(sampler, len(dataset), skip),
        chunk=1 if grouping else max(per_rank, 1),
    )
    return build_batch_data_loader(
        stream, None, total, aspect_ratio_grouping=grouping, num_workers=cfg.DATALOADER.NUM_WORKERS
    )
