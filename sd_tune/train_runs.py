"""The Train runs of an experiment (``train_runs/train_<trial id>/``): Ray Train's list of a
run's checkpoints (``checkpoint_manager_snapshot.json``) checked before a resume, and
rebuilt from the run's checkpoint folders when it cannot be read.

Ray Train restores a run from that list alone. One cut short (by a full disk, say) fails the
trial on resume with ``CheckpointManagerInitializationError``, and Tune, which starts a
restored trial's results anew and counts on the run to report its past epochs again, is left
with none of them. The list is rebuilt with Ray Train's own model of it (a private class of
Ray 2.60; a Ray whose model differs fails the rebuild with a message, not the trial).
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Any

from ray.train.v2._internal.execution.checkpoint import checkpoint_manager as ray_checkpoints

from sd_tune import storage as store
from sd_tune.config import excerpt
from sd_tune.train import load_checkpoint
from sd_tune.tune_trial import RUNS_DIR

SNAPSHOT = "checkpoint_manager_snapshot.json"
MAX_SNAPSHOT_BYTES = 64 * 2**20  # far above a real one (~2 KB a checkpoint kept)


def snapshot_problem(run: str, data: bytes) -> str | None:
    """Why Ray Train cannot restore the run at ``run`` from its checkpoint list ``data``
    (not whole, not Train's format, or naming a checkpoint folder that is gone), or None."""
    try:
        state = ray_checkpoints._CheckpointManagerState.model_validate(json.loads(data))
    except ValueError as err:  # JSON's error, or pydantic's ValidationError (a ValueError)
        first = excerpt((str(err).strip().splitlines() or [type(err).__name__])[0])[1:-1]
        return f"not a whole checkpoint list ({len(data):,} bytes, cut short?: {first})"
    for result in state.checkpoint_results:
        if not store.exists(store.join(run, result.checkpoint_dir_name)):
            return f"lists {result.checkpoint_dir_name}, which is gone"
    return None


def _checkpoint_metrics(folder: str) -> tuple[int, dict[str, Any]] | None:
    """The epoch and metrics of the sd-tune checkpoint in ``folder`` (a path or URI), or None
    when it does not load (cut short, missing, not sd-tune's)."""
    try:
        if store.is_uri(folder):
            with tempfile.TemporaryDirectory(prefix="sd-tune-checkpoint-") as tmp:
                store.download(folder, tmp)
                saved = load_checkpoint(tmp)
        else:
            saved = load_checkpoint(folder)
        return int(saved["epoch"]), dict(saved["metrics"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rebuild_snapshot(run: str) -> tuple[str, int] | None:
    """Ray Train's checkpoint list for the run at ``run``, made from the checkpoint folders
    in it whose checkpoint loads (in epoch order, the last one the run continues from), as
    JSON, and the last epoch; None when no checkpoint there loads."""
    found = []
    for name in store.list_files(run, folders=True):
        if name.startswith("checkpoint_") and (
            loaded := _checkpoint_metrics(store.join(run, name))
        ):
            found.append((loaded[0], name, loaded[1]))
    if not found:
        return None
    found.sort(key=lambda f: (f[0], f[1]))
    results = [
        ray_checkpoints._TrainingResultState(checkpoint_dir_name=name, metrics=metrics)
        for _, name, metrics in found
    ]
    state = ray_checkpoints._CheckpointManagerState(
        checkpoint_results=results,
        checkpoint_report_indices=[epoch - 1 for epoch, _, _ in found],
        latest_checkpoint_result=results[-1],
        pending_training_results=[],
        pending_validation_specs=[],
        current_report_index=found[-1][0],
        validated_checkpoint_dir_names=[],
        timed_out_validation_checkpoint_dir_names=[],
        failed_validation_checkpoint_dir_names=[],
    )
    return state.model_dump_json(), found[-1][0]


def check_train_runs(exp_dir: str) -> list[str]:
    """Check every Train run's checkpoint list in the experiment at ``exp_dir``; set aside
    each one Ray Train cannot restore from (``<name>.set-aside-<time>``) and write it anew
    from the run's checkpoint folders. A line for each one set aside."""
    runs = store.join(exp_dir, RUNS_DIR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = []
    for name in store.list_files(runs, folders=True):
        run = store.join(runs, name)
        snapshot = store.join(run, SNAPSHOT)
        try:
            data = store.read_bytes(snapshot, MAX_SNAPSHOT_BYTES)
        except OSError:
            # none yet (Train starts the run anew), or a storage that failed to answer, which
            # is not a damaged list: leave it for Train
            continue
        except ValueError as err:  # store.TooLarge
            problem: str | None = f"too large to read ({excerpt(str(err))[1:-1]})"
        else:
            problem = snapshot_problem(run, data)
        if problem is None:
            continue
        store.move(snapshot, f"{snapshot}.set-aside-{stamp}")
        what = f"{RUNS_DIR}/{name}/{SNAPSHOT} is {problem}: set aside as "
        what += f"{SNAPSHOT}.set-aside-{stamp}"
        rebuilt = rebuild_snapshot(run)
        if rebuilt is None:
            lines.append(f"{what}; no checkpoint of the run loads, so its trial starts anew")
            continue
        store.write_bytes(snapshot, rebuilt[0].encode())
        lines.append(
            f"{what}, and rebuilt from the run's checkpoints: the trial continues after "
            f"epoch {rebuilt[1]}"
        )
    return lines
