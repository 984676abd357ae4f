"""benchmarks/speed.py and the loss benchmark it collects, at sizes a CI machine runs in seconds."""

import csv
import importlib

import pytest

from .markdown import tables
from .test_end_to_end import tiny_root  # noqa: F401 (fixture)

TINY_INPUT = [
    "MODEL.ROI_HEADS.NUM_CLASSES",
    8,
    "INPUT.MIN_SIZE_TRAIN",
    (64,),
    "INPUT.MAX_SIZE_TRAIN",
    64,
    "INPUT.RANDOM_FLIP",
    "none",
]


@pytest.fixture
def speed(monkeypatch):
    """speed.py with the loss benchmark shrunk to 2 x 64 RoIs and 20 classes."""
    mod = importlib.import_module("benchmarks.speed")
    for name, value in (("NUM_IMAGES", 2), ("PER_IMAGE", 64), ("NUM_CLASSES", 20), ("WARMUP", 0)):
        monkeypatch.setattr(mod.bench_losses, name, value)
    return mod


def test_loss_benchmark_rows(speed):
    rows = {r["loss"]: r for r in speed.bench_losses.run("cpu", 2)}
    assert set(rows) == set(speed.bench_losses.BASELINE)
    for name, base in speed.bench_losses.BASELINE.items():
        r = rows[name]
        assert r["median_ms"] > 0
        assert (r["ratio"] == "") == (base is None) and r["baseline"] == (base or "")
        if name in speed.bench_losses.TARGETED:
            assert r["meets_target"] == ("yes" if r["ratio"] <= speed.bench_losses.TARGET else "no")
        else:
            assert r["target"] == r["meets_target"] == ""
        assert r["kernel_ms"] == r["kernel_ratio"] == ""  # CPU: no GPU kernel time


def test_loss_ratios_are_loss_over_its_baseline(speed, monkeypatch):
    """With a fake clock each loss "takes" a set time: every ratio is loss / baseline."""
    import types

    import torch

    bl = speed.bench_losses
    cost = {
        "softmax": 2.0,
        "sigmoid": 3.0,
        "balanced_softmax": 2.2,
        "balanced_sigmoid": 6.0,
        "eql": 1.5,
        "federated": 3.0,
        "dbm": 4.0,
        "dbm_bs": 5.0,
    }
    clock = [0.0]
    leaf = torch.zeros(1, requires_grad=True)

    def case(name):
        def run():
            clock[0] += cost[name]
            return leaf.sum()

        return run

    monkeypatch.setattr(
        bl, "_make_case", lambda device: {**{n: case(n) for n in cost}, "_leaves": (leaf,)}
    )
    monkeypatch.setattr(bl, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    rows = {r["loss"]: r for r in bl.run("cpu", 3)}
    for name, base in bl.BASELINE.items():
        if base:
            assert rows[name]["ratio"] == round(cost[name] / cost[base], 3), name
    assert rows["balanced_softmax"]["meets_target"] == "yes"  # 1.1 <= 1.15
    assert rows["balanced_sigmoid"]["meets_target"] == "no"  # 2.0


def _loss_row(loss, base, ratio, kernel_ratio=""):
    return {
        "loss": loss,
        "baseline": base,
        "ratio": ratio,
        "target": "",
        "meets_target": "",
        "median_ms": 1.0,
        "kernel_ms": 0.5 if kernel_ratio else "",
        "kernel_ratio": kernel_ratio,
    }


def test_report_lists_gpu_kernel_ratios_only_when_measured(speed):
    step = {
        "comparison": "decoupled / stock",
        "time_ratio": 0.4,
        "time_target": "<= 0.6",
        "time_meets": "yes",
        "mem_ratio": 0.3,
        "mem_target": "<= 0.5",
        "mem_meets": "yes",
    }
    machine = {"cpu": "X", "cores": "2", "gpu": "Some GPU"}
    cpu_losses = [_loss_row("softmax", "", ""), _loss_row("sigmoid", "softmax", 1.5)]
    rows, text = speed.report(cpu_losses, [step], machine, "cpu", "", lvis_scale=False)
    assert [r["comparison"] for r in rows] == ["sigmoid / softmax", "decoupled / stock"]
    assert rows[0]["benchmark"] == "loss fwd+bwd (128 RoIs, K=20, 25% fg)"
    assert "GPU kernel" not in text and "gpu=Some GPU" in text
    assert rows[1]["mem_ratio"] == "0.3 (<= 0.5: yes)"
    (table,) = tables(text)
    assert [(t["comparison"], t["time ratio"]) for t in table] == [
        ("sigmoid / softmax", "1.5"),
        ("decoupled / stock", "0.4"),
    ]

    gpu_losses = [_loss_row("softmax", "", ""), _loss_row("sigmoid", "softmax", 1.5, 1.25)]
    rows, text = speed.report(gpu_losses, [step], machine, "cuda", "", lvis_scale=True)
    kernel = [r for r in rows if r["benchmark"] == "loss fwd+bwd, GPU kernel time only"]
    assert [(r["comparison"], r["time_ratio"]) for r in kernel] == [("sigmoid / softmax", 1.25)]
    assert rows[-1]["benchmark"] == "training step (R50-FPN sizes)"
    assert "--device cuda --lvis-scale" in text and "GPU kernel time (ms" in text


def test_main_writes_matching_markdown_and_csv(speed, tiny_root, tmp_path, monkeypatch):  # noqa: F811
    """The whole report, every step variant included, on the tiny synthetic set."""
    dec = speed.bench_decoupled
    monkeypatch.setattr(dec, "DATA_DIR", tiny_root / "ltdet_synthetic")
    real_load = dec._load_cfg

    def tiny_load(path, device, batch, lvis_scale):
        cfg = real_load(path, device, batch, lvis_scale)
        cfg.defrost()
        cfg.merge_from_list(TINY_INPUT)
        cfg.freeze()
        return cfg

    monkeypatch.setattr(dec, "_load_cfg", tiny_load)
    monkeypatch.setattr(dec, "WARMUP", 0)
    monkeypatch.setattr(dec, "CPU_MEMORY_STEPS", 1)
    speed.main(
        [
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--iters",
            "1",
            "--batch",
            "2",
            "--weights",
            "none",
            "--out",
            str(tmp_path),
        ]
    )

    text = (tmp_path / "speed_cpu.md").read_text()
    with open(tmp_path / "speed_cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (table,) = tables(text)
    assert [(t["comparison"], t["time ratio"]) for t in table] == [
        (r["comparison"], r["time_ratio"]) for r in rows
    ]
    steps = [r for r in rows if r["benchmark"] == "training step"]
    assert [r["comparison"] for r in steps] == [f"{n} / {d}" for n, d, *_ in dec.COMPARISONS]
    assert all(float(r["time_ratio"]) > 0 for r in rows)
    assert text.startswith("# Speed report (cpu)\n\nMachine: cpu=")
    # the command names every setting the numbers depend on
    assert (
        "python -m benchmarks.speed --device cpu --repeats 1 --iters 1 --batch 2 --threads 1`"
    ) in text
