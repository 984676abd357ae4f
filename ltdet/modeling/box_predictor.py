"""Box predictor whose classifier is trained with a registered long-tail loss
(ltdet.modeling.loss_registry).

Box regression (class-specific for every one of the K classes, with its loss) and inference are
detectron2's; only the class logits, their loss and the test-time scores change.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats

from ..data.class_stats import count_floor as config_count_floor
from .loss_registry import CosineClassifier, LossOptions, get_loss

__all__ = ["LongTailFastRCNNOutputLayers", "CosineClassifier"]


class LongTailFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers whose classifier is trained with a registered loss
    (``ltdet.modeling.loss_registry``), which also fixes its logits and test-time scores.

    The interface the decoupled step and M2m use: ``cls_score`` (the trainable layer),
    ``logits(x)``, ``classification_loss`` (with optional per-proposal weights: the Meta
    Reweigher's, the two-component weights), ``plain_loss``, ``draw_loss_inputs``,
    ``logit_scale``, ``stats`` and ``family``.
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
        eql_lambda: float = 1.77e-3,
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
                    f"head does not apply it: set it False and LTDET.LOSS.NAME {name}"
                )
        super().__init__(input_shape, **kwargs)
        self.loss = get_loss(loss_name)
        self.loss_name = loss_name
        self.family = self.loss.family
        if self.family.scaled and dbm_scale <= 0:
            raise ValueError(f"LTDET.DBM.SCALE must be > 0, got {dbm_scale}")
        classifier = self.family.classifier(
            self.cls_score.in_features, self.num_classes, sigmoid_prior_prob
        )
        if classifier is not None:
            self.cls_score = classifier
        # scores = logit_scale * cls_score(x) (DBM: s cos theta)
        self.logit_scale = dbm_scale if self.family.scaled else 1.0

        if self.loss.build is not None and (
            class_counts is None or (self.loss.needs_num_images and num_images is None)
        ):
            needs_images = self.loss.needs_num_images
            raise ValueError(
                f"loss {loss_name!r} needs per-class training counts"
                + (" and the number of training images" if needs_images else "")
                + "; with a config they come from DATASETS.TRAIN, otherwise pass class_counts="
                + (" and num_images=" if needs_images else "")
            )
        options = LossOptions(
            eql_lambda=eql_lambda,
            fed_num_classes=fed_num_classes,
            fed_power=fed_power,
            dbm_scale=dbm_scale,
            dbm_k=dbm_k,
            dbm_tau=dbm_tau,
            cb_beta=cb_beta,
        )
        floor = config_count_floor(count_floor) if self.loss.build is not None else None
        stats, self.loss_kwargs = self.loss.statistics(
            class_counts, self.num_classes, num_images, floor, options
        )
        # Non-persistent buffers: follow the module's device/dtype, stay out of checkpoints (they
        # belong to the training set, not to the model).
        self._stat_names = sorted(stats)
        for k, v in stats.items():
            self.register_buffer(k, v.float(), persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        name = cfg.LTDET.LOSS.NAME
        options = LossOptions.from_config(cfg)
        ret.update(
            loss_name=name,
            count_floor=cfg.LTDET.CLASS_STATS.FLOOR,
            eql_lambda=options.eql_lambda,
            fed_num_classes=options.fed_num_classes,
            fed_power=options.fed_power,
            sigmoid_prior_prob=cfg.LTDET.LOSS.SIGMOID_PRIOR_PROB,
            dbm_scale=options.dbm_scale,
            dbm_k=options.dbm_k,
            dbm_tau=options.dbm_tau,
            cb_beta=options.cb_beta,
        )
        loss = get_loss(name)
        if loss.build is not None:
            from ..data import training_class_stats

            if not cfg.DATASETS.TRAIN:
                raise ValueError(f"loss {name!r} needs class statistics: set DATASETS.TRAIN")
            stats = training_class_stats(cfg)
            source = loss.count_source(cfg.LTDET.CLASS_STATS.SOURCE)
            ret.update(class_counts=stats.counts(source), num_images=stats.num_images)
        return ret

    @property
    def stats(self) -> Dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self._stat_names}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The loss's input for box-head features ``x``: ``logit_scale * cls_score(x)``."""
        return self.logit_scale * self.cls_score(x)

    def classification_loss(
        self,
        scores: torch.Tensor,
        gt_classes: torch.Tensor,
        weights: Optional[torch.Tensor] = None,
        **extra,
    ) -> torch.Tensor:
        """The head's loss on ``cls_score``'s output; ``extra`` goes to the loss function (the
        federated loss's ``classes``, from ``draw_loss_inputs``)."""
        return self.loss(scores, gt_classes, self.stats, weights, **dict(self.loss_kwargs, **extra))

    def plain_loss(self, scores: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """The family's loss without class statistics (softmax, sigmoid, scaled-cosine softmax)."""
        return self.family.plain_loss(scores, gt_classes, self.num_classes, self.logit_scale)

    def draw_loss_inputs(self, gt_classes: torch.Tensor) -> Dict:
        """The random part of the loss for this batch (``classification_loss``'s ``extra``)."""
        return self.loss.draws(gt_classes, self.stats, self.loss_kwargs)

    def losses(self, predictions, proposals):
        scores, proposal_deltas = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if proposals
            else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        if self.family.background:  # detectron2's accuracy logging assumes a background column
            _log_classification_stats(scores, gt_classes)
        if proposals:
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        losses = {
            "loss_cls": self.classification_loss(scores, gt_classes),
            "loss_box_reg": self.box_reg_loss(
                proposal_boxes, gt_boxes, proposal_deltas, gt_classes
            ),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def predict_probs(self, predictions, proposals) -> List[torch.Tensor]:
        scores, _ = predictions
        num_per_image = [len(p) for p in proposals]
        probs = self.family.probabilities(scores, self.logit_scale)
        return probs.split(num_per_image, dim=0)
