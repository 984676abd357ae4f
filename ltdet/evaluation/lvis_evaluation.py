"""LVIS AP (with APr/APc/APf) through lvis-api, plus per-class AP written to the output dir."""
from __future__ import annotations

import itertools
import json
import os
from typing import Callable, Optional, Sequence, Union

from detectron2.data import MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from ..data.class_stats import ClassStats, class_stats
from ..data.lvis_format import lvis_eval_error, lvis_eval_problems
from .per_class import per_class_ap, plot_per_class_ap, write_per_class_csv

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
# LVIS AP counts each image's top 300 detections (Gupta et al. 2019; lvis-api's default)
LVIS_MAX_DETS = 300


def check_lvis_fields(data: dict, source: str) -> None:
    """Raise, naming what is missing, unless lvis-api can evaluate against ``data`` (an
    LVIS-format json's contents): its KeyError would come only after the whole inference pass."""
    problems = lvis_eval_problems(data)
    if problems:
        raise ValueError(lvis_eval_error(problems, source))


class LongTailLVISEvaluator(LVISEvaluator):
    """detectron2's LVISEvaluator that keeps lvis-api's per-class precision: besides the usual
    metrics it writes ``per_class_ap.csv`` and ``per_class_ap.png`` (AP against the training
    frequency of ``train_dataset``, one name or several) to ``output_dir``."""

    def __init__(self, dataset_name: str, tasks=None, distributed: bool = True,
                 output_dir: Optional[str] = None, *, max_dets_per_image: Optional[int] = None,
                 train_dataset: Union[str, Sequence[str], None] = None, per_class: bool = True,
                 train_stats: Optional[Callable[[], ClassStats]] = None):
        try:
            super().__init__(dataset_name, tasks, distributed, output_dir,
                             max_dets_per_image=max_dets_per_image)
        except (json.JSONDecodeError, KeyError) as e:  # lvis-api's bare errors on a broken json
            source = MetadataCatalog.get(dataset_name).get("json_file", dataset_name)
            raise ValueError(
                f"{source} cannot be read by lvis-api ({type(e).__name__}: {e}): it must be valid "
                "json with 'images', 'annotations' and 'categories'; re-download or regenerate "
                "it") from e
        self._train_dataset = train_dataset
        # overrides class_stats(train_dataset): e.g. the images left after a development split
        self._train_stats_fn = train_stats
        self._per_class = per_class
        if self._do_evaluation:
            check_lvis_fields(self._lvis_api.dataset, self._metadata.get("json_file", dataset_name))

    def _eval_predictions(self, predictions):
        results = list(itertools.chain(*[x["instances"] for x in predictions]))
        # Contiguous ids back to the json's category ids. The metadata's map is set only once
        # the dataset has been loaded; ltdet's contiguous ids are the json's ids in sorted order,
        # so lvis-api's own category list gives the same map (detectron2's "+ 1" would silently
        # drop every detection of a json with non-contiguous ids).
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map:
            to_json = {v: k for k, v in id_map.items()}
        else:
            to_json = dict(enumerate(sorted(self._lvis_api.get_cat_ids())))
        for r in results:
            r["category_id"] = to_json[r["category_id"]]
        if self._output_dir:
            with open(os.path.join(self._output_dir, "lvis_instances_results.json"), "w") as f:
                json.dump(results, f)
        if not self._do_evaluation:
            return

        from lvis import LVISEval, LVISResults

        per_class = {}
        for task in sorted(self._tasks or self._tasks_from_predictions(results)):
            if not results:
                self._logger.warning("No predictions from the model!")
                self._results[task] = {m: float("nan") for m in METRICS}
                continue
            dets = results
            if task == "segm":  # let mask AP use the mask area for size ranges (as detectron2)
                dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
            lvis_dt = LVISResults(self._lvis_api, dets, max_dets=self._max_dets_per_image or LVIS_MAX_DETS)
            ev = LVISEval(self._lvis_api, lvis_dt, task)
            ev.run()
            ev.print_results()
            res = ev.get_results()
            # lvis-api's -1 means "no data" (a frequency group or size range without ground
            # truth): NaN, as per-class AP has it, not an AP of -100 that would enter averages
            self._results[task] = {m: float(res[m] * 100) if res[m] >= 0 else float("nan")
                                   for m in METRICS}
            self._logger.info(f"Evaluation results for {task}:\n"
                              + create_small_table(self._results[task]))
            per_class[task] = per_class_ap(ev)
            cat_ids = ev.params.cat_ids
        if self._output_dir and comm.is_main_process():
            with open(os.path.join(self._output_dir, "lvis_metrics.json"), "w") as f:
                json.dump(self._results, f, indent=1)
        if self._per_class and self._output_dir and per_class:
            self._write_per_class(per_class, cat_ids)

    def _write_per_class(self, per_class, cat_ids):
        cats = self._lvis_api.cats
        names = [cats[c].get("name", str(c)) for c in cat_ids]
        freq = [cats[c].get("frequency", "") for c in cat_ids]
        stats = self._train_stats(len(cat_ids))
        out = self._output_dir
        write_per_class_csv(os.path.join(out, "per_class_ap.csv"), names, per_class, stats, freq,
                            category_ids=list(cat_ids))
        if stats is not None:
            plot_per_class_ap(os.path.join(out, "per_class_ap.png"), per_class, stats.image_counts)
        self._logger.info("Per-class AP written to %s/per_class_ap.{csv,png}", out)

    def _train_stats(self, num_classes: int):
        """Training counts for the per-class table, or None (with a warning) when they cannot be
        had: the metrics are computed by then, and an --eval-only run needs no training data."""
        if not self._train_dataset:
            return None
        try:
            stats = (self._train_stats_fn() if self._train_stats_fn is not None
                     else class_stats(self._train_dataset))
            if stats.num_classes != num_classes:
                raise ValueError(f"training set(s) {self._train_dataset} have {stats.num_classes} "
                                 f"classes but the evaluated json has {num_classes}; they must "
                                 "share one category list")
            return stats
        except (OSError, KeyError, ValueError) as e:
            self._logger.warning(
                "Per-class AP is written without training counts and without its plot: the "
                "training set's statistics are not available (%s: %s). Register DATASETS.TRAIN's "
                "json to get them, or set LTDET.EVAL.PER_CLASS False to skip the table.",
                type(e).__name__, e)
            return None
