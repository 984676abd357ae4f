"""Per-class AP table (csv) and a plot of per-class AP against training frequency."""

from __future__ import annotations

import csv
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data.class_stats import ClassStats, frequency_group
from ..file_io import atomic_open

GROUP_COLORS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}


def per_class_ap(lvis_eval) -> np.ndarray:
    """AP of each category of a finished ``lvis.LVISEval`` or ``FastLVISEval``, or of their
    precision array [T, R, K, A] (categories in sorted id order), NaN for categories without
    ground truth: precision averaged over IoU thresholds and recall points, area range 'all',
    exactly as lvis-api averages it for AP."""
    if isinstance(lvis_eval, np.ndarray):
        precision = lvis_eval
    elif getattr(lvis_eval, "precision", None) is not None:
        precision = lvis_eval.precision
    else:
        precision = lvis_eval.eval["precision"]
    precision = precision[:, :, :, 0]  # [T, R, K]
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
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        tasks = sorted(ap)
        w.writerow(
            [
                "class_id",
                "category_id",
                "name",
                "frequency",
                "train_image_count",
                "train_instance_count",
            ]
            + [f"AP_{t}" for t in tasks]
        )
        for k, name in enumerate(names):
            counts = (
                ("", "")
                if train_stats is None
                else (int(train_stats.image_counts[k]), int(train_stats.instance_counts[k]))
            )
            cat = "" if category_ids is None else int(category_ids[k])
            w.writerow(
                [k, cat, name, eval_frequency[k], *counts]
                + [f"{100 * ap[t][k]:.2f}" if np.isfinite(ap[t][k]) else "" for t in tasks]
            )


def plot_per_class_ap(
    path: str,
    ap: Dict[str, np.ndarray],
    image_counts: np.ndarray,
    names: Optional[Sequence[str]] = None,
    title: str = "",
):
    """Scatter of per-class AP against training image count (log scale), coloured by the LVIS
    group of that count (<= 10 rare, <= 100 common), one panel per task titled with ``title``
    (run, dataset) and the task. Legible with LVIS's 1,203 classes: small translucent points,
    each group's mean AP drawn as a line across the group, and (with ``names``) the best and
    worst class of each group named. APr groups by the evaluated json's ``frequency`` field
    instead, which can differ (a held-out development split, another training set). Classes
    without a training image are drawn at 1 with an x. Written atomically; returns the
    (pyplot-free) matplotlib Figure."""
    tasks = sorted(ap)
    fig = _figure(figsize=(7 * len(tasks), 5))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    image_counts = np.asarray(image_counts)
    counts = np.maximum(image_counts, 1)
    groups = np.array([frequency_group(int(n)) for n in image_counts])
    many = len(image_counts) > 200
    size, alpha = (8, 0.35) if many else (18, 0.9)
    spans = {"r": (0.8, 10.5), "c": (10.5, 100.5), "f": (100.5, max(counts.max() * 1.3, 200))}
    for ax, task in zip(axes[0], tasks):
        y = 100 * np.asarray(ap[task], dtype=np.float64)
        shown = np.isfinite(y)
        for g, label in (("r", "rare"), ("c", "common"), ("f", "frequent")):
            sel = (groups == g) & shown & (image_counts > 0)
            grp = (groups == g) & shown
            mean = float(y[grp].mean()) if grp.any() else float("nan")
            ax.scatter(
                counts[sel],
                y[sel],
                c=GROUP_COLORS[g],
                s=size,
                alpha=alpha,
                linewidths=0,
                label=f"{label} ({int(grp.sum())}, mean {mean:.1f})",
            )
            if grp.any():
                ax.hlines(mean, *spans[g], colors=GROUP_COLORS[g], lw=2)
                if names is not None:
                    idx = np.flatnonzero(grp)
                    for k, va in (
                        (idx[np.argmax(y[idx])], "bottom"),
                        (idx[np.argmin(y[idx])], "top"),
                    ):
                        ax.annotate(
                            str(names[k]),
                            (counts[k], y[k]),
                            fontsize=7,
                            color=GROUP_COLORS[g],
                            va=va,
                            ha="center",
                            xytext=(0, 3 if va == "bottom" else -3),
                            textcoords="offset points",
                        )
        unseen = shown & (image_counts == 0)
        if unseen.any():
            ax.scatter(
                counts[unseen],
                y[unseen],
                c=GROUP_COLORS["r"],
                marker="x",
                label="no training image",
                s=size + 6,
                alpha=alpha,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training images containing the class")
        ax.set_ylabel(f"{task} AP (%)")
        ax.set_ylim(-4, 104)
        ax.set_title(
            f"{title}: {task} AP per class" if title else f"{task} AP per class", fontsize=10
        )
        ax.axvline(10.5, color="gray", lw=0.5, ls="--")
        ax.axvline(100.5, color="gray", lw=0.5, ls="--")
        ax.legend(
            loc="upper left",
            fontsize=8,
            title="group by training images (classes, mean AP)",
            title_fontsize=8,
        )
    fig.tight_layout()
    _save(fig, path)
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
    _save(fig, path)
    return fig


def _save(fig, path: str) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")


def _figure(**kwargs):
    """A figure outside pyplot: a library must not switch the caller's backend (pyplot's
    switch closes every open figure) nor keep figures alive in pyplot's registry."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)
