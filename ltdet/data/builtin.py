"""Datasets ltdet registers on import, rooted at $DETECTRON2_DATASETS (default ./datasets)."""

import os

from detectron2.data import DatasetCatalog

from .lvis_format import register_lvis_format
from .synthetic import DATASET_DIRS

# name: (json relative to the root, image root relative to the root)
_LVIS_SPLITS = {
    "lvis_v0.5_train": ("lvis/lvis_v0.5_train.json", "coco/train2017/"),
    "lvis_v0.5_val": ("lvis/lvis_v0.5_val.json", "coco/val2017/"),
    "lvis_v1_train": ("lvis/lvis_v1_train.json", "coco/"),
    "lvis_v1_val": ("lvis/lvis_v1_val.json", "coco/"),
}
# The embedded sets written by tools/make_synthetic.py (ltdet.data.synthetic): the demo set
# (preset default) and the large-vocabulary one (preset lv). <name>_val scores with LVIS's
# negative-label protocol, <name>_val_hardneg (same images and annotations) with every
# confusable sibling of a present class as a negative (docs/SYNTHETIC_PROTOCOLS.md).
SYNTHETIC_DIR = DATASET_DIRS["default"]
SYNTHETIC_LV_DIR = DATASET_DIRS["lv"]
_SYNTHETIC_SPLITS = {
    f"{folder}_{split}": (f"{folder}/lvis_synthetic_{split}.json", folder)
    for folder in (SYNTHETIC_DIR, SYNTHETIC_LV_DIR)
    for split in ("train", "val", "val_hardneg")
}


def datasets_root() -> str:
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def register_all(root: str = None) -> None:
    root = root or datasets_root()
    # Official LVIS splits replace detectron2's registrations only when their json is present,
    # so that metadata and statistics come from the json (detectron2 keeps its own otherwise).
    for name, (json_file, image_root) in _LVIS_SPLITS.items():
        if os.path.isfile(os.path.join(root, json_file)):
            register_lvis_format(
                name, os.path.join(root, json_file), os.path.join(root, image_root)
            )
    for name, (json_file, image_root) in _SYNTHETIC_SPLITS.items():
        register_lvis_format(name, os.path.join(root, json_file), os.path.join(root, image_root))


if "ltdet_synthetic_train" not in DatasetCatalog.list():
    register_all()
