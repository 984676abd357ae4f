"""LVIS AP (with APr/APc/APf) through the fast backend (``fast_lvis``, lvis-api's numbers) or
lvis-api itself, plus per-class AP and its plot written to the output dir."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from ..data.class_stats import ClassStats, class_stats
from ..data.lvis_format import lvis_eval_error, lvis_eval_problems
from ..file_io import atomic_open
from .fast_lvis import FastLVISEval, LVISDetections
from .per_class import per_class_ap, plot_per_class_ap, write_per_class_csv

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
# LVIS AP counts each image's top 300 detections (Gupta et al. 2019; lvis-api's default)
LVIS_MAX_DETS = 300
# "fast": ltdet's NumPy implementation of lvis-api's protocol (tests/test_eval_backend.py: equal
# to 1e-9); "lvis-api": lvis-api's LVISEval itself, the reference
BACKENDS = ("fast", "lvis-api")

logger = logging.getLogger(__name__)


def check_lvis_fields(data: dict, source: str) -> None:
    """Raise, naming what is missing, unless lvis-api can evaluate against ``data`` (an
    LVIS-format json's contents): its KeyError would come only after the whole inference pass."""
    problems = lvis_eval_problems(data)
    if problems:
        raise ValueError(lvis_eval_error(problems, source))


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(
            f"LVIS evaluation backend {backend!r} is unknown: use one of {BACKENDS} "
            "(LTDET.EVAL.BACKEND, or --backend of tools/evaluate.py)"
        )


def score_lvis(
    dataset: dict,
    dets: LVISDetections,
    task: str,
    backend: str = "fast",
    max_dets: int = LVIS_MAX_DETS,
):
    """LVIS metrics of ``dets`` on the json contents ``dataset`` for task "bbox" or "segm":
    (metrics in percent with NaN for lvis-api's -1 "no data", per-class AP as fractions in
    sorted category-id order). Segm sizes objects by their mask area, as detectron2 does."""
    check_backend(backend)
    if backend == "lvis-api":
        return score_results_with_lvis_api(
            dataset, detections_to_results(dets, with_boxes=task == "bbox"), task, max_dets
        )
    ev = FastLVISEval(dataset, dets, task, max_dets).run()
    return _percent(ev.results), per_class_ap(ev)


def score_results_with_lvis_api(
    dataset: dict, results: List[dict], task: str, max_dets: int = LVIS_MAX_DETS
):
    """As ``score_lvis``, by lvis-api's LVISEval on its result dicts (the reference)."""
    from lvis import LVIS, LVISEval, LVISResults

    gt = LVIS.__new__(LVIS)  # lvis-api reads only files; the index is built the same way
    gt.logger = logging.getLogger("lvis.lvis")
    gt.dataset = dataset
    gt._create_index()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = LVISEval(gt, LVISResults(gt, results, max_dets=max_dets), task)
        ev.run()
    return _percent(ev.get_results()), per_class_ap(ev)


def _percent(res) -> Dict[str, float]:
    # lvis-api's -1 means "no data" (a frequency group or size range without ground truth):
    # NaN, as per-class AP has it, not an AP of -100 that would enter averages
    return {m: float(res[m] * 100) if res[m] >= 0 else float("nan") for m in METRICS}


def detections_to_results(
    dets: LVISDetections, with_boxes: bool = True, with_masks: bool = True
) -> List[dict]:
    """lvis-api's result dicts (bbox XYWH, segmentation RLE with str counts)."""
    img, cat, score = dets.image_ids.tolist(), dets.category_ids.tolist(), dets.scores.tolist()
    boxes = dets.boxes.tolist() if (with_boxes and dets.boxes is not None) else None
    masks = dets.masks if with_masks else None
    out = []
    for i in range(len(img)):
        r = {"image_id": img[i], "category_id": cat[i], "score": score[i]}
        if boxes is not None:
            r["bbox"] = boxes[i]
        if masks is not None:
            m = masks[i]
            c = m["counts"]
            r["segmentation"] = {
                "size": m["size"],
                "counts": c.decode() if isinstance(c, bytes) else c,
            }
        out.append(r)
    return out


def write_results_json(f, dets: LVISDetections, chunk: int = 100_000) -> None:
    """``dets`` to the open text file ``f`` as lvis-api's result list, the same values as
    ``json.dump(detections_to_results(dets))`` (floats as repr, which json uses) written without
    a dict per detection: at 1.5 M detections the dicts cost more than scoring them."""
    finite = np.isfinite(dets.scores).all() and (
        dets.boxes is None or np.isfinite(dets.boxes).all()
    )
    if not finite:  # NaN / inf: json's own spelling
        json.dump(detections_to_results(dets), f)
        return
    f.write("[")
    for lo in range(0, len(dets), chunk):
        hi = min(lo + chunk, len(dets))
        img, cat = dets.image_ids[lo:hi].tolist(), dets.category_ids[lo:hi].tolist()
        score = dets.scores[lo:hi].tolist()
        if dets.boxes is not None:
            box = dets.boxes[lo:hi].tolist()
            rows = [
                '{"image_id": %d, "category_id": %d, "bbox": [%r, %r, %r, %r], "score": %r'
                % (img[i], cat[i], *box[i], score[i])
                for i in range(hi - lo)
            ]
        else:
            rows = [
                '{"image_id": %d, "category_id": %d, "score": %r' % (img[i], cat[i], score[i])
                for i in range(hi - lo)
            ]
        if dets.masks is not None:
            rows = [
                r
                + ', "segmentation": {"size": [%d, %d], "counts": %s}}'
                % (
                    *m["size"],
                    json.dumps(
                        m["counts"].decode() if isinstance(m["counts"], bytes) else m["counts"]
                    ),
                )
                for r, m in zip(rows, dets.masks[lo:hi])
            ]
        else:
            rows = [r + "}" for r in rows]
        f.write((", " if lo else "") + ", ".join(rows))
    f.write("]")


def write_lvis_outputs(
    output_dir: str,
    metrics: Dict[str, Dict[str, float]],
    per_class: Dict[str, np.ndarray],
    categories: Sequence[dict],
    train_stats: Optional[ClassStats],
    title: str = "",
) -> None:
    """``lvis_metrics.json``, ``per_class_ap.csv`` and (with training counts)
    ``per_class_ap.png``, each written atomically. ``categories``: the json's, any order."""
    os.makedirs(output_dir, exist_ok=True)
    with atomic_open(os.path.join(output_dir, "lvis_metrics.json")) as f:
        json.dump(metrics, f, indent=1)
    if not per_class:
        return
    cats = sorted(categories, key=lambda c: c["id"])
    names = [c.get("name", str(c["id"])) for c in cats]
    freq = [c.get("frequency", "") for c in cats]
    write_per_class_csv(
        os.path.join(output_dir, "per_class_ap.csv"),
        names,
        per_class,
        train_stats,
        freq,
        category_ids=[c["id"] for c in cats],
    )
    if train_stats is not None:
        plot_per_class_ap(
            os.path.join(output_dir, "per_class_ap.png"),
            per_class,
            train_stats.image_counts,
            names=names,
            title=title,
        )
    logger.info(
        "Per-class AP written to %s/per_class_ap.{csv%s}",
        output_dir,
        ",png" if train_stats is not None else "",
    )


class LongTailLVISEvaluator(LVISEvaluator):
    """detectron2's LVISEvaluator that holds detections as arrays, scores them with the fast
    backend (or lvis-api) and keeps per-class AP: besides the usual metrics it writes
    ``per_class_ap.csv`` and ``per_class_ap.png`` (AP against the training frequency of
    ``train_dataset``, one name or several) to ``output_dir``."""

    def __init__(
        self,
        dataset_name: str,
        tasks=None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        train_dataset: Union[str, Sequence[str], None] = None,
        per_class: bool = True,
        train_stats: Optional[Callable[[], ClassStats]] = None,
        backend: str = "fast",
    ):
        check_backend(backend)
        try:
            super().__init__(
                dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image
            )
        except (json.JSONDecodeError, KeyError) as e:  # lvis-api's bare errors on a broken json
            source = MetadataCatalog.get(dataset_name).get("json_file", dataset_name)
            raise ValueError(
                f"{source} cannot be read by lvis-api ({type(e).__name__}: {e}): it must be valid "
                "json with 'images', 'annotations' and 'categories'; re-download or regenerate "
                "it"
            ) from e
        self._dataset_name = dataset_name
        self._backend = backend
        self._train_dataset = train_dataset
        # overrides class_stats(train_dataset): e.g. the images left after a development split
        self._train_stats_fn = train_stats
        self._per_class = per_class
        if self._do_evaluation:
            check_lvis_fields(self._lvis_api.dataset, self._metadata.get("json_file", dataset_name))

    def process(self, inputs, outputs):
        """Per image, arrays (XYWH boxes and scores as the model's float32, classes) and RLE
        masks: what detectron2's ``instances_to_coco_json`` holds as one dict per detection."""
        for input, output in zip(inputs, outputs):
            prediction = {"image_id": input["image_id"]}
            if "instances" in output:
                inst = output["instances"].to(self._cpu_device)
                boxes = BoxMode.convert(
                    inst.pred_boxes.tensor.clone(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS
                )
                arrays = {
                    "boxes": boxes.numpy(),
                    "scores": inst.scores.numpy(),
                    "classes": inst.pred_classes.numpy().astype(np.int64),
                }
                if inst.has("pred_masks"):
                    import pycocotools.mask as mask_util

                    arrays["masks"] = [
                        mask_util.encode(np.array(m[:, :, None], order="F", dtype="uint8"))[0]
                        for m in inst.pred_masks.numpy()
                    ]
                prediction["instances"] = arrays
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            self._predictions.append(prediction)

    def _detections(self, predictions) -> LVISDetections:
        """All images' detections as one LVISDetections with the json's category ids. Accepts
        process()'s arrays and detectron2's per-detection dicts alike."""
        # Contiguous ids back to the json's category ids. The metadata's map is set only once
        # the dataset has been loaded; ltdet's contiguous ids are the json's ids in sorted order,
        # so lvis-api's own category list gives the same map (detectron2's "+ 1" would silently
        # drop every detection of a json with non-contiguous ids).
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map:
            to_json = np.zeros(max(id_map.values()) + 1, dtype=np.int64)
            for k, v in id_map.items():
                to_json[v] = k
        else:
            to_json = np.array(sorted(self._lvis_api.get_cat_ids()), dtype=np.int64)
        parts = []
        for p in predictions:
            inst = p["instances"]
            if isinstance(inst, dict):
                n = len(inst["scores"])
                parts.append(
                    LVISDetections(
                        np.full(n, p["image_id"]),
                        inst["classes"],
                        inst["scores"],
                        inst["boxes"],
                        inst.get("masks"),
                    )
                )
            elif inst:
                parts.append(LVISDetections.from_results(inst))
        if not parts:
            return LVISDetections(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 4)))
        with_masks = all(d.masks is not None for d in parts)
        return LVISDetections(
            np.concatenate([d.image_ids for d in parts]),
            to_json[np.concatenate([d.category_ids for d in parts])],
            np.concatenate([d.scores for d in parts]),
            np.concatenate([d.boxes for d in parts]),
            [m for d in parts for m in d.masks] if with_masks else None,
        )

    def _eval_predictions(self, predictions):
        t0 = time.perf_counter()
        dets = self._detections(predictions)
        if self._output_dir:
            path = os.path.join(self._output_dir, "lvis_instances_results.json")
            with atomic_open(path) as f:
                write_results_json(f, dets)
        if not self._do_evaluation:
            return
        self._logger.info(
            "Scoring %d detections with the %s LVIS backend (%.1f s to gather and write them)",
            len(dets),
            self._backend,
            time.perf_counter() - t0,
        )
        tasks = self._tasks or (("bbox", "segm") if dets.masks is not None else ("bbox",))
        per_class = {}
        for task in sorted(tasks):
            if not len(dets):
                self._logger.warning("No predictions from the model!")
                self._results[task] = {m: float("nan") for m in METRICS}
                continue
            self._results[task], per_class[task] = score_lvis(
                self._lvis_api.dataset,
                dets,
                task,
                self._backend,
                self._max_dets_per_image or LVIS_MAX_DETS,
            )
            self._logger.info(
                f"Evaluation results for {task}:\n" + create_small_table(self._results[task])
            )
        if self._output_dir and comm.is_main_process():
            stats = (
                self._train_stats(len(self._lvis_api.cats))
                if self._per_class and per_class
                else None
            )
            write_lvis_outputs(
                self._output_dir,
                self._results,
                per_class if self._per_class else {},
                self._lvis_api.dataset["categories"],
                stats,
                title=self._dataset_name,
            )

    def _train_stats(self, num_classes: int):
        """Training counts for the per-class table, or None (with a warning) when they cannot be
        had: the metrics are computed by then, and an --eval-only run needs no training data."""
        if not self._train_dataset:
            return None
        try:
            stats = (
                self._train_stats_fn()
                if self._train_stats_fn is not None
                else class_stats(self._train_dataset)
            )
            if stats.num_classes != num_classes:
                raise ValueError(
                    f"training set(s) {self._train_dataset} have {stats.num_classes} "
                    f"classes but the evaluated json has {num_classes}; they must "
                    "share one category list"
                )
            return stats
        except (OSError, KeyError, ValueError) as e:
            self._logger.warning(
                "Per-class AP is written without training counts and without its plot: the "
                "training set's statistics are not available (%s: %s). Register DATASETS.TRAIN's "
                "json to get them, or set LTDET.EVAL.PER_CLASS False to skip the table.",
                type(e).__name__,
                e,
            )
            return None
