"""A run's outputs are never silently replaced (issue 25): resume checks the recipe, refused
start-ups leave OUTPUT_DIR as it was, a diverged run names the last good checkpoint, checkpoints
are written atomically, and crowd annotations are never counted as instances."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from ltdet.checkpoint import (
    FINGERPRINT,
    config_fingerprint,
    fingerprint_differences,
)
from ltdet.data.class_stats import class_stats, clear_class_stats
from ltdet.data.lvis_format import load_lvis_format_json, lvis_eval_problems, register_lvis_format
from ltdet.data.samplers import class_balanced_repeat_factors
from ltdet.engine import Trainer
from ltdet.engine.decoupled import DecoupledTrainStep
from ltdet.engine.divergence import LossGrowthHook, TrainingDiverged

from .conftest import handmade, write_lvis_json  # noqa: F401 (fixture)
from .test_end_to_end import REPO, _train_net, base_model, tiny_cfg, tiny_root, train  # noqa: F401


def _decoupled(base_dir, out, config="balanced_softmax", *opts):
    return tiny_cfg(
        out,
        f"configs/synthetic/decoupled/{config}.yaml",
        "MODEL.WEIGHTS",
        str(base_dir / "model_final.pth"),
        "SOLVER.MAX_ITER",
        2,
        "SOLVER.STEPS",
        (),
        "SOLVER.WARMUP_ITERS",
        0,
        "DATASETS.TEST",
        (),
        *opts,
    )


def _decoupled_argv(base_dir, out, config="balanced_softmax", *opts):
    return [
        "--config-file",
        os.path.join(REPO, f"configs/synthetic/decoupled/{config}.yaml"),
        "MODEL.ROI_HEADS.NUM_CLASSES",
        8,
        "SOLVER.IMS_PER_BATCH",
        4,
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_ITERS",
        0,
        "DATALOADER.NUM_WORKERS",
        0,
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        64,
        "INPUT.RANDOM_FLIP",
        "none",
        "DATASETS.TEST",
        "()",
        "MODEL.WEIGHTS",
        str(base_dir / "model_final.pth"),
        "OUTPUT_DIR",
        str(out),
        "SEED",
        1,
        *opts,
    ]


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_fingerprint_holds_the_recipe_not_the_schedule(tiny_root, tmp_path):  # noqa: F811
    cfg = tiny_cfg(tmp_path, "configs/synthetic/decoupled/balanced_softmax.yaml")
    fp = config_fingerprint(cfg)
    assert fp["LTDET.LOSS.NAME"] == "balanced_softmax"
    assert fp["LTDET.DECOUPLED.ENABLED"] is True
    assert fp["MODEL.ROI_HEADS.NUM_CLASSES"] == 8
    assert fp["INPUT.MIN_SIZE_TRAIN"] == [64]  # tuples and yaml lists compare equal
    assert fp["DATASETS.TRAIN"] == list(cfg.DATASETS.TRAIN)
    assert fp["DATALOADER.SAMPLER_TRAIN"] == cfg.DATALOADER.SAMPLER_TRAIN
    for key in (
        "MODEL.WEIGHTS",
        "MODEL.DEVICE",
        "OUTPUT_DIR",
        "SEED",
        "SOLVER.MAX_ITER",
        "SOLVER.BASE_LR",
        "SOLVER.STEPS",
        "TEST.EVAL_PERIOD",
        "LTDET.EVAL.PER_CLASS",
        "LTDET.META.LOG_PERIOD",
        "LTDET.DECOUPLED.TRUNK_CHUNK",
        "DATALOADER.NUM_WORKERS",
        "SOLVER.CHECKPOINT_PERIOD",
    ):
        assert key not in fp, key
    other = dict(fp, **{"LTDET.LOSS.NAME": "softmax"})
    other.pop("INPUT.FORMAT")  # a key only one side knows is no difference
    assert fingerprint_differences(fp, other) == [
        ("LTDET.LOSS.NAME", "balanced_softmax", "softmax")
    ]


def test_resume_refuses_another_recipe_and_allows_a_longer_schedule(base_model, tmp_path, caplog):
    """The issue's case: a Balanced Softmax fine-tune resumed with the softmax config continued
    silently with the other loss. Now refused, naming the key, both values and the fix; a longer
    schedule resumes; the override flag resumes with a warning; a checkpoint from before the
    fingerprint resumes with a warning."""
    base_dir, _ = base_model
    out = tmp_path / "bs"
    train(_decoupled(base_dir, out))
    assert (
        torch.load(out / "model_final.pth", weights_only=False)[FINGERPRINT]["LTDET.LOSS.NAME"]
        == "balanced_softmax"
    )
    trainer = Trainer(_decoupled(base_dir, out, "softmax"))
    with pytest.raises(
        ValueError,
        match=r"LTDET.LOSS.NAME: checkpoint 'balanced_softmax', "
        r"config 'softmax'.*new OUTPUT_DIR.*--resume-changed-config",
    ):
        trainer.resume_or_load(resume=True)
    # a longer schedule and another seed are not the recipe
    longer, _ = train(
        _decoupled(base_dir, out, "balanced_softmax", "SOLVER.MAX_ITER", 3, "SEED", 5), resume=True
    )
    assert longer.start_iter == 2 and longer.iter == 3  # trained iteration 2 only
    with caplog.at_level(logging.WARNING, logger="ltdet.checkpoint"):
        Trainer(_decoupled(base_dir, out, "softmax")).resume_or_load(
            resume=True, changed_config_ok=True
        )
    assert "resuming" in caplog.text and "LTDET.LOSS.NAME" in caplog.text
    # written before ltdet stored fingerprints
    state = torch.load(out / "model_final.pth", weights_only=False)
    del state[FINGERPRINT]
    torch.save(state, out / "model_final.pth")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ltdet.checkpoint"):
        Trainer(_decoupled(base_dir, out, "softmax")).resume_or_load(resume=True)
    assert "records no config fingerprint" in caplog.text


def test_refused_resume_leaves_output_dir_as_it_was(tiny_root, base_model, tmp_path):  # noqa: F811
    """tools/train_net.py --resume with the base recipe over a decoupled run's folder: refused
    (it used to end in torch's bare "different number of parameter groups") before
    default_setup rewrites config.yaml or anything is logged to log.txt."""
    base_dir, _ = base_model
    out = tmp_path / "bs"
    train(_decoupled(base_dir, out))
    (out / "config.yaml").write_text("the previous run's config\n")
    (out / "log.txt").write_text("the previous run's log\n")
    before = _snapshot(out)
    argv = _decoupled_argv(base_dir, out)
    argv[1] = os.path.join(REPO, "configs/synthetic/base_softmax_rfs.yaml")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tiny_root), PYTHONPATH=REPO)
    run = subprocess.run(
        [sys.executable, "tools/train_net.py", "--resume", *map(str, argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0
    assert "LTDET.DECOUPLED.ENABLED: checkpoint True, config False" in run.stderr
    assert "Full config saved" not in run.stdout + run.stderr  # refused before default_setup
    assert _snapshot(out) == before
    # a checkpoint from before the fingerprint: resumed with a warning, then refused after
    # default_setup (by the checkpoint's optimizer state): config.yaml is put back
    state = torch.load(out / "model_final.pth", weights_only=False)
    del state[FINGERPRINT]
    torch.save(state, out / "model_final.pth")
    before = _snapshot(out)
    run = subprocess.run(
        [sys.executable, "tools/train_net.py", "--resume", *map(str, argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0 and "records no config fingerprint" in run.stderr
    assert "Full config saved" in run.stdout + run.stderr  # default_setup had replaced it
    after = _snapshot(out)
    assert after["config.yaml"] == before["config.yaml"]
    assert after["model_final.pth"] == before["model_final.pth"]
    assert after["log.txt"].startswith(before["log.txt"])  # appended to, never replaced


def test_checkpoints_are_written_atomically(base_model, tmp_path, monkeypatch):
    """While a checkpoint (model_final.pth too) is being written, its final name holds the
    previous complete file and last_checkpoint still names the previous checkpoint; a write that
    fails leaves both as they were."""
    base_dir, _ = base_model
    out = tmp_path / "run"
    trainer, _ = train(_decoupled(base_dir, out))
    final = out / "model_final.pth"
    old = final.read_bytes()
    seen = []
    real_save = torch.save

    def save(data, f):
        seen.append(
            (
                final.read_bytes() == old,
                (out / "last_checkpoint").read_text(),
                getattr(f, "name", None),
            )
        )
        real_save(data, f)
        raise OSError("disk full")  # after writing the temporary file

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="disk full"):
        trainer.checkpointer.save("model_final")
    assert seen == [(True, "model_final.pth", seen[0][2])] and seen[0][2] != str(final)
    assert final.read_bytes() == old
    assert sorted(os.listdir(out)) == sorted(
        ["model_final.pth", "last_checkpoint", "metrics.json"]
        + [n for n in os.listdir(out) if n.startswith("events.")]
    )


def test_non_finite_weights_are_not_saved(base_model, tmp_path):
    base_dir, _ = base_model
    out = tmp_path / "run"
    trainer, _ = train(_decoupled(base_dir, out, "balanced_softmax", "SOLVER.CHECKPOINT_PERIOD", 1))
    with torch.no_grad():
        trainer.model.roi_heads.box_predictor.cls_score.weight[0, 0] = float("nan")
    trainer.checkpointer.save("model_0000009")
    assert not (out / "model_0000009.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


def _nan_at(iteration, monkeypatch):
    real = DecoupledTrainStep._train_loss

    def loss(self, scores, gt, weights):
        value = real(self, scores, gt, weights)
        return value * float("nan") if self.iter == iteration else value

    monkeypatch.setattr(DecoupledTrainStep, "_train_loss", loss)


def test_divergence_names_iteration_lr_last_good_checkpoint_and_command(
    base_model, tmp_path, monkeypatch
):
    """detectron2 stops a NaN run with the iteration only; the error now also gives the learning
    rate there, the last finite checkpoint and the exact command to resume with a lower one."""
    base_dir, _ = base_model
    out = tmp_path / "nan"
    _nan_at(3, monkeypatch)
    argv = _decoupled_argv(
        base_dir,
        out,
        "balanced_softmax",
        "SOLVER.MAX_ITER",
        6,
        "SOLVER.CHECKPOINT_PERIOD",
        2,
        "SOLVER.BASE_LR",
        0.5,
        "SOLVER.STEPS",
        "(2,)",
    )
    with pytest.raises(TrainingDiverged) as info:
        _train_net(*argv)
    msg = str(info.value)
    # iteration 3 runs after the step at 2: lr 0.5 * GAMMA 0.1
    assert "at iteration 3, learning rate 0.05 (SOLVER.BASE_LR 0.5)" in msg
    assert f"last finite checkpoint is {out / 'model_0000001.pth'}" in msg
    assert "--resume" in msg and msg.endswith("SOLVER.BASE_LR 0.05")
    assert "SOLVER.BASE_LR 0.5 " not in msg.split("resume from it")[1]
    assert isinstance(info.value, FloatingPointError)
    assert info.value.checkpoint == str(out / "model_0000001.pth")


def test_loss_growth_warns_once_per_order_of_magnitude(caplog):
    class FakeTrainer:
        pass

    hook, trainer = LossGrowthHook(window=4, factor=100.0), FakeTrainer()
    hook.trainer = trainer
    losses = [1.0] * 4 + [50.0] * 4 + [150.0] * 6 + [2000.0] * 4
    warnings = []
    with (
        EventStorage() as storage,
        caplog.at_level(logging.WARNING, logger="ltdet.engine.divergence"),
    ):
        trainer.storage = storage
        for it, loss in enumerate(losses):
            storage.iter = it
            storage.put_scalar("total_loss", loss)
            storage.put_scalar("lr", 0.1)
            trainer.iter = it
            caplog.clear()
            hook.after_step()
            hook.after_step()  # a second call in the same iteration reads nothing new
            if caplog.records:
                warnings.append((it, caplog.records[0].getMessage()))
    # the first loss is 1; the last 4 reach a median of 100 = 100x at iteration 9 ([50, 50,
    # 150, 150]); the next warning needs 10 * 100 = 1000: [150, 150, 2000, 2000] at iteration 15
    assert [it for it, _ in warnings] == [9, 15]
    assert "grew 100x: median 100 " in warnings[0][1] and "learning rate now 0.1" in warnings[0][1]
    assert "grew 1.08e+03x: median 1075 " in warnings[1][1]


def test_decoupled_run_at_a_huge_lr_warns(base_model, tmp_path, caplog):
    """The issue's BASE_LR 5000 decoupled run ended at loss 1.3e5 without a word."""
    base_dir, _ = base_model
    with caplog.at_level(logging.WARNING, logger="ltdet.engine.divergence"):
        trainer, _ = train(
            _decoupled(
                base_dir,
                tmp_path / "hot",
                "softmax",
                "SOLVER.BASE_LR",
                5000.0,
                "SOLVER.MAX_ITER",
                20,
            )
        )
    # its losses: 0.3 at iteration 0, 323 at 1, then 1.6e3 .. 8.1e4 (median ~8e3 by 19)
    assert "The training loss grew" in caplog.text
    assert "at this run's first iteration (0)" in caplog.text
    with caplog.at_level(logging.WARNING, logger="ltdet.engine.divergence"):
        caplog.clear()
        train(_decoupled(base_dir, tmp_path / "calm", "softmax", "SOLVER.MAX_ITER", 20))
    assert "The training loss grew" not in caplog.text


def test_crowd_annotations_are_not_instances(handmade, tmp_path):  # noqa: F811
    """COCO crowd regions (iscrowd 1, uncompressed RLE) used to raise apple's image count from
    120 and crash the data loader in pycocotools; they are left out of training and statistics
    and refused for LVIS evaluation."""
    data = json.load(open(handmade["json"]))
    n = len(data["annotations"])
    rle = {"size": [32, 32], "counts": [66, 10, 22, 10, 948]}
    for i in range(120, 125):  # apple in 5 images that had nothing
        data["annotations"].append(
            {
                "id": n + i,
                "image_id": i + 1,
                "category_id": 3,
                "bbox": [2.0, 2.0, 10.0, 10.0],
                "area": 100.0,
                "segmentation": rle,
                "iscrowd": 1,
            }
        )
    path = tmp_path / "crowd.json"
    write_lvis_json(path, data["images"], data["annotations"], data["categories"])
    register_lvis_format("ltdet_test_crowd", str(path), handmade["root"])
    register_lvis_format("ltdet_test_plain", handmade["json"], handmade["root"])
    try:
        crowd, plain = class_stats("ltdet_test_crowd"), class_stats("ltdet_test_plain")
        assert crowd.image_counts.tolist() == plain.image_counts.tolist() == [120, 12, 1]
        assert crowd.instance_counts.tolist() == [240, 12, 3]
        dicts = load_lvis_format_json(str(path), handmade["root"])
        assert not any(a.get("iscrowd") for d in dicts for a in d["annotations"])
        assert all(not isinstance(a["segmentation"], dict) for d in dicts for a in d["annotations"])
        factors = class_balanced_repeat_factors([d for d in dicts if d["annotations"]], 3)
        plain_dicts = load_lvis_format_json(handmade["json"], handmade["root"])
        want = class_balanced_repeat_factors([d for d in plain_dicts if d["annotations"]], 3)
        torch.testing.assert_close(factors, want)
        problems = lvis_eval_problems(data)
        assert any("5 crowd annotations" in p and "remove them" in p for p in problems)
        assert not any("crowd" in p for p in lvis_eval_problems(json.load(open(handmade["json"]))))
        assert MetadataCatalog.get("ltdet_test_crowd").lvis_eval_problems == problems
    finally:
        clear_class_stats()
        for name in ("ltdet_test_crowd", "ltdet_test_plain"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    assert np.isfinite(crowd.num_images)
