#!/usr/bin/env python
"""One speed/memory report from the ratio benchmarks of the losses and of the decoupled / meta
steps, naming the machine it ran on. Runs unchanged on CPU and on a CUDA GPU; reports land in
benchmarks/results/speed_<device>.{md,csv}, next to each other when both exist.

  python -m benchmarks.speed [--device cpu|cuda] [--repeats 10] [--iters 5] [--lvis-scale]
"""

import argparse
import csv
import os
from typing import Dict, List, Optional, Sequence, Tuple

from benchmarks import bench_decoupled, bench_losses

HERE = os.path.dirname(os.path.abspath(__file__))


def report(
    losses: List[dict],
    steps: List[dict],
    machine: Dict[str, str],
    device: str,
    weights: str,
    lvis_scale: bool,
    command: Optional[str] = None,
) -> Tuple[List[dict], str]:
    """The report's rows (one per ratio) and its markdown, from bench_losses.run and
    bench_decoupled.run rows. GPU kernel-time rows appear only where the loss benchmark could
    measure kernel time (CUDA with a working profiler)."""
    loss_case = (
        f"{bench_losses.NUM_IMAGES * bench_losses.PER_IMAGE} RoIs, "
        f"K={bench_losses.NUM_CLASSES}, {bench_losses.FG_FRACTION:.0%} fg"
    )
    rows = [
        {
            "benchmark": f"loss fwd+bwd ({loss_case})",
            "comparison": f"{r['loss']} / {r['baseline']}",
            "time_ratio": r["ratio"],
            "target": r["target"],
            "meets": r["meets_target"],
            "mem_ratio": "",
        }
        for r in losses
        if r["baseline"]
    ]
    if any(r["kernel_ratio"] for r in losses):  # GPU: the kernels' own time, without launches
        rows += [
            {
                "benchmark": "loss fwd+bwd, GPU kernel time only",
                "comparison": f"{r['loss']} / {r['baseline']}",
                "time_ratio": r["kernel_ratio"],
                "target": "",
                "meets": "",
                "mem_ratio": "",
            }
            for r in losses
            if r["kernel_ratio"]
        ]
    rows += [
        {
            "benchmark": "training step" + (" (R50-FPN sizes)" if lvis_scale else ""),
            "comparison": r["comparison"],
            "time_ratio": r["time_ratio"],
            "target": r["time_target"],
            "meets": r["time_meets"],
            "mem_ratio": f"{r['mem_ratio']} ({r['mem_target'] or 'info'}: {r['mem_meets'] or '-'})",
        }
        for r in steps
    ]

    lines = [
        f"# Speed report ({device})",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()),
        "",
        "Every ratio is measured against its baseline in the same run "
        "(`"
        + (
            command
            or "python -m benchmarks.speed --device "
            + device
            + (" --lvis-scale" if lvis_scale else "")
            + (f" --weights {os.path.relpath(weights, os.path.dirname(HERE))}" if weights else "")
        )
        + "`). Memory ratio: peak "
        "of the variant's resident state plus what its step allocates ("
        + (
            "torch.cuda.max_memory_allocated"
            if device == "cuda"
            else "torch.profiler's CPU allocation records"
        )
        + "); details in "
        "bench_decoupled.py.",
        "",
        bench_decoupled.weights_note(weights),
        "",
        "| benchmark | comparison | time ratio | target | meets | memory ratio |",
        "|---|---|---:|---|---|---|",
    ]
    lines += [
        f"| {r['benchmark']} | {r['comparison']} | {r['time_ratio']} | {r['target']} | "
        f"{r['meets']} | {r['mem_ratio']} |"
        for r in rows
    ]
    lines += [
        "",
        "Loss fwd+bwd medians (ms): "
        + ", ".join(f"{r['loss']} {r['median_ms']:.3f}" for r in losses)
        + ".",
    ]
    if any(r["kernel_ms"] for r in losses):
        lines += [
            "",
            "Loss fwd+bwd GPU kernel time (ms, torch.profiler): "
            + ", ".join(f"{r['loss']} {r['kernel_ms']}" for r in losses)
            + ".",
        ]
    return rows, "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if bench_losses.torch.cuda.is_available() else "cpu",
    )
    parser.add_argument("--repeats", type=int, default=10, help="rounds of the loss benchmark")
    parser.add_argument("--iters", type=int, default=5, help="timed steps of the step benchmark")
    parser.add_argument(
        "--batch", type=int, default=0, help="images per step (0: 8 on cuda, 4 on cpu)"
    )
    parser.add_argument(
        "--lvis-scale", action="store_true", help="R50-FPN sizes for the step benchmark"
    )
    parser.add_argument(
        "--weights",
        default="auto",
        help="base model for the step benchmark (see bench_decoupled.py --weights)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: 1 on cpu, where a shared machine makes 2+ "
        "noisy; torch's default on cuda)",
    )
    args = parser.parse_args(argv)
    if args.threads or args.device == "cpu":
        bench_losses.torch.set_num_threads(args.threads or 1)
    batch = args.batch or (8 if args.device == "cuda" else 4)
    # The command with every setting the numbers depend on, defaults included.
    command = " ".join(
        [
            "python -m benchmarks.speed",
            "--device",
            args.device,
            "--repeats",
            str(args.repeats),
            "--iters",
            str(args.iters),
            "--batch",
            str(batch),
            "--threads",
            str(bench_losses.torch.get_num_threads()),
        ]
        + (["--lvis-scale"] if args.lvis_scale else [])
    )
    losses = bench_losses.run(args.device, args.repeats)
    weights = bench_decoupled.resolve_weights(args.weights, args.lvis_scale)
    steps = bench_decoupled.run(
        args.device, args.iters, batch, lvis_scale=args.lvis_scale, weights=weights
    )
    if weights:
        command += f" --weights {os.path.relpath(weights, os.path.dirname(HERE))}"
    machine = bench_losses.machine_info(args.device)
    rows, text = report(losses, steps, machine, args.device, weights, args.lvis_scale, command)
    os.makedirs(args.out, exist_ok=True)
    # A variant report (R50-FPN sizes, eager losses) sits beside the default one, never over it.
    base = os.path.join(
        args.out,
        f"speed_{args.device}"
        + ("_lvis_scale" if args.lvis_scale else "")
        + ("_eager" if os.environ.get("LTDET_TRITON") == "0" else ""),
    )
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
