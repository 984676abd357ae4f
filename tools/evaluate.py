#!/usr/bin/env python
"""Evaluate a saved detections file (lvis-api's result format: ltdet's
lvis_instances_results.json or any other detector's) against an LVIS-format json, writing
lvis_metrics.json, per_class_ap.csv and per_class_ap.png as training does. Examples:

  python tools/evaluate.py --gt datasets/lvis/lvis_v1_val.json --dt results.json
  python tools/evaluate.py --gt VAL_JSON --dt RESULTS_JSON --task bbox --backend lvis-api \\
      --output eval_out --train-json datasets/lvis/lvis_v1_train.json
"""

import argparse
import logging
import os
import sys

from detectron2.utils.logger import create_small_table, setup_logger

import ltdet  # noqa: F401  (compat fixes: lvis-api on NumPy >= 1.24)
from ltdet.evaluation.lvis_evaluation import BACKENDS
from ltdet.evaluation.offline import evaluate_files


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gt", required=True, help="LVIS-format json of the evaluated split")
    p.add_argument("--dt", required=True, help="detections json (a list of result dicts)")
    p.add_argument(
        "--output",
        default=None,
        help="folder for the outputs (default: the detections file's folder)",
    )
    p.add_argument(
        "--task",
        choices=("bbox", "segm"),
        action="append",
        default=None,
        help="bbox and/or segm (repeatable; default: bbox, and segm with masks)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="fast",
        help="fast: ltdet's implementation (lvis-api's numbers); lvis-api: reference",
    )
    p.add_argument(
        "--train-json",
        default=None,
        help="training json for the plot's counts "
        "(default: the categories' image_count of --gt, as LVIS jsons carry them)",
    )
    p.add_argument("--title", default="", help="plot title (default: DT on GT)")
    args = p.parse_args(argv)
    setup_logger(name="ltdet")
    output = args.output or os.path.dirname(os.path.abspath(args.dt))
    try:
        metrics = evaluate_files(
            args.gt, args.dt, output, args.task, args.backend, args.train_json, args.title
        )
    except ValueError as e:
        logging.getLogger("ltdet").error("%s", e)
        return 2
    for task, m in metrics.items():
        print(f"{task}:\n{create_small_table(m)}")
    print(f"written to {output}: lvis_metrics.json, per_class_ap.csv, per_class_ap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
