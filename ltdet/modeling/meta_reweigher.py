"""Meta Reweigher (BALMS supp. B.2): a learnable loss weight per class."""

from __future__ import annotations

import torch
from torch import nn


def proposal_weights(class_logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
    """Per-proposal loss weights [N] from per-class weight logits [K].

    Foreground proposal i gets sigmoid(class_logits[y_i]), renormalised to mean 1 over the
    foreground proposals of the batch (BALMS code), so the weights redistribute the loss among
    classes without changing its scale; background proposals (y_i = K) get 1. Differentiable in
    ``class_logits`` (the meta gradient flows through here).
    """
    num_classes = class_logits.numel()
    fg = gt_classes < num_classes
    w = torch.sigmoid(class_logits)[gt_classes.clamp(max=num_classes - 1)]
    n_fg = fg.sum()
    if n_fg == 0:
        return torch.ones_like(w)
    w_fg = torch.where(fg, w, torch.zeros_like(w))
    scale = n_fg / w_fg.sum()
    return torch.where(fg, w * scale, torch.ones_like(w))


class MetaReweigher(nn.Module):
    """Class weights sigmoid(w_c), w initialised at 0 (weight 0.5, as in the paper and code).

    A module so that its parameter lives in the model's state dict: detectron2 checkpoints carry
    it, and ``--resume`` restores it.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_classes))

    def class_weights(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def forward(self, gt_classes: torch.Tensor) -> torch.Tensor:
        return proposal_weights(self.logits, gt_classes)
