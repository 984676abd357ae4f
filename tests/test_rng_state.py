"""ltdet.engine.rng_state: what a checkpoint keeps of the global RNGs, and when it is gathered."""
import io
import random
from types import SimpleNamespace

import numpy as np
import torch

from ltdet.engine import rng_state


def _draw():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.normal(size=3).tolist(),
            [random.random() for _ in range(3)])


def test_capture_restore_round_trip_through_a_weights_only_checkpoint():
    np.random.normal()  # leaves a cached gaussian in numpy's state: it must survive too
    buf = io.BytesIO()
    torch.save({"rng": rng_state.capture()}, buf)
    first = _draw()
    assert _draw() != first  # the streams moved on
    buf.seek(0)
    rng_state.restore(torch.load(buf, weights_only=True)["rng"])
    assert _draw() == first


def test_gathered_exactly_where_the_periodic_checkpointer_saves():
    """detectron2's PeriodicCheckpointer saves after iteration it when (it + 1) % period == 0
    and after the last one; the hook must have every rank's state at exactly those."""
    hook = rng_state.GatherRngHook(period=2)
    hook.trainer = SimpleNamespace(iter=0, max_iter=5)
    at = []
    for it in range(5):
        hook.trainer.iter = it
        hook.after_step()
        if hook.gathered_at == it:
            at.append(it)
            assert len(hook.gathered) == 1 and set(hook.gathered[0]) >= {"torch", "numpy", "python"}
    assert at == [1, 3, 4]
