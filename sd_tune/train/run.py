""":func:`run_trial`: one trial from setup to its last report, and its progress line. Imports
torch, never Ray."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sd_tune.config import TrialConfig
from sd_tune.data import Splits
from sd_tune.train.checkpoint import (
    restore,
    save_and_report,
)
from sd_tune.train.evaluation import epoch_metrics
from sd_tune.train.loop import train_one_epoch
from sd_tune.train.runtime import (
    _deterministic,
    default_device,
    dist_info,
)
from sd_tune.train.setup import (
    Report,
    setup_trial,
)


def progress_line(m: dict[str, float], epochs: int) -> str:
    """One line for an epoch's metrics, as ``sd-tune train`` prints it."""
    line = (
        f"epoch {int(m['epoch'])}/{epochs}  train_loss {m['train_loss']:.4f} "
        f"acc {m['train_acc']:.4f} | val_loss {m['val_loss']:.4f} acc {m['val_acc']:.4f} "
        f"acc5 {m['val_acc5']:.4f} | {m['images_per_s']:.0f} img/s | lr {m['lr']:.4g} | "
        f"train {m['train_time_s']:.1f} s, wall {m['wall_time_s']:.1f} s"
    )
    if m.get("compile_time_s"):
        line += f", compile {m['compile_time_s']:.1f} s"
    if "test_acc" in m:
        line += (
            f" | test_loss {m['test_loss']:.4f} acc {m['test_acc']:.4f} acc5 {m['test_acc5']:.4f}"
        )
    return line


def run_trial(
    cfg: TrialConfig,
    report: Report,
    *,
    resume_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    say: Callable[[str], None] | None = None,
    progress_lines: bool = True,
    splits: Splits | None = None,
    replay: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train one configuration; call ``report(metrics, checkpoint_dir)`` after every epoch.

    Args:
        cfg: what to train and how.
        report: called once per epoch on every rank (see the module docstring).
        resume_dir: continue from such a checkpoint folder (copied) at the next epoch, with
            the optimizer, scheduler, RNG and stochastic-depth state it holds; a checkpoint of
            the last epoch returns its metrics without training.
        device: default ``cuda:<local rank>`` when CUDA is available, else CPU.
        prepare_model: wraps the model (Ray's ``prepare_model`` with
            ``parallel_strategy_kwargs=ddp_kwargs(sd)``); default DDP when distributed.
        say: where rank 0's lines go (default ``print``): one per epoch
            (:func:`progress_line`) and what a resume does.
        progress_lines: False leaves the epoch lines out (a caller that shows the metrics
            itself, such as the Ray Train glue, whose driver prints them).
        splits: replaces the data that ``cfg.dataset`` describes.
        replay: a resumed run first reports every epoch the checkpoint has already seen again
            (no checkpoint with them), for a caller whose record of them was lost, such as a
            restored Tune trial.
        log: the old name of ``say``.

    Rank and world size come from ``torch.distributed`` when it is initialised (else 0 / 1).
    Each report holds the metrics of :data:`sd_tune.config.EPOCH_METRICS` (finite floats;
    ``epoch`` is 1-based, ``lr`` is the rate of the epoch's last step, ``train_loss`` includes
    label smoothing, ``val_loss`` is plain cross-entropy, ``compile_time_s`` the seconds spent
    compiling, kept out of ``train_time_s`` and in ``wall_time_s``); the last one adds
    ``test_loss``, ``test_acc``, ``test_acc5``. Returns the last metrics reported.

    A non-finite training loss raises ``FloatingPointError`` naming the epoch and step where it
    first appeared, on every rank at the same step. The device is read for it only every
    ``train.nan_check_every`` steps and at the end of each epoch, so training stops within
    that many steps, and never reports or checkpoints non-finite weights.
    """
    t_start = time.perf_counter()
    rank, world_size = dist_info()
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    say = (say or log or print) if rank == 0 else (lambda _line: None)
    with _deterministic(cfg.train.deterministic):
        trial = setup_trial(
            cfg,
            device=device,
            rank=rank,
            world_size=world_size,
            splits=splits,
            prepare_model=prepare_model,
        )
        state = restore(trial, resume_dir, report=report, replay=replay, say=say)
        for epoch in range(state.start_epoch, cfg.train.epochs + 1):
            totals = train_one_epoch(trial, state, epoch)
            metrics = epoch_metrics(trial, state, epoch, totals, t_start)
            if progress_lines:
                say(progress_line(metrics, cfg.train.epochs))
            save_and_report(trial, state, metrics, report)
        return state.metrics
