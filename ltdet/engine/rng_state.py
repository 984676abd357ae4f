"""Global RNG state of a training process, for checkpoints that resume exactly.

ROI sampling (detectron2's ``subsample_labels``) draws from the torch generator of the device it
runs on, M2m from the same, augmentation from numpy and python. Each rank has its own state
(detectron2 seeds rank r with SEED + r), but only rank 0 writes the checkpoint, so the states
of all ranks are gathered just before each checkpoint step and saved together.
"""

from __future__ import annotations

import logging
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
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
    }
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


def restore_from_checkpoint(state_dict: Dict) -> None:
    """Restore this rank's state from a trainer checkpoint: its own entry of ``rng_per_rank``
    when the checkpoint was saved by as many processes, else rank 0's ``rng`` (with a warning
    when several processes now share it: their ROI sampling draws then differ from the run that
    saved it)."""
    world, per_rank = comm.get_world_size(), state_dict.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == world:
        restore(per_rank[comm.get_rank()])
    elif "rng" in state_dict:
        restore(state_dict["rng"])
        if world > 1:
            logging.getLogger(__name__).warning(
                "The checkpoint holds RNG states for %s process(es), not %d: every rank "
                "continues from rank 0's, so this resume is not bit-exact (ROI sampling draws "
                "differ); resume with as many processes as the run that saved it",
                len(per_rank) if per_rank is not None else 1,
                world,
            )


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
