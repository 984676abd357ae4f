"""Register any LVIS-format json (LVIS v0.5, v1, or a user's own long-tailed set) in detectron2.

Unlike detectron2's ``register_lvis_instances``, the metadata (class names, id mapping) comes from
the json itself, so no built-in class list is needed, and the per-class training statistics that
the balanced losses and samplers consume are computed from its annotations
(``ltdet.data.class_stats``).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

# LVIS frequency groups from the number of training images (Gupta et al. 2019): rare up to 10,
# common up to 100, frequent above (class_stats.frequency_group; derived for COCO-format jsons).
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100


def _read_json(json_file: str) -> dict:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"dataset json {json_file} does not exist. For LVIS, place it under "
            "$DETECTRON2_DATASETS/lvis/; for the synthetic demo run "
            "`python tools/make_synthetic.py`."
        )
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{json_file} is not valid json ({e}); re-download or regenerate it"
        ) from e
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if not isinstance(data, dict) or missing:
        raise ValueError(
            f"{json_file} is not in LVIS/COCO form: missing top-level key(s) {missing}; "
            "an LVIS-format json has 'images', 'annotations' and 'categories'"
        )
    return data


def read_dataset_json(json_file: str) -> dict:
    """A dataset json's contents, with an error naming the fix when it is missing, not json, or
    lacks the 'images' / 'annotations' / 'categories' of the LVIS and COCO formats."""
    return _read_json(json_file)


def lvis_eval_problems(data: dict) -> List[str]:
    """What lvis-api's evaluation needs and an LVIS-format json lacks (empty: nothing): every
    image's ``neg_category_ids`` and ``not_exhaustive_category_ids``, every annotation's
    ``area`` and every category's ``frequency`` (r/c/f)."""
    images = data.get("images", [])
    missing = [
        k
        for k in ("neg_category_ids", "not_exhaustive_category_ids")
        if any(k not in img for img in images)
    ]
    no_area = [a.get("id") for a in data.get("annotations", []) if "area" not in a]
    bad = [
        c.get("id") for c in data.get("categories", []) if c.get("frequency") not in ("r", "c", "f")
    ]
    what = crowd_eval_problems(data.get("annotations", []))
    if missing:
        what.append(f"images without {' / '.join(missing)}")
    if no_area:
        what.append(
            f"annotations without an 'area' (ids {no_area[:5]}"
            f"{' ...' if len(no_area) > 5 else ''}; lvis-api uses it for the size "
            "ranges and to ignore empty objects: the mask's pixel area)"
        )
    if bad:
        what.append(
            f"categories without a 'frequency' of 'r', 'c' or 'f' (ids {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''})"
        )
    return what


def json_format(data: dict) -> str:
    """ "lvis" when the json carries LVIS's fields (categories' ``frequency``, images'
    ``neg_category_ids`` / ``not_exhaustive_category_ids``), "coco" when it carries none of them
    (a plain COCO-format json). A json with some of them is "lvis": lvis_eval_problems names what
    it lacks rather than mixing given and derived labels."""
    lvis_keys = ("neg_category_ids", "not_exhaustive_category_ids")
    has = any("frequency" in c for c in data["categories"]) or any(
        k in img for img in data["images"] for k in lvis_keys
    )
    return "lvis" if has else "coco"


def derive_lvis_fields(
    data: dict,
    train_image_counts: Optional[Dict[int, int]] = None,
    *,
    rare_max: int = RARE_MAX_IMAGES,
    common_max: int = COMMON_MAX_IMAGES,
    source: str = "the json",
) -> dict:
    """The LVIS fields of a plain COCO-format json, which lvis-api needs to evaluate it:

    - each category's ``frequency``: "r" at <= ``rare_max`` training images, "c" at <=
      ``common_max``, else "f" (LVIS's rule, 10 and 100), from ``train_image_counts`` (category id
      -> images containing it in the training json; None: this json's own counts);
    - each image's ``neg_category_ids``: every category absent from it. A COCO json is annotated
      exhaustively (COCO's evaluation assumes it), so an absent category is a verified negative
      and its detections there are false positives, as in COCOeval;
    - ``not_exhaustive_category_ids`` empty; ``area`` of a box-only annotation without one: the
      box's w*h (a mask without ``area`` stays an error of lvis_eval_problems: its pixel area).

    Returns a new dict (``data`` is left alone) and logs the derivation."""
    if json_format(data) != "coco":
        raise ValueError(
            f"{source} already carries LVIS fields; only a COCO-format json is derived"
        )
    if not 0 <= rare_max < common_max:
        raise ValueError(
            f"frequency thresholds rare_max={rare_max}, common_max={common_max}: "
            "need 0 <= LTDET.DATASETS.RARE_MAX_IMAGES < COMMON_MAX_IMAGES"
        )
    cat_ids = [c["id"] for c in data["categories"]]
    present: Dict[int, Set[int]] = {img["id"]: set() for img in data["images"]}
    for ann in data["annotations"]:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
    if train_image_counts is None:
        train_image_counts = {c: 0 for c in cat_ids}
        for cats in present.values():
            for c in cats:
                train_image_counts[c] = train_image_counts.get(c, 0) + 1
    unknown = [c for c in cat_ids if c not in train_image_counts]
    if unknown:
        raise ValueError(
            f"{source}: categories {unknown[:5]} are not in the training json; train "
            "and test sets must share one category list"
        )

    def group(n: int) -> str:
        return "r" if n <= rare_max else ("c" if n <= common_max else "f")

    out = dict(data)
    out["categories"] = [
        dict(
            c,
            frequency=group(train_image_counts[c["id"]]),
            image_count=int(train_image_counts[c["id"]]),
        )
        for c in data["categories"]
    ]
    out["images"] = [
        dict(
            img,
            neg_category_ids=sorted(set(cat_ids) - present[img["id"]]),
            not_exhaustive_category_ids=[],
        )
        for img in data["images"]
    ]
    boxes_only = [
        i
        for i, a in enumerate(data["annotations"])
        if "area" not in a and not a.get("segmentation")
    ]
    out["annotations"] = list(data["annotations"])
    for i in boxes_only:
        a = out["annotations"][i]
        out["annotations"][i] = dict(a, area=float(a["bbox"][2] * a["bbox"][3]))
    groups = [c["frequency"] for c in out["categories"]]
    logger.info(
        "%s is COCO format: derived LVIS fields. Frequency groups from training image counts "
        "(rare <= %d, common <= %d images): %d rare, %d common, %d frequent; every category absent "
        "from an image is a verified negative (exhaustive annotation); no not-exhaustive "
        "categories; %d box areas from w*h",
        source,
        rare_max,
        common_max,
        groups.count("r"),
        groups.count("c"),
        groups.count("f"),
        len(boxes_only),
    )
    return out


def crowd_annotations(annotations: Sequence[dict]) -> List[dict]:
    """COCO's crowd regions (``iscrowd`` 1): one region over many objects. LVIS has none."""
    return [a for a in annotations if a.get("iscrowd", 0)]


def crowd_eval_problems(annotations: Sequence[dict]) -> List[str]:
    """lvis-api has no crowd / ignore regions: it would score a crowd region as an object to
    detect (COCO's evaluation ignores the detections on it)."""
    crowd = [a.get("id") for a in crowd_annotations(annotations)]
    if not crowd:
        return []
    return [
        f"{len(crowd)} crowd annotations (iscrowd 1, ids {crowd[:5]}"
        f"{' ...' if len(crowd) > 5 else ''}; lvis-api has no ignore regions and would count "
        "each as an object to detect: remove them from the json)"
    ]


def without_crowd(annotations: List[dict], source: str) -> List[dict]:
    """``annotations`` without crowd regions, with a warning that counts them. As in detectron2
    (its mapper drops them, its loader the images with nothing else) and COCO, a crowd region is
    not an instance: it is in no class statistic, repeat factor or training target."""
    crowd = crowd_annotations(annotations)
    if not crowd:
        return annotations
    cats = sorted({a.get("category_id") for a in crowd})
    logger.warning(
        "%s: %d crowd annotations (iscrowd 1; category ids %s) are not trained on and "
        "not counted in the class statistics or repeat factors, as in detectron2 and "
        "COCO",
        source,
        len(crowd),
        cats[:10] + (["..."] if len(cats) > 10 else []),
    )
    return [a for a in annotations if not a.get("iscrowd", 0)]


def lvis_eval_error(problems: List[str], source: str) -> str:
    return (
        f"{source} cannot be evaluated with LVIS AP: {'; '.join(problems)}. LVIS-format jsons "
        "carry them (a COCO json does not): add the image lists (empty lists if annotation is "
        "not federated), the areas and each category's training frequency group; a plain "
        "COCO-format json gets them derived when given to tools/train_net.py as --dataset "
        "NAME JSON IMAGE_ROOT (docs/CUSTOM_DATASETS.md)"
    )


def _image_path(img: dict, image_root: str) -> str:
    # LVIS v0.5 names images "COCO_val2014_000000001268.jpg" but they live in COCO 2017 folders
    # as "000000001268.jpg"; LVIS v1 has no file_name and points at "<split>/<file>" via coco_url.
    name = img.get("file_name")
    if name is None:
        name = os.path.join(*img["coco_url"].split("/")[-2:])
    elif os.path.basename(name).startswith("COCO_"):
        name = os.path.basename(name)[-16:]
    return os.path.join(image_root, name)


def load_lvis_format_json(
    json_file: str, image_root: str, check_images: bool = True, dataset_name: Optional[str] = None
) -> List[Dict]:
    """Read an LVIS-format json into detectron2 dataset dicts with contiguous category ids.

    With ``dataset_name``, its metadata (class names, id mapping) is set from the json's categories.
    Image dicts keep LVIS's ``neg_category_ids`` / ``not_exhaustive_category_ids`` (as contiguous
    ids) for losses that use them. Annotations that point at unknown categories or images, and
    missing image files (when ``check_images``), are errors.
    """
    data = _read_json(json_file)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=[c.get("name", str(c["id"])) for c in cats],
            thing_dataset_id_to_contiguous_id=id_map,
            # read by check_config for test sets: refused at start-up, not after training
            lvis_eval_problems=lvis_eval_problems(data),
        )
    anns_per_image: Dict[int, List[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in without_crowd(data["annotations"], json_file):
        if ann["category_id"] not in id_map:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} has category_id {ann['category_id']}, "
                f"which is not in 'categories' (ids {cat_ids[0]}..{cat_ids[-1]}); fix the json"
            )
        if ann["image_id"] not in anns_per_image:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} points at image_id {ann['image_id']}, "
                "which is not in 'images'; fix the json"
            )
        anns_per_image[ann["image_id"]].append(ann)

    dicts = []
    for img in data["images"]:
        record = {
            "file_name": _image_path(img, image_root),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "neg_category_ids": [id_map[c] for c in img.get("neg_category_ids", []) if c in id_map],
            "not_exhaustive_category_ids": [
                id_map[c] for c in img.get("not_exhaustive_category_ids", []) if c in id_map
            ],
            "annotations": [
                {
                    "bbox": ann["bbox"],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": id_map[ann["category_id"]],
                    "segmentation": ann["segmentation"],
                }
                for ann in anns_per_image[img["id"]]
            ],
        }
        dicts.append(record)

    if check_images:
        _check_images(dicts, json_file, image_root)
    logger.info("Loaded %d images, %d classes from %s", len(dicts), len(cat_ids), json_file)
    return dicts


def _check_images(dicts: List[Dict], json_file: str, image_root: str) -> None:
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(dicts)} images of {json_file} are missing under "
            f"image_root {image_root!r}, e.g. {missing[:3]}; check the image_root given at "
            "registration (LVIS v1: $DETECTRON2_DATASETS/coco/; LVIS v0.5: .../coco/train2017/ "
            "for train, .../coco/val2017/ for val). The synthetic set's images are regenerated "
            "by `python tools/make_synthetic.py`"
        )


# Active only inside ``shared_loads()``: (json, image root, name) -> [the dicts loaded first,
# whether their image files were checked].
_SHARED: Optional[Dict[Tuple[str, str, str], list]] = None
# Names registered by ``register_lvis_format`` (their json and image root are in the metadata).
_REGISTERED: Set[str] = set()


@contextmanager
def shared_loads() -> Iterator[None]:
    """Within this block a registered LVIS-format json is parsed once: later loads of the same
    dataset get a new list of the same (read-only) dicts. The Trainer builds its class
    statistics, train, meta and development loaders in one (an LVIS train json was parsed up to
    four times at start-up). Dropped on exit, so no Python-object copy of a large dataset
    outlives the loaders' own serialised ones (nested blocks share the outer cache)."""
    global _SHARED
    outer = _SHARED is not None
    if not outer:
        _SHARED = {}
    try:
        yield
    finally:
        if not outer:
            _SHARED = None


def _load_registered(
    json_file: str, image_root: str, name: str, check_images: bool = True
) -> List[dict]:
    if _SHARED is None:
        return load_lvis_format_json(json_file, image_root, check_images, dataset_name=name)
    key = (json_file, image_root, name)
    if key not in _SHARED:
        _SHARED[key] = [
            load_lvis_format_json(json_file, image_root, False, dataset_name=name),
            False,
        ]
    entry = _SHARED[key]
    if check_images and not entry[1]:
        _check_images(entry[0], json_file, image_root)
        entry[1] = True
    return list(entry[0])


def register_lvis_format(name: str, json_file: str, image_root: str) -> None:
    """Register ``name`` in detectron2's DatasetCatalog/MetadataCatalog (lazily: nothing is read
    until the dataset or its metadata is first needed, as with detectron2's built-in sets)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # Statistics of an earlier registration under this name (alone or in a sum) are stale now.
    from .class_stats import clear_class_stats  # (class_stats reads datasets through this module)

    clear_class_stats(name)

    DatasetCatalog.register(name, lambda: _load_registered(json_file, image_root, name))
    _REGISTERED.add(name)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis")


def is_registered_lvis_format(name: str) -> bool:
    """Whether ``name`` was registered by ``register_lvis_format`` (its json and image root are
    in its metadata)."""
    return name in _REGISTERED


def lvis_format_dicts(name: str, check_images: bool = True) -> List[dict]:
    """The dicts of a dataset registered by ``register_lvis_format``, as ``DatasetCatalog.get``
    gives them, optionally without checking that the image files exist (class statistics need
    the annotations only); shared within ``shared_loads``."""
    meta = MetadataCatalog.get(name)
    return _load_registered(meta.json_file, meta.image_root, name, check_images=check_images)
