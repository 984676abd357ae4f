"""ltdet.engine.rng_state: what a checkpoint keeps of the global RNGs, and when it is gathered."""

import io
import random
from types import SimpleNamespace

import numpy as np
import torch

from ltdet.engine import rng_state


def _draw():
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        np.random.normal(size=3).tolist(),
        [random.random() for _ in range(3)],
    )


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


def test_restore_picks_this_ranks_state_and_warns_on_another_process_count(monkeypatch, caplog):
    """Rank r of an equal-size resume gets entry r of rng_per_rank; a resume with another
    process count gets rank 0's ``rng`` and a warning naming both counts; one process resuming a
    one-process checkpoint gets ``rng`` without a warning."""
    import logging

    from detectron2.utils import comm

    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append(rng_state.capture())
    expected = []
    for s in states:
        rng_state.restore(s)
        expected.append(torch.rand(2).tolist())
    ckpt = {"rng": states[0], "rng_per_rank": [states[1], states[2]]}

    def at(rank, world):
        monkeypatch.setattr(comm, "get_rank", lambda: rank)
        monkeypatch.setattr(comm, "get_world_size", lambda: world)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ltdet.engine.rng_state"):
            rng_state.restore_from_checkpoint(ckpt)
            return torch.rand(2).tolist(), [r.getMessage() for r in caplog.records]

    assert at(1, 2) == (expected[2], [])
    assert at(0, 2) == (expected[1], [])
    drawn, warned = at(2, 3)
    assert drawn == expected[0]
    assert len(warned) == 1 and "for 2 process(es), not 3" in warned[0]
    ckpt.pop("rng_per_rank")
    assert at(0, 1) == (expected[0], [])
    drawn, warned = at(1, 4)
    assert drawn == expected[0] and "for 1 process(es), not 4" in warned[0]
