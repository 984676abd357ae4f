import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ltdet.data import (
    class_stats,
    clear_class_stats,
    frequency_group,
    load_lvis_format_json,
    register_lvis_format,
)

from .conftest import write_lvis_json


@pytest.fixture
def registered(handmade):
    name = "test_handmade_train"
    clear_class_stats(name)
    register_lvis_format(name, handmade["json"], handmade["root"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    clear_class_stats(name)


def test_frequency_rule():
    assert [frequency_group(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]


def test_registration_counts_and_groups(registered):
    stats = class_stats(registered)
    assert stats.names == ["apple", "pear", "quince"]
    assert stats.image_counts.tolist() == [120, 12, 1]
    assert stats.instance_counts.tolist() == [240, 12, 3]
    assert stats.num_images == 120  # the 5 images without annotations do not count
    assert stats.frequency == ["f", "c", "r"]
    assert stats.counts("instance_count").tolist() == [240, 12, 3]
    with pytest.raises(ValueError, match="image_count"):
        stats.counts("boxes")
    meta = MetadataCatalog.get(registered)
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 9: 2}
    assert meta.evaluator_type == "lvis"


def test_dataset_dicts_contiguous_ids_and_paths(registered, handmade):
    dicts = DatasetCatalog.get(registered)
    assert len(dicts) == 125
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 0, 1, 2, 2, 2]
    assert dicts[0]["file_name"].endswith("img/000.png")
    assert (dicts[0]["image_id"], dicts[0]["height"], dicts[0]["width"]) == (1, 32, 32)
    first = dicts[0]["annotations"][0]  # LVIS boxes are [x, y, w, h]
    assert first["bbox"] == [2.0, 2.0, 10.0, 10.0] and first["bbox_mode"] == BoxMode.XYWH_ABS
    assert first["segmentation"] == [[2, 2, 12, 2, 12, 12, 2, 12]]
    assert dicts[124]["annotations"] == []


def test_registering_a_name_again_replaces_its_statistics(registered, handmade, tmp_path):
    assert class_stats(registered).image_counts.tolist() == [120, 12, 1]
    assert class_stats([registered, registered]).image_counts.tolist() == [240, 24, 2]
    # the same name, now pointing at a json where pear is gone
    data = json.loads(open(handmade["json"]).read())
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 7]
    other = tmp_path / "no_pear.json"
    other.write_text(json.dumps(data))
    register_lvis_format(registered, str(other), handmade["root"])
    assert class_stats(registered).image_counts.tolist() == [120, 0, 1]
    assert class_stats([registered, registered]).image_counts.tolist() == [240, 0, 2]


def test_lvis_image_paths(tmp_path):
    from ltdet.data.lvis_format import _image_path

    v1 = {"coco_url": "http://images.cocodataset.org/train2017/000000391895.jpg"}
    assert _image_path(v1, "/d/coco/") == "/d/coco/train2017/000000391895.jpg"
    v05 = {"file_name": "COCO_val2014_000000001268.jpg"}
    assert _image_path(v05, "/d/coco/train2017") == "/d/coco/train2017/000000001268.jpg"


def test_unregistered_name():
    with pytest.raises(KeyError, match="not registered"):
        class_stats("no_such_dataset")


def test_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lvis_format_json(str(tmp_path / "nope.json"), str(tmp_path))


def test_broken_json(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"images": [')
    with pytest.raises(ValueError, match="not valid json"):
        load_lvis_format_json(str(p), str(tmp_path))


def test_not_lvis_form(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="categories"):
        load_lvis_format_json(str(p), str(tmp_path))


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("category_id", 42, "annotation 9999 has category_id 42, which is not in 'categories'"),
        ("image_id", 777, "annotation 9999 points at image_id 777.*fix the json"),
    ],
)
def test_annotation_pointing_nowhere(handmade, tmp_path, field, value, says):
    anns = handmade["anns"] + [dict(handmade["anns"][0], id=9999, **{field: value})]
    p = tmp_path / "bad.json"
    write_lvis_json(p, handmade["images"], anns, handmade["cats"])
    with pytest.raises(ValueError, match=says):
        load_lvis_format_json(str(p), handmade["root"])


def test_missing_image(handmade, tmp_path):
    (tmp_path / "img" / "007.png").unlink()
    with pytest.raises(FileNotFoundError, match="missing under image_root"):
        load_lvis_format_json(handmade["json"], handmade["root"])


def test_statistics_over_several_training_sets(registered, handmade, tmp_path):
    twin = "test_handmade_twin"
    register_lvis_format(twin, handmade["json"], handmade["root"])
    other = tmp_path / "other.json"
    write_lvis_json(
        other,
        handmade["images"],
        [a for a in handmade["anns"] if a["category_id"] != 9],
        [c for c in handmade["cats"] if c["id"] != 9],
    )
    register_lvis_format("test_handmade_other", str(other), handmade["root"])
    try:
        both = class_stats((registered, twin))
        assert both.image_counts.tolist() == [240, 24, 2]
        assert both.instance_counts.tolist() == [480, 24, 6]
        assert both.num_images == 240 and both.frequency == ["f", "c", "r"]
        assert class_stats((registered,)) is class_stats(registered)
        with pytest.raises(ValueError, match="different category lists"):
            class_stats((registered, "test_handmade_other"))
        with pytest.raises(ValueError, match="DATASETS.TRAIN is empty"):
            class_stats(())
    finally:
        for name in (twin, "test_handmade_other"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        clear_class_stats()


def test_statistics_need_annotations_only(registered, handmade, tmp_path):
    """Class statistics (what a balanced head needs to evaluate a downloaded model) come from the
    json alone; loading the dataset itself still reports the missing images, also after the
    statistics parsed it inside ``shared_loads``."""
    from ltdet.data.lvis_format import shared_loads

    (tmp_path / "img" / "007.png").unlink()
    with shared_loads():
        assert class_stats(registered).image_counts.tolist() == [120, 12, 1]
        with pytest.raises(FileNotFoundError, match="1 of 125 images .* missing under image_root"):
            DatasetCatalog.get(registered)
    with pytest.raises(FileNotFoundError, match="missing under image_root"):
        DatasetCatalog.get(registered)


def test_official_lvis_names_use_the_json_when_present(handmade, tmp_path):
    from ltdet.data.builtin import register_all

    root = tmp_path / "root"
    (root / "lvis").mkdir(parents=True)
    (root / "lvis" / "lvis_v1_val.json").write_text(open(handmade["json"]).read())
    (root / "coco").mkdir()
    (root / "coco" / "img").symlink_to(tmp_path / "img")
    try:
        register_all(str(root))
        meta = MetadataCatalog.get("lvis_v1_val")
        assert meta.json_file == str(root / "lvis" / "lvis_v1_val.json")
        assert meta.image_root == os.path.join(str(root), "coco/")
        assert class_stats("lvis_v1_val").names == ["apple", "pear", "quince"]
        # lvis_v1_train has no json under root: detectron2's own registration is kept
        assert str(root) not in MetadataCatalog.get("lvis_v1_train").json_file
    finally:
        clear_class_stats("lvis_v1_val")
        DatasetCatalog.remove("lvis_v1_val")
        MetadataCatalog.remove("lvis_v1_val")
        from detectron2.data.datasets.lvis import get_lvis_instances_meta, register_lvis_instances

        register_lvis_instances(
            "lvis_v1_val",
            get_lvis_instances_meta("lvis_v1_val"),
            "datasets/lvis/lvis_v1_val.json",
            "datasets/coco/",
        )
        register_all()


def test_shared_loads_parse_once(registered, monkeypatch):
    from detectron2.data import DatasetCatalog

    import ltdet.data.lvis_format as lf

    parsed = []
    real = lf._read_json
    monkeypatch.setattr(lf, "_read_json", lambda f: parsed.append(f) or real(f))
    a = DatasetCatalog.get(registered)
    b = DatasetCatalog.get(registered)
    assert len(parsed) == 2 and a[0] is not b[0]  # outside the block: a fresh parse each time
    with lf.shared_loads():
        c = DatasetCatalog.get(registered)
        with lf.shared_loads():  # nested: the outer cache
            d = DatasetCatalog.get(registered)
        e = DatasetCatalog.get(registered)
        assert len(parsed) == 3
        assert c is not d and c is not e and c[0] is d[0] is e[0]  # new lists, same dicts
        assert c == a
    DatasetCatalog.get(registered)  # the cache was dropped on exit
    assert len(parsed) == 4 and lf._SHARED is None
