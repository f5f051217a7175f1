"""Triton kernels of :mod:`sd_tune.residual_kernels` (imported on first use).

Every tensor is seen as ``(rows, width)`` in memory order: one program writes ``BLOCK``
elements of one row, so a row's loads and stores are contiguous whatever the memory format.
Arithmetic is float32; results are stored in the tensors' own dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _source_and_scale(pos, row_scale, scale, row, HAS_POS: tl.constexpr, ROW_SCALE: tl.constexpr):
    """Row ``row``'s branch row (``pos[row]``, -1 for none, with HAS_POS; else ``row``) and
    its factor (``row_scale[row]`` with ROW_SCALE; else ``scale``)."""
    if HAS_POS:
        src = tl.load(pos + row).to(tl.int64)
    else:
        src = row
    if ROW_SCALE:
        s = tl.load(row_scale + row)
    else:
        s = scale
    return src, s


@triton.jit
def residual_relu_fwd(
    branch,
    identity,
    out,
    pos,
    row_scale,
    scale,
    width,
    HAS_POS: tl.constexpr,
    ROW_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``out[r] = relu(identity[r] + s_r * branch[src_r])``; ``src_r = pos[r]`` (no branch
    term where it is -1) with HAS_POS, else ``r``; ``s_r = row_scale[r]`` or ``scale``."""
    row = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < width
    y = tl.load(identity + row * width + cols, mask=inside).to(tl.float32)
    src, s = _source_and_scale(pos, row_scale, scale, row, HAS_POS, ROW_SCALE)
    b = tl.load(branch + src * width + cols, mask=inside & (src >= 0), other=0.0)
    y = y + b.to(tl.float32) * s
    y = tl.where(y <= 0.0, 0.0, y)  # torch.relu: NaN stays NaN
    tl.store(out + row * width + cols, y.to(out.dtype.element_ty), mask=inside)


@triton.jit
def residual_relu_bwd(
    grad,
    out,
    grad_identity,
    grad_branch,
    pos,
    row_scale,
    scale,
    width,
    HAS_POS: tl.constexpr,
    ROW_SCALE: tl.constexpr,
    WRITE_BRANCH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``grad_identity[r] = grad[r] * (out[r] > 0)``; with WRITE_BRANCH also
    ``grad_branch[src_r] = s_r * grad_identity[r]`` for the rows that have a branch row."""
    row = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < width
    g = tl.load(grad + row * width + cols, mask=inside)
    y = tl.load(out + row * width + cols, mask=inside)
    gi = tl.where(y <= 0.0, 0.0, g.to(tl.float32))
    tl.store(grad_identity + row * width + cols, gi.to(grad_identity.dtype.element_ty), mask=inside)
    if WRITE_BRANCH:
        src, s = _source_and_scale(pos, row_scale, scale, row, HAS_POS, ROW_SCALE)
        tl.store(
            grad_branch + src * width + cols,
            (gi * s).to(grad_branch.dtype.element_ty),
            mask=inside & (src >= 0),
        )


@triton.jit
def add_rows(dest, rows, idx, width, BLOCK: tl.constexpr):
    """``dest[idx[j]] += rows[j]``: the indices are distinct, so no atomics."""
    j = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < width
    row = tl.load(idx + j).to(tl.int64)
    a = tl.load(dest + row * width + cols, mask=inside).to(tl.float32)
    b = tl.load(rows + j * width + cols, mask=inside).to(tl.float32)
    tl.store(dest + row * width + cols, (a + b).to(dest.dtype.element_ty), mask=inside)
