"""Forward+backward cost of the ltdet classification losses at LVIS scale.

16 images x 512 proposals = 8192 proposals, K = 1203 classes, 25% foreground.  Each loss is timed
as a ratio to its plain counterpart measured in the same run (rounds are interleaved so drift in
machine load hits every loss alike).  Target: balanced losses <= 1.15x their plain loss.

    python -m benchmarks.bench_losses [--device cpu|cuda] [--repeats R] [--out DIR]
"""

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from ltdet.modeling import losses as L
from ltdet.modeling.loss_registry import get_loss

NUM_IMAGES, PER_IMAGE, NUM_CLASSES, FG_FRACTION = 16, 512, 1203, 0.25
NUM_TRAIN_IMAGES = 100170  # LVIS v1 train
TARGET = 1.15
WARMUP = 3
# loss -> plain counterpart its cost is compared with (None: it is the reference)
BASELINE = {
    "softmax": None,
    "sigmoid": "softmax",
    "balanced_softmax": "softmax",
    "balanced_sigmoid": "sigmoid",
    "eql": "sigmoid",
    "federated": "sigmoid",
    "dbm": "softmax",
    "dbm_bs": "softmax",
}
TARGETED = ("balanced_softmax", "balanced_sigmoid")


def _make_case(device: str, seed: int = 0) -> Dict[str, Callable[[], torch.Tensor]]:
    """Random LVIS-scale inputs; returns loss name -> closure computing that loss."""
    g = torch.Generator().manual_seed(seed)
    n, k = NUM_IMAGES * PER_IMAGE, NUM_CLASSES
    # Long-tailed image counts (Zipf-like, every class seen at least once), in random class order.
    ranks = torch.randperm(k, generator=g).double() + 1
    counts = torch.ceil(0.5 * NUM_TRAIN_IMAGES * ranks**-1.5)
    # Foreground labels drawn by frequency, as in real batches; the rest background (= K).
    gt = torch.full((n,), k, dtype=torch.long)
    num_fg = int(FG_FRACTION * n)
    gt[:num_fg] = torch.multinomial(counts, num_fg, replacement=True, generator=g)
    gt = gt[torch.randperm(n, generator=g)].to(device)

    logits_softmax = torch.randn(n, k + 1, generator=g).to(device).requires_grad_()
    logits_sigmoid = torch.randn(n, k, generator=g).to(device).requires_grad_()
    stats = {
        "log_prior": L.softmax_log_prior(counts).float().to(device),
        "log_prior_odds": L.sigmoid_log_prior_odds(counts, NUM_TRAIN_IMAGES).float().to(device),
        "class_freq": L.image_frequency(counts, NUM_TRAIN_IMAGES).float().to(device),
        "fed_weight": counts.sqrt().float().to(device),
        "class_margin": L.dbm_class_margins(counts).float().to(device),
        "cb_weight": L.effective_number_weights(counts).float().to(device),
    }
    fed_gen = torch.Generator(device=device).manual_seed(seed)
    cases = {}
    # DBM takes cosine similarities (a leaf of its own, so every round has a fresh graph)
    cosines = (torch.rand(n, k + 1, generator=g) * 2 - 1).to(device).requires_grad_()
    for name in BASELINE:
        loss = get_loss(name)
        logits = logits_softmax if loss.family.background else logits_sigmoid
        kwargs = {"generator": fed_gen} if name == "federated" else {}
        if loss.family.scaled:
            logits = cosines
            kwargs = {"scale": 30.0}
        cases[name] = lambda loss=loss, logits=logits, kwargs=kwargs: loss(
            logits, gt, stats, **kwargs
        )
    cases["_leaves"] = (logits_softmax, logits_sigmoid, cosines)
    return cases


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(device: str, repeats: int) -> List[dict]:
    """Time forward+backward of every loss; one dict per loss with its ratio to the baseline.

    Every round times each loss once, in an order rotated per round; the ratio is the median of
    the per-round ratios, so a load change on a shared machine hits both sides of a ratio alike.
    """
    cases = _make_case(device)
    leaves = cases.pop("_leaves")
    names = list(cases)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_idx in range(WARMUP + repeats):
        shift = round_idx % len(names)
        for name in names[shift:] + names[:shift]:
            for leaf in leaves:
                leaf.grad = None
            _sync(device)
            start = time.perf_counter()
            cases[name]().backward()
            _sync(device)
            if round_idx >= WARMUP:
                times[name].append(time.perf_counter() - start)
    kernel_ms = _kernel_ms(cases, leaves, names) if device.startswith("cuda") else {}
    rows = []
    for name, base in BASELINE.items():
        ratio = statistics.median(t / b for t, b in zip(times[name], times[base])) if base else None
        rows.append(
            {
                "loss": name,
                "median_ms": round(1e3 * statistics.median(times[name]), 3),
                "baseline": base or "",
                "ratio": round(ratio, 3) if ratio is not None else "",
                "target": f"<= {TARGET}" if name in TARGETED else "",
                "meets_target": ("yes" if ratio <= TARGET else "no") if name in TARGETED else "",
                "kernel_ms": round(kernel_ms[name], 4) if name in kernel_ms else "",
                "kernel_ratio": (
                    round(kernel_ms[name] / kernel_ms[base], 3)
                    if base and name in kernel_ms and base in kernel_ms
                    else ""
                ),
            }
        )
    return rows


def _kernel_ms(
    cases: Dict[str, Callable[[], torch.Tensor]], leaves, names: List[str], rounds: int = 10
) -> Dict[str, float]:
    """GPU kernel time per forward+backward (torch.profiler's CUPTI records), i.e. without the
    host's dispatch and launch time, which the wall-clock medians include and which dominates
    at this size on a fast GPU.  Empty if the profiler cannot trace kernels here."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    try:
        for name in names:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(rounds):
                    for leaf in leaves:
                        leaf.grad = None
                    cases[name]().backward()
                torch.cuda.synchronize()
            total_us = sum(
                getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
                for e in prof.key_averages()
            )
            if total_us > 0:
                out[name] = total_us / rounds / 1e3
    except Exception as exc:  # profiler unavailable (no CUPTI): wall-clock numbers only
        print(f"kernel time not measured: {exc}", file=sys.stderr)
        return {}
    return out


def machine_info(device: str) -> Dict[str, str]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    info = {
        "cpu": cpu or "unknown",
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        from ltdet.modeling import fused_kernels  # LTDET_TRITON=0 times the eager path

        info["triton_kernels"] = (
            "off (LTDET_TRITON=0)"
            if os.environ.get("LTDET_TRITON") == "0"
            else "on"
            if fused_kernels.ENABLED
            else "off (no triton)"
        )
    return info


def to_markdown(rows: List[dict], device: str, repeats: int, info: Dict[str, str]) -> str:
    lines = [
        f"# Classification loss cost ({device})",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        f"Forward+backward, {NUM_IMAGES} images x {PER_IMAGE} proposals = "
        f"{NUM_IMAGES * PER_IMAGE} proposals, K = {NUM_CLASSES}, {FG_FRACTION:.0%} foreground; "
        f"median of {repeats} interleaved repeats after {WARMUP} warm-up rounds; "
        "ratio = median of per-round ratios to the plain loss.",
        f"Target: balanced losses <= {TARGET}x their plain counterpart.",
        "",
        "Kernel ms / ratio (GPU only): the GPU's own time for the same forward+backward "
        "(torch.profiler), without host dispatch and launch overhead.",
        "",
        "| loss | median ms | vs | ratio | target | meets | kernel ms | kernel ratio |",
        "|---|---:|---|---:|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['loss']} | {r['median_ms']:.2f} | {r['baseline']} | {r['ratio']} | "
            f"{r['target']} | {r['meets_target']} | {r['kernel_ms']} | "
            f"{r['kernel_ratio']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 cpu, 50 cuda")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    repeats = args.repeats or (50 if args.device == "cuda" else 10)

    rows = run(args.device, repeats)
    info = machine_info(args.device)
    table = to_markdown(rows, args.device, repeats, info)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"losses_{args.device}" + ("_eager" if os.environ.get("LTDET_TRITON") == "0" else "")
    (out / f"{name}.md").write_text(table)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], *info])
        writer.writeheader()
        writer.writerows({**row, **info} for row in rows)
    print(f"wrote {out}/{name}.md and .csv")


if __name__ == "__main__":
    main()
