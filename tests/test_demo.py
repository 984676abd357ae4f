"""tools/demo.py (the README's main job), in its --quick form on the real synthetic set."""

import json
import os
import subprocess
import sys

from tests.markdown import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ["base_softmax_rfs", "decoupled_softmax", "decoupled_balanced_softmax", "decoupled_balms"]


def test_quick_demo_seeds_every_run_and_tabulates_their_metrics(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "demo.py"),
            "--quick",
            "--seed",
            "7",
            "--output",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # two tables of the same runs: LVIS's negative protocol (the headline) first, then the hard
    # negatives
    found = tables(open(out / "results.md").read())
    assert len(found) == 2
    for dataset, rows in zip(["ltdet_synthetic_val", "ltdet_synthetic_val_hardneg"], found):
        assert [r["run"] for r in rows] == RUNS
        for run, row in zip(RUNS, rows):
            m = json.load(open(out / run / "inference" / dataset / "lvis_metrics.json"))
            want = [m["segm"][k] for k in ("AP", "APr", "APc", "APf")] + [m["bbox"]["AP"]]
            cells = [row[c] for c in ("mask AP", "APr", "APc", "APf", "box AP")]
            assert cells == [f"{v:.1f}" if v >= 0 else "n/a" for v in want]
    for run in RUNS:
        # the seed reaches every run (so the full demo's table is reproducible) ...
        config = open(out / run / "config.yaml").read()
        assert "\nSEED: 7\n" in config
        # ... and every fine-tuning starts from this demo's own base model
        if run != "base_softmax_rfs":
            assert f"  WEIGHTS: {out / 'base_softmax_rfs' / 'model_final.pth'}\n" in config
    assert "LVIS AP on the synthetic val split" in proc.stdout
