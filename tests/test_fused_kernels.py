"""ltdet.modeling.fused_kernels (the Triton kernels of the fused balanced losses) against eager
torch. On a GPU they run as compiled kernels; without one, in Triton's interpreter on CPU tensors
(conftest.py sets TRITON_INTERPRET=1)."""

import pytest
import torch
import torch.nn.functional as F

from ltdet.modeling import losses as L

fk = pytest.importorskip("ltdet.modeling.fused_kernels")
if fk.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
K = 37


def _case(sigmoid, n=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, K if sigmoid else K + 1, generator=g) * 4
    shift = torch.randn(K, generator=g) * 3
    gt = torch.randint(0, K + 1, (n,), generator=g)
    gt[:3] = K  # background rows
    gt[3] = K - 1  # the last foreground class
    w = torch.rand(n, generator=g) * 2
    return [t.to(DEVICE) for t in (x, shift, gt, w)]


def _reference(x, shift, gt, sigmoid):
    """Per-row loss and d(per-row loss)/dx from stock ops (float64)."""
    x = x.double()
    fg = (gt < K).double()
    row = shift.double() if sigmoid else torch.cat([shift.double(), x.new_zeros(1)])
    z = x + fg[:, None] * row[None, :]
    if sigmoid:
        t = F.one_hot(gt, K + 1)[:, :K].double()
        return (
            F.binary_cross_entropy_with_logits(z, t, reduction="none").sum(1),
            torch.sigmoid(z) - t,
            None,
        )
    lse = torch.logsumexp(z, 1)
    return (
        F.cross_entropy(z, gt, reduction="none"),
        torch.softmax(z, 1) - F.one_hot(gt, K + 1).double(),
        lse,
    )


@pytest.mark.parametrize("sigmoid", [False, True], ids=["softmax", "sigmoid"])
@pytest.mark.parametrize("block", [16, None], ids=["looped", "one_block"])
def test_kernels_match_stock_ops(sigmoid, block):
    x, shift, gt, w = _case(sigmoid)
    per_row, grad_ref, lse_ref = _reference(x, shift, gt, sigmoid)
    out, lse = fk.rows_forward(x, shift, gt, sigmoid, block=block)
    torch.testing.assert_close(out.double(), per_row, rtol=1e-5, atol=1e-5)
    if sigmoid:
        assert lse is None
    else:
        torch.testing.assert_close(lse.double(), lse_ref, rtol=1e-6, atol=1e-5)
    for scale in (w, torch.tensor(0.25, device=DEVICE)):  # per-row and one scale for all rows
        grad = fk.rows_backward(x, shift, gt, lse, scale, sigmoid, block=block)
        want = grad_ref * (scale[:, None] if scale.dim() else scale).double()
        torch.testing.assert_close(grad.double(), want, rtol=1e-5, atol=1e-6)
        assert grad.dtype == x.dtype


@pytest.mark.parametrize("name", ["balanced_softmax", "balanced_sigmoid"])
def test_losses_through_the_kernels_equal_the_eager_path(name, monkeypatch):
    sigmoid = name == "balanced_sigmoid"
    x, shift, gt, w = _case(sigmoid, n=24, seed=1)
    fn = L.balanced_sigmoid_loss if sigmoid else L.balanced_softmax_loss

    def run():
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(xx, gt, shift, ww)
        return [loss, *torch.autograd.grad(loss, (xx, ww))]

    calls = []

    def kernels(logits):
        calls.append(logits.shape)
        return fk

    monkeypatch.setattr(L, "_kernels_for", lambda logits: None)
    eager = run()
    monkeypatch.setattr(L, "_kernels_for", kernels)
    fused = run()
    assert len(calls) == 2  # forward and backward went through the kernels
    for got, want in zip(fused, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_usable_only_for_plain_cuda_floats():
    x = torch.zeros(4, K)
    assert not fk.usable(x)  # CPU tensors always take the eager path
    if DEVICE == "cuda":
        assert fk.usable(x.cuda()) and fk.usable(x.cuda().half())
        assert not fk.usable(x.cuda().double())  # float64 keeps full precision on the eager path
        assert not fk.usable(x.cuda().t())  # columns must be contiguous
        seen = []
        torch.func.grad(lambda a: seen.append(fk.usable(a)) or a.sum())(x.cuda())
        assert seen == [False]  # torch.func wrappers have no data pointer
