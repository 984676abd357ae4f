"""Two CPU processes on gloo (ltdet.engine.launch), against one process on the same data."""

import os

import pytest
import torch
from torch import nn

from ltdet.engine import launch
from ltdet.engine.meta_step import meta_reweigher_step
from ltdet.modeling import losses as L
from ltdet.modeling.meta_reweigher import MetaReweigher

K, D = 3, 6
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")


def _data():
    """A global batch of two halves with the same class composition, so that the per-rank
    foreground renormalisation of the weights equals the global one."""
    g = torch.Generator().manual_seed(0)
    x_train = torch.randn(2, 16, D, generator=g, dtype=torch.float64)
    gt_train = torch.stack([torch.arange(16) % (K + 1)] * 2)
    x_meta = torch.randn(2, 8, D, generator=g, dtype=torch.float64)
    gt_meta = torch.stack([torch.arange(8) % (K + 1)] * 2)
    return x_train, gt_train, x_meta, gt_meta


def _average_gradients(module):
    """What the decoupled step does by hand: gradients averaged over the ranks."""
    if torch.distributed.is_initialized():
        for p in module.parameters():
            torch.distributed.all_reduce(p.grad)
            p.grad /= torch.distributed.get_world_size()


def _meta_run(x_train, gt_train, x_meta, gt_meta, steps=3):
    torch.manual_seed(0)
    clf = nn.Linear(D, K + 1).double()
    opt = torch.optim.SGD(clf.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    rw = MetaReweigher(K).double()
    meta_opt = torch.optim.Adam(rw.parameters(), lr=0.1)
    prior = L.softmax_log_prior([30.0, 6.0, 1.0]).double()
    loss = lambda s, y, w: L.balanced_softmax_loss(s, y, prior, weights=w)  # noqa: E731
    for _ in range(steps):
        meta_reweigher_step(
            clf, opt, rw, meta_opt, loss, L.softmax_loss, x_train, gt_train, x_meta, gt_meta
        )
        opt.zero_grad()
        loss(clf(x_train), gt_train, rw(gt_train).detach()).backward()
        _average_gradients(clf)
        opt.step()
    return rw.logits.detach(), clf.weight.detach()


def _half_batch_worker(out_dir, run):
    """``run`` on this rank's half of ``_data()``; saves its weights and classifier."""
    rank = torch.distributed.get_rank()
    x_train, gt_train, x_meta, gt_meta = _data()
    w, cls = run(x_train[rank], gt_train[rank], x_meta[rank], gt_meta[rank])
    torch.save({"w": w, "cls": cls}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_meta_step_two_ranks_equals_one_process(tmp_path):
    launch(_half_batch_worker, 2, args=(str(tmp_path), _meta_run))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["w"], r1["w"])  # identical class weights on every rank
    x_train, gt_train, x_meta, gt_meta = _data()
    w, cls = _meta_run(
        x_train.flatten(0, 1), gt_train.flatten(), x_meta.flatten(0, 1), gt_meta.flatten()
    )
    torch.testing.assert_close(r0["w"], w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r0["cls"], cls, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(w, torch.zeros_like(w))


def _two_component_run(x_train, gt_train, x_dev, gt_dev, steps=3):
    from ltdet.engine.meta_step import two_component_weights

    torch.manual_seed(0)
    clf = nn.Linear(D, K + 1).double()
    opt = torch.optim.SGD(clf.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    class_weights = L.effective_number_weights([30.0, 6.0, 1.0])
    weights = []
    for _ in range(steps):
        w = two_component_weights(
            clf,
            opt,
            class_weights,
            50.0,
            L.softmax_loss,
            L.softmax_loss,
            x_train,
            gt_train,
            x_dev,
            gt_dev,
        )
        weights.append(w)
        opt.zero_grad()
        L.softmax_loss(clf(x_train), gt_train, w).backward()
        _average_gradients(clf)
        opt.step()
    return torch.stack(weights), clf.weight.detach()


def test_two_component_two_ranks_equals_one_process(tmp_path):
    """Per-proposal weights are each rank's own: rank r's eps must be the one-process eps of its
    half of the global batch (look-ahead on the all-rank gradient, all-rank development loss)."""
    launch(_half_batch_worker, 2, args=(str(tmp_path), _two_component_run))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    x_train, gt_train, x_dev, gt_dev = _data()
    w, cls = _two_component_run(
        x_train.flatten(0, 1), gt_train.flatten(), x_dev.flatten(0, 1), gt_dev.flatten()
    )
    torch.testing.assert_close(torch.cat([r0["w"], r1["w"]], dim=1), w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r0["cls"], cls, rtol=1e-9, atol=1e-12)
    base = L.effective_number_weights([30.0, 6.0, 1.0])
    fg = gt_train.flatten() < K
    assert (w[:, fg] - base[gt_train.flatten()[fg]]).abs().max() > 1e-4  # eps is not trivially 0


def _train_worker(root, out_dir, config, extra):
    from detectron2.utils.env import seed_all_rng

    from ltdet.data.builtin import register_all
    from ltdet.engine import Trainer

    from .test_end_to_end import tiny_cfg

    register_all(root)
    cfg = tiny_cfg(out_dir, config, "SOLVER.MAX_ITER", 3, "DATASETS.TEST", (), *extra)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    rank = torch.distributed.get_rank()
    model = getattr(trainer.model, "module", trainer.model)
    # parameters only: BN running statistics are per rank (detectron2: broadcast_buffers=False)
    state = {"cls": {k: p.detach() for k, p in model.named_parameters()}}
    if trainer.reweigher is not None:
        state["w"] = trainer.reweigher.logits.detach()
    torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ltdet.data.builtin import SYNTHETIC_DIR
    from ltdet.data.synthetic import generate

    root = tmp_path_factory.mktemp("datasets")
    generate(str(root / SYNTHETIC_DIR), preset="tiny")
    return str(root)


@pytest.fixture(scope="module")
def gloo_base(tiny, tmp_path_factory):
    """A base model trained by two CPU processes (DDP on gloo)."""
    base = tmp_path_factory.mktemp("gloo_base")
    launch(_train_worker, 2, args=(tiny, str(base), "configs/synthetic/base_softmax_rfs.yaml", ()))
    return base


def test_base_and_balms_train_on_two_cpu_processes(tiny, gloo_base, tmp_path):
    base = gloo_base
    b0, b1 = (torch.load(base / f"rank{r}.pt") for r in (0, 1))
    for k in b0["cls"]:  # DDP keeps the replicas identical
        torch.testing.assert_close(b0["cls"][k], b1["cls"][k])
    balms = tmp_path / "balms"
    launch(
        _train_worker,
        2,
        args=(
            tiny,
            str(balms),
            "configs/synthetic/decoupled/balms.yaml",
            ("MODEL.WEIGHTS", str(base / "model_final.pth"), "LTDET.META.LR", 0.05),
        ),
    )
    m0, m1 = (torch.load(balms / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(m0["w"], m1["w"]) and not torch.equal(m0["w"], torch.zeros_like(m0["w"]))
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(m0["cls"][key], m1["cls"][key])


@pytest.mark.parametrize(
    "config,extra",
    [
        ("dbm_bs.yaml", ()),
        ("two_component.yaml", ("LTDET.TWO_COMPONENT.EPS_LR", 100.0)),
        ("m2m.yaml", ("LTDET.M2M.GAMMA", 0.0)),
    ],
)
def test_decoupled_methods_on_two_cpu_processes(tiny, gloo_base, tmp_path, config, extra):
    # Each rank draws its own batch (and M2m translations); the averaged gradient keeps the
    # classifier identical on both ranks, and it moves away from the base.
    launch(
        _train_worker,
        2,
        args=(
            tiny,
            str(tmp_path),
            f"configs/synthetic/decoupled/{config}",
            ("MODEL.WEIGHTS", str(gloo_base / "model_final.pth"), *extra),
        ),
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    base = torch.load(gloo_base / "rank0.pt")["cls"]
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(r0["cls"][key], r1["cls"][key])
    assert not torch.equal(r0["cls"][key], base[key])


def _resume_worker(root, out_dir, config, extra, resume):
    from detectron2.utils.env import seed_all_rng

    from ltdet.data.builtin import register_all
    from ltdet.engine import Trainer

    from .test_end_to_end import tiny_cfg

    register_all(root)
    cfg = tiny_cfg(out_dir, config, "DATASETS.TEST", (), *extra)
    rank = torch.distributed.get_rank()
    seed_all_rng(cfg.SEED + rank)  # as detectron2's default_setup: each rank its own RNG stream
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    key = "roi_heads.box_predictor.cls_score.weight"
    torch.save(
        {
            "cls": dict(trainer.model.named_parameters())[key].detach(),
            "w": trainer.reweigher.logits.detach(),
            "start": trainer.start_iter,
        },
        os.path.join(out_dir, f"rank{rank}-{'resumed' if resume else 'run'}.pt"),
    )


def test_resume_on_two_cpu_processes_is_exact(tiny, gloo_base, tmp_path):
    """Each rank samples its own RoIs from its own RNG stream; the checkpoint (written by rank 0)
    carries every rank's RNG state, so a cut-and-resumed BALMS run equals the uninterrupted one."""

    def run(out, max_iter, resume):
        launch(
            _resume_worker,
            2,
            args=(
                tiny,
                str(out),
                "configs/synthetic/decoupled/balms.yaml",
                ("MODEL.WEIGHTS", str(gloo_base / "model_final.pth"), "SOLVER.MAX_ITER", max_iter),
                resume,
            ),
        )

    run(tmp_path / "full", 4, False)
    run(tmp_path / "cut", 2, False)
    ckpt = torch.load(tmp_path / "cut" / "model_final.pth", weights_only=False)
    states = ckpt["trainer"]["rng_per_rank"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    run(tmp_path / "cut", 4, True)
    full = torch.load(tmp_path / "full" / "rank0-run.pt")
    for rank in (0, 1):
        resumed = torch.load(tmp_path / "cut" / f"rank{rank}-resumed.pt")
        assert resumed["start"] == 2
        torch.testing.assert_close(resumed["cls"], full["cls"])
        torch.testing.assert_close(resumed["w"], full["w"])


def _mismatched_resume_worker(root, out_dirs, extra):
    rank = torch.distributed.get_rank()
    try:
        _resume_worker(root, out_dirs[rank], "configs/synthetic/decoupled/balms.yaml", extra, True)
    except (RuntimeError, ValueError) as e:
        with open(os.path.join(out_dirs[rank], f"error{rank}.txt"), "w") as f:
            f.write(f"{type(e).__name__}: {e}")


def test_ranks_that_find_different_checkpoints_refuse_to_resume(tiny, gloo_base, tmp_path):
    """A decoupled model is not DDP-wrapped: two ranks resuming from different checkpoints (one
    machine's OUTPUT_DIR has one, the other's none) would train apart. Every rank refuses; and
    when one rank cannot load its checkpoint, the other says so instead of waiting for it (a
    short process-group timeout turns a regression into a failure, not a hang)."""
    from datetime import timedelta

    extra = ("MODEL.WEIGHTS", str(gloo_base / "model_final.pth"), "SOLVER.MAX_ITER", 1)
    for out, meta in (("a", True), ("c", False)):
        launch(
            _train_worker,
            2,
            args=(
                tiny,
                str(tmp_path / out),
                "configs/synthetic/decoupled/balms.yaml",
                (*extra, "LTDET.META.ENABLED", meta),
            ),
        )
    os.makedirs(tmp_path / "b")
    extra = (*extra[:2], "SOLVER.MAX_ITER", 2)
    for dirs, says in (
        ("ab", ["ranks resume at different iterations [1, 0]"] * 2),
        (
            "ac",
            [
                "RuntimeError: rank 1 could not load its checkpoint: ValueError: "
                "the checkpoint to resume from lacks ['meta_reweigher']",
                "ValueError: the checkpoint to resume from lacks ['meta_reweigher']",
            ],
        ),
    ):
        launch(
            _mismatched_resume_worker,
            2,
            args=(tiny, [str(tmp_path / d) for d in dirs], extra),
            timeout=timedelta(seconds=60),
        )
        for rank, d in enumerate(dirs):
            assert says[rank] in (tmp_path / d / f"error{rank}.txt").read_text()


def test_launch_passes_the_timeout_to_detectron2(monkeypatch):
    """With CUDA (or one process) detectron2's launch runs, with the caller's timeout."""
    import importlib
    from datetime import timedelta

    L = importlib.import_module(
        "ltdet.engine.launch"
    )  # the module (the package exports the function)

    calls = []
    monkeypatch.setattr(L, "d2_launch", lambda *a, **k: calls.append((a, k)))
    launch(print, 1, args=("x",), timeout=timedelta(minutes=7))
    ((args, kwargs),) = calls
    assert args[:2] == (print, 1) and kwargs == {"args": ("x",), "timeout": timedelta(minutes=7)}
