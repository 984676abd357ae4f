import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

# Without a GPU, ltdet's Triton kernels (fused_kernels.py) run in Triton's interpreter, on CPU
# tensors, for tests/test_fused_kernels.py. Must be set before the module is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath, name):
    """Import a script of the repository (benchmarks/, tools/) by path, as module ``name``. Its
    folder goes on sys.path first, for scripts that import their siblings."""
    path = os.path.join(REPO, relpath)
    if os.path.dirname(path) not in sys.path:
        sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def write_lvis_json(path, images, annotations, categories):
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


@pytest.fixture
def handmade(tmp_path):
    """A handmade LVIS-format set with non-contiguous category ids 3, 7, 9:
    - cat 3 "apple": in 120 images, 2 instances each      -> image 120, instances 240, 'f'
    - cat 7 "pear":  in images 0..11 (12 images), 1 each  -> image 12,  instances 12,  'c'
    - cat 9 "quince": in image 0 only, 3 instances        -> image 1,   instances 3,   'r'
    plus 5 images with no annotation (125 images in all)."""
    images, anns = [], []
    for i in range(125):
        images.append(
            {
                "id": i + 1,
                "file_name": f"img/{i:03d}.png",
                "height": 32,
                "width": 32,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )

    def add(img, cat):
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": img + 1,
                "category_id": cat,
                "bbox": [2.0, 2.0, 10.0, 10.0],
                "area": 100.0,
                "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
            }
        )

    for i in range(120):
        add(i, 3), add(i, 3)
    for i in range(12):
        add(i, 7)
    for _ in range(3):
        add(0, 9)
    cats = [
        {
            "id": c,
            "name": n,
            "frequency": "r",
            "image_count": 0,
            "instance_count": 0,
            "synonyms": [n],
            "synset": n,
            "def": n,
        }
        for c, n in ((3, "apple"), (7, "pear"), (9, "quince"))
    ]
    os.makedirs(tmp_path / "img")
    for i in range(125):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img" / f"{i:03d}.png")
    path = tmp_path / "handmade.json"
    write_lvis_json(path, images, anns, cats)
    return {"json": str(path), "root": str(tmp_path), "images": images, "anns": anns, "cats": cats}
