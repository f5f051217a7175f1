"""A ``sd-tune train`` run's life around its training: whether it exists, its ``run.json``
(name and settings, for ``--resume``), the check that a resume trains the settings it was
started with, its ``summary.json``, and its copy to a storage at a URI.

Neither torch nor Ray is imported here; the training itself is ``ray_train.fit_trial``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sd_tune import storage as store
from sd_tune.config import TrialConfig, excerpt
from sd_tune.errors import UsageError
from sd_tune.preflight import exists_at

RUN_FILE = "run.json"  # in a `train` run's folder: its name and settings, for --resume


def run_exists(where: str, local: Path) -> bool:
    """Whether a `train` run is there (beyond a lock being taken): in its local folder, or at
    ``where`` when that is a URI."""
    if local.is_dir() and any(p.name != store.LOCK_FILE for p in local.iterdir()):
        return True
    return store.is_uri(where) and exists_at(where)


def saved_config(local: Path) -> dict[str, Any] | None:
    """The settings a `train` run was started with (its run.json; summary.json for a run of an
    older sd-tune), or None."""
    for file in (RUN_FILE, "summary.json"):
        try:
            config = json.loads((local / file).read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(config, dict):
            return config
    return None


def check_run(
    name: str, where: str, local: Path, trial: TrialConfig, *, resume: bool, again: str
) -> None:
    """Refuse (:class:`UsageError`) to start a run where one is, to resume one that is not
    there or has no ``run.json``, or to resume one with other settings than it was started
    with; ``again`` says how to continue it."""
    exists = run_exists(where, local)
    if exists and not resume:
        raise UsageError(
            f"a run named {name!r} is in {where} already, and sd-tune never "
            f"overwrites one; continue it with {again}, or give another "
            f"--name"
        )
    if resume:
        if not exists:
            raise UsageError(
                f"there is no run named {name!r} in {where} to resume; drop --resume to start it"
            )
        saved = saved_config(local)
        if saved is None:
            raise UsageError(
                f"cannot resume {where}: it has no {RUN_FILE} (a run of an "
                "older sd-tune?); start it anew under another --name"
            )
        now = trial.flat()
        old = {
            f"{s}.{k}": v
            for s, sec in saved.items()
            if isinstance(sec, dict)
            for k, v in sec.items()
        }
        changed = sorted(
            f"{k}: {excerpt(v)} -> {excerpt(now.get(k))}" for k, v in old.items() if now.get(k) != v
        )
        if changed:
            raise UsageError(
                f"the run {name!r} was started with other settings ("
                + "; ".join(changed[:5])
                + (", ..." if len(changed) > 5 else "")
                + "); resume it with the --space and --set it was started "
                "with, or train these settings under another --name"
            )


def start_run(local: Path, name: str, trial: TrialConfig) -> None:
    """The run's folder and its ``run.json``, written in one step."""
    local.mkdir(parents=True, exist_ok=True)
    store.replace_file(
        local / RUN_FILE,
        json.dumps(
            {
                "name": name,
                "config": trial.to_dict(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            indent=2,
        ),
    )


def finish_run(
    local: Path, where: str, storage: str, name: str, trial: TrialConfig, rows: list[dict]
) -> int:
    """Print the run's last metrics, write its ``summary.json`` and copy its folder to a URI
    storage; the exit code (1 when the copy failed)."""
    last = rows[-1] if rows else {}
    summary = {
        k: last[k]
        for k in ("val_acc", "test_acc", "train_time_s", "wall_time_s")
        if isinstance(last.get(k), (int, float))
    }
    print(
        "done: "
        + ", ".join(
            f"{k} {v:.4f}" if k.endswith("acc") else f"{k} {v:.1f}" for k, v in summary.items()
        )
        + f" ({len(rows)} epoch reports)"
    )
    print(f"metrics: {local / 'metrics.jsonl'}\ntensorboard --logdir {local}")
    store.replace_file(
        local / "summary.json",
        json.dumps({"name": name, "config": trial.to_dict(), "final": last}, indent=2),
    )
    if store.is_uri(storage):
        # The run's checkpoints are at the URI already; its metrics and summary join them.
        try:
            store.upload(local, where)
        except (OSError, ValueError) as err:
            print(f"sd-tune train: could not copy {local} to {where}: {err}", file=sys.stderr)
            return 1
        print(f"copied {local} to {where}")
    return 0
