"""Evaluate a saved detections file (lvis-api's result format, from ltdet or any detector)
against an LVIS-format json, writing what training writes: ``lvis_metrics.json``,
``per_class_ap.csv`` and ``per_class_ap.png``. ``tools/evaluate.py`` is its command line."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional, Sequence

import numpy as np

from ..data import ClassStats
from .fast_lvis import LVISDetections
from .lvis_evaluation import (
    LVIS_MAX_DETS,
    check_backend,
    check_lvis_fields,
    score_lvis,
    write_lvis_outputs,
)

logger = logging.getLogger(__name__)


def read_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror or e}; check the path") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"the {what} {path} is not valid json ({e}): it may be truncated or of "
            "another format; write it again (json.dump of a list of dicts for "
            "detections)"
        ) from e


def load_ground_truth(path: str) -> dict:
    data = read_json(path, "ground-truth json")
    if isinstance(data, list):
        raise ValueError(
            f"{path} is a list (detection results?), not an LVIS-format json with "
            "'images', 'annotations' and 'categories': pass it as --dt and the "
            "dataset's json as --gt"
        )
    if not isinstance(data, dict) or any(
        k not in data for k in ("images", "annotations", "categories")
    ):
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path} is not an LVIS-format json (it has {keys}; 'images', "
            "'annotations' and 'categories' are needed): pass the dataset's json, "
            "e.g. lvis_v1_val.json, as --gt"
        )
    check_lvis_fields(data, path)
    return data


def load_detections(
    path: str, dataset: dict, gt_path: str = "the ground-truth json"
) -> LVISDetections:
    """The detections of ``path``, checked against ``dataset``: every image and every category
    must be the json's (lvis-api would silently drop detections of unknown categories)."""
    data = read_json(path, "detections file")
    if isinstance(data, dict):
        hint = " (it is a dataset json: pass it as --gt)" if "annotations" in data else ""
        raise ValueError(
            f"{path} is a json object{hint}; detections are a list of dicts with "
            "image_id, category_id, score and bbox and/or segmentation (lvis-api's "
            "result format, ltdet's lvis_instances_results.json)"
        )
    if not data:
        raise ValueError(f"{path} holds no detections: nothing to evaluate")
    dets = LVISDetections.from_results(data)
    del data
    img_ids = np.array([im["id"] for im in dataset["images"]], dtype=np.int64)
    unknown = np.setdiff1d(dets.image_ids, img_ids)
    if len(unknown):
        raise ValueError(
            f"{path} has detections on {len(unknown)} image(s) that {gt_path} does "
            f"not list (e.g. ids {unknown[:5].tolist()}): pass the json of the split "
            "the detections were made on"
        )
    cat_ids = np.array(sorted(c["id"] for c in dataset["categories"]), dtype=np.int64)
    bad = ~np.isin(dets.category_ids, cat_ids)
    if bad.any():
        ids = np.unique(dets.category_ids[bad])
        hint = ""
        if dets.category_ids.min() >= 0 and dets.category_ids.max() < len(cat_ids):
            hint = (
                " They look like contiguous class indices 0..K-1: map index k to the k-th "
                "smallest category id of the json."
            )
        raise ValueError(
            f"{int(bad.sum())} of {len(dets)} detections in {path} have category ids that "
            f"{gt_path} does not have (e.g. {ids[:5].tolist()}): the results are for another "
            f"category list ({len(cat_ids)} categories here, ids {cat_ids[0]}..{cat_ids[-1]})."
            f"{hint} Evaluate against the json the detector was trained for"
        )
    return dets


def counts_from_json(path: str, categories: Sequence[dict]) -> ClassStats:
    """Training counts for the per-class plot from a training json's annotations."""
    data = load_ground_truth_light(path)
    cat_ids = sorted(c["id"] for c in categories)
    index = {c: k for k, c in enumerate(cat_ids)}
    images = np.zeros(len(cat_ids), dtype=np.int64)
    instances = np.zeros(len(cat_ids), dtype=np.int64)
    pairs = set()
    for a in data["annotations"]:
        k = index.get(a["category_id"])
        if k is None:
            raise ValueError(
                f"{path} has category id {a['category_id']} that the evaluated json "
                "lacks: the training json must share its category list"
            )
        instances[k] += 1
        pairs.add((a["image_id"], k))
    for _, k in pairs:
        images[k] += 1
    names = [c.get("name", str(c["id"])) for c in sorted(categories, key=lambda c: c["id"])]
    return ClassStats(
        names, images, instances, num_images=len({a["image_id"] for a in data["annotations"]})
    )


def load_ground_truth_light(path: str) -> dict:
    data = read_json(path, "training json")
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(
            f"{path} is not an LVIS-format json with 'annotations': pass the "
            "training set's json as --train-json"
        )
    return data


def counts_from_categories(categories: Sequence[dict]) -> Optional[ClassStats]:
    """LVIS jsons carry each category's training ``image_count`` / ``instance_count``."""
    cats = sorted(categories, key=lambda c: c["id"])
    if not all("image_count" in c and "instance_count" in c for c in cats):
        return None
    # the number of training images is not in the json (0: unknown; the table does not use it)
    return ClassStats(
        [c.get("name", str(c["id"])) for c in cats],
        np.array([c["image_count"] for c in cats]),
        np.array([c["instance_count"] for c in cats]),
        num_images=0,
    )


def evaluate_files(
    gt_json: str,
    dt_json: str,
    output_dir: str,
    tasks: Optional[Sequence[str]] = None,
    backend: str = "fast",
    train_json: Optional[str] = None,
    title: str = "",
    max_dets: int = LVIS_MAX_DETS,
) -> Dict[str, Dict[str, float]]:
    """Score ``dt_json`` against ``gt_json`` and write the outputs to ``output_dir``; returns
    {task: metrics in percent}. ``tasks`` default: bbox, and segm when the detections have
    masks. Training counts for the plot: ``train_json``, else the categories' image_count."""
    check_backend(backend)
    dataset = load_ground_truth(gt_json)
    dets = load_detections(dt_json, dataset, gt_json)
    if tasks is None:
        tasks = ("bbox", "segm") if dets.masks is not None else ("bbox",)
    for t in tasks:
        if t not in ("bbox", "segm"):
            raise ValueError(f"task {t!r} is unknown: use bbox and/or segm")
        if t == "segm" and dets.masks is None:
            raise ValueError(f"{dt_json} has no 'segmentation' (RLE masks): evaluate bbox only")
        if t == "bbox" and dets.boxes is None and dets.masks is None:
            raise ValueError(f"{dt_json} has neither 'bbox' nor 'segmentation'")
    logger.info(
        "Evaluating %d detections of %s against %s (%s backend)",
        len(dets),
        dt_json,
        gt_json,
        backend,
    )
    metrics, per_class = {}, {}
    for t in sorted(tasks):
        metrics[t], per_class[t] = score_lvis(dataset, dets, t, backend, max_dets)
    stats = (
        counts_from_json(train_json, dataset["categories"])
        if train_json
        else counts_from_categories(dataset["categories"])
    )
    title = title or f"{os.path.basename(dt_json)} on {os.path.basename(gt_json)}"
    write_lvis_outputs(output_dir, metrics, per_class, dataset["categories"], stats, title)
    return metrics
