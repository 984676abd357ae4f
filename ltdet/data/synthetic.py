"""Deterministic generator of ltdet's embedded synthetic long-tailed LVIS-format dataset.

The dataset exists to make the long-tail classification problem reproducible in minutes
on a CPU: a tiny Mask R-CNN trained on it with a plain softmax should be biased toward
frequent classes (rare classes get clearly lower AP), while balanced losses can recover
them because every class is still visually distinguishable.

Design (why it looks like this):

* Classes come in *confusable groups*. A group shares shape and base colour; its members
  differ from the group's head class by ONE cue: stripes, a central dot, a dark outline or
  a 30 degree hue shift. Each group has a frequent head member and tail members (common /
  rare), so a head-biased classifier will label tail objects with the head class. Every
  cue is deliberately large relative to the object (stripe period ~ object size / 3.5,
  dot radius 1/4 of the object radius, ...) so a small CNN can see it at 128 px.
* The same cue appears at different frequency ranks in different groups, so "striped" is
  not a proxy for "rare" and cue knowledge can transfer from frequent to rare classes.
* Training image counts per class follow a steep piecewise-geometric (Zipf-like) curve,
  assigned so every group's head is frequent and its other members are common or rare;
  each class hits its target image count exactly.
* Validation is class-balanced (same number of instances for every class) so per-class
  AP is equally reliable for head and tail; all categories (in every json) carry the
  TRAINING image_count / instance_count / frequency because LVIS APr/APc/APf are grouped
  by the evaluated json's ``frequency`` field.
* Validation negatives come in two protocols over the same images and annotations (lvis-api
  scores a class only on images where it is positive or a verified negative):
  ``lvis_synthetic_val.json`` follows LVIS (negatives drawn at random among the absent
  classes, as many per positive as in LVIS, fewer for rare classes, a few not-exhaustive
  labels; the LVIS_* constants below); ``lvis_synthetic_val_hardneg.json`` lists every
  confusable sibling of a present class as a negative (a stress test; the only val json
  before generator version 2, byte-identical to it).
* Backgrounds are plain low-saturation gradients and objects never overlap, so detection
  and segmentation are easy and the difficulty is classification. Because objects do not
  overlap, an instance's visible mask is exactly its drawn polygon: the mask is
  rasterised from that (rounded) polygon with the COCO pixel-centre convention, so the
  json polygon, the rendered pixels and ``area`` agree.
* Output is byte-identical for a given (preset, seed): a seeded PCG64 stream per split (and
  one for the LVIS-like negatives), json written with sorted keys and fixed separators, PNGs
  from Pillow.

Only numpy, Pillow and the standard library are used, so the generator runs without
detectron2 / torch.
"""

import colorsys
import json
import math
import os
import shutil

import numpy as np
from PIL import Image

from ltdet.file_io import atomic_open

__all__ = [
    "PRESETS",
    "GROUPS",
    "DATASET_DIRS",
    "generate",
    "describe",
    "lvis_frequency",
    "lvis_negatives",
]

# Bump whenever the output of a (preset, seed) changes; an older folder is then regenerated.
# 2: the LVIS-like val json; the v1 val json became lvis_synthetic_val_hardneg.json.
VERSION = 2
# The generator version that last changed each json's content, written as its info.version, so
# files unchanged since then stay byte-identical (train and hard-negative val: version 1).
_JSON_VERSIONS = {"train": 1, "val": 2, "val_hardneg": 1}

# Where each preset lives under $DETECTRON2_DATASETS (ltdet.data.builtin registers these).
DATASET_DIRS = {"default": "ltdet_synthetic", "tiny": "ltdet_synthetic", "lv": "ltdet_synthetic_lv"}

# LVIS's negative-label protocol, measured on the real LVIS v0.5 val annotations of 100 images
# (tests/data/lvis_v0.5_val_100.json): 299 positive and 942 verified-negative (image, category)
# pairs, 16 not-exhaustive ones, all on positive categories. Negatives per category: rare 161/454,
# common 441/461, frequent 340/315 (rate relative to frequent: 0.33, 0.89, 1). The number of
# negatives of an image is nearly unrelated to its positives (correlation 0.20), and they are
# unrelated to its content.
LVIS_NEG_PER_POS = 942 / 299
LVIS_NEG_RATE = {"r": (161 / 454) / (340 / 315), "c": (441 / 461) / (340 / 315), "f": 1.0}
LVIS_NOT_EXHAUSTIVE_PER_POS = 16 / 299

# (shape, colour name, hue in degrees, cues of members 1..3); member 0 (the head) is solid.
# A cue is "striped" | "dotted" | "outlined" | (colour name, hue): a hue-shifted solid.
GROUPS = [
    ("disc", "red", 0, ["striped", ("orange", 30), "dotted"]),
    ("square", "green", 125, ["outlined", "striped", ("lime", 95)]),
    ("triangle", "blue", 220, ["dotted", ("violet", 250), "outlined"]),
    ("hexagon", "yellow", 55, [("amber", 25), "dotted", "striped"]),
    ("star", "magenta", 305, ["striped", "outlined", ("pink", 335)]),
    ("cross", "cyan", 182, ["dotted", "striped", "outlined"]),
    ("diamond", "purple", 275, [("indigo", 245), "outlined", "dotted"]),
]

PRESETS = {
    "default": dict(
        num_groups=7,  # 28 classes
        image_size=128,
        # (rank, train image count) knots of a piecewise log-linear tail: 7 frequent,
        # 10 common and 11 rare classes, 1583 class-image pairs -> ~830 train images.
        tail_knots=((0, 240), (6, 105), (16, 12), (27, 1)),
        classes_per_image=(0.35, 0.40, 0.25),  # P(1, 2, 3 distinct classes) per train image
        extra_objects=(0.55, 0.30, 0.15),  # P(0, 1, 2 extra instances of present classes)
        val_images_per_class=10,
        val_classes_per_image=(0.40, 0.45, 0.15),
        object_size=(16, 56),  # bounding-circle diameter range in px
        noise_std=0.0,  # >0 adds pixel noise but makes PNGs ~7x larger and slower
    ),
    # Large vocabulary: 8 hues x 7 shapes = 56 families of 4 (a solid head, striped, dotted,
    # outlined): 224 classes. LVIS v1's group shares by training image count (337 rare, 461
    # common, 405 frequent of 1,203: 28%, 38%, 34%): 63 rare, 85 common and 76 frequent classes,
    # from 300 training images down to 1.
    "lv": dict(
        num_groups=56,
        hues=(
            ("red", 0),
            ("orange", 45),
            ("yellow", 90),
            ("green", 135),
            ("cyan", 180),
            ("blue", 225),
            ("purple", 270),
            ("magenta", 315),
        ),
        image_size=128,
        tail_knots=((0, 300), (75, 101), (160, 11), (161, 10), (223, 1)),
        classes_per_image=(0.35, 0.40, 0.25),
        extra_objects=(0.55, 0.30, 0.15),
        val_images_per_class=10,
        val_classes_per_image=(0.40, 0.45, 0.15),
        object_size=(16, 56),
        noise_std=0.0,
    ),
    "tiny": dict(
        num_groups=2,  # 8 classes, for pipeline unit tests
        image_size=64,
        tail_knots=((0, 30), (7, 1)),
        classes_per_image=(0.35, 0.40, 0.25),
        extra_objects=(0.55, 0.30, 0.15),
        val_images_per_class=2,
        val_classes_per_image=(1.0, 0.0, 0.0),
        object_size=(12, 28),
        noise_std=0.0,  # >0 adds pixel noise but makes PNGs ~7x larger and slower
    ),
}

# Unit-circumradius outlines; (vertices, max |rotation| in degrees). Orientation jitter is
# limited for shapes whose identity depends on it (a 45-degree square would be a diamond).
_STAR = [
    (0.45 if i % 2 else 1.0) * np.array([math.sin(i * math.pi / 5), -math.cos(i * math.pi / 5)])
    for i in range(10)
]
_A, _W = 0.95, 0.32
_CROSS = [
    (_W, -_A),
    (_W, -_W),
    (_A, -_W),
    (_A, _W),
    (_W, _W),
    (_W, _A),
    (-_W, _A),
    (-_W, _W),
    (-_A, _W),
    (-_A, -_W),
    (-_W, -_W),
    (-_W, -_A),
]
_SHAPES = {
    "disc": ([(math.cos(t), math.sin(t)) for t in np.arange(32) * 2 * math.pi / 32], 180),
    "square": ([(1, 1), (-1, 1), (-1, -1), (1, -1)] / np.sqrt(2), 15),
    "triangle": ([(math.sin(t), -math.cos(t)) for t in np.arange(3) * 2 * math.pi / 3], 20),
    "hexagon": ([(math.cos(t), math.sin(t)) for t in np.arange(6) * math.pi / 3], 180),
    "star": (_STAR, 180),
    "cross": (_CROSS, 15),
    "diamond": ([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], 15),
}
_SHAPES = {k: (np.asarray(v, dtype=np.float64), r) for k, (v, r) in _SHAPES.items()}


def lvis_frequency(image_count):
    """LVIS frequency group from a training image count."""
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


def _groups(preset):
    """The preset's confusable groups, in the form of GROUPS. With ``hues`` (the large-vocabulary
    preset) every (hue, shape) is a family whose members differ by a texture cue only: hues are
    45 degrees apart, too close for hue-shifted members. The cue order rotates with the family so
    that no cue stands for a frequency rank."""
    if "hues" not in preset:
        return GROUPS[: preset["num_groups"]]
    shapes = [g[0] for g in GROUPS]
    cues = ["striped", "dotted", "outlined"]
    families = [(color, hue, shape) for color, hue in preset["hues"] for shape in shapes]
    out = [
        (shape, color, hue, cues[i % 3 :] + cues[: i % 3])
        for i, (color, hue, shape) in enumerate(families)
    ]
    if len(out) != preset["num_groups"]:
        raise ValueError(f"num_groups={preset['num_groups']} but hues x shapes = {len(out)}")
    return out


def _classes(groups):
    """Category specs, group-major; category id = index + 1."""
    out = []
    for g, (shape, color, hue, cues) in enumerate(groups):
        out.append(
            dict(
                group=g,
                member=0,
                shape=shape,
                hue=hue,
                cue="solid",
                name=f"{color}_{shape}",
                desc=f"a solid {color} {shape}",
            )
        )
        for m, cue in enumerate(cues, start=1):
            if isinstance(cue, tuple):
                cname, chue = cue
                out.append(
                    dict(
                        group=g,
                        member=m,
                        shape=shape,
                        hue=chue,
                        cue="solid",
                        name=f"{cname}_{shape}",
                        desc=f"a solid {cname} {shape} (hue-shifted {color} {shape})",
                    )
                )
            else:
                out.append(
                    dict(
                        group=g,
                        member=m,
                        shape=shape,
                        hue=hue,
                        cue=cue,
                        name=f"{color}_{shape}_{cue}",
                        desc=f"a {cue} {color} {shape}",
                    )
                )
    return out


def _target_counts(preset, classes):
    """Training image count per class: heads of all groups take the top ranks, then
    the members 1 of all groups, etc., so each group mixes head and tail classes."""
    knots = preset["tail_knots"]
    ranks = np.arange(len(classes))
    logc = np.interp(ranks, [k for k, _ in knots], [math.log(c) for _, c in knots])
    by_rank = np.maximum(1, np.round(np.exp(logc))).astype(int)
    n_groups = preset["num_groups"]
    return [int(by_rank[c["member"] * n_groups + c["group"]]) for c in classes]


def _assign(rng, counts, k_probs):
    """Return a list of images, each a list of distinct class indices, such that class i
    appears in exactly counts[i] images and images hold 1..len(k_probs) classes.

    Classes are placed from most to least frequent into images sampled with probability
    proportional to their remaining capacity (Gumbel top-k); this keeps co-occurrence
    random while rarely getting stuck. A stuck attempt is retried with the same stream.
    """
    total = int(sum(counts))
    k_probs = np.asarray(k_probs, dtype=np.float64)
    kvals = np.arange(1, len(k_probs) + 1)
    n_img = max(max(counts), int(round(total / float(kvals @ k_probs))))
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    for _ in range(1000):
        cap = rng.choice(kvals, size=n_img, p=k_probs)
        while cap.sum() != total:  # nudge capacities until they sum to the token count
            if cap.sum() > total:
                cand = np.flatnonzero(cap > 1)
                cap[cand[rng.integers(len(cand))]] -= 1
            else:
                cand = np.flatnonzero(cap < min(kvals[-1], len(counts)))
                cap[cand[rng.integers(len(cand))]] += 1
        images = [[] for _ in range(n_img)]
        for ci in order:
            free = np.flatnonzero(cap > 0)
            if len(free) < counts[ci]:
                break
            key = np.log(cap[free]) + rng.gumbel(size=len(free))
            for j in free[np.argsort(-key, kind="stable")[: counts[ci]]]:
                images[j].append(ci)
                cap[j] -= 1
        else:
            return [sorted(im) for im in images]
    raise RuntimeError("could not assign classes to images")


def _hsv(h_deg, s, v):
    return np.array(
        colorsys.hsv_to_rgb((h_deg % 360) / 360.0, min(max(s, 0), 1), min(max(v, 0), 1))
    )


def _raster(poly, h, w):
    """Mask of the pixels whose centre lies inside ``poly`` (even-odd rule), restricted to
    the polygon's bounding window: returns (mask, (y0, y1, x0, x1))."""
    x0, y0 = max(int(math.floor(poly[:, 0].min())), 0), max(int(math.floor(poly[:, 1].min())), 0)
    x1, y1 = (
        min(int(math.ceil(poly[:, 0].max())) + 1, w),
        min(int(math.ceil(poly[:, 1].max())) + 1, h),
    )
    py, px = np.mgrid[y0:y1, x0:x1] + 0.5
    inside = np.zeros(px.shape, dtype=bool)
    for (xa, ya), (xb, yb) in zip(poly, np.roll(poly, -1, axis=0)):
        if ya == yb:
            continue
        cross = (ya > py) != (yb > py)
        inside ^= cross & (px < xa + (py - ya) * (xb - xa) / (yb - ya))
    return inside, (y0, y1, x0, x1)


def _place(rng, radii, size, required):
    """Non-overlapping circle centres fully inside the image. Required objects shrink
    until they fit; optional ones are dropped. Returns {index: (cx, cy, r)}."""
    placed = {}
    for i in sorted(range(len(radii)), key=lambda i: (-radii[i], i)):
        r = radii[i]
        while i not in placed:
            for _ in range(60):
                c = rng.uniform(r + 1, size - r - 1, size=2)
                if all(
                    math.hypot(c[0] - q[0], c[1] - q[1]) >= r + q[2] + 2 for q in placed.values()
                ):
                    placed[i] = (float(c[0]), float(c[1]), r)
                    break
            else:
                if not required[i]:
                    break
                r *= 0.85
    return placed


def _render_object(rng, img, spec, cx, cy, r):
    """Draw one object into ``img`` (float HxWx3); return (polygon Nx2, pixel area)."""
    verts, max_rot = _SHAPES[spec["shape"]]
    t = math.radians(rng.uniform(-max_rot, max_rot))
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    poly = np.round(verts @ rot.T * r + (cx, cy), 2)
    mask, (y0, y1, x0, x1) = _raster(poly, *img.shape[:2])
    sat, val = rng.uniform(0.75, 0.95), rng.uniform(0.8, 0.95)
    fill = _hsv(spec["hue"] + rng.uniform(-4, 4), sat, val)
    tex = np.broadcast_to(fill, mask.shape + (3,)).copy()
    cue = spec["cue"]
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    if cue == "striped":
        # Period relative to the object so stripes survive the CNN's downsampling.
        period, phi = max(4.0, 2 * r / 3.5), rng.uniform(0, math.pi)
        phase = ((xx * math.cos(phi) + yy * math.sin(phi)) / period + rng.uniform()) % 1.0
        tex[phase < 0.5] = fill * 0.55
    elif cue == "dotted":
        tex[np.hypot(xx - cx, yy - cy) < max(1.6, 0.25 * r)] = _hsv(spec["hue"], sat * 0.6, 0.2)
    elif cue == "outlined":
        inner = mask  # erode by a (2*width+1)^2 box via shifted ANDs
        for _ in range(max(2, int(round(0.16 * r)))):
            p = np.pad(inner, 1)
            inner = (
                p[1:-1, 1:-1]
                & p[:-2, 1:-1]
                & p[2:, 1:-1]
                & p[1:-1, :-2]
                & p[1:-1, 2:]
                & p[:-2, :-2]
                & p[:-2, 2:]
                & p[2:, :-2]
                & p[2:, 2:]
            )
        tex[mask & ~inner] = _hsv(spec["hue"], sat * 0.6, 0.2)
    img[y0:y1, x0:x1][mask] = tex[mask]
    return poly, int(mask.sum())


def _background(rng, size):
    base = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.15), rng.uniform(0.5, 0.7))
    phi, amp = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.08)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    grad = amp * (xx * math.cos(phi) + yy * math.sin(phi))
    return base + grad[..., None]


def _make_split(out_dir, split, preset, classes, counts, rng):
    """Render one split; returns (images, annotations) json lists."""
    size = preset["image_size"]
    num_cls = len(classes)
    if split == "train":
        per_image = _assign(rng, counts, preset["classes_per_image"])
    else:
        per_image = _assign(
            rng, [preset["val_images_per_class"]] * num_cls, preset["val_classes_per_image"]
        )
    lo, hi = preset["object_size"]
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, anns = [], []
    for img_id, cls_list in enumerate(per_image, start=1):
        objs = list(cls_list)
        if split == "train":  # extra instances of present classes, at most 4 objects in all
            extra = min(
                rng.choice(len(preset["extra_objects"]), p=preset["extra_objects"]), 4 - len(objs)
            )
            objs += [int(c) for c in rng.choice(cls_list, size=extra)]
        required = [True] * len(cls_list) + [False] * (len(objs) - len(cls_list))
        radii = [0.5 * math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in objs]
        placed = _place(rng, radii, size, required)
        img = _background(rng, size)
        present = set()
        for i in rng.permutation(len(objs)):  # draw order independent of size order
            if int(i) not in placed:
                continue
            spec = classes[objs[i]]
            poly, area = _render_object(rng, img, spec, *placed[int(i)])
            present.add(objs[i])
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=img_id,
                    category_id=objs[i] + 1,
                    bbox=[
                        round(float(x0), 2),
                        round(float(y0), 2),
                        round(float(x1 - x0), 2),
                        round(float(y1 - y0), 2),
                    ],
                    area=float(area),
                    segmentation=[[round(float(v), 2) for v in poly.ravel()]],
                )
            )
        if preset["noise_std"] > 0:
            img += rng.normal(0.0, preset["noise_std"], size=img.shape)
        # Hard negatives (lvis_synthetic_val_hardneg.json): confusable siblings of present
        # classes (where head-biased false positives occur) plus up to 5 random other absent
        # classes; annotation is exhaustive, so every absent class is a verified negative.
        groups = {classes[c]["group"] for c in present}
        absent = [c for c in range(num_cls) if c not in present]
        neg = {c for c in absent if classes[c]["group"] in groups}
        others = [c for c in absent if c not in neg]
        if others:
            neg |= {int(c) for c in rng.choice(others, size=min(5, len(others)), replace=False)}
        rel = f"{split}/{img_id:06d}.png"
        Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(
            os.path.join(out_dir, rel)
        )
        images.append(
            dict(
                id=img_id,
                file_name=rel,
                coco_url=f"synthetic://{rel}",
                height=size,
                width=size,
                neg_category_ids=sorted(c + 1 for c in neg),
                not_exhaustive_category_ids=[],
            )
        )
    return images, anns


def lvis_negatives(rng, positives, frequency):
    """LVIS's negative-label protocol (LVIS_* above) for images whose positive classes are
    ``positives`` (a list of sets of class indices); ``frequency[c]`` is class c's training group
    ("r" | "c" | "f"). Returns (negatives, not_exhaustive), lists of sorted index lists.

    Every absent class is a negative independently with probability q * LVIS_NEG_RATE[group],
    q set so that the expected negatives per positive equal LVIS's; each positive class is
    not-exhaustive with LVIS's probability. Negatives never depend on what the image shows
    beyond which classes it contains, as in LVIS.
    """
    num_cls = len(frequency)
    rate = np.array([LVIS_NEG_RATE[f] for f in frequency])
    absent_rate = sum(rate.sum() - rate[sorted(p)].sum() for p in positives)
    if absent_rate <= 0:
        raise ValueError("no absent class to draw negatives from")
    q = LVIS_NEG_PER_POS * sum(len(p) for p in positives) / absent_rate
    if q * rate.max() > 1:
        raise ValueError(
            f"too few classes ({num_cls}) for LVIS's {LVIS_NEG_PER_POS:.2f} "
            "negatives per positive: use a preset with more classes"
        )
    negatives, not_exhaustive = [], []
    for p in positives:
        draw = rng.random(num_cls) < q * rate
        draw[sorted(p)] = False
        negatives.append([int(c) for c in np.flatnonzero(draw)])
        ne = rng.random(len(p)) < LVIS_NOT_EXHAUSTIVE_PER_POS
        not_exhaustive.append([c for c, m in zip(sorted(p), ne) if m])
    return negatives, not_exhaustive


def _stats(anns, num_cls):
    imgs = [set() for _ in range(num_cls)]
    inst = [0] * num_cls
    for a in anns:
        imgs[a["category_id"] - 1].add(a["image_id"])
        inst[a["category_id"] - 1] += 1
    return [len(s) for s in imgs], inst


def _dump(path, obj):
    with atomic_open(path, "w") as f:
        f.write(json.dumps(obj, sort_keys=True, separators=(",", ":")))


_JSONS = ("train", "val", "val_hardneg")  # lvis_synthetic_<name>.json


def _result(out_dir, marker):
    out = os.path.abspath(out_dir)
    return dict(
        train_json=os.path.join(out, "lvis_synthetic_train.json"),
        val_json=os.path.join(out, "lvis_synthetic_val.json"),
        val_hardneg_json=os.path.join(out, "lvis_synthetic_val_hardneg.json"),
        train_images=os.path.join(out, "train"),
        val_images=os.path.join(out, "val"),
        num_classes=marker["num_classes"],
        num_train_images=marker["num_train_images"],
        num_val_images=marker["num_val_images"],
    )


def _num_pngs(folder: str) -> int:
    return sum(n.endswith(".png") for n in os.listdir(folder)) if os.path.isdir(folder) else -1


def generate(out_dir, preset="default", seed=0, force=False):
    """Write the dataset to ``out_dir`` (see module docstring) and return its paths/counts.

    Idempotent: if ``out_dir`` already holds a complete dataset of the same preset, seed
    and generator version, nothing is written unless ``force``. ``file_name`` fields are
    relative to ``out_dir``; ``coco_url`` is ``synthetic://<split>/<file>`` so that
    detectron2's LVIS loader resolves it as ``image_root + split/file``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    marker_path = os.path.join(out_dir, "GENERATOR.json")
    want = dict(preset=preset, seed=int(seed), version=VERSION)
    if not force and os.path.isfile(marker_path):
        with open(marker_path) as f:
            marker = json.load(f)
        done = all(
            os.path.isfile(os.path.join(out_dir, f"lvis_synthetic_{s}.json")) for s in _JSONS
        )
        # images deleted since (a cleaned folder) make it incomplete too: regenerate them
        done = done and all(
            _num_pngs(os.path.join(out_dir, s)) == marker.get(f"num_{s}_images")
            for s in ("train", "val")
        )
        if done and all(marker.get(k) == v for k, v in want.items()):
            return _result(out_dir, marker)

    os.makedirs(out_dir, exist_ok=True)
    # The marker is written last, so an interrupted run is never mistaken for a complete one.
    for name in ["GENERATOR.json"] + [f"lvis_synthetic_{s}.json" for s in _JSONS]:
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    for split in ("train", "val"):
        shutil.rmtree(os.path.join(out_dir, split), ignore_errors=True)

    classes = _classes(_groups(cfg))
    counts = _target_counts(cfg, classes)
    splits = {}
    for split_idx, split in enumerate(("train", "val")):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), split_idx])))
        splits[split] = _make_split(out_dir, split, cfg, classes, counts, rng)

    img_counts, inst_counts = _stats(splits["train"][1], len(classes))
    assert img_counts == counts, "class-to-image assignment missed a target count"
    categories = [
        dict(
            id=i + 1,
            name=c["name"],
            synonyms=[c["name"]],
            synset=c["name"],
            **{"def": c["desc"]},
            frequency=lvis_frequency(img_counts[i]),
            image_count=img_counts[i],
            instance_count=inst_counts[i],
        )
        for i, c in enumerate(classes)
    ]
    # The LVIS-like val negatives, from their own stream: the split streams stay as in version 1.
    val_images, val_anns = splits["val"]
    positives = [set() for _ in val_images]
    for a in val_anns:
        positives[a["image_id"] - 1].add(a["category_id"] - 1)
    neg_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 1, 1])))
    negatives, not_exhaustive = lvis_negatives(
        neg_rng, positives, [c["frequency"] for c in categories]
    )
    lvis_images = [
        dict(
            im,
            neg_category_ids=[c + 1 for c in neg],
            not_exhaustive_category_ids=[c + 1 for c in ne],
        )
        for im, neg, ne in zip(val_images, negatives, not_exhaustive)
    ]
    jsons = {
        "train": (splits["train"], "train"),
        "val": ((lvis_images, val_anns), "val, LVIS-like negatives"),
        # version 1's val json, unchanged (its description included)
        "val_hardneg": (splits["val"], "val"),
    }
    for name, ((images, anns), what) in jsons.items():
        info = dict(
            description=f"ltdet synthetic long-tailed dataset ({what})",
            preset=preset,
            seed=int(seed),
            version=_JSON_VERSIONS[name],
            year=2024,
        )
        _dump(
            os.path.join(out_dir, f"lvis_synthetic_{name}.json"),
            dict(info=info, licenses=[], images=images, annotations=anns, categories=categories),
        )
    marker = dict(
        want,
        num_classes=len(classes),
        num_train_images=len(splits["train"][0]),
        num_val_images=len(splits["val"][0]),
    )
    _dump(marker_path, marker)
    return _result(out_dir, marker)


def describe(json_path):
    """Per-class stats of a json, computed from its annotations (not its category fields):
    {name: (image_count, instance_count, frequency)}. For the train json these are the
    training stats; frequency applies the LVIS rule to the computed image count."""
    with open(json_path) as f:
        data = json.load(f)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    imgs, inst = [set() for _ in cats], [0] * len(cats)
    for a in data["annotations"]:
        imgs[index[a["category_id"]]].add(a["image_id"])
        inst[index[a["category_id"]]] += 1
    return {
        c["name"]: (len(imgs[i]), inst[i], lvis_frequency(len(imgs[i]))) for i, c in enumerate(cats)
    }
