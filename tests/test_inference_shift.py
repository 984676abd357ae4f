"""benchmarks/inference_shift.py: test-time prior shift of sigmoid-family predictors."""

import importlib
import json
import os

import pytest
import torch

from .markdown import tables
from .test_end_to_end import tiny_cfg, tiny_root, train  # noqa: F401 (fixture)
from .test_roi_heads import K, make, proposals


def _script():
    return importlib.import_module("benchmarks.inference_shift")


def test_shifted_scores_adds_the_shift_inside_the_block_only():
    script = _script()
    pred = make("sigmoid")
    props = proposals()
    scores = torch.randn(16, K)
    deltas = torch.zeros(16, 4 * K)
    shift = torch.tensor([-0.5, -1.0, -2.0, -4.0, -6.0])
    with script.shifted_scores(pred, shift):
        inside = torch.cat(pred.predict_probs((scores, deltas), props))
    after = torch.cat(pred.predict_probs((scores, deltas), props))
    torch.testing.assert_close(inside[:, :K], torch.sigmoid(scores + shift))
    torch.testing.assert_close(after[:, :K], torch.sigmoid(scores))
    with pytest.raises(ValueError, match="sigmoid-family"):
        with script.shifted_scores(make("softmax"), shift):
            pass


def test_evaluate_without_shift_reproduces_the_run(tiny_root, tmp_path):
    script = _script()
    cfg = tiny_cfg(tmp_path, "configs/synthetic/base_sigmoid_rfs.yaml", "SOLVER.MAX_ITER", 3)
    (tmp_path / "config.yaml").write_text(cfg.dump())
    _, results = train(cfg)
    # nan_ok: the tiny val set has no frequent class and no medium or large object (lvis-api's
    # "no data", NaN)
    assert script.evaluate(str(tmp_path), 0.0)["segm"] == pytest.approx(
        results["segm"], nan_ok=True
    )
    saved = json.loads(
        (tmp_path / "inference" / "ltdet_synthetic_val" / "lvis_metrics.json").read_text()
    )
    assert saved["segm"]["AP"] == pytest.approx(results["segm"]["AP"])
    from ltdet.data import class_stats

    stats = class_stats(cfg.DATASETS.TRAIN[0])
    c = torch.as_tensor(stats.counts("image_count"), dtype=torch.float64)
    want = torch.log(c / (stats.num_images - c))  # log(p / (1 - p)), p = image count / images
    torch.testing.assert_close(script.prior_shift(cfg).double(), want, rtol=1e-6, atol=1e-6)
    # the very shift a balanced sigmoid head trains with, from the same config
    from detectron2.layers import ShapeSpec

    from ltdet.modeling.box_predictor import LongTailFastRCNNOutputLayers

    bal = cfg.clone()
    bal.defrost()
    bal.LTDET.LOSS.NAME = "balanced_sigmoid"
    head = LongTailFastRCNNOutputLayers(bal, ShapeSpec(channels=16))
    torch.testing.assert_close(script.prior_shift(bal), head.log_prior_odds)


def test_main_scores_each_family_with_the_opposite_shift(tmp_path, monkeypatch, capsys):
    """Plain models get the balanced sigmoid's boost, sigma(eta - s); balanced models lose it,
    sigma(eta + s); --no-shift scores as trained. Runs come from the benchmark's results.csv."""
    script = _script()
    rows = ["method,seed,status,reason,run_dir"]
    for m in ("sigmoid", "balanced_sigmoid"):
        d = tmp_path / "runs" / "seed0" / f"{m}-abc"
        (d / "inference" / "ltdet_synthetic_val").mkdir(parents=True)
        (d / "inference" / "ltdet_synthetic_val" / "lvis_metrics.json").write_text(
            json.dumps({"segm": {"AP": 40.0, "APr": 20.0}})
        )
        rows.append(f"{m},0,ok,,runs/seed0/{m}-abc")
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    calls = []

    def fake_evaluate(run_dir, sign, opts=()):
        calls.append((os.path.basename(run_dir), sign, list(opts)))
        return {"segm": {"AP": 50.0 + sign, "APr": 30.0, "APc": 1.0, "APf": 2.0}}

    monkeypatch.setattr(script, "evaluate", fake_evaluate)
    args = ["--out", str(tmp_path), "--methods", "sigmoid", "balanced_sigmoid", "--seeds", "0"]
    assert script.main(args + ["--opts", "TEST.DETECTIONS_PER_IMAGE", "7"]) == 0
    assert calls == [
        ("sigmoid-abc", -1.0, ["TEST.DETECTIONS_PER_IMAGE", "7"]),
        ("balanced_sigmoid-abc", 1.0, ["TEST.DETECTIONS_PER_IMAGE", "7"]),
    ]
    plain, balanced = tables(capsys.readouterr().out)[0]
    assert plain["scored with"].startswith("sigma(eta - s): boost")
    assert (plain["mask AP"], plain["as trained: AP"]) == ("49.0", "40.0")
    assert balanced["scored with"].startswith("sigma(eta + s): no boost")
    calls.clear()
    assert script.main(args + ["--no-shift"]) == 0
    assert [c[1] for c in calls] == [0.0, 0.0]
    assert tables(capsys.readouterr().out)[0][0]["scored with"] == "sigma(eta): as trained"
    # with test-time overrides the scores are no longer those the run was evaluated with
    assert script.main(args + ["--no-shift", "--opts", "TEST.DETECTIONS_PER_IMAGE", "7"]) == 0
    assert (
        tables(capsys.readouterr().out)[0][0]["scored with"]
        == "sigma(eta) TEST.DETECTIONS_PER_IMAGE 7"
    )

    # --data-root: the evaluation reads that set, not the one ltdet registered on import.
    from detectron2.data import MetadataCatalog

    from ltdet.data.lvis_format import register_lvis_format

    names = ("ltdet_synthetic_train", "ltdet_synthetic_val")
    before = {
        n: (MetadataCatalog.get(n).json_file, MetadataCatalog.get(n).image_root) for n in names
    }
    try:
        assert script.main(args + ["--data-root", str(tmp_path / "other")]) == 0
        assert MetadataCatalog.get("ltdet_synthetic_val").json_file.startswith(
            str(tmp_path / "other")
        )
    finally:  # the registrations the other tests use
        for n, (json_file, image_root) in before.items():
            register_lvis_format(n, json_file, image_root)
