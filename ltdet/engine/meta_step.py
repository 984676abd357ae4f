"""One bi-level step of the Meta Reweigher (BALMS supp. B.2), written with ``torch.func``.

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


def _all_reduce(tensors: Dict[str, torch.Tensor], average: bool) -> Dict[str, torch.Tensor]:
    world = _world()
    if world == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    dist.all_reduce(flat)
    if average:
        flat /= world
    out, i = {}, 0
    for k, t in tensors.items():
        out[k] = flat[i:i + t.numel()].view_as(t)
        i += t.numel()
    return out


def sgd_lookahead(optimizer: torch.optim.Optimizer, named: Dict[str, nn.Parameter],
                  grads: Dict[str, torch.Tensor]):
    """What ``optimizer.step()`` (torch SGD) would make of ``named`` given ``grads``, without
    touching it; also returns c = d theta' / d g per parameter (a scalar)."""
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
    named = {k: p for k, p in classifier.named_parameters() if p.requires_grad}
    params = {k: p.detach() for k, p in named.items()}

    def inner(w_logits):  # gradient of the weighted training loss w.r.t. the classifier
        def loss(ps):
            scores = functional_call(classifier, ps, (x_train,))
            return train_loss(scores, gt_train, proposal_weights(w_logits, gt_train))
        return grad(loss)(params)

    w = reweigher.logits.detach()
    g_local, back = vjp(inner, w)
    g_avg = _all_reduce(g_local, average=True)
    new_params, coef = sgd_lookahead(optimizer, named, g_avg)

    def outer(ps):
        return meta_loss(functional_call(classifier, ps, (x_meta,)), gt_meta)

    v = _all_reduce(grad(outer)(new_params), average=True)
    world = _world()
    (h,) = back({k: v[k] * (coef[k] / world) for k in v})
    h = _all_reduce({"w": h}, average=False)["w"]

    meta_optimizer.zero_grad(set_to_none=True)
    reweigher.logits.grad = h
    meta_optimizer.step()
    return {"meta_grad_norm": float(h.norm())}
