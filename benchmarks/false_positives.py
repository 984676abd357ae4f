#!/usr/bin/env python
"""Where do a method's rare-class false positives come from? A diagnostic for the long-tail
benchmark's runs (python -m benchmarks.longtail), on their saved val detections:

1. confident detections (score >= --score) per frequency group: on images that contain the
   class, on images that list it as a verified negative (false positives LVIS AP counts) and on
   the other images (not judged);
2. mask AP / APr as evaluated (LVIS-style: false positives count on images whose
   ``neg_category_ids`` list the class) and with every ``neg_category_ids`` emptied, so that
   false positives count only on images that contain the class.

    python -m benchmarks.false_positives [--out benchmarks/results/longtail(_lv)]
        [--methods sigmoid balanced_sigmoid ...] [--seeds 0 1 2] [--score 0.3]
        [--protocol hardneg|lvis]

By default the negatives are the hard-negative stress test's (``lvis_synthetic_val_hardneg.json``):
it lists the confusable siblings of every present class as verified negatives, so a method that
fires on siblings loses AP there; under LVIS's protocol (``--protocol lvis``, the benchmark's
headline) the negative lists are sparse and random, as on LVIS. Comparing (2)'s two columns shows
how much of a gap between methods comes from such false positives. The detections are the run's
one set, whichever protocol judges them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
from collections import Counter
from typing import Dict, List, Sequence

# the runs its table reports
from benchmarks.longtail import (
    PROTOCOLS,
    add_run_table_arguments,
    benchmark_data_root,
    benchmark_preset,
    completed_run_dir,
    val_dataset,
    val_json,
)


def _detections(out: str, preset: str, method: str, seed: int) -> str:
    path = os.path.join(
        completed_run_dir(out, method, seed),
        "inference",
        val_dataset(preset),  # the run's one evaluation
        "lvis_instances_results.json",
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no detections for {method} seed {seed} ({path}); re-run python -m benchmarks.longtail"
        )
    return path


WHERE = ("with class", "negative", "other")


def confident_counts(val: dict, dets: List[dict], score: float) -> Counter:
    """(frequency group, where) -> detections with score >= ``score``; ``where`` is "with class"
    (the image contains the class), "negative" (the image lists the class in
    ``neg_category_ids``: a false positive LVIS AP counts) or "other" (neither: LVIS ignores it)."""
    freq = {c["id"]: c["frequency"] for c in val["categories"]}
    present: Dict[int, set] = {}
    for a in val["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    negative = {im["id"]: set(im.get("neg_category_ids", [])) for im in val["images"]}
    out: Counter = Counter()
    for d in dets:
        if d["score"] >= score:
            img, cat = d["image_id"], d["category_id"]
            where = (
                "with class"
                if cat in present.get(img, ())
                else "negative"
                if cat in negative.get(img, ())
                else "other"
            )
            out[(freq[cat], where)] += 1
    return out


def mask_ap(gt_path: str, det_path: str) -> tuple:
    from lvis import LVIS, LVISEval, LVISResults

    with contextlib.redirect_stdout(io.StringIO()):
        gt = LVIS(gt_path)
        ev = LVISEval(gt, LVISResults(gt, det_path, max_dets=300), "segm")
        ev.run()
    r = ev.get_results()
    return 100 * r["AP"], 100 * r["APr"]


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["softmax", "balanced_softmax", "sigmoid", "balanced_sigmoid"],
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--score", type=float, default=0.3)
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="hardneg",
        help="whose verified negatives judge the detections (default: the hard-negative stress "
        "test's)",
    )
    add_run_table_arguments(p)
    args = p.parse_args(argv)
    if args.data_root is None:
        args.data_root = benchmark_data_root(args.out)
    import ltdet.compat

    ltdet.compat.apply_runtime_fixes()  # lvis-api 0.5.3 on numpy >= 1.24

    preset = benchmark_preset(args.out)
    val_path = val_json(args.data_root, preset, args.protocol)
    with open(val_path) as f:
        val = json.load(f)
    no_neg = copy.deepcopy(val)
    for im in no_neg["images"]:
        im["neg_category_ids"] = []
    tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(no_neg, tmp)
    tmp.close()

    print(
        f"confident detections (score >= {args.score}), summed over seeds {args.seeds}; "
        f"mask AP / APr mean over seeds; negatives of the {args.protocol} protocol "
        f"({os.path.basename(val_path)})\n"
    )
    print(
        "| method | r with / negative / other | c with / negative / other | "
        "f with / negative / other | AP | APr | AP, no negatives | APr, no negatives |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    try:
        for m in args.methods:
            counts: Counter = Counter()
            scores = {"as is": [], "no neg": []}
            for s in args.seeds:
                path = _detections(args.out, preset, m, s)
                with open(path) as f:
                    counts += confident_counts(val, json.load(f), args.score)
                scores["as is"].append(mask_ap(val_path, path))
                scores["no neg"].append(mask_ap(tmp.name, path))
            mean = {k: [sum(x[i] for x in v) / len(v) for i in (0, 1)] for k, v in scores.items()}
            groups = " | ".join(
                " / ".join(str(counts[(g, w)]) for w in WHERE) for g in ("r", "c", "f")
            )
            print(
                f"| {m} | {groups} | {mean['as is'][0]:.1f} | {mean['as is'][1]:.1f} | "
                f"{mean['no neg'][0]:.1f} | {mean['no neg'][1]:.1f} |"
            )
    finally:
        os.unlink(tmp.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
