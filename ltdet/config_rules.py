"""ltdet's config rules: every check that relates config keys to each other or to the datasets,
in one place next to ``add_ltdet_config`` (ltdet/config.py). ``check_config`` runs once at
start-up (the Trainer, and ``tools/train_net.py --eval-only``); components check only their own
arguments."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import ROI_HEADS_REGISTRY

from .data.class_stats import check_count_source, class_stats, count_floor
from .data.lvis_format import lvis_eval_error
from .modeling.loss_registry import get_loss
from .modeling.roi_heads import LongTailROIHeads

__all__ = ["check_config"]


def check_config(cfg: CfgNode, *, training: bool = True) -> None:
    """Fail early, with the fix, on a config that does not match its datasets or ignores its own
    LTDET options. ``training=False`` (``--eval-only``) leaves the training sets unread and the
    training-only rules unchecked."""
    _check_ltdet_options(cfg)
    if training:
        _check_training_options(cfg)
    _check_datasets(cfg, training)


def _check_ltdet_options(cfg: CfgNode) -> None:
    """LTDET values that would be ignored or that no component accepts."""
    head = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    if (cfg.LTDET.LOSS.NAME != "softmax" or cfg.LTDET.DECOUPLED.ENABLED) and not (
        isinstance(head, type) and issubclass(head, LongTailROIHeads)
    ):
        raise ValueError(
            f"MODEL.ROI_HEADS.NAME = {cfg.MODEL.ROI_HEADS.NAME!r} is not one of ltdet's ROI heads, "
            "so LTDET.LOSS and LTDET.DECOUPLED would have no effect: set MODEL.ROI_HEADS.NAME "
            "LongTailROIHeads (configs/Base-LTDet-RCNN-FPN.yaml does), or subclass it"
        )
    count_floor(cfg.LTDET.CLASS_STATS.FLOOR)
    check_count_source(cfg.LTDET.CLASS_STATS.SOURCE)
    if cfg.LTDET.LOSS.FED_NUM_CLASSES < 1:
        raise ValueError(
            f"LTDET.LOSS.FED_NUM_CLASSES must be >= 1 (classes per step of the "
            f"federated loss; Zhou et al.: 50), got {cfg.LTDET.LOSS.FED_NUM_CLASSES}"
        )
    if cfg.LTDET.TWO_COMPONENT.EPS_LR < 0:
        raise ValueError(
            f"LTDET.TWO_COMPONENT.EPS_LR must be >= 0 (the step size of the eps "
            f"descent), got {cfg.LTDET.TWO_COMPONENT.EPS_LR}"
        )


def _check_training_options(cfg: CfgNode) -> None:
    """The decoupled regime and what runs inside it (META, TWO_COMPONENT, M2M)."""
    lt = cfg.LTDET
    if not lt.DECOUPLED.ENABLED:  # TWO_COMPONENT would change the training split
        for key in ("META", "TWO_COMPONENT", "M2M"):
            if lt[key].ENABLED:
                raise ValueError(
                    f"LTDET.{key}.ENABLED needs LTDET.DECOUPLED.ENABLED (it "
                    "works on the frozen features of the decoupled classifier)"
                )
        return
    if cfg.SOLVER.AMP.ENABLED:
        raise ValueError(
            "SOLVER.AMP.ENABLED is not supported with LTDET.DECOUPLED.ENABLED "
            "(the classifier step runs in fp32): set SOLVER.AMP.ENABLED False"
        )
    if lt.DECOUPLED.TRUNK_CHUNK < 0:
        raise ValueError(
            f"LTDET.DECOUPLED.TRUNK_CHUNK must be >= 0 (0 = whole batch), "
            f"got {lt.DECOUPLED.TRUNK_CHUNK}"
        )
    if (lt.META.ENABLED or lt.TWO_COMPONENT.ENABLED) and cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        raise ValueError(
            "LTDET.META / LTDET.TWO_COMPONENT with SOLVER.CLIP_GRADIENTS is "
            "not supported: the look-ahead would not clip like the real step"
        )
    if lt.M2M.ENABLED and not get_loss(lt.LOSS.NAME).family.background:
        raise ValueError(
            f"LTDET.M2M needs a softmax-family LTDET.LOSS.NAME (M2m Eq. 2 uses "
            f"g's softmax cross entropy), got {lt.LOSS.NAME!r}"
        )
    if lt.TWO_COMPONENT.ENABLED and lt.META.ENABLED:
        raise ValueError(
            "LTDET.TWO_COMPONENT and LTDET.META are alternatives (Jamal et "
            "al. vs BALMS meta weights): enable one"
        )
    if lt.META.ENABLED:
        if lt.META.LOSS not in ("plain", "same"):
            raise ValueError(
                f"LTDET.META.LOSS must be 'plain' (the paper: softmax/sigmoid) or "
                f"'same' (the head's own loss), got {lt.META.LOSS!r}"
            )
        if lt.META.INTERVAL < 1:
            raise ValueError(
                f"LTDET.META.INTERVAL must be >= 1 (a meta step every INTERVAL "
                f"iterations), got {lt.META.INTERVAL}"
            )
        if lt.META.LOG_PERIOD < 1:
            raise ValueError(
                f"LTDET.META.LOG_PERIOD must be >= 1 (iterations between "
                f"class-weight logs), got {lt.META.LOG_PERIOD}"
            )


def _check_datasets(cfg: CfgNode, training: bool) -> None:
    """MODEL.ROI_HEADS.NUM_CLASSES against the training set, the test sets against both, and the
    test jsons against what lvis-api needs."""
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if training:
        train = ", ".join(cfg.DATASETS.TRAIN)
        stats = class_stats(cfg.DATASETS.TRAIN)  # raises for unregistered names and broken files
        if num_classes != stats.num_classes:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES = {num_classes} but dataset {train} has "
                f"{stats.num_classes} classes; set MODEL.ROI_HEADS.NUM_CLASSES {stats.num_classes}"
            )
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        if meta.get("evaluator_type") == "lvis" and meta.get("thing_classes") is None:
            class_stats(name)  # loads it: fills its class list
        meta = MetadataCatalog.get(name)
        n = len(meta.get("thing_classes", []))
        if n and n != num_classes:
            raise ValueError(
                f"test set {name} has {n} classes, training set {train} has {num_classes}: they "
                "must share one category list"
                if training
                else f"test set {name} has {n} classes but MODEL.ROI_HEADS.NUM_CLASSES = "
                f"{num_classes}: evaluate with the config the model was trained with, on a test "
                "set of its category list"
            )
        names = list(meta.get("thing_classes", []))
        if training and n and names != list(stats.names):
            i = next(i for i, (a, b) in enumerate(zip(names, stats.names)) if a != b)
            raise ValueError(
                f"test set {name} and training set {train} order their categories differently "
                f"(class {i}: {names[i]!r} vs {stats.names[i]!r}): a model's class i would be "
                "scored as another category; they must share one category list"
            )
        # recorded when ltdet loaded the json: refused now, not after a whole training run
        problems = meta.get("lvis_eval_problems", None)
        if problems:
            raise ValueError(
                lvis_eval_error(problems, meta.get("json_file", name)) + " (in a "
                "running session, register the dataset again after fixing the json)"
            )
