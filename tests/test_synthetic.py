"""Tests of the synthetic long-tailed dataset generator (ltdet.data.synthetic)."""

import collections
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
try:
    import ltdet  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(ROOT))
from ltdet.data import synthetic as syn  # noqa: E402

from .conftest import load_script  # noqa: E402


def _load(path):
    with open(path) as f:
        return json.load(f)


def _files(root):
    """{relative path: bytes} of every file under root."""
    root = Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _shoelace(flat):
    xy = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    start = time.time()
    info = syn.generate(str(out), preset="default", seed=0)
    elapsed = time.time() - start
    print(f"default preset generated in {elapsed:.2f}s")
    assert elapsed < 60, "generation should take seconds"
    return out, info


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return out, syn.generate(str(out), preset="tiny", seed=0)


def test_tiny_is_deterministic(tmp_path):
    a = syn.generate(str(tmp_path / "a"), preset="tiny", seed=0)
    syn.generate(str(tmp_path / "b"), preset="tiny", seed=0)
    syn.generate(str(tmp_path / "c"), preset="tiny", seed=1)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    # the marker and three jsons (train, val with LVIS's negatives, val with hard negatives)
    assert len(fa) == a["num_train_images"] + a["num_val_images"] + 4
    assert fa == fb
    fc = _files(tmp_path / "c")
    assert fc["lvis_synthetic_train.json"] != fa["lvis_synthetic_train.json"]
    assert fc["train/000001.png"] != fa["train/000001.png"]


def test_default_is_deterministic(default_ds, tmp_path):
    out, _ = default_ds
    syn.generate(str(tmp_path), preset="default", seed=0)
    assert _files(tmp_path) == _files(out)


def test_default_long_tail(default_ds):
    out, info = default_ds
    train, val = _load(info["train_json"]), _load(info["val_json"])
    cats = sorted(train["categories"], key=lambda c: c["id"])
    assert [c["id"] for c in cats] == list(range(1, len(cats) + 1))
    assert 24 <= info["num_classes"] == len(cats) <= 32
    assert 600 <= info["num_train_images"] == len(train["images"]) <= 900

    # Category fields agree with the annotations and with the LVIS frequency rule.
    stats = syn.describe(info["train_json"])
    for c in cats:
        assert stats[c["name"]] == (c["image_count"], c["instance_count"], c["frequency"])
    counts = [c["image_count"] for c in cats]
    assert max(counts) >= 100 and min(counts) <= 5
    groups = collections.Counter(c["frequency"] for c in cats)
    assert all(groups[g] >= 6 for g in "rcf"), groups

    # Every confusable group has a frequent head and non-frequent (tail) siblings.
    n = len(syn.GROUPS[0][3]) + 1
    for g in range(len(cats) // n):
        members = cats[g * n : (g + 1) * n]
        assert members[0]["frequency"] == "f"
        assert all(m["frequency"] != "f" for m in members[1:])
        assert len({m["name"].split("_")[1] for m in members}) == 1  # shared shape

    per_image = collections.Counter(a["image_id"] for a in train["annotations"])
    assert set(per_image.values()) <= {1, 2, 3, 4} and len(per_image) == len(train["images"])

    # Validation is class-balanced and carries the training stats.
    val_inst = collections.Counter(a["category_id"] for a in val["annotations"])
    assert set(val_inst) == {c["id"] for c in cats}
    assert max(val_inst.values()) - min(val_inst.values()) <= 1
    assert val["categories"] == train["categories"]


@pytest.mark.parametrize("which", ["default_ds", "tiny_ds"])
def test_annotations_are_consistent(which, request):
    out, info = request.getfixturevalue(which)
    for name in ("train", "val", "val_hardneg"):
        split = name.split("_")[0]
        data = _load(info[f"{name}_json"])
        assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
        images = {im["id"]: im for im in data["images"]}
        cat_ids = {c["id"] for c in data["categories"]}
        assert sorted(images) == list(range(1, len(images) + 1))
        assert [a["id"] for a in data["annotations"]] == list(
            range(1, len(data["annotations"]) + 1)
        )
        present = collections.defaultdict(set)
        for a in data["annotations"]:
            im = images[a["image_id"]]
            assert a["category_id"] in cat_ids
            present[a["image_id"]].add(a["category_id"])
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= im["width"] and y + h <= im["height"]
            (poly,) = a["segmentation"]
            xy = np.asarray(poly).reshape(-1, 2)
            assert len(poly) >= 6 and len(poly) % 2 == 0
            assert np.allclose([x, y, x + w, y + h], [*xy.min(0), *xy.max(0)], atol=0.02)
            # area is the rasterised pixel count; it must match the polygon's area.
            assert abs(_shoelace(poly) - a["area"]) <= 0.08 * a["area"] + 2
        assert set(present) == set(images), "every image has at least one object"
        for im in list(images.values())[:20]:
            assert im["file_name"] == f"{split}/{im['id']:06d}.png"
            assert im["coco_url"] == f"synthetic://{im['file_name']}"
            assert not set(im["neg_category_ids"]) & present[im["id"]]
            assert set(im["neg_category_ids"]) <= cat_ids
            # not-exhaustive labels, on positive classes, only in LVIS's protocol (the val json)
            ne = set(im["not_exhaustive_category_ids"])
            assert ne <= present[im["id"]] if name == "val" else not ne
            with Image.open(out / im["file_name"]) as pil:
                assert pil.mode == "RGB" and pil.size == (im["width"], im["height"])


def test_objects_are_visible(tiny_ds):
    """Annotated objects stand out from the background next to their boxes."""
    out, info = tiny_ds
    data = _load(info["train_json"])
    im = data["images"][0]
    pixels = np.asarray(Image.open(out / im["file_name"]), dtype=np.int16)
    for a in (a for a in data["annotations"] if a["image_id"] == im["id"]):
        x, y, w, h = (int(round(v)) for v in a["bbox"])
        cx, cy = x + w // 2, y + h // 2
        corner = pixels[max(y - 2, 0), max(x - 2, 0)]
        assert np.abs(pixels[cy, cx] - corner).sum() > 30  # object is visible


def test_lvis_api_loads_and_evaluates(default_ds, monkeypatch):
    lvis = pytest.importorskip("lvis")
    _, info = default_ds
    train = lvis.LVIS(info["train_json"])
    assert len(train.get_cat_ids()) == info["num_classes"]
    gt = lvis.LVIS(info["val_json"])
    pytest.importorskip("pycocotools")
    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float
    dets = [
        dict(
            image_id=a["image_id"],
            category_id=a["category_id"],
            bbox=a["bbox"],
            segmentation=gt.ann_to_rle(a),
            score=1.0,
        )
        for a in gt.dataset["annotations"]
    ]
    ev = lvis.LVISEval(gt, lvis.LVISResults(gt, dets), "segm")
    ev.run()
    for k in ("AP", "APr", "APc", "APf"):
        assert ev.results[k] == pytest.approx(1.0), k


def test_idempotent_and_force(tmp_path):
    first = syn.generate(str(tmp_path), preset="tiny", seed=0)
    before = _files(tmp_path)
    old = 1_000_000_000
    for p in tmp_path.rglob("*"):
        os.utime(p, (old, old))
    stray = tmp_path / "train" / "stray.png"
    assert syn.generate(str(tmp_path), preset="tiny", seed=0) == first
    assert all(p.stat().st_mtime == old for p in tmp_path.rglob("*") if p.is_file())

    stray.write_bytes(b"")
    assert syn.generate(str(tmp_path), preset="tiny", seed=0, force=True) == first
    assert not stray.exists(), "regeneration removes old images"
    assert (tmp_path / "lvis_synthetic_train.json").stat().st_mtime != old
    assert _files(tmp_path) == before

    # A different seed, or an incomplete output, triggers regeneration without force.
    assert syn.generate(str(tmp_path), preset="tiny", seed=3) == first  # same counts
    assert _files(tmp_path)["lvis_synthetic_train.json"] != before["lvis_synthetic_train.json"]
    (tmp_path / "lvis_synthetic_val.json").unlink()
    syn.generate(str(tmp_path), preset="tiny", seed=0)
    assert _files(tmp_path) == before
    # images deleted since (jsons and marker intact) are regenerated too
    for gone in [tmp_path / "train" / "000001.png", tmp_path / "val"]:
        shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
        syn.generate(str(tmp_path), preset="tiny", seed=0)
        assert _files(tmp_path) == before


def test_tiny_has_a_long_tail(tiny_ds):
    _, info = tiny_ds
    assert info["num_classes"] <= 10 and 30 <= info["num_train_images"] <= 50
    assert 10 <= info["num_val_images"] <= 24
    stats = syn.describe(info["train_json"])
    counts = sorted(s[0] for s in stats.values())
    assert counts[0] <= 2 and counts[-1] >= 10 * counts[0]
    assert any(s[2] == "r" for s in stats.values())
    with Image.open(Path(info["train_images"]) / "000001.png") as im:
        assert im.size == (64, 64)


def test_cli(tmp_path, capsys):
    cli = load_script("tools/make_synthetic.py", "make_synthetic")
    info = cli.main(["--out", str(tmp_path / "ds"), "--preset", "tiny", "--seed", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"train: {info['num_train_images']} images")
    assert lines[1].startswith(f"val: {info['num_val_images']} images")
    assert (tmp_path / "ds" / "GENERATOR.json").is_file()


def test_cli_writes_where_the_registered_datasets_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "root"))
    cli = load_script("tools/make_synthetic.py", "make_synthetic")
    cli.main(["--preset", "tiny"])
    assert (tmp_path / "root" / "ltdet_synthetic" / "GENERATOR.json").is_file()


def test_peer_loss_configs_are_scaled_to_the_synthetic_set(default_ds):
    """EQL's lambda and the federated class count are LVIS-sized in the papers; the synthetic
    recipes translate them (configs/synthetic/decoupled/{eql,federated}.yaml). EQL must suppress
    exactly the rare and common classes, as 1.77e-3 does on LVIS v0.5 (<= 100 training images),
    and the federated loss must not take every class (it would be plain sigmoid)."""
    from detectron2.config import get_cfg

    from ltdet.config import add_ltdet_config

    def load(name):
        cfg = get_cfg()
        add_ltdet_config(cfg)
        cfg.merge_from_file(str(ROOT / "configs" / "synthetic" / "decoupled" / name))
        return cfg

    _, info = default_ds
    train = _load(info["train_json"])
    num_images = len(train["images"])
    lam = load("eql.yaml").LTDET.LOSS.EQL_LAMBDA
    suppressed = {
        c["frequency"] for c in train["categories"] if c["image_count"] / num_images < lam
    }
    kept = {c["frequency"] for c in train["categories"] if c["image_count"] / num_images >= lam}
    assert suppressed == {"r", "c"} and kept == {"f"}
    # the same boundary in training images as the EQL code's value on LVIS v0.5 (56,740 images
    # with annotations)
    assert abs(lam * num_images - 1.77e-3 * 56740) < 1.0
    fed = load("federated.yaml").LTDET.LOSS.FED_NUM_CLASSES
    assert 0 < fed < len(train["categories"])
