"""The decoupled regime (BALMS supp. C.3): fine-tune only the box classifier of a base model.

Nothing upstream of the classifier learns, so each step runs the frozen trunk (backbone, RPN,
RoI pooling, box head) in eval mode without autograd, and skips everything whose result has no
gradient (mask head, box-regression and RPN losses). The classifier's features are computed once
per batch and reused by the meta look-ahead and the main step.
"""

from __future__ import annotations

import fnmatch
import time
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.engine import SimpleTrainer
from detectron2.layers import cat
from detectron2.structures import ImageList
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, get_event_storage
from torch import nn

from ..modeling.m2m import M2mTranslator
from ..modeling.meta_reweigher import MetaReweigher
from .meta_step import all_reduce_tensors, meta_reweigher_step, two_component_weights


def freeze_except(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """Set requires_grad=False on every parameter whose name matches none of ``patterns``
    (fnmatch globs); return the trainable names. A pattern that matches nothing is an error."""
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not fnmatch.filter(names, pat):
            raise ValueError(
                f"LTDET.DECOUPLED.TRAINABLE pattern {pat!r} matches no parameter of the model; "
                f"classifier parameters are e.g. {[n for n in names if 'box_predictor' in n]}"
            )
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatch(name, pat) for pat in patterns))
        if p.requires_grad:
            trainable.append(name)
    return trainable


@contextmanager
def _training_proposals(rpn: nn.Module):
    """Let an eval-mode RPN keep its *training* top-k (PRE/POST_NMS_TOPK_TRAIN), as the original
    fine-tuning did in training mode, without computing the RPN losses that training mode needs."""
    saved = dict(rpn.pre_nms_topk), dict(rpn.post_nms_topk)
    rpn.pre_nms_topk[False], rpn.post_nms_topk[False] = (
        rpn.pre_nms_topk[True],
        rpn.post_nms_topk[True],
    )
    try:
        yield
    finally:
        rpn.pre_nms_topk, rpn.post_nms_topk = saved


@torch.no_grad()
def classifier_inputs(
    model: nn.Module, batched_inputs: List[Dict], chunk: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Box-head features [N, D] of the sampled proposals of a batch and their gt classes [N], by
    the frozen trunk in eval mode (RPN proposals with the training top-k; sampling and gt
    matching are the ROI heads' own, PROPOSAL_APPEND_GT included).

    ``chunk`` > 0 runs the trunk on that many images at a time, so its activations (the bulk of
    the step's memory) no longer grow with the batch. The images are padded as one batch first
    and sampled in the same order, so the result is the whole-batch one: eval-mode layers treat
    images independently, and the proposal sampling draws the same random numbers."""
    images = model.preprocess_image(batched_inputs)
    gt = [x["instances"].to(model.device) for x in batched_inputs]
    heads = model.roi_heads
    n = len(batched_inputs)
    step = chunk if chunk > 0 else n
    xs, classes = [], []
    for i in range(0, n, step):
        part = ImageList(images.tensor[i : i + step], images.image_sizes[i : i + step])
        features = model.backbone(part.tensor)
        with _training_proposals(model.proposal_generator):
            proposals, _ = model.proposal_generator(part, features, None)
        proposals = heads.label_and_sample_proposals(proposals, gt[i : i + step])
        x = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        del features  # the next chunk's trunk reuses this memory
        xs.append(heads.box_head(x).flatten(1))
        classes += [p.gt_classes for p in proposals]
    return cat(xs, dim=0), cat(classes, dim=0)


def _unlogged_inputs(
    model: nn.Module, batched_inputs: List[Dict], chunk: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``classifier_inputs`` of a meta / development batch. The proposal sampling logs
    roi_head/num_fg_samples etc.; those would describe this batch mixed with the training
    batch's, so they go to a throwaway storage."""
    with EventStorage(get_event_storage().iter):
        return classifier_inputs(model, batched_inputs, chunk)


class DecoupledTrainStep(SimpleTrainer):
    """Training step of the decoupled regime, with the optional Meta Reweigher step.

    Gradients of the trainable parameters are averaged over ranks by hand (the model is not
    wrapped in DDP: the frozen trunk never runs under autograd, so DDP would have nothing to hook).
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        reweigher: Optional[MetaReweigher] = None,
        meta_loader=None,
        meta_optimizer: Optional[torch.optim.Optimizer] = None,
        meta_loss: str = "plain",
        meta_interval: int = 1,
        two_component: Optional[Tuple[torch.Tensor, float]] = None,
        m2m: Optional[M2mTranslator] = None,
        trunk_chunk: int = 0,
    ):
        """``two_component``: (class weights w_y [K], eps step size) for Jamal et al.'s weights,
        with ``meta_loader`` drawing from the development split. ``m2m``: adds translated
        features to every batch (before any meta step, so all steps see the same batch).
        ``trunk_chunk``: images per frozen-trunk forward (0: the whole batch at once)."""
        if meta_loss not in ("plain", "same"):
            raise ValueError(f"meta_loss must be 'plain' or 'same', got {meta_loss!r}")
        if meta_interval < 1:
            raise ValueError(f"meta_interval must be >= 1, got {meta_interval}")
        if trunk_chunk < 0:
            raise ValueError(f"trunk_chunk must be >= 0 (0 = whole batch), got {trunk_chunk}")
        super().__init__(model, data_loader, optimizer)
        self.predictor = model.roi_heads.box_predictor
        self.reweigher = reweigher
        self.two_component = two_component
        self.m2m = m2m
        self.trunk_chunk = trunk_chunk
        self.meta_optimizer = meta_optimizer
        self.meta_interval = meta_interval
        self.set_meta_loader(meta_loader)
        self._draws: Dict = {}  # this iteration's draws of the training loss
        # "same": the head's own loss, whole (DBM-BS's prior and DBM-CB's class weights too);
        # "plain": its family's loss without class statistics (the paper)
        self.meta_loss = meta_loss
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        # The trunk runs without autograd and only the classification loss is computed, so a
        # parameter outside the class-score layer would be "trained" without ever a gradient.
        classifier = {id(p) for p in self.predictor.cls_score.parameters()}
        outside = [
            n for n, p in model.named_parameters() if p.requires_grad and id(p) not in classifier
        ]
        if outside:
            raise ValueError(
                f"LTDET.DECOUPLED.TRAINABLE selects "
                f"{outside[:5]}{' ...' if len(outside) > 5 else ''}"
                ", outside the class-score layer: the decoupled step computes only the "
                "classification loss on features of a frozen trunk, so these would never get a "
                "gradient. Keep TRAINABLE within 'roi_heads.box_predictor.cls_score.*', or set "
                "LTDET.DECOUPLED.ENABLED False to train more of the model"
            )

    @property
    def meta_steps_per_iter(self) -> float:
        """Meta/development batches drawn per iteration (for resuming their stream)."""
        if self.two_component is not None:
            return 1.0
        return 1.0 / self.meta_interval if self.reweigher is not None else 0.0

    def set_meta_loader(self, meta_loader) -> None:
        self._meta_iter = iter(meta_loader) if meta_loader is not None else None

    def _train_loss(self, scores, gt, weights):
        return self.predictor.classification_loss(scores, gt, weights, **self._draws)

    def _meta_loss(self, scores, gt):
        if self.meta_loss == "same":
            return self.predictor.classification_loss(scores, gt)
        return self.predictor.plain_loss(scores, gt)

    def run_step(self):
        self.model.eval()  # frozen trunk: BN statistics and dropout stay as in the base model
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        x, gt = classifier_inputs(self.model, data, self.trunk_chunk)
        metrics = {}
        weights = None
        if self.m2m is not None:
            x_gen, gt_gen, m2m_stats = self.m2m(
                x, gt, len(data), self.predictor.logits, self.predictor.logit_scale
            )
            metrics.update(m2m_stats)
            x, gt = torch.cat([x, x_gen]), torch.cat([gt, gt_gen])
        # the random part of the loss (the federated classes), drawn once: a meta look-ahead
        # with a draw of its own would simulate another loss than the step that follows
        self._draws = self.predictor.draw_loss_inputs(gt)
        if self.two_component is not None:  # a development batch every iteration (Algorithm 1)
            x_dev, gt_dev = _unlogged_inputs(self.model, next(self._meta_iter), self.trunk_chunk)
            class_weights, eps_lr = self.two_component
            weights = two_component_weights(
                self.predictor.cls_score,
                self.optimizer,
                class_weights.to(x.device),
                eps_lr,
                self._train_loss,
                self._meta_loss,
                x,
                gt,
                x_dev,
                gt_dev,
            )
            fg = gt < self.predictor.num_classes
            if fg.any():
                metrics["eps_abs_mean"] = float(
                    (weights[fg] - class_weights.to(x.device)[gt[fg]]).abs().mean()
                )
        if self.reweigher is not None and self.iter % self.meta_interval == 0:
            x_meta, gt_meta = _unlogged_inputs(self.model, next(self._meta_iter), self.trunk_chunk)
            metrics.update(
                meta_reweigher_step(
                    self.predictor.cls_score,
                    self.optimizer,
                    self.reweigher,
                    self.meta_optimizer,
                    self._train_loss,
                    self._meta_loss,
                    x,
                    gt,
                    x_meta,
                    gt_meta,
                )
            )

        if self.reweigher is not None:
            weights = self.reweigher(gt).detach()
        scores = self.predictor.cls_score(x)
        loss = self._train_loss(scores, gt, weights)
        self.optimizer.zero_grad()
        loss.backward()
        averaged = all_reduce_tensors(
            {i: p.grad for i, p in enumerate(self.trainable)}, average=True
        )
        for p, g in zip(self.trainable, averaged.values()):
            if g is not p.grad:
                p.grad.copy_(g)
        self._write_metrics({"loss_cls": loss}, data_time)
        if metrics and comm.is_main_process():
            get_event_storage().put_scalars(**metrics)
        self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.meta_optimizer is not None:
            ret["meta_optimizer"] = self.meta_optimizer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.meta_optimizer is not None:
            if "meta_optimizer" not in state_dict:
                raise ValueError(
                    "the checkpoint to resume from has no Meta Reweigher optimizer "
                    "state: it was saved without LTDET.META.ENABLED. Resume with the "
                    "config that run used, or train into a new OUTPUT_DIR"
                )
            self.meta_optimizer.load_state_dict(state_dict["meta_optimizer"])
