"""Global RNG state of a training process, for checkpoints that resume exactly.

ROI sampling (detectron2's ``subsample_labels``) draws from the torch generator of the device it
runs on, M2m from the same, augmentation from numpy and python. Each rank has its own state
(detectron2 seeds rank r with SEED + r), but only rank 0 writes the checkpoint, so the states
of all ranks are gathered just before each checkpoint step and saved together.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm


def capture() -> Dict:
    """This process's torch (CPU and current CUDA device), numpy and python RNG states, as tensors
    and builtins only (torch.load's weights_only mode refuses numpy objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: Dict) -> None:
    """Put back a state from :func:`capture`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


class GatherRngHook(HookBase):
    """On iterations where detectron2's PeriodicCheckpointer saves (every ``period`` and the
    last), gathers every rank's RNG state so the trainer can put all of them in the checkpoint.
    Must run right before the checkpointer, on every rank (it is a collective)."""

    def __init__(self, period: int):
        self.period = period
        self.gathered: Optional[List[Dict]] = None
        self.gathered_at = -1

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it >= self.trainer.max_iter - 1:
            self.gathered = comm.all_gather(capture())
            self.gathered_at = it
