"""Helpers of the decoupled-step benchmark (benchmarks/bench_decoupled.py)."""

import importlib

import pytest
import torch


def load_bench():
    return importlib.import_module("benchmarks.bench_decoupled")


def test_cpu_step_peak_counts_live_tensors():
    bench = load_bench()
    keep = []

    def step():
        a = torch.empty(1_000_000)  # 4 MB held
        b = torch.empty(2_000_000)  # 12 MB held: the peak
        del a, b  # 0
        c = torch.empty(500_000)  # 2 MB
        keep.append(torch.empty(250_000))  # 3 MB, outlives the step
        del c

    peak = bench.cpu_step_peak(step)
    assert 12_000_000 <= peak < 12_000_000 + 4096, peak
    # a step that allocates nothing new on top of what exists peaks at ~0
    assert bench.cpu_step_peak(lambda: keep[0].add_(1)) < 4096


def test_resolve_weights(tmp_path):
    bench = load_bench()
    assert bench.resolve_weights("none", lvis_scale=False) == ""
    # auto never hands the synthetic base to the ResNet-50 sizes
    assert bench.resolve_weights("auto", lvis_scale=True) == ""
    auto = bench.resolve_weights("auto", lvis_scale=False)
    assert auto == (str(bench.DEMO_BASE) if bench.DEMO_BASE.is_file() else "")
    ckpt = tmp_path / "base.pth"
    ckpt.write_bytes(b"x")
    assert bench.resolve_weights(str(ckpt), lvis_scale=False) == str(ckpt)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        bench.resolve_weights(str(tmp_path / "missing.pth"), lvis_scale=False)
