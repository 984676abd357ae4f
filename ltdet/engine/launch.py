"""Multi-process launch that also works without CUDA.

detectron2 0.6's ``launch`` asserts CUDA and uses NCCL for more than one process. On a machine
without CUDA we start the same number of CPU processes on the gloo backend instead, so that the
distributed code paths (DDP, all-reduce of meta gradients, evaluation gathering) run in tests and
on laptops. With CUDA this defers to detectron2's launch unchanged.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = timedelta(minutes=30),
) -> None:
    """Like ``detectron2.engine.launch``; without CUDA, ``num_gpus_per_machine`` CPU processes."""
    world_size = num_machines * num_gpus_per_machine
    if torch.cuda.is_available() or world_size <= 1:
        d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines,
            machine_rank,
            dist_url,
            args=args,
            timeout=timeout,
        )
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError(
                "dist_url='auto' only works on one machine; pass --dist-url tcp://HOST:PORT"
            )
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
        ),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(
    local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout
):
    rank = machine_rank * per_machine + local_rank
    dist.init_process_group(
        "gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    # detectron2's comm.get_local_rank() reads this group (set as detectron2's launch does).
    for m in range(world_size // per_machine):
        group = dist.new_group(list(range(m * per_machine, (m + 1) * per_machine)))
        if m == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    torch.set_num_threads(max(1, torch.get_num_threads() // per_machine))
    comm.synchronize()
    try:
        main_func(*args)
        # Every rank past its last collective before any tears gloo down: a rank that destroyed
        # its group while another still exchanged data with it aborted now and then ("terminate
        # called without an active exception"). After an error the others may never arrive.
        comm.synchronize()
    finally:
        dist.destroy_process_group()
