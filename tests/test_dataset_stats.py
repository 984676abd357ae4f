"""tools/dataset_stats.py: the per-class long-tail report of a dataset."""

import csv
import math
import os

import numpy as np

from .conftest import load_script

JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lvis_v0.5_val_100.json")


def test_report_of_the_real_lvis_json(tmp_path, capsys):
    """Counts per class from the json, groups at the given thresholds, and repeat factors equal
    to detectron2's RepeatFactorTrainingSampler image factors on images with one class."""
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    from ltdet.data import load_lvis_format_json

    tool = load_script("tools/dataset_stats.py", "ltdet_dataset_stats")
    rows = tool.main(
        [
            JSON,
            "--output",
            str(tmp_path),
            "--rare-max",
            "1",
            "--common-max",
            "5",
            "--threshold",
            "0.05",
        ]
    )
    dicts = [d for d in load_lvis_format_json(JSON, "", check_images=False) if d["annotations"]]
    images = np.zeros(1230, int)
    for d in dicts:
        for c in {a["category_id"] for a in d["annotations"]}:
            images[c] += 1
    assert [r[2] for r in rows] == images.tolist()
    assert [r[4] for r in rows] == ["r" if n <= 1 else "c" if n <= 5 else "f" for n in images]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.05)
    single = [
        (d, f)
        for d, f in zip(dicts, factors.tolist())
        if len({a["category_id"] for a in d["annotations"]}) == 1
    ]
    assert len(single) >= 5
    for d, f in single:
        assert math.isclose(rows[d["annotations"][0]["category_id"]][5], f, rel_tol=1e-6)
    assert all(math.isnan(r[5]) for r in rows if r[2] == 0)
    out = capsys.readouterr().out
    assert "| rare |" in out and f"1230 classes, {len(dicts)} annotated images" in out
    with open(tmp_path / "lvis_v0.5_val_100_classes.csv") as f:
        assert len(list(csv.reader(f))) == 1231
    png = tmp_path / "lvis_v0.5_val_100_long_tail.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_registered_name(tmp_path):
    """A registered dataset name works as well as a json path."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import class_stats, register_lvis_format

    tool = load_script("tools/dataset_stats.py", "ltdet_dataset_stats")
    register_lvis_format("stats_tool_real", JSON, str(tmp_path))
    try:
        rows = tool.main(["stats_tool_real", "--output", str(tmp_path)])
        assert [r[3] for r in rows] == class_stats("stats_tool_real").instance_counts.tolist()
    finally:
        DatasetCatalog.remove("stats_tool_real")
        MetadataCatalog.remove("stats_tool_real")
    assert (tmp_path / "stats_tool_real_long_tail.png").is_file()
