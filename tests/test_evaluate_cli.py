"""The evaluator's array path (process() -> arrays -> backend) against detectron2's per-detection
dicts and lvis-api, and tools/evaluate.py: the same outputs as the evaluator, and bad inputs
named with their fix."""

import csv
import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import handmade  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


def _cli():
    spec = importlib.util.spec_from_file_location("ltdet_evaluate_cli", ROOT / "tools/evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _outputs(handmade, seed=0):  # noqa: F811
    """Model outputs (Instances with float32 boxes, scores and 32 x 32 masks) for every image."""
    from detectron2.structures import Boxes, Instances

    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for im in handmade["images"]:
        n = int(rng.integers(0, 6))
        xy = rng.normal(2, 1.5, (n, 2)).clip(0, 8)  # near the ground truth [2, 2, 10, 10]
        wh = rng.normal(10, 1.5, (n, 2)).clip(4, 14)
        inst = Instances((32, 32))
        inst.pred_boxes = Boxes(torch.tensor(np.c_[xy, xy + wh], dtype=torch.float32))
        inst.scores = torch.tensor(
            rng.choice([0.3, 0.5, 0.7, rng.random()], n), dtype=torch.float32
        )
        inst.pred_classes = torch.tensor(rng.integers(0, 3, n))
        masks = torch.zeros((n, 32, 32), dtype=torch.bool)
        for k in range(n):
            x0, y0 = xy[k].astype(int)
            x1, y1 = (xy[k] + wh[k]).astype(int)
            masks[k, y0:y1, x0:x1] = True
        inst.pred_masks = masks
        inputs.append({"image_id": im["id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


@pytest.fixture
def registered(handmade):  # noqa: F811
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import register_lvis_format

    name = "test_cli_handmade"
    register_lvis_format(name, handmade["json"], handmade["root"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(name, backend, out, inputs, outputs):
    from ltdet.evaluation import LongTailLVISEvaluator

    ev = LongTailLVISEvaluator(
        name, tasks=("bbox", "segm"), distributed=False, output_dir=str(out), backend=backend
    )
    ev.reset()
    ev.process(inputs, outputs)
    return ev.evaluate()


def test_array_path_equals_d2_dicts_and_lvis_api(handmade, registered, tmp_path):  # noqa: F811
    """process() keeps arrays; the results json written from them equals detectron2's
    instances_to_coco_json (ids mapped to the json's 3, 7, 9) value for value, and the fast
    backend's metrics equal lvis-api's on them, bbox and segm."""
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    inputs, outputs = _outputs(handmade)
    fast = _evaluate(registered, "fast", tmp_path / "fast", inputs, outputs)
    ref = _evaluate(registered, "lvis-api", tmp_path / "api", inputs, outputs)
    for task in ("bbox", "segm"):
        for m, v in ref[task].items():
            assert (math.isnan(v) and math.isnan(fast[task][m])) or abs(v - fast[task][m]) < 1e-7
    assert 5 < fast["segm"]["AP"] < 95
    expected = []
    for i, o in zip(inputs, outputs):
        for d in instances_to_coco_json(o["instances"], i["image_id"]):
            expected.append(dict(d, category_id=[3, 7, 9][d["category_id"]]))
    saved = json.loads((tmp_path / "fast" / "lvis_instances_results.json").read_text())
    assert len(saved) == len(expected)
    for a, b in zip(saved, expected):
        assert a == b


def test_cli_writes_what_training_writes(handmade, registered, tmp_path):  # noqa: F811
    inputs, outputs = _outputs(handmade)
    ev_out = tmp_path / "ev"
    _evaluate(registered, "fast", ev_out, inputs, outputs)
    out = tmp_path / "cli"
    rc = _cli()(
        [
            "--gt",
            handmade["json"],
            "--dt",
            str(ev_out / "lvis_instances_results.json"),
            "--output",
            str(out),
            "--backend",
            "fast",
        ]
    )
    assert rc == 0
    assert json.loads((out / "lvis_metrics.json").read_text().replace("NaN", "null")) == json.loads(
        (ev_out / "lvis_metrics.json").read_text().replace("NaN", "null")
    )
    cli_rows = list(csv.DictReader(open(out / "per_class_ap.csv")))
    ev_rows = list(csv.DictReader(open(ev_out / "per_class_ap.csv")))
    cols = ["class_id", "category_id", "name", "frequency", "AP_bbox", "AP_segm"]
    assert [[r[c] for c in cols] for r in cli_rows] == [[r[c] for c in cols] for r in ev_rows]
    # the json's categories carry image_count, so the command also draws the plot
    assert (out / "per_class_ap.png").read_bytes()[:4] == b"\x89PNG"


def _run_expecting_error(args, caplog):
    with caplog.at_level("ERROR"):
        rc = _cli()(args)
    assert rc == 2
    return caplog.text


def test_cli_errors_name_the_fix(handmade, tmp_path, caplog):  # noqa: F811
    gt = handmade["json"]
    dets = [{"image_id": 1, "category_id": 7, "bbox": [2.0, 2.0, 10.0, 10.0], "score": 0.9}]

    def write(name, obj):
        p = tmp_path / name
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(p)

    out = ["--output", str(tmp_path / "o")]
    text = _run_expecting_error(
        ["--gt", gt, "--dt", write("trunc.json", json.dumps(dets)[:-5])] + out, caplog
    )
    assert "not valid json" in text and "write it again" in text
    caplog.clear()
    text = _run_expecting_error(["--gt", gt, "--dt", str(tmp_path / "missing.json")] + out, caplog)
    assert "cannot read the detections file" in text and "check the path" in text
    caplog.clear()
    unknown = [dict(dets[0], image_id=999)]
    text = _run_expecting_error(["--gt", gt, "--dt", write("u.json", unknown)] + out, caplog)
    assert "[999]" in text and "pass the json of the split" in text
    caplog.clear()
    # 0-based contiguous indices (another category list for this json's ids 3, 7, 9)
    other = [dict(dets[0], category_id=c) for c in (0, 1, 2)]
    text = _run_expecting_error(["--gt", gt, "--dt", write("o.json", other)] + out, caplog)
    assert "another category list" in text and "contiguous class indices" in text
    caplog.clear()
    text = _run_expecting_error(["--gt", gt, "--dt", gt] + out, caplog)  # gt passed as dt
    assert "pass it as --gt" in text
    caplog.clear()
    d = write("d.json", dets)
    text = _run_expecting_error(["--gt", d, "--dt", d] + out, caplog)  # dt passed as gt
    assert "pass it as --dt" in text
    caplog.clear()
    text = _run_expecting_error(
        ["--gt", write("coco.json", {"images": [], "annotations": []}), "--dt", d] + out, caplog
    )
    assert "not an LVIS-format json" in text
    caplog.clear()
    text = _run_expecting_error(["--gt", gt, "--dt", d, "--task", "segm"] + out, caplog)
    assert "evaluate bbox only" in text
    assert not (tmp_path / "o" / "lvis_metrics.json").exists()


def test_results_json_writer_equals_json_dump():
    """The dict-free writer gives json.dump's values: float32-derived and tied scores, masks
    whose RLE strings hold a backslash (json escapes it), boxes only, and NaN (json's path)."""
    import pycocotools.mask as mask_util

    from ltdet.evaluation.fast_lvis import LVISDetections
    from ltdet.evaluation.lvis_evaluation import detections_to_results, write_results_json

    rng = np.random.default_rng(0)
    n = 250
    masks = []
    for _ in range(n):
        m = (rng.random((40, 30)) < 0.3).astype(np.uint8)
        masks.append(mask_util.encode(np.asfortranarray(m)))
    assert any(b"\\" in m["counts"] for m in masks)
    boxes = rng.random((n, 4)).astype(np.float32) * 100
    scores = rng.random(n).astype(np.float32)
    scores[:10] = 0.5
    for dets in (
        LVISDetections(rng.integers(1, 9, n), rng.integers(1, 5, n), scores, boxes, masks),
        LVISDetections(rng.integers(1, 9, n), rng.integers(1, 5, n), scores, boxes),
        LVISDetections([1, 2], [3, 3], [np.nan, 0.5], [[0, 0, 1, 1]] * 2),
    ):
        f = io.StringIO()
        write_results_json(f, dets, chunk=64)
        got = json.loads(f.getvalue())
        want = json.loads(json.dumps(detections_to_results(dets)))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.keys() == b.keys()
            for k in a:
                if k == "score" and isinstance(a[k], float) and math.isnan(a[k]):
                    assert math.isnan(b[k])
                else:
                    assert a[k] == b[k]


def test_training_counts_for_the_plot(handmade):  # noqa: F811
    """--train-json counts images and instances per category (the fixture's documented counts);
    without it, the categories' image_count / instance_count fields are used."""
    from ltdet.evaluation.offline import counts_from_categories, counts_from_json

    stats = counts_from_json(handmade["json"], handmade["cats"])
    assert stats.names == ["apple", "pear", "quince"]
    assert stats.image_counts.tolist() == [120, 12, 1]
    assert stats.instance_counts.tolist() == [240, 12, 3]
    assert stats.num_images == 120
    assert counts_from_categories(handmade["cats"]).image_counts.tolist() == [0, 0, 0]
    assert counts_from_categories([{"id": 1, "name": "a"}]) is None
