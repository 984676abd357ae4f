#!/usr/bin/env python
"""The main job on the embedded synthetic long-tail set, on CUDA when available, else the CPU.

Generates the dataset if absent, trains the instance-balanced base model (softmax, repeat-factor
sampling) with tools/train_net.py, fine-tunes its box classifier in the decoupled regime with
softmax (re-training baseline), Balanced Softmax and BALMS, evaluates every model with LVIS AP and
prints two comparison tables of the same detections: LVIS's negative-label protocol (the headline,
ltdet_synthetic_val) and the hard-negative stress test (ltdet_synthetic_val_hardneg; see
docs/SYNTHETIC_PROTOCOLS.md). Each run's metrics, per-class AP (csv, png) and logs land in
output/demo/<run>/inference/<dataset>/.

  python tools/demo.py [--output output/demo] [--seed 0] [--quick] [--device auto|cpu|cuda]

Every run gets cfg SEED (default 0), so the table is reproducible: a 300-iteration base model's
AP varies by several points with the seed (python -m benchmarks.longtail measures that spread).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ltdet.data.builtin import SYNTHETIC_DIR, datasets_root  # noqa: E402
from ltdet.data.synthetic import generate  # noqa: E402

# (run name, config): the base model, then its classifier fine-tuned (decoupled) per method.
BASE = ("base_softmax_rfs", "configs/synthetic/base_softmax_rfs.yaml")
DECOUPLED = [
    ("decoupled_softmax", "configs/synthetic/decoupled/softmax.yaml"),
    ("decoupled_balanced_softmax", "configs/synthetic/decoupled/balanced_softmax.yaml"),
    ("decoupled_balms", "configs/synthetic/decoupled/balms.yaml"),
]
COLUMNS = [("segm", "AP"), ("segm", "APr"), ("segm", "APc"), ("segm", "APf"), ("bbox", "AP")]
# The recipes' DATASETS.TEST: (dataset, table title), the headline first.
PROTOCOLS = [
    ("ltdet_synthetic_val", "LVIS's negative-label protocol (headline)"),
    ("ltdet_synthetic_val_hardneg", "hard negatives: every confusable sibling (stress test)"),
]


def run(name: str, config: str, out_dir: str, extra_opts) -> dict:
    """Train/evaluate one run; returns {dataset: its lvis_metrics.json}."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        os.path.join(ROOT, config),
        "OUTPUT_DIR",
        out_dir,
        *extra_opts,
    ]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"=== {name} done in {time.time() - start:.0f} s", flush=True)
    out = {}
    for dataset, _ in PROTOCOLS:
        with open(os.path.join(out_dir, "inference", dataset, "lvis_metrics.json")) as f:
            out[dataset] = json.load(f)
    return out


def table(results: dict) -> str:
    head = "| run | mask AP | APr | APc | APf | box AP |"
    lines = [head, "|" + "---|" * 6]
    for name, res in results.items():
        # a group without classes (e.g. no frequent class) has no AP: NaN (-100 in older files)
        cells = [f"{res[task][m]:.1f}" if res[task][m] >= 0 else "n/a" for task, m in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="cfg SEED of every run (-1: detectron2's random seed, not reproducible)",
    )
    parser.add_argument("--quick", action="store_true", help="a few iterations (smoke test)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="MODEL.DEVICE of every run (auto: CUDA when available)",
    )
    args = parser.parse_args()

    data_dir = os.path.join(datasets_root(), SYNTHETIC_DIR)
    info = generate(data_dir)
    print(
        f"synthetic set: {info['num_classes']} classes, {info['num_train_images']} train / "
        f"{info['num_val_images']} val images in {data_dir}"
    )
    extra = ["SEED", str(args.seed), "MODEL.DEVICE", args.device]
    if args.quick:
        extra += ["SOLVER.MAX_ITER", "10", "SOLVER.STEPS", "(8,)", "SOLVER.WARMUP_ITERS", "0"]
    base_dir = os.path.join(args.output, BASE[0])
    results = {BASE[0]: run(*BASE, base_dir, extra)}
    weights = ["MODEL.WEIGHTS", os.path.join(base_dir, "model_final.pth")]
    for name, cfg in DECOUPLED:
        results[name] = run(name, cfg, os.path.join(args.output, name), extra + weights)
    text = "\n\n".join(
        f"{title} ({dataset}):\n\n" + table({run: res[dataset] for run, res in results.items()})
        for dataset, title in PROTOCOLS
    )
    print(
        "\nLVIS AP on the synthetic val split (mask AP with APr/APc/APf, and box AP), "
        f"seed {args.seed}; the same detections under each protocol.\n\n" + text
    )
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(text + "\n")
    print(f"\nper-class AP and plots: {args.output}/<run>/inference/<dataset>/")


if __name__ == "__main__":
    main()
