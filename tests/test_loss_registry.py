"""A loss declared in the registry alone is trained by the head and the decoupled step: a toy
logit-adjusted softmax registered here, with its own statistic, touches no other module."""

import pytest
import torch
import torch.nn.functional as F

from ltdet.modeling.loss_registry import (
    CLS_LOSS_REGISTRY,
    SOFTMAX,
    ClassificationLoss,
    get_loss,
    loss_names,
    register_loss,
)

from .test_end_to_end import _decoupled_cfg, base_model, tiny_cfg, tiny_root, train  # noqa: F401
from .test_roi_heads import COUNTS, K, make

NAME = "toy_logit_adjusted"
CALLS = []


def toy_loss(logits, gt_classes, toy_log_prior, weights=None, tau=1.0):
    """Softmax CE on logits + tau * log(n_j / n) (background column unshifted)."""
    CALLS.append(len(gt_classes))
    shift = torch.cat([tau * toy_log_prior, toy_log_prior.new_zeros(1)]).to(logits)
    per = F.cross_entropy(logits + shift, gt_classes, reduction="none")
    return per.mean() if weights is None else (per * weights).sum() / len(per)


def toy_stats(counts, num_images, options):
    return {"toy_log_prior": torch.log(counts / counts.sum())}, {"tau": 0.5}


@pytest.fixture(scope="module", autouse=True)
def toy():
    if NAME not in CLS_LOSS_REGISTRY:
        register_loss(ClassificationLoss(NAME, toy_loss, SOFTMAX, ("toy_log_prior",), toy_stats))
    return get_loss(NAME)


def test_registered_toy_loss_in_the_head():
    assert NAME in loss_names(background=True) and NAME in loss_names(family=SOFTMAX)
    head = make(NAME)
    assert head.cls_score.out_features == K + 1  # the family fixes the width
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    torch.testing.assert_close(
        head.stats["toy_log_prior"], torch.log(counts / counts.sum()).float()
    )
    assert head.loss_kwargs == {"tau": 0.5}
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, K + 1, generator=g)
    gt = torch.tensor([0, 1, 2, 3, 4, K])
    # by hand: -log softmax(z)_y with z_j = s_j + 0.5 log(n_j / n) for j < K
    prior = [0.5 * float(torch.log(c / counts.sum())) for c in counts] + [0.0]
    want = (
        sum(
            float(torch.logsumexp(scores[i] + torch.tensor(prior), 0))
            - (float(scores[i, y]) + prior[y])
            for i, y in enumerate(gt.tolist())
        )
        / 6
    )
    assert head.classification_loss(scores, gt).item() == pytest.approx(want, rel=1e-5)
    # test time: the softmax family's scores, the plain loss: softmax CE
    (probs,) = head.predict_probs((scores, None), [range(6)])
    torch.testing.assert_close(probs, F.softmax(scores, dim=1))
    torch.testing.assert_close(head.plain_loss(scores, gt), F.cross_entropy(scores, gt))
    with pytest.raises(ValueError, match="toy_logit_adjusted.*needs per-class training counts"):
        make(NAME, class_counts=None)


def test_registered_toy_loss_trains_end_to_end(base_model, tmp_path):  # noqa: F811
    base_dir, _ = base_model
    CALLS.clear()
    trainer, _ = train(
        tiny_cfg(
            tmp_path / "base",
            "configs/synthetic/base_softmax_rfs.yaml",
            "LTDET.LOSS.NAME",
            NAME,
            "SOLVER.MAX_ITER",
            2,
            "DATASETS.TEST",
            (),
        )
    )
    assert len(CALLS) == 2
    assert torch.isfinite(torch.tensor(trainer.storage.history("loss_cls").latest()))
    # decoupled with the Meta Reweigher on its own loss: look-ahead, meta loss and step
    CALLS.clear()
    base = torch.load(base_dir / "model_final.pth", map_location="cpu", weights_only=False)
    trainer, _ = train(
        _decoupled_cfg(
            base_dir, tmp_path / "dec", "LTDET.LOSS.NAME", NAME, "LTDET.META.LOSS", "same"
        )
    )
    assert len(CALLS) == 4 * 3  # 4 iterations: look-ahead, meta loss, step
    w = trainer.model.roi_heads.box_predictor.cls_score.weight
    assert not torch.equal(w.detach(), base["model"]["roi_heads.box_predictor.cls_score.weight"])
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))
