"""The tail of a stochastic-depth block, fused: residual add, drop and ReLU, and the row
gather and scatter of ``sample_impl="subset"``.

Three differentiable ops, each ``relu(identity + scale * branch)`` in some form:

- :func:`residual_relu`: ``relu(identity + scale * branch)``, ``scale`` None, a number or one
  value per row (the ``mask`` method's 0/1 mask, ``1/keep`` under ``scale_by_keep``);
- :func:`take_rows`: ``x[idx]``, in ``x``'s memory format;
- :func:`scatter_residual_relu`: ``relu(identity + scale * scatter(rows at idx))``.

On CUDA, in eager mode, they run Triton kernels that read and write each row once, forward
and backward, in the tensors' own memory format (a sample is one contiguous run of memory in
NCHW and in channels_last alike), with no atomics: the kept rows are distinct. Elsewhere (CPU,
float64, other layouts) plain torch ops compute the same values, and under ``torch.compile``
the same expressions are left to the compiler to fuse. Pure torch (Triton ships with it).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

# The Triton path: on for CUDA tensors; the Triton interpreter (TRITON_INTERPRET=1, set before
# this module first launches a kernel) runs it on CPU tensors too, which is how it is tested.
TRITON_ENABLED = True
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK = 1024
_kernels: Any = None  # the compiled kernels, made on first use (importing triton is slow)


def _layout(t: Tensor) -> torch.memory_format | None:
    """The memory format in which ``t`` is dense with the batch outermost, or None."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _rows(t: Tensor) -> Tensor:
    """``t`` as a ``(batch, -1)`` view in memory order (``t`` must have a ``_layout``)."""
    if t.dim() > 1 and not t.is_contiguous():
        t = t.permute(0, *range(2, t.dim()), 1)  # channels_last(_3d): N, spatial..., C
    return t.view(t.shape[0], -1)


def _from_rows(rows: Tensor, like: Tensor) -> Tensor:
    """Undo :func:`_rows` for a tensor shaped like ``like`` but with ``rows.shape[0]`` rows."""
    if like.dim() > 1 and not like.is_contiguous():
        spatial = like.shape[2:]
        nd = like.dim()
        return rows.view(rows.shape[0], *spatial, like.shape[1]).permute(
            0, nd - 1, *range(1, nd - 1)
        )
    return rows.view(rows.shape[0], *like.shape[1:])


def _match(t: Tensor, layout: torch.memory_format) -> Tensor:
    return t if _layout(t) == layout else t.contiguous(memory_format=layout)


def _use_triton(*tensors: Tensor) -> bool:
    first = tensors[0]
    return (
        TRITON_ENABLED
        and (first.is_cuda or _INTERPRET)
        and not torch.compiler.is_compiling()
        and all(t.dtype == first.dtype and t.device == first.device for t in tensors)
        and first.dtype in _TRITON_DTYPES
        and first.dim() >= 1
        and first.numel() > 0
    )


def _triton() -> Any:
    """The Triton kernels, compiled on first use; None where Triton is missing."""
    global _kernels
    if _kernels is None:
        try:
            from sd_tune import _residual_triton
        except ImportError:  # a torch build without Triton: the torch ops do the work
            _kernels = False
        else:
            _kernels = _residual_triton
    return _kernels or None


def _grid(rows: int, width: int) -> tuple[int, int]:
    return ((width + _BLOCK - 1) // _BLOCK, rows)


# ----------------------------------------------------------------------------------- forward


def _scale_args(scale: float | Tensor | None, batch: int) -> tuple[Tensor | None, float]:
    """The kernels' view of ``scale``: a float32 per-row vector, or one float."""
    if isinstance(scale, Tensor):
        return scale.reshape(batch).float(), 1.0
    return None, 1.0 if scale is None else float(scale)


def _torch_residual_relu(branch: Tensor, identity: Tensor, scale: float | Tensor | None) -> Tensor:
    # In place on ``branch``: on the CPU a fresh activation-sized tensor per block costs more
    # (page faults) than the extra pass of mul_.
    if isinstance(scale, Tensor):
        if scale.dim() == 1:
            scale = scale.view(-1, *(1,) * (branch.dim() - 1))
        branch = branch.mul_(scale.to(branch.dtype))
    elif scale is not None and scale != 1.0:
        branch = branch.mul_(scale)
    return branch.add_(identity).relu_()


class _ResidualReLU(torch.autograd.Function):
    """``relu(identity + scale * branch)`` in one Triton pass each way."""

    @staticmethod
    def forward(
        ctx: Any, branch: Tensor, identity: Tensor, row_scale: Tensor | None, scale: float
    ) -> Tensor:
        kernels = _triton()
        out = torch.empty_like(identity)
        batch = identity.shape[0]
        width = identity.numel() // batch
        kernels.residual_relu_fwd[_grid(batch, width)](
            _rows(branch),
            _rows(identity),
            _rows(out),
            None,
            row_scale,
            scale,
            width,
            HAS_POS=False,
            ROW_SCALE=row_scale is not None,
            BLOCK=_BLOCK,
        )
        ctx.save_for_backward(out, row_scale)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        out, row_scale = ctx.saved_tensors
        grad = _match(grad, _layout(out))
        grad_identity = torch.empty_like(out)
        same = row_scale is None and ctx.scale == 1.0  # then d(branch) == d(identity)
        grad_branch = grad_identity if same else torch.empty_like(out)
        batch = out.shape[0]
        width = out.numel() // batch
        _triton().residual_relu_bwd[_grid(batch, width)](
            _rows(grad),
            _rows(out),
            _rows(grad_identity),
            _rows(grad_branch),
            None,
            row_scale,
            ctx.scale,
            width,
            HAS_POS=False,
            ROW_SCALE=row_scale is not None,
            WRITE_BRANCH=not same,
            BLOCK=_BLOCK,
        )
        return grad_branch, grad_identity, None, None


def residual_relu(branch: Tensor, identity: Tensor, scale: float | Tensor | None = None) -> Tensor:
    """``relu(identity + scale * branch)``; ``scale`` None (1), a number, a 0-dim tensor, or one
    value per row (shape ``(batch,)``). ``branch`` must be a fresh tensor the caller owns (a
    BatchNorm output is): the torch path overwrites it with the result.

    >>> residual_relu(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]]), 2.0)
    tensor([[2.5000, 0.0000]])
    """
    if (
        _use_triton(branch, identity)
        and branch.shape == identity.shape
        and _layout(identity) is not None
        and _layout(branch) == _layout(identity)
        and not (
            isinstance(scale, Tensor) and (scale.dim() == 0 or scale.device != identity.device)
        )
        and _triton() is not None
    ):
        row_scale, value = _scale_args(scale, identity.shape[0])
        return _ResidualReLU.apply(branch, identity, row_scale, value)
    return _torch_residual_relu(branch, identity, scale)


# -------------------------------------------------------------------------------- row ops


class RowGradStash:
    """Hands the identity path's gradient from :func:`scatter_residual_relu` to
    :func:`take_rows` when the identity is the block input itself: the kept rows' gradient
    is then added into it in place instead of a zero-filled full tensor and a full sum."""

    __slots__ = ("grad",)

    def __init__(self) -> None:
        self.grad: Tensor | None = None


def _add_rows_(dest: Tensor, idx: Tensor, rows: Tensor, alpha: float = 1.0) -> Tensor:
    """``dest[idx] += alpha * rows`` in place; ``idx`` distinct, so no atomics are needed."""
    rows = _match(rows, _layout(dest))
    if _use_triton(dest, rows) and alpha == 1.0 and _triton() is not None:
        width = dest.numel() // max(dest.shape[0], 1)
        _triton().add_rows[_grid(idx.numel(), width)](
            _rows(dest), _rows(rows), idx, width, BLOCK=_BLOCK
        )
        return dest
    flat = _rows(dest)
    if dest.is_cuda:  # CUDA's index_add_ adds atomically; gather, add and copy back instead
        flat.index_copy_(0, idx, flat.index_select(0, idx).add_(_rows(rows), alpha=alpha))
    else:  # on the CPU index_add_ is one plain pass
        flat.index_add_(0, idx, _rows(rows), alpha=alpha)
    return dest


class _TakeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, idx: Tensor, stash: RowGradStash | None) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.stash, ctx.shape, ctx.layout = stash, x.shape, _layout(x)
        return _from_rows(_rows(x).index_select(0, idx), x)

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor, None, None]:
        (idx,) = ctx.saved_tensors
        grad = ctx.stash.grad if ctx.stash is not None else None
        if grad is None:
            grad = torch.empty(
                ctx.shape, dtype=grad_rows.dtype, device=grad_rows.device, memory_format=ctx.layout
            ).zero_()
        else:
            ctx.stash.grad = None
        return _add_rows_(grad, idx, grad_rows), None, None


class _TakeRowsTraced(torch.autograd.Function):
    """``x[idx]`` for torch.compile: the backward copies rows into zeros (no index_add)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.shape = x.shape
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        grad = grad_rows.new_zeros(ctx.shape)
        return grad.index_copy(0, idx, grad_rows), None


def take_rows(x: Tensor, idx: Tensor, stash: RowGradStash | None = None) -> Tensor:
    """``x[idx]`` along the batch, in ``x``'s memory format; ``idx`` distinct. Its gradient
    is copied back to those rows, or added into ``stash``'s gradient when one is handed over.

    >>> take_rows(torch.arange(6.0).view(3, 2), torch.tensor([0, 2]))
    tensor([[0., 1.],
            [4., 5.]])
    """
    if torch.compiler.is_compiling():
        return _TakeRowsTraced.apply(x, idx)
    if _layout(x) is None:
        x = x.contiguous()
    return _TakeRows.apply(x, idx, stash)


def _positions(idx: Tensor, batch: int) -> Tensor:
    """``pos[r] = j`` where ``idx[j] == r``, else -1: where each output row finds its branch row."""
    pos = torch.full((batch,), -1, dtype=torch.int32, device=idx.device)
    return pos.index_copy_(0, idx, torch.arange(idx.numel(), dtype=torch.int32, device=idx.device))


class _ScatterResidualReLU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        identity: Tensor,
        rows: Tensor,
        idx: Tensor,
        scale: float,
        stash: RowGradStash | None,
    ) -> Tensor:
        layout = _layout(identity)
        rows = _match(rows, layout)
        batch = identity.shape[0]
        if _use_triton(identity, rows) and _triton() is not None:
            out = torch.empty_like(identity)
            pos = _positions(idx, batch)
            width = identity.numel() // batch
            _triton().residual_relu_fwd[_grid(batch, width)](
                _rows(rows),
                _rows(identity),
                _rows(out),
                pos,
                None,
                scale,
                width,
                HAS_POS=True,
                ROW_SCALE=False,
                BLOCK=_BLOCK,
            )
        else:
            pos = None
            out = _add_rows_(
                identity.clone(memory_format=torch.preserve_format), idx, rows, scale
            ).relu_()
        ctx.save_for_backward(idx, out, pos)
        ctx.scale, ctx.stash = scale, stash
        ctx.rows_dtype = rows.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, None, None, None]:
        idx, out, pos = ctx.saved_tensors
        grad = _match(grad, _layout(out))
        if pos is not None:
            grad_identity = torch.empty_like(out)
            grad_rows = torch.empty(
                (idx.numel(), *out.shape[1:]),
                dtype=ctx.rows_dtype,
                device=out.device,
                memory_format=_layout(out),
            )
            width = out.numel() // out.shape[0]
            _triton().residual_relu_bwd[_grid(out.shape[0], width)](
                _rows(grad),
                _rows(out),
                _rows(grad_identity),
                _rows(grad_rows),
                pos,
                None,
                ctx.scale,
                width,
                HAS_POS=True,
                ROW_SCALE=False,
                WRITE_BRANCH=True,
                BLOCK=_BLOCK,
            )
        else:
            grad_identity = torch.ops.aten.threshold_backward(grad, out, 0)
            grad_identity = _match(grad_identity, _layout(out))
            grad_rows = _from_rows(_rows(grad_identity).index_select(0, idx), out)
            if ctx.scale != 1.0:
                grad_rows.mul_(ctx.scale)
        if ctx.stash is None:
            return grad_identity, grad_rows, None, None, None
        ctx.stash.grad = grad_identity
        return None, grad_rows, None, None, None


def scatter_residual_relu(
    identity: Tensor,
    rows: Tensor,
    idx: Tensor,
    scale: float | Tensor = 1.0,
    stash: RowGradStash | None = None,
) -> Tensor:
    """``relu(identity + scale * rows scattered to the batch rows idx)``; ``idx`` distinct.

    With a ``stash`` (the identity is the input of the :func:`take_rows` that made ``rows``),
    the identity's gradient goes to that ``take_rows``, which adds the rows' gradient into it.

    >>> scatter_residual_relu(torch.zeros(3, 2), torch.ones(1, 2), torch.tensor([1]))
    tensor([[0., 0.],
            [1., 1.],
            [0., 0.]])
    """
    if torch.compiler.is_compiling():
        scattered = torch.zeros_like(identity).index_copy(0, idx, rows * scale)
        return torch.relu(identity + scattered)
    if _layout(identity) is None:
        identity = identity.contiguous()
    return _ScatterResidualReLU.apply(identity, rows, idx, float(scale), stash)
