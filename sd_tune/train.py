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

This module imports torch and sd-tune's own layers below it, never Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sd_tune.config import TrainConfig, TrialConfig
from sd_tune.data import Loader, Splits, load_dataset, make_loaders
from sd_tune.models import build_model
from sd_tune.surgery import StochasticDepth, expected_depth

__all__ = [
    "CHECKPOINT_FILE",
    "TIMING_METRICS",
    "Report",
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
    "stochastic_depth_from_config",
]

#: The file a checkpoint folder holds (a ``torch.save`` of a dict of tensors and plain data,
#: loaded with ``weights_only=True``: reading a checkpoint never runs code).
CHECKPOINT_FILE = "checkpoint.pt"
#: Metrics that depend on wall-clock time (they differ between otherwise identical runs).
TIMING_METRICS = ("train_time_s", "wall_time_s", "images_per_s")
_CHECKPOINT_FORMAT = 2  # 1: RNG states as numpy arrays and tuples, which need unpickling

Report = Callable[[dict[str, float], "str | None"], None]


# --------------------------------------------------------------------------- small helpers


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``.

    >>> dist_info()
    (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    """``cuda:<local rank>`` when CUDA is available, else ``cpu``.

    The local rank comes from ``$LOCAL_RANK``, else the global rank modulo the GPU count.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK")
    index = int(local) if local is not None else dist_info()[0] % torch.cuda.device_count()
    return torch.device("cuda", index)


def stochastic_depth_from_config(cfg: TrialConfig) -> StochasticDepth:
    """The :class:`~sd_tune.StochasticDepth` object described by ``cfg.stochastic_depth``.

    >>> stochastic_depth_from_config(TrialConfig()).stochastic_method
    'sample'
    """
    s = cfg.stochastic_depth
    return StochasticDepth(
        s.target_layer_name,
        s.stochastic_method,
        s.drop_rate,
        s.drop_distribution,
        s.drop_warmup,
        s.scale_by_keep,
        s.sample_impl,
    )


def ddp_kwargs(sd: StochasticDepth) -> dict[str, Any]:
    """Keyword arguments for ``DistributedDataParallel`` (or Ray's ``prepare_model``'s
    ``parallel_strategy_kwargs``) that this stochastic depth needs.

    >>> ddp_kwargs(StochasticDepth(stochastic_method="block"))
    {'find_unused_parameters': True}
    """
    return {"find_unused_parameters": sd.find_unused_parameters}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: ``"decay"`` (weights with ``ndim > 1``: conv and linear)
    with ``weight_decay``, and ``"no_decay"`` (BatchNorm parameters and biases) with 0.

    >>> groups = param_groups(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), 5e-4)
    >>> [(g["name"], len(g["params"]), g["weight_decay"]) for g in groups]
    [('decay', 1, 0.0005), ('no_decay', 3, 0.0)]
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum (Nesterov when ``train.nesterov``) over :func:`param_groups`.

    >>> build_optimizer(nn.Linear(2, 2), TrainConfig(lr=0.5)).param_groups[0]["lr"]
    0.5
    """
    return torch.optim.SGD(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov and train.momentum > 0,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning-rate multiplier used by optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps, then a
    cosine from 1 down to 0 at ``step == total_steps``.

    >>> [lr_factor(s, 10, 2) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` following :func:`lr_factor`; call ``step()`` after every
    optimizer step.

    >>> opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    >>> build_scheduler(opt, 10, 2).get_last_lr()
    [0.5]
    """

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`run_trial` (a folder or the file itself) to CPU.

    Only tensors and plain data are read (``torch.load(weights_only=True)``): a file that
    holds other Python objects, such as a checkpoint of sd-tune's format 1 or one planted in
    the storage, raises ``ValueError`` and nothing in it runs.
    """
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"No sd-tune checkpoint at {file}: a checkpoint folder holds "
            f"{CHECKPOINT_FILE} (written by run_trial's report)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        why = why if len(why) <= 160 else why[:157] + "..."
        raise ValueError(
            f"{file} is not a checkpoint sd-tune can load: sd-tune reads only tensors and plain "
            f"data from checkpoints, so that loading one never runs code, and this file holds "
            f"something else ({why}). It was written by an sd-tune older than checkpoint "
            f"format {_CHECKPOINT_FORMAT}, or not by sd-tune: train the run again under a new "
            f"name"
        ) from None
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{file} is not an sd-tune checkpoint of format {_CHECKPOINT_FORMAT} "
            f"(format: {str(got)[:40]}); train the run again under a new name"
        )
    return state


def _rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank, 7]).generate_state(1)[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG's state as tensors and plain data (loadable with ``weights_only=True``).

    >>> state = _rng_state(torch.device("cpu"))
    >>> sorted(state), type(state["numpy"]["state"]).__name__
    (['numpy', 'python', 'torch'], 'Tensor')
    """
    key, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": str(key),
            "state": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [int(version), list(internal), gauss_next],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _all_reduce(values: list[float | Tensor], device: torch.device, world_size: int) -> list[float]:
    """Sum a few numbers over ranks in one collective; returns Python floats."""
    t = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values]
    )
    if world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms (warn only) for the trial; the previous setting comes back."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


# --------------------------------------------------------------------------- evaluation


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


def _broadcast_buffers(model: nn.Module, world_size: int) -> None:
    """Give every rank rank 0's BatchNorm statistics (those the checkpoint holds)."""
    if world_size > 1:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


# --------------------------------------------------------------------------- the trial


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


def compiles(setting: bool | str, device: torch.device) -> bool:
    """Whether ``train.compile`` compiles on ``device``: ``"auto"`` compiles on CUDA only.

    >>> compiles("auto", torch.device("cpu")), compiles(True, torch.device("cpu"))
    (False, True)
    """
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_seconds() -> float:
    """Seconds this process has spent in torch.compile so far (dynamo's own account, forward
    and backward graphs); 0 where this torch does not keep one."""
    try:
        from torch._dynamo.utils import calculate_time_spent
    except ImportError:  # pragma: no cover - every torch we support has it
        return 0.0
    spent = calculate_time_spent()
    if "total_wall_time" in spent:
        return float(spent["total_wall_time"])
    return float(spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0))


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


# --------------------------------------------------------------------------- the trial's steps


@dataclasses.dataclass
class Trial:
    """What :func:`setup_trial` builds: the data, the model and how it trains."""

    cfg: TrialConfig
    device: torch.device
    rank: int
    world_size: int
    train_loader: Loader
    val_loader: Loader
    test_loader: Loader
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int  # of the learning rate
    model: nn.Module  # the plain model: what checkpoints hold, what evaluation runs
    sd: StochasticDepth
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_forward: Callable[[Tensor], Tensor]  # the wrapped (DDP) and maybe compiled model
    eval_model: nn.Module
    bf16: bool


@dataclasses.dataclass
class TrialState:
    """Where training stands: what a checkpoint restores and every epoch moves on."""

    start_epoch: int = 1
    global_step: int = 0
    train_time_s: float = 0.0
    compile_time_s: float = 0.0
    wall_before_s: float = 0.0  # wall-clock of earlier runs of this trial (before a resume)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def setup_trial(
    cfg: TrialConfig,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    splits: Splits | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
) -> Trial:
    """Load the data, build the model with its stochastic depth (same initial weights on
    every rank), the optimizer and the schedule; wrap (DDP) and compile as ``cfg`` says."""
    t, d = cfg.train, cfg.dataset
    on_gpu = device.type == "cuda"
    channels_last = on_gpu and t.channels_last
    if splits is None:
        splits = load_dataset(d)
    if d.shuffle_labels:
        splits = _shuffle_train_labels(splits, d.split_seed)
    if len(splits.val) == 0:  # type: ignore[arg-type]
        raise ValueError(
            f"The validation split of {splits.info.name} is empty "
            f"(dataset.val_fraction={d.val_fraction}), but every epoch reports "
            "val_acc; set dataset.val_fraction > 0"
        )
    info = splits.info
    train_loader, val_loader, test_loader = make_loaders(
        splits,
        batch_size=t.batch_size,
        device=device,
        rank=rank,
        world_size=world_size,
        seed=t.seed,
        num_workers=d.num_workers,
        channels_last=channels_last,
        eval_batch_size=t.eval_batch_size,
    )
    steps_per_epoch = len(train_loader)
    if t.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(t.warmup_epochs * steps_per_epoch))

    _seed_everything(t.seed)
    model = build_model(cfg.model.arch, info.num_classes, info.in_channels)
    sd = stochastic_depth_from_config(cfg)
    sd.apply(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps)

    if prepare_model is not None:
        wrapped = prepare_model(model)
    elif world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_gpu else None, **ddp_kwargs(sd)
        )
    else:
        wrapped = model
    train_forward: Callable[[Tensor], Tensor] = wrapped
    eval_model: nn.Module = model
    if compiles(t.compile, device):
        train_forward = torch.compile(wrapped)
        # One compiled module serves both when nothing wraps the model; under DDP evaluation
        # runs the plain model (eval shards are uneven across ranks), compiled on its own.
        eval_model = (
            train_forward
            if wrapped is model  # type: ignore[assignment]
            else torch.compile(model)
        )
    return Trial(
        cfg=cfg,
        device=device,
        rank=rank,
        world_size=world_size,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        model=model,
        sd=sd,
        optimizer=optimizer,
        scheduler=scheduler,
        train_forward=train_forward,
        eval_model=eval_model,
        bf16=on_gpu and t.bf16,
    )


def restore(
    trial: Trial,
    resume_dir: str | Path | None,
    *,
    report: Report,
    replay: bool = False,
    say: Callable[[str], None] = print,
) -> TrialState:
    """The state to start from: a fresh one, or the one a checkpoint folder holds (model,
    optimizer, scheduler and RNG loaded into ``trial``); seeds each rank's own draws."""
    state = TrialState()
    rng_restored = False
    epochs = trial.cfg.train.epochs
    if resume_dir is not None:
        saved = load_checkpoint(resume_dir)
        trial.model.load_state_dict(saved["model"])
        trial.optimizer.load_state_dict(saved["optimizer"])
        trial.scheduler.load_state_dict(saved["scheduler"])
        state.start_epoch = int(saved["epoch"]) + 1
        state.global_step = int(saved["global_step"])
        state.train_time_s = float(saved["train_time_s"])
        state.compile_time_s = float(saved.get("compile_time_s", 0.0))
        state.wall_before_s = float(saved["wall_time_s"])
        state.metrics = dict(saved["metrics"])
        state.history = [dict(m) for m in saved.get("history", [state.metrics])]
        rngs = saved["rng"]
        if len(rngs) == trial.world_size:
            _set_rng_state(rngs[trial.rank], trial.device)
            rng_restored = True
        changed = _changed_keys(trial.cfg, saved["config"])
        say(
            f"resuming from {resume_dir} after epoch {state.start_epoch - 1}"
            + (f" (settings changed since: {', '.join(changed)})" if changed else "")
        )
        if replay:
            for past in state.history:
                report(dict(past), None)
        if state.start_epoch > epochs:
            say(
                f"the checkpoint is already at epoch {state.start_epoch - 1} of {epochs}; "
                "nothing left to train"
            )
            return state
    if not rng_restored:
        # Each rank draws its own stochastic-depth masks.
        _seed_everything(_rank_seed(trial.cfg.train.seed + state.start_epoch - 1, trial.rank))
    trial.sd.set_progress(state.global_step / trial.total_steps)
    return state


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


def save_and_report(
    trial: Trial, state: TrialState, metrics: dict[str, float], report: Report
) -> None:
    """Report ``metrics``; rank 0 with a checkpoint of everything :func:`restore` needs."""
    rngs = [_rng_state(trial.device)]
    if trial.world_size > 1:
        gathered: list[Any] = [None] * trial.world_size
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if trial.rank != 0:
        report(dict(metrics), None)
        return
    epoch = int(metrics["epoch"])
    ckpt_dir = tempfile.mkdtemp(prefix=f"sd_tune_ckpt_e{epoch}_")
    try:
        torch.save(
            {
                "format": _CHECKPOINT_FORMAT,
                "epoch": epoch,
                "global_step": state.global_step,
                "total_steps": trial.total_steps,
                "sd_progress": min(1.0, state.global_step / trial.total_steps),
                "model": trial.model.state_dict(),  # the plain model: no DDP or compile prefixes
                "optimizer": trial.optimizer.state_dict(),
                "scheduler": trial.scheduler.state_dict(),
                "rng": rngs,
                "world_size": trial.world_size,
                "train_time_s": state.train_time_s,
                "compile_time_s": state.compile_time_s,
                "wall_time_s": metrics["wall_time_s"],
                "metrics": metrics,
                "history": state.history,
                "config": trial.cfg.to_dict(),
            },
            Path(ckpt_dir) / CHECKPOINT_FILE,
        )
        report(dict(metrics), ckpt_dir)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def _param_checksum(model: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def _shuffle_train_labels(splits: Splits, seed: int) -> Splits:
    """A control for tests: the training labels permuted, so nothing can be learnt."""
    from sd_tune.data import InMemorySplit

    if not isinstance(splits.train, InMemorySplit):
        raise ValueError(
            "dataset.shuffle_labels works only for in-memory datasets "
            "(fashion_mnist, cifar10, cifar100, synthetic)"
        )
    g = torch.Generator().manual_seed(seed + 12345)
    perm = torch.randperm(len(splits.train.y), generator=g)
    train = InMemorySplit(splits.train.x, splits.train.y[perm])
    return dataclasses.replace(splits, train=train)


def _changed_keys(cfg: TrialConfig, saved: dict[str, Any]) -> list[str]:
    """Settings of ``cfg`` that differ from a checkpoint's saved config dict."""
    old = {f"{s}.{k}": v for s, sec in saved.items() for k, v in sec.items()}
    return sorted(k for k, v in cfg.flat().items() if k in old and old[k] != v)
