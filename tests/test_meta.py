import copy

import pytest
import torch
from torch import nn

from ltdet.engine.meta_step import meta_reweigher_step, sgd_lookahead
from ltdet.modeling import losses as L
from ltdet.modeling.meta_reweigher import MetaReweigher, proposal_weights

K, D = 3, 5


def test_proposal_weights_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    gt = torch.tensor([0, 1, 1, 3, 2, 3])  # 3 = background
    s = torch.sigmoid(logits)
    raw = torch.tensor([s[0], s[1], s[1], s[2]])
    expected_fg = raw * 4 / raw.sum()
    w = proposal_weights(logits, gt)
    torch.testing.assert_close(w[[0, 1, 2, 4]], expected_fg)
    assert w[3] == 1 and w[5] == 1
    assert torch.isclose(w[[0, 1, 2, 4]].mean(), torch.tensor(1.0))
    assert (proposal_weights(logits, torch.tensor([3, 3])) == 1).all()
    assert torch.allclose(MetaReweigher(K).class_weights(), torch.full((K,), 0.5))


def _problem(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(D, K + 1).to(dtype)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(K + 1, D, generator=g, dtype=dtype) * 0.3)
        clf.bias.copy_(torch.randn(K + 1, generator=g, dtype=dtype) * 0.1)
    data = dict(
        x_train=torch.randn(24, D, generator=g, dtype=dtype),
        gt_train=torch.randint(0, K + 1, (24,), generator=g),
        x_meta=torch.randn(12, D, generator=g, dtype=dtype),
        gt_meta=torch.arange(12) % (K + 1),
    )
    log_prior = L.softmax_log_prior([50.0, 5.0, 1.0]).to(dtype)
    train_loss = lambda s, y, w: L.balanced_softmax_loss(s, y, log_prior, weights=w)  # noqa: E731
    meta_loss = lambda s, y: L.softmax_loss(s, y)  # noqa: E731
    return clf, data, train_loss, meta_loss


# torch SGD settings the look-ahead must reproduce (torch forbids nesterov with dampening)
SGD_VARIANTS = [dict(nesterov=False), dict(nesterov=True), dict(dampening=0.5)]


def _sgd(params, **variant):
    return torch.optim.SGD(params, lr=0.3, momentum=0.9, weight_decay=1e-2, **variant)


def _optimizer(clf, fresh=False, **variant):
    opt = _sgd(clf.parameters(), **variant)
    if fresh:  # iteration 0 of a run: no momentum buffer yet
        return opt
    # one real step so that the momentum buffer is non-trivial
    clf(torch.ones(2, D, dtype=clf.weight.dtype)).sum().backward()
    opt.step()
    opt.zero_grad()
    return opt


def test_lookahead_refuses_what_it_cannot_simulate():
    """The look-ahead is SGD's rule: Adam, or SGD maximising, would be simulated wrongly."""
    clf, _, _, _ = _problem()
    named = dict(clf.named_parameters())
    grads = {k: torch.zeros_like(p) for k, p in named.items()}
    for opt in (
        torch.optim.Adam(clf.parameters(), lr=0.1),
        torch.optim.SGD(clf.parameters(), lr=0.1, maximize=True),
    ):
        with pytest.raises(
            ValueError, match="simulates a torch.optim.SGD step.*" + type(opt).__name__
        ):
            sgd_lookahead(opt, named, grads)


@pytest.mark.parametrize("fresh", [False, True], ids=["momentum", "first_step"])
@pytest.mark.parametrize("variant", SGD_VARIANTS, ids=str)
def test_lookahead_matches_torch_sgd(variant, fresh):
    clf, data, train_loss, _ = _problem()
    opt = _optimizer(clf, fresh, **variant)
    named = dict(clf.named_parameters())
    w = torch.randn(K, dtype=torch.float64)
    loss = train_loss(clf(data["x_train"]), data["gt_train"], proposal_weights(w, data["gt_train"]))
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
    new, _ = sgd_lookahead(opt, named, grads)
    clf2, opt2 = copy.deepcopy(clf), None
    opt2 = _sgd(clf2.parameters(), **variant)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in zip(clf2.parameters(), clf.parameters()):
        p.grad = grads[[k for k in named if named[k] is q][0]].clone()
    opt2.step()
    for (k, v), p in zip(new.items(), clf2.parameters()):
        torch.testing.assert_close(v, p.detach())


def test_lookahead_matches_detectron2s_parameter_groups():
    """detectron2's optimiser: a group per parameter, the bias with its own lr and weight decay
    (SOLVER.BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS); each parameter must take its own group's."""
    from detectron2.solver.build import get_default_optimizer_params

    clf, data, train_loss, _ = _problem()
    params = get_default_optimizer_params(
        clf, base_lr=0.3, weight_decay=1e-2, bias_lr_factor=2.0, weight_decay_bias=0.0
    )
    opt = torch.optim.SGD(params, lr=0.3, momentum=0.9)
    assert len(opt.param_groups) == 2 and {g["lr"] for g in opt.param_groups} == {0.3, 0.6}
    named = dict(clf.named_parameters())
    for _ in range(2):  # the first step (no momentum buffer), then one with it
        loss = train_loss(clf(data["x_train"]), data["gt_train"], None)
        grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
        new, _ = sgd_lookahead(opt, named, grads)
        for k, p in named.items():
            p.grad = grads[k].clone()
        opt.step()
        for k, p in named.items():
            torch.testing.assert_close(new[k], p.detach())


@pytest.mark.parametrize("fresh", [False, True], ids=["momentum", "first_step"])
@pytest.mark.parametrize("variant", SGD_VARIANTS, ids=str)
def test_meta_gradient_matches_finite_differences(variant, fresh):
    clf, data, train_loss, meta_loss = _problem()
    opt = _optimizer(clf, fresh, **variant)
    rw = MetaReweigher(K).double()
    with torch.no_grad():
        rw.logits.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    w0 = rw.logits.detach().clone()
    before = copy.deepcopy((clf.state_dict(), opt.state_dict()))
    meta_opt = torch.optim.SGD(rw.parameters(), lr=1.0)  # logits move by exactly -grad
    meta_reweigher_step(clf, opt, rw, meta_opt, train_loss, meta_loss, **data)
    analytic = w0 - rw.logits.detach()
    # the classifier and its optimiser are untouched by the meta step
    for k, v in before[0].items():
        assert torch.equal(v, clf.state_dict()[k])
    for k, st in before[1]["state"].items():
        assert torch.equal(st["momentum_buffer"], opt.state_dict()["state"][k]["momentum_buffer"])

    def f(w):  # the real thing: a torch SGD step with class weights w, then the meta loss
        c = copy.deepcopy(clf)
        o = _sgd(c.parameters(), **variant)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        train_loss(
            c(data["x_train"]), data["gt_train"], proposal_weights(w, data["gt_train"])
        ).backward()
        o.step()
        with torch.no_grad():
            return meta_loss(c(data["x_meta"]), data["gt_meta"])

    eps = 1e-6
    numeric = torch.stack(
        [(f(w0 + eps * e) - f(w0 - eps * e)) / (2 * eps) for e in torch.eye(K, dtype=torch.float64)]
    )
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)
    assert analytic.abs().max() > 1e-6  # not trivially zero


def test_meta_step_raises_tail_weight_on_imbalanced_toy():
    """Two overlapping classes, 90% head in training, balanced meta set: a softmax classifier
    is biased to the head, and meta steps move weight to the tail class."""
    g = torch.Generator().manual_seed(0)
    k = 2

    def sample(n_head, n_tail):
        x = torch.cat(
            [
                torch.randn(n_head, 2, generator=g) + torch.tensor([1.0, 0.0]),
                torch.randn(n_tail, 2, generator=g) - torch.tensor([1.0, 0.0]),
            ]
        )
        y = torch.cat([torch.zeros(n_head, dtype=torch.long), torch.ones(n_tail, dtype=torch.long)])
        return x, y

    clf = nn.Linear(2, k + 1)
    opt = torch.optim.SGD(clf.parameters(), lr=0.1, momentum=0.9)
    rw = MetaReweigher(k)
    meta_opt = torch.optim.Adam(rw.parameters(), lr=0.05)
    loss = lambda s, y, w: L.softmax_loss(s, y, weights=w)  # noqa: E731
    for _ in range(60):
        xt, yt = sample(90, 10)
        xm, ym = sample(50, 50)
        meta_reweigher_step(
            clf, opt, rw, meta_opt, loss, lambda s, y: L.softmax_loss(s, y), xt, yt, xm, ym
        )
        opt.zero_grad()
        loss(clf(xt), yt, rw(yt).detach()).backward()
        opt.step()
    w = rw.class_weights()
    assert w[1] > 0.6 > 0.4 > w[0], w


@pytest.mark.parametrize(
    "head,meta,expected",
    [
        ("dbm_bs", "same", "head"),
        ("dbm_cb", "same", "head"),
        ("balanced_softmax", "same", "head"),
        ("dbm_bs", "plain", "cosine softmax"),
        ("balanced_sigmoid", "plain", "sigmoid"),
        ("balanced_softmax", "plain", "softmax"),
    ],
)
def test_meta_loss_is_the_heads_whole_loss_or_the_plain_one(head, meta, expected):
    """LTDET.META.LOSS same = the head's classification loss as the main step computes it (DBM-BS
    with its prior, DBM-CB with its class weights); plain = the unbalanced loss of its family."""
    from types import SimpleNamespace

    from ltdet.engine.decoupled import DecoupledTrainStep

    from .test_roi_heads import make

    predictor = make(head)
    step = SimpleNamespace(predictor=predictor, meta_loss=meta)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 16, generator=g)
    gt = torch.arange(12) % (predictor.num_classes + 1)
    scores = predictor.cls_score(x)
    got = DecoupledTrainStep._meta_loss(step, scores, gt)
    want = {
        "head": lambda: predictor.classification_loss(scores, gt),
        "cosine softmax": lambda: L.softmax_loss(predictor.logit_scale * scores, gt),
        "sigmoid": lambda: L.sigmoid_loss(scores, gt),
        "softmax": lambda: L.softmax_loss(scores, gt),
    }[expected]()
    torch.testing.assert_close(got, want)
    if head == "dbm_bs" and meta == "same":  # the prior is in it
        without = L.dbm_loss(scores, gt, predictor.class_margin, scale=predictor.logit_scale)
        assert not torch.allclose(got, without)
    if head == "dbm_cb" and meta == "same":  # and the class weights (background: weight 1)
        k = predictor.num_classes
        cb = torch.where(gt < k, predictor.cb_weight[gt.clamp(max=k - 1)], torch.ones(()))
        weighted = L.dbm_loss(
            scores, gt, predictor.class_margin, scale=predictor.logit_scale, weights=cb
        )
        torch.testing.assert_close(got, weighted)
        without = L.dbm_loss(scores, gt, predictor.class_margin, scale=predictor.logit_scale)
        assert not torch.allclose(got, without)
