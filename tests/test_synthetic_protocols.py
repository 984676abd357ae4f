"""The synthetic set's two validation protocols (ltdet.data.synthetic, docs/SYNTHETIC_PROTOCOLS.md):
LVIS's negative labels (lvis_synthetic_val.json) and the hard-negative stress test
(lvis_synthetic_val_hardneg.json), and the large-vocabulary preset's class statistics."""

import collections
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    import ltdet  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(ROOT))
from ltdet.data import synthetic as syn  # noqa: E402

# sha256 of the files generator version 1 wrote (commit 31e9c17, seed 0): the train json, the val
# json (now lvis_synthetic_val_hardneg.json) and every PNG (relative path, then bytes, sorted).
V1 = {
    "tiny": dict(
        train="af97ed66ad492e99882ecc5b8c89f17230292cb27d705d399f1971031ba5c784",
        val="e285b92ef15c379348fd7c7b704b974c5e135336c1cd8040f205f1c1c9c49242",
        pngs="31f1d697bfcbe192cb12e3a68dfc72528c8d1216707e9fe2db0e9883db129900",
    ),
    "default": dict(
        train="9a6db39be375cc5d7a35865aab3842e602d859815b413950392c12a6339a52a4",
        val="02d29cd93bb7702adf267b8f63d4cccb7a30f6cc74b57f3080e677c628165e6f",
        pngs="7ba0a59f2b566d744fa036bf3c7b7cd9500b674c200bc529f862b0766c42e8d6",
    ),
}


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _png_digest(root):
    h = hashlib.sha256()
    for f in sorted(Path(root).rglob("*.png")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    return out, syn.generate(str(out), preset="default", seed=0)


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_images_train_json_and_annotations_are_unchanged_from_version_1(
    preset, default_ds, tmp_path
):
    if preset == "default":
        out, info = default_ds
    else:
        out, info = tmp_path, syn.generate(str(tmp_path), preset=preset, seed=0)
    assert _sha(info["train_json"]) == V1[preset]["train"]
    # the hard-negative json is version 1's val json, byte for byte
    assert _sha(info["val_hardneg_json"]) == V1[preset]["val"]
    assert _png_digest(out) == V1[preset]["pngs"]


def test_both_val_jsons_share_images_and_annotations(default_ds):
    _, info = default_ds
    lvis, hard = (json.loads(Path(info[k]).read_text()) for k in ("val_json", "val_hardneg_json"))
    assert lvis["annotations"] == hard["annotations"]
    assert lvis["categories"] == hard["categories"]
    fields = ("neg_category_ids", "not_exhaustive_category_ids")
    strip = lambda ims: [{k: v for k, v in im.items() if k not in fields} for im in ims]  # noqa
    assert strip(lvis["images"]) == strip(hard["images"])
    assert lvis["info"]["version"] == syn.VERSION == 2 and hard["info"]["version"] == 1
    # the protocols differ where they should: hard negatives hold every sibling of a present
    # class; the LVIS-like ones are drawn without regard to siblings
    group = {c["id"]: (c["id"] - 1) // 4 for c in lvis["categories"]}
    pos = collections.defaultdict(set)
    for a in lvis["annotations"]:
        pos[a["image_id"]].add(a["category_id"])
    siblings_missing = 0
    for im_l, im_h in zip(lvis["images"], hard["images"]):
        p = pos[im_l["id"]]
        sib = {c for c in group if group[c] in {group[q] for q in p}} - p
        assert sib <= set(im_h["neg_category_ids"])
        siblings_missing += len(sib - set(im_l["neg_category_ids"]))
        assert not set(im_l["neg_category_ids"]) & p  # a negative is never a positive
        assert set(im_l["not_exhaustive_category_ids"]) <= p
    assert siblings_missing > 0


def test_lvis_like_val_follows_lvis_statistics(default_ds):
    """The default preset's LVIS-like val json, against LVIS's measured ratios (the module's
    LVIS_* constants, measured on tests/data/lvis_v0.5_val_100.json: 942 / 299 negatives per
    positive, rare and common rates 0.33 and 0.89 of the frequent one, 16 / 299 not-exhaustive)."""
    _, info = default_ds
    val = json.loads(Path(info["val_json"]).read_text())
    freq = {c["id"]: c["frequency"] for c in val["categories"]}
    pos = collections.defaultdict(set)
    for a in val["annotations"]:
        pos[a["image_id"]].add(a["category_id"])
    n_pos = sum(len(pos[im["id"]]) for im in val["images"])
    n_neg = sum(len(im["neg_category_ids"]) for im in val["images"])
    assert n_neg / n_pos == pytest.approx(942 / 299, rel=0.1)
    # negatives per absent (image, class) pair, per group, relative to frequent
    absent = collections.Counter(
        freq[c] for im in val["images"] for c in freq if c not in pos[im["id"]]
    )
    negs = collections.Counter(freq[c] for im in val["images"] for c in im["neg_category_ids"])
    rate = {g: negs[g] / absent[g] for g in "rcf"}
    assert rate["r"] / rate["f"] == pytest.approx((161 / 454) / (340 / 315), rel=0.25)
    assert rate["c"] / rate["f"] == pytest.approx((441 / 461) / (340 / 315), rel=0.25)
    n_ne = sum(len(im["not_exhaustive_category_ids"]) for im in val["images"])
    assert 0 < n_ne < 0.15 * n_pos


def test_lvis_negatives_match_lvis_rates_exactly_in_expectation():
    """lvis_negatives on many images: the ratios converge to LVIS's measured ones."""
    rng = np.random.Generator(np.random.PCG64(0))
    frequency = ["f"] * 10 + ["c"] * 15 + ["r"] * 15
    positives = [
        set(rng.choice(40, size=k, replace=False).tolist()) for k in rng.integers(1, 4, size=20000)
    ]
    negatives, not_exhaustive = syn.lvis_negatives(
        np.random.Generator(np.random.PCG64(1)), positives, frequency
    )
    n_pos = sum(map(len, positives))
    assert sum(map(len, negatives)) / n_pos == pytest.approx(942 / 299, rel=0.02)
    assert sum(map(len, not_exhaustive)) / n_pos == pytest.approx(16 / 299, rel=0.1)
    absent = collections.Counter(frequency[c] for p in positives for c in range(40) if c not in p)
    negs = collections.Counter(frequency[c] for n in negatives for c in n)
    rate = {g: negs[g] / absent[g] for g in "rcf"}
    assert rate["r"] / rate["f"] == pytest.approx((161 / 454) / (340 / 315), rel=0.05)
    assert rate["c"] / rate["f"] == pytest.approx((441 / 461) / (340 / 315), rel=0.05)
    for p, n, ne in zip(positives, negatives, not_exhaustive):
        assert not p & set(n) and set(ne) <= p


def test_lvis_negatives_refuse_a_vocabulary_too_small_for_lvis_rates():
    with pytest.raises(ValueError, match="too few classes"):
        syn.lvis_negatives(np.random.default_rng(0), [{0, 1}, {2}], ["f"] * 4)


def test_an_older_folder_is_upgraded(tmp_path):
    info = syn.generate(str(tmp_path), preset="tiny", seed=0)
    marker = tmp_path / "GENERATOR.json"
    old = json.loads(marker.read_text())
    # a version-1 folder: no hard-negative json, the marker at version 1
    Path(info["val_hardneg_json"]).unlink()
    marker.write_text(json.dumps(dict(old, version=1)))
    info = syn.generate(str(tmp_path), preset="tiny", seed=0)
    assert json.loads(marker.read_text())["version"] == syn.VERSION
    assert _sha(info["val_hardneg_json"]) == V1["tiny"]["val"]


def test_large_vocabulary_preset_follows_lvis_v1_group_shares():
    """The lv preset's classes and tail, without rendering: >= 200 classes in confusable
    families, LVIS v1's rare / common / frequent shares (337 / 461 / 405 of 1,203) and a tail
    from hundreds of training images down to one."""
    cfg = syn.PRESETS["lv"]
    classes = syn._classes(syn._groups(cfg))
    counts = syn._target_counts(cfg, classes)
    k = len(classes)
    assert k >= 200 and len({c["name"] for c in classes}) == k
    groups = collections.Counter(syn.lvis_frequency(n) for n in counts)
    for g, lvis in (("r", 337), ("c", 461), ("f", 405)):
        assert groups[g] / k == pytest.approx(lvis / 1203, abs=0.01)
    assert max(counts) >= 200 and min(counts) == 1
    # every family mixes its frequent head with tail members, as in the default preset
    fam = collections.defaultdict(list)
    for c, n in zip(classes, counts):
        fam[c["group"]].append(n)
    assert all(len(v) == 4 and max(v) > 100 for v in fam.values())


def test_lvis_api_scores_sibling_false_positives_only_under_hard_negatives(default_ds, tmp_path):
    """The same detections under both protocols, scored by lvis-api: every object is detected
    with its class (score 0.5) and, first in the ranking, with a confusable sibling's (score 1.0).
    With hard negatives every sibling is a verified negative and these false positives count;
    under LVIS's protocol only the few siblings drawn as negatives do."""
    from lvis import LVIS, LVISEval, LVISResults

    _, info = default_ds
    val = json.loads(Path(info["val_json"]).read_text())
    dets = []
    for a in val["annotations"]:
        c = a["category_id"]
        sibling = (c - 1) // 4 * 4 + 1 + c % 4  # the next member of its family of 4
        dets += [
            dict(image_id=a["image_id"], category_id=c, bbox=a["bbox"], score=0.5),
            dict(image_id=a["image_id"], category_id=sibling, bbox=a["bbox"], score=1.0),
        ]

    def box_ap(gt_json):
        gt = LVIS(gt_json)
        ev = LVISEval(gt, LVISResults(gt, dets), "bbox")
        ev.run()
        return ev.get_results()["AP"]

    lvis_like, hard = box_ap(info["val_json"]), box_ap(info["val_hardneg_json"])
    # hard negatives: one false positive ranked above each true positive -> precision 1/2
    assert hard == pytest.approx(0.5, abs=0.02)
    assert lvis_like > 0.75  # measured 0.84 (seed 0)
