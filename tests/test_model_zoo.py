"""Fine-tuning from detectron2's model zoo: the LVIS recipes have the zoo configs' architecture,
a checkpoint in the zoo's .pkl format loads completely into a decoupled recipe, only the
classifier trains, and sigmoid-family recipes can start from it (LTDET.LOSS.SIGMOID_FROM_SOFTMAX).
No download: the checkpoint is written here from a model built with the zoo's own config."""

import os
import pickle

import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ltdet.checkpoint import LongTailCheckpointer
from ltdet.config import add_ltdet_config, merge_config
from ltdet.modeling.classifier_init import sigmoid_from_softmax

from .test_end_to_end import tiny_root, train  # noqa: F401 (fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = "{}-InstanceSegmentation/mask_rcnn_{}.yaml"
# What docs/MODEL_ZOO.md tells users to add to a recipe for the zoo's deeper backbones.
BACKBONE_OPTS = {
    "R_50_FPN_1x": [],
    "R_101_FPN_1x": ["MODEL.RESNETS.DEPTH", "101"],
    "X_101_32x8d_FPN_1x": [
        "MODEL.RESNETS.DEPTH",
        "101",
        "MODEL.RESNETS.NUM_GROUPS",
        "32",
        "MODEL.RESNETS.WIDTH_PER_GROUP",
        "8",
        "MODEL.RESNETS.STRIDE_IN_1X1",
        "False",
        "MODEL.PIXEL_STD",
        "[57.375,57.120,58.395]",
    ],
}
# ltdet's ROI heads only swap the box predictor; its parameters keep detectron2's names.
NOT_ARCHITECTURE = {"MODEL.WEIGHTS", "MODEL.DEVICE", "MODEL.ROI_HEADS.NAME"}


def _cfg(config_file, *opts, zoo=False):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    if zoo:
        cfg.merge_from_file(model_zoo.get_config_file(config_file))
        cfg.merge_from_list(list(opts))
        return cfg
    return merge_config(cfg, os.path.join(REPO, config_file), [str(o) for o in opts])


def _flat(node, prefix):
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k: v})
    return out


@pytest.mark.parametrize("version", ["LVISv0.5", "LVISv1"])
@pytest.mark.parametrize("backbone", sorted(BACKBONE_OPTS))
@pytest.mark.parametrize("recipe", ["softmax", "balms", "sigmoid"])
def test_recipes_have_the_zoo_architecture(version, backbone, recipe):
    """Every MODEL key (backbone, FPN, anchors, RPN, box and mask heads, pixel normalisation,
    class count), the input sizes and the per-image detection cap of a decoupled recipe, with the
    documented backbone options, equal the zoo config's."""
    zoo = _cfg(ZOO.format(version, backbone), zoo=True)
    ours = _cfg(f"configs/{version}/decoupled/{recipe}.yaml", *BACKBONE_OPTS[backbone])
    theirs, mine = _flat(zoo.MODEL, "MODEL."), _flat(ours.MODEL, "MODEL.")
    theirs.update(_flat(zoo.INPUT, "INPUT."))
    mine.update(_flat(ours.INPUT, "INPUT."))
    diff = {
        k: (theirs[k], mine[k])
        for k in theirs
        if k not in NOT_ARCHITECTURE and theirs[k] != mine[k]
    }
    assert not diff
    assert ours.TEST.DETECTIONS_PER_IMAGE == zoo.TEST.DETECTIONS_PER_IMAGE == 300
    with open(os.path.join(REPO, "docs", "MODEL_ZOO.md")) as f:
        docs = f.read()
    opts = BACKBONE_OPTS[backbone]
    for key, value in zip(opts[::2], opts[1::2]):
        assert f"{key} {value}" in docs or f'{key} "{value}"' in docs


def _write_zoo_pkl(path, num_classes, heuristics):
    """A model built from the zoo's LVIS v1 R50 config (stock StandardROIHeads, random init),
    saved as the zoo's .pkl files are: a pickled dict of numpy arrays with "__author__"."""
    cfg = _cfg(
        ZOO.format("LVISv1", "R_50_FPN_1x"),
        "MODEL.WEIGHTS",
        "",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        num_classes,
        zoo=True,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # a trained-looking classifier: distinct per-class rows
        model.roi_heads.box_predictor.cls_score.bias.normal_()
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    blob = {"model": state, "__author__": "Detectron2 Model Zoo"}
    if heuristics:
        blob["matching_heuristics"] = True
    with open(path, "wb") as f:
        pickle.dump(blob, f)
    return state


def _finetune_cfg(recipe, out, weights, *opts):
    return _cfg(
        recipe,
        "MODEL.WEIGHTS",
        weights,
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        8,
        "DATASETS.TRAIN",
        '("ltdet_synthetic_train",)',
        "DATASETS.TEST",
        "()",
        "SOLVER.IMS_PER_BATCH",
        2,
        "SOLVER.MAX_ITER",
        2,
        "SOLVER.STEPS",
        "(1,)",
        "SOLVER.WARMUP_ITERS",
        0,
        "DATALOADER.NUM_WORKERS",
        0,
        "INPUT.MIN_SIZE_TRAIN",
        "(96,)",
        "INPUT.MAX_SIZE_TRAIN",
        96,
        "INPUT.MIN_SIZE_TEST",
        96,
        "INPUT.MAX_SIZE_TEST",
        96,
        "OUTPUT_DIR",
        str(out),
        "SEED",
        1,
        *opts,
    )


@pytest.mark.parametrize(
    "recipe,heuristics,extra",
    [
        ("configs/LVISv1/decoupled/softmax.yaml", False, ()),
        ("configs/LVISv0.5/decoupled/balanced_softmax.yaml", True, ()),
        (
            "configs/LVISv1/decoupled/balanced_sigmoid.yaml",
            False,
            ("LTDET.LOSS.SIGMOID_FROM_SOFTMAX", True),
        ),
    ],
)
def test_decoupled_recipe_fine_tunes_a_zoo_pkl(tiny_root, tmp_path, recipe, heuristics, extra):  # noqa: F811
    """The recipe loads every key of the .pkl (the decoupled regime requires a complete
    checkpoint), trains two steps on the synthetic set at 96 px, and afterwards every tensor but
    the box classifier equals the checkpoint's; the classifier moved."""
    pkl = tmp_path / "model_final_zoo.pkl"
    state = _write_zoo_pkl(pkl, 8, heuristics)
    trainer, _ = train(_finetune_cfg(recipe, tmp_path / "out", str(pkl), *extra))
    after = {k: v.detach().cpu().numpy() for k, v in trainer.model.state_dict().items()}
    assert set(after) == set(state)
    changed = sorted(k for k in state if not np.array_equal(state[k], after[k]))
    assert changed == [
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.cls_score.weight",
    ]
    if extra:  # K sigmoid logits from K+1 softmax ones
        assert after["roi_heads.box_predictor.cls_score.weight"].shape[0] == 8


def test_sigmoid_head_from_a_softmax_checkpoint(tmp_path):
    """Refused with the fix named unless LTDET.LOSS.SIGMOID_FROM_SOFTMAX; with it, the K sigmoid
    logits are z_k - z_bg of the softmax logits z, so sigmoid(logit_k) = p_k / (p_k + p_bg) for
    the softmax probabilities p, on any features (checked on random ones)."""
    pkl = tmp_path / "zoo.pkl"
    state = _write_zoo_pkl(pkl, 8, False)
    cfg = _finetune_cfg("configs/LVISv1/decoupled/sigmoid.yaml", tmp_path, str(pkl))
    model = build_model(cfg)
    with pytest.raises(ValueError, match="SIGMOID_FROM_SOFTMAX True"):
        LongTailCheckpointer(model, require_complete=True).load(str(pkl))
    LongTailCheckpointer(model, require_complete=True, sigmoid_from_softmax=True).load(str(pkl))
    w = torch.as_tensor(state["roi_heads.box_predictor.cls_score.weight"])
    b = torch.as_tensor(state["roi_heads.box_predictor.cls_score.bias"])
    x = torch.randn(5, w.shape[1], dtype=torch.float64)
    p = torch.softmax(x @ w.double().T + b.double(), dim=1)
    layer = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        got = torch.sigmoid(x @ layer.weight.double().T + layer.bias.double())
    # float32 rounding of w_k - w_bg in the layer: 1e-6
    torch.testing.assert_close(got, p[:, :-1] / (p[:, :-1] + p[:, -1:]), rtol=1e-6, atol=1e-9)
    w2, b2 = sigmoid_from_softmax(w, b)
    assert torch.equal(layer.weight.detach(), w2) and torch.equal(layer.bias.detach(), b2)
    assert sigmoid_from_softmax(w)[1] is None
