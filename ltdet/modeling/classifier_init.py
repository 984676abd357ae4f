"""Initialise a sigmoid-family box classifier (K logits) from a softmax-family checkpoint (K+1).

detectron2's softmax classifier puts background last. Taking each class's weights and bias minus
the background's gives z_k - z_bg, so the sigmoid head starts with the softmax model's
class-vs-background log-odds: sigmoid(z_k - z_bg) = p_k / (p_k + p_bg). Opt-in
(LTDET.LOSS.SIGMOID_FROM_SOFTMAX): it lets sigmoid-family recipes fine-tune from a softmax base
model, e.g. detectron2's LVIS model-zoo checkpoints, instead of training a sigmoid base.
"""

import logging
from typing import Dict, List, Tuple

import torch

logger = logging.getLogger(__name__)

CLS_SCORE = "box_predictor.cls_score"


def sigmoid_from_softmax(
    weight: torch.Tensor, bias: torch.Tensor = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K+1, D) weight and (K+1,) bias of a softmax classifier, background last -> the (K, D)
    weight and (K,) bias of the K sigmoid logits z_k - z_bg. ``bias`` may be None."""
    w = weight[:-1] - weight[-1:]
    return w, None if bias is None else bias[:-1] - bias[-1:]


def convert_softmax_classifier(model_state: Dict[str, torch.Tensor], ckpt_state: Dict) -> List[str]:
    """In ``ckpt_state`` (a checkpoint's "model": tensors or the model zoo's numpy arrays),
    replace every box classifier with K+1 outputs where the model's has K by
    ``sigmoid_from_softmax``. Returns the converted weight keys (empty: nothing to convert)."""
    done = []
    for key, param in model_state.items():
        if not key.endswith(CLS_SCORE + ".weight") or key not in ckpt_state:
            continue
        weight = torch.as_tensor(ckpt_state[key])
        if weight.shape[0] != param.shape[0] + 1:
            continue
        bias_key = key[: -len("weight")] + "bias"
        bias = torch.as_tensor(ckpt_state[bias_key]) if bias_key in ckpt_state else None
        ckpt_state[key], b = sigmoid_from_softmax(weight, bias)
        if bias is not None:
            ckpt_state[bias_key] = b
        done.append(key)
        logger.info(
            "Initialised the %d sigmoid logits of %s from the checkpoint's %d softmax "
            "logits: each class minus the background (LTDET.LOSS.SIGMOID_FROM_SOFTMAX)",
            param.shape[0],
            key,
            weight.shape[0],
        )
    return done
