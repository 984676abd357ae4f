"""Datasets given on the command line or in config keys, without code.

``tools/train_net.py --dataset NAME JSON IMAGE_ROOT`` (or ``LTDET.DATASETS.REGISTER`` entries
``"NAME:JSON:IMAGE_ROOT"``) registers NAME before training or evaluation. An LVIS-format json is
registered as it is (``register_lvis_format``). A plain COCO-format json gets the LVIS fields
derived (``derive_lvis_fields``: frequency groups from the training sets' image counts, every
absent category a verified negative) and written to ``<derived_dir>/NAME.json``, the file the
loader and lvis-api then read.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..file_io import atomic_open
from .lvis_format import (
    COMMON_MAX_IMAGES,
    RARE_MAX_IMAGES,
    derive_lvis_fields,
    json_format,
    read_dataset_json,
    register_lvis_format,
)

logger = logging.getLogger(__name__)

HOW_TO_REGISTER = (
    "register it with `tools/train_net.py --dataset NAME JSON IMAGE_ROOT` (once per set, "
    "LVIS- or COCO-format json), the config key LTDET.DATASETS.REGISTER "
    "['NAME:JSON:IMAGE_ROOT', ...], or in Python ltdet.data.register_lvis_format(NAME, JSON, "
    "IMAGE_ROOT); docs/CUSTOM_DATASETS.md"
)


def parse_spec(spec: str) -> Tuple[str, str, str]:
    """``"NAME:JSON:IMAGE_ROOT"`` -> (name, json, image_root)."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"LTDET.DATASETS.REGISTER entry {spec!r} is not 'NAME:JSON:IMAGE_ROOT' "
            "(e.g. 'my_train:data/train.json:data/images/')"
        )
    return parts[0], parts[1], parts[2]


def _image_counts(data: dict) -> Dict[int, int]:
    per_image: Dict[int, set] = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], set()).add(ann["category_id"])
    counts = {c["id"]: 0 for c in data["categories"]}
    for cats in per_image.values():
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
    return counts


def _check_same_categories(data: dict, ref: dict, source: str, ref_source: str) -> None:
    ours = {c["id"]: c.get("name") for c in data["categories"]}
    theirs = {c["id"]: c.get("name") for c in ref["categories"]}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()), key=str)[:5]
        raise ValueError(
            f"{source} and the training json {ref_source} have different category lists "
            f"({len(ours)} vs {len(theirs)} categories; differing (id, name) pairs {diff}): "
            "a model's class i would be scored as another category. Give every split the "
            "training json's 'categories' list"
        )


def register_user_datasets(
    specs: Sequence[str],
    train_names: Sequence[str],
    derived_dir: str,
    *,
    rare_max: int = RARE_MAX_IMAGES,
    common_max: int = COMMON_MAX_IMAGES,
) -> List[str]:
    """Register every ``"NAME:JSON:IMAGE_ROOT"`` of ``specs``; returns the names.

    COCO-format jsons take their frequency groups from the image counts summed over those of
    ``specs`` named in ``train_names`` (DATASETS.TRAIN), or from their own counts (with a warning)
    when no training json is among them, and are written to ``derived_dir``."""
    parsed = [parse_spec(s) for s in specs]
    names = [p[0] for p in parsed]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(
            f"dataset name(s) {dup} given twice in LTDET.DATASETS.REGISTER / "
            "--dataset; give each set one name"
        )
    datas = {}
    for name, json_file, _ in parsed:
        data = read_dataset_json(json_file)
        if not isinstance(data["images"], list) or not isinstance(data["categories"], list):
            raise ValueError(
                f"{json_file} is neither LVIS nor COCO format: 'images' and "
                "'categories' must be lists; export it in COCO instance format"
            )
        datas[name] = (json_file, data, json_format(data))

    train = [n for n in names if n in train_names]
    train_counts: Optional[Dict[int, int]] = None
    for n in train:
        json_file, data, _ = datas[n]
        _check_same_categories(data, datas[train[0]][1], json_file, datas[train[0]][0])
        counts = _image_counts(data)
        train_counts = (
            counts if train_counts is None else {c: train_counts[c] + counts[c] for c in counts}
        )
    if train:
        for n in names:
            _check_same_categories(datas[n][1], datas[train[0]][1], datas[n][0], datas[train[0]][0])

    for name, json_file, image_root in parsed:
        _, data, fmt = datas[name]
        if fmt == "lvis":
            register_lvis_format(name, json_file, image_root)
            logger.info(
                "Registered %s: LVIS-format %s, images under %s", name, json_file, image_root
            )
            continue
        if train_counts is None:
            logger.warning(
                "%s is COCO format and no training json is given with --dataset / "
                "LTDET.DATASETS.REGISTER: its frequency groups come from its own image counts, "
                "not the training set's. Register the training json too for LVIS's APr/APc/APf",
                json_file,
            )
        derived = derive_lvis_fields(
            data, train_counts, rare_max=rare_max, common_max=common_max, source=json_file
        )
        out = os.path.join(derived_dir, f"{name}.json")
        os.makedirs(derived_dir, exist_ok=True)
        with atomic_open(out, "w") as f:
            json.dump(derived, f)
        register_lvis_format(name, out, image_root)
        MetadataCatalog.get(name).set(source_json=json_file)
        logger.info(
            "Registered %s: COCO-format %s with derived LVIS fields in %s, images under %s",
            name,
            json_file,
            out,
            image_root,
        )
    return names


def register_from_config(cfg) -> List[str]:
    """Register the sets of ``cfg.LTDET.DATASETS.REGISTER`` (derived jsons go to
    ``OUTPUT_DIR/datasets``) and check that every name in DATASETS.TRAIN / TEST is known."""
    names = register_user_datasets(
        cfg.LTDET.DATASETS.REGISTER,
        cfg.DATASETS.TRAIN,
        os.path.join(cfg.OUTPUT_DIR, "datasets"),
        rare_max=cfg.LTDET.DATASETS.RARE_MAX_IMAGES,
        common_max=cfg.LTDET.DATASETS.COMMON_MAX_IMAGES,
    )
    check_registered(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return names


def check_registered(names: Sequence[str]) -> None:
    """KeyError, with how to register, for a name DatasetCatalog does not know."""
    known = DatasetCatalog.list()
    for name in names:
        if name in known:
            continue
        hint = (
            " (it looks like a file: DATASETS.TRAIN / TEST take dataset names)"
            if name.endswith(".json") or os.sep in name
            else ""
        )
        lvis_like = sorted(n for n in known if "lvis" in n or "ltdet" in n)
        raise KeyError(
            f"dataset {name!r} is not registered{hint}; {HOW_TO_REGISTER}. "
            f"Registered LVIS-format sets: {lvis_like}"
        )
