"""A diverging training run: the error that keeps its context, and the hook that warns while the
loss grows without yet being NaN (docs/OUTPUTS_AND_RESUME.md)."""

from __future__ import annotations

import logging
from collections import deque
from typing import Deque, Optional, Tuple

import numpy as np
from detectron2.engine import HookBase

logger = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """detectron2's "Loss became infinite or NaN" with what is needed to recover: the iteration,
    the learning rate there, the last finite checkpoint and the command that resumes from it with
    a lower SOLVER.BASE_LR. ``command`` is the run's command line without the new learning rate
    (``tools/train_net.py`` gives its own; see ``with_command``)."""

    def __init__(
        self,
        iteration: int,
        lr: float,
        base_lr: float,
        output_dir: str,
        checkpoint: Optional[str],
        cause: str,
        command: Optional[str] = None,
    ):
        self.iteration, self.lr, self.base_lr = iteration, lr, base_lr
        self.output_dir, self.checkpoint, self.cause = output_dir, checkpoint, cause
        self.command = command or (
            "python tools/train_net.py --config-file <the run's config> "
            f"--resume OUTPUT_DIR {output_dir}"
        )
        super().__init__(self._message())

    def _message(self) -> str:
        lower = f"SOLVER.BASE_LR {self.base_lr / 10:g}"
        if self.checkpoint is None:
            fix = (
                f"No checkpoint was written before it: start again with a lower learning "
                f"rate: {self.command} {lower}"
            )
        else:
            fix = (
                f"The last finite checkpoint is {self.checkpoint} (non-finite weights are never "
                f"saved); resume from it with a lower learning rate: {self.command} {lower}"
            )
        return (
            f"Training diverged at iteration {self.iteration}, learning rate {self.lr:g} "
            f"(SOLVER.BASE_LR {self.base_lr:g}): {self.cause.splitlines()[0]} {fix}"
        )

    def with_command(self, command: str) -> "TrainingDiverged":
        """The same error, with the exact command line of the run to resume."""
        return TrainingDiverged(
            self.iteration,
            self.lr,
            self.base_lr,
            self.output_dir,
            self.checkpoint,
            self.cause,
            command,
        )


class LossGrowthHook(HookBase):
    """Warns when the training loss grows by orders of magnitude without becoming NaN (detectron2
    stops only at NaN/inf): the median ``total_loss`` of the last ``window`` iterations against
    the run's first loss (the model as loaded or initialised: a learning rate that blows the run
    up does so within a few iterations, so a median of the first ones is no healthy reference).
    It warns when the ratio first reaches ``factor`` and again at every further 10x. Defaults:
    20 iterations (the smoothing of detectron2's printed losses) and 100x (two orders of
    magnitude: a healthy run's loss falls from its first value, and one batch's loss differs from
    the next by a few x). Reads the event storage, which holds the losses on the main process."""

    def __init__(self, window: int = 20, factor: float = 100.0):
        if window < 1 or factor <= 1:
            raise ValueError(
                f"LossGrowthHook needs window >= 1 and factor > 1, got {window}, {factor}"
            )
        self.window, self.factor = window, factor
        self.first: Optional[Tuple[float, int]] = None  # (loss, iteration) this run began with
        self._recent: Deque[float] = deque(maxlen=window)
        self._seen = -1  # the iteration of the last loss read
        self._warn_at = factor

    def after_step(self):
        storage = self.trainer.storage
        if "total_loss" not in storage.histories():
            return  # not the main process, or nothing logged yet
        value, iteration = storage.history("total_loss").values()[-1]
        if iteration == self._seen:
            return
        self._seen = iteration
        if self.first is None:
            self.first = (value, iteration)
        self._recent.append(value)
        if len(self._recent) < self.window or self.first[0] <= 0:
            return
        recent = float(np.median(self._recent))
        if recent >= self._warn_at * self.first[0]:
            self._warn_at = recent / self.first[0] * 10
            lr = f"{storage.history('lr').latest():g}" if "lr" in storage.histories() else "unknown"
            logger.warning(
                "The training loss grew %.3gx: median %.4g over the last %d iterations (to "
                "iteration %d) against %.4g at this run's first iteration (%d). The run is likely "
                "diverging (learning rate now %s): consider stopping it and resuming from an "
                "earlier checkpoint with a lower SOLVER.BASE_LR",
                recent / self.first[0],
                recent,
                self.window,
                iteration,
                self.first[0],
                self.first[1],
                lr,
            )
