"""Triton kernels behind the fused Balanced Softmax / balanced sigmoid losses on CUDA.

On a GPU the eager fused losses in ``losses.py`` are bound by kernel launches: about 15 small
ops per forward+backward against the 5 of ``F.cross_entropy``.  Here each direction is one
row-wise kernel: the forward reads the logits once and writes two numbers per row, the backward
reads them once and writes the gradient.  The losses call these only for CUDA float32/16 logits
outside ``torch.func`` transforms and compilation; everything else (CPU, float64, the
differentiable backward used by the meta look-ahead) stays on the eager path.

Set ``LTDET_TRITON=0`` to turn the kernels off.  With ``TRITON_INTERPRET=1`` set before import,
``rows_forward`` / ``rows_backward`` also take CPU tensors (Triton's interpreter): that is how the
CPU tests check them.
"""

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - torch's CPU wheels come without triton
    triton = None

ENABLED = os.environ.get("LTDET_TRITON", "1") != "0" and triton is not None
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BLOCK = 2048  # columns per loop step; LVIS's 1203 (+1) classes fit in one


def usable(logits: Tensor) -> bool:
    """Whether the kernels can serve ``logits`` (else the caller uses its eager path)."""
    return (
        ENABLED
        and logits.is_cuda
        and logits.dtype in _DTYPES
        and logits.dim() == 2
        and logits.stride(1) == 1
        and not torch._C._functorch.is_functorch_wrapped_tensor(logits)
        and not torch.compiler.is_compiling()
    )


if triton is not None:

    @triton.jit
    def _rows_fwd(
        x_ptr,
        shift_ptr,
        gt_ptr,
        out_ptr,
        aux_ptr,
        n_cols,
        stride_x,
        k,
        SIGMOID: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Per row i, z = x_i + [y_i < K] * shift (shift [K]; softmax's column K gets 0).
        softmax: out = lse(z) - z[y_i] (the CE), aux = lse(z);
        sigmoid: out = sum_j softplus(z_j) - [fg] z[y_i] (sum of BCE over one-hot targets)."""
        row = tl.program_id(0).to(tl.int64)
        gt = tl.load(gt_ptr + row)
        fg = gt < k
        x_row = x_ptr + row * stride_x
        cols = tl.arange(0, BLOCK)
        if SIGMOID:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
        else:
            m_vec = tl.full([BLOCK], -1e30, dtype=tl.float32)  # finite: no inf - inf
            s_vec = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            z = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
            z += tl.where(fg, tl.load(shift_ptr + c, mask=c < k, other=0.0).to(tl.float32), 0.0)
            if SIGMOID:
                softplus = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
                acc += tl.where(mask, softplus, 0.0)
            else:
                z = tl.where(mask, z, -float("inf"))
                m_new = tl.maximum(m_vec, z)
                s_vec = s_vec * tl.exp(m_vec - m_new) + tl.exp(z - m_new)
                m_vec = m_new
        t = tl.minimum(gt, n_cols - 1)  # sigmoid background rows: masked by fg below
        z_t = tl.load(x_row + t).to(tl.float32) + tl.where(
            fg, tl.load(shift_ptr + tl.minimum(gt, k - 1)).to(tl.float32), 0.0
        )
        if SIGMOID:
            tl.store(out_ptr + row, tl.sum(acc, axis=0) - tl.where(fg, z_t, 0.0))
        else:
            m = tl.max(m_vec, axis=0)
            lse = m + tl.log(tl.sum(s_vec * tl.exp(m_vec - m), axis=0))
            tl.store(out_ptr + row, lse - z_t)
            tl.store(aux_ptr + row, lse)

    @triton.jit
    def _rows_bwd(
        x_ptr,
        shift_ptr,
        gt_ptr,
        lse_ptr,
        scale_ptr,
        scale_stride,
        grad_ptr,
        n_cols,
        stride_x,
        stride_g,
        k,
        SIGMOID: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """grad_i = scale_i * (p(z_i) - onehot(y_i)), p = softmax (exp(z - lse)) or sigmoid;
        the sigmoid one-hot is all-zero on background rows (y = K matches no column)."""
        row = tl.program_id(0).to(tl.int64)
        gt = tl.load(gt_ptr + row)
        fg = gt < k
        r = tl.load(scale_ptr + row * scale_stride).to(tl.float32)
        if not SIGMOID:
            lse = tl.load(lse_ptr + row)
        x_row = x_ptr + row * stride_x
        g_row = grad_ptr + row * stride_g
        cols = tl.arange(0, BLOCK)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            z = tl.load(x_row + c, mask=mask, other=0.0).to(tl.float32)
            z += tl.where(fg, tl.load(shift_ptr + c, mask=c < k, other=0.0).to(tl.float32), 0.0)
            if SIGMOID:
                p = 1.0 / (1.0 + tl.exp(-z))
            else:
                p = tl.exp(z - lse)
            p -= tl.where(c == gt, 1.0, 0.0)
            tl.store(g_row + c, (p * r).to(grad_ptr.dtype.element_ty), mask=mask)


def _block(n_cols: int) -> int:
    return min(_MAX_BLOCK, triton.next_power_of_2(max(n_cols, 16)))


def rows_forward(
    logits: Tensor, shift: Tensor, gt_classes: Tensor, sigmoid: bool, block: Optional[int] = None
) -> Tuple[Tensor, Optional[Tensor]]:
    """Per-row loss ``[N]`` (float32) and, for softmax, the row log-sum-exp ``[N]`` (else None).

    ``shift`` [K] is added to the first K logits of foreground rows (``y < K``): softmax logits
    are [N, K+1] (background column unshifted), sigmoid logits [N, K].
    """
    n, n_cols = logits.shape
    out = torch.empty(n, device=logits.device, dtype=torch.float32)
    aux = None if sigmoid else torch.empty_like(out)
    if n:
        _rows_fwd[(n,)](
            logits,
            shift.contiguous(),
            gt_classes.contiguous(),
            out,
            out if aux is None else aux,
            n_cols,
            logits.stride(0),
            shift.numel(),
            SIGMOID=sigmoid,
            BLOCK=block or _block(n_cols),
        )
    return out, aux


def rows_backward(
    logits: Tensor,
    shift: Tensor,
    gt_classes: Tensor,
    lse: Optional[Tensor],
    row_scale: Tensor,
    sigmoid: bool,
    block: Optional[int] = None,
) -> Tensor:
    """d loss / d logits for per-row scales ``row_scale`` ([N], or a 0-d tensor for all rows)."""
    n, n_cols = logits.shape
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if n:
        _rows_bwd[(n,)](
            logits,
            shift.contiguous(),
            gt_classes.contiguous(),
            row_scale if lse is None else lse,
            row_scale,
            0 if row_scale.dim() == 0 else row_scale.stride(0),
            grad,
            n_cols,
            logits.stride(0),
            grad.stride(0),
            shift.numel(),
            SIGMOID=sigmoid,
            BLOCK=block or _block(n_cols),
        )
    return grad
