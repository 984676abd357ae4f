"""Classification losses for long-tailed instance segmentation (pure torch).

Conventions follow detectron2: ``N`` proposals, ``K`` foreground classes, ``gt_classes`` is a
LongTensor ``[N]`` with values in ``[0, K]`` where ``K`` means background.  Softmax-family losses
take ``[N, K+1]`` logits (last column = background), sigmoid-family losses take ``[N, K]`` logits
(no background column).  Every loss accepts per-proposal ``weights`` ``[N]`` and reduces as
``sum_i w_i * l_i / N`` (N = number of proposals, not the weight sum, so a meta reweigher's
weights keep their absolute scale); ``weights=None`` is the plain mean.

Equation numbers refer to the BALMS supplementary material (Ren et al., NeurIPS 2020).
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.class_stats import CountsLike, check_num_images, validate_counts

__all__ = [
    "softmax_loss",
    "sigmoid_loss",
    "balanced_softmax_loss",
    "balanced_sigmoid_loss",
    "eql_loss",
    "federated_classes",
    "federated_loss",
    "dbm_loss",
    "dbm_cb_loss",
    "dbm_class_margins",
    "effective_number_weights",
    "validate_counts",
    "softmax_log_prior",
    "sigmoid_log_prior_odds",
    "image_frequency",
    "sigmoid_bias_init",
    "check_logit_width",
]


# --------------------------------------------------------------------------- reduction helpers
def _reduce(per_proposal: Tensor, weights: Optional[Tensor]) -> Tensor:
    """sum_i w_i * l_i / N (plain mean when ``weights`` is None)."""
    if weights is None:
        return per_proposal.mean()
    if weights.shape != per_proposal.shape:
        raise ValueError(
            f"weights must have shape [N] = {list(per_proposal.shape)}, got {list(weights.shape)}"
        )
    return (per_proposal * weights).sum() / per_proposal.shape[0]


def _empty(logits: Tensor) -> Tensor:
    # The mean over zero proposals would be NaN; a zero that depends on logits keeps the graph.
    return logits.sum() * 0.0


def _one_hot_fg(gt_classes: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """[N, K] targets: one-hot for foreground proposals, all-zero rows for background (= K)."""
    classes = torch.arange(num_classes, device=gt_classes.device)
    return (gt_classes[:, None] == classes[None, :]).to(dtype)


def _bce_per_proposal(logits: Tensor, gt_classes: Tensor) -> Tensor:
    """[N] sum over the K columns of BCE-with-logits (stable for any logit magnitude)."""
    targets = _one_hot_fg(gt_classes, logits.shape[1], logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)


# --------------------------------------------------------------------------- losses
def softmax_loss(logits: Tensor, gt_classes: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """(K+1)-way softmax cross entropy, as in detectron2's FastRCNNOutputLayers.

    With ``weights=None`` this is exactly ``F.cross_entropy(logits, gt_classes)``.
    """
    if logits.shape[0] == 0:
        return _empty(logits)
    if weights is None:
        return F.cross_entropy(logits, gt_classes, reduction="mean")
    return _reduce(F.cross_entropy(logits, gt_classes, reduction="none"), weights)


def sigmoid_loss(logits: Tensor, gt_classes: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """K binary logistic regressions (A.2 Eq. 13): BCE summed over classes, mean over proposals.

    Background proposals have all-zero targets, so they only push every class down.
    """
    if logits.shape[0] == 0:
        return _empty(logits)
    return _reduce(_bce_per_proposal(logits, gt_classes), weights)


def balanced_softmax_loss(
    logits: Tensor, gt_classes: Tensor, log_prior: Tensor, weights: Optional[Tensor] = None
) -> Tensor:
    """Balanced Softmax (A.1 Eq. 10): softmax CE on ``eta_j + log n_j`` for foreground proposals.

    ``log_prior`` is ``[K]`` = ``log(n_j / mean_k n_k)`` (see ``softmax_log_prior``): normalised
    relative to a uniform class distribution, so uniform counts give exactly the plain softmax.
    Against the unshifted background logit the normaliser matters (the paper has no background
    class): with long-tailed counts the class-mean shift is log(geometric / arithmetic mean) < 0.

    The background logit is untouched (shift 0) and background proposals use the plain softmax CE:
    Balanced Softmax corrects the label-distribution shift among foreground classes (long-tailed
    train vs balanced test), not the fg/bg ratio, and the A.2 remark says background proposals
    must keep the standard loss (suppressing background gradients causes false positives).
    """
    if logits.shape[0] == 0:
        return _empty(logits)
    check_logit_width("balanced_softmax", logits.shape[1], log_prior.numel(), True)
    _check_weights(weights, gt_classes)
    logits = _fused_input(logits)
    return _BalancedSoftmaxCE.apply(logits, log_prior.to(logits), gt_classes, weights)[0]


def _check_weights(weights: Optional[Tensor], gt_classes: Tensor) -> None:
    if weights is not None and weights.shape != gt_classes.shape:
        raise ValueError(
            f"weights must have shape [N] = {list(gt_classes.shape)}, got {list(weights.shape)}"
        )


def _kernels_for(logits: Tensor):
    """The Triton module when it can serve ``logits`` (CUDA), else None.  Imported on first use,
    so CPU-only processes never load Triton."""
    if not logits.is_cuda:
        return None
    from . import fused_kernels

    return fused_kernels if fused_kernels.usable(logits) else None


def _fused_input(logits: Tensor) -> Tensor:
    """Half-precision logits go to the eager path of the fused losses as float32. Autocast
    does not reach inside an autograd Function, and log-softmax / softplus summed over classes
    in bf16 lose up to ~3e-2 of the loss (tests/test_losses.py). The stock losses run in
    float32 under autocast (its fp32 op list); the Triton kernels accumulate in float32."""
    if logits.dtype in (torch.float16, torch.bfloat16) and _kernels_for(logits) is None:
        return logits.float()
    return logits


def _shifted(logits: Tensor, shift: Tensor, gt_classes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """z = logits + [y < K] * shift on the first K columns (a softmax background column stays),
    with the [N] foreground mask and the shift padded to the logits' width."""
    k = shift.numel()
    fg = (gt_classes < k).to(logits.dtype)
    row = (
        shift if logits.shape[1] == k else torch.cat([shift, shift.new_zeros(logits.shape[1] - k)])
    )
    return torch.addcmul(logits, fg[:, None], row[None, :]), fg, row


class _BalancedSoftmaxCE(torch.autograd.Function):
    """sum_i w_i * CE(z_i, y_i) / N with z = logits + fg[:, None] * shift, fused.

    The composite ``F.cross_entropy(addcmul(...))`` allocates three logits-sized tensors (z, its
    log-softmax, kept for backward, and the gradient) plus nll's zero-filled gradient.  Here the
    forward keeps only the row log-sum-exp ``[N]``; the backward rebuilds z and turns it into the
    gradient (d CE / d z = exp(z - lse) - onehot(y)).  On CUDA each direction is one Triton kernel
    (``fused_kernels``); elsewhere a few eager ops, in place.  Nothing logits-sized is saved, so
    ``retain_graph`` and repeated backwards stay exact.  Under ``create_graph`` or ``torch.func``
    the backward uses differentiable ops, so higher-order gradients (the meta look-ahead) are exact.
    """

    @staticmethod
    def forward(logits, shift, gt_classes, weights):
        kernels = _kernels_for(logits)
        if kernels is not None:
            nll, lse = kernels.rows_forward(logits, shift, gt_classes, sigmoid=False)
        else:
            z, fg, row = _shifted(logits, shift, gt_classes)
            torch.log_softmax(z, dim=1, out=z)  # in place: row-wise kernel, same shape
            nll = -z.gather(1, gt_classes[:, None]).squeeze(1)
            z_target = logits.gather(1, gt_classes[:, None]).squeeze(1) + fg * row[gt_classes]
            lse = z_target + nll
        n = logits.shape[0]
        loss = nll.mean() if weights is None else (nll * weights).sum() / n
        return loss, lse, nll

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, shift, gt_classes, weights = inputs
        _, lse, nll = output
        ctx.mark_non_differentiable(lse, nll)
        ctx.save_for_backward(logits, shift, gt_classes, weights, lse, nll)

    @staticmethod
    def backward(ctx, grad_loss, _grad_lse, _grad_nll):
        logits, shift, gt_classes, weights, lse, nll = ctx.saved_tensors
        n = logits.shape[0]
        scale = grad_loss / n
        grad_logits = grad_weights = None
        if torch.is_grad_enabled():
            # Differentiable path (create_graph=True, torch.func): recompute from the inputs.
            logp = torch.log_softmax(_shifted(logits, shift, gt_classes)[0], 1)
            if ctx.needs_input_grad[0]:
                onehot = F.one_hot(gt_classes, logits.shape[1]).to(logp.dtype)
                row = scale if weights is None else (weights * scale)[:, None]
                grad_logits = (logp.exp() - onehot) * row
            if weights is not None and ctx.needs_input_grad[3]:
                grad_weights = -logp.gather(1, gt_classes[:, None]).squeeze(1) * scale
            return grad_logits, None, None, grad_weights
        if ctx.needs_input_grad[0]:
            row = scale if weights is None else weights * scale
            kernels = _kernels_for(logits)
            if kernels is not None:
                grad_logits = kernels.rows_backward(
                    logits, shift, gt_classes, lse, row, sigmoid=False
                )
            else:
                grad_logits = _shifted(logits, shift, gt_classes)[0]
                grad_logits.sub_(lse[:, None]).exp_()
                grad_logits[torch.arange(n, device=logits.device), gt_classes] -= 1
                grad_logits.mul_(row if weights is None else row[:, None])
        if weights is not None and ctx.needs_input_grad[3]:
            grad_weights = nll * scale
        return grad_logits, None, None, grad_weights


def balanced_sigmoid_loss(
    logits: Tensor, gt_classes: Tensor, log_prior_odds: Tensor, weights: Optional[Tensor] = None
) -> Tensor:
    """Balanced sigmoid (A.2 Eq. 23 with its Remark).

    On foreground proposals every one of the K logits is shifted by
    ``log_prior_odds[j] = -log((1 - p_j) / p_j) = log(n_j / (n - n_j))`` (the constant
    ``(n/k) / (n - n/k)`` of Eq. 23 is dropped, as the Remark prescribes); background proposals
    use the raw logits with all-zero targets.  BCE summed over classes, mean over proposals.
    """
    if logits.shape[0] == 0:
        return _empty(logits)
    check_logit_width("balanced_sigmoid", logits.shape[1], log_prior_odds.numel(), False)
    _check_weights(weights, gt_classes)
    logits = _fused_input(logits)
    return _BalancedSigmoidBCE.apply(logits, log_prior_odds.to(logits), gt_classes, weights)[0]


class _BalancedSigmoidBCE(torch.autograd.Function):
    """sum_i w_i sum_j BCE(z_ij, t_ij) / N with z = logits + fg[:, None] * shift, fused.

    Per row, sum_j BCE = sum_j softplus(z_ij) - fg_i z_{i,y_i} (one-hot targets), so no target
    matrix is built and only the row sums ``[N]`` are saved; the backward rebuilds z and turns
    it into sigmoid(z) - onehot.  As in ``_BalancedSoftmaxCE``: one Triton kernel per direction
    on CUDA, and under ``create_graph`` or ``torch.func`` a differentiable backward (exact
    second order).
    """

    @staticmethod
    def forward(logits, shift, gt_classes, weights):
        kernels = _kernels_for(logits)
        if kernels is not None:
            per_row = kernels.rows_forward(logits, shift, gt_classes, sigmoid=True)[0]
        else:
            z, fg, _ = _shifted(logits, shift, gt_classes)
            target = gt_classes.clamp(max=logits.shape[1] - 1)[:, None]  # bg rows: masked below
            z_target = z.gather(1, target).squeeze(1) * fg
            # softplus's linear branch above 20 is off by < exp(-20): below float32 resolution.
            per_row = F.softplus(z).sum(1).sub_(z_target)
        n = logits.shape[0]
        loss = per_row.mean() if weights is None else (per_row * weights).sum() / n
        return loss, per_row

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, shift, gt_classes, weights = inputs
        _, per_row = output
        ctx.mark_non_differentiable(per_row)
        ctx.save_for_backward(logits, shift, gt_classes, weights, per_row)

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_row):
        logits, shift, gt_classes, weights, per_row = ctx.saved_tensors
        n, num_classes = logits.shape
        scale = grad_loss / n
        grad_logits = grad_weights = None
        if torch.is_grad_enabled():  # differentiable path (create_graph=True, torch.func)
            z = _shifted(logits, shift, gt_classes)[0]
            onehot = _one_hot_fg(gt_classes, num_classes, z.dtype)
            if ctx.needs_input_grad[0]:
                row = scale if weights is None else (weights * scale)[:, None]
                grad_logits = (torch.sigmoid(z) - onehot) * row
            if weights is not None and ctx.needs_input_grad[3]:
                grad_weights = (F.softplus(z) - z * onehot).sum(1) * scale
            return grad_logits, None, None, grad_weights
        if ctx.needs_input_grad[0]:
            row = scale if weights is None else weights * scale
            kernels = _kernels_for(logits)
            if kernels is not None:
                grad_logits = kernels.rows_backward(
                    logits, shift, gt_classes, None, row, sigmoid=True
                )
            else:
                grad_logits = _shifted(logits, shift, gt_classes)[0].sigmoid_()
                fg = (gt_classes < num_classes).nonzero().squeeze(1)
                grad_logits[fg, gt_classes[fg]] -= 1
                grad_logits.mul_(row if weights is None else row[:, None])
        if weights is not None and ctx.needs_input_grad[3]:
            grad_weights = per_row * scale
        return grad_logits, None, None, grad_weights


def eql_loss(
    logits: Tensor,
    gt_classes: Tensor,
    class_freq: Tensor,
    lambda_: float = 1.76e-3,
    weights: Optional[Tensor] = None,
) -> Tensor:
    """Equalization Loss (Tan et al., CVPR 2020), sigmoid form.

    Per-element weight ``w_ij = 1 - E(r_i) T(f_j) (1 - y_ij)`` with ``E = 1`` for foreground
    proposals (0 for background) and ``T(f) = 1[f < lambda_]`` on the image frequency ``f_j``:
    foreground proposals ignore the negative terms of rare classes (so rare classes are not
    discouraged by other classes' objects), background proposals keep all negatives.
    ``lambda_``'s default is the paper's 1.76e-3; ltdet's configs use the EQL code's 1.77e-3
    (LTDET.LOSS.EQL_LAMBDA).
    """
    if logits.shape[0] == 0:
        return _empty(logits)
    num_classes = logits.shape[1]
    targets = _one_hot_fg(gt_classes, num_classes, logits.dtype)
    fg_mask = (gt_classes < num_classes).to(logits.dtype)
    rare = (class_freq.to(logits.device) < lambda_).to(logits.dtype)
    # Build w = 1 - E T (1 - y) in one buffer (in-place is safe: no grad flows through w).
    # Zeroing (i, gt_i) removes the positive term from the suppression; for background rows
    # the clamped index hits a row that is already all zero.
    suppress = torch.outer(fg_mask, rare)
    suppress.scatter_(1, gt_classes.clamp(max=num_classes - 1)[:, None], 0.0)
    weight = suppress.neg_().add_(1.0)
    bce = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="none")
    return _reduce(bce.sum(dim=1), weights)


def federated_classes(
    gt_classes: Tensor,
    class_weight: Tensor,
    num_classes: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Classes used by the federated loss (Zhou et al. 2021): sorted LongTensor of class ids.

    The foreground classes present in ``gt_classes`` plus classes drawn without replacement with
    probability proportional to ``class_weight`` (``image_count ** 0.5``) until ``num_classes``
    classes in total; if the present classes already reach ``num_classes`` only they are used.
    Unlike detectron2's ``get_fed_loss_classes`` the background id never takes up a slot.
    """
    num_total = class_weight.numel()
    present = torch.unique(gt_classes[gt_classes < num_total])
    num_missing = min(num_classes, num_total) - present.numel()
    if num_missing <= 0:
        return present
    prob = class_weight.to(device=gt_classes.device, dtype=torch.float).clone()
    prob[present] = 0.0
    # Never ask for more classes than have non-zero probability (multinomial would raise).
    num_missing = min(num_missing, int((prob > 0).sum()))
    if num_missing == 0:
        return present
    sampled = torch.multinomial(prob, num_missing, replacement=False, generator=generator)
    return torch.sort(torch.cat([present, sampled])).values


def federated_loss(
    logits: Tensor,
    gt_classes: Tensor,
    class_weight: Tensor,
    num_classes: int = 50,
    generator: Optional[torch.Generator] = None,
    weights: Optional[Tensor] = None,
    classes: Optional[Tensor] = None,
) -> Tensor:
    """Federated loss: sigmoid BCE summed over ``federated_classes(...)`` only, mean over proposals.

    ``classes``: that subset drawn beforehand (a meta look-ahead and the step it simulates must
    use one draw); it must hold every foreground class of ``gt_classes``."""
    if logits.shape[0] == 0:
        return _empty(logits)
    if classes is None:
        classes = federated_classes(gt_classes, class_weight, num_classes, generator)
    elif not torch.isin(gt_classes[gt_classes < class_weight.numel()], classes).all():
        raise ValueError(
            "federated_loss: the given classes miss a foreground class of "
            "gt_classes; draw them with federated_classes(gt_classes, ...)"
        )
    # Only the selected columns enter the loss, so compute BCE on them alone ([N, C], C << K).
    targets = (gt_classes[:, None] == classes[None, :]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits[:, classes], targets, reduction="none")
    return _reduce(bce.sum(dim=1), weights)


def dbm_loss(
    cos: Tensor,
    gt_classes: Tensor,
    class_margin: Tensor,
    scale: float = 30.0,
    log_prior: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
) -> Tensor:
    """Difficulty-aware balancing margin loss (Son et al. 2025, Eqs. 6-9) on a cosine classifier.

    ``cos`` is ``[N, K+1]`` cosine similarities (last column background). For a foreground
    proposal of class y the positive logit is ``s cos(theta_y + m_C[y] + 1[hard] m_I)`` with
    ``m_I = m_C[y] (1 - cos theta_y) / 2`` (Eqs. 7-8, differentiated as written) and
    "hard" meaning the largest cosine is not y's (Eq. 9); every other logit is ``s cos theta_j``.
    With ``log_prior`` (DBM-BS, Eq. 11: Balanced Softmax's prior) foreground proposals add it to
    the K class logits; it is ``softmax_log_prior``'s ``log(n_j / mean n)``, not Eq. 4's
    ``log(n_j / sum n)``: against the unshifted background column the normaliser matters (see
    ``balanced_softmax_loss``). ``theta_y + margin`` is capped at pi (the DBM code does not cap;
    past pi the cosine would rise again and reward the hardest positives).
    Background: the background column never gets a margin or a prior, and background proposals
    take the plain scaled-cosine softmax, as in ``balanced_softmax_loss`` (A.2 remark).
    """
    if cos.shape[0] == 0:
        return _empty(cos)
    num_classes = cos.shape[1] - 1
    logits = scale * cos
    fg = gt_classes < num_classes
    idx = torch.nonzero(fg).squeeze(1)
    if idx.numel():
        y = gt_classes[idx]
        cos_y = cos[idx, y].clamp(-1 + 1e-6, 1 - 1e-6)  # acos has an infinite slope at +-1
        m_c = class_margin.to(cos)[y]
        hard = (cos[idx].argmax(dim=1) != y).to(cos.dtype)
        margin = m_c + hard * m_c * (1 - cos_y) / 2
        positive = scale * torch.cos((torch.acos(cos_y) + margin).clamp(max=math.pi))
        logits = logits.index_put((idx, y), positive)
    if log_prior is not None:
        shift_row = torch.cat([log_prior.to(cos), cos.new_zeros(1)])
        logits = torch.addcmul(logits, fg.to(cos.dtype)[:, None], shift_row[None, :])
    return softmax_loss(logits, gt_classes, weights)


def dbm_cb_loss(
    cos: Tensor,
    gt_classes: Tensor,
    class_margin: Tensor,
    cb_weight: Tensor,
    scale: float = 30.0,
    weights: Optional[Tensor] = None,
) -> Tensor:
    """DBM-CB (Son et al. 2025, Eq. 10): ``dbm_loss`` with each foreground proposal's loss
    multiplied by its class's class-balanced weight ``cb_weight`` [K] (background: 1), on top of
    any per-proposal ``weights``."""
    _check_weights(weights, gt_classes)
    cb = torch.cat([cb_weight, cb_weight.new_ones(1)])[gt_classes]
    weights = cb if weights is None else weights * cb
    return dbm_loss(cos, gt_classes, class_margin, scale=scale, weights=weights)


def dbm_class_margins(counts: CountsLike, k: float = 0.1, tau: float = 1.0) -> Tensor:
    """``m_C = K rho_y^(-tau)``, ``rho_y = n_y / n_min`` (DBM Eq. 6): the rarest class gets K."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    counts = validate_counts(counts, counts.numel(), name="class counts")
    if k < 0 or tau < 0:
        raise ValueError(
            f"DBM margins need LTDET.DBM.K >= 0 and LTDET.DBM.TAU >= 0, got K={k}, tau={tau}"
        )
    return k * (counts / counts.min()).pow(-tau)


def effective_number_weights(counts: CountsLike, beta: Optional[float] = None) -> Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_y)`` (Cui et al. 2019; Jamal et al. 2020
    Eq. 6), normalised to mean 1 over classes. ``beta=None`` means ``(n - 1) / n`` with n the
    total count (Jamal et al.)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    counts = validate_counts(counts, counts.numel(), name="class counts")
    if beta is None:
        total = counts.sum()
        beta = float((total - 1) / total)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta (LTDET.LOSS.CB_BETA) must be in [0, 1), got {beta}")
    w = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return w / w.mean()


# --------------------------------------------------------------------------- statistics
def softmax_log_prior(counts: CountsLike, floor: Optional[float] = None) -> Tensor:
    """``log(n_j / mean_k n_k)``: Balanced Softmax prior (Eq. 10) relative to a uniform prior."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    counts = validate_counts(counts, counts.numel(), floor=floor)
    return torch.log(counts / counts.mean())


def sigmoid_log_prior_odds(
    counts: CountsLike, num_images: float, floor: Optional[float] = None
) -> Tensor:
    """``log(p_j / (1 - p_j))`` with ``p_j = n_j / num_images`` (Eq. 23 shift, constant dropped).

    As in the original BALMS code, ``counts`` are image counts and ``num_images`` the number of
    training images.  A class present in every image (``p_j = 1``) would give +inf there; ``p_j``
    is capped at ``num_images / (num_images + 1)`` so its log-odds is ``log(num_images)``.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    counts = validate_counts(counts, counts.numel(), name="class image counts", floor=floor)
    check_num_images(counts, num_images, "class image counts")
    p = (counts / num_images).clamp(max=num_images / (num_images + 1.0))
    return torch.log(p) - torch.log1p(-p)


def image_frequency(counts: CountsLike, num_images: float) -> Tensor:
    """``f_j = n_j / num_images``: fraction of training images containing class j (for EQL).

    Zero counts are allowed here: such a class simply has frequency 0 (rare).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    counts = validate_counts(counts, counts.numel(), "class image counts", allow_zero=True)
    check_num_images(counts, num_images, "class image counts")
    return counts / num_images


def sigmoid_bias_init(prior_prob: float = 0.001) -> float:
    """``-log((1 - p) / p)``: sigmoid classifier bias so every class starts at probability p."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"LTDET.LOSS.SIGMOID_PRIOR_PROB must be in (0, 1), got {prior_prob}")
    return -math.log((1.0 - prior_prob) / prior_prob)


# --------------------------------------------------------------------------- logit width
def check_logit_width(name: str, num_columns: int, num_classes: int, background: bool) -> None:
    """Raise unless loss ``name`` gets K+1 columns (``background``) or K: a softmax head or
    checkpoint used with a sigmoid loss (or the reverse) fails loudly."""
    expected = num_classes + 1 if background else num_classes
    if num_columns == expected:
        return
    want = (
        f"K+1 logits (K={num_classes} + background)"
        if background
        else f"K logits (K={num_classes})"
    )
    if not background and num_columns == num_classes + 1:
        got = "K+1 columns: a softmax checkpoint/head?"
    elif background and num_columns == num_classes:
        got = "K columns: a sigmoid checkpoint/head?"
    else:
        got = f"{num_columns} columns: check MODEL.ROI_HEADS.NUM_CLASSES vs the class statistics"
    raise ValueError(f"loss {name!r} expects {want} but got {got}")
