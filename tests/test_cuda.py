"""GPU checks, skipped where there is no CUDA device (CI has none). Run them on a GPU machine with
``pytest tests/test_cuda.py``: every loss, the meta step and the decoupled BALMS regime work on
CUDA tensors and give what the CPU gives."""

import pytest
import torch

from ltdet.engine.meta_step import meta_reweigher_step
from ltdet.modeling.loss_registry import get_loss
from ltdet.modeling.meta_reweigher import MetaReweigher

from . import test_losses as TL
from . import test_meta as TM
from .test_end_to_end import _decoupled_cfg, tiny_cfg, tiny_root, train  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _loss_and_grads(name, x, y, w, device):
    x, w = (t.detach().to(device) for t in (x, w))
    y = y.to(device)
    x.requires_grad_()
    w.requires_grad_()
    stats = {k: v.to(device, x.dtype) for k, v in TL.STATS.items()}
    kwargs = {
        k: (v.to(device, x.dtype) if torch.is_tensor(v) else v)
        for k, v in TL.DISPATCH_KWARGS.get(name, {}).items()
    }
    if name == "federated":  # every class: the sampled set would come from a device's own RNG
        kwargs = {"num_classes": TL.K}
    loss = get_loss(name)(x, y, stats, w, **kwargs)
    return [t.cpu() for t in (loss, *torch.autograd.grad(loss, (x, w)))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", TL.LOSS_NAMES)
def test_loss_and_gradients_match_cpu(name, dtype):
    # float32 takes the Triton kernels for the balanced losses on CUDA, float64 the eager ops
    softmax, _ = TL.LOSSES[name]
    x, y, w = (
        t.to(dtype) if t.is_floating_point() else t
        for t in TL.make_batch(n=16, softmax=softmax, scale=3.0)
    )
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for got, want in zip(
        _loss_and_grads(name, x, y, w, "cuda"), _loss_and_grads(name, x, y, w, "cpu")
    ):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("name", TL.FUSED)
def test_fused_second_order_on_cuda(name):
    softmax, fused, _ = TL.FUSED[name]
    x, y, w = (t.cuda() for t in TL.make_batch(n=6, softmax=softmax, scale=1.0))
    x.requires_grad_()
    w.requires_grad_()
    # the fused Functions take CPU statistics and move them to the logits' device
    assert torch.autograd.gradgradcheck(lambda a, b: fused(a, y, b), (x, w))


def test_meta_step_matches_cpu():
    logits = {}
    for device in ("cpu", "cuda"):
        clf, data, train_loss, meta_loss = TM._problem()
        opt = TM._optimizer(clf)  # the momentum step runs on the CPU; the state moves below
        clf.to(device)
        for state in opt.state.values():
            state["momentum_buffer"] = state["momentum_buffer"].to(device)
        data = {k: v.to(device) for k, v in data.items()}
        rw = MetaReweigher(TM.K).double().to(device)
        meta_opt = torch.optim.Adam(rw.parameters(), lr=0.1)
        for _ in range(3):
            meta_reweigher_step(clf, opt, rw, meta_opt, train_loss, meta_loss, **data)
        logits[device] = rw.logits.detach().cpu()
    assert logits["cpu"].abs().max() > 1e-3
    torch.testing.assert_close(logits["cuda"], logits["cpu"], rtol=1e-9, atol=1e-12)


def test_base_and_decoupled_balms_on_cuda(tiny_root, tmp_path):
    _, results = train(
        tiny_cfg(
            tmp_path / "base", "configs/synthetic/base_softmax_rfs.yaml", "MODEL.DEVICE", "cuda"
        )
    )
    assert {"AP", "APr", "APc", "APf"} <= set(results["segm"])
    base = torch.load(
        tmp_path / "base" / "model_final.pth", map_location="cpu", weights_only=False
    )["model"]
    trainer, _ = train(
        _decoupled_cfg(
            tmp_path / "base",
            tmp_path / "balms",
            "MODEL.DEVICE",
            "cuda",
            "LTDET.DECOUPLED.TRUNK_CHUNK",
            1,
        )
    )
    assert trainer.reweigher.logits.is_cuda
    state = trainer.model.state_dict()
    changed = [k for k in base if not torch.equal(base[k], state[k].cpu())]
    assert changed == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    ]
    w = trainer.reweigher.class_weights()
    assert not torch.allclose(w, torch.full_like(w, 0.5))
