"""Box predictor whose classifier is trained with a long-tail loss (ltdet.modeling.losses).

Box regression (class-specific for every one of the K classes, with its loss) and inference are
detectron2's; only the class logits, their loss and the test-time scores change.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from torch import nn
from torch.nn import functional as F

from .class_counts import count_floor as _count_floor
from . import losses as L

logger = logging.getLogger(__name__)

# Class statistics each loss needs (computed once here, not per step).
_NEEDS_COUNTS = {"balanced_softmax", "balanced_sigmoid", "eql", "federated", "dbm", "dbm_bs", "dbm_cb"}


def _report_eql_threshold(class_freq: torch.Tensor, lambda_: float) -> None:
    """Log how many classes EQL's threshold suppresses; warn when none (EQL = plain sigmoid)."""
    n = int((class_freq < lambda_).sum())
    msg = (f"EQL: lambda={lambda_:g} suppresses the foreground negatives of {n} of "
           f"{class_freq.numel()} classes (image frequency < lambda)")
    if n == 0:
        logger.warning(
            msg + ", so the loss is plain sigmoid. lambda is a fraction of the training images "
            "(1.76e-3 is ~101 of LVIS v0.5's 57,263); set LTDET.LOSS.EQL_LAMBDA for this dataset."
        )
    else:
        logger.info(msg)


class CosineClassifier(nn.Module):
    """Cosine similarities between L2-normalised features and class weights (DBM Eq. 2 without
    the scale s, which the loss and the test-time softmax apply). Its ``weight`` has the shape of
    a linear classifier's, so a decoupled run initialises it from the base model's classifier."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


class LongTailFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers with a configurable classification loss.

    Softmax-family losses (softmax, balanced_softmax) keep detectron2's K+1 logits and score with
    a softmax. Sigmoid-family losses (sigmoid, balanced_sigmoid, eql, federated) use K logits with
    no background column (BALMS code) and score with the sigmoid of the raw logits (no prior at
    test time); a zero background column is appended so ``fast_rcnn_inference`` works unchanged.
    ``classification_loss`` takes optional per-proposal weights (the Meta Reweigher's, the
    two-component weights), which the decoupled step passes.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        loss_name: str = "softmax",
        class_counts: Optional[Sequence[float]] = None,
        num_images: Optional[int] = None,
        count_floor: float = 0.0,
        eql_lambda: float = 1.76e-3,
        fed_num_classes: int = 50,
        fed_power: float = 0.5,
        sigmoid_prior_prob: float = 0.001,
        dbm_scale: float = 30.0,
        dbm_k: float = 0.1,
        dbm_tau: float = 1.0,
        cb_beta: Optional[float] = None,
        **kwargs,
    ):
        # detectron2 after v0.6 passes its own sigmoid / federated options (MODEL.ROI_BOX_HEAD);
        # this head computes its losses itself and would silently train softmax instead
        for key, name in (("use_sigmoid_ce", "sigmoid"), ("use_fed_loss", "federated")):
            if kwargs.get(key):
                raise ValueError(
                    f"MODEL.ROI_BOX_HEAD.{key.upper()} is detectron2's own option and ltdet's box "
                    f"head does not apply it: set it False and LTDET.LOSS.NAME {name}")
        super().__init__(input_shape, **kwargs)
        if loss_name not in L.LOSS_NAMES:
            raise ValueError(f"unknown LTDET.LOSS.NAME {loss_name!r}; valid: {', '.join(L.LOSS_NAMES)}")
        self.loss_name = loss_name
        self.use_sigmoid = loss_name in L.SIGMOID_LOSSES
        if self.use_sigmoid:  # K logits, no background column
            self.cls_score = nn.Linear(self.cls_score.in_features, self.num_classes)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.constant_(self.cls_score.bias, L.sigmoid_bias_init(sigmoid_prior_prob))
        self.use_cosine = loss_name in L.COSINE_LOSSES
        if self.use_cosine:  # DBM: cosine classifier with K+1 outputs
            if dbm_scale <= 0:
                raise ValueError(f"LTDET.DBM.SCALE must be > 0, got {dbm_scale}")
            self.cls_score = CosineClassifier(self.cls_score.in_features, self.num_classes + 1)
            self.dbm_scale = dbm_scale
        self.loss_kwargs: Dict = {}

        stats: Dict[str, torch.Tensor] = {}
        if loss_name in _NEEDS_COUNTS:
            # Only image fractions (balanced sigmoid's prior, EQL's frequency) need the image total.
            needs_images = loss_name in ("balanced_sigmoid", "eql")
            if class_counts is None or (needs_images and num_images is None):
                raise ValueError(
                    f"loss {loss_name!r} needs per-class training counts"
                    + (" and the number of training images" if needs_images else "")
                    + "; with a config they come from DATASETS.TRAIN, otherwise pass class_counts="
                    + (" and num_images=" if needs_images else "")
                )
            floor = _count_floor(count_floor)
            # EQL's frequency is defined at zero (such a class is simply rare); priors, margins
            # and the federated sampling weights are not.
            counts = L.validate_counts(class_counts, self.num_classes, floor=floor,
                                       allow_zero=loss_name == "eql")
            if loss_name == "balanced_softmax":
                stats["log_prior"] = L.softmax_log_prior(counts)
            elif loss_name == "balanced_sigmoid":
                stats["log_prior_odds"] = L.sigmoid_log_prior_odds(counts, num_images)
            elif loss_name == "eql":
                stats["class_freq"] = L.image_frequency(counts, num_images)
                self.loss_kwargs["lambda_"] = eql_lambda
                _report_eql_threshold(stats["class_freq"], eql_lambda)
            elif loss_name == "federated":
                stats["fed_weight"] = counts.pow(fed_power)
                self.loss_kwargs["num_classes"] = fed_num_classes
                if fed_num_classes >= self.num_classes:
                    logger.warning(
                        f"LTDET.LOSS.FED_NUM_CLASSES={fed_num_classes} >= {self.num_classes} "
                        "classes: every class enters every step, so the federated loss is plain "
                        "sigmoid. The paper's 50 is 4.2% of LVIS's 1203 classes; scale it to "
                        "this dataset's class count."
                    )
            else:  # DBM family
                stats["class_margin"] = L.dbm_class_margins(counts, dbm_k, dbm_tau)
                self.loss_kwargs["scale"] = dbm_scale
                if loss_name == "dbm_bs":
                    stats["log_prior"] = L.softmax_log_prior(counts)
                if loss_name == "dbm_cb":
                    stats["cb_weight"] = L.effective_number_weights(counts, cb_beta)
        # Non-persistent buffers: follow the module's device/dtype, stay out of checkpoints (they
        # belong to the training set, not to the model).
        self._stat_names = sorted(stats)
        for k, v in stats.items():
            self.register_buffer(k, v.float(), persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        name = cfg.LTDET.LOSS.NAME
        ret.update(
            loss_name=name,
            count_floor=cfg.LTDET.CLASS_STATS.FLOOR,
            eql_lambda=cfg.LTDET.LOSS.EQL_LAMBDA,
            fed_num_classes=cfg.LTDET.LOSS.FED_NUM_CLASSES,
            fed_power=cfg.LTDET.LOSS.FED_POWER,
            sigmoid_prior_prob=cfg.LTDET.LOSS.SIGMOID_PRIOR_PROB,
            dbm_scale=cfg.LTDET.DBM.SCALE,
            dbm_k=cfg.LTDET.DBM.K,
            dbm_tau=cfg.LTDET.DBM.TAU,
            cb_beta=cfg.LTDET.LOSS.CB_BETA if cfg.LTDET.LOSS.CB_BETA >= 0 else None,
        )
        if name in _NEEDS_COUNTS:
            from ..data import training_class_stats

            if not cfg.DATASETS.TRAIN:
                raise ValueError(f"loss {name!r} needs class statistics: set DATASETS.TRAIN")
            stats = training_class_stats(cfg)
            # Sigmoid-family statistics are image fractions (BALMS code's prior; EQL's and the
            # federated loss's image frequency) whatever the source; the softmax family's
            # (Balanced Softmax prior, DBM's n_y / n_min, class-balanced weights) follow SOURCE.
            source = "image_count" if name in L.SIGMOID_LOSSES else cfg.LTDET.CLASS_STATS.SOURCE
            ret.update(class_counts=stats.counts(source), num_images=stats.num_images)
        return ret

    @property
    def stats(self) -> Dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self._stat_names}

    def classification_loss(
        self, scores: torch.Tensor, gt_classes: torch.Tensor, weights: Optional[torch.Tensor] = None,
        **extra,
    ) -> torch.Tensor:
        """The head's loss; ``extra`` goes to the loss function (the federated loss's ``classes``)."""
        kwargs = dict(self.loss_kwargs, **extra)
        if self.use_cosine:
            kwargs = dict(kwargs, log_prior=getattr(self, "log_prior", None))
            if hasattr(self, "cb_weight"):  # DBM-CB: class-balanced weight per fg proposal
                cb = torch.cat([self.cb_weight, self.cb_weight.new_ones(1)])[gt_classes]
                weights = cb if weights is None else weights * cb
        return L.cls_loss(self.loss_name, scores, gt_classes, self.stats, weights, **kwargs)

    def losses(self, predictions, proposals):
        scores, proposal_deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals], dim=0) if proposals else \
            torch.empty(0, dtype=torch.long, device=scores.device)
        if not self.use_sigmoid:  # detectron2's accuracy logging assumes a background column
            _log_classification_stats(scores, gt_classes)
        if proposals:
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                            for p in proposals], dim=0)
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        losses = {
            "loss_cls": self.classification_loss(scores, gt_classes),
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def predict_probs(self, predictions, proposals) -> List[torch.Tensor]:
        scores, _ = predictions
        num_per_image = [len(p) for p in proposals]
        if self.use_sigmoid:
            probs = torch.sigmoid(scores)
            probs = torch.cat([probs, probs.new_zeros(len(probs), 1)], dim=1)  # dropped by inference
        elif self.use_cosine:
            probs = F.softmax(self.dbm_scale * scores, dim=-1)  # no margin or prior at test time
        else:
            probs = F.softmax(scores, dim=-1)
        return probs.split(num_per_image, dim=0)
