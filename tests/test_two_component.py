import copy

import pytest
import torch
from torch import nn

from ltdet.data.dev_split import split_dev
from ltdet.engine.meta_step import two_component_weights
from ltdet.modeling import losses as L

K, D = 3, 5


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(D, K + 1).double()
    with torch.no_grad():
        clf.weight.copy_(torch.randn(K + 1, D, generator=g, dtype=torch.float64) * 0.3)
        clf.bias.zero_()
    opt = torch.optim.SGD(clf.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    clf(torch.ones(1, D, dtype=torch.float64)).sum().backward()
    opt.step()
    opt.zero_grad()
    x = torch.randn(10, D, generator=g, dtype=torch.float64)
    gt = torch.tensor([0, 1, 2, 3, 0, 0, 3, 1, 2, 0])
    x_dev = torch.randn(8, D, generator=g, dtype=torch.float64)
    gt_dev = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    cw = L.effective_number_weights([50.0, 5.0, 1.0], beta=0.9)
    return clf, opt, x, gt, x_dev, gt_dev, cw


def test_eps_update_matches_finite_differences():
    clf, opt, x, gt, x_dev, gt_dev, cw = _setup()
    tau = 7.0
    w = two_component_weights(
        clf, opt, cw, tau, L.softmax_loss, L.softmax_loss, x, gt, x_dev, gt_dev
    )
    fg = gt < K
    base = torch.where(fg, cw[gt.clamp(max=K - 1)], torch.ones(10, dtype=torch.float64))
    assert torch.equal(w[~fg], torch.ones(int((~fg).sum()), dtype=torch.float64))  # background: 1

    def dev_after_step(eps):  # a real torch SGD step with weights base + eps, then the dev loss
        c = copy.deepcopy(clf)
        o = torch.optim.SGD(c.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
        o.load_state_dict(copy.deepcopy(opt.state_dict()))
        L.softmax_loss(c(x), gt, base + eps).backward()
        o.step()
        with torch.no_grad():
            return L.softmax_loss(c(x_dev), gt_dev)

    delta = 1e-6
    grad = torch.stack(
        [
            (dev_after_step(delta * e) - dev_after_step(-delta * e)) / (2 * delta)
            for e in torch.eye(10, dtype=torch.float64)
        ]
    )
    expected = base - tau * grad * fg  # eps = 0 - tau * grad, foreground only
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-9)
    assert (w[fg] - base[fg]).abs().max() > 1e-6


def test_no_clipping_no_normalisation():
    clf, opt, x, gt, x_dev, gt_dev, cw = _setup()
    w = two_component_weights(
        clf, opt, cw, 1e5, L.softmax_loss, L.softmax_loss, x, gt, x_dev, gt_dev
    )
    fg = gt < K
    assert (w[fg] < 0).any()  # a huge step makes some weights negative: kept as they are
    assert not torch.isclose(w[fg].mean(), torch.tensor(1.0, dtype=torch.float64))


def _dicts(class_sets):
    return [{"annotations": [{"category_id": c} for c in cs]} for cs in class_sets]


def test_dev_split_is_balanced_deterministic_and_keeps_training_images():
    images = [[0]] * 20 + [[0, 1]] * 3 + [[1]] * 2 + [[2]] * 3
    train, dev = split_dev(_dicts(images), 3, per_class=2, seed=0)
    assert sorted(train + dev) == list(range(len(images))) and not set(train) & set(dev)
    per_class = [sum(c in images[i] for i in dev) for c in range(3)]
    assert per_class[1] == 2 and per_class[2] == 2 and 2 <= per_class[0] <= 4
    for c in range(3):  # every class keeps a training image
        assert any(c in images[i] for i in train)
    assert split_dev(_dicts(images), 3, per_class=2, seed=0) == (train, dev)
    assert split_dev(_dicts(images), 3, per_class=2, seed=1) != (train, dev)


def test_dev_split_never_takes_a_later_class_s_last_image():
    """Images {0,1,2}, {0,2}, {1,2} with 2 per class: classes 0 and 1 (2 images each) may each
    give one; class 2 may not then take the image that is the other class's last."""
    import itertools

    for images in itertools.permutations([[0, 1, 2], [0, 2], [1, 2]]):
        for seed in range(4):
            train, dev = split_dev(_dicts(images), 3, per_class=2, seed=seed)
            for c in range(3):
                assert any(c in images[i] for i in train), (images, seed, dev)
                assert any(c in images[i] for i in dev), (images, seed, dev)


def test_dev_split_goes_rarest_first_and_counts_shared_images():
    """Class 1 (2 images, both shared with class 0) picks first: its dev image also counts for
    class 0, so one image covers both. Frequent-first would usually pick one of class 0's own
    images first, then one for class 1: two images, one training image of class 0 lost."""
    images = [[0, 1], [0, 1], [0], [0], [0], [0]]
    for seed in range(10):
        train, dev = split_dev(_dicts(images), 2, per_class=1, seed=seed)
        assert len(dev) == 1 and dev[0] in (0, 1), (seed, dev)


def test_dev_split_refuses_classes_it_cannot_cover():
    images = [[0]] * 5 + [[1]]  # class 1 has a single image
    with pytest.raises(ValueError, match=r"cannot cover classes \[1\].*ALLOW_UNCOVERED"):
        split_dev(_dicts(images), 2, per_class=1)
    train, dev = split_dev(_dicts(images), 2, per_class=1, allow_uncovered=True)
    assert 5 in train and len(dev) == 1
    with pytest.raises(ValueError, match="DEV_IMAGES_PER_CLASS"):
        split_dev(_dicts(images), 2, per_class=0)
