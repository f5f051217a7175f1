"""One epoch of training: the steps, the loss's finiteness checked every ``train.nan_check_every``
steps, and the epoch's totals. Imports torch, never Ray."""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from sd_tune.train.recipe import lr_factor
from sd_tune.train.runtime import (
    _all_reduce,
    _sync,
    compile_seconds,
)
from sd_tune.train.setup import (
    Trial,
    TrialState,
)


@dataclasses.dataclass
class EpochTotals:
    """One epoch of training, summed over ranks."""

    loss: float
    correct: float
    seen: float
    seconds: float  # training time, compilation excluded
    compile_seconds: float
    lr: float


_NO_NAN = torch.iinfo(torch.int64).max


def train_one_epoch(trial: Trial, state: TrialState, epoch: int) -> EpochTotals:
    """Train ``epoch`` (1-based): one pass over this rank's shard, ``steps_per_epoch`` steps.

    The loop never waits for the device but every ``train.nan_check_every`` steps and at the
    end, where all ranks check together for a non-finite loss (see :func:`run_trial`).
    """
    t, device = trial.cfg.train, trial.device
    every = max(1, t.nan_check_every)
    trial.train_loader.set_epoch(epoch)
    trial.model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), _NO_NAN, dtype=torch.int64, device=device)  # global step
    bad_loss = torch.zeros((), dtype=torch.float32, device=device)
    seen = 0
    lr = trial.optimizer.param_groups[0]["lr"]
    forced = t.fail_at_epoch == epoch
    compile_before = compile_seconds()
    _sync(device)
    t_epoch = time.perf_counter()
    steps = 0
    for x, y in trial.train_loader:
        if steps == trial.steps_per_epoch:
            break
        steps += 1
        trial.sd.set_progress(min(1.0, state.global_step / trial.total_steps))
        lr = trial.optimizer.param_groups[0]["lr"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trial.bf16):
            logits = trial.train_forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing)
        if forced:
            loss = loss * float("nan")
        state.global_step += 1
        finite = torch.isfinite(loss.detach())
        new_bad = ~finite & (first_bad == _NO_NAN)
        first_bad = torch.where(new_bad, state.global_step, first_bad)
        bad_loss = torch.where(new_bad, loss.detach().float(), bad_loss)
        trial.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trial.optimizer.step()
        trial.scheduler.step()
        n = len(y)
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += n
        if steps % every == 0:
            _check_finite(trial, first_bad, bad_loss)
    if steps % every:  # the steps since the last check (a check right at the end is done)
        _check_finite(trial, first_bad, bad_loss)
    _sync(device)
    elapsed = time.perf_counter() - t_epoch
    compiled = compile_seconds() - compile_before
    trial.sd.set_progress(min(1.0, state.global_step / trial.total_steps))
    loss_total, correct_total, seen_total = _all_reduce(
        [loss_sum, correct, float(seen)], device, trial.world_size
    )
    return EpochTotals(
        loss=loss_total,
        correct=correct_total,
        seen=seen_total,
        seconds=max(elapsed - compiled, 0.0),
        compile_seconds=compiled,
        lr=float(lr),
    )


def _check_finite(trial: Trial, first_bad: Tensor, bad_loss: Tensor) -> None:
    """Raise on every rank if any rank has seen a non-finite loss: one small collective and
    the only read of the device in the training loop."""
    first = first_bad.clone()
    if trial.world_size > 1:
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
    gs = int(first.item())
    if gs == _NO_NAN:
        return
    t = trial.cfg.train
    spe = trial.steps_per_epoch
    epoch, step = (gs - 1) // spe + 1, (gs - 1) % spe + 1
    lr = t.lr * lr_factor(gs - 1, trial.total_steps, trial.warmup_steps)
    own = int(first_bad.item()) == gs
    stopped_at = trial.scheduler.last_epoch  # optimizer steps taken so far
    raise _nan_error(
        float(bad_loss.item()) if own else 0.0,
        epoch,
        step,
        spe,
        gs,
        lr,
        forced=t.fail_at_epoch == epoch,
        stopped_at=stopped_at,
    )


def _nan_error(
    loss: float,
    epoch: int,
    step: int,
    steps: int,
    global_step: int,
    lr: float,
    forced: bool,
    stopped_at: int,
) -> FloatingPointError:
    return FloatingPointError(
        f"non-finite training loss ({loss if not math.isfinite(loss) else 'on another rank'}) "
        f"at epoch {epoch}, step {step} (of {steps} in the "
        f"epoch; global step {global_step}, lr {lr:.4g}; seen at the check after global step "
        f"{stopped_at}); the trial stops here instead of training on NaN. Lower train.lr, "
        f"raise train.warmup_epochs, or turn off train.bf16"
        + (f" (train.fail_at_epoch={epoch} forced this failure)" if forced else "")
    )
