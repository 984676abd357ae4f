"""The long-tail benchmark's figures: groups.png and per_class.png."""

from __future__ import annotations

import csv
import math
from typing import Dict, List

from .runs import Run


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, source: str) -> None:
    """``source`` (the command and commit that made the figure) as a footnote and as the PNG's
    Description, so the figure states where it came from on its own."""
    if source:  # below everything drawn (rotated tick labels reach below the axes)
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
        x, y = box.x0 / fig.get_figwidth(), (box.y0 - 0.05) / fig.get_figheight()
        fig.text(x, y, source, fontsize=6, color="grey", ha="left", va="top")
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Description": source})


def plot_groups(rows: List[dict], path: str, subtitle: str = "", source: str = "") -> None:
    plt = _plt()
    rows = [r for r in rows if r["good"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    groups = [
        ("APr", "rare", "#d62728"),
        ("APc", "common", "#ff7f0e"),
        ("APf", "frequent", "#1f77b4"),
    ]
    width = 0.26
    for j, (key, label, color) in enumerate(groups):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        means = [r["stats"][key][0] for r in rows]
        stds = [r["stats"][key][1] for r in rows]
        ax.bar(
            xs,
            [m if math.isfinite(m) else 0 for m in means],
            width,
            color=color,
            label=f"{key} ({label})",
            yerr=[s if math.isfinite(s) else 0 for s in stds],
            capsize=3,
            ecolor="black",
        )
        for x, m in zip(xs, means):
            if not math.isfinite(m):
                ax.text(x, 0.2, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [f"{r['method']}\n(n={len(r['good'])})" for r in rows], rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("mask AP (%)")
    ax.set_title(
        "Mask AP per frequency group (mean ± std over seeds)"
        + (f", {subtitle}" if subtitle else "")
    )
    if not rows:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, source)
    plt.close(fig)


def _per_class_mean(runs: List[Run]) -> Dict[int, tuple]:
    """class id -> (training image count, mean mask AP over the runs, name)."""
    acc: Dict[int, list] = {}
    for r in runs:
        try:
            with open(r.per_class_path) as f:
                for row in csv.DictReader(f):
                    try:
                        ap = float(row["AP_segm"])
                    except (KeyError, ValueError):
                        continue
                    if not math.isfinite(ap) or ap < 0:
                        continue
                    entry = acc.setdefault(
                        int(row["class_id"]),
                        [int(float(row["train_image_count"])), [], row.get("name", "")],
                    )
                    entry[1].append(ap)
        except OSError:
            continue
    return {c: (n, sum(aps) / len(aps), name) for c, (n, aps, name) in acc.items() if aps}


GROUP_EDGES = (10.5, 100.5)  # LVIS groups: rare <= 10 training images, common <= 100


def _within_group(count: float, x: float) -> float:
    """``x`` clipped to the frequency group of a class with ``count`` training images."""
    lo = max([0.0] + [e for e in GROUP_EDGES if e < count])
    hi = min([math.inf] + [e for e in GROUP_EDGES if e > count])
    return min(max(x, lo * 1.005), hi / 1.005)


def plot_per_class(rows: List[dict], path: str, subtitle: str = "", source: str = "") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = "osD^vP*Xh<>p"
    rows = [r for r in rows if r["good"]]
    n = len(rows)
    for i, row in enumerate(rows):
        pts = _per_class_mean(row["good"])
        if not pts:
            continue
        # Methods side by side within +-3%, and never across an LVIS group line (a 10-image rare
        # class dodged to 10.6 would read as common).
        dodge = 1.0 + 0.06 * (i / (n - 1) - 0.5 if n > 1 else 0.0)
        xs = [_within_group(v[0], v[0] * dodge) for v in pts.values()]
        ax.scatter(
            xs,
            [v[1] for v in pts.values()],
            marker=markers[i % len(markers)],
            color=plt.cm.tab10(i % 10),
            s=28,
            alpha=0.85,
            label=f"{row['method']} (n={len(row['good'])})",
        )
    ax.set_xscale("log")
    for edge in GROUP_EDGES:
        ax.axvline(edge, color="grey", lw=0.8, ls="--")
    for x, text in zip(GROUP_EDGES, ("rare | common", "common | frequent")):
        ax.text(
            x,
            1.01,
            text,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            color="grey",
        )
    ax.set_xlabel("training images of the class (log; methods dodged slightly)")
    ax.set_ylabel("mask AP (%)")
    ax.set_title(
        "Per-class mask AP against training frequency (mean over seeds)"
        + (f", {subtitle}" if subtitle else ""),
        pad=14,
    )
    if not rows:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    _save(fig, path, source)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry points
