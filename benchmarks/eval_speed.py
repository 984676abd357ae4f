"""LVIS evaluation at LVIS scale: ltdet's fast backend against lvis-api 0.5.3, each in its own
process (wall time, evaluation time, peak RSS), ratios against lvis-api in the same run, and the
AP of each shown equal. The workload (seeded, generated in seconds): 1,203 categories with LVIS
v1's groups (405 frequent, 461 common, 337 rare), 5,000 images, ~45k ground-truth objects with
LVIS's federated labels (verified negatives, not-exhaustive categories), 300 detections per image.

  python -m benchmarks.eval_speed [--scale 1.0] [--tasks bbox segm] [--backends lvis-api fast]

``--scale`` shrinks the number of images (0.1: 500 images) for quick runs. The report goes to
benchmarks/results/eval_speed[_SCALE].md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

GROUPS = (("f", 405), ("c", 461), ("r", 337))  # LVIS v1's category groups
NUM_IMAGES = 5000
DETS_PER_IMAGE = 300
HEIGHT, WIDTH = 480, 640
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_workload(scale: float = 1.0, seed: int = 0, masks: bool = False):
    """(LVIS-format dataset dict, detections as arrays: image_ids, category_ids, scores, XYWH
    boxes, RLE masks or None). Objects are boxes (masks: their rectangles); detections: jittered
    copies of the ground truth, confident false positives on verified-negative and unlabelled
    categories, padded to 300 per image with low-scoring random boxes."""
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(seed)
    num_img = max(int(round(NUM_IMAGES * scale)), 10)
    freq = np.array([g for g, n in GROUPS for _ in range(n)])
    rng.shuffle(freq)
    k = len(freq)
    lo = {"r": 1, "c": 11, "f": 101}
    hi = {"r": 10, "c": 100, "f": 5000}
    train_images = np.array(
        [int(np.exp(rng.uniform(np.log(lo[f]), np.log(hi[f] + 1)))) for f in freq]
    )
    p = train_images / train_images.sum()
    cats = [
        {
            "id": c + 1,
            "name": f"class_{c + 1}",
            "frequency": str(freq[c]),
            "image_count": int(train_images[c]),
            "instance_count": int(2 * train_images[c]),
        }
        for c in range(k)
    ]
    images, anns = [], []
    d_img, d_cat, d_score, d_box = [], [], [], []
    for i in range(1, num_img + 1):
        chosen = rng.choice(k, size=min(1 + rng.poisson(2.5) + 8, k), replace=False, p=p)
        pos, neg = chosen[: len(chosen) - 8], chosen[len(chosen) - 8 :]
        nel = [int(c) + 1 for c in pos if rng.random() < 0.05]
        images.append(
            {
                "id": i,
                "height": HEIGHT,
                "width": WIDTH,
                "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
                "neg_category_ids": [int(c) + 1 for c in neg],
                "not_exhaustive_category_ids": nel,
            }
        )
        n_inst = 1 + rng.poisson(1.6, len(pos))
        g_cat = np.repeat(pos, n_inst)
        g_box = _boxes(rng, len(g_cat))
        for c, b in zip(g_cat.tolist(), g_box.tolist()):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": c + 1,
                    "bbox": b,
                    "area": b[2] * b[3],
                    "segmentation": [
                        [b[0], b[1], b[0], b[1] + b[3], b[0] + b[2], b[1] + b[3], b[0] + b[2], b[1]]
                    ],
                }
            )
        # true detections: 1-3 jittered copies of each object, sometimes another label
        rep = 1 + rng.poisson(0.8, len(g_cat))
        t_cat = np.repeat(g_cat, rep)
        swap = rng.random(len(t_cat)) < 0.15
        t_cat[swap] = rng.choice(k, swap.sum(), p=p)
        t_box = np.repeat(g_box, rep, axis=0)
        t_box = t_box + rng.normal(0, 0.1, t_box.shape) * t_box[:, [2, 3, 2, 3]]
        t_box[:, 2:] = np.maximum(t_box[:, 2:], 1)
        t_score = rng.beta(4, 2, len(t_cat))
        # false positives on negatives and on unlabelled categories, then the low-score tail
        n_fp = 40
        f_cat = np.where(rng.random(n_fp) < 0.5, rng.choice(neg, n_fp), rng.choice(k, n_fp, p=p))
        n_tail = DETS_PER_IMAGE - len(t_cat) - n_fp
        tail_cat = rng.choice(k, max(n_tail, 0), p=p)
        cat = np.concatenate([t_cat, f_cat, tail_cat])[:DETS_PER_IMAGE]
        n_other = len(cat) - len(t_cat)
        box = np.concatenate([t_box, _boxes(rng, max(n_other, 0))])[:DETS_PER_IMAGE]
        score = np.concatenate([t_score, rng.beta(2, 3, n_fp), rng.beta(1, 8, max(n_tail, 0))])[
            :DETS_PER_IMAGE
        ]
        d_img.append(np.full(len(cat), i))
        d_cat.append(cat + 1)
        d_score.append(np.round(score, 4))  # 4 decimals: many equal scores, as real files have
        d_box.append(np.round(box, 2))
    dataset = {"images": images, "annotations": anns, "categories": cats}
    boxes = np.concatenate(d_box)
    rles = None
    if masks:
        x0, y0 = boxes[:, 0], boxes[:, 1]
        x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
        polys = np.stack([x0, y0, x0, y1, x1, y1, x1, y0], 1).tolist()
        rles = mask_utils.frPyObjects(polys, HEIGHT, WIDTH)
    return dataset, (
        np.concatenate(d_img),
        np.concatenate(d_cat),
        np.concatenate(d_score),
        boxes,
        rles,
    )


def _boxes(rng, n):
    wh = np.exp(rng.uniform(np.log(6), np.log(320), (n, 2)))
    xy = rng.uniform(0, 1, (n, 2)) * np.maximum([WIDTH, HEIGHT] - wh, 1)
    return np.round(np.concatenate([xy, wh], 1), 2)


def child(backend: str, task: str, scale: float, seed: int) -> dict:
    """Run one backend in this process; its wall time, evaluation time and peak RSS."""
    t0 = time.perf_counter()
    import ltdet.compat

    ltdet.compat.apply_runtime_fixes()  # lvis-api 0.5.3 on NumPy >= 1.24
    from ltdet.evaluation.fast_lvis import LVISDetections
    from ltdet.evaluation.lvis_evaluation import (
        detections_to_results,
        score_lvis,
        score_results_with_lvis_api,
    )

    dataset, (img, cat, score, boxes, rles) = make_workload(scale, seed, masks=task == "segm")
    t_gen = time.perf_counter() - t0
    metrics, per_class = None, None
    t1 = time.perf_counter()
    if backend != "workload only":
        dets = LVISDetections(img, cat, score, boxes, rles)
        if backend == "lvis-api":  # lvis-api's input: one dict per detection
            results = detections_to_results(dets, with_boxes=task == "bbox")
            del dets, img, cat, score, boxes, rles
            metrics, per_class = score_results_with_lvis_api(dataset, results, task)
        else:
            metrics, per_class = score_lvis(dataset, dets, task, backend)
    t_eval = time.perf_counter() - t1
    t_json = t_outputs = None
    if backend == "fast":  # what the evaluator adds: the results json, the tables and the plot
        import tempfile

        from ltdet.evaluation.lvis_evaluation import write_lvis_outputs, write_results_json
        from ltdet.evaluation.offline import counts_from_categories

        with tempfile.TemporaryDirectory() as tmp:
            t2 = time.perf_counter()
            with open(os.path.join(tmp, "lvis_instances_results.json"), "w") as f:
                write_results_json(f, dets)
            t_json = time.perf_counter() - t2
            t2 = time.perf_counter()
            write_lvis_outputs(
                tmp,
                {task: metrics},
                {task: per_class},
                dataset["categories"],
                counts_from_categories(dataset["categories"]),
                "eval_speed",
            )
            t_outputs = time.perf_counter() - t2
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "backend": backend,
        "task": task,
        "wall_s": time.perf_counter() - t0,
        "generate_s": t_gen,
        "eval_s": t_eval,
        "results_json_s": t_json,
        "outputs_s": t_outputs,
        "peak_rss_gb": rss / 1e9,
        "num_images": len(dataset["images"]),
        "num_gt": len(dataset["annotations"]),
        "num_dets": int(len(img)) if backend != "lvis-api" else None,
        "metrics": metrics,
        "per_class": None
        if per_class is None
        else [None if not np.isfinite(v) else float(v) for v in per_class],
    }


def run_child(backend, task, scale, seed) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.eval_speed",
        "--child",
        backend,
        "--tasks",
        task,
        "--scale",
        str(scale),
        "--seed",
        str(seed),
    ]
    t0 = time.perf_counter()
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if out.returncode:
        raise RuntimeError(f"{backend} {task} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def report(rows, scale, command, load_before, load_after) -> str:
    lines = [
        f"# LVIS evaluation speed and memory (scale {scale})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, NumPy {np.__version__}. "
        f"Load average before/after: {load_before:.1f} / {load_after:.1f} (the 2 cores are "
        "shared with other engineers' jobs: absolute times vary run to run, the ratios less).",
        "",
        "Each backend runs in its own process, which also builds the seeded workload "
        "(and imports ltdet, hence torch: in every row, see 'workload only'). 'wall' is the "
        "process's whole run, 'evaluation' the scoring alone (for lvis-api: its result dicts, "
        "LVISResults and LVISEval; for fast: FastLVISEval on the arrays). Peak RSS: the "
        "process's `ru_maxrss`.",
        "",
        "| task | backend | images | gt | wall (s) | evaluation (s) | peak RSS (GB) | "
        "eval speed-up vs lvis-api | RSS vs lvis-api | max abs diff of metrics and "
        "per-class AP vs lvis-api | AP | APr | APc | APf | results json (s) | "
        "metrics, csv, plot (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = next((x for x in rows if x["task"] == r["task"] and x["backend"] == "lvis-api"), None)
        m = r["metrics"] or {}
        speed = rss = diff = ""
        if ref and r["backend"] != "workload only":
            speed = f"{ref['eval_s'] / r['eval_s']:.2f}x"
            rss = f"{r['peak_rss_gb'] / ref['peak_rss_gb']:.2f}x"
            d = [
                abs(m[k] - ref["metrics"][k])
                for k in m
                if np.isfinite(m[k]) or np.isfinite(ref["metrics"][k])
            ]
            # a class with no data on one side only is a difference
            d += [
                abs(a - b) if a is not None and b is not None else float("inf")
                for a, b in zip(r["per_class"], ref["per_class"])
                if a is not None or b is not None
            ]
            diff = f"{max(d):.1e}" if d else "-"

        def fmt(k):
            return f"{m[k]:.4f}" if k in m else ""

        lines.append(
            f"| {r['task']} | {r['backend']} | {r['num_images']} | {r['num_gt']} | "
            f"{r['wall_s']:.1f} | {r['eval_s']:.1f} | {r['peak_rss_gb']:.2f} | {speed} "
            f"| {rss} | {diff} | {fmt('AP')} | {fmt('APr')} | {fmt('APc')} | "
            f"{fmt('APf')} | {_s(r.get('results_json_s'))} | {_s(r.get('outputs_s'))} |"
        )
    lines += [
        "",
        "Metrics in percent; per-class AP compared as fractions. 'max abs diff' over "
        "AP, AP50, AP75, APs/m/l, APr/c/f and every category's AP (a None on both sides, "
        "no ground truth, is equal). The last two columns: what ltdet's evaluator adds to "
        "the scoring (writing lvis_instances_results.json; lvis_metrics.json, "
        "per_class_ap.csv and per_class_ap.png), timed in the fast backend's process.",
    ]
    return "\n".join(lines) + "\n"


def _s(v):
    return "" if v is None else f"{v:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--tasks", nargs="+", default=["bbox"], choices=["bbox", "segm"])
    p.add_argument("--backends", nargs="+", default=["lvis-api", "fast"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="print the report only")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.tasks[0], args.scale, args.seed)))
        return
    load_before = os.getloadavg()[0]
    rows = []
    for task in args.tasks:
        for backend in ["workload only"] + args.backends:
            r = run_child(backend, task, args.scale, args.seed)
            print(
                f"{task} {backend}: wall {r['wall_s']:.1f} s, evaluation {r['eval_s']:.1f} s, "
                f"peak RSS {r['peak_rss_gb']:.2f} GB",
                flush=True,
            )
            rows.append(r)
    command = "python -m benchmarks.eval_speed " + " ".join(argv or sys.argv[1:])
    md = report(rows, args.scale, command.strip(), load_before, os.getloadavg()[0])
    print(md)
    if not args.no_write:
        from ltdet.file_io import atomic_open

        os.makedirs(RESULTS, exist_ok=True)
        name = (
            "eval_speed"
            + ("" if args.scale == 1.0 else f"_scale{args.scale:g}")
            + "_"
            + "_".join(args.tasks)
        )
        with atomic_open(os.path.join(RESULTS, name + ".md")) as f:
            f.write(md)
        with atomic_open(os.path.join(RESULTS, name + ".json")) as f:
            json.dump([{k: v for k, v in r.items() if k != "per_class"} for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
