"""Evaluation on the plain model (validation and, after the last epoch, test) and the metrics of an
epoch report. Imports torch, never Ray."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from sd_tune.data import Loader
from sd_tune.surgery import expected_depth
from sd_tune.train.loop import EpochTotals
from sd_tune.train.runtime import (
    _all_reduce,
    _broadcast_buffers,
    compile_seconds,
)
from sd_tune.train.setup import (
    Trial,
    TrialState,
)

#: Metrics that depend on wall-clock time (they differ between otherwise identical runs).
TIMING_METRICS = ("train_time_s", "wall_time_s", "images_per_s")


def evaluate(
    model: nn.Module,
    loader: Loader,
    *,
    device: torch.device,
    world_size: int = 1,
    autocast: bool = False,
) -> dict[str, float]:
    """``{"loss", "acc", "acc5"}`` of ``model`` (plain cross-entropy, top-1 / top-5 accuracy)
    over ``loader``'s shards of all ranks: per-rank sums, one all-reduce after the loop.

    Pass the unwrapped model, never the DDP wrapper: eval shards are uneven across ranks.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        with torch.no_grad():
            for x, y in loader:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = model(x)
                logits = logits.float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                k = min(5, logits.shape[1])
                hits = logits.topk(k, dim=1).indices.eq(y[:, None])
                top1 += hits[:, 0].sum()
                top5 += hits.any(dim=1).sum()
                count += len(y)
    finally:
        model.train(was_training)
    loss, acc, acc5, n = _all_reduce([loss_sum, top1, top5, float(count)], device, world_size)
    if n == 0:
        raise ValueError(
            "The evaluation split is empty on every rank; there is nothing to "
            "evaluate. Raise dataset.val_fraction / dataset.max_eval_samples."
        )
    return {"loss": loss / n, "acc": acc / n, "acc5": acc5 / n}


def epoch_metrics(
    trial: Trial, state: TrialState, epoch: int, totals: EpochTotals, t_start: float
) -> dict[str, float]:
    """Evaluate after ``epoch`` and build its report (see :func:`run_trial`); updates
    ``state`` (times, history) and fails on non-finite metrics."""
    cfg, device = trial.cfg, trial.device
    state.train_time_s += totals.seconds
    compile_before = compile_seconds()
    _broadcast_buffers(trial.model, trial.world_size)

    def run_eval(loader: Loader) -> dict[str, float]:
        return evaluate(
            trial.eval_model,
            loader,
            device=device,
            world_size=trial.world_size,
            autocast=trial.bf16,
        )

    val = run_eval(trial.val_loader)
    metrics = {
        "epoch": float(epoch),
        "train_loss": totals.loss / totals.seen,
        "train_acc": totals.correct / totals.seen,
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        "val_acc5": val["acc5"],
        "train_time_s": state.train_time_s,
        "wall_time_s": 0.0,
        "images_per_s": totals.seen / max(totals.seconds, 1e-9),
        "lr": totals.lr,
        "expected_depth": expected_depth(trial.model),
        "compile_time_s": 0.0,
        # this rank's parameter fingerprint: equal on every rank unless DDP broke
        "param_checksum": _param_checksum(trial.model),
    }
    if epoch == cfg.train.epochs:
        test = run_eval(trial.test_loader)
        metrics.update(test_loss=test["loss"], test_acc=test["acc"], test_acc5=test["acc5"])
    state.compile_time_s += totals.compile_seconds + compile_seconds() - compile_before
    metrics["compile_time_s"] = state.compile_time_s
    metrics["wall_time_s"] = state.wall_before_s + time.perf_counter() - t_start
    bad_keys = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad_keys:
        raise FloatingPointError(
            f"non-finite metrics at epoch {epoch}: "
            + ", ".join(f"{k}={metrics[k]}" for k in bad_keys)
            + "; the model diverged. Lower train.lr."
        )
    state.history.append(dict(metrics))
    state.metrics = metrics
    return metrics


def _param_checksum(model: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))
