"""Per-class AP table (csv) and a plot of per-class AP against training frequency."""
from __future__ import annotations

import csv
from typing import Dict, List, Optional

import numpy as np

from ..data.class_stats import ClassStats, frequency_group

GROUP_COLORS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}


def per_class_ap(lvis_eval) -> np.ndarray:
    """AP of each category of a finished ``lvis.LVISEval`` (order of ``params.cat_ids``), NaN for
    categories without ground truth: precision averaged over IoU thresholds and recall points,
    area range 'all', exactly as lvis-api averages it for AP."""
    precision = lvis_eval.eval["precision"][:, :, :, 0]  # [T, R, K]
    valid = precision > -1
    total = np.where(valid, precision, 0.0).sum(axis=(0, 1))
    count = valid.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def write_per_class_csv(
    path: str,
    names: List[str],
    ap: Dict[str, np.ndarray],
    train_stats: Optional[ClassStats],
    eval_frequency: List[str],
    category_ids: Optional[List[int]] = None,
) -> None:
    """One row per class: ids (``class_id`` the model's contiguous index, ``category_id`` the
    json's id), name, LVIS group of the evaluated json, training counts, AP per task (percent)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        tasks = sorted(ap)
        w.writerow(["class_id", "category_id", "name", "frequency", "train_image_count",
                    "train_instance_count"] + [f"AP_{t}" for t in tasks])
        for k, name in enumerate(names):
            counts = ("", "") if train_stats is None else (
                int(train_stats.image_counts[k]), int(train_stats.instance_counts[k]))
            cat = "" if category_ids is None else int(category_ids[k])
            w.writerow([k, cat, name, eval_frequency[k], *counts]
                       + [f"{100 * ap[t][k]:.2f}" if np.isfinite(ap[t][k]) else "" for t in tasks])


def plot_per_class_ap(path: str, ap: Dict[str, np.ndarray], image_counts: np.ndarray):
    """Scatter of per-class AP against training image count (log scale), coloured by the LVIS
    group of that count (<= 10 rare, <= 100 common). APr groups by the evaluated json's
    ``frequency`` field instead, which can differ (a held-out development split, another
    training set). Classes without a training image are drawn at 1 with an x. Returns the
    (pyplot-free) matplotlib Figure."""
    tasks = sorted(ap)
    fig = _figure(figsize=(5 * len(tasks), 4))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    image_counts = np.asarray(image_counts)
    counts = np.maximum(image_counts, 1)
    groups = np.array([frequency_group(int(n)) for n in image_counts])
    for ax, task in zip(axes[0], tasks):
        shown = np.isfinite(ap[task])
        for g, label in (("r", "rare"), ("c", "common"), ("f", "frequent")):
            sel = (groups == g) & shown & (image_counts > 0)
            ax.scatter(counts[sel], 100 * ap[task][sel], c=GROUP_COLORS[g], label=label, s=18)
        unseen = shown & (image_counts == 0)
        if unseen.any():
            ax.scatter(counts[unseen], 100 * ap[task][unseen], c=GROUP_COLORS["r"], marker="x",
                       label="no training image", s=24)
        ax.set_xscale("log")
        ax.set_xlabel("training images containing the class")
        ax.set_ylabel(f"{task} AP")
        ax.set_ylim(-2, 102)
        ax.axvline(10.5, color="gray", lw=0.5, ls="--")
        ax.axvline(100.5, color="gray", lw=0.5, ls="--")
        ax.legend(loc="lower right", fontsize=8, title="group by training images",
                  title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_class_weights(path: str, weights: np.ndarray, image_counts: np.ndarray):
    """Learned Meta Reweigher class weight against training image count (log scale)."""
    fig = _figure(figsize=(5, 4))
    ax = fig.subplots()
    counts = np.maximum(np.asarray(image_counts), 1)
    colors = [GROUP_COLORS[frequency_group(int(n))] for n in image_counts]
    ax.scatter(counts, weights, c=colors, s=18)
    ax.axhline(0.5, color="gray", lw=0.5, ls="--")  # the initial weight
    ax.set_xscale("log")
    ax.set_xlabel("training images containing the class")
    ax.set_ylabel("learned class weight sigmoid(w_c)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def _figure(**kwargs):
    """A figure outside pyplot: a library must not switch the caller's backend (pyplot's
    switch closes every open figure) nor keep figures alive in pyplot's registry."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)
