"""M2m feature translation (ltdet.modeling.m2m) against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltdet.modeling.m2m import M2mTranslator, seed_accept_probs, target_class_probs, translate


def test_seed_accept_probs_by_hand():
    seeds = torch.tensor([100.0, 10.0, 5.0])
    targets = torch.tensor([5.0, 50.0])
    p = seed_accept_probs(seeds, targets, 0.99)
    want = torch.tensor([[1 - 0.99**95, 1 - 0.99**5, 0.0], [1 - 0.99**50, 0.0, 0.0]])
    torch.testing.assert_close(p, want)


def test_target_class_probs_by_hand():
    p = target_class_probs(torch.tensor([100.0, 50.0, 25.0, 100.0]))
    torch.testing.assert_close(p, torch.tensor([0.0, 0.5, 0.75, 0.0]) / 1.25)
    with pytest.raises(ValueError, match="same count"):
        target_class_probs(torch.tensor([3.0, 3.0]))


def _linear(weight, bias):
    lin = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_translate_one_step_by_hand(lam):
    torch.manual_seed(0)
    W, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    V = torch.randn(4, 3, dtype=torch.float64)
    g, f = _linear(W, b), _linear(V, torch.zeros(4, dtype=torch.float64))
    x0 = torch.rand(2, 3, dtype=torch.float64) + 1.0  # non-negative, far from the clamp
    k, k0 = torch.tensor([2, 1]), torch.tensor([0, 3])
    x1 = translate(x0, k, k0, g, f, lam, step_size=0.05, num_steps=1)
    # d/dx [CE(Wx + b, k) + lam * (Vx)_k0] = W^T (softmax(Wx + b) - e_k) + lam * V[k0]
    p = torch.softmax(x0 @ W.T + b, dim=1)
    grad = (p - F.one_hot(k, 4).double()) @ W + lam * V[k0]
    step = 0.05 * x0.norm(dim=1, keepdim=True) * grad / grad.norm(dim=1, keepdim=True)
    torch.testing.assert_close(x1, x0 - step)


def test_translate_keeps_nonnegative_features_nonnegative():
    g = _linear(
        torch.tensor([[5.0, -5.0], [-5.0, 5.0]], dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
    )
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # class 0; target 1 wants x[0] < 0
    x = translate(x0, torch.tensor([1]), torch.tensor([0]), g, g, 0.0, 0.5, 5)
    assert (x >= 0).all() and x[0, 0] == 0  # clamped like the original's [0, 1] images
    signed = translate(-x0, torch.tensor([0]), torch.tensor([1]), g, g, 0.0, 0.5, 5)
    assert (signed < 0).any()  # seeds with negative entries are not clamped


def _translator(counts, **kw):
    kw = dict(
        dict(
            attempts_per_image=40,
            beta=0.99,
            gamma=0.9,
            lam=0.1,
            step_size=0.3,
            num_steps=10,
            init_noise=0.05,
        ),
        **kw,
    )
    m = M2mTranslator(class_counts=counts, **kw)
    torch.manual_seed(0)
    g = nn.Linear(6, len(counts) + 1)  # softmax head: K + 1 outputs
    with torch.no_grad():
        g.weight.mul_(10.0)  # confident enough for some translations to pass gamma
    m.init_generator(g)
    return m, g


def _batch(num_classes, n=60):
    torch.manual_seed(1)
    gt = torch.randint(0, num_classes + 1, (n,))
    return torch.rand(n, 6), gt


def test_accepted_features_are_target_for_g_and_rejected_never_enter():
    counts = [200.0, 120.0, 30.0, 5.0, 1.0]
    m, g = _translator(counts, num_steps=3)  # some translations reach gamma, some do not
    x, gt = _batch(len(counts))
    f = nn.Linear(6, len(counts) + 1)
    torch.manual_seed(5)
    x_acc, y_acc, stats = m(x, gt, 2, f)
    assert stats["m2m_attempts"] == 80 and 0 < stats["m2m_accepted"] == len(y_acc)
    with torch.no_grad():
        probs = torch.softmax(g(x_acc), dim=1)
    assert (probs.gather(1, y_acc[:, None]) >= 0.9).all()
    assert torch.equal(probs.argmax(1), y_acc)
    assert (y_acc != 0).all()  # the largest class is never a target
    # Same draws with gamma = 0: every translated candidate; the accepted ones are exactly the
    # candidates g classifies as their target with probability >= gamma, in order.
    m.gamma = 0.0
    torch.manual_seed(5)
    x_all, y_all, stats_all = m(x, gt, 2, f)
    assert stats_all["m2m_accepted"] == stats_all["m2m_seed_pass"] > len(y_acc)
    with torch.no_grad():
        ok = torch.softmax(g(x_all), dim=1).gather(1, y_all[:, None]).squeeze(1) >= 0.9
    torch.testing.assert_close(x_all[ok], x_acc)
    assert torch.equal(y_all[ok], y_acc)


def test_seeds_no_larger_than_the_target_are_rejected():
    # Only the rarest class (count 1) in the batch: no seed is larger than any target.
    counts = [200.0, 50.0, 1.0]
    m, _ = _translator(counts, gamma=0.0)
    x = torch.rand(10, 6)
    gt = torch.tensor([2] * 5 + [3] * 5)  # class 2 and background
    x_acc, y_acc, stats = m(x, gt, 1, nn.Linear(6, 4))
    assert len(y_acc) == 0 and stats["m2m_accepted"] == 0


def test_seed_choice_and_rejection_rates():
    """Counts [100, 3, 1], five seeds each of classes 0 and 1. A target k is drawn with
    probability ~ 1 - N_k / N_max, a seed with probability ~ its acceptance
    p = 1 - beta^(N_seed - N_k), then kept with that p (M2m's code). The expected number of
    kept seeds over 4000 attempts, from those rules by hand:"""
    beta, n = 0.99, 4000
    m, _ = _translator([100.0, 3.0, 1.0], beta=beta, gamma=0.0, num_steps=1, attempts_per_image=n)
    gt = torch.tensor([0] * 5 + [1] * 5)
    t1, t2 = 1 - 3 / 100, 1 - 1 / 100  # target weights of classes 1 and 2
    p_to1 = 1 - beta**97  # only class-0 seeds are larger than class 1
    p0, p1 = 1 - beta**99, 1 - beta**2  # seeds for target 2
    kept_to2 = (p0 * p0 + p1 * p1) / (p0 + p1)  # pick ~ p, then keep with p
    expected = n * (t1 * p_to1 + t2 * kept_to2) / (t1 + t2)  # 2466; a uniform pick gives 1876
    torch.manual_seed(3)
    _, _, stats = m(torch.rand(10, 6), gt, 1, nn.Linear(6, 4))
    sd = math.sqrt(n * 0.25)
    assert abs(stats["m2m_seed_pass"] - expected) < 5 * sd, (stats["m2m_seed_pass"], expected)


def test_target_classes_follow_their_probabilities():
    counts = [100.0, 50.0, 25.0, 1.0]
    n = 6000
    # beta 0: every seed larger than its target is accepted, so the outputs show the targets
    m, _ = _translator(counts, beta=0.0, gamma=0.0, num_steps=1, attempts_per_image=n)
    torch.manual_seed(4)
    _, y, stats = m(torch.rand(8, 6), torch.zeros(8, dtype=torch.long), 1, nn.Linear(6, 5))
    assert stats["m2m_accepted"] == n
    want = torch.tensor([0.0, 0.5, 0.75, 0.99]) / 2.24  # 1 - N_k / N_max, normalised
    got = torch.bincount(y, minlength=4).double() / n
    sd = (want * (1 - want) / n).sqrt()
    assert ((got - want).abs() <= 5 * sd + 1e-12).all(), (got, want)


def test_invalid_hyper_parameters_name_the_key():
    for key, kw in [
        ("BETA", dict(beta=1.0)),
        ("GAMMA", dict(gamma=1.5)),
        ("STEP_SIZE", dict(step_size=0.0)),
        ("NUM_STEPS", dict(num_steps=0)),
        ("LAMBDA", dict(lam=-1.0)),
        ("ATTEMPTS_PER_IMAGE", dict(attempts_per_image=-1)),
        ("INIT_NOISE", dict(init_noise=-0.1)),
    ]:
        with pytest.raises(ValueError, match=f"LTDET.M2M.{key}"):
            M2mTranslator(class_counts=[5.0, 1.0], **kw)
    with pytest.raises(ValueError, match="positive training count"):
        M2mTranslator(class_counts=[5.0, 0.0])
    with pytest.raises(ValueError, match=r"one count per class .*shape \[1, 2\]"):
        M2mTranslator(class_counts=[[5.0, 1.0]])
    m = M2mTranslator(class_counts=[5.0, 1.0])
    with pytest.raises(RuntimeError, match="init_generator"):
        m(torch.rand(3, 6), torch.tensor([0, 1, 2]), 1, lambda z: z)
    # Counts must match the classifier's K + 1 columns, or class 2's proposals would pass as
    # background; the CosineClassifier of the DBM heads is checked the same way.
    from ltdet.modeling.box_predictor import CosineClassifier

    for classifier in (torch.nn.Linear(6, 4), CosineClassifier(6, 4)):
        with pytest.raises(ValueError, match="2 class counts .* 4 columns.* so 3 counts"):
            m.init_generator(classifier)
    m.init_generator(torch.nn.Linear(6, 3))


def test_generator_is_frozen_copy_and_in_state_dict():
    m, g = _translator([10.0, 2.0])
    assert all(not p.requires_grad for p in m.g.parameters())
    with torch.no_grad():
        g.weight.add_(1.0)  # the classifier trains on; g must not follow
    assert not torch.equal(m.g.weight, g.weight)
    state = m.state_dict()
    assert set(state) == {"g.weight", "g.bias", "initialized"} and bool(state["initialized"])
    fresh = M2mTranslator(class_counts=[10.0, 2.0])
    fresh.build_generator(g)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.g.weight, m.g.weight) and bool(fresh.initialized)
    assert math.isclose(float(fresh.target_probs[1]), 1.0)


def test_zero_attempts_add_nothing_and_draw_nothing():
    """ATTEMPTS_PER_IMAGE 0 turns M2m off: no samples (shaped to concatenate with the batch), and
    the RNG is not touched, so the run's ROI sampling stays that of plain re-training. The same
    holds for a batch without foreground."""
    counts = [200.0, 120.0, 30.0, 5.0, 1.0]
    x, gt = _batch(len(counts))
    f = nn.Linear(6, len(counts) + 1)
    for attempts, labels in [(0, gt), (40, torch.full_like(gt, len(counts)))]:
        m, _ = _translator(counts, attempts_per_image=attempts)
        torch.manual_seed(3)
        x_gen, y_gen, stats = m(x, labels, 2, f)
        assert x_gen.shape == (0, 6) and y_gen.shape == (0,) and y_gen.dtype == gt.dtype
        assert stats == {"m2m_attempts": float(attempts * 2), "m2m_accepted": 0.0}
        after = torch.rand(4)
        torch.manual_seed(3)
        assert torch.equal(after, torch.rand(4))
        assert torch.cat([gt, y_gen]).shape == gt.shape
