"""The fused residual ops (sd_tune/residual_kernels.py): values and gradients against plain
torch, memory formats kept forward and backward, the gradient stash, and the Triton kernels
themselves, run on CPU tensors by Triton's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sd_tune import residual_kernels as rk

FORMATS = [torch.contiguous_format, torch.channels_last]
ROOT = Path(__file__).resolve().parents[1]


def leaf(shape: tuple[int, ...], fmt: torch.memory_format, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).contiguous(memory_format=fmt).requires_grad_()


def scale_value(kind: str, batch: int) -> float | torch.Tensor | None:
    # powers of two: a product is exact, so fused and unfused sums round alike
    return {
        "none": None,
        "number": 0.5,
        "rows": torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0])[:batch],
        "zero_dim": torch.tensor(0.25),
    }[kind]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["none", "number", "rows", "zero_dim"])
def test_residual_relu_matches_plain_torch(fmt: torch.memory_format, kind: str) -> None:
    branch, identity = leaf((5, 3, 4, 4), fmt, 0), leaf((5, 3, 4, 4), fmt, 1)
    scale = scale_value(kind, 5)
    out = rk.residual_relu(branch.clone(), identity, scale)  # a fresh tensor, as a BN output
    assert rk._layout(out) == fmt
    b2, i2 = branch.detach().clone().requires_grad_(), identity.detach().clone().requires_grad_()
    factor = 1.0 if scale is None else scale
    if isinstance(factor, torch.Tensor) and factor.dim() == 1:
        factor = factor.view(-1, 1, 1, 1)
    ref = torch.relu(i2 + b2 * factor)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(branch.grad, b2.grad, rtol=0, atol=0)
    torch.testing.assert_close(identity.grad, i2.grad, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stash", [False, True])
def test_row_gather_and_scatter_match_indexing(fmt: torch.memory_format, stash: bool) -> None:
    x = leaf((6, 3, 4, 4), fmt, 3)
    weight = torch.randn(1, 3, 1, 1, generator=torch.Generator().manual_seed(4))
    idx = torch.tensor([1, 2, 4])
    carry = rk.RowGradStash() if stash else None
    rows = rk.take_rows(x, idx, carry)
    assert rk._layout(rows) == fmt and torch.equal(rows, x.detach()[idx])
    out = rk.scatter_residual_relu(x, rows * weight, idx, 0.5, carry)
    assert rk._layout(out) == fmt
    x2 = x.detach().clone().requires_grad_()
    ref = torch.relu(x2 + torch.zeros_like(x2).index_copy(0, idx, x2[idx] * weight * 0.5))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    out.backward(grad.contiguous(memory_format=fmt))
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x2.grad)
    assert rk._layout(x.grad) == fmt


def test_rows_of_a_strided_input_are_taken_from_a_copy() -> None:
    x = torch.randn(4, 6, 5)[:, ::2].requires_grad_()  # no dense layout: copied first
    rows = rk.take_rows(x, torch.tensor([0, 3]))
    assert torch.equal(rows, x.detach()[[0, 3]])
    rows.sum().backward()
    assert x.grad[[0, 3]].eq(1).all() and x.grad[[1, 2]].eq(0).all()


_INTERPRETED = r'''
import torch
from sd_tune import StochasticDepth, build_model, residual_kernels as rk

def run(fn, tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.dtype)
    out.backward(grad.contiguous(memory_format=rk._layout(out)))
    return [out.detach(), *(t.grad for t in tensors)], out

def both(fn, *tensors, seed=0):
    """fn's output and input gradients with the Triton kernels, then with the torch ops."""
    results = []
    for enabled in (True, False):
        rk.TRITON_ENABLED = enabled
        torch.manual_seed(seed)
        results.append(run(fn, tensors))
    rk.TRITON_ENABLED = True
    return results

def check(a, b, exact):
    """Equal; or, in bfloat16 where one rounding differs, close but for rare ReLU-edge flips."""
    for x, y in zip(a, b):
        assert rk._layout(x) == rk._layout(y), (x.stride(), y.stride())
        if exact:
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        else:
            close = torch.isclose(x.float(), y.float(), rtol=2e-2, atol=2e-2)
            assert close.float().mean() > 0.99, close.float().mean()

g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for fmt in (torch.contiguous_format, torch.channels_last):
        br = torch.randn(5, 3, 4, 6, generator=g).to(dtype).contiguous(memory_format=fmt)
        idn = torch.randn(5, 3, 4, 6, generator=g).to(dtype).contiguous(memory_format=fmt)
        for scale in (None, 1.0, 0.7, torch.tensor([0., 1., 1., 0., 1.]),
                      torch.tensor([0., 2., 2., 0., 2.])):
            (a, out), (b, _) = both(lambda x, y: rk.residual_relu(x.clone(), y, scale), br, idn)
            assert "ResidualReLU" in type(out.grad_fn).__name__, "the Triton path did not run"
            exact = dtype == torch.float32 and (not isinstance(scale, float) or scale == 1.0)
            check(a, b, exact=exact)
            assert rk._layout(a[0]) == fmt
        idx = torch.tensor([0, 2, 3])
        for stash_on in (False, True):
            def subset(x):
                stash = rk.RowGradStash() if stash_on else None
                rows = rk.take_rows(x, idx, stash) * 2.0
                return rk.scatter_residual_relu(x, rows, idx, 0.5, stash)
            (a, _), (b, _) = both(subset, br)
            check(a, b, exact=dtype == torch.float32)
            assert rk._layout(a[0]) == fmt and rk._layout(a[1]) == fmt

# A whole model, channels_last, each method: the same draws give the same step either way.
for method, impl in (("sample", "mask"), ("sample", "subset"), ("block", "mask")):
    torch.manual_seed(0)
    model = StochasticDepth("auto", method, 0.5, sample_impl=impl).apply(
        build_model("cifar_resnet8", 10, 1)).to(memory_format=torch.channels_last).train()
    x = torch.randn(6, 1, 12, 12).contiguous(memory_format=torch.channels_last)
    grads = []
    for enabled in (True, False):
        rk.TRITON_ENABLED = enabled
        model.zero_grad()
        torch.manual_seed(1)
        for _ in range(3):
            model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    rk.TRITON_ENABLED = True
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4)
print("interpreted kernels agree")
'''


def test_triton_kernels_agree_with_torch_ops_under_the_interpreter() -> None:
    """The kernels that run on CUDA, run here by TRITON_INTERPRET=1 on CPU tensors, give the
    torch ops' values and gradients (exactly in float32) and keep the memory format."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_INTERPRETED)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interpreted kernels agree" in proc.stdout
