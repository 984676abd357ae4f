"""Bi-level steps on per-proposal loss weights, written with ``torch.func``: the Meta Reweigher
(BALMS supp. B.2) and the two-component weights of Jamal et al. 2020 share ``meta_gradient``.

The classifier is a linear layer on frozen RoI features, so the look-ahead needs only the
features of the training batch (reused from the main step) and of the meta batch:

  theta'(w) = SGD_step(theta, grad_theta L_train(theta, w))   (the real optimiser's lr, momentum
                                                                buffer, weight decay, nesterov)
  dL_meta(theta'(w)) / dw = c * v^T d g(w) / dw,  v = grad L_meta(theta'),  c = d theta' / d g

Distributed: theta' uses the gradient averaged over ranks; v is averaged over ranks; each rank
back-propagates v through its own gradient g_r(w) and the results are summed (scaled by 1/W),
which is exactly the gradient of the all-rank meta loss. Every rank ends with the same meta
gradient, so the class weights stay identical.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call, grad, vjp

from ..modeling.meta_reweigher import MetaReweigher, proposal_weights

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # scores, gt, w


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_tensors(tensors: Dict, average: bool) -> Dict:
    """Sum (or average) each tensor over all ranks in one collective; the same dict when there
    is one process. Used for the meta gradients here and the decoupled step's gradients."""
    world = _world()
    if world == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    dist.all_reduce(flat)
    if average:
        flat /= world
    out, i = {}, 0
    for k, t in tensors.items():
        out[k] = flat[i : i + t.numel()].view_as(t)
        i += t.numel()
    return out


def sgd_lookahead(
    optimizer: torch.optim.Optimizer, named: Dict[str, nn.Parameter], grads: Dict[str, torch.Tensor]
):
    """What ``optimizer.step()`` (torch SGD) would make of ``named`` given ``grads``, without
    touching it; also returns c = d theta' / d g per parameter (a scalar)."""
    # The look-ahead is SGD's update rule (BALMS, Jamal et al.): another optimizer (an
    # overridden build_optimizer) would be simulated wrongly, without a word.
    if not isinstance(optimizer, torch.optim.SGD) or any(
        g.get("maximize") for g in optimizer.param_groups
    ):
        raise ValueError(
            f"the meta look-ahead simulates a torch.optim.SGD step (minimising), but "
            f"the training optimizer is {type(optimizer).__name__}: use detectron2's "
            "SGD (Trainer.build_optimizer) with LTDET.META / LTDET.TWO_COMPONENT"
        )
    new, coef = {}, {}
    for k, p in named.items():
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        lr, mom, wd = group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        damp, nesterov = group.get("dampening", 0.0), group.get("nesterov", False)
        d_p = grads[k] + wd * p.detach()
        c = 1.0
        if mom:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is None:
                buf_new = d_p
            else:
                buf_new = mom * buf + (1 - damp) * d_p
                c = 1 - damp
            if nesterov:
                d_p, c = d_p + mom * buf_new, 1 + mom * c
            else:
                d_p = buf_new
        new[k] = p.detach() - lr * d_p
        coef[k] = -lr * c
    return new, coef


def meta_gradient(
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loss: LossFn,
    weights_of: Callable[[torch.Tensor], torch.Tensor],
    w: torch.Tensor,
    meta_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_train: torch.Tensor,
    gt_train: torch.Tensor,
    x_meta: torch.Tensor,
    gt_meta: torch.Tensor,
    shared: bool = True,
) -> torch.Tensor:
    """d L_meta(theta'(w)) / d w for per-proposal loss weights ``weights_of(w)``.

    ``shared``: w is the same on every rank (class weights: the per-rank contributions are
    summed); otherwise w is this rank's own (per-proposal weights: the local term is the whole
    derivative). The classifier and ``optimizer`` are untouched.
    """
    named = {k: p for k, p in classifier.named_parameters() if p.requires_grad}
    params = {k: p.detach() for k, p in named.items()}

    def inner(w_):  # gradient of the weighted training loss w.r.t. the classifier
        def loss(ps):
            scores = functional_call(classifier, ps, (x_train,))
            return train_loss(scores, gt_train, weights_of(w_))

        return grad(loss)(params)

    g_local, back = vjp(inner, w.detach())
    g_avg = all_reduce_tensors(g_local, average=True)
    new_params, coef = sgd_lookahead(optimizer, named, g_avg)

    def outer(ps):
        return meta_loss(functional_call(classifier, ps, (x_meta,)), gt_meta)

    v = all_reduce_tensors(grad(outer)(new_params), average=True)
    world = _world()
    (h,) = back({k: v[k] * (coef[k] / world) for k in v})
    return all_reduce_tensors({"w": h}, average=False)["w"] if shared else h


def meta_reweigher_step(
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    reweigher: MetaReweigher,
    meta_optimizer: torch.optim.Optimizer,
    train_loss: LossFn,
    meta_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_train: torch.Tensor,
    gt_train: torch.Tensor,
    x_meta: torch.Tensor,
    gt_meta: torch.Tensor,
) -> Dict[str, float]:
    """Update ``reweigher`` by one meta step; the classifier and ``optimizer`` are untouched."""
    h = meta_gradient(
        classifier,
        optimizer,
        train_loss,
        lambda w: proposal_weights(w, gt_train),
        reweigher.logits,
        meta_loss,
        x_train,
        gt_train,
        x_meta,
        gt_meta,
        shared=True,
    )
    meta_optimizer.zero_grad(set_to_none=True)
    reweigher.logits.grad = h
    meta_optimizer.step()
    return {"meta_grad_norm": float(h.norm())}


def two_component_weights(
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    class_weights: torch.Tensor,
    eps_lr: float,
    train_loss: LossFn,
    dev_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_train: torch.Tensor,
    gt_train: torch.Tensor,
    x_dev: torch.Tensor,
    gt_dev: torch.Tensor,
) -> torch.Tensor:
    """Per-proposal weights w_y + eps_i of Jamal et al. 2020 (Algorithm 1, lines 8-13).

    eps starts at 0, one look-ahead step of the classifier with weights w_y + eps, the gradient
    of the (unweighted) loss on a balanced development batch w.r.t. eps, one step
    ``eps = -eps_lr * grad``; no clipping, no normalisation. Foreground proposals only:
    background proposals keep weight 1 (the paper has no background class).
    """
    num_classes = class_weights.numel()
    fg = gt_train < num_classes
    base = torch.where(
        fg,
        class_weights[gt_train.clamp(max=num_classes - 1)],
        torch.ones_like(gt_train, dtype=class_weights.dtype),
    )

    def weights_of(eps):
        return base + torch.where(fg, eps, torch.zeros_like(eps))

    eps0 = torch.zeros_like(base)
    h = meta_gradient(
        classifier,
        optimizer,
        train_loss,
        weights_of,
        eps0,
        dev_loss,
        x_train,
        gt_train,
        x_dev,
        gt_dev,
        shared=False,
    )
    return weights_of(-eps_lr * h).detach()
