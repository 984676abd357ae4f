"""benchmarks/false_positives.py on a handmade val set whose AP is worked out by hand."""

import copy
import importlib
import json

import pytest
from pycocotools import mask as mask_utils

from .conftest import write_lvis_json
from .markdown import tables

SIZE = 32
SQUARE = [4.0, 4.0, 16.0, 4.0, 16.0, 16.0, 4.0, 16.0]  # 12 x 12 polygon


def _rle():
    rle = mask_utils.merge(mask_utils.frPyObjects([SQUARE], SIZE, SIZE))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def fp_setup(tmp_path):
    """Class 1 (rare) is on image 1, class 2 (frequent) on image 2; each image lists the other
    class as a verified negative. Detections of method "m", seed 0:
      image 1: class 1 exact (0.9), class 2 false positive (0.2, below the 0.3 threshold);
      image 2: class 2 exact (0.8), class 1 false positive (0.95, ranked above class 1's hit).
    Class 1's precision is 1/2 at every recall, so as evaluated AP = (0.5 + 1) / 2, APr = 0.5;
    with the negative lists emptied image 2 no longer judges class 1: AP = APr = 1."""
    root = tmp_path / "data"
    (root / "ltdet_synthetic").mkdir(parents=True)
    images = [
        {
            "id": i,
            "file_name": f"{i}.png",
            "height": SIZE,
            "width": SIZE,
            "neg_category_ids": [3 - i],
            "not_exhaustive_category_ids": [],
        }
        for i in (1, 2)
    ]
    anns = [
        {
            "id": i,
            "image_id": i,
            "category_id": i,
            "bbox": [4.0, 4.0, 12.0, 12.0],
            "area": 144.0,
            "segmentation": [SQUARE],
        }
        for i in (1, 2)
    ]
    cats = [
        {
            "id": c,
            "name": n,
            "frequency": f,
            "image_count": 1,
            "instance_count": 1,
            "synonyms": [n],
            "synset": n,
            "def": n,
        }
        for c, n, f in ((1, "rare_one", "r"), (2, "frequent_one", "f"))
    ]
    write_lvis_json(
        root / "ltdet_synthetic" / "lvis_synthetic_val_hardneg.json", images, anns, cats
    )
    # LVIS's protocol: the same images without the negative label (AP counts no false positive)
    lvis_images = [dict(im, neg_category_ids=[]) for im in images]
    write_lvis_json(root / "ltdet_synthetic" / "lvis_synthetic_val.json", lvis_images, anns, cats)

    dets = [
        {
            "image_id": img,
            "category_id": cat,
            "score": score,
            "bbox": [4.0, 4.0, 12.0, 12.0],
            "segmentation": _rle(),
        }
        for img, cat, score in ((1, 1, 0.9), (1, 2, 0.2), (2, 2, 0.8), (2, 1, 0.95))
    ]
    out = tmp_path / "runs" / "seed0" / "m-0123abcd" / "inference" / "ltdet_synthetic_val"
    out.mkdir(parents=True)
    (out / "lvis_instances_results.json").write_text(json.dumps(dets))
    # A newer run of m in the same folder (a stale config, another preset) that the table does
    # not report: its detections must not be read.
    stale = tmp_path / "runs" / "seed0" / "m-ffffffff" / "inference" / "ltdet_synthetic_val"
    stale.mkdir(parents=True)
    (stale / "lvis_instances_results.json").write_text("[]")
    _write_table(
        tmp_path,
        [("m", 0, "cached", "runs/seed0/m-0123abcd"), ("m", 2, "failed", "runs/seed2/m-0123abcd")],
    )
    return {
        "root": root,
        "out": tmp_path,
        "dets": dets,
        "val": json.loads(
            (root / "ltdet_synthetic" / "lvis_synthetic_val_hardneg.json").read_text()
        ),
    }


def _write_table(out, rows):
    """A results.csv as benchmarks.longtail writes it (the columns the diagnostics read)."""
    lines = ["method,seed,status,reason,run_dir"]
    lines += [
        f"{m},{seed},{status},{'exit 1' if status == 'failed' else ''},{d}"
        for m, seed, status, d in rows
    ]
    (out / "results.csv").write_text("\n".join(lines) + "\n")


def _script():
    return importlib.import_module("benchmarks.false_positives")


def test_confident_counts_split_by_presence(fp_setup):
    counts = _script().confident_counts(fp_setup["val"], fp_setup["dets"], score=0.3)
    assert counts == {("r", "with class"): 1, ("r", "negative"): 1, ("f", "with class"): 1}
    low = _script().confident_counts(fp_setup["val"], fp_setup["dets"], score=0.1)
    assert low[("f", "negative")] == 1
    # an absent class the image does not list is not judged: "other"
    unlisted = copy.deepcopy(fp_setup["val"])
    unlisted["images"][1]["neg_category_ids"] = []
    counts = _script().confident_counts(unlisted, fp_setup["dets"], score=0.3)
    assert counts[("r", "other")] == 1 and counts[("r", "negative")] == 0


def test_table_as_evaluated_and_without_negatives(fp_setup, capsys):
    script = _script()
    assert (
        script.main(
            [
                "--out",
                str(fp_setup["out"]),
                "--methods",
                "m",
                "--seeds",
                "0",
                "--data-root",
                str(fp_setup["root"]),
            ]
        )
        == 0
    )
    (row,) = tables(capsys.readouterr().out)[0]
    assert row["method"] == "m"
    assert row["r with / negative / other"] == "1 / 1 / 0"
    assert row["f with / negative / other"] == "1 / 0 / 0"
    assert (row["AP"], row["APr"]) == ("75.0", "50.0")
    assert (row["AP, no negatives"], row["APr, no negatives"]) == ("100.0", "100.0")

    # the same detections under LVIS's protocol: the false positive is on an unjudged image
    args = ["--out", str(fp_setup["out"]), "--methods", "m", "--seeds", "0"]
    args += ["--data-root", str(fp_setup["root"]), "--protocol", "lvis"]
    assert script.main(args) == 0
    (row,) = tables(capsys.readouterr().out)[0]
    assert row["r with / negative / other"] == "1 / 0 / 1"
    assert (row["AP"], row["APr"]) == ("100.0", "100.0")


def test_missing_or_failed_run_names_the_fix(fp_setup, tmp_path):
    def run(seed, out=fp_setup["out"]):
        _script().main(
            [
                "--out",
                str(out),
                "--methods",
                "m",
                "--seeds",
                str(seed),
                "--data-root",
                str(fp_setup["root"]),
            ]
        )

    with pytest.raises(
        FileNotFoundError, match="no run of m seed 1; re-run python -m benchmarks.longtail"
    ):
        run(1)
    with pytest.raises(FileNotFoundError, match="did not complete.*status failed: exit 1"):
        run(2)
    with pytest.raises(
        FileNotFoundError, match="no benchmark table.*run python -m benchmarks.longtail"
    ):
        run(0, out=tmp_path / "elsewhere")


def test_reads_the_val_set_and_detections_of_the_preset_the_table_records(fp_setup, capsys):
    """A --preset lv table: its runs were evaluated on ltdet_synthetic_lv_val and its jsons live
    in the lv folder; the script follows the preset its results.md records."""
    import shutil

    out, root = fp_setup["out"], fp_setup["root"]
    shutil.move(str(root / "ltdet_synthetic"), str(root / "ltdet_synthetic_lv"))
    inference = out / "runs" / "seed0" / "m-0123abcd" / "inference"
    shutil.move(str(inference / "ltdet_synthetic_val"), str(inference / "ltdet_synthetic_lv_val"))
    args = ["--out", str(out), "--methods", "m", "--seeds", "0", "--data-root", str(root)]
    # no settings recorded: the default preset's folders, which this table does not have
    with pytest.raises(FileNotFoundError, match="ltdet_synthetic"):
        _script().main(args)
    (out / "results.md").write_text(
        f"# x\n\n* settings: preset=lv, seeds=0, iters_scale=1.0, extra_opts=none, "
        f"data_root={root}\n"
    )
    capsys.readouterr()
    assert _script().main(args) == 0
    printed = capsys.readouterr().out
    (row,) = tables(printed)[0]
    assert row["r with / negative / other"] == "1 / 1 / 0"
    assert (row["AP"], row["APr"]) == ("75.0", "50.0")
    assert "(lvis_synthetic_val_hardneg.json)" in printed
