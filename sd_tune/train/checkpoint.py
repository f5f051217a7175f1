"""Checkpoints: what rank 0 writes after every epoch (a ``torch.save`` of tensors and plain data,
loaded with ``weights_only=True``: reading one never runs code) and how a trial restores from
one, RNG states included. Imports torch, never Ray."""

from __future__ import annotations

import pickle
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sd_tune.config import TrialConfig
from sd_tune.train.runtime import (
    _rank_seed,
    _seed_everything,
)
from sd_tune.train.setup import (
    Report,
    Trial,
    TrialState,
)

#: The file a checkpoint folder holds (a ``torch.save`` of a dict of tensors and plain data,
#: loaded with ``weights_only=True``: reading a checkpoint never runs code).
CHECKPOINT_FILE = "checkpoint.pt"


_CHECKPOINT_FORMAT = 2  # 1: RNG states as numpy arrays and tuples, which need unpickling


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


def _changed_keys(cfg: TrialConfig, saved: dict[str, Any]) -> list[str]:
    """Settings of ``cfg`` that differ from a checkpoint's saved config dict."""
    old = {f"{s}.{k}": v for s, sec in saved.items() for k, v in sec.items()}
    return sorted(k for k, v in cfg.flat().items() if k in old and old[k] != v)
