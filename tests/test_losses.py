"""Tests for ltdet.modeling.losses against hand-written float64 references (CPU, deterministic)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltdet.modeling import losses as L
from ltdet.modeling.loss_registry import SIGMOID, get_loss, loss_names

K = 5  # foreground classes; gt value K = background


# --------------------------------------------------------------------------- hand references
def ref_ce(row, target):
    """-log softmax(row)[target] by formula (max-shifted log-sum-exp)."""
    m = max(row)
    return m + math.log(sum(math.exp(z - m) for z in row)) - row[target]


def ref_bce(x, t):
    """BCE-with-logits by formula: max(x,0) - x t + log(1 + exp(-|x|))."""
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def ref_reduce(per, weights):
    w = [1.0] * len(per) if weights is None else weights.tolist()
    return sum(wi * li for wi, li in zip(w, per)) / len(per)


def ref_softmax(logits, gt, weights=None, log_prior=None):
    per = []
    for row, y in zip(logits.tolist(), gt.tolist()):
        if log_prior is not None and y < K:  # fg proposals only; bg column never shifted
            row = [z + (log_prior[j].item() if j < K else 0.0) for j, z in enumerate(row)]
        per.append(ref_ce(row, y))
    return ref_reduce(per, weights)


def ref_sigmoid(logits, gt, weights=None, shift=None, classes=None, freq=None, lambda_=1.76e-3):
    per = []
    for row, y in zip(logits.tolist(), gt.tolist()):
        total = 0.0
        for j, x in enumerate(row):
            if classes is not None and j not in classes:
                continue
            if shift is not None and y < K:
                x += shift[j].item()
            t = 1.0 if j == y else 0.0
            if freq is not None and y < K and t == 0.0 and freq[j].item() < lambda_:
                continue  # EQL: fg proposals ignore rare-class negatives
            total += ref_bce(x, t)
        per.append(total)
    return ref_reduce(per, weights)


# --------------------------------------------------------------------------- fixtures
def make_batch(n=8, softmax=False, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, K + 1 if softmax else K, generator=g, dtype=torch.float64)
    gt = torch.tensor([0, 1, 4, K, 2, K, 1, K] * (n // 8 + 1))[:n]
    weights = torch.rand(n, generator=g, dtype=torch.float64) * 2
    return logits, gt, weights


COUNTS = torch.tensor([1000.0, 3.0, 50.0, 1.0, 400.0], dtype=torch.float64)
NUM_IMAGES = 2000.0
LOG_PRIOR = L.softmax_log_prior(COUNTS)
LOG_ODDS = L.sigmoid_log_prior_odds(COUNTS, NUM_IMAGES)
FREQ = torch.tensor([0.5, 1e-4, 0.01, 1e-3, 0.2], dtype=torch.float64)  # rare: classes 1, 3
FED_WEIGHT = COUNTS.sqrt()
MARGIN = L.dbm_class_margins(COUNTS, k=0.2)
DBM_S = 4.0
CB_WEIGHT = L.effective_number_weights(COUNTS)
STATS = {
    "log_prior": LOG_PRIOR,
    "log_prior_odds": LOG_ODDS,
    "class_freq": FREQ,
    "fed_weight": FED_WEIGHT,
    "class_margin": MARGIN,
    "cb_weight": CB_WEIGHT,
}


def fed_gen():
    return torch.Generator().manual_seed(123)


# name -> (uses softmax logits, callable(logits, gt, weights))
LOSSES = {
    "softmax": (True, lambda x, y, w=None: L.softmax_loss(x, y, w)),
    "sigmoid": (False, lambda x, y, w=None: L.sigmoid_loss(x, y, w)),
    "balanced_softmax": (True, lambda x, y, w=None: L.balanced_softmax_loss(x, y, LOG_PRIOR, w)),
    "balanced_sigmoid": (False, lambda x, y, w=None: L.balanced_sigmoid_loss(x, y, LOG_ODDS, w)),
    "eql": (False, lambda x, y, w=None: L.eql_loss(x, y, FREQ, weights=w)),
    # fresh generator per call so repeated evaluations (gradcheck) see the same class set
    "federated": (
        False,
        lambda x, y, w=None: L.federated_loss(
            x, y, FED_WEIGHT, num_classes=4, generator=fed_gen(), weights=w
        ),
    ),
    # DBM on cosine scores (values beyond +-1 are clamped inside acos only)
    "dbm": (True, lambda x, y, w=None: L.dbm_loss(x, y, MARGIN, DBM_S, weights=w)),
    "dbm_bs": (True, lambda x, y, w=None: L.dbm_loss(x, y, MARGIN, DBM_S, LOG_PRIOR, w)),
    "dbm_cb": (True, lambda x, y, w=None: L.dbm_cb_loss(x, y, MARGIN, CB_WEIGHT, DBM_S, w)),
}
DISPATCH_KWARGS = {
    "federated": {"num_classes": 4, "generator": fed_gen()},
    "dbm": {"scale": DBM_S},
    "dbm_cb": {"scale": DBM_S},
    "dbm_bs": {"scale": DBM_S},
}  # its log_prior comes from the stats


LOSS_NAMES = (
    "softmax",
    "sigmoid",
    "balanced_softmax",
    "balanced_sigmoid",
    "eql",
    "federated",
    "dbm",
    "dbm_bs",
    "dbm_cb",
)


def test_api_names():
    assert loss_names()[: len(LOSS_NAMES)] == LOSS_NAMES  # (a test may have registered more)
    assert set(loss_names(family=SIGMOID)) >= {"sigmoid", "balanced_sigmoid", "eql", "federated"}
    assert not set(loss_names(family=SIGMOID)) & {
        "softmax",
        "balanced_softmax",
        "dbm",
        "dbm_bs",
        "dbm_cb",
    }
    assert set(LOSSES) == set(LOSS_NAMES)


def test_dbm_cb_is_dbm_with_class_balanced_weights():
    """DBM-CB (Eq. 10): each foreground proposal's DBM loss times (1-beta)/(1-beta^n_y)."""
    x, y, w = make_batch(softmax=True)
    cb = torch.cat([CB_WEIGHT, torch.ones(1, dtype=CB_WEIGHT.dtype)])[y]
    want = L.dbm_loss(x, y, MARGIN, DBM_S, weights=w * cb)
    assert torch.equal(L.dbm_cb_loss(x, y, MARGIN, CB_WEIGHT, DBM_S, w), want)
    per = torch.stack(
        [L.dbm_loss(x[i : i + 1], y[i : i + 1], MARGIN, DBM_S) for i in range(len(y))]
    )
    assert L.dbm_cb_loss(x, y, MARGIN, CB_WEIGHT, DBM_S).item() == pytest.approx(
        (per * cb).mean().item(), rel=1e-12
    )


# --------------------------------------------------------------------------- vs references
@pytest.mark.parametrize("use_weights", [False, True])
def test_softmax_reference(use_weights):
    x, y, w = make_batch(softmax=True)
    w = w if use_weights else None
    assert L.softmax_loss(x, y, w).item() == pytest.approx(ref_softmax(x, y, w), rel=1e-12)


def test_softmax_equals_cross_entropy_exactly():
    for dtype in (torch.float32, torch.float64):
        x, y, _ = make_batch(n=37, softmax=True)
        x = x.to(dtype)
        assert torch.equal(L.softmax_loss(x, y), F.cross_entropy(x, y, reduction="mean"))


@pytest.mark.parametrize("use_weights", [False, True])
def test_sigmoid_reference(use_weights):
    x, y, w = make_batch()
    w = w if use_weights else None
    assert L.sigmoid_loss(x, y, w).item() == pytest.approx(ref_sigmoid(x, y, w), rel=1e-12)


@pytest.mark.parametrize("use_weights", [False, True])
def test_balanced_softmax_reference(use_weights):
    x, y, w = make_batch(softmax=True)
    w = w if use_weights else None
    got = L.balanced_softmax_loss(x, y, LOG_PRIOR, w).item()
    assert got == pytest.approx(ref_softmax(x, y, w, log_prior=LOG_PRIOR), rel=1e-12)
    assert got != pytest.approx(ref_softmax(x, y, w), rel=1e-3)  # the prior matters


@pytest.mark.parametrize("use_weights", [False, True])
def test_balanced_sigmoid_reference(use_weights):
    x, y, w = make_batch()
    w = w if use_weights else None
    got = L.balanced_sigmoid_loss(x, y, LOG_ODDS, w).item()
    assert got == pytest.approx(ref_sigmoid(x, y, w, shift=LOG_ODDS), rel=1e-12)
    assert got != pytest.approx(ref_sigmoid(x, y, w), rel=1e-3)


@pytest.mark.parametrize("use_weights", [False, True])
def test_eql_reference(use_weights):
    x, y, w = make_batch()
    w = w if use_weights else None
    got = L.eql_loss(x, y, FREQ, weights=w).item()
    assert got == pytest.approx(ref_sigmoid(x, y, w, freq=FREQ), rel=1e-12)


@pytest.mark.parametrize("use_weights", [False, True])
def test_federated_reference(use_weights):
    x, y, w = make_batch()
    w = w if use_weights else None
    classes = L.federated_classes(y, FED_WEIGHT, 4, fed_gen()).tolist()
    got = L.federated_loss(x, y, FED_WEIGHT, num_classes=4, generator=fed_gen(), weights=w)
    assert got.item() == pytest.approx(ref_sigmoid(x, y, w, classes=set(classes)), rel=1e-12)


# --------------------------------------------------------------------------- balanced specifics
def test_balanced_softmax_uniform_counts_is_softmax():
    prior = L.softmax_log_prior(torch.full((K,), 7.0))
    assert torch.equal(prior, torch.zeros(K, dtype=torch.float64))
    x, y, w = make_batch(softmax=True)
    for weights in (None, w):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        la = L.balanced_softmax_loss(a, y, prior, weights)
        lb = L.softmax_loss(b, y, weights)
        # same math, different reduction kernels: equal to the last bits (bitwise on some torch
        # builds, one ulp apart on others, e.g. torch 2.11 on a 16-core Xeon)
        torch.testing.assert_close(la, lb, rtol=1e-14, atol=0)
        la.backward()
        lb.backward()
        # same math, different kernels (softmax - onehot vs log_softmax_backward): ulp level
        assert torch.allclose(a.grad, b.grad, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("name", ["balanced_softmax", "balanced_sigmoid"])
def test_background_proposals_get_no_prior(name):
    softmax = name == "balanced_softmax"
    x, _, w = make_batch(softmax=softmax)
    bg = torch.full((x.shape[0],), K)
    plain = L.softmax_loss if softmax else L.sigmoid_loss
    balanced = L.balanced_softmax_loss if softmax else L.balanced_sigmoid_loss
    stat = LOG_PRIOR if softmax else LOG_ODDS
    for weights in (None, w):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        la = balanced(a, bg, stat, weights)
        lb = plain(b, bg, weights)
        torch.testing.assert_close(la, lb, rtol=1e-14, atol=0)  # ulp level, as above
        la.backward()
        lb.backward()
        # same math, different kernels (softmax - onehot vs log_softmax_backward): ulp level
        assert torch.allclose(a.grad, b.grad, rtol=1e-13, atol=1e-16)
        # a different prior changes nothing for background-only batches
        assert torch.equal(balanced(x, bg, 5.0 * stat + 1.0, weights), la.detach())
    # ...but it does for foreground proposals
    fg = torch.arange(x.shape[0]) % K
    assert balanced(x, fg, stat).item() != pytest.approx(plain(x, fg).item(), rel=1e-3)


def test_balanced_softmax_background_column_untouched():
    # Foreground proposal: only the K fg columns are shifted; a huge prior on every fg class
    # must leave the background term exp(z_bg) as is.
    x = torch.zeros(1, K + 1, dtype=torch.float64)
    prior = torch.full((K,), math.log(2.0), dtype=torch.float64)
    got = L.balanced_softmax_loss(x, torch.tensor([0]), prior).item()
    # numerator 2 e^0, denominator K * 2 e^0 + 1 e^0 (background unshifted)
    assert got == pytest.approx(-math.log(2.0 / (2.0 * K + 1.0)), rel=1e-12)


# --------------------------------------------------------------------------- EQL / federated
def test_eql_drops_exactly_rare_negatives_of_fg():
    x, _, _ = make_batch(n=3)
    y = torch.tensor([0, 1, K])  # frequent fg, rare fg, background
    per_elem = F.binary_cross_entropy_with_logits(
        x, F.one_hot(y, K + 1)[:, :K].double(), reduction="none"
    )
    # rare classes are 1 and 3; row 0 drops negatives 1 and 3, row 1 (class 1, its own positive
    # kept) drops negative 3, background row keeps everything
    keep = torch.ones(3, K, dtype=torch.float64)
    keep[0, 1] = keep[0, 3] = keep[1, 3] = 0.0
    expected = (per_elem * keep).sum() / 3
    assert L.eql_loss(x, y, FREQ).item() == pytest.approx(expected.item(), rel=1e-12)
    # T(f) = 1[f < lambda]: class 3, exactly at lambda, is not rare (only class 1 is dropped)
    keep[0, 3] = keep[1, 3] = 1.0
    at_lambda = (per_elem * keep).sum() / 3
    got = L.eql_loss(x, y, FREQ, lambda_=float(FREQ[3]))
    assert got.item() == pytest.approx(at_lambda.item(), rel=1e-12)
    # lambda_ below every frequency: nothing is rare -> plain sigmoid
    assert torch.allclose(L.eql_loss(x, y, FREQ, lambda_=1e-5), L.sigmoid_loss(x, y))


def test_federated_classes_present_plus_sampled():
    gt = torch.tensor([1, 1, K, 3, K])
    weight = torch.tensor([1.0, 2.0, 0.0, 3.0, 4.0])  # class 2 can never be sampled
    a = L.federated_classes(gt, weight, 3, generator=torch.Generator().manual_seed(0))
    b = L.federated_classes(gt, weight, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.dtype == torch.long and len(set(a.tolist())) == 3
    assert {1, 3} <= set(a.tolist()) and 2 not in a.tolist() and K not in a.tolist()
    # over many seeds the sampled slot follows the weights (class 4 drawn ~4x as often as 0)
    picks = [
        (
            set(L.federated_classes(gt, weight, 3, torch.Generator().manual_seed(s)).tolist())
            - {1, 3}
        ).pop()
        for s in range(400)
    ]
    assert 2 not in picks and picks.count(4) > 2 * picks.count(0)
    # present classes already reach num_classes: exactly them
    assert L.federated_classes(gt, weight, 2).tolist() == [1, 3]
    assert L.federated_classes(gt, weight, 1).tolist() == [1, 3]
    # asking for more than the classes with non-zero weight: all of those, no error
    assert L.federated_classes(gt, weight, K).tolist() == [0, 1, 3, 4]


def test_federated_all_classes_is_sigmoid():
    x, y, w = make_batch()
    for weights in (None, w):
        got = L.federated_loss(x, y, FED_WEIGHT, num_classes=K, weights=weights)
        assert torch.allclose(got, L.sigmoid_loss(x, y, weights), rtol=1e-12)
        got = L.federated_loss(x, y, FED_WEIGHT, num_classes=10 * K, weights=weights)
        assert torch.allclose(got, L.sigmoid_loss(x, y, weights), rtol=1e-12)


def test_federated_given_classes_are_used_and_checked():
    x, y, w = make_batch()
    present = torch.unique(y[y < K])
    extra = torch.tensor([c for c in range(K) if c not in present.tolist()][:1])
    classes = torch.sort(torch.cat([present, extra])).values
    got = L.federated_loss(x, y, FED_WEIGHT, num_classes=2, weights=w, classes=classes)
    t = (y[:, None] == classes[None, :]).double()
    want = (
        F.binary_cross_entropy_with_logits(x[:, classes], t, reduction="none").sum(1) * w
    ).mean()
    assert torch.allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="miss a foreground class"):
        L.federated_loss(x, y, FED_WEIGHT, classes=present[1:])


# --------------------------------------------------------------------------- generic properties
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradcheck(name):
    softmax, fn = LOSSES[name]
    x, y, w = make_batch(n=6, softmax=softmax, scale=1.0)
    x.requires_grad_()
    w.requires_grad_()  # the meta reweigher differentiates through the weights
    assert torch.autograd.gradcheck(lambda a: fn(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a, b: fn(a, y, b), (x, w))


def _composite_balanced_softmax(x, y, w):
    """Balanced Softmax written with stock ops (reference for the fused autograd Function)."""
    shift = torch.cat([LOG_PRIOR, LOG_PRIOR.new_zeros(1)]).to(x)
    fg = (y < x.shape[1] - 1).to(x)
    return (
        F.cross_entropy(torch.addcmul(x, fg[:, None], shift[None, :]), y, reduction="none") * w
    ).sum() / x.shape[0]


def _composite_balanced_sigmoid(x, y, w):
    """Balanced sigmoid written with stock ops (reference for the fused autograd Function)."""
    fg = (y < x.shape[1]).to(x)
    z = torch.addcmul(x, fg[:, None], LOG_ODDS.to(x)[None, :])
    t = F.one_hot(y, x.shape[1] + 1)[:, :-1].to(x)
    per = F.binary_cross_entropy_with_logits(z, t, reduction="none").sum(1)
    return (per * w).sum() / x.shape[0]


# The fused autograd Functions against their composite definitions.
FUSED = {
    "balanced_softmax": (
        True,
        lambda a, yy, b: L.balanced_softmax_loss(a, yy, LOG_PRIOR, b),
        _composite_balanced_softmax,
    ),
    "balanced_sigmoid": (
        False,
        lambda a, yy, b: L.balanced_sigmoid_loss(a, yy, LOG_ODDS, b),
        _composite_balanced_sigmoid,
    ),
}


@pytest.mark.parametrize("name", FUSED)
def test_fused_matches_composite_gradients(name):
    softmax, fused, composite = FUSED[name]
    x, y, w = make_batch(n=9, softmax=softmax, scale=3.0)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.allclose(fused(x, y, w), composite(x, y, w), rtol=1e-12, atol=0)
    got = torch.autograd.grad(fused(x, y, w), (x, w))
    want = torch.autograd.grad(composite(x, y, w), (x, w))
    for g, r in zip(got, want):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)
    # unweighted path too
    got = torch.autograd.grad(fused(x, y, None), x)[0]
    want = torch.autograd.grad(composite(x, y, torch.ones_like(w)), x)[0]
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FUSED)
def test_fused_second_order(name):
    # The meta look-ahead differentiates the classifier gradient: second order must be exact,
    # both with create_graph (gradgradcheck) and under torch.func (meta_step's grad + vjp).
    softmax, fused, composite = FUSED[name]
    x, y, w = make_batch(n=6, softmax=softmax, scale=1.0)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: fused(a, y, b), (x, w))
    # gradgradcheck only checks that path against itself: its first-order gradients (the
    # create_graph backward, a separate formula) must also be the composite's.
    got = torch.autograd.grad(fused(x, y, w), (x, w), create_graph=True)
    want = torch.autograd.grad(composite(x, y, w), (x, w))
    for g, r in zip(got, want):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)

    def jac_w(loss_fn):
        g = lambda xx, ww: torch.func.grad(lambda a: loss_fn(a, y, ww))(xx)  # noqa: E731
        _, pull = torch.func.vjp(lambda ww: g(x.detach(), ww), w.detach())
        return pull(torch.ones_like(x))[0]

    assert torch.allclose(jac_w(fused), jac_w(composite), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FUSED)
def test_fused_retain_graph_repeats_exactly(name):
    softmax, fused, _ = FUSED[name]
    x, y, w = make_batch(n=5, softmax=softmax)
    x.requires_grad_()
    loss = fused(x, y, w)
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    assert torch.equal(first, torch.autograd.grad(loss, x)[0])


@pytest.mark.parametrize("softmax", [True, False], ids=["balanced_softmax", "balanced_sigmoid"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_logits_computed_in_float32(softmax, dtype):
    # Autocast does not reach inside an autograd Function: half logits (CPU, or CUDA without
    # Triton) must be upcast, as the stock losses are under autocast. In bf16 this batch's loss
    # was off by 2e-3 (softmax) and 3e-2 (sigmoid, summed over 40 classes).
    k, n = 40, 64
    g = torch.Generator().manual_seed(0)
    x = 4.0 * torch.randn(n, k + 1 if softmax else k, generator=g)
    y = torch.randint(0, k + 1, (n,), generator=g)  # k: background
    w = 2 * torch.rand(n, generator=g)
    stat = torch.linspace(-6.0, 0.0, k)
    loss = L.balanced_softmax_loss if softmax else L.balanced_sigmoid_loss
    half = x.to(dtype).requires_grad_()
    got = loss(half, y, stat, w)
    want = loss(half.detach().double(), y, stat.double(), w.double())  # same values, float64
    assert got.dtype == torch.float32
    assert abs(float(got) - float(want)) < 1e-5 * max(1.0, abs(float(want)))
    got.backward()
    assert half.grad.dtype == dtype


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_extreme_logits_finite(name):
    softmax, fn = LOSSES[name]
    x, y, w = make_batch(n=16, softmax=softmax)
    x = (100.0 * torch.sign(x)).float().requires_grad_()
    loss = fn(x, y, w.float())
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_weights_scale_per_proposal(name):
    softmax, fn = LOSSES[name]
    if name == "federated":  # per-proposal calls would sample different classes

        def fn(x, y, w=None):
            return L.federated_loss(x, y, FED_WEIGHT, num_classes=K, weights=w)

    x, y, w = make_batch(n=8, softmax=softmax)
    per = torch.stack([fn(x[i : i + 1], y[i : i + 1]) for i in range(8)])
    assert fn(x, y, w).item() == pytest.approx(((w * per).sum() / 8).item(), rel=1e-12)
    assert fn(x, y).item() == pytest.approx(per.mean().item(), rel=1e-12)
    # reduction divides by N, not by sum(w)
    assert fn(x, y, torch.full((8,), 2.0, dtype=torch.float64)).item() == pytest.approx(
        2 * fn(x, y).item(), rel=1e-12
    )
    with pytest.raises(ValueError, match="weights must have shape"):
        fn(x, y, w[:4])


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_empty_batch(name):
    softmax, fn = LOSSES[name]
    x = torch.zeros(0, K + 1 if softmax else K, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    for weights in (None, torch.zeros(0)):
        loss = fn(x, y, weights)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_cls_loss_dispatch(name):
    softmax, fn = LOSSES[name]
    x, y, w = make_batch(softmax=softmax)
    kwargs = dict(DISPATCH_KWARGS.get(name, {}))
    if name == "federated":
        kwargs["generator"] = fed_gen()
    assert torch.equal(get_loss(name)(x, y, STATS, w, **kwargs), fn(x, y, w))


def test_cls_loss_kwargs_forwarded():
    x, y, _ = make_batch()
    got = get_loss("eql")(x, y, STATS, lambda_=1e-5)
    assert torch.equal(got, L.eql_loss(x, y, FREQ, lambda_=1e-5))


# --------------------------------------------------------------------------- statistics
def test_stat_helpers_values():
    assert torch.allclose(LOG_PRIOR, torch.log(COUNTS / COUNTS.mean()))
    p = COUNTS / NUM_IMAGES
    assert torch.allclose(LOG_ODDS, torch.log(COUNTS / (NUM_IMAGES - COUNTS)))
    assert torch.allclose(LOG_ODDS, -torch.log((1 - p) / p))
    assert torch.allclose(L.image_frequency(COUNTS, NUM_IMAGES), p)
    assert torch.equal(
        L.image_frequency([0.0, 4.0], 8), torch.tensor([0.0, 0.5], dtype=torch.float64)
    )
    assert L.sigmoid_bias_init(0.01) == pytest.approx(-math.log(99.0))
    assert L.sigmoid_bias_init() == pytest.approx(-math.log(999.0))


def test_log_odds_class_in_every_image_is_capped():
    odds = L.sigmoid_log_prior_odds(torch.tensor([10.0, 5.0]), 10)
    assert torch.isfinite(odds).all()
    assert odds[0].item() == pytest.approx(math.log(10.0))
    assert odds[1].item() == pytest.approx(0.0, abs=1e-12)


def test_validate_counts_floor():
    out = L.validate_counts(torch.tensor([0, 3, 0.5]), 3, floor=1.0)
    assert out.tolist() == [1.0, 3.0, 1.0]
    prior = L.softmax_log_prior([0.0, 2.0], floor=1.0)
    assert torch.allclose(prior, torch.log(torch.tensor([1.0, 2.0], dtype=torch.float64) / 1.5))
    with pytest.raises(ValueError, match="floor must be > 0"):
        L.validate_counts([0.0, 1.0], 2, floor=0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: L.validate_counts([1.0, 2.0], 3), r"length num_classes=3.*2 entries.*NUM_CLASSES"),
        (lambda: L.validate_counts([[1.0, 2.0]], 2), "1-D"),
        (
            lambda: L.validate_counts([1.0, 0.0, 0.0], 3),
            r"zero count.*\[1, 2\].*LTDET\.CLASS_STATS\.FLOOR",
        ),
        (lambda: L.softmax_log_prior([1.0, 0.0]), "LTDET.CLASS_STATS.FLOOR"),
        (lambda: L.validate_counts([1.0, -2.0], 2), r"non-negative.*\[1\]"),
        (lambda: L.validate_counts([1.0, float("nan")], 2), "non-finite"),
        (lambda: L.sigmoid_log_prior_odds([5.0, 20.0], 10), r"num_images \(10\) is smaller.*20"),
        (lambda: L.image_frequency([5.0, 20.0], 10), "num_images"),
        (lambda: L.image_frequency([-1.0], 10), "non-negative"),
        (lambda: L.sigmoid_bias_init(1.5), "LTDET.LOSS.SIGMOID_PRIOR_PROB must be in"),
        # a prior of the wrong length would shift the wrong columns
        (
            lambda: L.balanced_softmax_loss(torch.zeros(2, K), torch.tensor([0, K]), LOG_PRIOR),
            r"'balanced_softmax' expects K\+1 logits.*K columns",
        ),
        (
            lambda: L.balanced_sigmoid_loss(torch.zeros(2, K + 1), torch.tensor([0, K]), LOG_ODDS),
            r"'balanced_sigmoid' expects K logits.*K\+1 columns",
        ),
        (
            lambda: L.balanced_sigmoid_loss(torch.zeros(2, K), torch.tensor([0, K]), LOG_ODDS[:3]),
            "5 columns",
        ),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_zero_count_message_lists_at_most_ten():
    with pytest.raises(
        ValueError, match=r"12 classes.*\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] \(and 2 more\)"
    ):
        L.validate_counts(torch.zeros(12), 12)


def test_cls_loss_errors():
    x, y, _ = make_batch()
    xs, _, _ = make_batch(softmax=True)
    with pytest.raises(ValueError, match=r"unknown LTDET.LOSS.NAME 'focal'.*balanced_softmax"):
        get_loss("focal")(x, y, STATS)
    for name, key in [
        ("balanced_softmax", "log_prior"),
        ("balanced_sigmoid", "log_prior_odds"),
        ("eql", "class_freq"),
        ("federated", "fed_weight"),
    ]:
        stats = {k: v for k, v in STATS.items() if k != key}
        with pytest.raises(ValueError, match=f"'{name}' needs the class statistic '{key}'"):
            get_loss(name)(xs if name == "balanced_softmax" else x, y, stats)
    with pytest.raises(ValueError, match=r"'sigmoid' expects K logits.*K\+1 columns: a softmax"):
        get_loss("sigmoid")(xs, y, STATS)
    with pytest.raises(ValueError, match=r"'eql' expects K logits.*softmax checkpoint/head"):
        get_loss("eql")(xs, y, STATS)
    with pytest.raises(ValueError, match=r"'softmax' expects K\+1 logits.*K columns: a sigmoid"):
        get_loss("softmax")(x, y, {"class_freq": FREQ})
    with pytest.raises(ValueError, match="7 columns"):
        get_loss("balanced_softmax")(torch.zeros(2, 7), y[:2], STATS)
    # no statistics at all: nothing to infer K from, the plain losses still run
    assert torch.isfinite(get_loss("sigmoid")(x, y, {}))


# ----------------------------------------------------------------------------------- DBM
def test_dbm_margins_and_weights_by_hand():
    m = L.dbm_class_margins([400.0, 20.0, 4.0], k=0.2, tau=1.0)
    torch.testing.assert_close(
        m, torch.tensor([0.2 * 4 / 400, 0.2 * 4 / 20, 0.2], dtype=torch.float64)
    )
    w = L.effective_number_weights([3.0, 1.0], beta=0.5)
    raw = torch.tensor([0.5 / (1 - 0.125), 0.5 / 0.5], dtype=torch.float64)
    torch.testing.assert_close(w, raw / raw.mean())
    # default beta (n - 1) / n with n = 4 the total count (Jamal et al.): 3/4, so the raw
    # weights are (1/4) / (1 - (3/4)^3) = 16/37 and 1, mean 53/74
    torch.testing.assert_close(
        L.effective_number_weights([3.0, 1.0]),
        torch.tensor([32 / 53, 74 / 53], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="LTDET.LOSS.CB_BETA"):
        L.effective_number_weights([3.0, 1.0], beta=1.0)
    with pytest.raises(ValueError, match="LTDET.DBM.K"):
        L.dbm_class_margins([3.0, 1.0], k=-0.1)


def test_dbm_loss_by_hand():
    s = 10.0
    cos = torch.tensor(
        [
            [0.8, 0.1, 0.0],  # class 0, easy (argmax is 0)
            [0.6, 0.3, -0.2],  # class 1, hard (argmax is 0)
            [0.2, 0.4, 0.5],
        ],  # background
        dtype=torch.float64,
    )
    gt = torch.tensor([0, 1, 2])
    m_c = torch.tensor([0.05, 0.3], dtype=torch.float64)
    logits = s * cos.clone()
    logits[0, 0] = s * math.cos(math.acos(0.8) + 0.05)
    logits[1, 1] = s * math.cos(math.acos(0.3) + 0.3 + 0.3 * (1 - 0.3) / 2)
    expected = torch.nn.functional.cross_entropy(logits, gt)
    torch.testing.assert_close(L.dbm_loss(cos, gt, m_c, scale=s), expected)
    # DBM-BS: + log prior on the class logits of foreground proposals only
    prior = torch.tensor([0.7, -0.7], dtype=torch.float64)
    lb = logits.clone()
    lb[:2, :2] += prior
    torch.testing.assert_close(
        L.dbm_loss(cos, gt, m_c, scale=s, log_prior=prior),
        torch.nn.functional.cross_entropy(lb, gt),
    )


def test_dbm_with_zero_margin_is_scaled_cosine_softmax():
    g = torch.Generator().manual_seed(3)
    cos = torch.rand(20, 6, generator=g, dtype=torch.float64) * 1.8 - 0.9
    gt = torch.randint(0, 6, (20,), generator=g)
    torch.testing.assert_close(
        L.dbm_loss(cos, gt, torch.zeros(5, dtype=torch.float64), scale=30.0),
        torch.nn.functional.cross_entropy(30.0 * cos, gt),
    )


def test_dbm_gradcheck():
    g = torch.Generator().manual_seed(4)
    cos = (torch.rand(8, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    gt = torch.tensor([0, 1, 2, 3, 3, 0, 2, 1])
    m = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda c: L.dbm_loss(c, gt, m, scale=5.0, log_prior=torch.zeros(3, dtype=torch.float64)),
        (cos,),
    )
