"""ltdet.evaluation: per-class AP against lvis-api's own evaluator and against hand-worked AP."""
import contextlib
import io
import json
import math

import numpy as np

from ltdet.evaluation.per_class import per_class_ap

from .test_false_positives import fp_setup  # noqa: F401 (fixture)


def _lvis_eval(gt_path, dets, iou_type="segm"):
    import ltdet.compat
    from lvis import LVIS, LVISEval, LVISResults

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
    ev = _lvis_eval(fp_setup["root"] / "ltdet_synthetic" / "lvis_synthetic_val.json",
                    fp_setup["dets"])
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
    path.write_text(json.dumps(dict(val, annotations=[a for a in val["annotations"]
                                                      if a["category_id"] == 2])))
    ap = per_class_ap(_lvis_eval(path, dets))
    assert math.isnan(ap[0]) and math.isclose(ap[1], 1.0)
