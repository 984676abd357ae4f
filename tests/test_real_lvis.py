"""ltdet on a real LVIS json: tests/data/lvis_v0.5_val_100.json (the LVIS v0.5 val annotations of
100 COCO images, from lvis-api; README in tests/data). 1,230 categories of which 190 occur,
synsets and synonyms, neg_category_ids, not_exhaustive_category_ids, polygons, COCO 2014 file
names."""

import copy
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ltdet.data import class_stats, load_lvis_format_json, register_lvis_format

HERE = os.path.dirname(os.path.abspath(__file__))
JSON = os.path.join(HERE, "data", "lvis_v0.5_val_100.json")
NAME = "test_real_lvis_v0.5_val_100"


@pytest.fixture(scope="module")
def data():
    with open(JSON) as f:
        return json.load(f)


@pytest.fixture
def registered(tmp_path):
    register_lvis_format(NAME, JSON, str(tmp_path) + "/")
    yield NAME
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def test_registration_and_metadata(data, registered, tmp_path):
    """Class names in id order, the id -> contiguous map, images at their COCO 2017 paths, and
    each image's negative / not-exhaustive lists mapped to contiguous ids and back."""
    dicts = load_lvis_format_json(JSON, str(tmp_path), check_images=False, dataset_name=NAME)
    meta = MetadataCatalog.get(NAME)
    by_id = {c["id"]: c for c in data["categories"]}
    ids = sorted(by_id)
    assert len(meta.thing_classes) == 1230 == len(ids)
    assert meta.thing_classes[0] == "acorn" and by_id[ids[0]]["synset"] == "acorn.n.01"
    assert meta.thing_dataset_id_to_contiguous_id == {cid: i for i, cid in enumerate(ids)}
    assert meta.thing_classes == [by_id[i]["name"] for i in ids]
    # every synset is unique, so the names (LVIS names are synset-derived) identify classes
    assert len({c["synset"] for c in data["categories"]}) == 1230
    assert meta.lvis_eval_problems == []
    images = {img["id"]: img for img in data["images"]}
    assert len(dicts) == 100
    for d in dicts:
        img = images[d["image_id"]]
        # "COCO_val2014_000000266409.jpg" lives in COCO 2017's folder as "000000266409.jpg"
        assert d["file_name"] == os.path.join(str(tmp_path), img["file_name"][-16:])
        assert sorted(ids[j] for j in d["neg_category_ids"]) == sorted(img["neg_category_ids"])
        assert sorted(ids[j] for j in d["not_exhaustive_category_ids"]) == sorted(
            img["not_exhaustive_category_ids"]
        )
        anns = [a for a in data["annotations"] if a["image_id"] == d["image_id"]]
        assert sorted(ids[a["category_id"]] for a in d["annotations"]) == sorted(
            a["category_id"] for a in anns
        )
    assert sum(len(d["annotations"]) for d in dicts) == 977
    assert sum(len(d["not_exhaustive_category_ids"]) for d in dicts) == 16


def test_class_statistics(data, registered):
    """class_stats counts, per category, the images and instances of the json (computed here
    directly), and the annotated images; 190 of the 1,230 categories occur."""
    stats = class_stats(NAME)
    ids = sorted(c["id"] for c in data["categories"])
    images, instances = {}, {}
    for a in data["annotations"]:
        images.setdefault(a["category_id"], set()).add(a["image_id"])
        instances[a["category_id"]] = instances.get(a["category_id"], 0) + 1
    assert stats.num_classes == 1230
    np.testing.assert_array_equal(stats.image_counts, [len(images.get(c, ())) for c in ids])
    np.testing.assert_array_equal(stats.instance_counts, [instances.get(c, 0) for c in ids])
    assert int((stats.image_counts > 0).sum()) == 190
    assert stats.num_images == len({a["image_id"] for a in data["annotations"]})
    # groups of these 100 images' own counts: at most 100 images, so never frequent
    assert set(stats.frequency) <= {"r", "c"}


def _detections(data, seed=0):
    """Detections derived from the ground truth: each object kept with probability 0.8, its box
    and mask shifted a few pixels, plus per image a false positive on one of its verified
    negative categories, one on its not-exhaustive categories (ignored by LVIS when unmatched)
    and one on a category neither labelled nor negative there (not scored on that image)."""
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    images = {img["id"]: img for img in data["images"]}
    all_ids = [c["id"] for c in data["categories"]]
    dets = []

    def add(img, cid, bbox, rle):
        rle = dict(
            rle,
            counts=rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"],
        )
        dets.append(
            {
                "image_id": img["id"],
                "category_id": cid,
                "bbox": list(map(float, bbox)),
                "segmentation": rle,
                "score": 0.0,
            }
        )

    for a in data["annotations"]:
        if rng.random() < 0.2:
            continue
        img = images[a["image_id"]]
        h, w = img["height"], img["width"]
        m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
        dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
        m = np.roll(np.roll(m, dy, axis=0), dx, axis=1)
        x, y, bw, bh = a["bbox"]
        add(
            img,
            a["category_id"],
            [x + dx, y + dy, bw, bh],
            mask_util.encode(np.asfortranarray(m.astype(np.uint8))),
        )

    def box_det(img, cid):
        h, w = img["height"], img["width"]
        x, y = float(rng.uniform(0, w - 60)), float(rng.uniform(0, h - 60))
        m = np.zeros((h, w), dtype=np.uint8, order="F")
        m[int(y) : int(y) + 40, int(x) : int(x) + 50] = 1
        add(img, cid, [int(x), int(y), 50, 40], mask_util.encode(m))

    for img in data["images"]:
        positive = {a["category_id"] for a in data["annotations"] if a["image_id"] == img["id"]}
        if img["neg_category_ids"]:
            box_det(img, int(rng.choice(img["neg_category_ids"])))
        if img["not_exhaustive_category_ids"]:
            box_det(img, int(rng.choice(img["not_exhaustive_category_ids"])))
        unlabelled = sorted(
            set(all_ids)
            - positive
            - set(img["neg_category_ids"])
            - set(img["not_exhaustive_category_ids"])
        )
        box_det(img, int(rng.choice(unlabelled)))
    for d, s in zip(dets, rng.permutation(len(dets)) / len(dets) + 1e-3):
        d["score"] = float(s)
    return dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_evaluation_matches_lvis_api(data, registered, tmp_path, iou_type):
    """ltdet's evaluator and lvis-api's LVISEval called directly give the same AP, AP50, AP75,
    APs/m/l and APr/c/f on the same detections (contiguous ids mapped back to the json's)."""
    from lvis import LVIS, LVISEval, LVISResults

    from ltdet.evaluation import LongTailLVISEvaluator

    dets = _detections(data)
    contiguous = {c: i for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    ev = LongTailLVISEvaluator(
        NAME,
        tasks=(iou_type,),
        distributed=False,
        output_dir=str(tmp_path),
        max_dets_per_image=300,
        train_dataset=NAME,
    )
    ev.reset()
    ev._predictions = [
        {
            "image_id": 0,
            "instances": [  # what process() collects
                dict(copy.deepcopy(d), category_id=contiguous[d["category_id"]]) for d in dets
            ],
        }
    ]
    ours = ev.evaluate()[iou_type]

    gt = LVIS(JSON)
    res = copy.deepcopy(dets)
    if iou_type == "segm":
        for d in res:
            d.pop("bbox")  # as detectron2 hands masks to lvis-api: boxes from the masks
    lvis_eval = LVISEval(gt, LVISResults(gt, res, max_dets=300), iou_type)
    lvis_eval.run()
    theirs = {k: 100 * v for k, v in lvis_eval.get_results().items()}
    assert 20 < theirs["AP"] < 95, theirs  # misses, shifts and scored false positives
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        if np.isnan(ours[k]) or theirs[k] < 0:  # a group without ground truth
            assert np.isnan(ours[k]) and theirs[k] < 0, k
        else:
            assert abs(ours[k] - theirs[k]) < 1e-6, (k, ours[k], theirs[k])
    assert (tmp_path / "per_class_ap.csv").is_file()
