"""benchmarks/inference_shift.py: test-time prior shift of sigmoid-family predictors."""
import json

import pytest
import torch

from .conftest import load_script
from .test_end_to_end import tiny_cfg, tiny_root, train  # noqa: F401 (fixture)
from .test_roi_heads import K, make, proposals


def _script():
    return load_script("benchmarks/inference_shift.py", "ltdet_inference_shift")


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
    assert script.evaluate(str(tmp_path), 0.0)["segm"] == pytest.approx(results["segm"])
    saved = json.loads((tmp_path / "inference" / "ltdet_synthetic_val" / "lvis_metrics.json").read_text())
    assert saved["segm"]["AP"] == pytest.approx(results["segm"]["AP"])
    from ltdet.data import class_stats

    stats = class_stats(cfg.DATASETS.TRAIN[0])
    c = torch.as_tensor(stats.counts("image_count"), dtype=torch.float64)
    want = torch.log(c / (stats.num_images - c))  # log(p / (1 - p)), p = image count / images
    torch.testing.assert_close(script.prior_shift(cfg).double(), want, rtol=1e-6, atol=1e-6)
