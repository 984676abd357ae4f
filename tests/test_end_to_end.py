"""End-to-end runs on the tiny synthetic split (CPU, seconds each)."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import SimpleTrainer, TrainerBase
from detectron2.utils.env import seed_all_rng

from ltdet.config import add_ltdet_config, merge_config
from ltdet.data import clear_class_stats
from ltdet.data.builtin import SYNTHETIC_DIR, register_all
from ltdet.data.synthetic import generate
from ltdet.engine import Trainer
from ltdet.engine.hooks import MetaWeightsHook
from ltdet.modeling import losses as L
from ltdet.modeling.loss_registry import get_loss

from .conftest import handmade  # noqa: F401 (fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate(str(root / SYNTHETIC_DIR), preset="tiny")
    register_all(str(root))
    clear_class_stats()
    yield root
    clear_class_stats()
    register_all()  # back to the default root


def tiny_cfg(out_dir, config="configs/synthetic/base_softmax_rfs.yaml", *opts):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    merge_config(cfg, os.path.join(REPO, config))  # resolves MODEL.DEVICE "auto"
    cfg.merge_from_list(
        [
            "MODEL.ROI_HEADS.NUM_CLASSES",
            8,
            "SOLVER.IMS_PER_BATCH",
            4,
            "SOLVER.MAX_ITER",
            8,
            "SOLVER.STEPS",
            (6,),
            "SOLVER.WARMUP_ITERS",
            2,
            "DATALOADER.NUM_WORKERS",
            0,
            "INPUT.MIN_SIZE_TRAIN",
            (64,),
            "INPUT.MAX_SIZE_TRAIN",
            64,
            "INPUT.MIN_SIZE_TEST",
            64,
            "INPUT.MAX_SIZE_TEST",
            64,
            "INPUT.RANDOM_FLIP",
            "none",
            "OUTPUT_DIR",
            str(out_dir),
            "SEED",
            1,
            # one val set (LVIS's negative protocol): results keyed by task, as detectron2 returns
            # them for a single test set (tests/test_demo.py scores both protocols)
            "DATASETS.TEST",
            ("ltdet_synthetic_val",),
            *opts,
        ]
    )
    return cfg


def train(cfg, resume=False):
    seed_all_rng(cfg.SEED)  # as detectron2's default_setup does in tools/train_net.py
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    results = trainer.train()
    return trainer, results


@pytest.fixture(scope="module")
def base_model(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    _, results = train(tiny_cfg(out))
    return out, results


def test_base_train_and_lvis_eval(base_model):
    out, results = base_model
    for task in ("bbox", "segm"):
        assert {"AP", "APr", "APc", "APf"} <= set(results[task])
    inf = out / "inference" / "ltdet_synthetic_val"
    assert (
        json.loads((inf / "lvis_metrics.json").read_text())["segm"]["APr"] == results["segm"]["APr"]
    )
    rows = list(csv.DictReader(open(inf / "per_class_ap.csv")))
    assert len(rows) == 8 and {"AP_bbox", "AP_segm", "train_image_count", "frequency"} <= set(
        rows[0]
    )
    assert (inf / "per_class_ap.png").stat().st_size > 1000
    # Same numbers as lvis-api's own evaluator run directly on the saved detections.
    from lvis import LVIS, LVISEval, LVISResults

    gt = LVIS(MetadataCatalog.get("ltdet_synthetic_val").json_file)
    dets = json.loads((inf / "lvis_instances_results.json").read_text())
    ev = LVISEval(gt, LVISResults(gt, dets, max_dets=50), "bbox")
    ev.run()
    assert abs(ev.get_results()["AP"] * 100 - results["bbox"]["AP"]) < 1e-6
    # the per-class table: lvis-api's per-class AP and the training set's counts
    from ltdet.data import class_stats
    from ltdet.evaluation.per_class import per_class_ap

    ap = per_class_ap(ev)
    stats = class_stats("ltdet_synthetic_train")
    for k, row in enumerate(rows):
        assert row["AP_bbox"] == ("" if ap[k] != ap[k] else f"{100 * ap[k]:.2f}")
        assert int(row["train_image_count"]) == stats.image_counts[k]
        assert int(row["train_instance_count"]) == stats.instance_counts[k]


@pytest.mark.parametrize(
    "loss",
    ["balanced_softmax", "sigmoid", "balanced_sigmoid", "eql", "federated", "dbm_bs", "dbm_cb"],
)
def test_heads_train_end_to_end(tiny_root, tmp_path, loss):
    cfg = tiny_cfg(
        tmp_path,
        "configs/synthetic/base_softmax_rfs.yaml",
        "LTDET.LOSS.NAME",
        loss,
        "SOLVER.MAX_ITER",
        3,
        "DATASETS.TEST",
        (),
    )
    trainer, _ = train(cfg)
    assert torch.isfinite(trainer.storage.history("loss_cls").latest() * torch.ones(1)).all()


def _decoupled_cfg(base_dir, out, *opts):
    return tiny_cfg(
        out,
        "configs/synthetic/decoupled/balms.yaml",
        "MODEL.WEIGHTS",
        str(base_dir / "model_final.pth"),
        "SOLVER.MAX_ITER",
        4,
        "SOLVER.STEPS",
        (3,),
        "SOLVER.WARMUP_ITERS",
        0,
        "LTDET.META.LR",
        0.05,
        "DATASETS.TEST",
        (),
        *opts,
    )


def test_decoupled_balms_freezes_trunk(base_model, tmp_path):
    base_dir, _ = base_model
    base = torch.load(base_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    trainer, _ = train(_decoupled_cfg(base_dir, tmp_path))
    state = trainer.model.state_dict()
    changed = [k for k in base if not torch.equal(base[k], state[k])]
    assert changed == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    ]
    w = trainer.reweigher.class_weights()
    assert not torch.allclose(w, torch.full_like(w, 0.5))
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu")  # weights_only loads it
    assert torch.equal(ckpt["meta_reweigher"]["logits"], trainer.reweigher.logits.detach())
    assert "meta_optimizer" in ckpt["trainer"]["_trainer"]
    group = trainer._trainer.meta_optimizer.param_groups[0]  # Adam with the configured settings
    assert group["lr"] == trainer.cfg.LTDET.META.LR and group["weight_decay"] == 0.0
    assert tuple(group["betas"]) == tuple(trainer.cfg.LTDET.META.BETAS) == (0.9, 0.999)
    assert "optimizer" in ckpt["trainer"]["_trainer"]
    # learned weights logged during training and plotted against class frequency at the end
    assert trainer.storage.history("meta_w/mean").latest() == pytest.approx(
        float(w.detach().mean())
    )
    assert (tmp_path / "meta_class_weights.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(tmp_path / "meta_class_weights.csv")))
    assert [float(r["weight"]) for r in rows] == pytest.approx(w.tolist(), abs=1e-4)
    from ltdet.data import class_stats

    stats = class_stats(trainer.cfg.DATASETS.TRAIN)
    assert [int(r["train_image_count"]) for r in rows] == stats.image_counts.tolist()
    assert [r["frequency"] for r in rows] == stats.frequency
    latest = {
        k: v.latest() for k, v in trainer.storage.histories().items() if k.startswith("meta_w/")
    }
    wn, groups = w.detach().numpy(), np.array(stats.frequency)
    want = {"meta_w/min": wn.min(), "meta_w/mean": wn.mean(), "meta_w/max": wn.max()}
    want.update({f"meta_w/{g}": wn[groups == g].mean() for g in "rcf" if (groups == g).any()})
    assert latest == pytest.approx(want)
    # logged before detectron2's writers run, so the last metrics.json line has them
    last = json.loads(open(tmp_path / "metrics.json").read().strip().splitlines()[-1])
    assert last["meta_w/mean"] == pytest.approx(want["meta_w/mean"])
    # the meta batches' proposal sampling stays out of the training batch's scalars: one
    # value per iteration (two before: training and meta batch mixed)
    logged = [it for _, it in trainer.storage.history("roi_head/num_fg_samples").values()]
    assert logged == list(range(4))


# Random flips and scales on, served by data-loader worker processes.
AUGMENT_WITH_WORKERS = (
    "DATALOADER.NUM_WORKERS",
    2,
    "INPUT.RANDOM_FLIP",
    "horizontal",
    "INPUT.MIN_SIZE_TRAIN",
    (48, 64),
)


# A meta step every 2nd iteration on batches of its own size, cut after an odd iteration (3 of
# 6): the resumed meta stream must skip the batches of iterations 0 and 2 (rounding up, not
# down) and then serve iteration 4's.
META_EVERY_2 = ("LTDET.META.INTERVAL", 2, "LTDET.META.IMS_PER_BATCH", 2, "SOLVER.STEPS", (1,))


# Two-component weights instead: a development batch every iteration, and the resumed
# development stream must skip the cut run's.
TWO_COMPONENT = (
    "LTDET.META.ENABLED",
    False,
    "LTDET.TWO_COMPONENT.ENABLED",
    True,
    "LTDET.TWO_COMPONENT.ALLOW_UNCOVERED",
    True,
    "LTDET.LOSS.NAME",
    "softmax",
)


@pytest.mark.parametrize(
    "opts,cut,total",
    [((), 2, 4), (AUGMENT_WITH_WORKERS, 2, 4), (META_EVERY_2, 3, 6), (TWO_COMPONENT, 2, 4)],
    ids=["no_workers", "workers_augment", "meta_every_2", "two_component"],
)
def test_decoupled_resume_is_exact(base_model, tmp_path, opts, cut, total):
    base_dir, _ = base_model
    opts = (*opts, "SOLVER.MAX_ITER", total)
    full, _ = train(_decoupled_cfg(base_dir, tmp_path / "full", *opts))
    # "kill" after `cut` iterations (a checkpoint there), then resume to the end
    _, _ = train(_decoupled_cfg(base_dir, tmp_path / "cut", *opts, "SOLVER.MAX_ITER", cut))
    # another SEED for the resumed process (real runs default to a random one): the data
    # streams' seeds and the RNG states must come from the checkpoint
    saved = torch.load(
        tmp_path / "cut" / "model_final.pth", map_location="cpu", weights_only=False
    )["trainer"]["data_seeds"]
    resumed, _ = train(_decoupled_cfg(base_dir, tmp_path / "cut", *opts, "SEED", 7), resume=True)
    assert resumed.start_iter == cut
    assert list(resumed.data_seeds) == list(saved)
    if full.reweigher is not None:
        torch.testing.assert_close(resumed.reweigher.logits, full.reweigher.logits)
    torch.testing.assert_close(
        resumed.model.roi_heads.box_predictor.cls_score.weight,
        full.model.roi_heads.box_predictor.cls_score.weight,
    )


class _LazyIterSimpleTrainer(SimpleTrainer):
    """SimpleTrainer as detectron2 after v0.6 has it (the official source install.sh builds when
    GitHub answers): the data iterator is a read-only property, created on first use."""

    def __init__(self, model, data_loader, optimizer):
        TrainerBase.__init__(self)
        model.train()
        self.model, self.data_loader, self.optimizer = model, data_loader, optimizer
        self._data_loader_iter_obj = None

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj


def test_resume_refuses_a_checkpoint_of_other_ltdet_options(base_model, tmp_path):
    """--resume loads every checkpointable the config has from the last checkpoint; one the file
    lacks (the Meta Reweigher of a run without LTDET.META, its Adam state) or one the config has
    no place for is an error naming the fix, not a silent fresh start or drop."""
    base_dir, _ = base_model
    balms, plain = tmp_path / "balms", tmp_path / "plain"
    train(_decoupled_cfg(base_dir, balms, "SOLVER.MAX_ITER", 1))
    train(_decoupled_cfg(base_dir, plain, "SOLVER.MAX_ITER", 1, "LTDET.META.ENABLED", False))
    for out, meta, says in (
        (balms, False, r"holds \['meta_reweigher'\]"),
        (plain, True, r"lacks \['meta_reweigher'\]"),
    ):
        trainer = Trainer(_decoupled_cfg(base_dir, out, "LTDET.META.ENABLED", meta))
        with pytest.raises(ValueError, match=says + ".*new OUTPUT_DIR"):
            trainer.resume_or_load(resume=True)
    # the meta optimizer's state, inside the trainer's
    path = balms / "model_final.pth"
    state = torch.load(path, map_location="cpu", weights_only=False)
    del state["trainer"]["_trainer"]["meta_optimizer"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="no Meta Reweigher optimizer state"):
        Trainer(_decoupled_cfg(base_dir, balms)).resume_or_load(resume=True)
    # a fresh fine-tuning from the base model (no checkpointables) is not a resume
    Trainer(_decoupled_cfg(base_dir, tmp_path / "fresh")).resume_or_load(resume=True)


@pytest.mark.parametrize("lazy_iter", [False, True])
def test_base_training_resume_is_exact(tiny_root, tmp_path, monkeypatch, lazy_iter):
    """The instance-balanced base (whole model, repeat-factor sampling) resumed from a checkpoint
    after 2 of 4 iterations ends where the uninterrupted run does; also with the training step of
    detectron2 after v0.6, whose data iterator cannot be assigned."""
    if lazy_iter:
        monkeypatch.setattr("ltdet.engine.trainer.SimpleTrainer", _LazyIterSimpleTrainer)
    opts = ("DATASETS.TEST", (), "SOLVER.STEPS", (3,), "SOLVER.WARMUP_ITERS", 1)
    full, _ = train(
        tiny_cfg(
            tmp_path / "full",
            "configs/synthetic/base_softmax_rfs.yaml",
            *opts,
            "SOLVER.MAX_ITER",
            4,
        )
    )
    train(
        tiny_cfg(
            tmp_path / "cut", "configs/synthetic/base_softmax_rfs.yaml", *opts, "SOLVER.MAX_ITER", 2
        )
    )
    resumed, _ = train(
        tiny_cfg(
            tmp_path / "cut",
            "configs/synthetic/base_softmax_rfs.yaml",
            *opts,
            "SOLVER.MAX_ITER",
            4,
            "SEED",
            7,
        ),
        resume=True,
    )
    assert resumed.start_iter == 2
    assert isinstance(resumed._trainer, _LazyIterSimpleTrainer) == lazy_iter
    want, got = full.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_construction_draws_the_same_on_every_detectron2(tiny_root, tmp_path, monkeypatch):
    """Without aspect-ratio grouping the train loader is a torch DataLoader, whose iterator draws
    from the global RNG when it starts. detectron2 0.6's training step started one in __init__,
    later versions lazily: ltdet must leave the RNG where the other version does, or the same
    config trains differently on the two."""
    from detectron2.utils.env import seed_all_rng

    from ltdet.engine import trainer as trainer_module

    states = []
    for step_class in (SimpleTrainer, _LazyIterSimpleTrainer):
        monkeypatch.setattr(trainer_module, "SimpleTrainer", step_class)
        cfg = tiny_cfg(
            tmp_path / step_class.__name__,
            "configs/synthetic/base_softmax_rfs.yaml",
            "DATALOADER.ASPECT_RATIO_GROUPING",
            False,
            "DATASETS.TEST",
            (),
        )
        seed_all_rng(cfg.SEED)
        trainer = Trainer(cfg)
        assert type(trainer._trainer) is step_class
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])


def test_decoupled_bad_input(base_model, tmp_path):
    base_dir, _ = base_model
    with pytest.raises(ValueError, match="matches no parameter"):
        Trainer(_decoupled_cfg(base_dir, tmp_path, "LTDET.DECOUPLED.TRAINABLE", ["nope.*"]))
    with pytest.raises(
        ValueError,
        match=r"selects \['roi_heads.box_predictor.bbox_pred.weight', "
        r"'roi_heads.box_predictor.bbox_pred.bias'\].*never get a gradient",
    ):
        Trainer(
            _decoupled_cfg(
                base_dir, tmp_path, "LTDET.DECOUPLED.TRAINABLE", ["roi_heads.box_predictor.*"]
            )
        )
    for key, value, says in (
        ("LTDET.META.LOSS", "balanced", "LTDET.META.LOSS must be 'plain'"),
        ("LTDET.META.INTERVAL", 0, "LTDET.META.INTERVAL must be >= 1"),
        ("LTDET.META.LOG_PERIOD", 0, "LTDET.META.LOG_PERIOD must be >= 1"),
    ):
        with pytest.raises(ValueError, match=says):
            Trainer(_decoupled_cfg(base_dir, tmp_path, key, value))
    only_weight = Trainer(
        _decoupled_cfg(
            base_dir,
            tmp_path,
            "LTDET.DECOUPLED.TRAINABLE",
            ["roi_heads.box_predictor.cls_score.weight"],
        )
    )
    assert len(only_weight._trainer.trainable) == 1
    with pytest.raises(ValueError, match="NUM_CLASSES = 5"):
        Trainer(_decoupled_cfg(base_dir, tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", 5))
    partial = {
        k: v
        for k, v in torch.load(base_dir / "model_final.pth", weights_only=False)["model"].items()
        if "mask_head" not in k
    }
    torch.save({"model": partial}, tmp_path / "partial.pth")
    trainer = Trainer(
        _decoupled_cfg(base_dir, tmp_path, "MODEL.WEIGHTS", str(tmp_path / "partial.pth"))
    )
    with pytest.raises(ValueError, match="not a base model.*missing keys.*mask_head"):
        trainer.resume_or_load(resume=False)


def test_decoupled_two_component(base_model, tmp_path):
    base_dir, _ = base_model
    cfg = tiny_cfg(
        tmp_path,
        "configs/synthetic/decoupled/two_component.yaml",
        "MODEL.WEIGHTS",
        str(base_dir / "model_final.pth"),
        "SOLVER.MAX_ITER",
        3,
        "SOLVER.STEPS",
        (2,),
        "SOLVER.WARMUP_ITERS",
        0,
        "DATASETS.TEST",
        (),
        "LTDET.TWO_COMPONENT.EPS_LR",
        100.0,
    )
    trainer, _ = train(cfg)
    assert trainer.storage.history("eps_abs_mean").latest() > 0
    # development batches stay out of the training batch's proposal scalars
    logged = [it for _, it in trainer.storage.history("roi_head/num_bg_samples").values()]
    assert logged == list(range(3))
    # development images are held out of training
    from ltdet.engine.trainer import _dev_dicts, _train_dicts

    dev = {d["image_id"] for d in _dev_dicts(trainer.cfg)}
    assert dev and not dev & {d["image_id"] for d in _train_dicts(trainer.cfg)}
    # the meta batches come from the development split
    step = trainer._trainer
    assert {x["image_id"] for x in next(step._meta_iter)} <= dev
    # w_y from the training images that remain: all the set's images less the development ones
    from ltdet.data import class_stats

    counts = class_stats(trainer.cfg.DATASETS.TRAIN).image_counts.astype(float)
    for d in _dev_dicts(trainer.cfg):
        for c in {a["category_id"] for a in d["annotations"]}:
            counts[c] -= 1
    class_weights, eps_lr = step.two_component
    torch.testing.assert_close(class_weights, L.effective_number_weights(counts).float())
    assert eps_lr == 100.0
    # the losses' statistics describe the same images (a Balanced Softmax head's prior here)
    from ltdet.data import training_class_stats

    stats = training_class_stats(trainer.cfg)
    assert stats.image_counts.tolist() == counts.tolist()
    assert stats.num_images == len(_train_dicts(trainer.cfg))
    assert (stats.image_counts < class_stats(trainer.cfg.DATASETS.TRAIN).image_counts).any()
    bs = trainer.cfg.clone()
    bs.defrost()
    bs.LTDET.LOSS.NAME = "balanced_softmax"
    head = Trainer.build_model(bs).roi_heads.box_predictor
    torch.testing.assert_close(head.log_prior, L.softmax_log_prior(counts).float())
    # SOURCE and FLOOR as for the losses: instance counts
    inst = trainer.cfg.clone()
    inst.defrost()
    inst.LTDET.CLASS_STATS.SOURCE = "instance_count"
    weights, _ = Trainer.build_decoupled_step(
        trainer, inst, trainer.model, trainer.data_loader, trainer.optimizer
    ).two_component
    torch.testing.assert_close(weights, L.effective_number_weights(stats.instance_counts).float())
    with pytest.raises(ValueError, match="alternatives"):
        Trainer(
            tiny_cfg(
                tmp_path / "x",
                "configs/synthetic/decoupled/two_component.yaml",
                "MODEL.WEIGHTS",
                str(base_dir / "model_final.pth"),
                "LTDET.META.ENABLED",
                True,
                "DATASETS.TEST",
                (),
            )
        )


def test_base_model_can_hold_out_the_development_split(tiny_root, tmp_path):
    """LTDET.TWO_COMPONENT.HOLD_OUT_DEV in a base config (Jamal et al., Algorithm 1: pre-train on
    T = training set minus D): the base model's loader never yields a development image, and
    they are the very images two-component fine-tuning holds out and draws its dev batches from."""
    from ltdet.data import class_stats, training_class_stats
    from ltdet.engine.trainer import _dev_dicts, _train_dicts

    cfg = tiny_cfg(
        tmp_path,
        "configs/synthetic/base_softmax_rfs.yaml",
        "LTDET.TWO_COMPONENT.HOLD_OUT_DEV",
        True,
        "DATASETS.TEST",
        (),
        "LTDET.TWO_COMPONENT.ALLOW_UNCOVERED",
        True,
    )  # as two_component.yaml
    fine_tune = tiny_cfg(tmp_path, "configs/synthetic/decoupled/two_component.yaml")
    dev = {d["image_id"] for d in _dev_dicts(fine_tune)}
    kept = {d["image_id"] for d in _train_dicts(cfg)}
    assert dev and kept == {d["image_id"] for d in _train_dicts(fine_tune)} and not dev & kept
    assert (
        training_class_stats(cfg).image_counts.tolist()
        == training_class_stats(fine_tune).image_counts.tolist()
    )
    assert training_class_stats(cfg).num_images < class_stats(cfg.DATASETS.TRAIN).num_images
    assert training_class_stats(cfg) is training_class_stats(cfg)  # computed once, then cached

    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    seen = {x["image_id"] for _ in range(25) for x in next(trainer._trainer._data_loader_iter)}
    assert seen <= kept and len(seen) > len(dev)

    # The per-class AP table and the Meta Reweigher's plot put AP / weights against the counts
    # of the images trained on, not of the whole set.
    held = training_class_stats(cfg).image_counts.tolist()
    full = class_stats(cfg.DATASETS.TRAIN).image_counts.tolist()
    for c, want in (
        (cfg, held),
        (tiny_cfg(tmp_path, "configs/synthetic/base_softmax_rfs.yaml"), full),
    ):
        evaluator = Trainer.build_evaluator(c, "ltdet_synthetic_val", str(tmp_path / "eval"))
        assert evaluator._train_stats(8).image_counts.tolist() == want
    balms = tiny_cfg(
        tmp_path,
        "configs/synthetic/decoupled/balms.yaml",
        "DATASETS.TEST",
        (),
        "LTDET.TWO_COMPONENT.HOLD_OUT_DEV",
        True,
        "LTDET.TWO_COMPONENT.ALLOW_UNCOVERED",
        True,
    )
    (hook,) = [h for h in Trainer(balms)._hooks if isinstance(h, MetaWeightsHook)]
    assert hook.stats.image_counts.tolist() == held != full


def test_meta_lookahead_and_step_share_the_federated_draw(base_model, tmp_path, monkeypatch):
    """The federated loss's class subset is drawn once per iteration, so the meta look-ahead
    simulates the very step that follows (it drew a subset of its own before)."""
    base_dir, _ = base_model
    ckpt = torch.load(base_dir / "model_final.pth", map_location="cpu", weights_only=False)
    model = ckpt["model"]
    for k in ("weight", "bias"):  # a sigmoid base: the softmax base less its background row
        key = f"roi_heads.box_predictor.cls_score.{k}"
        model[key] = model[key][:8].clone()
    torch.save({"model": model}, tmp_path / "sigmoid_base.pth")
    seen = []
    real = L.federated_loss

    def spy(logits, gt, *args, classes=None, **kwargs):
        seen.append((len(gt), classes))
        return real(logits, gt, *args, classes=classes, **kwargs)

    monkeypatch.setattr(get_loss("federated"), "fn", spy)
    cfg = _decoupled_cfg(
        base_dir,
        tmp_path / "out",
        "MODEL.WEIGHTS",
        str(tmp_path / "sigmoid_base.pth"),
        "LTDET.LOSS.NAME",
        "federated",
        "LTDET.LOSS.FED_NUM_CLASSES",
        6,
        "SOLVER.MAX_ITER",
        3,
        "SOLVER.STEPS",
        (2,),
    )
    train(cfg)
    assert len(seen) == 6  # per iteration: the look-ahead, then the step
    for (n_look, look), (n_step, step) in zip(seen[0::2], seen[1::2]):
        assert n_look == n_step and look is not None and torch.equal(look, step)
        assert 0 < len(step) <= 6
    assert not all(torch.equal(seen[0][1], c) for _, c in seen[2::2])  # a new draw each iteration


def _m2m_cfg(base_dir, out, *opts):
    # GAMMA 0: every translation whose seed passes the Bernoulli test joins the batch, so a
    # few iterations on the tiny model exercise the whole path.
    return tiny_cfg(
        out,
        "configs/synthetic/decoupled/m2m.yaml",
        "MODEL.WEIGHTS",
        str(base_dir / "model_final.pth"),
        "SOLVER.MAX_ITER",
        4,
        "SOLVER.STEPS",
        (3,),
        "SOLVER.WARMUP_ITERS",
        0,
        "DATASETS.TEST",
        (),
        "LTDET.M2M.GAMMA",
        0.0,
        *opts,
    )


def test_decoupled_m2m_trains_resumes_and_keeps_g(base_model, tmp_path):
    base_dir, _ = base_model
    base = torch.load(base_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    key = "roi_heads.box_predictor.cls_score."
    full, _ = train(_m2m_cfg(base_dir, tmp_path / "full"))
    accepted = [v for v, _ in full.storage.history("m2m_accepted").values()]
    assert len(accepted) == 4 and sum(accepted) > 0
    # g is the frozen base classifier; the trained classifier moved away from it
    assert torch.equal(full.m2m.g.weight, base[key + "weight"])
    assert not torch.equal(
        full.model.roi_heads.box_predictor.cls_score.weight, base[key + "weight"]
    )
    ckpt = torch.load(tmp_path / "full" / "model_final.pth", map_location="cpu")
    assert torch.equal(ckpt["m2m"]["g.bias"], base[key + "bias"])
    # kill after 2 iterations, resume: same classifier (translations draw from the saved RNG)
    train(_m2m_cfg(base_dir, tmp_path / "cut", "SOLVER.MAX_ITER", 2))
    resumed, _ = train(_m2m_cfg(base_dir, tmp_path / "cut"), resume=True)
    assert resumed.start_iter == 2
    assert torch.equal(resumed.m2m.g.weight, base[key + "weight"])
    torch.testing.assert_close(
        resumed.model.roi_heads.box_predictor.cls_score.weight,
        full.model.roi_heads.box_predictor.cls_score.weight,
    )


def test_m2m_bad_config(base_model, tmp_path):
    base_dir, _ = base_model
    with pytest.raises(ValueError, match="LTDET.M2M needs a softmax-family"):
        Trainer(_m2m_cfg(base_dir, tmp_path, "LTDET.LOSS.NAME", "sigmoid"))
    with pytest.raises(ValueError, match="LTDET.M2M.BETA must be in"):
        Trainer(_m2m_cfg(base_dir, tmp_path, "LTDET.M2M.BETA", 1.0))
    with pytest.raises(ValueError, match="LTDET.M2M.ENABLED needs LTDET.DECOUPLED"):
        Trainer(_m2m_cfg(base_dir, tmp_path, "LTDET.DECOUPLED.ENABLED", False))


def test_trunk_chunks_give_the_whole_batch_features(base_model, tmp_path):
    """LTDET.DECOUPLED.TRUNK_CHUNK: the same sampled proposals and features as one whole-batch
    forward (uneven chunks too), with a smaller peak; a training run gives the same classifier."""
    from detectron2.utils.events import EventStorage

    from ltdet.engine.decoupled import classifier_inputs
    from tests.test_bench_decoupled import load_bench

    peak_bytes = load_bench().cpu_step_peak
    base_dir, _ = base_model
    trainer = Trainer(_decoupled_cfg(base_dir, tmp_path / "probe", "LTDET.META.ENABLED", False))
    trainer.resume_or_load(resume=False)
    model = trainer.model.eval()
    batch = next(iter(trainer.build_train_loader(trainer.cfg, seed=3)))
    assert len(batch) == 4
    with EventStorage(0):
        torch.manual_seed(0)
        x0, gt0 = classifier_inputs(model, batch, chunk=0)
        for chunk in (1, 3):
            torch.manual_seed(0)
            x, gt = classifier_inputs(model, batch, chunk=chunk)
            assert torch.equal(gt, gt0)
            torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-4)
        whole = peak_bytes(lambda: classifier_inputs(model, batch, chunk=0))
        single = peak_bytes(lambda: classifier_inputs(model, batch, chunk=1))
    assert single < 0.6 * whole, (single, whole)

    runs = {
        c: train(_decoupled_cfg(base_dir, tmp_path / f"c{c}", "LTDET.DECOUPLED.TRUNK_CHUNK", c))[0]
        for c in (0, 1)
    }
    torch.testing.assert_close(
        runs[1].reweigher.logits, runs[0].reweigher.logits, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        runs[1].model.roi_heads.box_predictor.cls_score.weight,
        runs[0].model.roi_heads.box_predictor.cls_score.weight,
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="TRUNK_CHUNK must be >= 0"):
        Trainer(_decoupled_cfg(base_dir, tmp_path / "bad", "LTDET.DECOUPLED.TRUNK_CHUNK", -1))


def test_trainer_parses_each_json_once(base_model, tmp_path, monkeypatch):
    import ltdet.data.lvis_format as lf

    base_dir, _ = base_model
    parsed = []
    real = lf._read_json
    monkeypatch.setattr(lf, "_read_json", lambda f: parsed.append(os.path.basename(f)) or real(f))
    clear_class_stats()
    # statistics, train loader and class-balanced meta loader: one parse of the train json
    Trainer(_decoupled_cfg(base_dir, tmp_path / "balms"))
    assert parsed.count("lvis_synthetic_train.json") == 1, parsed
    assert lf._SHARED is None  # dropped before the data streams start
    parsed.clear()
    clear_class_stats()
    cfg = tiny_cfg(
        tmp_path / "tc",
        "configs/synthetic/decoupled/two_component.yaml",
        "MODEL.WEIGHTS",
        str(base_dir / "model_final.pth"),
        "DATASETS.TEST",
        (),
    )
    Trainer(cfg)  # + the development split
    assert parsed.count("lvis_synthetic_train.json") == 1, parsed


def _first_batches(cfg, n):
    it = iter(Trainer.build_train_loader(cfg, seed=5))
    return [[(d["image_id"], d["image"]) for d in next(it)] for _ in range(n)]


def test_augmentation_does_not_depend_on_the_workers(tiny_root, tmp_path):
    """Each sample's flip and scale come from its position in the stream, not from the worker
    process that maps it (what makes --resume exact with workers)."""
    opts = AUGMENT_WITH_WORKERS[2:]
    ref = _first_batches(tiny_cfg(tmp_path, "configs/synthetic/base_softmax_rfs.yaml", *opts), 4)
    assert len({tuple(img.shape) for batch in ref for _, img in batch}) == 2  # both scales drawn
    for workers in (1, 2):
        got = _first_batches(
            tiny_cfg(
                tmp_path,
                "configs/synthetic/base_softmax_rfs.yaml",
                "DATALOADER.NUM_WORKERS",
                workers,
                *opts,
            ),
            4,
        )
        for batch_ref, batch in zip(ref, got):
            assert [i for i, _ in batch] == [i for i, _ in batch_ref]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(batch_ref, batch))


def test_train_and_meta_loaders_draw_with_the_configured_factors(tiny_root, tmp_path, monkeypatch):
    """The train loader: detectron2's repeat factors at DATALOADER.REPEAT_THRESHOLD (0.05 in the
    synthetic recipes); the meta loader: class-balanced factors max_c 1 / (K f(c))."""
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    from ltdet.data.samplers import class_balanced_repeat_factors
    from ltdet.engine import trainer as trainer_module

    seen, factor_kwargs = [], []
    stock = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency

    class Recording(RepeatFactorTrainingSampler):
        def __init__(self, repeat_factors, **kwargs):
            seen.append(repeat_factors.clone())
            super().__init__(repeat_factors, **kwargs)

        @staticmethod
        def repeat_factors_from_category_frequency(dataset_dicts, repeat_thresh, **kwargs):
            factor_kwargs.append(kwargs)
            return stock(dataset_dicts, repeat_thresh)

    monkeypatch.setattr(trainer_module, "RepeatFactorTrainingSampler", Recording)
    cfg = tiny_cfg(tmp_path)
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.05
    dicts = trainer_module._train_dicts(cfg)
    Trainer.build_train_loader(cfg, seed=0)
    want = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.05)
    assert torch.equal(seen[0], want) and want.max() > 1  # some images do repeat
    Trainer.build_meta_loader(cfg, seed=0)
    torch.testing.assert_close(seen[1], class_balanced_repeat_factors(dicts, 8))
    # detectron2 after v0.6's DATALOADER.REPEAT_SQRT is passed on where the config has it
    cfg.DATALOADER.REPEAT_SQRT = False
    Trainer.build_train_loader(cfg, seed=0)
    assert factor_kwargs == [{}, {"sqrt": False}]


def test_trainer_errors_name_the_fix(base_model, handmade, tmp_path):  # noqa: F811
    """Configurations the trainer refuses, each with the key to change."""
    from detectron2.data import DatasetCatalog

    from ltdet.data import register_lvis_format

    base_dir, _ = base_model
    softmax_base = "configs/synthetic/base_softmax_rfs.yaml"
    for key in ("META", "TWO_COMPONENT"):
        with pytest.raises(ValueError, match=f"LTDET.{key}.ENABLED needs LTDET.DECOUPLED.ENABLED"):
            Trainer(tiny_cfg(tmp_path / key, softmax_base, f"LTDET.{key}.ENABLED", True))
    with pytest.raises(ValueError, match="SOLVER.CLIP_GRADIENTS is not supported"):
        Trainer(_decoupled_cfg(base_dir, tmp_path / "clip", "SOLVER.CLIP_GRADIENTS.ENABLED", True))
    with pytest.raises(
        ValueError, match="SOLVER.AMP.ENABLED is not supported.*set SOLVER.AMP.ENABLED False"
    ):
        Trainer(_decoupled_cfg(base_dir, tmp_path / "amp", "SOLVER.AMP.ENABLED", True))
    with pytest.raises(
        ValueError,
        match="RandomSubsetTrainingSampler.*use TrainingSampler or RepeatFactorTrainingSampler",
    ):
        Trainer(
            tiny_cfg(
                tmp_path / "s",
                softmax_base,
                "DATALOADER.SAMPLER_TRAIN",
                "RandomSubsetTrainingSampler",
            )
        )
    name = "test_three_class_val"
    register_lvis_format(name, handmade["json"], handmade["root"])
    try:
        with pytest.raises(ValueError, match=f"test set {name} has 3 classes.*has 8"):
            Trainer(tiny_cfg(tmp_path / "t", softmax_base, "DATASETS.TEST", (name,)))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    MetadataCatalog.get("test_coco_style").set(evaluator_type="coco")
    try:
        with pytest.raises(ValueError, match="evaluates LVIS-format datasets.*'coco'"):
            Trainer.build_evaluator(tiny_cfg(tmp_path / "e"), "test_coco_style")
    finally:
        MetadataCatalog.remove("test_coco_style")


def test_checkpoint_loading_through_the_trainer(base_model, tmp_path):
    """Through Trainer.resume_or_load: a base model may start from a partial checkpoint (an
    ImageNet backbone); a sigmoid head refuses the softmax base's classifier with the reason; a
    decoupled run refuses a checkpoint with a tensor of another shape, and no checkpoint."""
    base_dir, _ = base_model
    state = torch.load(base_dir / "model_final.pth", map_location="cpu", weights_only=False)[
        "model"
    ]
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    trainer = Trainer(
        tiny_cfg(
            tmp_path / "b",
            "configs/synthetic/base_softmax_rfs.yaml",
            "MODEL.WEIGHTS",
            str(tmp_path / "backbone.pth"),
        )
    )
    trainer.resume_or_load(resume=False)
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in backbone.items())

    sigmoid = Trainer(
        tiny_cfg(
            tmp_path / "s",
            "configs/synthetic/base_sigmoid_rfs.yaml",
            "MODEL.WEIGHTS",
            str(base_dir / "model_final.pth"),
        )
    )
    with pytest.raises(ValueError, match="is a softmax-family model.*LTDET.LOSS.NAME"):
        sigmoid.resume_or_load(resume=False)

    key = "roi_heads.box_head.fc1.bias"
    torch.save({"model": dict(state, **{key: state[key][:-1]})}, tmp_path / "shape.pth")
    decoupled = Trainer(
        _decoupled_cfg(base_dir, tmp_path / "d", "MODEL.WEIGHTS", str(tmp_path / "shape.pth"))
    )
    with pytest.raises(ValueError, match=r"not a base model.*1 shape mismatches.*fc1.bias"):
        decoupled.resume_or_load(resume=False)
    # no base model at all: fvcore would load nothing and train on a random trunk
    empty = Trainer(_decoupled_cfg(base_dir, tmp_path / "e", "MODEL.WEIGHTS", ""))
    for resume in (False, True):  # --resume without a checkpoint in OUTPUT_DIR too
        with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty: set it to the base"):
            empty.resume_or_load(resume=resume)


def test_m2m_from_config_maps_every_key(tiny_root, tmp_path):
    from ltdet.data import class_stats
    from ltdet.modeling.m2m import M2mTranslator

    cfg = tiny_cfg(
        tmp_path,
        "configs/synthetic/decoupled/m2m.yaml",
        "LTDET.M2M.ATTEMPTS_PER_IMAGE",
        7,
        "LTDET.M2M.BETA",
        0.91,
        "LTDET.M2M.GAMMA",
        0.37,
        "LTDET.M2M.LAMBDA",
        0.23,
        "LTDET.M2M.STEP_SIZE",
        0.17,
        "LTDET.M2M.NUM_STEPS",
        5,
        "LTDET.M2M.INIT_NOISE",
        0.03,
        "LTDET.CLASS_STATS.SOURCE",
        "instance_count",
    )
    m = M2mTranslator(cfg)
    assert (
        m.attempts_per_image,
        m.beta,
        m.gamma,
        m.lam,
        m.step_size,
        m.num_steps,
        m.init_noise,
    ) == (7, 0.91, 0.37, 0.23, 0.17, 5, 0.03)
    want = class_stats(cfg.DATASETS.TRAIN).instance_counts
    assert (
        m.counts.tolist()
        == want.astype(float).tolist()
        != class_stats(cfg.DATASETS.TRAIN).image_counts.astype(float).tolist()
    )


def test_box_predictor_from_config_maps_every_key(tiny_root, tmp_path):
    """Every LTDET.LOSS / DBM / CLASS_STATS key reaches the head built from a config, at values
    where it changes the loss (the defaults make EQL and federated plain sigmoid on 8 classes)."""
    from detectron2.layers import ShapeSpec

    from ltdet.data import class_stats
    from ltdet.modeling.box_predictor import LongTailFastRCNNOutputLayers as Head

    stats = class_stats("ltdet_synthetic_train")
    img, inst = (
        torch.tensor(c, dtype=torch.float64) for c in (stats.image_counts, stats.instance_counts)
    )
    n = stats.num_images

    def head(*opts):
        return Head(
            tiny_cfg(tmp_path, "configs/synthetic/base_softmax_rfs.yaml", *opts),
            ShapeSpec(channels=16),
        )

    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 0, 8])
    x = torch.randn(12, 8, generator=g)
    eql = head("LTDET.LOSS.NAME", "eql", "LTDET.LOSS.EQL_LAMBDA", 0.05)
    want = L.eql_loss(x, y, img / n, lambda_=0.05)
    torch.testing.assert_close(eql.classification_loss(x, y), want.float())
    assert not torch.allclose(want, L.sigmoid_loss(x.double(), y).to(want))
    fed = head(
        "LTDET.LOSS.NAME",
        "federated",
        "LTDET.LOSS.FED_NUM_CLASSES",
        3,
        "LTDET.LOSS.FED_POWER",
        0.25,
    )
    assert fed.loss_kwargs["num_classes"] == 3
    torch.testing.assert_close(fed.fed_weight, img.pow(0.25).float())
    sig = head("LTDET.LOSS.NAME", "balanced_sigmoid", "LTDET.LOSS.SIGMOID_PRIOR_PROB", 0.01)
    torch.testing.assert_close(sig.cls_score.bias, torch.full((8,), -math.log(99.0)))
    cb = head(
        "LTDET.LOSS.NAME",
        "dbm_cb",
        "LTDET.DBM.K",
        0.3,
        "LTDET.DBM.TAU",
        0.5,
        "LTDET.DBM.SCALE",
        16.0,
        "LTDET.LOSS.CB_BETA",
        0.9,
        "LTDET.CLASS_STATS.SOURCE",
        "instance_count",
    )
    assert cb.logit_scale == 16.0 and cb.loss_kwargs["scale"] == 16.0
    torch.testing.assert_close(cb.class_margin, L.dbm_class_margins(inst, 0.3, 0.5).float())
    torch.testing.assert_close(cb.cb_weight, L.effective_number_weights(inst, 0.9).float())
    bs = head("LTDET.LOSS.NAME", "balanced_softmax", "LTDET.CLASS_STATS.SOURCE", "instance_count")
    torch.testing.assert_close(bs.log_prior, L.softmax_log_prior(inst).float())


def test_evaluating_during_training_changes_no_training_draw(base_model, tmp_path):
    """An evaluation after iteration 2 of 4 (TEST.EVAL_PERIOD 2) draws from the RNG for its
    loader; training must continue as if it had not happened: the same weights as a run
    without evaluation."""
    base_dir, _ = base_model
    quiet, _ = train(_decoupled_cfg(base_dir, tmp_path / "quiet"))
    evaluating, results = train(
        _decoupled_cfg(
            base_dir,
            tmp_path / "eval",
            "DATASETS.TEST",
            ("ltdet_synthetic_val",),
            "TEST.EVAL_PERIOD",
            2,
        )
    )
    assert results["segm"]["AP"] >= 0  # it did evaluate
    assert (tmp_path / "eval" / "inference" / "ltdet_synthetic_val" / "lvis_metrics.json").is_file()
    torch.testing.assert_close(evaluating.reweigher.logits, quiet.reweigher.logits, rtol=0, atol=0)
    torch.testing.assert_close(
        evaluating.model.roi_heads.box_predictor.cls_score.weight,
        quiet.model.roi_heads.box_predictor.cls_score.weight,
        rtol=0,
        atol=0,
    )


def _train_net(*argv):
    """tools/train_net.py's main, in this process (its launch would start nothing more)."""
    import importlib.util

    from detectron2.engine import default_argument_parser

    spec = importlib.util.spec_from_file_location(
        "ltdet_train_net", os.path.join(REPO, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # detectron2's default_setup and the log setup add handlers to the process's loggers at
    # every call (and collect the environment): not for a test that calls main several times
    module.default_setup = lambda cfg, args: None
    module.setup_logger = lambda *args, **kwargs: None
    return module.main(default_argument_parser().parse_args([str(a) for a in argv]))


def _tiny_opts(out_dir, *opts):
    cfg = tiny_cfg(out_dir)
    return [
        "MODEL.ROI_HEADS.NUM_CLASSES",
        8,
        "INPUT.MIN_SIZE_TEST",
        64,
        "INPUT.MAX_SIZE_TEST",
        64,
        "OUTPUT_DIR",
        out_dir,
        "SEED",
        1,
        "DATASETS.TEST",
        str(cfg.DATASETS.TEST),
        *opts,
    ]


def test_eval_only_checks_before_inference(base_model, handmade, tmp_path):  # noqa: F811
    """tools/train_net.py --eval-only evaluates the trained model; it refuses, before any
    inference, an empty MODEL.WEIGHTS (it used to score freshly initialised layers), a checkpoint
    that does not cover the model, and a test set of another category list (it used to end in a
    KeyError after the whole inference pass)."""
    from detectron2.data import DatasetCatalog

    from ltdet.data import register_lvis_format

    base_dir, base_results = base_model
    config = os.path.join(REPO, "configs/synthetic/base_softmax_rfs.yaml")
    weights = base_dir / "model_final.pth"
    res = _train_net(
        "--eval-only",
        "--config-file",
        config,
        *_tiny_opts(tmp_path / "ok", "MODEL.WEIGHTS", weights),
    )
    assert res["segm"]["AP"] == pytest.approx(base_results["segm"]["AP"], abs=1e-6)
    with pytest.raises(
        ValueError, match="--eval-only evaluates a trained model, but MODEL.WEIGHTS is empty"
    ):
        _train_net("--eval-only", "--config-file", config, *_tiny_opts(tmp_path / "empty"))
    partial = tmp_path / "partial.pth"
    state = torch.load(weights, map_location="cpu", weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if "box_predictor" not in k}
    torch.save(state, partial)
    with pytest.raises(
        ValueError,
        match="is not a trained model of this architecture: 4 missing "
        "keys.*box_predictor.*--eval-only evaluates",
    ):
        _train_net(
            "--eval-only",
            "--config-file",
            config,
            *_tiny_opts(tmp_path / "partial", "MODEL.WEIGHTS", partial),
        )
    # A sigmoid-family config scores a softmax checkpoint with LTDET.LOSS.SIGMOID_FROM_SOFTMAX,
    # as training would start from it: the same AP as the conversion done by hand (class k's
    # weights and bias minus the background's, the last row) saved as a sigmoid checkpoint.
    sigmoid_config = os.path.join(REPO, "configs/synthetic/decoupled/sigmoid.yaml")
    converted = tmp_path / "converted.pth"
    state = torch.load(weights, map_location="cpu", weights_only=False)
    for key in ("weight", "bias"):
        w = state["model"][f"roi_heads.box_predictor.cls_score.{key}"]
        state["model"][f"roi_heads.box_predictor.cls_score.{key}"] = w[:-1] - w[-1:]
    torch.save(state, converted)
    by_hand = _train_net(
        "--eval-only",
        "--config-file",
        sigmoid_config,
        *_tiny_opts(tmp_path / "by_hand", "MODEL.WEIGHTS", converted),
    )
    by_flag = _train_net(
        "--eval-only",
        "--config-file",
        sigmoid_config,
        *_tiny_opts(
            tmp_path / "by_flag", "MODEL.WEIGHTS", weights, "LTDET.LOSS.SIGMOID_FROM_SOFTMAX", True
        ),
    )
    assert by_flag["segm"]["AP"] == pytest.approx(by_hand["segm"]["AP"], abs=1e-9)
    assert by_flag["bbox"] == pytest.approx(by_hand["bbox"], abs=1e-9, nan_ok=True)

    name = "test_eval_only_three_classes"
    register_lvis_format(name, handmade["json"], handmade["root"])
    try:
        with pytest.raises(
            ValueError, match=f"test set {name} has 3 classes but MODEL.ROI_HEADS.NUM_CLASSES = 8"
        ):
            _train_net(
                "--eval-only",
                "--config-file",
                config,
                *_tiny_opts(
                    tmp_path / "three", "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{name}',)"
                ),
            )
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_check_config_refuses_ignored_or_invalid_ltdet_options(tiny_root, handmade, tmp_path):  # noqa: F811
    """LTDET options that no component would honour, each refused with the key to change: a loss
    or decoupled regime under detectron2's own ROI heads (which never read LTDET), a negative
    FLOOR, a misspelt count SOURCE, no federated classes, a negative eps step; and a test json
    lvis-api cannot evaluate, at start-up rather than after training."""
    import copy

    from detectron2.data import DatasetCatalog

    from ltdet.data import register_lvis_format
    from ltdet.engine import check_config

    def cfg(*opts):
        c = tiny_cfg(tmp_path, "configs/synthetic/base_softmax_rfs.yaml", "DATASETS.TEST", ())
        c.merge_from_list(list(opts))
        return c

    check_config(cfg(), training=False)
    check_config(cfg("MODEL.ROI_HEADS.NAME", "StandardROIHeads"), training=False)  # plain softmax
    bad = [
        (
            ("MODEL.ROI_HEADS.NAME", "StandardROIHeads", "LTDET.LOSS.NAME", "balanced_softmax"),
            "'StandardROIHeads' is not one of ltdet's ROI heads.*LongTailROIHeads",
        ),
        (
            ("MODEL.ROI_HEADS.NAME", "StandardROIHeads", "LTDET.DECOUPLED.ENABLED", True),
            "LTDET.LOSS and LTDET.DECOUPLED would have no effect",
        ),
        (("LTDET.CLASS_STATS.FLOOR", -1.0), "FLOOR must be >= 0"),
        (("LTDET.CLASS_STATS.SOURCE", "image_counts"), "SOURCE = 'image_counts' is not valid"),
        (("LTDET.LOSS.FED_NUM_CLASSES", 0), "FED_NUM_CLASSES must be >= 1"),
        (("LTDET.TWO_COMPONENT.EPS_LR", -1.0), "EPS_LR must be >= 0"),
    ]
    for opts, match in bad:
        with pytest.raises(ValueError, match=match):
            check_config(cfg(*opts), training=False)
    data = json.loads(open(handmade["json"]).read())
    broken = copy.deepcopy(data)
    del broken["categories"][0]["frequency"]
    path = tmp_path / "no_frequency.json"
    path.write_text(json.dumps(broken))
    name = "test_check_config_no_frequency"
    register_lvis_format(name, str(path), handmade["root"])
    try:
        with pytest.raises(
            ValueError, match="cannot be evaluated with LVIS AP.*'frequency'.*ids \\[3\\]"
        ):
            check_config(
                cfg("MODEL.ROI_HEADS.NUM_CLASSES", 3, "DATASETS.TEST", (name,)), training=False
            )
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # a test set with the training set's class count but another order of its categories
    val = MetadataCatalog.get("ltdet_synthetic_val")
    data = json.loads(open(val.json_file).read())
    check_config(cfg("DATASETS.TEST", ("ltdet_synthetic_val",)))
    a, b = data["categories"][1], data["categories"][2]
    a["name"], b["name"] = b["name"], a["name"]
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(data))
    name = "test_check_config_swapped"
    register_lvis_format(name, str(path), val.image_root)
    try:
        with pytest.raises(
            ValueError,
            match=f"test set {name} and training set .* order their "
            f"categories differently \\(class 1: '{a['name']}'",
        ):
            check_config(cfg("DATASETS.TEST", (name,)))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
