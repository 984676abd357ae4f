import subprocess
import sys

import numpy as np
import pytest

from ltdet import compat


def test_runtime_aliases_for_lvis_and_detectron2():
    compat.apply_runtime_fixes()
    assert np.float is float and np.int is int and hasattr(np, "bool")  # numpy 2 has np.bool again
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR


def test_installed_detectron2_has_what_ltdet_needs():
    # the checks tools/install.sh relies on: layers import, LVIS configs via model_zoo,
    # LVISEvaluator importable (numpy/Pillow fixes in effect)
    import detectron2.layers  # noqa: F401
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data.transforms import ExtentTransform  # noqa: F401  (Image.LINEAR)
    from detectron2.evaluation import LVISEvaluator  # noqa: F401

    cfg = get_cfg()
    cfg.merge_from_file(
        model_zoo.get_config_file("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    )
    assert cfg.DATASETS.TRAIN == ("lvis_v1_train",)


def _fake_sdist(root):
    """The lines of pb1-detectron2 0.6 that SDIST_FIXES target."""
    (root / "detectron2" / "layers").mkdir(parents=True)
    (root / "detectron2" / "model_zoo").mkdir(parents=True)
    (root / "detectron2" / "data").mkdir(parents=True)
    (root / "setup.py").write_text(
        'setup(\n    package_data={"detectron2.model_zoo": get_model_zoo_configs()},\n'
        "    ext_modules=get_extensions(),\n)\n"
    )
    (root / "detectron2" / "layers" / "deform_conv.py").write_text(
        "import torch\nfrom detectron2 import _C\n"
    )
    (root / "detectron2" / "model_zoo" / "model_zoo.py").write_text(
        "import os\nimport pkg_resources\ncfg_file = pkg_resources.resource_filename(\n"
        '    "detectron2.model_zoo", os.path.join("configs", config_path)\n)\n'
    )
    (root / "detectron2" / "data" / "build.py").write_text(
        "h = np.zeros((3,), dtype=np.int)\nx = np.int64(1)\ninterp=Image.LINEAR\n"
    )


def test_patch_sdist(tmp_path):
    _fake_sdist(tmp_path)
    changed = compat.patch_detectron2_sdist(tmp_path)
    assert set(changed) == {
        "setup.py",
        "detectron2/layers/deform_conv.py",
        "detectron2/model_zoo/model_zoo.py",
        "detectron2/data/build.py",
    }
    setup = (tmp_path / "setup.py").read_text()
    assert "ext_modules=[]" in setup and '"configs/**/*.yaml"' in setup
    assert "except ImportError" in (tmp_path / "detectron2/layers/deform_conv.py").read_text()
    mz = (tmp_path / "detectron2/model_zoo/model_zoo.py").read_text()
    assert "pkg_resources" not in mz and "os.path.dirname(__file__)" in mz
    build = (tmp_path / "detectron2/data/build.py").read_text()
    assert "dtype=int)" in build and "np.int64(1)" in build and "Image.BILINEAR" in build
    compile(mz, "model_zoo.py", "exec")
    assert compat.patch_detectron2_sdist(tmp_path) == []  # idempotent


def test_patch_sdist_refuses_other_trees(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an unpacked detectron2"):
        compat.patch_detectron2_sdist(tmp_path)
    _fake_sdist(tmp_path)
    (tmp_path / "setup.py").write_text("setup()\n")
    with pytest.raises(RuntimeError, match="found nothing to patch"):
        compat.patch_detectron2_sdist(tmp_path)


def test_cli_entry_point(tmp_path):
    out = subprocess.run([sys.executable, compat.__file__], capture_output=True, text=True)
    assert out.returncode != 0 and "usage" in out.stderr
