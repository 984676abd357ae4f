#!/usr/bin/env python
"""Generate ltdet's synthetic long-tailed LVIS-format dataset.

    python tools/make_synthetic.py [--out DIR] [--seed 0] [--preset default|lv|tiny] [--force]

DIR defaults to $DETECTRON2_DATASETS/ltdet_synthetic (preset lv: .../ltdet_synthetic_lv;
./datasets when the variable is unset), where ltdet's registered ``ltdet_synthetic_*`` and
``ltdet_synthetic_lv_*`` datasets look for it.

Idempotent: re-running with the same preset and seed reuses the existing files; a folder written
by an older generator version is regenerated (docs/SYNTHETIC_PROTOCOLS.md).
"""

import argparse
import json
import os
import sys
import time

try:
    from ltdet.data import synthetic
except ModuleNotFoundError as e:  # run from a checkout without installing ltdet
    if e.name != "ltdet":
        raise
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ltdet.data import synthetic


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # As ltdet.data.builtin.datasets_root() / SYNTHETIC_DIR, without importing detectron2.
    root = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument(
        "--out",
        help=f"output directory (default: {root}/<the preset's folder: "
        + ", ".join(f"{k}: {v}" for k, v in synthetic.DATASET_DIRS.items())
        + ">)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", choices=sorted(synthetic.PRESETS))
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(root, synthetic.DATASET_DIRS[args.preset])

    start = time.time()
    info = synthetic.generate(args.out, preset=args.preset, seed=args.seed, force=args.force)
    elapsed = time.time() - start
    for split in ("train", "val"):  # val_hardneg: the same images and annotations as val
        stats = synthetic.describe(info[f"{split}_json"])
        imgs = [s[0] for s in stats.values()]
        insts = [s[1] for s in stats.values()]
        # Frequency groups are defined by training image counts only.
        groups = "f/c/r " + "/".join(str(sum(s[2] == g for s in stats.values())) for g in "fcr")
        n_images = info[f"num_{split}_images"]
        print(
            f"{split}: {n_images} images, {sum(insts)} instances, {len(stats)} classes "
            f"({groups if split == 'train' else 'class-balanced'}), "
            f"images per class {max(imgs)}..{min(imgs)}, "
            f"instances per class {max(insts)}..{min(insts)} -> {info[f'{split}_json']}"
        )
    for name in ("val", "val_hardneg"):
        with open(info[f"{name}_json"]) as f:
            images = json.load(f)["images"]
        neg = sum(len(im["neg_category_ids"]) for im in images) / len(images)
        ne = sum(len(im["not_exhaustive_category_ids"]) for im in images) / len(images)
        print(
            f"{name}: {neg:.2f} negative and {ne:.2f} not-exhaustive categories per image "
            f"-> {info[f'{name}_json']}"
        )
    print(f"done in {elapsed:.1f}s (preset={args.preset}, seed={args.seed})")
    return info


if __name__ == "__main__":
    main()
