"""LVIS AP computed with NumPy over arrays: lvis-api's protocol (``lvis/eval.py``,
``lvis/results.py``, 0.5.3), its numbers and its tie-breaking, without its per (image, category,
area) Python loops and dicts of dicts.

The protocol, step by step as lvis-api runs it:
1. each image keeps its top ``max_dets`` detections by score (stable: equal scores keep file order);
2. a detection counts only if its category is in the json, its area is > 0, and its category is
   positive (has ground truth) or a verified negative (``neg_category_ids``) of its image;
3. per (image, category), detections in decreasing score and ground truth (area > 0) in file order
   are matched greedily at each IoU threshold: a detection takes the unmatched ground truth of best
   IoU >= threshold (the later one on equal IoU), preferring ground truth inside the area range
   (not ignored); unmatched detections of a ``not_exhaustive_category_ids`` category, and those
   outside the area range, are ignored;
4. per category and area range, detections of all images (in decreasing score, ties by image id
   then file order) give the precision at 101 recall points (interpolated to the right);
   -1 where the category has no ground truth in the range.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_utils

__all__ = ["LVISDetections", "FastLVISEval", "evaluate_lvis"]

logger = logging.getLogger(__name__)

# lvis-api's Params, built the same way so that thresholds compare equal bit for bit
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNG = np.array(
    [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64
)
AREA_LBL = ["all", "small", "medium", "large"]
FREQ_LBL = ["r", "c", "f"]


@dataclass
class LVISDetections:
    """Detections as arrays (one row per detection), json category ids, XYWH boxes and/or
    compressed RLE masks (lvis-api's result format without the per-detection dicts)."""

    image_ids: np.ndarray  # int64 [N]
    category_ids: np.ndarray  # int64 [N], the json's ids
    scores: np.ndarray  # float64 [N]
    boxes: Optional[np.ndarray] = None  # float64 [N, 4] XYWH
    masks: Optional[List[dict]] = None  # compressed RLE per detection

    def __post_init__(self):
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64).reshape(-1)
        self.category_ids = np.asarray(self.category_ids, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        n = len(self.image_ids)
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        for name, v in (
            ("category_ids", self.category_ids),
            ("scores", self.scores),
            ("boxes", self.boxes),
            ("masks", self.masks),
        ):
            if v is not None and len(v) != n:
                raise ValueError(
                    f"LVISDetections: {n} image_ids but {len(v)} {name}; every "
                    "field needs one entry per detection"
                )

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_results(cls, results: Sequence[dict]) -> "LVISDetections":
        """From lvis-api's result format: dicts with image_id, category_id, score and bbox
        (XYWH) and/or segmentation (compressed RLE)."""
        if not results:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 4)), None)
        has_box = "bbox" in results[0]
        has_mask = "segmentation" in results[0]
        try:
            img = np.fromiter((r["image_id"] for r in results), np.int64, len(results))
            cat = np.fromiter((r["category_id"] for r in results), np.int64, len(results))
            score = np.fromiter((r["score"] for r in results), np.float64, len(results))
            boxes = (
                np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
                if has_box
                else None
            )
            masks = [r["segmentation"] for r in results] if has_mask else None
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"detection results must be dicts with image_id, category_id, score and bbox "
                f"(4 numbers, XYWH) and/or segmentation (RLE), as every entry of the first "
                f"has; one entry fails ({type(e).__name__}: {e})"
            ) from e
        return cls(img, cat, score, boxes, masks)

    def select(self, idx: np.ndarray) -> "LVISDetections":
        return LVISDetections(
            self.image_ids[idx],
            self.category_ids[idx],
            self.scores[idx],
            None if self.boxes is None else self.boxes[idx],
            None if self.masks is None else [self.masks[i] for i in idx],
        )


def top_per_image(image_ids: np.ndarray, scores: np.ndarray, max_dets: int) -> np.ndarray:
    """Indices (ascending) of each image's ``max_dets`` best detections, equal scores in input
    order: lvis-api's ``LVISResults.limit_dets_per_image`` (a stable sort by score)."""
    n = len(image_ids)
    if max_dets < 0 or n == 0:
        return np.arange(n)
    order = np.lexsort((np.arange(n), -scores, image_ids))
    img = image_ids[order]
    first = np.r_[0, np.flatnonzero(img[1:] != img[:-1]) + 1]
    rank = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    return np.sort(order[rank < max_dets])


class _GroundTruth:
    """The json's annotations as arrays, in lvis-api's order (images by id, file order within)."""

    def __init__(self, dataset: dict, iou_type: str):
        images = dataset["images"]
        self.img_ids = np.unique(np.array([im["id"] for im in images], dtype=np.int64))
        self.cat_ids = np.array(sorted(c["id"] for c in dataset["categories"]), dtype=np.int64)
        cats = {c["id"]: c for c in dataset["categories"]}
        self.frequency = [cats[c]["frequency"] for c in self.cat_ids.tolist()]
        anns = dataset["annotations"]
        n = len(anns)
        img = np.fromiter((a["image_id"] for a in anns), np.int64, n)
        cat = np.fromiter((a["category_id"] for a in anns), np.int64, n)
        area = np.fromiter((a["area"] for a in anns), np.float64, n)
        # lvis-api's get_ann_ids keeps 0 < area < inf, json categories, json images
        keep = (
            np.isin(img, self.img_ids) & np.isin(cat, self.cat_ids) & (area > 0) & (area < np.inf)
        )
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(img[idx], kind="stable")]
        self.img = np.searchsorted(self.img_ids, img[idx])  # image index
        self.cat = np.searchsorted(self.cat_ids, cat[idx])  # category index
        self.area = area[idx]
        self.ignore = np.array([bool(anns[i].get("ignore", 0)) for i in idx], dtype=bool)
        self.ann_id = np.array([anns[i]["id"] for i in idx], dtype=np.int64)
        if iou_type == "bbox":
            self.regions = np.array([anns[i]["bbox"] for i in idx], dtype=np.float64).reshape(-1, 4)
        else:
            hw = {im["id"]: (im["height"], im["width"]) for im in images}
            self.regions = [_to_rle(anns[i]["segmentation"], *hw[anns[i]["image_id"]]) for i in idx]
        num_img = len(self.img_ids)
        self.pos_keys = np.unique(self.cat * num_img + self.img)
        self.neg_keys = self._keys(images, "neg_category_ids")
        self.nel_keys = self._keys(images, "not_exhaustive_category_ids")

    def _keys(self, images, field) -> np.ndarray:
        """cat_index * num_images + image_index for the (image, category) pairs listed in field."""
        img, cat = [], []
        for im in images:
            ids = im[field]
            img.extend([im["id"]] * len(ids))
            cat.extend(ids)
        img = np.array(img, dtype=np.int64)
        cat = np.array(cat, dtype=np.int64)
        ok = np.isin(cat, self.cat_ids)
        return np.unique(
            np.searchsorted(self.cat_ids, cat[ok]) * len(self.img_ids)
            + np.searchsorted(self.img_ids, img[ok])
        )


def _mask_areas(rles: List[dict]) -> np.ndarray:
    # pycocotools 2.x on NumPy 2 overflows (np.array((n,), uint8)) for lists over 255 masks
    parts = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def _to_rle(segm, h: int, w: int) -> dict:
    """lvis-api's ann_to_rle: polygons merged into one RLE, uncompressed RLE compressed."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


class FastLVISEval:
    """lvis-api's ``LVISEval`` on arrays. ``run()`` fills ``precision`` [T, R, K, A], ``recall``
    [T, K, A] and ``results`` (lvis-api's keys, -1 for "no data"), as ``LVISEval`` does."""

    def __init__(
        self,
        dataset: dict,
        detections: LVISDetections,
        iou_type: str = "segm",
        max_dets: int = 300,
        progress_s: float = 10.0,
    ):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        self.dataset = dataset
        self.dets = detections
        self.iou_type = iou_type
        self.max_dets = max_dets
        self.iou_thrs = IOU_THRS
        self.rec_thrs = REC_THRS
        self.progress_s = progress_s
        self.results: Dict[str, float] = OrderedDict()
        self.precision = self.recall = None

    @property
    def cat_ids(self) -> List[int]:
        return self.gt.cat_ids.tolist()

    def run(self) -> "FastLVISEval":
        t0 = time.perf_counter()
        self.gt = gt = _GroundTruth(self.dataset, self.iou_type)
        d = self._prepare_detections(gt)
        logger.info(
            "LVIS %s: %d ground-truth and %d scored detections (%.1f s to prepare)",
            self.iou_type,
            len(gt.img),
            len(d["img"]),
            time.perf_counter() - t0,
        )
        tp, dt_ig = self._match(gt, d)
        self._accumulate(gt, d, tp, dt_ig)
        self._summarize(gt)
        logger.info("LVIS %s evaluated in %.1f s", self.iou_type, time.perf_counter() - t0)
        return self

    def _prepare_detections(self, gt: _GroundTruth) -> dict:
        dets = self.dets
        unknown = np.setdiff1d(dets.image_ids, gt.img_ids)
        if len(unknown):
            raise ValueError(
                f"{len(unknown)} image id(s) of the detections are not images of the ground-truth "
                f"json (e.g. {unknown[:5].tolist()}): evaluate against the json the detections "
                "were made for"
            )
        keep = top_per_image(dets.image_ids, dets.scores, self.max_dets)
        if self.iou_type == "bbox":
            if dets.boxes is None:  # lvis-api derives boxes from masks
                boxes = np.array(
                    mask_utils.toBbox([dets.masks[i] for i in keep]), dtype=np.float64
                ).reshape(-1, 4)
            else:
                boxes = dets.boxes[keep]
            area = boxes[:, 2] * boxes[:, 3]
            regions = boxes
        else:
            if dets.masks is None:
                raise ValueError(
                    "segm evaluation needs 'segmentation' (RLE) in the detections; "
                    "these have boxes only: evaluate bbox"
                )
            regions = [dets.masks[i] for i in keep]
            area = _mask_areas(regions)
        cat_ids = dets.category_ids[keep]
        num_img = len(gt.img_ids)
        img = np.searchsorted(gt.img_ids, dets.image_ids[keep])
        cat = np.searchsorted(gt.cat_ids, cat_ids).clip(max=max(len(gt.cat_ids) - 1, 0))
        known = (gt.cat_ids[cat] == cat_ids) if len(gt.cat_ids) else np.zeros(len(keep), bool)
        key = cat * num_img + img
        # a category counts on an image only where it is positive or a verified negative
        ok = (
            known
            & (area > 0)
            & (area < np.inf)
            & (np.isin(key, gt.pos_keys) | np.isin(key, gt.neg_keys))
        )
        sel = np.flatnonzero(ok)
        return {
            "img": img[sel],
            "cat": cat[sel],
            "key": key[sel],
            "score": dets.scores[keep][sel],
            "area": area[sel],
            "nel": np.isin(key[sel], gt.nel_keys),
            "regions": regions[sel]
            if isinstance(regions, np.ndarray)
            else [regions[i] for i in sel],
        }

    def _match(self, gt: _GroundTruth, d: dict):
        """Greedy matching of every (image, category): returns tp and ignore flags [N, A, T]."""
        n, A, T = len(d["img"]), len(AREA_RNG), len(self.iou_thrs)
        # ground truth outside an area range is ignored there [A, G]
        g_ig = (
            gt.ignore[None, :]
            | (gt.area[None, :] < AREA_RNG[:, :1])
            | (gt.area[None, :] > AREA_RNG[:, 1:])
        )
        d_out = (d["area"][None, :] < AREA_RNG[:, :1]) | (d["area"][None, :] > AREA_RNG[:, 1:])
        tp = np.zeros((n, A, T), dtype=bool)
        dt_ig = np.zeros((n, A, T), dtype=bool)
        # detections of a group in decreasing score, equal scores in input order
        d_order = np.lexsort((np.arange(n), -d["score"], d["key"]))
        g_key = gt.cat * len(gt.img_ids) + gt.img
        g_order = np.argsort(g_key, kind="stable")
        dk, gk = d["key"][d_order], g_key[g_order]
        both = np.intersect1d(dk, gk)
        d_lo, d_hi = np.searchsorted(dk, both), np.searchsorted(dk, both, side="right")
        g_lo, g_hi = np.searchsorted(gk, both), np.searchsorted(gk, both, side="right")
        ious = []
        t_last = time.perf_counter()
        for i in range(len(both)):
            di, gi = d_order[d_lo[i] : d_hi[i]], g_order[g_lo[i] : g_hi[i]]
            if self.iou_type == "bbox":
                dr, gr = d["regions"][di], gt.regions[gi]
            else:
                dr, gr = [d["regions"][j] for j in di], [gt.regions[j] for j in gi]
            ious.append(np.asarray(mask_utils.iou(dr, gr, [0] * len(gi)), dtype=np.float64))
            if time.perf_counter() - t_last > self.progress_s:
                t_last = time.perf_counter()
                logger.info(
                    "LVIS %s: IoUs of %d/%d (image, category) pairs",
                    self.iou_type,
                    i + 1,
                    len(both),
                )
        d_cnt, g_cnt = d_hi - d_lo, g_hi - g_lo
        # groups padded to a power-of-two number of ground truths, matched all at once per
        # detection rank: at rank r the groups with more than r detections take a step
        g_pad = 1 << np.ceil(np.log2(np.maximum(g_cnt, 1))).astype(np.int64)
        thr = np.minimum(self.iou_thrs, 1 - 1e-10)[None, None, :, None]
        for pad in np.unique(g_pad):
            grp = np.flatnonzero(g_pad == pad)
            grp = grp[np.argsort(-d_cnt[grp], kind="stable")]
            nd = d_cnt[grp]
            start = np.r_[0, np.cumsum(nd)[:-1]]
            iou = np.full((int(nd.sum()), pad), -1.0)
            ig = np.ones((len(grp), A, pad), dtype=bool)
            gid = np.zeros((len(grp), pad), dtype=np.int64)
            for k, g in enumerate(grp):
                iou[start[k] : start[k] + nd[k], : g_cnt[g]] = ious[g]
                gi = g_order[g_lo[g] : g_hi[g]]
                ig[k, :, : g_cnt[g]] = g_ig[:, gi]
                gid[k, : g_cnt[g]] = gt.ann_id[gi]
            matched = np.zeros((len(grp), A, T, pad), dtype=bool)
            for r in range(int(nd[0])):
                m_r = int(np.searchsorted(-nd, -r, side="left"))  # groups with nd > r
                rows = start[:m_r] + r
                v = iou[rows][:, None, None, :]
                cand = (v >= thr) & ~matched[:m_r]
                igr = ig[:m_r, :, None, :]
                best = _best(cand & ~igr, v)
                best_ig = _best(cand & igr, v)
                m = np.where(best >= 0, best, best_ig)  # [m_r, A, T]
                k, a, t = np.nonzero(m >= 0)
                matched[k, a, t, m[k, a, t]] = True
                det = d_order[d_lo[grp[:m_r]] + r][:, None, None]  # [m_r, 1, 1]
                kk = np.arange(m_r)[:, None, None]
                mm = np.maximum(m, 0)
                # lvis-api records the matched ground truth's id: an id of 0 reads as unmatched
                hit = (m >= 0) & (gid[kk, mm] != 0)
                hit_ig = (m >= 0) & ig[kk, np.arange(A)[None, :, None], mm]
                # unmatched detections outside the area range or of a not-exhaustive category
                unm = ~hit & (d_out[:, det[:, 0, 0]].T[:, :, None] | d["nel"][det])
                tp[det[:, 0, 0]] = hit & ~hit_ig
                dt_ig[det[:, 0, 0]] = hit_ig | unm
        # detections of groups without ground truth: unmatched
        alone = np.ones(n, dtype=bool)
        alone[
            d_order[
                np.concatenate([np.arange(lo, hi) for lo, hi in zip(d_lo, d_hi)])
                if len(both)
                else np.zeros(0, np.int64)
            ]
        ] = False
        dt_ig[alone] |= (d_out[:, alone].T | d["nel"][alone][:, None])[:, :, None]
        return tp, dt_ig

    def _accumulate(self, gt: _GroundTruth, d: dict, tp: np.ndarray, dt_ig: np.ndarray):
        T, R, K, A = len(self.iou_thrs), len(self.rec_thrs), len(gt.cat_ids), len(AREA_RNG)
        precision = -np.ones((T, R, K, A))
        recall = -np.ones((T, K, A))
        g_ig = (
            gt.ignore[None, :]
            | (gt.area[None, :] < AREA_RNG[:, :1])
            | (gt.area[None, :] > AREA_RNG[:, 1:])
        )
        num_gt = np.zeros((K, A), dtype=np.int64)
        for a in range(A):
            num_gt[:, a] = np.bincount(gt.cat[~g_ig[a]], minlength=K)
        # all images' detections of a category: decreasing score, ties by image id, input order
        order = np.lexsort((np.arange(len(d["cat"])), d["img"], -d["score"], d["cat"]))
        cat = d["cat"][order]
        bounds = np.searchsorted(cat, np.arange(K + 1))
        tps = tp[order].transpose(1, 2, 0)  # [A, T, N]
        fps = ~tp[order].transpose(1, 2, 0) & ~dt_ig[order].transpose(1, 2, 0)
        tps &= ~dt_ig[order].transpose(1, 2, 0)
        eps = np.spacing(1)
        for k in range(K):
            lo, hi = bounds[k], bounds[k + 1]
            for a in range(A):
                if num_gt[k, a] == 0:
                    continue
                if hi == lo:
                    recall[:, k, a] = 0
                    precision[:, :, k, a] = 0
                    continue
                tp_sum = np.cumsum(tps[a, :, lo:hi], axis=1).astype(np.float64)
                fp_sum = np.cumsum(fps[a, :, lo:hi], axis=1).astype(np.float64)
                rc = tp_sum / num_gt[k, a]
                recall[:, k, a] = rc[:, -1]
                pr = tp_sum / (fp_sum + tp_sum + eps)
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(T):
                    idx = np.searchsorted(rc[t], self.rec_thrs, side="left")
                    ok = idx < hi - lo
                    precision[t, :, k, a] = np.where(ok, pr[t][np.minimum(idx, hi - lo - 1)], 0)
        self.precision, self.recall = precision, recall

    def _summarize(self, gt: _GroundTruth):
        groups = [[k for k, f in enumerate(gt.frequency) if f == g] for g in FREQ_LBL]

        def mean(s):
            s = s[s > -1]
            return float(np.mean(s)) if len(s) else -1.0

        def ap(iou_thr=None, area="all", group=None):
            s = self.precision
            aidx = [AREA_LBL.index(area)]
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            s = s[:, :, groups[group], aidx] if group is not None else s[:, :, :, aidx]
            return mean(s)

        r = self.results
        r["AP"], r["AP50"], r["AP75"] = ap(), ap(iou_thr=0.50), ap(iou_thr=0.75)
        for a in ("small", "medium", "large"):
            r[f"AP{a[0]}"] = ap(area=a)
        for g, name in enumerate(FREQ_LBL):
            r[f"AP{name}"] = ap(group=g)
        r[f"AR@{self.max_dets}"] = mean(self.recall[:, :, [0]])
        for a in ("small", "medium", "large"):
            r[f"AR{a[0]}@{self.max_dets}"] = mean(self.recall[:, :, [AREA_LBL.index(a)]])


def _best(cand: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per lane, the candidate of highest IoU, the last one on equal IoU (lvis-api moves to a
    later ground truth when its IoU is >= the best so far); -1 where there is none."""
    pad = cand.shape[-1]
    vals = np.where(cand, v, -2.0)[..., ::-1]
    best = pad - 1 - np.argmax(vals, axis=-1)
    return np.where(cand.any(-1), best, -1)


def evaluate_lvis(
    dataset: dict, detections: LVISDetections, iou_type: str, max_dets: int = 300
) -> FastLVISEval:
    """Run the fast LVIS evaluation; the json's contents as ``dataset``."""
    return FastLVISEval(dataset, detections, iou_type, max_dets).run()
