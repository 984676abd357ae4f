"""detectron2's checkpointer with an explained error for softmax/sigmoid classifier mix-ups."""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .modeling.loss_registry import loss_names

_CLS_KEY = "box_predictor.cls_score.weight"


def _either(names) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)
# checkpointables the Trainer adds with LTDET.META / LTDET.M2M
LTDET_STATE = ("meta_reweigher", "m2m")


def check_classifier_shape(model_state: Dict[str, torch.Tensor],
                           ckpt_state: Dict[str, torch.Tensor]) -> None:
    """Raise if a checkpoint's box classifier has K+1 outputs where the model has K, or the
    reverse: a softmax-family checkpoint loaded into a sigmoid-family head (or vice versa).
    detectron2 would otherwise skip the layer with a warning and train a fresh classifier."""
    for key, param in model_state.items():
        if not key.endswith(_CLS_KEY) or key not in ckpt_state:
            continue
        theirs, ours = ckpt_state[key].shape[0], param.shape[0]
        if theirs == ours + 1:
            kind = ("a softmax-family model (K+1 logits, with background)",
                    "sigmoid-family (K logits)", _either(loss_names(background=True)))
        elif theirs + 1 == ours:
            kind = ("a sigmoid-family model (K logits, no background)",
                    "softmax-family (K+1 logits)", _either(loss_names(background=False)))
        else:
            continue  # a different class count: detectron2's usual skip-and-warn fine-tuning
        raise ValueError(
            f"checkpoint classifier {key} has {theirs} outputs but the model's has {ours}: the "
            f"checkpoint is {kind[0]} while LTDET.LOSS.NAME makes this head {kind[1]}. Use a base "
            f"model trained with the same loss family, or set LTDET.LOSS.NAME to {kind[2]}."
        )


# (what needs the checkpoint, what MODEL.WEIGHTS should be, what the checkpoint must be)
DECOUPLED = ("the decoupled regime (LTDET.DECOUPLED.ENABLED) fine-tunes a base model",
             "the base model's model_final.pth", "a base model of this architecture")
EVAL_ONLY = ("--eval-only evaluates a trained model", "the trained model's model_final.pth",
             "a trained model of this architecture")


def check_complete(model_state: Dict[str, torch.Tensor], ckpt_state: Dict[str, torch.Tensor],
                   path: str = "the checkpoint", purpose: Tuple[str, str, str] = DECOUPLED) -> None:
    """Raise unless every model tensor is in the checkpoint with the same shape (a decoupled
    fine-tuning must start from a base model of this exact architecture; an evaluation must not
    run on freshly initialised layers)."""
    missing = [k for k in model_state if k not in ckpt_state]
    mismatched = [f"{k}: checkpoint {tuple(ckpt_state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in model_state.items()
                  if k in ckpt_state and tuple(ckpt_state[k].shape) != tuple(v.shape)]
    if missing or mismatched:
        raise ValueError(
            f"{path} is not {purpose[2]}: {len(missing)} missing keys {missing[:8]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:8]}. {purpose[0]}: set MODEL.WEIGHTS "
            f"to {purpose[1]} of a run with this config."
        )


class LongTailCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that explains classifier mix-ups and, with ``require_complete``,
    refuses checkpoints that do not cover the whole model; ``purpose`` (DECOUPLED or EVAL_ONLY)
    says why in the error."""

    def __init__(self, model, save_dir="", *, require_complete: bool = False,
                 purpose: Tuple[str, str, str] = DECOUPLED, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.require_complete = require_complete
        self.purpose = purpose
        self._requested: List[str] = []  # checkpointables the current load() asks for

    def resume_or_load(self, path: str, *, resume: bool = True):
        # fvcore treats an empty path as "nothing to load": a decoupled run would then train a
        # classifier on a randomly initialised frozen trunk, an evaluation score one.
        if self.require_complete and not path and not (resume and self.has_checkpoint()):
            raise ValueError(f"{self.purpose[0]}, but MODEL.WEIGHTS is empty: set it to "
                             f"{self.purpose[1]}")
        return super().resume_or_load(path, resume=resume)

    def load(self, path: str, checkpointables: Optional[List[str]] = None):
        # fvcore loads only the checkpointables the file has: a resume whose config enables
        # the Meta Reweigher or M2m where the saved run did not would silently start them fresh
        # (M2m's g would even copy the fine-tuned classifier), the reverse drop them.
        self._requested = list(self.checkpointables if checkpointables is None else checkpointables)
        return super().load(path, checkpointables)

    def _check_checkpointables(self, checkpoint) -> None:
        if not self._requested:  # loading weights only (MODEL.WEIGHTS), not resuming
            return
        missing = [k for k in self._requested if k not in checkpoint]
        unused = [k for k in LTDET_STATE if k in checkpoint and k not in self._requested]
        what = ([f"lacks {missing}"] if missing else []) + (
            [f"holds {unused}, which this config has no place for"] if unused else [])
        if what:
            raise ValueError(
                f"the checkpoint to resume from {' and '.join(what)}: it was saved by a run with "
                "other LTDET options (META / M2M). Resume with the config that run used, or "
                "train into a new OUTPUT_DIR")

    def _load_model(self, checkpoint):
        self._check_checkpointables(checkpoint)
        check_classifier_shape(self.model.state_dict(), checkpoint["model"])
        if self.require_complete:
            check_complete(self.model.state_dict(), checkpoint["model"], purpose=self.purpose)
        return super()._load_model(checkpoint)
