"""Every compatibility fix ltdet needs, in one place.

ltdet runs on whatever detectron2 the user has. Two kinds of fixes live here:

* ``SDIST_FIXES``: source edits applied by ``tools/install.sh`` to the PyPI sdist
  ``pb1-detectron2==0.6`` (detectron2 v0.6, 2021), the only detectron2 carrier on PyPI, when no
  detectron2 is importable and the official source is unreachable. Run as
  ``python ltdet/compat.py patch-sdist DIR`` (this file imports nothing from ltdet or detectron2,
  so it works before either is installed).
* ``set_data_loader_iter()``: the one detectron2 internal whose form changed after v0.6 and that
  ltdet sets (the training step's data iterator, replaced on resume).
* ``apply_runtime_fixes()``: aliases for names that newer numpy / Pillow removed but that old code
  still uses at run time: lvis-api 0.5.3 (the newest release) and a user's own detectron2 0.6
  build. Applied once, when ``ltdet`` is imported; each alias is only added when missing.

Each fix carries its reason; ``tests/test_compat.py`` checks them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, NamedTuple


class SourceFix(NamedTuple):
    files: str  # glob relative to the sdist root
    pattern: str  # regex (MULTILINE)
    replacement: str
    reason: str


_LAZY_C = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # ltdet compat: built without the C++ ops\n"
    "    _C = None\n"
)

SDIST_FIXES: List[SourceFix] = [
    SourceFix(
        "setup.py",
        r"ext_modules=get_extensions\(\),",
        "ext_modules=[],",
        "the sdist ships no detectron2/layers/csrc sources, so the C++ extension cannot build; "
        "Mask R-CNN with FPN does not need it (ROIAlign and NMS come from torchvision)",
    ),
    SourceFix(
        "setup.py",
        r'package_data=\{"detectron2.model_zoo": get_model_zoo_configs\(\)\},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
        "setup.py only packages the model-zoo configs when a top-level configs/ exists, which the "
        "sdist lacks; without this model_zoo.get_config_file() fails",
    ),
    SourceFix(
        "detectron2/**/*.py",
        r"^from detectron2 import _C\n",
        _LAZY_C,
        "layers/deform_conv.py and others import the compiled _C at import time, which breaks "
        "`import detectron2.layers`; the ops that need it (rotated boxes, deformable conv, fast "
        "C++ COCOeval) are not used by Mask R-CNN FPN",
    ),
    SourceFix(
        "detectron2/model_zoo/model_zoo.py",
        r"^import pkg_resources\n",
        "",
        "setuptools >= 81 removed pkg_resources, which model_zoo imports",
    ),
    SourceFix(
        "detectron2/model_zoo/model_zoo.py",
        r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo",\s*',
        "os.path.join(os.path.dirname(__file__), ",
        "same: resolve the packaged config path without pkg_resources",
    ),
    SourceFix(
        "detectron2/**/*.py",
        r"\bImage\.LINEAR\b",
        "Image.BILINEAR",
        "Pillow >= 10 removed Image.LINEAR (an alias of BILINEAR); `import detectron2.data` fails",
    ),
    SourceFix(
        "detectron2/**/*.py",
        r"\bnp\.(int|float|bool)\b(?!\w)",
        r"\1",
        "NumPy >= 1.24 removed np.int/np.float/np.bool (aliases of the builtins); data/build.py "
        "uses np.int at every training start",
    ),
]


def patch_detectron2_sdist(root: str | Path) -> List[str]:
    """Apply ``SDIST_FIXES`` to an unpacked pb1-detectron2 0.6 tree; returns the files changed.

    Idempotent (a marker file records a patched tree). Fails loudly if a fix matches nothing,
    which means the tree is not the sdist these fixes were written for.
    """
    root = Path(root)
    if not (root / "setup.py").is_file() or not (root / "detectron2").is_dir():
        raise FileNotFoundError(f"{root} is not an unpacked detectron2 source tree (no setup.py)")
    marker = root / ".ltdet_patched"
    if marker.exists():
        return []
    changed = set()
    for fix in SDIST_FIXES:
        regex = re.compile(fix.pattern, re.MULTILINE)
        hits = 0
        for path in sorted(root.glob(fix.files)):
            text = path.read_text()
            new, n = regex.subn(fix.replacement, text)
            if n:
                hits += n
                path.write_text(new)
                changed.add(str(path.relative_to(root)))
        if not hits:
            raise RuntimeError(
                f"compat fix found nothing to patch in {root}/{fix.files}: {fix.reason}"
            )
    marker.write_text("patched by ltdet/compat.py\n")
    return sorted(changed)


def apply_runtime_fixes() -> None:
    """Restore removed aliases that old dependencies still use at run time."""
    import numpy as np

    # lvis-api 0.5.3 (eval.py, accumulate) uses np.float; a detectron2 0.6 source build uses
    # np.int / np.bool (data/build.py, structures/masks.py). NumPy >= 1.24 removed these aliases.
    for name, value in (("float", float), ("int", int), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, value)

    # detectron2 0.6 data/transforms/transform.py uses Image.LINEAR, removed in Pillow 10.
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def set_data_loader_iter(trainer, iterator) -> None:
    """Make a detectron2 ``SimpleTrainer`` draw its next batches from ``iterator``.

    detectron2 v0.6 keeps the iterator in the attribute ``_data_loader_iter``; later detectron2
    (the official source that tools/install.sh builds when GitHub answers) turned that name into
    a read-only property that creates ``_data_loader_iter_obj`` lazily, so assigning to it raises
    AttributeError."""
    if isinstance(getattr(type(trainer), "_data_loader_iter", None), property):
        trainer._data_loader_iter_obj = iterator
    else:
        trainer._data_loader_iter = iterator


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "patch-sdist":
        sys.exit("usage: python ltdet/compat.py patch-sdist DETECTRON2_SOURCE_DIR")
    for f in patch_detectron2_sdist(sys.argv[2]):
        print("patched", f)
