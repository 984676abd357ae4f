import glob
import os

import pytest
from detectron2.config import get_cfg

from ltdet.config import add_ltdet_config, merge_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def fresh():
    cfg = get_cfg()
    add_ltdet_config(cfg)
    return cfg


def test_paper_defaults():
    cfg = fresh()
    assert cfg.LTDET.LOSS.NAME == "softmax"
    assert cfg.LTDET.META.LR == 1e-3 and cfg.LTDET.META.INTERVAL == 1
    assert cfg.LTDET.DECOUPLED.TRAINABLE == ["roi_heads.box_predictor.cls_score.*"]


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_config_loads(path):
    cfg = merge_config(fresh(), path)
    assert cfg.MODEL.ROI_HEADS.NAME == "LongTailROIHeads"


def test_no_config_writes_over_the_weights_it_loads_and_recipes_keep_apart():
    """A run writes model_final.pth into OUTPUT_DIR: a config whose OUTPUT_DIR holds its own
    MODEL.WEIGHTS (a decoupled base inheriting the base model's folder) would overwrite the base
    model every other recipe starts from; two recipes sharing a folder would resume each other."""
    owner = {}
    for path in CONFIGS:
        cfg = merge_config(fresh(), path)
        out = os.path.normpath(cfg.OUTPUT_DIR)
        if cfg.MODEL.WEIGHTS.endswith("model_final.pth"):
            assert os.path.normpath(os.path.dirname(cfg.MODEL.WEIGHTS)) != out, path
        if not os.path.basename(path).startswith("Base-"):
            assert out not in owner, (path, owner.get(out))
            owner[out] = path


def test_lvis_base_recipe_matches_the_paper():
    cfg = merge_config(
        fresh(), os.path.join(REPO, "configs/LVISv0.5/base_softmax_rfs_R50_FPN.yaml")
    )
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.BASE_LR) == (
        90000,
        (60000, 80000),
        0.01,
    )
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300 and cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 1e-4
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1230


def test_unknown_key_is_named():
    with pytest.raises(KeyError, match="unknown config key.*LTDET.LOSS.NAEM"):
        merge_config(fresh(), opts=["LTDET.LOSS.NAEM", "sigmoid"])


@pytest.mark.parametrize("name", ["balms", "balms_sigmoid"])
def test_meta_lr_of_the_synthetic_recipes_keeps_the_papers_range(name):
    """The paper's meta Adam lr 1e-3 over its 22k decoupled iterations lets a class-weight logit
    move up to ~22; the short synthetic recipe scales the lr so that product stays, while the LVIS
    recipes keep the paper's values."""
    lvis = merge_config(fresh(), os.path.join(REPO, f"configs/LVISv0.5/decoupled/{name}.yaml"))
    assert lvis.LTDET.META.ENABLED and lvis.LTDET.META.LR == 1e-3
    assert lvis.SOLVER.MAX_ITER == 22000
    syn = merge_config(fresh(), os.path.join(REPO, f"configs/synthetic/decoupled/{name}.yaml"))
    assert syn.LTDET.META.ENABLED
    budget = lvis.LTDET.META.LR * lvis.SOLVER.MAX_ITER
    assert abs(syn.LTDET.META.LR * syn.SOLVER.MAX_ITER - budget) / budget < 0.05
