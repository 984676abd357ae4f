import logging
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ltdet.checkpoint import check_classifier_shape
from ltdet.config import add_ltdet_config
from ltdet.modeling import LongTailFastRCNNOutputLayers, LongTailROIHeads
from ltdet.modeling import losses as L

K = 5
COUNTS = [400.0, 100.0, 20.0, 5.0, 1.0]
NUM_IMAGES = 500


def make(loss_name, **kw):
    torch.manual_seed(0)
    kw.setdefault("class_counts", COUNTS)
    kw.setdefault("num_images", NUM_IMAGES)
    return LongTailFastRCNNOutputLayers(
        ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=K,
        test_score_thresh=0.0,
        test_topk_per_image=50,
        loss_name=loss_name,
        **kw,
    )


def proposals(n_per_image=(7, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in n_per_image:
        inst = Instances((64, 64))
        xy = torch.rand(n, 2, generator=g) * 30
        wh = torch.rand(n, 2, generator=g) * 20 + 5
        inst.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_boxes = Boxes(torch.cat([xy + 1, xy + wh - 1], 1))
        inst.gt_classes = torch.randint(0, K + 1, (n,), generator=g)
        out.append(inst)
    return out


def test_softmax_head_equals_stock():
    ours = make("softmax", class_counts=None, num_images=None)
    stock = FastRCNNOutputLayers(
        ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=K,
        test_score_thresh=0.0,
        test_topk_per_image=50,
    )
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(16, 16)
    props = proposals()
    p_ours, p_stock = ours(x), stock(x)
    with EventStorage():
        l_ours, l_stock = ours.losses(p_ours, props), stock.losses(p_stock, props)
    assert l_ours.keys() == l_stock.keys()
    for k in l_ours:
        torch.testing.assert_close(l_ours[k], l_stock[k], rtol=0, atol=0)
    i_ours, _ = ours.inference(p_ours, props)
    i_stock, _ = stock.inference(p_stock, props)
    for a, b in zip(i_ours, i_stock):
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=0)
        assert a.pred_classes.tolist() == b.pred_classes.tolist()


@pytest.mark.parametrize("name", ["sigmoid", "balanced_sigmoid", "eql", "federated"])
def test_sigmoid_family_head(name):
    head = make(name)
    assert head.cls_score.out_features == K and head.bbox_pred.out_features == 4 * K
    # BALMS code: bias -log((1-p)/p), p = 0.001
    torch.testing.assert_close(head.cls_score.bias, torch.full((K,), -math.log(999.0)))
    x = torch.randn(16, 16)
    props = proposals()
    scores, deltas = head(x)
    losses = head.losses((scores, deltas), props)
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_box_reg"] > 0
    # test-time scores: sigmoid of the raw logits, no prior
    probs = torch.cat(head.predict_probs((scores, deltas), props))
    torch.testing.assert_close(probs[:, :K], torch.sigmoid(scores))
    assert (probs[:, K] == 0).all()
    instances, _ = head.inference((scores, deltas), props)
    assert all(i.pred_classes.max() < K for i in instances if len(i))


def test_balanced_heads_use_dataset_prior():
    head = make("balanced_softmax")
    torch.testing.assert_close(
        head.log_prior.double(), torch.log(torch.tensor(COUNTS) / np.mean(COUNTS)).double()
    )
    head = make("balanced_sigmoid")
    p = torch.tensor(COUNTS, dtype=torch.float64) / NUM_IMAGES
    torch.testing.assert_close(
        head.log_prior_odds.double(), torch.log(p / (1 - p)), rtol=1e-6, atol=1e-6
    )
    # non-persistent: class statistics never enter checkpoints
    assert "log_prior_odds" not in head.state_dict()


@pytest.mark.parametrize("source", ["image_count", "instance_count"])
def test_class_stats_source_reaches_the_softmax_family_only(handmade, source):
    """handmade set: image counts [120, 12, 1], instance counts [240, 12, 3], 125 images of
    which 120 have annotations (the prior's denominator: apple is in all of them, so its p is
    capped at 120 / 121 and its log-odds is log 120)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet.data import clear_class_stats, register_lvis_format

    register_lvis_format("test_roi_heads_handmade", handmade["json"], handmade["root"])
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.ROI_HEADS.NUM_CLASSES",
            3,
            "DATASETS.TRAIN",
            ("test_roi_heads_handmade",),
            "LTDET.CLASS_STATS.SOURCE",
            source,
        ]
    )
    counts = torch.tensor(
        [240.0, 12.0, 3.0] if source == "instance_count" else [120.0, 12.0, 1.0],
        dtype=torch.float64,
    )
    images = torch.tensor([120.0, 12.0, 1.0], dtype=torch.float64) / 120
    capped = images.clamp(max=120 / 121)
    try:

        def head(name):
            cfg.LTDET.LOSS.NAME = name
            return LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=16))

        torch.testing.assert_close(
            head("balanced_softmax").log_prior.double(),
            torch.log(counts / counts.mean()).float().double(),
        )
        dbm = head("dbm_bs")
        torch.testing.assert_close(
            dbm.log_prior.double(), torch.log(counts / counts.mean()).float().double()
        )
        torch.testing.assert_close(
            dbm.class_margin.double(), (0.1 * counts.min() / counts).float().double()
        )  # Eq. 6, tau 1
        # the sigmoid family keeps image fractions whatever the source
        torch.testing.assert_close(
            head("balanced_sigmoid").log_prior_odds.double(),
            torch.log(capped / (1 - capped)).float().double(),
        )
        assert math.isclose(
            float(head("balanced_sigmoid").log_prior_odds[0]), math.log(120), rel_tol=1e-6
        )
        torch.testing.assert_close(head("eql").class_freq.double(), images.float().double())
    finally:
        DatasetCatalog.remove("test_roi_heads_handmade")
        MetadataCatalog.remove("test_roi_heads_handmade")
        clear_class_stats("test_roi_heads_handmade")


def test_box_regression_loss_for_every_class():
    # The original BALMS sigmoid heads skipped the last class; here a proposal of class K-1
    # gets a box-regression loss.
    head = make("balanced_sigmoid")
    props = proposals((4,))
    props[0].gt_classes = torch.full((4,), K - 1)
    scores, deltas = head(torch.randn(4, 16))
    assert head.losses((scores, deltas), props)["loss_box_reg"] > 0


def test_bad_input():
    with pytest.raises(ValueError, match="unknown LTDET.LOSS.NAME 'focal'.*balanced_softmax"):
        make("focal")
    with pytest.raises(ValueError, match="length num_classes=5"):
        make("balanced_softmax", class_counts=[1.0, 2.0])
    with pytest.raises(ValueError, match="needs per-class training counts"):
        make("balanced_sigmoid", class_counts=None)
    # the image total only where a statistic is an image fraction
    for name in ("balanced_sigmoid", "eql"):
        with pytest.raises(ValueError, match="and the number of training images"):
            make(name, num_images=None)
    for name in ("balanced_softmax", "federated", "dbm", "dbm_bs", "dbm_cb"):
        assert make(name, num_images=None).loss_name == name
    with pytest.raises(ValueError, match="zero count.*LTDET.CLASS_STATS.FLOOR"):
        make("balanced_softmax", class_counts=[3.0, 0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        make("balanced_softmax", class_counts=[3.0, -1.0, 1.0, 1.0, 1.0])
    head = make("balanced_softmax", class_counts=[3.0, 0.0, 1.0, 1.0, 1.0], count_floor=1.0)
    assert torch.isfinite(head.log_prior).all()
    # zero counts: refused where a statistic is undefined, accepted by EQL (frequency 0, rare)
    for name in ("balanced_sigmoid", "federated", "dbm_bs"):
        with pytest.raises(ValueError, match="zero count.*LTDET.CLASS_STATS.FLOOR"):
            make(name, class_counts=[3.0, 0.0, 1.0, 1.0, 1.0])
    eql = make("eql", class_counts=[3.0, 0.0, 1.0, 1.0, 1.0])
    assert eql.class_freq.tolist() == pytest.approx([3 / 500, 0.0, 1 / 500, 1 / 500, 1 / 500])
    with pytest.raises(ValueError, match="length num_classes=5"):
        make("eql", class_counts=[1.0, 2.0])
    with pytest.raises(ValueError, match="FLOOR must be >= 0"):
        make("balanced_softmax", count_floor=-1.0)
    # detectron2 after v0.6's own options (MODEL.ROI_BOX_HEAD) would be ignored: refused
    for key, name in (("use_sigmoid_ce", "sigmoid"), ("use_fed_loss", "federated")):
        with pytest.raises(
            ValueError, match=f"{key.upper()} is detectron2's own option.*LTDET.LOSS.NAME {name}"
        ):
            make("softmax", **{key: True})


def test_softmax_checkpoint_into_sigmoid_head_is_explained():
    softmax, sigmoid = make("softmax"), make("sigmoid")
    ckpt = {"roi_heads.box_predictor." + k: v for k, v in softmax.state_dict().items()}
    model = {"roi_heads.box_predictor." + k: v for k, v in sigmoid.state_dict().items()}
    with pytest.raises(ValueError, match="softmax-family model.*sigmoid-family"):
        check_classifier_shape(model, ckpt)
    with pytest.raises(ValueError, match="sigmoid-family model.*softmax-family"):
        check_classifier_shape(ckpt, model)
    check_classifier_shape(model, model)


def test_registered_and_built_from_config(tmp_path):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file("configs/Base-LTDet-RCNN-FPN.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.LTDET.LOSS.NAME = "sigmoid"
    model = build_model(cfg)
    assert isinstance(model.roi_heads, LongTailROIHeads)
    assert isinstance(model.roi_heads.box_predictor, LongTailFastRCNNOutputLayers)
    assert model.roi_heads.box_predictor.cls_score.out_features == K


@pytest.mark.parametrize("name", ["dbm", "dbm_bs", "dbm_cb"])
def test_dbm_heads(name):
    head = make(name)
    x = torch.randn(16, 16)
    props = proposals()
    scores, deltas = head(x)
    assert scores.shape == (16, K + 1) and scores.abs().max() <= 1 + 1e-6  # cosines
    with EventStorage():
        losses = head.losses((scores, deltas), props)
    assert torch.isfinite(losses["loss_cls"])
    probs = torch.cat(head.predict_probs((scores, deltas), props))
    torch.testing.assert_close(probs, torch.softmax(30.0 * scores, dim=1))  # no margin at test
    torch.testing.assert_close(
        head.class_margin.double(), 0.1 * (torch.tensor(COUNTS) / min(COUNTS)).pow(-1.0).double()
    )


def test_dbm_cb_weights_foreground_by_class():
    head = make("dbm_cb")
    gt = torch.tensor([0, 4, K, 4])
    scores = head.cls_score(torch.randn(4, 16))
    per = torch.stack(
        [L.dbm_loss(scores[i : i + 1], gt[i : i + 1], head.class_margin, 30.0) for i in range(4)]
    )
    w = torch.cat([head.cb_weight, torch.ones(1)])[gt]
    torch.testing.assert_close(head.classification_loss(scores, gt), (w * per).sum() / 4)
    assert head.cb_weight[4] > head.cb_weight[0]  # the rarest class weighs most


def test_dbm_bad_scale():
    with pytest.raises(ValueError, match="LTDET.DBM.SCALE"):
        make("dbm", dbm_scale=0.0)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize(
    "name, kw, warns, says",
    [
        # image frequencies 0.8 .. 0.002: the LVIS v0.5 lambda is below every one of them
        ("eql", dict(eql_lambda=1.76e-3), True, "suppresses the foreground negatives of 0 of 5"),
        ("eql", dict(eql_lambda=0.05), False, "of 3 of 5"),
        ("federated", dict(fed_num_classes=50), True, "plain sigmoid"),
        ("federated", dict(fed_num_classes=5), True, "plain sigmoid"),
        ("federated", dict(fed_num_classes=3), False, None),
    ],
)
def test_eql_and_federated_say_when_they_reduce_to_plain_sigmoid(name, kw, warns, says):
    log = logging.getLogger("ltdet.modeling.loss_registry")  # where the losses are declared
    handler, level = _Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        make(name, **kw)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    warnings = [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING]
    assert bool(warnings) == warns
    if says:
        assert any(says in r.getMessage() for r in handler.records)
