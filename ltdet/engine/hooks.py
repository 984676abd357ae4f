"""Training hooks of ltdet."""

import csv
import logging
import os
from typing import Sequence, Union

import numpy as np
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data import ClassStats, class_stats
from ..evaluation.per_class import plot_class_weights


class MetaWeightsHook(HookBase):
    """Logs the Meta Reweigher's class weights every ``period`` iterations (event storage:
    min/mean/max and the mean per LVIS group) and, after training, writes
    ``meta_class_weights.csv`` and ``meta_class_weights.png`` (weight against class frequency)."""

    def __init__(
        self,
        reweigher,
        train_dataset: Union[str, Sequence[str], ClassStats],
        output_dir: str,
        period: int = 20,
    ):
        if period < 1:
            raise ValueError(
                f"period must be >= 1 (iterations between class-weight logs), got {period}"
            )
        self.reweigher, self.period, self.output_dir = reweigher, period, output_dir
        # the statistics of the images trained on (the Trainer passes training_class_stats)
        self.stats = (
            train_dataset if isinstance(train_dataset, ClassStats) else class_stats(train_dataset)
        )

    def _weights(self) -> np.ndarray:
        return self.reweigher.class_weights().detach().cpu().numpy()

    def after_step(self):
        it = self.trainer.iter + 1
        if it % self.period and it != self.trainer.max_iter:
            return
        w = self._weights()
        groups = np.array(self.stats.frequency)
        scalars = {"meta_w/min": w.min(), "meta_w/mean": w.mean(), "meta_w/max": w.max()}
        for g in "rcf":
            if (groups == g).any():
                scalars[f"meta_w/{g}"] = w[groups == g].mean()
        self.trainer.storage.put_scalars(
            **{k: float(v) for k, v in scalars.items()}, smoothing_hint=False
        )

    def after_train(self):
        if not comm.is_main_process() or not self.output_dir:
            return
        w = self._weights()
        with open(os.path.join(self.output_dir, "meta_class_weights.csv"), "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["class_id", "name", "train_image_count", "frequency", "weight"])
            for k, name in enumerate(self.stats.names):
                out.writerow(
                    [
                        k,
                        name,
                        int(self.stats.image_counts[k]),
                        self.stats.frequency[k],
                        f"{w[k]:.5f}",
                    ]
                )
        plot_class_weights(
            os.path.join(self.output_dir, "meta_class_weights.png"), w, self.stats.image_counts
        )
        logging.getLogger(__name__).info(
            "Meta Reweigher class weights written to %s", self.output_dir
        )
