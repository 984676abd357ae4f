#!/usr/bin/env python
"""Long-tail report of a dataset, before training on it: per class the images and instances
containing it, its frequency group and its repeat factor; a summary per group; a long-tail plot.

  python tools/dataset_stats.py lvis_v1_train                       # a registered name
  python tools/dataset_stats.py data/my_train.json --output report/  # an LVIS- or COCO-format json

Frequency groups follow LVIS (rare <= 10 training images, common <= 100, frequent above;
--rare-max / --common-max change them, as LTDET.DATASETS.RARE_MAX_IMAGES / COMMON_MAX_IMAGES do
for COCO-format jsons). The repeat factor is repeat-factor sampling's class factor
r(c) = max(1, sqrt(t / f(c))), f(c) the fraction of annotated images containing c (LVIS paper;
t = DATALOADER.REPEAT_THRESHOLD, --threshold). Writes <output>/<name>_classes.csv and
<output>/<name>_long_tail.png (image and instance counts per class, log axis, by group).
"""

import argparse
import csv
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ltdet.data import class_stats, load_lvis_format_json  # noqa: E402
from ltdet.data.class_stats import ClassStats, stats_of_dicts  # noqa: E402
from ltdet.data.lvis_format import (  # noqa: E402
    COMMON_MAX_IMAGES,
    RARE_MAX_IMAGES,
    read_dataset_json,
)

GROUPS = (("r", "rare", "#d62728"), ("c", "common", "#ff7f0e"), ("f", "frequent", "#1f77b4"))


def load_stats(name_or_json: str) -> ClassStats:
    """ClassStats of a registered dataset name, or of a json file (not registered; its images
    need not exist)."""
    if name_or_json.endswith(".json") or os.path.isfile(name_or_json):
        names = [
            c.get("name", str(c["id"]))
            for c in sorted(read_dataset_json(name_or_json)["categories"], key=lambda c: c["id"])
        ]
        return stats_of_dicts(load_lvis_format_json(name_or_json, "", check_images=False), names)
    return class_stats(name_or_json)  # KeyError with the registered names otherwise


def class_table(stats: ClassStats, threshold: float, rare_max: int, common_max: int):
    """One row per class: (class id, name, images, instances, group, repeat factor)."""
    rows = []
    for k, name in enumerate(stats.names):
        n = int(stats.image_counts[k])
        group = "r" if n <= rare_max else ("c" if n <= common_max else "f")
        f = n / max(stats.num_images, 1)
        r = max(1.0, math.sqrt(threshold / f)) if n else float("nan")  # never sampled
        rows.append((k, name, n, int(stats.instance_counts[k]), group, r))
    return rows


def summary(rows, num_images: int) -> str:
    lines = [
        f"{len(rows)} classes, {num_images} annotated images",
        "| group | classes | of them without images | instances | share of instances |",
        "|---|---|---|---|---|",
    ]
    total = max(sum(r[3] for r in rows), 1)
    for g, label, _ in GROUPS:
        sel = [r for r in rows if r[4] == g]
        inst = sum(r[3] for r in sel)
        lines.append(
            f"| {label} | {len(sel)} | {sum(r[2] == 0 for r in sel)} | {inst} | "
            f"{100 * inst / total:.1f}% |"
        )
    return "\n".join(lines)


def plot(rows, path: str, title: str, rare_max: int, common_max: int) -> None:
    """Classes sorted by image count, image and instance counts on a log axis, bars coloured by
    frequency group; a class without images or instances is drawn at 0.5."""
    from matplotlib.figure import Figure  # outside pyplot: no backend switch, no registry

    order = sorted(rows, key=lambda r: -r[2])
    x = np.arange(len(order))
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    colors = {g: c for g, _, c in GROUPS}
    for g, label, _ in GROUPS:
        sel = [i for i, r in enumerate(order) if r[4] == g]
        if not sel:
            continue
        ax.bar(
            x[sel],
            [max(order[i][2], 0.5) for i in sel],
            width=1.0,
            color=colors[g],
            label=f"{label} ({len(sel)})",
        )
    ax.plot(x, [max(r[3], 0.5) for r in order], "k.", ms=2, label="instances")
    ax.axhline(rare_max + 0.5, color="gray", lw=0.5, ls="--")
    ax.axhline(common_max + 0.5, color="gray", lw=0.5, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("classes, sorted by training images")
    ax.set_ylabel("images (bars) / instances (dots)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("dataset", help="a registered dataset name or a json file")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.001,
        help="repeat-factor threshold t (LVIS paper and recipes: 0.001)",
    )
    parser.add_argument("--rare-max", type=int, default=RARE_MAX_IMAGES)
    parser.add_argument("--common-max", type=int, default=COMMON_MAX_IMAGES)
    parser.add_argument("--output", default=".", help="folder for the csv and the PNG")
    args = parser.parse_args(argv)

    stats = load_stats(args.dataset)
    rows = class_table(stats, args.threshold, args.rare_max, args.common_max)
    print("| class id | name | images | instances | group | repeat factor |")
    print("|---|---|---|---|---|---|")
    for k, name, n, inst, g, r in rows:
        print(f"| {k} | {name} | {n} | {inst} | {g} | {r:.2f} |")
    print()
    print(summary(rows, stats.num_images))
    stem = os.path.splitext(os.path.basename(args.dataset))[0]
    os.makedirs(args.output, exist_ok=True)
    csv_path = os.path.join(args.output, f"{stem}_classes.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "name", "images", "instances", "group", "repeat_factor"])
        w.writerows(rows)
    png = os.path.join(args.output, f"{stem}_long_tail.png")
    plot(rows, png, args.dataset, args.rare_max, args.common_max)
    print(f"\nwrote {csv_path} and {png}")
    return rows


if __name__ == "__main__":
    main()
