"""The multi-seed accuracy benchmark runner (python -m benchmarks.longtail).

One real run (base model + softmax, tools/train_net.py subprocesses, 3 iterations on the tiny
synthetic set) checks the whole chain; caching, failures, skipped dependents and the
"not implemented" rows use an injected runner that writes what a run writes."""

import csv
import json
import math
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


import benchmarks.longtail as lt  # noqa: E402

# A paper method without an implementation yet: reported, never run.
PLANNED = lt.Method("planned", None, implemented=False, description="a method not built yet")

# tests/test_end_to_end.py tiny_cfg, with 3 iterations and a cheaper test-time head.
TINY_OPTS = [
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "8",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.MAX_ITER",
    "3",
    "SOLVER.STEPS",
    "(2,)",
    "SOLVER.WARMUP_ITERS",
    "0",
    "DATALOADER.NUM_WORKERS",
    "0",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
    "INPUT.RANDOM_FLIP",
    "none",
    "TEST.DETECTIONS_PER_IMAGE",
    "10",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "20",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    lt.prepare_data("tiny", str(root), data_root=str(root))
    return str(root)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class FakeRunner:
    """Writes the files of a finished train_net run (metrics with APf = -100 as on the tiny set,
    per-class csv) and of its scoring under the hard-negative protocol (1 AP lower), so the real
    scorer never runs; ``fail`` = method names or (name, seed) pairs that exit with code 1."""

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.calls = []

    def __call__(self, run):
        self.calls.append((run.name, run.seed))
        assert run.cmd[run.cmd.index("OUTPUT_DIR") + 1] == run.out_dir
        assert run.cmd[run.cmd.index("SEED") + 1] == str(run.seed)
        assert os.path.isdir(os.path.join(run.env["DETECTRON2_DATASETS"], "ltdet_synthetic"))
        if run.base_run is not None:
            weights = run.cmd[run.cmd.index("MODEL.WEIGHTS") + 1]
            assert weights == os.path.join(run.base_run.out_dir, "model_final.pth")
        if run.name in self.fail or (run.name, run.seed) in self.fail:
            with open(run.log_path, "w") as f:
                f.write(
                    "Traceback (most recent call last):\n"
                    "KeyError: 'unknown config key LTDET.NOPE'\n"
                )
            return 1
        for protocol, shift in (("lvis", 0.0), ("hardneg", -1.0)):
            os.makedirs(run.inference_dir(protocol))
            ap = 10.0 + 2 * run.seed + len(run.name) + shift
            task = {"AP": ap, "AP50": ap, "AP75": ap, "APr": ap - 5, "APc": ap + 1, "APf": -100.0}
            with open(run.protocol_metrics_path(protocol), "w") as f:
                json.dump({"bbox": dict(task, AP=ap + 3), "segm": task}, f)
            with open(run.protocol_per_class_path(protocol), "w") as f:
                f.write(
                    "class_id,name,frequency,train_image_count,train_instance_count,AP_bbox,"
                    "AP_segm\n"
                )
                for c, n in enumerate([30, 11, 4, 1, 30, 11, 4, 1]):
                    f.write(
                        f"{c},cls{c},{'c' if n > 10 else 'r'},{n},{n + 1},{ap:.2f},{ap + c:.2f}\n"
                    )
        open(os.path.join(run.out_dir, "model_final.pth"), "w").close()
        return 0


def test_real_tiny_run_and_cache(data_root, tmp_path):
    """Base + softmax for real (subprocesses), then a re-run that runs nothing."""
    out = str(tmp_path / "bench")
    methods = ["softmax", PLANNED]
    res = lt.run_benchmark(methods, [0], out, "tiny", TINY_OPTS, data_root=data_root)
    status = {r.name: r.status for r in res["runs"]}
    assert status == {"base_softmax_rfs": "ok", "softmax": "ok", "planned": "not implemented"}, [
        (r.name, r.reason, r.log_path) for r in res["runs"]
    ]
    for name in ("results.md", "results.csv", "groups.png", "per_class.png"):
        assert os.path.getsize(os.path.join(out, name)) > 200, name
    runs = {r.name: r for r in res["runs"]}
    softmax = runs["softmax"]
    assert os.path.isfile(softmax.per_class_path)
    # the decoupled run started from this seed's base model
    with open(os.path.join(softmax.out_dir, "config.yaml")) as f:
        text = f.read()
    assert os.path.join(runs["base_softmax_rfs"].out_dir, "model_final.pth") in text
    assert "SEED: 0" in text
    with open(os.path.join(softmax.out_dir, "log.txt")) as f:  # ltdet's own INFO lines too
        assert "Decoupled regime: training only ['roi_heads.box_predictor.cls_score" in f.read()
    rows = _read_csv(os.path.join(out, "results.csv"))
    assert [r["protocol"] for r in rows] == ["lvis"] * 3 + ["hardneg"] * 3
    rows = rows[:3]
    assert [(r["method"], r["status"]) for r in rows] == [
        ("base_softmax_rfs", "ok"),
        ("softmax", "ok"),
        ("planned", "not implemented"),
    ]
    assert rows[1]["segm_APf"] == ""  # the tiny set has no frequent class: LVIS -100 -> n/a
    assert float(rows[1]["segm_AP"]) >= 0.0
    md = open(os.path.join(out, "results.md")).read()
    assert "| planned |" in md and "not implemented" in md and "git commit:" in md

    done = os.path.join(softmax.out_dir, "done.json")
    mtime = os.path.getmtime(done)
    calls = []
    again = lt.run_benchmark(
        methods,
        [0],
        out,
        "tiny",
        TINY_OPTS,
        data_root=data_root,
        runner=lambda run: calls.append(run) or 1,
    )
    assert calls == []
    assert [r.status for r in again["runs"]] == ["cached", "cached", "not implemented"]
    assert os.path.getmtime(done) == mtime
    assert again["runs"][1].metrics == softmax.metrics


def test_real_run_is_scored_under_both_protocols_from_one_inference(data_root, tmp_path):
    """The run's model is evaluated once (LVIS protocol); the hard-negative metrics are lvis-api's
    on the very same detections file against the hard-negative json. A cached run that lacks
    them is scored again without training."""
    import pycocotools.mask as mask_util
    from lvis import LVIS, LVISEval, LVISResults

    out = str(tmp_path / "bench")
    res = lt.run_benchmark(["softmax"], [0], out, "tiny", TINY_OPTS, data_root=data_root)
    softmax = res["runs"][1]
    assert softmax.status == "ok" and set(softmax.all_metrics) == {"lvis", "hardneg"}
    with open(os.path.join(softmax.out_dir, "config.yaml")) as f:
        assert "TEST:\n  - ltdet_synthetic_val\n" in f.read()  # one inference pass
    assert not os.path.exists(
        os.path.join(softmax.inference_dir("hardneg"), "lvis_instances_results.json")
    )
    # Detections with known scores (a 3-iteration model scores AP 0 under any labels): every
    # object found with its class (0.5) and, ranked first, as its next family member (1.0).
    val_dir = os.path.join(data_root, "ltdet_synthetic")
    with open(os.path.join(val_dir, "lvis_synthetic_val.json")) as f:
        val = json.load(f)
    size = {im["id"]: (im["height"], im["width"]) for im in val["images"]}
    dets = []
    for a in val["annotations"]:
        c = a["category_id"]
        sibling = (c - 1) // 4 * 4 + 1 + c % 4
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], *size[a["image_id"]]))
        rle["counts"] = rle["counts"].decode()
        for cat, score in ((c, 0.5), (sibling, 1.0)):
            dets.append(
                dict(
                    image_id=a["image_id"],
                    category_id=cat,
                    bbox=a["bbox"],
                    score=score,
                    segmentation=rle,
                )
            )
    with open(softmax.detections_path, "w") as f:
        json.dump(dets, f)
    hardneg = softmax.protocol_metrics_path("hardneg")
    os.remove(hardneg)
    again = lt.run_benchmark(
        ["softmax"], [0], out, "tiny", TINY_OPTS, data_root=data_root, runner=lambda run: 1
    )
    assert [r.status for r in again["runs"]] == ["cached", "cached"]
    gt = LVIS(os.path.join(val_dir, "lvis_synthetic_val_hardneg.json"))
    got = again["runs"][1].all_metrics["hardneg"]
    for task in ("bbox", "segm"):
        ev = LVISEval(gt, LVISResults(gt, dets), task)
        ev.run()
        want = ev.get_results()
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
            v = want[k]
            if v == -1:  # lvis-api's "no such objects" is NaN in ltdet's metrics
                assert math.isnan(got[task][k]), (task, k)
            else:
                assert got[task][k] == pytest.approx(100 * v, abs=1e-6), (task, k)
    assert 0 < got["bbox"]["AP"] < 90  # the sibling false positives count here
    rows = _read_csv(os.path.join(out, "results.csv"))
    assert [(r["method"], r["protocol"]) for r in rows] == [
        ("base_softmax_rfs", "lvis"),
        ("softmax", "lvis"),
        ("base_softmax_rfs", "hardneg"),
        ("softmax", "hardneg"),
    ]

    # a scoring failure is the failure of that protocol's table only, and says why
    os.remove(hardneg)
    failed = lt.run_benchmark(
        ["softmax"],
        [0],
        out,
        "tiny",
        TINY_OPTS,
        data_root=data_root,
        runner=lambda run: 1,
        scorer=lambda run, protocol: 3,
    )
    sm = failed["runs"][1]
    assert sm.status == "cached" and "scoring the hardneg protocol failed (exit code 3" in sm.reason
    md = open(os.path.join(out, "results.md")).read()
    lvis_part, hard_part = md.split("## Per seed")[0].split("## Hard-negative stress test")
    assert "| softmax |" in lvis_part and "| 1/1 | ok |" in lvis_part
    assert "| softmax | — | — | — | — | — | 0/1 | failed (scoring the hardneg" in hard_part


def test_large_vocabulary_preset_plans_its_own_recipes(tmp_path):
    runs = lt.plan(["softmax", "eql"], [0], str(tmp_path), "lv", num_classes=224)
    configs = [r.cmd[r.cmd.index("--config-file") + 1] for r in runs]
    assert [os.path.relpath(c, REPO) for c in configs] == [
        "configs/synthetic_lv/base_softmax_rfs.yaml",
        "configs/synthetic_lv/base_sigmoid_rfs.yaml",
        "configs/synthetic_lv/decoupled/softmax.yaml",
        "configs/synthetic_lv/decoupled/eql.yaml",
    ]
    for r in runs:
        i = r.cmd.index("DATASETS.TEST")
        assert r.cmd[i + 1] == "('ltdet_synthetic_lv_val',)"
        assert r.inference_dir("hardneg").endswith("inference/ltdet_synthetic_lv_val_hardneg")
    # every method of the benchmark has an lv recipe
    for m in lt.KNOWN_METHODS.values():
        assert os.path.isfile(os.path.join(REPO, "configs", "synthetic_lv", m.config)), m.name


def test_failures_cache_and_not_implemented(data_root, tmp_path, capsys):
    out = str(tmp_path / "bench")
    broken = lt.Method(
        "broken",
        "decoupled/softmax.yaml",
        "softmax",
        ("LTDET.NOPE", "1"),
        description="config with an unknown key",
    )
    methods = ["softmax", "balanced_softmax", broken, PLANNED]
    runner = FakeRunner(fail={"broken"})
    res = lt.run_benchmark(
        methods, [0, 1], out, "tiny", TINY_OPTS, runner=runner, data_root=data_root
    )
    assert len(runner.calls) == 8  # (base + 3 methods) x 2 seeds; "planned" never runs
    status = {(r.name, r.seed): r.status for r in res["runs"]}
    assert status[("broken", 0)] == status[("broken", 1)] == "failed"
    assert status[("planned", 0)] == "not implemented"
    assert status[("balanced_softmax", 1)] == "ok"
    printed = capsys.readouterr().out
    assert "[1/8] seed 0 base_softmax_rfs ..." in printed
    assert "[6/8] seed 1 softmax ..." in printed and "left for" in printed  # ETA once runs finished
    assert "seed 0 broken: FAILED (exit code 1)" in printed

    failed = next(r for r in res["runs"] if r.name == "broken" and r.seed == 0)
    info = json.load(open(os.path.join(failed.out_dir, "failed.json")))
    assert info["returncode"] == 1 and "unknown config key" in info["log_tail"]
    assert "LTDET.NOPE" in failed.cmd

    rows = _read_csv(os.path.join(out, "results.csv"))
    assert len(rows) == 20 and {r["status"] for r in rows} == {"ok", "failed", "not implemented"}
    sm = [r for r in rows if r["method"] == "softmax"]
    assert [float(r["segm_AP"]) for r in sm] == [17.0, 19.0, 16.0, 18.0]
    assert [r["protocol"] for r in sm] == ["lvis", "lvis", "hardneg", "hardneg"]
    assert sm[0]["segm_APf"] == ""
    md = open(os.path.join(out, "results.md")).read()
    summary, hardneg = md.split("## Per seed")[0].split("## Hard-negative stress test")
    assert (
        "| softmax | 18.0 ± 1.4 | 13.0 ± 1.4 | 19.0 ± 1.4 | n/a | 21.0 ± 1.4 | 2/2 | ok |"
        in summary
    )
    assert summary.index("## LVIS's negative protocol") < summary.index("| softmax |")
    assert (
        "| softmax | 17.0 ± 1.4 | 12.0 ± 1.4 | 18.0 ± 1.4 | n/a | 20.0 ± 1.4 | 2/2 | ok |"
        in hardneg
    )
    assert "| broken | — | — | — | — | — | 0/2 | failed (exit code 1) |" in summary
    assert "| planned | — | — | — | — | — | 0/2 | not implemented |" in summary
    assert "| base_softmax_rfs |" in summary
    # the csv and every figure state the command and commit that the md's Reproduce names
    command = md.split("## Reproduce")[1].split("```")[1].strip()
    commit = md.split("* git commit: ")[1].splitlines()[0]
    assert command.startswith("run_benchmark(methods=") and commit  # called from Python
    assert {(r["command"], r["rendered_at_commit"]) for r in rows} == {(command, commit)}
    assert {r["trained_at_commit"] for r in rows if r["status"] == "ok"} == {lt.runs.git_commit()}
    assert {r["trained_at_commit"] for r in rows if r["status"] != "ok"} == {""}
    from PIL import Image

    for name in ("groups.png", "per_class.png", "groups_hardneg.png", "per_class_hardneg.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
        source = Image.open(os.path.join(out, name)).info["Description"]
        assert source == f"{command}  (rendered at {commit})", name
    assert lt.benchmark_data_root(out) == data_root  # what the diagnostics will evaluate on

    # Re-run: only the failed runs run again; then a changed override runs everything again.
    runner2 = FakeRunner()
    res2 = lt.run_benchmark(
        methods, [0, 1], out, "tiny", TINY_OPTS, runner=runner2, data_root=data_root
    )
    assert sorted(runner2.calls) == [("broken", 0), ("broken", 1)]
    status2 = {(r.name, r.seed): r.status for r in res2["runs"]}
    assert status2[("softmax", 1)] == "cached" and status2[("broken", 1)] == "ok"
    assert not os.path.exists(os.path.join(failed.out_dir, "failed.json"))
    runner3 = FakeRunner()
    lt.run_benchmark(
        ["softmax"],
        [0],
        out,
        "tiny",
        TINY_OPTS + ["SOLVER.BASE_LR", "0.01"],
        runner=runner3,
        data_root=data_root,
    )
    assert runner3.calls == [("base_softmax_rfs", 0), ("softmax", 0)]


def test_unreadable_or_partial_metrics_are_not_reported_as_complete(data_root, tmp_path):
    """A run whose lvis_metrics.json is broken failed (fresh) or is run again (cache); a metric
    some seeds lack is averaged over the others and the table says over how many."""
    out = str(tmp_path / "bench")

    class Runner(FakeRunner):
        def __call__(self, run):
            rc = super().__call__(run)
            if (run.name, run.seed) == ("softmax", 1):
                with open(run.metrics_path) as f:
                    text = f.read()
                with open(run.metrics_path, "w") as f:
                    f.write(text[: len(text) // 2])  # a half-written file
            if (run.name, run.seed) == ("balanced_softmax", 0):
                with open(run.metrics_path) as f:
                    metrics = json.load(f)
                del metrics["bbox"]
                with open(run.metrics_path, "w") as f:
                    json.dump(metrics, f)
            return rc

    res = lt.run_benchmark(
        ["softmax", "balanced_softmax"],
        [0, 1],
        out,
        "tiny",
        TINY_OPTS,
        runner=Runner(),
        data_root=data_root,
    )
    status = {(r.name, r.seed): (r.status, r.reason) for r in res["runs"]}
    assert status[("softmax", 1)] == ("failed", "exit code 0 but lvis_metrics.json unreadable")
    md = open(os.path.join(out, "results.md")).read().split("## Per seed")[0]
    assert "| softmax | 17.0 | 12.0 | 18.0 | n/a | 20.0 | 1/2 | 1/2 seeds ok; seed 1 failed |" in md
    # box AP of balanced_softmax from seed 1 only (10 + 2 + 16 + 3), said so
    assert (
        "| balanced_softmax | 27.0 ± 1.4 | 22.0 ± 1.4 | 28.0 ± 1.4 | n/a | 31.0 (1 seed) "
        "| 2/2 | ok |" in md
    )

    # A cached run whose metrics were damaged since is trained again, not reported as cached.
    sm0 = next(r for r in res["runs"] if (r.name, r.seed) == ("softmax", 0))
    with open(sm0.metrics_path, "w") as f:
        f.write("{")
    runner2 = FakeRunner()
    lt.run_benchmark(["softmax"], [0], out, "tiny", TINY_OPTS, runner=runner2, data_root=data_root)
    assert runner2.calls == [("softmax", 0)]


def test_failed_base_skips_its_methods(data_root, tmp_path):
    out = str(tmp_path / "bench")
    runner = FakeRunner(fail={("base_softmax_rfs", 1)})
    res = lt.run_benchmark(
        ["softmax", "sigmoid"], [0, 1], out, "tiny", TINY_OPTS, runner=runner, data_root=data_root
    )
    status = {(r.name, r.seed): (r.status, r.reason) for r in res["runs"]}
    assert status[("softmax", 1)] == ("skipped", "base base_softmax_rfs failed")
    assert status[("sigmoid", 1)][0] == "ok" and status[("softmax", 0)][0] == "ok"
    assert ("softmax", 1) not in runner.calls
    sigmoid = next(r for r in res["runs"] if r.name == "sigmoid")
    i = sigmoid.cmd.index("--config-file")
    assert sigmoid.cmd[i + 1].endswith("decoupled/sigmoid.yaml")
    assert "base_sigmoid_rfs" in sigmoid.base_run.out_dir
    md = open(os.path.join(out, "results.md")).read()
    assert "1/2 seeds ok; seed 1 skipped" in md
    assert "| softmax | 1 | — | — | — | — | — | skipped: base base_softmax_rfs failed |" in md

    # A re-trained base invalidates its methods' cache even though their config is unchanged.
    runner2 = FakeRunner()
    lt.run_benchmark(
        ["softmax"], [0, 1], out, "tiny", TINY_OPTS, runner=runner2, data_root=data_root
    )
    assert runner2.calls == [("base_softmax_rfs", 1), ("softmax", 1)]
    base0 = next(r for r in res["runs"] if r.name == "base_softmax_rfs" and r.seed == 0)
    os.remove(os.path.join(base0.out_dir, "done.json"))
    os.remove(base0.metrics_path)
    runner3 = FakeRunner()
    lt.run_benchmark(
        ["softmax"], [0, 1], out, "tiny", TINY_OPTS, runner=runner3, data_root=data_root
    )
    assert runner3.calls == [("base_softmax_rfs", 0), ("softmax", 0)]


def test_plan_hash_schedule_and_cli(data_root, tmp_path, capsys):
    cfg = os.path.join(REPO, "configs/synthetic/decoupled/balms.yaml")
    assert lt.scaled_schedule_opts(cfg, 1.0) == []
    assert lt.scaled_schedule_opts(cfg, 0.5) == [
        "SOLVER.MAX_ITER",
        "60",
        "SOLVER.STEPS",
        "(30,50,)",
        "SOLVER.WARMUP_ITERS",
        "0",
    ]
    # Rounding may merge steps or reach MAX_ITER; detectron2 must still build the schedule.
    assert lt.scaled_schedule_opts(cfg, 0.02)[:4] == [
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.STEPS",
        "(1,)",
    ]
    assert lt.scaled_schedule_opts(cfg, 0.01)[:4] == ["SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()"]
    from detectron2.config import get_cfg
    from detectron2.solver import build_lr_scheduler

    from ltdet.config import add_ltdet_config, merge_config

    for scale in (0.5, 0.02, 0.01):
        c = get_cfg()
        add_ltdet_config(c)
        c = merge_config(c, cfg, opts=lt.scaled_schedule_opts(cfg, scale))
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.SOLVER.BASE_LR)
        build_lr_scheduler(c, opt)
    # a smoke run of another preset keeps off the committed table
    results = os.path.join(lt.ROOT, "benchmarks", "results")
    assert lt.default_out() == os.path.join(results, "longtail")
    assert lt.default_out("tiny") == os.path.join(results, "longtail_tiny")
    assert lt.default_out("default", 0.1) == os.path.join(results, "longtail_custom")
    assert lt.default_out("tiny", 1.0, ["K", "V"]).endswith("longtail_tiny_custom")
    chain = [os.path.relpath(p, REPO) for p in lt.runs._config_chain(cfg)]
    assert chain[-1] == "configs/Base-LTDet-RCNN-FPN.yaml"  # the hash also covers files outside
    m = lt.KNOWN_METHODS["balms"]
    h = lt.config_hash(m, ["A", "1"], "tiny")
    assert h == lt.config_hash(m, ["A", "1"], "tiny")
    assert (
        len(
            {
                h,
                lt.config_hash(m, ["A", "2"], "tiny"),
                lt.config_hash(m, ["A", "1"], "default"),
                lt.config_hash(m, ["A", "1"], "tiny", base_hash="x"),
            }
        )
        == 4
    )

    runs = lt.plan(
        ["eql", "m2m", PLANNED],
        [3],
        str(tmp_path),
        "tiny",
        ["K", "V"],
        1.0,
        data_root,
        num_classes=8,
    )
    assert [(r.name, r.status) for r in runs] == [
        ("base_softmax_rfs", "planned"),
        ("base_sigmoid_rfs", "planned"),
        ("eql", "planned"),
        ("m2m", "planned"),
        ("planned", "not implemented"),
    ]
    assert runs[2].cmd[-8:] == [
        "K",
        "V",
        "SEED",
        "3",
        "OUTPUT_DIR",
        runs[2].out_dir,
        "MODEL.WEIGHTS",
        os.path.join(runs[1].out_dir, "model_final.pth"),
    ]
    assert os.path.basename(os.path.dirname(runs[2].out_dir)) == "seed3"
    with pytest.raises(ValueError, match="unknown method"):
        lt.plan(["nope"], [0], str(tmp_path))
    with pytest.raises(ValueError, match="KEY VALUE"):
        lt.plan(["softmax"], [0], str(tmp_path), extra_opts=["SOLVER.MAX_ITER"])
    with pytest.raises(ValueError, match="SEED"):
        lt.plan(["softmax"], [0], str(tmp_path), extra_opts=["SEED", "1"])

    assert (
        lt.main(
            [
                "--dry-run",
                "--preset",
                "tiny",
                "--seeds",
                "0",
                "--methods",
                "softmax",
                "m2m",
                "--out",
                str(tmp_path / "cli"),
                "--data-root",
                data_root,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "seed 0 softmax: to run" in printed and "seed 0 m2m: to run" in printed
    assert not os.path.exists(tmp_path / "cli" / "results.md")
    assert lt.main(["--list"]) == 0
    assert "m2m" in capsys.readouterr().out


def _fake_softmax_pair(seeds, out, data_root):
    """softmax and Balanced Softmax (and their base) on the tiny set, with the fake runner."""
    return lt.run_benchmark(
        ["softmax", "balanced_softmax"],
        seeds,
        out,
        "tiny",
        TINY_OPTS,
        runner=FakeRunner(),
        data_root=data_root,
    )


def test_estimate_counts_only_runs_left_to_train(data_root, tmp_path, capsys):
    out = str(tmp_path / "bench")
    _fake_softmax_pair([1], out, data_root)
    capsys.readouterr()
    _fake_softmax_pair([0, 1], out, data_root)
    printed = capsys.readouterr().out
    # seed 1 is cached: from the first run on, the estimate covers the 3 runs of seed 0 only
    first = next(ln for ln in printed.splitlines() if ln.startswith("[1/6]"))
    assert "seed 0 base_softmax_rfs ..." in first and "left for 3 runs)" in first, printed
    assert "[4/6] seed 1 base_softmax_rfs: cached" in printed


def test_estimate_takes_durations_from_other_seeds_in_the_cache(data_root, tmp_path, capsys):
    """Adding a seed: nothing of this invocation has finished yet, so the estimate comes from the
    same runs (method and hash) of the seed already in the cache."""
    out = str(tmp_path / "bench")
    runs = _fake_softmax_pair([1], out, data_root)
    seconds = {"base_softmax_rfs": 600.0, "softmax": 60.0, "balanced_softmax": 90.0}
    for run in runs["runs"]:
        path = os.path.join(run.out_dir, "done.json")
        done = json.load(open(path))
        done["duration_s"] = seconds[run.name]
        json.dump(done, open(path, "w"))
    capsys.readouterr()
    _fake_softmax_pair([0], out, data_root)
    printed = capsys.readouterr().out
    first = next(ln for ln in printed.splitlines() if ln.startswith("[1/3]"))
    assert "about 12 min 30 s left for 3 runs)" in first, printed  # 600 + 60 + 90


def test_git_commit_ignores_its_own_results_files(tmp_path, monkeypatch):
    """The runner rewrites its tracked results files after every run; that alone must not mark
    the recorded commit as having uncommitted changes, while a changed source file must."""
    import subprocess

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    monkeypatch.setattr(lt.runs, "ROOT", str(tmp_path))
    assert "uncommitted" not in lt.runs.git_commit(ignore=str(tmp_path / "results"))
    (tmp_path / "results" / "results.md").write_text("new\n")
    assert "uncommitted" in lt.runs.git_commit()
    assert "uncommitted" not in lt.runs.git_commit(ignore=str(tmp_path / "results" / "runs" / ".."))
    (tmp_path / "code.py").write_text("a = 2\n")
    assert "uncommitted" in lt.runs.git_commit(ignore=str(tmp_path / "results"))


def _run(name, seed, ap, apr, status="ok"):
    """A finished run with LVIS-protocol metrics only (its hard-negative scoring failed)."""
    method = lt.BASES["softmax"] if name == "base_softmax_rfs" else lt.KNOWN_METHODS[name]
    task = {"AP": ap, "APr": apr, "APc": ap, "APf": ap}
    metrics = {"segm": task, "bbox": task} if status == "ok" else None
    return lt.Run(
        method,
        seed,
        status=status,
        metrics=metrics,
        all_metrics={"lvis": metrics} if metrics else {},
        log_path=f"{name}.log",
    )


def test_paired_deltas_against_the_softmax_baseline(tmp_path):
    # Seed luck shared by every method of a seed (+-10 AP) cancels in the paired difference.
    runs = [_run("base_softmax_rfs", s, 50.0, 30.0) for s in (0, 1, 2)]
    runs += [
        _run("softmax", s, 50.0 + luck, 30.0 + luck) for s, luck in zip((0, 1, 2), (-10, 0, 10))
    ]
    runs += [
        _run("balanced_softmax", s, 49.5 + luck, 33.0 + luck + d)  # APr +3 +- 1, AP -0.5
        for s, luck, d in zip((0, 1, 2), (-10, 0, 10), (-1, 0, 1))
    ]
    runs += [
        _run("sigmoid", s, 47.0 + luck, 31.0 + luck) for s, luck in zip((0, 1, 2), (-10, 0, 10))
    ]
    runs += [
        _run("balanced_sigmoid", s, 46.0 + luck, 29.0 + luck)
        for s, luck in zip((0, 1, 2), (-10, 0, 10))
    ]
    runs += [_run("m2m", s, 50.0 + luck, 30.04 + luck) for s, luck in zip((0, 1, 2), (-10, 0, 10))]
    runs += [
        _run("dbm_bs", 0, 60.0, 40.0),
        _run("dbm_bs", 1, 0, 0, status="failed"),
        _run("dbm_bs", 2, 56.0, 35.0),
    ]
    rows = {d["method"]: d for d in lt.paired_deltas(runs)}
    assert set(rows) == {
        "balanced_softmax",
        "sigmoid",
        "balanced_sigmoid",
        "m2m",
        "dbm_bs",
    }  # no base/baseline
    bs = rows["balanced_softmax"]
    assert bs["stats"]["mask AP"] == pytest.approx((-0.5, 0.0))
    assert bs["stats"]["APr"] == pytest.approx((3.0, 1.0))  # unpaired std would be ~10
    assert bs["apr_up"] == 3 and bs["seeds"] == 3 and bs["holds"]
    assert not rows["sigmoid"]["holds"]  # APr +1 but AP -3
    assert rows["m2m"]["apr_up"] == 3 and not rows["m2m"]["holds"]  # +0.04 shows as +0.0: a tie
    dbm = rows["dbm_bs"]  # paired only where both ran: seed 0 (+20, +20), seed 2 (-4, -5)
    assert dbm["seeds"] == 2 and dbm["stats"]["mask AP"][0] == pytest.approx(8.0)
    assert dbm["stats"]["APr"][0] == pytest.approx(7.5) and dbm["apr_up"] == 1

    paths = lt.write_results(runs, str(tmp_path), "cmd", {"preset": "default"}, plots=False)
    md = open(paths["md"]).read()
    section = md.split("paired by seed")[1].split("## Per seed")[0]
    assert (
        "| balanced_softmax | -0.5 ± 0.0 | +3.0 ± 1.0 | -0.5 ± 0.0 | -0.5 ± 0.0 | -0.5 ± 0.0 "
        "| 3/3 seeds | yes |" in section
    )
    assert "| sigmoid | -3.0 ± 0.0 | +1.0 ± 0.0 |" in section and section.count("| no |") == 3
    # The sigmoid-base methods also against plain sigmoid from the same base; no others there.
    section = md.split("sigmoid re-training baseline, paired by seed")[1].split("\n## ")[0]
    assert "| balanced_sigmoid | -1.0 ± 0.0 | -2.0 ± 0.0 |" in section
    assert "balanced_softmax" not in section and "dbm_bs" not in section
    # Without hard-negative metrics (scoring failed) that protocol's table says so.
    hardneg = md.split("## Hard-negative stress test")[1].split("\n## ")[0]
    assert "| softmax | — | — | — | — | — | 0/3 | failed (no hardneg metrics) |" in hardneg


def test_variants_are_paired_with_their_counterpart(tmp_path):
    # sigmoid from the softmax base's classifier against sigmoid from the sigmoid base, by seed
    runs = [_run("softmax", s, 50.0, 30.0) for s in (0, 1)]
    runs += [_run("sigmoid", s, 47.0 + 5 * s, 31.0 + 5 * s) for s in (0, 1)]
    runs += [_run("sigmoid_from_softmax", s, 46.0 + 5 * s, 33.0 + 6 * s) for s in (0, 1)]
    rows = {(d["method"], d["against"]): d for d in lt.paired_deltas(runs, baseline=None)}
    assert list(rows) == [("sigmoid_from_softmax", "sigmoid")]
    d = rows[("sigmoid_from_softmax", "sigmoid")]
    assert d["stats"]["mask AP"] == pytest.approx((-1.0, 0.0))
    assert d["stats"]["APr"] == pytest.approx((2.5, 0.5**0.5))  # +2, +3
    md = open(lt.write_results(runs, str(tmp_path), "cmd", {}, plots=False)["md"]).read()
    section = md.split("variants against the method they vary")[1].split("\n## ")[0]
    assert "| sigmoid_from_softmax | sigmoid | -1.0 ± 0.0 | +2.5 ± 0.7 |" in section


def test_estimate_uses_the_closest_finished_runs():
    def run(name, seconds=None):
        method = lt.BASES["softmax"] if name == "base_softmax_rfs" else lt.KNOWN_METHODS[name]
        return lt.Run(method, 0, duration_s=seconds)

    fresh = [run("base_softmax_rfs", 500.0)]  # only a base has finished in this invocation
    cached = [run("softmax", 80.0), run("balms", 120.0), run("base_softmax_rfs", 400.0)]
    left = [run("base_softmax_rfs"), run("softmax"), run("balms"), run("sigmoid")]
    # base: this invocation's 500; softmax / balms: their cached 80 / 120; sigmoid, never run:
    # the cached fine-tunes' mean 100, not the fresh base's 500.
    assert lt.runs._estimate(left, fresh, cached) == pytest.approx(500 + 80 + 120 + 100)
    assert lt.runs._estimate(left, [], []) is None
    assert lt.runs._estimate([run("sigmoid")], fresh, []) == pytest.approx(
        500
    )  # only any-kind known


def test_per_class_dodge_never_crosses_a_group_line():
    assert lt.plots._within_group(10, 10.3) == 10.3
    assert 10 < lt.plots._within_group(10, 10.9) < 10.5  # a rare class stays left of the rare line
    assert 10.5 < lt.plots._within_group(11, 10.2) < 11  # a common one right of it
    assert 100.5 < lt.plots._within_group(105, 95.0) < 105
    assert lt.plots._within_group(240, 250.0) == 250.0  # frequent: no upper edge


def test_diagnostics_find_the_data_root_the_table_was_made_with(tmp_path):
    """inference_shift.py / false_positives.py default to the set the table in --out records
    (a path with ", " in it included), else to where the benchmark puts the recorded preset's."""

    def table(settings):
        out = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        (out / "results.md").write_text(f"# x\n\n* settings: {settings}\n* written: now\n")
        return str(out)

    odd = tmp_path / "data, odd"
    odd.mkdir()
    out = table(f"preset=tiny, seeds=0, iters_scale=1.0, extra_opts=none, data_root={odd}")
    assert lt.benchmark_data_root(out) == str(odd)
    gone = str(tmp_path / "moved")
    out = table(f"preset=tiny, seeds=0, iters_scale=1.0, extra_opts=none, data_root={gone}")
    assert lt.benchmark_data_root(out) == os.path.join(out, "datasets", "tiny")
    out = table(f"preset=default, seeds=0, iters_scale=1.0, extra_opts=none, data_root={gone}")
    assert lt.benchmark_data_root(out) == lt.default_data_root()
    assert lt.benchmark_data_root(str(tmp_path / "no_table")) == lt.default_data_root()
    assert os.path.isabs(lt.default_data_root())
