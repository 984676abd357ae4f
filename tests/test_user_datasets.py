"""Datasets from the command line (ltdet.data.user_datasets), the COCO-format derivation, and the
device choice of the synthetic recipes (MODEL.DEVICE "auto")."""

import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ltdet.data.lvis_format import derive_lvis_fields, json_format, lvis_eval_problems
from ltdet.data.user_datasets import check_registered, parse_spec, register_user_datasets

from .conftest import REPO, load_script
from .test_end_to_end import tiny_root  # noqa: F401 (fixture)

CATS = [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "emu"}]


def coco_json(seed=0, num_images=24, with_area=True):
    """An exhaustively annotated COCO-format set: 256 px images, each with a random subset of
    the categories (emu in few images), non-overlapping boxes of all three COCO size ranges."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 256, "width": 256})
        present = [c["id"] for c in CATS if rng.random() < (0.15 if c["id"] == 9 else 0.6)]
        for k, cid in enumerate(present):
            for j in range(int(rng.integers(1, 3))):
                size = float(rng.choice([20.0, 50.0, 130.0]))
                x, y = 120.0 * j + float(rng.uniform(0, 8)), 80.0 * k + float(rng.uniform(0, 8))
                ann = {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cid,
                    "iscrowd": 0,
                    "bbox": [x, y, min(size, 255 - x), min(size * 0.7, 255 - y)],
                }
                bx, by, bw, bh = ann["bbox"]
                ann["segmentation"] = [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]]
                if with_area:
                    ann["area"] = ann["bbox"][2] * ann["bbox"][3]
                anns.append(ann)
    return {"images": images, "annotations": anns, "categories": [dict(c) for c in CATS]}


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def registered():
    names = []
    yield names
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_derivation_groups_from_training_counts_and_negatives_are_the_absent_categories(caplog):
    """Hand-built: cat in 11 training images, dog in 101, emu in 3 -> c, f, r at LVIS's 10/100;
    with thresholds 2/50: c (11 <= 50), f, c (3 > 2). Every image's negatives are exactly the
    categories it has no annotation of; no not-exhaustive lists; box-only areas are w*h; a derived
    json with crowd annotations is refused for LVIS evaluation, naming them."""
    test = {
        "images": [{"id": 1, "height": 9, "width": 9}, {"id": 2, "height": 9, "width": 9}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 2, 3]}],
        "categories": [dict(c) for c in CATS],
    }
    assert json_format(test) == "coco"
    counts = {2: 11, 5: 101, 9: 3}
    out = derive_lvis_fields(test, counts)
    assert [c["frequency"] for c in out["categories"]] == ["c", "f", "r"]
    assert [img["neg_category_ids"] for img in out["images"]] == [[2, 9], [2, 5, 9]]
    assert all(img["not_exhaustive_category_ids"] == [] for img in out["images"])
    assert out["annotations"][0]["area"] == 6.0
    assert "frequency" not in test["categories"][0]  # the input is left alone
    out = derive_lvis_fields(test, counts, rare_max=2, common_max=50)
    assert [c["frequency"] for c in out["categories"]] == ["c", "f", "c"]
    assert json_format(out) == "lvis"
    with pytest.raises(ValueError, match="RARE_MAX_IMAGES < COMMON_MAX_IMAGES"):
        derive_lvis_fields(test, counts, rare_max=100, common_max=10)
    with pytest.raises(ValueError, match="not in the training json"):
        derive_lvis_fields(test, {2: 1, 5: 1})
    test["annotations"][0]["iscrowd"] = 1  # lvis-api has no crowd regions: said, not hidden
    problems = lvis_eval_problems(derive_lvis_fields(test, counts))
    assert any("1 crowd annotations" in p for p in problems), problems


def test_coco_json_lvis_ap_equals_cocoeval_ap(tmp_path, registered):
    """On an exhaustively annotated set (no crowd), ltdet's evaluator (lvis-api on the derived
    json) gives the AP, AP50, AP75 and APs/m/l of pycocotools' COCOeval for the same detections:
    jittered and dropped ground truth plus false positives on categories absent from the image,
    fewer than 100 per image (COCOeval's per-image cap; LVIS's is 300), distinct scores."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ltdet.evaluation import LongTailLVISEvaluator

    data = coco_json()
    path = write(tmp_path / "coco.json", data)
    registered += register_user_datasets(
        [f"coco_par:{path}:{tmp_path}"], ["coco_par"], str(tmp_path / "derived")
    )
    rng = np.random.default_rng(1)
    contiguous = {c["id"]: i for i, c in enumerate(CATS)}
    dets = []
    for a in data["annotations"]:
        if rng.random() < 0.2:
            continue  # dropped: a miss
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.12 * min(w, h), 4)
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x + j[0], y + j[1], max(w + j[2], 2.0), max(h + j[3], 2.0)],
            }
        )
    for img in data["images"]:
        absent = {c["id"] for c in CATS} - {
            a["category_id"] for a in data["annotations"] if a["image_id"] == img["id"]
        }
        for cid in absent:  # a false positive on a verified negative
            dets.append(
                {
                    "image_id": img["id"],
                    "category_id": cid,
                    "bbox": [float(v) for v in rng.uniform(0, 150, 2)] + [40.0, 30.0],
                }
            )
    scores = rng.permutation(len(dets)) / len(dets) + 0.01
    for d, s in zip(dets, scores):
        d["score"] = float(s)

    ev = LongTailLVISEvaluator("coco_par", tasks=("bbox",), distributed=False, output_dir=None)
    ev.reset()
    ev._predictions = [
        {
            "image_id": 0,
            "instances": [  # what process() collects
                dict(d, category_id=contiguous[d["category_id"]]) for d in dets
            ],
        }
    ]
    ours = ev.evaluate()["bbox"]

    gt = COCO(path)
    coco_eval = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    theirs = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], coco_eval.stats[:6] * 100))
    assert 20 < theirs["AP"] < 95  # a non-trivial score: misses, jitter and false positives
    for k, v in theirs.items():
        assert abs(ours[k] - v) < 1e-6, (k, ours[k], v)


def test_coco_test_set_takes_the_training_sets_frequency_groups(tmp_path, registered):
    """A COCO-format val json's groups come from the training json's image counts (here the val
    set has emu in no image, the training set in 4), and the derived json is what is registered
    and loaded; an LVIS-format json is registered as it is."""
    train = coco_json(seed=0, num_images=40)
    val = coco_json(seed=3, num_images=6)
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] != 9]
    tj, vj = write(tmp_path / "t.json", train), write(tmp_path / "v.json", val)
    emu_images = len({a["image_id"] for a in train["annotations"] if a["category_id"] == 9})
    registered += register_user_datasets(
        [f"u_train:{tj}:{tmp_path}", f"u_val:{vj}:{tmp_path}"],
        ["u_train"],
        str(tmp_path / "derived"),
        rare_max=emu_images - 1,
        common_max=emu_images,
    )
    derived = json.loads((tmp_path / "derived" / "u_val.json").read_text())
    # common by the training counts; the val json's own count (0) would make it rare
    assert emu_images >= 1 and [c["frequency"] for c in derived["categories"]][2] == "c"
    assert MetadataCatalog.get("u_val").json_file == str(tmp_path / "derived" / "u_val.json")
    assert MetadataCatalog.get("u_val").source_json == vj
    from ltdet.data.lvis_format import load_lvis_format_json

    loaded = load_lvis_format_json(
        MetadataCatalog.get("u_val").json_file,
        str(tmp_path),
        check_images=False,
        dataset_name="u_val",
    )
    assert len(loaded) == 6 and all(
        2 in d["neg_category_ids"]
        for d in loaded
        if all(a["category_id"] != 2 for a in d["annotations"])
    )
    assert MetadataCatalog.get("u_val").lvis_eval_problems == []
    # an LVIS-format json (the derived one) is registered without a copy
    registered += register_user_datasets(
        [f"u_lvis:{tmp_path / 'derived' / 'u_val.json'}:x"], [], str(tmp_path / "again")
    )
    assert not (tmp_path / "again").exists()


def test_errors_name_the_problem_and_the_fix(tmp_path, registered):
    """Not LVIS/COCO form, different category lists between train and test, a bad spec, an
    unregistered name (with how to register), missing images."""
    bad = write(tmp_path / "bad.json", {"images": [], "annotations": []})
    with pytest.raises(ValueError, match="missing top-level key.*categories"):
        register_user_datasets([f"b:{bad}:{tmp_path}"], ["b"], str(tmp_path))
    train = coco_json()
    val = coco_json(seed=2)
    val["categories"][1]["name"] = "wolf"
    tj, vj = write(tmp_path / "t.json", train), write(tmp_path / "v.json", val)
    with pytest.raises(ValueError, match="different category lists.*'wolf'"):
        register_user_datasets([f"t:{tj}:{tmp_path}", f"v:{vj}:{tmp_path}"], ["t"], str(tmp_path))
    with pytest.raises(ValueError, match="NAME:JSON:IMAGE_ROOT"):
        parse_spec("only_a_name.json")
    assert parse_spec("a:b.json:c:/d") == ("a", "b.json", "c:/d")
    with pytest.raises(KeyError, match="looks like a file.*--dataset NAME JSON IMAGE_ROOT"):
        check_registered(["my_train.json"])
    registered += register_user_datasets(
        [f"imgs:{tj}:{tmp_path / 'nowhere'}"], ["imgs"], str(tmp_path / "d")
    )
    with pytest.raises(FileNotFoundError, match="images of .* are missing under image_root"):
        DatasetCatalog.get("imgs")


def test_train_net_takes_datasets_from_the_command_line(tmp_path, registered):
    """`--dataset NAME JSON IMAGE_ROOT` (repeatable) becomes LTDET.DATASETS.REGISTER and is
    registered by setup(); a DATASETS.TRAIN name that is not registered fails with the fix."""
    train_net = load_script("tools/train_net.py", "ltdet_train_net_user")
    train_net.default_setup = lambda cfg, args: None  # no handlers piling up on the loggers
    train_net.setup_logger = lambda *args, **kwargs: None
    tj = write(tmp_path / "t.json", coco_json())
    base = ["--config-file", os.path.join(REPO, "configs/synthetic/base_softmax_rfs.yaml")]
    args = train_net.argument_parser().parse_args(
        base
        + [
            "--dataset",
            "cli_train",
            tj,
            str(tmp_path),
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "DATASETS.TRAIN",
            '("cli_train",)',
            "DATASETS.TEST",
            '("cli_train",)',
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "3",
        ]
    )  # setup() runs the start-up checks
    registered.append("cli_train")
    cfg = train_net.setup(args)
    assert cfg.LTDET.DATASETS.REGISTER == [f"cli_train:{tj}:{tmp_path}"]
    assert MetadataCatalog.get("cli_train").source_json == tj
    assert (tmp_path / "out" / "datasets" / "cli_train.json").is_file()  # derived: COCO json
    args = train_net.argument_parser().parse_args(
        base + ["OUTPUT_DIR", str(tmp_path / "out2"), "DATASETS.TRAIN", '("my_train.json",)']
    )
    with pytest.raises(KeyError, match="'my_train.json' is not registered"):
        train_net.setup(args)


def test_synthetic_recipes_choose_the_device(monkeypatch):
    """MODEL.DEVICE "auto" in the synthetic recipes: CUDA when torch sees a GPU, else the CPU; a
    value given on the command line forces one."""
    import torch
    from detectron2.config import get_cfg

    from ltdet.config import add_ltdet_config, merge_config, resolve_device

    def cfg(*opts):
        c = get_cfg()
        add_ltdet_config(c)
        return merge_config(c, os.path.join(REPO, "configs/synthetic/decoupled/balms.yaml"), opts)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cfg().MODEL.DEVICE == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cfg().MODEL.DEVICE == "cuda"
    assert cfg("MODEL.DEVICE", "cpu").MODEL.DEVICE == "cpu"
    assert cfg("MODEL.DEVICE", "auto").MODEL.DEVICE == "cuda"  # what tools/demo.py passes
    assert resolve_device("cuda:1") == "cuda:1"


def test_train_net_trains_and_evaluates_coco_jsons(tiny_root, tmp_path, registered):  # noqa: F811
    """End to end through tools/train_net.py: the tiny synthetic set with its LVIS fields removed
    (plain COCO jsons) trains 2 iterations and is evaluated with LVIS AP; the groups derived for
    the val json from the training json's counts are the generator's own LVIS groups."""
    synth = tiny_root / "ltdet_synthetic"
    specs = []
    for split in ("train", "val"):
        data = json.loads((synth / f"lvis_synthetic_{split}.json").read_text())
        expected = [c["frequency"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        for c in data["categories"]:
            for k in ("frequency", "image_count", "instance_count"):
                c.pop(k, None)
        for img in data["images"]:
            img.pop("neg_category_ids", None)
            img.pop("not_exhaustive_category_ids", None)
        specs += ["--dataset", f"coco_{split}", write(tmp_path / f"{split}.json", data), str(synth)]
    registered += ["coco_train", "coco_val"]
    train_net = load_script("tools/train_net.py", "ltdet_train_net_e2e")
    train_net.default_setup = lambda cfg, args: None  # no handlers piling up on the loggers
    train_net.setup_logger = lambda *args, **kwargs: None
    out = tmp_path / "out"
    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            os.path.join(REPO, "configs/synthetic/base_softmax_rfs.yaml"),
            *specs,
            "DATASETS.TRAIN",
            '("coco_train",)',
            "DATASETS.TEST",
            '("coco_val",)',
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "8",
            "SOLVER.IMS_PER_BATCH",
            "4",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.STEPS",
            "(1,)",
            "SOLVER.WARMUP_ITERS",
            "0",
            "DATALOADER.NUM_WORKERS",
            "0",
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.MAX_SIZE_TRAIN",
            "64",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "INPUT.MAX_SIZE_TEST",
            "64",
            "MODEL.DEVICE",
            "cpu",
            "OUTPUT_DIR",
            str(out),
            "SEED",
            "1",
        ]
    )
    results = train_net.main(args)
    assert {"AP", "APr", "APc", "APf"} <= set(results["segm"])
    assert (out / "inference" / "coco_val" / "lvis_metrics.json").is_file()
    derived = json.loads((out / "datasets" / "coco_val.json").read_text())
    got = [c["frequency"] for c in sorted(derived["categories"], key=lambda c: c["id"])]
    assert got == expected
