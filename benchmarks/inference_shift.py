#!/usr/bin/env python
"""Does the balanced sigmoid act at inference or only through training? A diagnostic for the
sigmoid-family runs of the long-tail benchmark (python -m benchmarks.longtail).

The balanced sigmoid trains on sigma(eta_j + s_j) for foreground proposals, s_j = log(p_j /
(1 - p_j)) of the image prior, and scores sigma(eta_j) at test time: relative to training, every
rare class is boosted by -s_j. Within one class a constant logit shift does not reorder
detections, so it can only change AP through the score threshold and the per-image detection cap.
This script re-evaluates trained models with the shift moved to test time:

* a plain sigmoid-family model (sigmoid, eql, federated) scored with sigma(eta_j - s_j): the
  balanced sigmoid's test-time boost without its training;
* a balanced model (balanced_sigmoid, balms_sigmoid) scored with sigma(eta_j + s_j): its training
  without the test-time boost.

    python -m benchmarks.inference_shift [--out benchmarks/results/longtail(_lv)]
        [--methods sigmoid balanced_sigmoid] [--seeds 0] [--no-shift] [--opts KEY VALUE ...]

``--no-shift`` scores as trained; ``--opts`` overrides test-time config keys (e.g.
``TEST.DETECTIONS_PER_IMAGE 7``) to see when the shift would matter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from typing import Iterator, Sequence

import torch

# the runs its table reports
from benchmarks.longtail import (
    add_run_table_arguments,
    benchmark_data_root,
    benchmark_preset,
    completed_run_dir,
    val_dataset,
)

BALANCED = ("balanced_sigmoid", "balms_sigmoid")
PLAIN = ("sigmoid", "eql", "federated")


@contextlib.contextmanager
def shifted_scores(predictor, shift: torch.Tensor) -> Iterator[None]:
    """Within the block, ``predictor`` (a sigmoid-family LongTailFastRCNNOutputLayers) scores
    sigmoid(eta + shift) instead of sigmoid(eta); boxes are untouched."""
    if predictor.family.background:
        raise ValueError("shifted_scores is for sigmoid-family predictors (K logits)")
    original = predictor.predict_probs

    def predict_probs(predictions, proposals):
        scores, deltas = predictions
        return original((scores + shift.to(scores), deltas), proposals)

    predictor.predict_probs = predict_probs
    try:
        yield
    finally:
        del predictor.predict_probs  # back to the class's method


def prior_shift(cfg) -> torch.Tensor:
    """s_j = log(p_j / (1 - p_j)), p_j = image count / annotated images of DATASETS.TRAIN (as
    trained)."""
    from ltdet.data import training_class_stats
    from ltdet.modeling import losses as L

    stats = training_class_stats(cfg)
    counts = L.validate_counts(
        stats.counts("image_count"),
        cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        floor=cfg.LTDET.CLASS_STATS.FLOOR or None,
    )
    return L.sigmoid_log_prior_odds(counts, stats.num_images).float()


def evaluate(run_dir: str, sign: float, opts: Sequence[str] = ()) -> dict:
    """LVIS metrics of ``run_dir``'s model_final.pth scored with sigmoid(eta + sign * s), with
    config overrides ``opts`` (KEY VALUE ...)."""
    from detectron2.config import get_cfg

    from ltdet.checkpoint import LongTailCheckpointer
    from ltdet.config import add_ltdet_config, merge_config
    from ltdet.engine import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = get_cfg()
        add_ltdet_config(cfg)
        merge_config(
            cfg,
            os.path.join(run_dir, "config.yaml"),
            ["OUTPUT_DIR", out, "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"), *opts],
        )
        cfg.freeze()
        model = Trainer.build_model(cfg)
        LongTailCheckpointer(model, save_dir=out).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        with shifted_scores(model.roi_heads.box_predictor, sign * prior_shift(cfg)):
            return Trainer.test(cfg, model)


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--methods", nargs="+", default=["sigmoid", "balanced_sigmoid"], choices=PLAIN + BALANCED
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--no-shift", action="store_true", help="score as trained")
    p.add_argument("--opts", nargs="*", default=[], help="test-time config overrides KEY VALUE")
    add_run_table_arguments(p)
    args = p.parse_args(argv)
    if args.data_root is None:
        args.data_root = benchmark_data_root(args.out)
    import ltdet  # noqa: F401  (datasets, heads)
    from ltdet.data.builtin import datasets_root, register_all

    # ltdet registered its datasets on import from $DETECTRON2_DATASETS as seen from the
    # working directory; evaluate on the benchmark's own set instead.
    if os.path.abspath(args.data_root) != os.path.abspath(datasets_root()):
        register_all(os.path.abspath(args.data_root))

    preset = benchmark_preset(args.out)
    lines = [
        "| method | seed | scored with | mask AP | APr | APc | APf | as trained: AP | APr |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method in args.methods:
        for seed in args.seeds:
            run_dir = completed_run_dir(args.out, method, seed)
            sign = 0.0 if args.no_shift else 1.0 if method in BALANCED else -1.0
            segm = evaluate(run_dir, sign, args.opts)["segm"]
            # the run's own evaluation: on the LVIS-protocol val set, as this re-evaluation
            metrics = os.path.join(run_dir, "inference", val_dataset(preset), "lvis_metrics.json")
            with open(metrics) as f:
                trained = json.load(f)["segm"]
            # "as trained" only when nothing at test time differs from the run's own evaluation
            how = (
                "sigma(eta + s): no boost"
                if sign > 0
                else "sigma(eta - s): boost"
                if sign < 0
                else "sigma(eta)"
                if args.opts
                else "sigma(eta): as trained"
            )
            how += " " + " ".join(args.opts) if args.opts else ""
            cells = [
                segm["AP"],
                segm["APr"],
                segm["APc"],
                segm["APf"],
                trained["AP"],
                trained["APr"],
            ]
            # n/a: a group without classes (NaN; -100 in metrics written before)
            cells = ["n/a" if not v >= 0 else f"{v:.1f}" for v in cells]
            lines.append(f"| {method} | {seed} | {how} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
