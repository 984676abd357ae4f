"""ltdet.evaluation: per-class AP against lvis-api's own evaluator and against hand-worked AP."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

from ltdet.evaluation.per_class import per_class_ap

from .conftest import handmade  # noqa: F401 (fixture)
from .test_false_positives import fp_setup  # noqa: F401 (fixture)


def _lvis_eval(gt_path, dets, iou_type="segm"):
    from lvis import LVIS, LVISEval, LVISResults

    import ltdet.compat

    ltdet.compat.apply_runtime_fixes()  # lvis-api 0.5.3 on numpy >= 1.24
    with contextlib.redirect_stdout(io.StringIO()):
        gt = LVIS(str(gt_path))
        ev = LVISEval(gt, LVISResults(gt, dets, max_dets=300), iou_type)
        ev.run()
    return ev


def test_per_class_ap_by_hand_and_averages_to_lvis_api(fp_setup):  # noqa: F811
    """Class 1 (rare): a 0.95 false positive on an image that lists it as a verified negative
    ranks above its exact hit, so its precision is 1/2 at every recall: AP 0.5. Class 2: 1.0.
    lvis-api's AP is the mean over classes of exactly these, and APr the rare ones' mean."""
    ev = _lvis_eval(
        fp_setup["root"] / "ltdet_synthetic" / "lvis_synthetic_val_hardneg.json", fp_setup["dets"]
    )
    ap = per_class_ap(ev)
    np.testing.assert_allclose(ap, [0.5, 1.0], atol=1e-12)
    results = ev.get_results()
    assert math.isclose(np.nanmean(ap), results["AP"], abs_tol=1e-12)
    assert math.isclose(ap[0], results["APr"], abs_tol=1e-12)


def test_class_without_ground_truth_is_nan(fp_setup):  # noqa: F811
    dets = [d for d in fp_setup["dets"] if d["category_id"] == 2]
    val = fp_setup["val"]
    # drop class 1's only annotation: it has no ground truth left
    path = fp_setup["root"] / "no_class1.json"
    path.write_text(
        json.dumps(dict(val, annotations=[a for a in val["annotations"] if a["category_id"] == 2]))
    )
    ap = per_class_ap(_lvis_eval(path, dets))
    assert math.isnan(ap[0]) and math.isclose(ap[1], 1.0)


def test_per_class_ap_covers_every_object_size(tmp_path):
    """lvis-api's AP is over area range 'all': a 12 x 12 (small) and a 40 x 40 (medium) object,
    each detected exactly, both have AP 1 (a size-restricted range would drop one of them)."""
    from .conftest import write_lvis_json

    sides = {1: 12.0, 2: 40.0}
    images = [
        {
            "id": c,
            "file_name": f"{c}.png",
            "height": 64,
            "width": 64,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for c in sides
    ]
    anns = [
        {
            "id": c,
            "image_id": c,
            "category_id": c,
            "bbox": [4.0, 4.0, s, s],
            "area": s * s,
            "segmentation": [[4, 4, 4 + s, 4, 4 + s, 4 + s, 4, 4 + s]],
        }
        for c, s in sides.items()
    ]
    cats = [
        {
            "id": c,
            "name": f"c{c}",
            "frequency": "f",
            "image_count": 1,
            "instance_count": 1,
            "synonyms": [f"c{c}"],
            "synset": f"c{c}",
            "def": f"c{c}",
        }
        for c in sides
    ]
    path = tmp_path / "sizes.json"
    write_lvis_json(path, images, anns, cats)
    dets = [
        {"image_id": c, "category_id": c, "score": 0.9, "bbox": [4.0, 4.0, s, s]}
        for c, s in sides.items()
    ]
    ev = _lvis_eval(path, dets, "bbox")
    np.testing.assert_allclose(per_class_ap(ev), [1.0, 1.0], atol=1e-12)
    assert math.isclose(ev.get_results()["APs"], 1.0) and math.isclose(ev.get_results()["APm"], 1.0)


@pytest.mark.parametrize("loaded", [True, False])
def test_evaluator_maps_contiguous_ids_back_to_the_jsons(handmade, tmp_path, loaded):  # noqa: F811
    """The handmade json's category ids are 3, 7, 9: a detection of contiguous class 1 is a
    "pear" (id 7). Exact boxes on all 12 pears give pear AP 100 and nothing to the others.
    The same when the evaluator is used before the dataset was loaded (no id map in the
    metadata yet). All three classes are rare: APc and APf have no data, NaN (not -100)."""
    import csv

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import register_lvis_format
    from ltdet.evaluation import LongTailLVISEvaluator

    name = "test_eval_handmade"
    register_lvis_format(name, handmade["json"], handmade["root"])
    try:
        if loaded:
            DatasetCatalog.get(name)  # sets the id mapping in the metadata, as training does
        assert MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id") is None or loaded
        ev = LongTailLVISEvaluator(
            name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path)
        )
        pears = [
            {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
            for a in handmade["anns"]
            if a["category_id"] == 7
        ]
        assert len(pears) == 12
        ev.reset()
        ev._predictions = [{"image_id": 1, "instances": pears}]  # what process() collects
        results = ev.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    saved = json.loads((tmp_path / "lvis_instances_results.json").read_text())
    assert {d["category_id"] for d in saved} == {7}
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "per_class_ap.csv"))}
    assert rows["pear"]["AP_bbox"] == "100.00"
    assert (rows["pear"]["class_id"], rows["pear"]["category_id"]) == ("1", "7")
    assert rows["apple"]["AP_bbox"] == "0.00" and rows["quince"]["AP_bbox"] == "0.00"
    assert math.isclose(results["bbox"]["AP"], 100 / 3)  # lvis-api's mean over the 3 classes
    assert math.isclose(results["bbox"]["APr"], 100 / 3)
    assert math.isnan(results["bbox"]["APc"]) and math.isnan(results["bbox"]["APf"])
    saved = json.loads((tmp_path / "lvis_metrics.json").read_text())
    assert math.isnan(saved["bbox"]["APf"])


def test_evaluator_refuses_a_json_lvis_api_cannot_evaluate(handmade, tmp_path):  # noqa: F811
    """Missing image negative lists or category frequency groups are refused when the evaluator
    is built (before inference), naming what is missing, not lvis-api's KeyError at the end."""
    import copy

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import register_lvis_format
    from ltdet.evaluation import LongTailLVISEvaluator

    data = json.loads(open(handmade["json"]).read())
    cases = {
        "neg": ("neg_category_ids", None),
        "nonex": ("not_exhaustive_category_ids", None),
        "freq": (None, "frequency"),
        "area": ("area", None),
    }
    for tag, (img_key, cat_key) in cases.items():
        broken = copy.deepcopy(data)
        if img_key == "area":
            del broken["annotations"][130]["area"]
            img_key = r"'area' \(ids \[131\]"
        elif img_key:
            del broken["images"][4][img_key]
        if cat_key:
            broken["categories"][1][cat_key] = "common"
        path = tmp_path / f"{tag}.json"
        path.write_text(json.dumps(broken))
        name = f"test_eval_broken_{tag}"
        register_lvis_format(name, str(path), handmade["root"])
        try:
            with pytest.raises(ValueError, match=(img_key or r"'frequency'.*ids \[7\]")):
                LongTailLVISEvaluator(name, tasks=("bbox",), distributed=False)
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_evaluator_refuses_a_broken_json_naming_it(tmp_path):
    """A json lvis-api cannot read (truncated, or without 'annotations'): the file is named with
    the fix, not lvis-api's bare JSONDecodeError / KeyError."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import register_lvis_format
    from ltdet.evaluation import LongTailLVISEvaluator

    for tag, text in (
        ("truncated", '{"images": [], "annot'),
        ("no_annotations", json.dumps({"images": [], "categories": []})),
    ):
        path = tmp_path / f"{tag}.json"
        path.write_text(text)
        name = f"test_eval_broken_json_{tag}"
        register_lvis_format(name, str(path), str(tmp_path))
        try:
            with pytest.raises(
                ValueError,
                match=f"{tag}.json cannot be read by lvis-api.*re-download or regenerate",
            ):
                LongTailLVISEvaluator(name, tasks=("bbox",), distributed=False)
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_evaluator_without_training_data_still_returns_the_metrics(handmade, tmp_path, caplog):  # noqa: F811
    """--eval-only needs no training data: when DATASETS.TRAIN cannot be read (json missing,
    name unknown, other category list), per-class AP is written without training counts and the
    metrics come back, with a warning naming the fix, instead of an error after inference."""
    import csv

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import register_lvis_format
    from ltdet.evaluation import LongTailLVISEvaluator

    name, gone = "test_eval_handmade_3", "test_eval_missing_train"
    register_lvis_format(name, handmade["json"], handmade["root"])
    register_lvis_format(gone, str(tmp_path / "no_such_train.json"), handmade["root"])
    try:
        DatasetCatalog.get(name)
        for i, train in enumerate([gone, "test_eval_never_registered"]):
            out = tmp_path / str(i)
            ev = LongTailLVISEvaluator(
                name, tasks=("bbox",), distributed=False, output_dir=str(out), train_dataset=train
            )
            pears = [
                {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
                for a in handmade["anns"]
                if a["category_id"] == 7
            ]
            ev.reset()
            ev._predictions = [{"image_id": 1, "instances": pears}]
            caplog.clear()
            with caplog.at_level("WARNING"):
                results = ev.evaluate()
            assert math.isclose(results["bbox"]["AP"], 100 / 3)
            assert "LTDET.EVAL.PER_CLASS False" in caplog.text
            rows = {r["name"]: r for r in csv.DictReader(open(out / "per_class_ap.csv"))}
            assert rows["pear"]["AP_bbox"] == "100.00"
            assert not (out / "per_class_ap.png").exists()
    finally:
        for n in (name, gone):
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_evaluator_without_per_class_output_and_without_predictions(handmade, tmp_path):  # noqa: F811
    """LTDET.EVAL.PER_CLASS False writes no per-class table; a model with no detections gets NaN
    metrics (lvis-api would fail on an empty result list), not a crash."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import register_lvis_format
    from ltdet.evaluation import LongTailLVISEvaluator

    name = "test_eval_handmade_2"
    register_lvis_format(name, handmade["json"], handmade["root"])
    try:
        DatasetCatalog.get(name)
        ev = LongTailLVISEvaluator(
            name,
            tasks=("bbox",),
            distributed=False,
            output_dir=str(tmp_path / "a"),
            per_class=False,
        )
        box = [{"image_id": 1, "category_id": 0, "bbox": [2.0, 2.0, 10.0, 10.0], "score": 0.9}]
        ev.reset()
        ev._predictions = [{"image_id": 1, "instances": box}]
        assert ev.evaluate()["bbox"]["AP"] >= 0
        assert (tmp_path / "a" / "lvis_metrics.json").is_file()
        assert not (tmp_path / "a" / "per_class_ap.csv").exists()
        empty = LongTailLVISEvaluator(
            name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path / "b")
        )
        empty.reset()
        empty._predictions = [{"image_id": 1, "instances": []}]
        assert all(math.isnan(v) for v in empty.evaluate()["bbox"].values())
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_segm_sizes_come_from_the_mask_not_the_box(tmp_path):
    """Mask AP's size ranges use the mask area (as detectron2's evaluator): the evaluator drops
    the box from segm detections. A small object is hit (score 0.5) below a 0.9 false positive
    whose mask is as small but whose box covers the image. By mask area both are small: APs is
    1/2. With the box kept, lvis-api would size the false positive by its box (large) and ignore
    it in the small range: APs 1."""
    import pycocotools.mask as mask_util
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import register_lvis_format
    from ltdet.evaluation import LongTailLVISEvaluator

    from .conftest import write_lvis_json

    size = 128
    images = [
        {
            "id": 1,
            "file_name": "1.png",
            "height": size,
            "width": size,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
    ]
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [4.0, 4.0, 8.0, 8.0],
            "area": 64.0,
            "segmentation": [[4, 4, 12, 4, 12, 12, 4, 12]],
        }
    ]
    cats = [
        {
            "id": 1,
            "name": "c1",
            "frequency": "r",
            "image_count": 1,
            "instance_count": 1,
            "synonyms": ["c1"],
            "synset": "c1",
            "def": "c1",
        }
    ]
    path = tmp_path / "sizes.json"
    write_lvis_json(path, images, anns, cats)

    def rle(x0, y0):
        m = np.zeros((size, size), dtype=np.uint8, order="F")
        m[y0 : y0 + 8, x0 : x0 + 8] = 1
        r = mask_util.encode(m)
        r["counts"] = r["counts"].decode("ascii")
        return r

    hit = {
        "image_id": 1,
        "category_id": 0,
        "score": 0.5,
        "bbox": [4.0, 4.0, 8.0, 8.0],
        "segmentation": rle(4, 4),
    }
    false_pos = {
        "image_id": 1,
        "category_id": 0,
        "score": 0.9,
        "bbox": [0.0, 0.0, float(size), float(size)],
        "segmentation": rle(90, 90),
    }
    name = "test_eval_segm_sizes"
    register_lvis_format(name, str(path), str(tmp_path))
    try:
        ev = LongTailLVISEvaluator(name, tasks=("segm",), distributed=False, output_dir=None)
        ev.reset()
        ev._predictions = [{"image_id": 1, "instances": [hit, false_pos]}]
        res = ev.evaluate()["segm"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert math.isclose(res["APs"], 50.0, abs_tol=1e-9)
    assert math.isclose(res["AP"], 50.0, abs_tol=1e-9)


def test_trainer_scores_each_images_top_300_detections(handmade, tmp_path, caplog):  # noqa: F811
    """LVIS AP counts an image's 300 best detections whatever TEST.DETECTIONS_PER_IMAGE is (the
    LVIS protocol; 1000 used to be passed on to lvis-api). Image 1's exact pear box scores below
    300 apple false positives there, so it is not counted: pear AP is below 100 (11 of 12 pears),
    and the config gets a warning."""
    import csv

    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.config import add_ltdet_config
    from ltdet.data import register_lvis_format
    from ltdet.engine import Trainer

    name = "test_eval_handmade_maxdets"
    register_lvis_format(name, handmade["json"], handmade["root"])
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.MODEL.MASK_ON = False
    cfg.DATASETS.TRAIN = (name,)
    cfg.TEST.DETECTIONS_PER_IMAGE = 1000
    try:
        with caplog.at_level("WARNING"):
            ev = Trainer.build_evaluator(cfg, name, str(tmp_path))
        assert "top 300" in caplog.text
        pears = [
            {
                "image_id": a["image_id"],
                "category_id": 1,
                "bbox": a["bbox"],
                "score": 0.5 if a["image_id"] == 1 else 0.9,
            }
            for a in handmade["anns"]
            if a["category_id"] == 7
        ]
        junk = [
            {
                "image_id": 1,
                "category_id": 0,
                "bbox": [20.0, 20.0, 5.0, 5.0 + i / 100],
                "score": 0.99,
            }
            for i in range(300)
        ]
        ev.reset()
        ev._predictions = [{"image_id": 1, "instances": junk + pears}]
        ev.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "per_class_ap.csv"))}
    assert 80 < float(rows["pear"]["AP_bbox"]) < 100


def test_plots_leave_the_callers_pyplot_alone(tmp_path):
    """The per-class and class-weight plots are drawn outside pyplot: a caller's backend and
    open figures stay as they were (matplotlib.use('Agg') used to switch the backend, which
    closes every open pyplot figure). Classes without a training image are marked apart."""
    import matplotlib.pyplot as plt

    from ltdet.evaluation.per_class import plot_class_weights, plot_per_class_ap

    old = plt.get_backend()
    plt.switch_backend("svg")
    try:
        mine = plt.figure()
        counts = np.array([0, 5, 200, 30])
        fig = plot_per_class_ap(
            str(tmp_path / "ap.png"), {"bbox": np.array([0.5, np.nan, 0.9, 0.1])}, counts
        )
        plot_class_weights(str(tmp_path / "w.png"), np.array([0.4, 0.5, 0.6, 0.7]), counts)
        assert plt.get_backend() == "svg" and plt.get_fignums() == [mine.number]
    finally:
        plt.close("all")
        plt.switch_backend(old)
    for name in ("ap.png", "w.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # each group's class count and mean AP (the NaN class left out; the unseen class is rare)
    assert labels == [
        "rare (1, mean 50.0)",
        "common (1, mean 10.0)",
        "frequent (1, mean 90.0)",
        "no training image",
    ]
