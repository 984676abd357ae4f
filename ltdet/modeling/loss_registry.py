"""The classification losses of ltdet's box head, each declared once.

A ``ClassificationLoss`` names a loss, its function (``ltdet.modeling.losses``), its family and
the class statistics it needs with how they are built from per-class counts. The family fixes
the classifier (K+1 logits with a background column, or K), the test-time scores (softmax,
sigmoid of the raw logits, or a softmax of scaled cosines) and the family's plain loss (the
Meta Reweigher's "plain" meta loss). Losses are registered in ``CLS_LOSS_REGISTRY``
(detectron2's ``Registry``, keyed by name, as mmdetection's losses declare their channels and
activation); the head and the decoupled step use only this interface. docs/ADDING_A_LOSS.md
shows how to add one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..data.class_stats import validate_counts
from . import losses as L

__all__ = [
    "CLS_LOSS_REGISTRY",
    "LossFamily",
    "SOFTMAX",
    "SIGMOID",
    "COSINE",
    "LossOptions",
    "ClassificationLoss",
    "CosineClassifier",
    "register_loss",
    "get_loss",
    "loss_names",
    "report_eql_threshold",
]

logger = logging.getLogger(__name__)

CLS_LOSS_REGISTRY = Registry("LTDET_CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """Classification losses of the LongTail box head, by
LTDET.LOSS.NAME. Each entry is a ``ClassificationLoss``."""


class CosineClassifier(nn.Module):
    """Cosine similarities between L2-normalised features and class weights (DBM Eq. 2 without
    the scale s, which the loss and the test-time softmax apply). Its ``weight`` has the shape of
    a linear classifier's, so a decoupled run initialises it from the base model's classifier."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


@dataclass(frozen=True)
class LossFamily:
    """What a group of losses shares: the classifier's outputs and the test-time scores.

    ``background``: K+1 logits, the last the background's (softmax families), else K (sigmoid:
    no background column, BALMS code). ``scaled``: the classifier gives cosines that the loss
    and the scores multiply by LTDET.DBM.SCALE (DBM). ``plain``: the family's loss without any
    class statistic.
    """

    name: str
    background: bool
    scaled: bool
    plain: Callable[[Tensor, Tensor], Tensor]

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 1 if self.background else num_classes

    def classifier(
        self, in_features: int, num_classes: int, sigmoid_prior_prob: float
    ) -> Optional[nn.Module]:
        """The class-score layer, or None to keep detectron2's K+1-way linear layer."""
        if self.scaled:
            return CosineClassifier(in_features, num_classes + 1)
        if self.background:
            return None
        layer = nn.Linear(in_features, num_classes)
        nn.init.normal_(layer.weight, std=0.01)
        # focal-loss style: every class starts at probability SIGMOID_PRIOR_PROB (BALMS code)
        nn.init.constant_(layer.bias, L.sigmoid_bias_init(sigmoid_prior_prob))
        return layer

    def probabilities(self, scores: Tensor, scale: float) -> Tensor:
        """[N, K+1] test-time class probabilities. Sigmoid: of the raw logits (no prior), with
        a zero background column so that ``fast_rcnn_inference`` works unchanged; cosine: a
        softmax of the scaled cosines (no margin or prior at test time)."""
        if not self.background:
            probs = torch.sigmoid(scores)
            return torch.cat([probs, probs.new_zeros(len(probs), 1)], dim=1)
        return F.softmax(scale * scores if self.scaled else scores, dim=-1)

    def plain_loss(
        self, scores: Tensor, gt_classes: Tensor, num_classes: int, scale: float
    ) -> Tensor:
        L.check_logit_width(self.name, scores.shape[1], num_classes, self.background)
        return self.plain(scale * scores if self.scaled else scores, gt_classes)


SOFTMAX = LossFamily("softmax", background=True, scaled=False, plain=L.softmax_loss)
SIGMOID = LossFamily("sigmoid", background=False, scaled=False, plain=L.sigmoid_loss)
COSINE = LossFamily("cosine", background=True, scaled=True, plain=L.softmax_loss)


@dataclass(frozen=True)
class LossOptions:
    """The LTDET.LOSS / LTDET.DBM values that statistics and loss arguments are built from."""

    eql_lambda: float = 1.77e-3  # LTDET.LOSS.EQL_LAMBDA's default
    fed_num_classes: int = 50
    fed_power: float = 0.5
    dbm_scale: float = 30.0
    dbm_k: float = 0.1
    dbm_tau: float = 1.0
    cb_beta: Optional[float] = None

    @classmethod
    def from_config(cls, cfg) -> "LossOptions":
        return cls(
            eql_lambda=cfg.LTDET.LOSS.EQL_LAMBDA,
            fed_num_classes=cfg.LTDET.LOSS.FED_NUM_CLASSES,
            fed_power=cfg.LTDET.LOSS.FED_POWER,
            dbm_scale=cfg.LTDET.DBM.SCALE,
            dbm_k=cfg.LTDET.DBM.K,
            dbm_tau=cfg.LTDET.DBM.TAU,
            cb_beta=cfg.LTDET.LOSS.CB_BETA if cfg.LTDET.LOSS.CB_BETA >= 0 else None,
        )


# counts [K] (validated, floored), number of training images, options -> statistics, kwargs
StatsBuilder = Callable[
    [Tensor, Optional[int], LossOptions], Tuple[Dict[str, Tensor], Dict[str, object]]
]


@dataclass
class ClassificationLoss:
    """One loss: ``fn(logits, gt_classes, stats[stats_keys[0]], weights=..., **{other stats},
    **kwargs)``.

    ``build`` makes the [K] statistics and the loss's keyword arguments from the class counts
    (None: the loss needs no statistic). The sigmoid family counts images (fractions of the
    annotated training images, BALMS code); the others count LTDET.CLASS_STATS.SOURCE.
    ``needs_num_images``: the statistics are image fractions. ``allow_zero_counts``: the
    statistic stays defined for a class without images. ``draw``: the random part of the loss,
    drawn once per iteration so that a meta look-ahead and the step it simulates share it.
    """

    name: str
    fn: Callable[..., Tensor]
    family: LossFamily
    stats_keys: Tuple[str, ...] = ()
    build: Optional[StatsBuilder] = None
    needs_num_images: bool = False
    allow_zero_counts: bool = False
    draw: Optional[Callable[[Tensor, Mapping[str, Tensor], Mapping], Dict]] = None

    @property
    def __name__(self) -> str:  # detectron2's Registry keys an object by its __name__
        return self.name

    def count_source(self, configured: str) -> str:
        return "image_count" if self.family is SIGMOID else configured

    def statistics(
        self,
        counts,
        num_classes: int,
        num_images: Optional[int],
        floor: Optional[float],
        options: LossOptions,
    ):
        """(statistics [K] float64, loss kwargs) from per-class counts, checked."""
        if self.build is None:
            return {}, {}
        counts = validate_counts(
            counts, num_classes, floor=floor, allow_zero=self.allow_zero_counts
        )
        return self.build(counts, num_images, options)

    def draws(self, gt_classes: Tensor, stats: Mapping[str, Tensor], kwargs: Mapping) -> Dict:
        return {} if self.draw is None else self.draw(gt_classes, stats, kwargs)

    def __call__(
        self,
        logits: Tensor,
        gt_classes: Tensor,
        stats: Mapping[str, Tensor],
        weights: Optional[Tensor] = None,
        **kwargs,
    ) -> Tensor:
        """The loss; ``stats`` holds the [K] statistics it needs, ``kwargs`` go to ``fn``
        (``lambda_``, ``num_classes``, ``generator``, ``classes``, ``scale``). Checks the logit
        width against K of the statistics."""
        missing = [k for k in self.stats_keys if k not in stats]
        if missing:
            raise ValueError(
                f"loss {self.name!r} needs the class statistic {missing[0]!r}, missing from "
                f"stats (got keys {sorted(stats)})"
            )
        source = next(iter(self.stats_keys), None) or next(iter(stats), None)
        if source is not None:
            L.check_logit_width(
                self.name, logits.shape[1], stats[source].numel(), self.family.background
            )
        if not self.stats_keys:
            return self.fn(logits, gt_classes, weights=weights, **kwargs)
        first, *rest = self.stats_keys
        extra = {k: stats[k] for k in rest}
        return self.fn(logits, gt_classes, stats[first], weights=weights, **extra, **kwargs)


def register_loss(loss: ClassificationLoss) -> ClassificationLoss:
    """Add ``loss`` to ``CLS_LOSS_REGISTRY`` under ``loss.name`` (names are unique)."""
    CLS_LOSS_REGISTRY.register(loss)
    return loss


def get_loss(name: str) -> ClassificationLoss:
    if name not in CLS_LOSS_REGISTRY:
        raise ValueError(f"unknown LTDET.LOSS.NAME {name!r}; valid: {', '.join(loss_names())}")
    return CLS_LOSS_REGISTRY.get(name)


def loss_names(background: Optional[bool] = None, family: Optional[LossFamily] = None):
    """Registered loss names in registration order; only those with (``background=True``) or
    without a background logit, or of one ``family``."""
    return tuple(
        name
        for name, loss in CLS_LOSS_REGISTRY
        if (background is None or loss.family.background == background)
        and (family is None or loss.family is family)
    )


# --------------------------------------------------------------------------- the losses
def report_eql_threshold(class_freq: Tensor, lambda_: float) -> None:
    """Log how many classes EQL's threshold suppresses; warn when none (EQL = plain sigmoid)."""
    n = int((class_freq < lambda_).sum())
    msg = (
        f"EQL: lambda={lambda_:g} suppresses the foreground negatives of {n} of "
        f"{class_freq.numel()} classes (image frequency < lambda)"
    )
    if n == 0:
        logger.warning(
            msg + ", so the loss is plain sigmoid. lambda is a fraction of the training images "
            "with annotations (the EQL code's 1.77e-3 is just above 100 of LVIS v0.5's 56,740: "
            "the rare and common groups); set LTDET.LOSS.EQL_LAMBDA for this dataset."
        )
    else:
        logger.info(msg)


def _eql_stats(counts, num_images, o):
    freq = L.image_frequency(counts, num_images)
    report_eql_threshold(freq, o.eql_lambda)
    return {"class_freq": freq}, {"lambda_": o.eql_lambda}


def _federated_stats(counts, num_images, o):
    if o.fed_num_classes >= counts.numel():
        logger.warning(
            f"LTDET.LOSS.FED_NUM_CLASSES={o.fed_num_classes} >= {counts.numel()} "
            "classes: every class enters every step, so the federated loss is plain "
            "sigmoid. The paper's 50 is 4.2% of LVIS's 1203 classes; scale it to "
            "this dataset's class count."
        )
    return {"fed_weight": counts.pow(o.fed_power)}, {"num_classes": o.fed_num_classes}


def _federated_draw(gt, stats, kwargs):
    return {"classes": L.federated_classes(gt, stats["fed_weight"], kwargs["num_classes"])}


def _dbm_stats(counts, num_images, o):
    return {"class_margin": L.dbm_class_margins(counts, o.dbm_k, o.dbm_tau)}, {"scale": o.dbm_scale}


def _dbm_bs_stats(counts, num_images, o):
    stats, kwargs = _dbm_stats(counts, num_images, o)
    return dict(stats, log_prior=L.softmax_log_prior(counts)), kwargs


def _dbm_cb_stats(counts, num_images, o):
    stats, kwargs = _dbm_stats(counts, num_images, o)
    return dict(stats, cb_weight=L.effective_number_weights(counts, o.cb_beta)), kwargs


for _loss in (
    ClassificationLoss("softmax", L.softmax_loss, SOFTMAX),
    ClassificationLoss("sigmoid", L.sigmoid_loss, SIGMOID),
    ClassificationLoss(
        "balanced_softmax",
        L.balanced_softmax_loss,
        SOFTMAX,
        ("log_prior",),
        lambda c, n, o: ({"log_prior": L.softmax_log_prior(c)}, {}),
    ),
    ClassificationLoss(
        "balanced_sigmoid",
        L.balanced_sigmoid_loss,
        SIGMOID,
        ("log_prior_odds",),
        lambda c, n, o: ({"log_prior_odds": L.sigmoid_log_prior_odds(c, n)}, {}),
        needs_num_images=True,
    ),
    # EQL's frequency is defined at zero (such a class is simply rare); priors, margins and
    # the federated sampling weights are not.
    ClassificationLoss(
        "eql",
        L.eql_loss,
        SIGMOID,
        ("class_freq",),
        _eql_stats,
        needs_num_images=True,
        allow_zero_counts=True,
    ),
    ClassificationLoss(
        "federated",
        L.federated_loss,
        SIGMOID,
        ("fed_weight",),
        _federated_stats,
        draw=_federated_draw,
    ),
    ClassificationLoss("dbm", L.dbm_loss, COSINE, ("class_margin",), _dbm_stats),
    ClassificationLoss("dbm_bs", L.dbm_loss, COSINE, ("class_margin", "log_prior"), _dbm_bs_stats),
    ClassificationLoss(
        "dbm_cb", L.dbm_cb_loss, COSINE, ("class_margin", "cb_weight"), _dbm_cb_stats
    ),
):
    register_loss(_loss)
