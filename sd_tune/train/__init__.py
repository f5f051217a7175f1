"""The training loop for one trial: data, model, stochastic depth, train, evaluate, checkpoint.

:func:`run_trial` knows nothing of Ray. It reports through a ``report(metrics,
checkpoint_dir)`` callable after every epoch, and runs alone (one process) or under an
initialised ``torch.distributed`` process group (DDP, one process per rank).

Reporting contract (what a caller such as the Ray Train glue relies on):

* every rank calls ``report`` once per epoch, the same number of times; the metrics are
  global (summed over ranks) and equal on every rank, except the timing ones, which each
  rank measures itself (rank 0's are the ones to keep);
* only rank 0 passes a ``checkpoint_dir``, a fresh temporary folder holding
  :data:`CHECKPOINT_FILE`; other ranks pass ``None``. The folder is deleted as soon as
  ``report`` returns, so ``report`` must copy or upload it before returning.

Recipe: SGD with Nesterov momentum, weight decay on conv/linear weights only, label
smoothing, linear LR warmup then cosine to zero stepped per iteration, bf16 autocast and
channels_last on GPU, optional ``torch.compile``.

A package, one idea a module: ``recipe``, ``runtime`` (rank, device, seeds), ``setup``,
``checkpoint``, ``loop`` (one epoch), ``evaluation``, ``run`` (:func:`run_trial`). It imports torch
and sd-tune's own layers below it, never Ray.
"""

from __future__ import annotations

from sd_tune.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from sd_tune.train.evaluation import TIMING_METRICS, evaluate
from sd_tune.train.recipe import build_optimizer, build_scheduler, lr_factor, param_groups
from sd_tune.train.run import progress_line, run_trial
from sd_tune.train.runtime import default_device, dist_info
from sd_tune.train.setup import (
    Report,
    Trial,
    TrialState,
    ddp_kwargs,
    setup_trial,
    stochastic_depth_from_config,
)

__all__ = [
    "CHECKPOINT_FILE",
    "TIMING_METRICS",
    "Report",
    "Trial",
    "TrialState",
    "build_optimizer",
    "build_scheduler",
    "ddp_kwargs",
    "default_device",
    "dist_info",
    "evaluate",
    "load_checkpoint",
    "lr_factor",
    "param_groups",
    "progress_line",
    "run_trial",
    "setup_trial",
    "stochastic_depth_from_config",
]
