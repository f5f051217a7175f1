"""The ``sd-tune`` command.

Subcommands:
  launch   run the search of a space file (Ray Tune + Optuna over Ray Train trials)
  resume   continue an interrupted search
  report   rebuild an experiment's summary files and TensorBoard entries
  validate check a space file without starting anything
  train    train one configuration of a space file on Ray Train, without Tune
  rates    show the per-block drop rates that surgery gives a model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sd_tune import storage as store
from sd_tune.errors import SdTuneError, UsageError
from sd_tune.vocab import DISTRIBUTIONS, METHODS, SAMPLE_IMPLS


def _rates(args: argparse.Namespace) -> int:
    from sd_tune import apply_stochastic_depth, build_model, expected_depth, stochastic_blocks

    try:
        model = build_model(args.arch, num_classes=10)
        apply_stochastic_depth(
            model,
            args.target,
            args.method,
            args.drop_rate,
            args.distribution,
            sample_impl=args.sample_impl,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    names = {id(m): n for n, m in model.named_modules()}
    print(f"{'#':>3}  {'block':<12} {'kind':<16} {'drop_rate':>9}")
    for i, block in enumerate(stochastic_blocks(model)):
        print(
            f"{i:>3}  {names[id(block)]:<12} {block.block_class.__name__:<16} "
            f"{block.drop_rate:>9.4f}"
        )
    blocks = stochastic_blocks(model)
    print(f"{len(blocks)} blocks, expected depth {expected_depth(model):.2f} of {len(blocks)}")
    return 0


_OWN_FLAGS = {"name": "--name (e.g. --name my-run)", "storage": "--storage PATH|URI"}


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=1", "stochastic_depth.stochastic_method=block"]`` -> a dict of
    overrides."""
    from sd_tune.config import excerpt, parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and (flag := _OWN_FLAGS.get(key.strip())):
            raise UsageError(
                f"--set {excerpt(item)[1:-1]}: {key.strip()} is not a section.key setting; "
                f"give it with {flag}"
            )
        if not sep or "." not in key:
            raise UsageError(
                f"--set takes section.key=value (e.g. train.epochs=1), but got {excerpt(item)}"
            )
        try:
            out[key.strip()] = parse_value(value)
        except ValueError as err:
            raise UsageError(f"--set {excerpt(key.strip())[1:-1]}: {err}") from err
    return out


def _load(args: argparse.Namespace):
    """The validated space file with --set (and --name) applied, and its raw mapping."""
    from sd_tune.config import apply_overrides, load_yaml, space_from_dict

    name = getattr(args, "name", None)
    if name is not None:
        _check_name(name)
    raw = load_yaml(args.space)  # ConfigError: an SdTuneError, main() prints it
    raw = apply_overrides(raw, parse_sets(args.set))
    if name and args.command != "train":
        raw["name"] = name
    return space_from_dict(raw, str(args.space)), raw


def _check_name(name: str) -> None:
    from sd_tune.config import name_problem

    if (problem := name_problem(name)) is not None:
        raise UsageError(f"--name {problem}")


def _validate(args: argparse.Namespace) -> int:
    spec, _ = _load(args)
    from sd_tune.config import searched_keys, trial_count

    searched = ", ".join(searched_keys(spec)) or (
        "nothing (`sd-tune launch` refuses such a file; `sd-tune train` trains its settings once)"
    )
    print(
        f"{args.space}: ok: experiment {spec.name!r}, {trial_count(spec)} of "
        f"{spec.trial.model.family} on {spec.trial.dataset.name}, searching "
        f"{searched}; objectives " + ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives)
    )
    return 0


def _preflight_data(trial) -> None:
    """Fail before Ray starts when the data is not there (one message, what to do)."""
    from sd_tune.data import load_dataset

    try:
        load_dataset(trial.dataset)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err


def _check_storage(location: str, what: str = "--storage") -> None:
    """Fail before Ray starts when nothing can be written at ``location``."""
    if (problem := store.probe_writable(store.root(location), what)) is not None:
        raise UsageError(problem)


@contextlib.contextmanager
def _locked(folder: str, command: str) -> Iterator[None]:
    """Hold ``folder``'s lock for this command; another sd-tune in it is a usage error."""
    try:
        with store.locked(folder, command):
            yield
    except store.LockHeld as err:
        raise UsageError(f"{folder} {err}") from None


def _start_ray(
    address: str | None,
    trial,
    storage: str,
    *,
    trials: int = 1,
    wait_s: float | None = None,
) -> tuple[int | None, float]:
    """Start or join Ray; refuse a trial whose workers the cluster can never hold (counting
    the nodes its autoscaler may add), wait for the nodes the autoscaler is to add when none
    up can hold a trial, check the GPU nodes' driver, and refuse a ``storage`` that not
    every node sees. Returns the trials to run at once when the autoscaler's nodes count
    (None: count the nodes up), and how long a trial waits for room for its workers after a
    node was lost (``--wait-for-nodes``; by default 1800 s with an autoscaler, which may
    replace the node, else 120 s) before it fails."""
    from sd_tune import autoscale, cluster, ray_train

    try:
        cluster.init_ray(address)
    except ConnectionError as err:
        raise UsageError(str(err)) from err
    _catch_sigterm()  # ray.init makes SIGTERM exit at once; it stops cleanly instead
    nodes = cluster.node_resources()
    problem = cluster.resource_problem(trial, nodes)
    scaler = autoscale.find_autoscaler() if address or os.environ.get("RAY_ADDRESS") else None
    slots = None
    if scaler is not None:
        if scaler.node_types is None:
            plan = autoscale.blind_plan(trial, nodes, trials) if problem else None
        else:
            plan = autoscale.scale_plan(trial, nodes, scaler, trials)
            if plan.problem:
                raise UsageError(plan.problem)
        if plan is not None:
            if plan.add or plan.wait:
                print(plan.message, flush=True)
            slots = plan.concurrent
            if plan.wait:
                limit = autoscale.DEFAULT_WAIT_S if wait_s is None else wait_s
                print(f"waiting up to {limit:.0f} s for them (--wait-for-nodes)", flush=True)
                problem = autoscale.wait_for_nodes(trial, plan, limit)
    if problem is None and cluster.gpus_per_worker(trial) > 0:
        problem = autoscale.gpu_driver_problem()
    if problem is None:
        problem = cluster.storage_problem(storage)
    if problem:
        raise UsageError(problem)
    if wait_s is None:
        wait_s = autoscale.DEFAULT_WAIT_S if scaler is not None else ray_train.PLACEMENT_WAIT_S
    return slots, wait_s


def _storage(args: argparse.Namespace, space: Any) -> str:
    """--storage, else $SD_TUNE_STORAGE (the launcher configs and the RayJob set it to the
    cluster's bucket), else the space file's."""
    return args.storage or os.environ.get("SD_TUNE_STORAGE") or space.storage


RUN_FILE = "run.json"  # in a `train` run's folder: its name and settings, for --resume


def _run_exists(where: str, local: Path) -> bool:
    """Whether a `train` run is there (beyond a lock being taken): in its local folder, or at
    ``where`` when that is a URI."""
    if local.is_dir() and any(p.name != store.LOCK_FILE for p in local.iterdir()):
        return True
    return store.is_uri(where) and _exists(where)


def _saved_config(local: Path) -> dict[str, Any] | None:
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


def _train(args: argparse.Namespace) -> int:
    space, _ = _load(args)
    trial = space.trial
    from sd_tune import cluster, ray_train
    from sd_tune.config import excerpt
    from sd_tune.train import progress_line

    storage = _storage(args, space)
    name = args.name or f"train-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local = ray_train.run_dir(storage, name)
    where = store.join(store.root(storage), name)
    _preflight_data(trial)
    _check_storage(storage)
    again = f"the same command with --resume (sd-tune train ... --name {name} --resume)"
    with _locked(str(local), "sd-tune train"):
        exists = _run_exists(where, local)
        if exists and not args.resume:
            raise UsageError(
                f"a run named {name!r} is in {where} already, and sd-tune never "
                f"overwrites one; continue it with {again}, or give another "
                f"--name"
            )
        if args.resume:
            if not exists:
                raise UsageError(
                    f"there is no run named {name!r} in {where} to resume; "
                    "drop --resume to start it"
                )
            saved = _saved_config(local)
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
                f"{k}: {excerpt(v)} -> {excerpt(now.get(k))}"
                for k, v in old.items()
                if now.get(k) != v
            )
            if changed:
                raise UsageError(
                    f"the run {name!r} was started with other settings ("
                    + "; ".join(changed[:5])
                    + (", ..." if len(changed) > 5 else "")
                    + "); resume it with the --space and --set it was started "
                    "with, or train these settings under another --name"
                )
        else:
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
        _, placement_wait_s = _start_ray(args.address, trial, storage, wait_s=args.wait_for_nodes)
        cluster.driver_log()
        epochs = trial.train.epochs
        print(
            f"training {trial.model.arch} on {trial.dataset.name}: "
            f"{trial.stochastic_depth.stochastic_method} stochastic depth, drop_rate "
            f"{trial.stochastic_depth.drop_rate} ({trial.stochastic_depth.drop_distribution}), "
            f"{trial.resources.num_workers} workers, {epochs} epochs"
            + (f"; resuming {where}" if args.resume else ""),
            flush=True,
        )
        args.on_interrupt = f"; continue the run with {again}"
        try:
            ray_train.fit_trial(
                trial,
                storage=storage,
                name=name,
                max_failures=args.max_failures,
                emit=lambda m: print(progress_line(m, epochs), flush=True),
                placement_wait_s=placement_wait_s,
            )
        except Exception as err:  # Ray wraps the worker's error; show its message, not the stack
            if store.is_disk_full(err):
                raise store.StorageFull(
                    f"the storage {store.root(storage)} is full "
                    f"({store.free_space(storage)}); the run's metrics and "
                    f"checkpoints so far are kept: free some space, then "
                    f"continue with {again}"
                ) from err
            print(f"sd-tune train: the trial failed: {ray_train.root_cause(err)}", file=sys.stderr)
            return 1
        rows = ray_train.read_metrics(local / "metrics.jsonl")
        last = rows[-1] if rows else {}
        if _INTERRUPTED or int(last.get("epoch", 0)) < epochs:
            by = f" by {_INTERRUPTED[0]}" if _INTERRUPTED else ""
            raise UsageError(
                f"the run stopped{by} after epoch {int(last.get('epoch', 0))} of "
                f"{epochs}; its metrics and checkpoints are kept: continue it "
                f"with {again}"
            )
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


def _exists(location: str) -> bool:
    """Whether something is at ``location``; a location that cannot be read is a usage error."""
    try:
        return store.exists(location)
    except (OSError, ValueError) as err:  # a bad URI, no such bucket, missing credentials
        raise UsageError(f"cannot read {location}: {err}") from err


def _write_report(exp_dir: str, spec: Any, records: list[dict[str, Any]]) -> None:
    """The report files of an experiment, in its folder; for an experiment at a URI they are
    written to a local temporary folder first and then replace those at the URI."""
    from sd_tune import report

    try:
        if not store.is_uri(exp_dir):
            report.write_results(exp_dir, spec.name, records, spec.objectives)
            return
        with tempfile.TemporaryDirectory(prefix="sd-tune-report-") as tmp:
            report.write_results(tmp, spec.name, records, spec.objectives, location=exp_dir)
            # The old TensorBoard entries go, as they do locally, else TensorBoard shows both.
            store.remove(store.join(exp_dir, report.TENSORBOARD_DIR))
            store.upload(tmp, exp_dir)
    except OSError as err:
        if store.is_disk_full(err):
            raise store.StorageFull(
                f"the storage of {exp_dir} is full ({store.free_space(exp_dir)}): the report "
                f"could not be written, and the previous report files are whole; free some "
                f"space, then run `sd-tune report {shlex.quote(exp_dir)}`"
            ) from err
        raise UsageError(f"cannot write the report in {exp_dir}: {err}") from err


def _report_experiment(exp_dir: str, *, after_search: bool = False) -> int:
    from sd_tune import configurations, report, search, verdict
    from sd_tune.comparison import baseline_seeds_due, compare

    notes: list[str] = []
    spec, _ = search.load_spec(exp_dir, notes)
    records, unreadable = search.collect_records(exp_dir, spec, notes)
    _write_report(exp_dir, spec, records)
    entries = configurations.configurations(records, spec.objectives)
    front = report.pareto_front(entries, spec.objectives)
    notes += configurations.disagreements(
        entries, configurations.read_told(exp_dir), spec.objectives
    )
    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(
        f"{spec.name}: {len(records)} trials ("
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + ")"
    )
    for r in records:
        if r["status"] in ("failed", "missing", "abandoned"):
            print(f"  {r['status']} {r['trial_id']}: {r['error']}")
    print("Pareto front (" + ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives) + "):")
    print(report.format_pareto_table(front, spec.objectives, list(spec.space)))
    print(
        f"summary: {store.join(exp_dir, 'summary.md')}\ntensorboard --logdir {shlex.quote(exp_dir)}"
    )
    for note in notes:
        print(f"note: {note}")
    for line in unreadable:
        print(f"  unreadable: {line}")
    for c in compare(records):  # the last lines: what the baseline comparison supports
        print(f"against no stochastic depth: {verdict.sentence(c)}")
    unfinished = [r for r in records if r["status"] in ("running", "pending")]
    started = sum(r["status"] != "abandoned" for r in records)
    due = spec.search.trials
    if spec.search.baseline:
        due += baseline_seeds_due(records, spec.search.repeats)
    resume = f"sd-tune resume {shlex.quote(exp_dir)}"
    text = None
    if unfinished or started < due:
        stopped = f"stopped by {_INTERRUPTED[0]}: " if _INTERRUPTED else ""
        text = (
            f"{stopped}the search is unfinished ({started} of {due} "
            f"trials started, {len(unfinished)} unfinished); continue with `{resume}`"
        )
    if unreadable:
        if text:
            print(text)
        raise UsageError(
            f"{len(unreadable)} file(s) of the experiment could not be read (listed "
            f"above): the report leaves out what they held"
        )
    if text and after_search:
        raise UsageError(text)  # interrupted: not a success
    if text:
        print(text)
    return 0


def _search_failed(command: str, exp_dir: str, err: Exception) -> int:
    """An error stopped the search (not the user's): say so in one line, report what is
    there, exit 1."""
    from sd_tune import cluster

    print(
        f"sd-tune {command}: the search stopped with an error: {err}; every finished trial "
        f"is kept (Ray's logs: /tmp/ray/session_latest/logs, {cluster.DRIVER_LOG} there); "
        f"continue with `sd-tune resume {shlex.quote(exp_dir)}`",
        file=sys.stderr,
    )
    with contextlib.suppress(SdTuneError, OSError):
        _report_experiment(exp_dir)
    return 1


def _launch(args: argparse.Namespace) -> int:
    spec, raw = _load(args)
    from sd_tune.config import nothing_searched

    if (problem := nothing_searched(spec)) is not None:
        raise UsageError(f"{spec.source}: {problem}")
    _preflight_data(spec.trial)
    from sd_tune import search

    storage = _storage(args, spec)
    _check_storage(storage)
    exp_dir = search.experiment_dir(storage, spec.name)
    with _locked(exp_dir, "sd-tune launch"):
        if _exists(store.join(exp_dir, search.SPEC_FILE)):
            raise UsageError(
                f"experiment {spec.name!r} already exists in {exp_dir}; continue "
                f"it with `sd-tune resume {shlex.quote(exp_dir)}`, or start a new "
                "one with --name NEW"
            )
        from sd_tune.autoscale import expected_trials

        slots, placement_wait_s = _start_ray(
            args.address,
            spec.trial,
            storage,
            wait_s=args.wait_for_nodes,
            trials=expected_trials(spec.total_trials, spec.search.max_concurrent_trials),
        )
        args.on_interrupt = f"; continue with `sd-tune resume {shlex.quote(exp_dir)}`"
        try:
            search.run_search(
                spec,
                raw,
                storage,
                max_failures=args.max_failures,
                slots=slots,
                placement_wait_s=placement_wait_s,
            )
        except search.SearchFailed as err:
            return _search_failed("launch", exp_dir, err)
        return _report_experiment(exp_dir, after_search=True)


def _experiment_dir(path: str) -> str:
    """The experiment at ``path`` (a folder or a URI) as an absolute path or a URI."""
    from sd_tune.search import SPEC_COPY, SPEC_FILE

    # join with no parts drops a URI's trailing slash
    exp_dir = store.join(path) if store.is_uri(path) else store.root(path)
    if not (_exists(store.join(exp_dir, SPEC_FILE)) or _exists(store.join(exp_dir, SPEC_COPY))):
        raise UsageError(
            f"{exp_dir} is not an sd-tune experiment folder (no {SPEC_FILE}); "
            "pass the folder or URI `sd-tune launch` printed, <storage>/<name>"
        )
    return exp_dir


def _resume(args: argparse.Namespace) -> int:
    from sd_tune import search, train_runs

    exp_dir = _experiment_dir(args.dir)
    notes: list[str] = []
    spec, _ = search.load_spec(exp_dir, notes)
    _check_storage(exp_dir, "the experiment folder")
    with _locked(exp_dir, "sd-tune resume"):
        note = search.check_state(exp_dir)
        notes += [
            *([note] if note else []),
            *search.repair_records(exp_dir, spec),
            *train_runs.check_train_runs(exp_dir),
        ]
        for line in notes:
            print(f"note: {line}", flush=True)
        _, placement_wait_s = _start_ray(
            args.address, spec.trial, store.parent(exp_dir), wait_s=args.wait_for_nodes
        )
        args.on_interrupt = f"; continue with `sd-tune resume {shlex.quote(exp_dir)}`"
        try:
            search.resume_search(
                exp_dir, spec, max_failures=args.max_failures, placement_wait_s=placement_wait_s
            )
        except search.SearchFailed as err:
            return _search_failed("resume", exp_dir, err)
        return _report_experiment(exp_dir, after_search=True)


def _report(args: argparse.Namespace) -> int:
    exp_dir = _experiment_dir(args.dir)
    args.on_interrupt = (
        f"; the report files are whole (each is replaced in one step): run "
        f"`sd-tune report {shlex.quote(exp_dir)}` again"
    )
    return _report_experiment(exp_dir)


JOB_ARGS = "SD_TUNE_JOB_ARGS"  # more arguments, as a JSON list (launch/submit.sh's jobs)


def _job_args() -> list[str]:
    """The arguments ``launch/submit.sh`` hands a Ray job as data (never through the shell
    that runs the job's entrypoint), or [] where there are none."""
    from sd_tune.config import excerpt

    text = os.environ.pop(JOB_ARGS, None)
    if text is None:
        return []
    try:
        args = json.loads(text)
    except ValueError:
        args = None
    if not isinstance(args, list) or len(args) > 1000 or not all(isinstance(a, str) for a in args):
        raise UsageError(
            f"${JOB_ARGS} must be a JSON list of strings (launch/submit.sh writes "
            f"it), but got {excerpt(text)}"
        )
    return args


_INTERRUPTED: list[str] = []  # the signals that asked this process to stop


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (``ray job stop``, a scheduler) stops like Ctrl-C: Tune and Train save and
    stop; elsewhere it raises KeyboardInterrupt."""
    _INTERRUPTED.append("SIGTERM")
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _catch_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _max_failures(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(
            f"`0 <= max_failures <= 100` must hold, but got {text[:40]!r}"
        )
    return value


def _seconds(text: str) -> float:
    """--wait-for-nodes: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"`wait_for_nodes >= 0` (seconds) must hold, but got {text[:40]!r}"
        )
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _space_args(p: argparse.ArgumentParser, *, storage: bool = True) -> None:
    p.add_argument(
        "--space",
        default="search_spaces/fashion_mnist.yaml",
        help="search-space YAML file (default: search_spaces/fashion_mnist.yaml, "
        "the embedded default)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.epochs=1 "
        "--set search.num_samples=4 (repeatable)",
    )
    if storage:
        p.add_argument(
            "--storage",
            help="results root: a path or s3:// / gs:// URI "
            "(default: $SD_TUNE_STORAGE, else the file's "
            "storage, usually results/)",
        )


def _experiment_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dir", help="the experiment, <storage>/<name>: a folder or a URI (s3://bucket/prefix/name)"
    )


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="Ray cluster address (auto, ray://host:port, host:port); "
        "default $RAY_ADDRESS, else a local Ray",
    )
    p.add_argument(
        "--max-failures",
        type=_max_failures,
        default=1,
        help="worker-group restarts of a trial from its last checkpoint, 0-100 (default 1)",
    )
    p.add_argument(
        "--wait-for-nodes",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="when no node of the cluster can hold a trial but its autoscaler can "
        "add one, how long to wait for it before giving up; also how long a trial that "
        "lost a node waits for room for its workers before it fails (default 1800 with "
        "an autoscaler, else 120)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sd-tune", description="Find how much stochastic depth a ResNet should get."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    launch = sub.add_parser(
        "launch",
        help="run the search of a space file",
        description="Run a Ray Tune experiment: Optuna proposes drop rate, distribution, depth "
        "and whatever else the file's `space` lists; each trial trains with Ray "
        "Train DDP workers. Results go to <storage>/<name>/: Tune's trial folders, "
        "trials.csv/json, pareto.json, time_to_accuracy.json, summary.md and "
        "TensorBoard entries.",
    )
    _space_args(launch)
    launch.add_argument(
        "--name",
        help="experiment name, one folder name: letters, digits, "
        "'_', '.', '-' (default: the file's name)",
    )
    _ray_args(launch)
    launch.set_defaults(func=_launch)
    resume = sub.add_parser(
        "resume",
        help="continue an interrupted search",
        description="Continue an interrupted experiment: finished trials "
        "are kept, unfinished ones continue from their "
        "checkpoints, and the search stops at num_samples "
        "configurations (each run with search.repeats seeds). "
        "Tune's saved state is checked first: a truncated one "
        "is replaced by sd-tune's copy of the last whole state. "
        "Ray Tune unpickles that state, which runs the code in "
        "it: resume only experiments you wrote.",
    )
    _experiment_arg(resume)
    _ray_args(resume)
    resume.set_defaults(func=_resume)
    rep = sub.add_parser(
        "report",
        help="rebuild an experiment's summary files",
        description="Rebuild trials.csv/json, pareto.json, "
        "time_to_accuracy.json, summary.md and the TensorBoard "
        "entries from what the experiment folder holds. Only "
        "plain data is read (JSON, text), never a pickle; what "
        "cannot be read is listed, and the exit code is 2.",
    )
    _experiment_arg(rep)
    rep.set_defaults(func=_report)
    val = sub.add_parser(
        "validate",
        help="check a space file without starting anything",
        description="Check a space file completely and list every problem.",
    )
    _space_args(val, storage=False)
    val.set_defaults(func=_validate)
    train = sub.add_parser(
        "train",
        help="train one configuration (the file's fixed settings) on Ray Train",
        description="Train the fixed settings of a search-space file once, with Ray Train "
        "DDP workers and without Tune. Prints one line per epoch; metrics "
        "(metrics.jsonl), TensorBoard scalars and checkpoints go to "
        "<storage>/<name>/.",
    )
    _space_args(train)
    train.add_argument(
        "--name",
        help="run name, one folder name (default: train-<space "
        "name>-<time>); an existing run is never overwritten",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run --name from its last checkpoint, with the "
        "--space and --set it was started with; its metrics so far stay",
    )
    _ray_args(train)
    train.set_defaults(func=_train)
    rates = sub.add_parser(
        "rates",
        help="show the per-block drop rates surgery gives a model",
        description="Apply stochastic depth to a model and print the "
        "per-block drop rates in forward order.",
    )
    rates.add_argument(
        "--arch",
        default="resnet50",
        help="resnet18/34/50/101/152, wide_resnet50_2, resnext50_32x4d or "
        "cifar_resnet<6n+2> (default: resnet50)",
    )
    rates.add_argument("--drop-rate", type=float, default=0.1, help="default: 0.1")
    rates.add_argument("--distribution", choices=DISTRIBUTIONS, default="linear")
    rates.add_argument("--method", choices=METHODS, default="sample")
    rates.add_argument("--sample-impl", choices=SAMPLE_IMPLS, default="mask")
    rates.add_argument("--target", default="auto", help="block class name or 'auto'")
    rates.set_defaults(func=_rates)
    return parser


_show_warning = warnings.showwarning


def _show_note(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
    """sd-tune's own notes (an old key used) as one line; other warnings as usual."""
    from sd_tune.config import RenamedKey

    if issubclass(category, RenamedKey):
        print(f"sd-tune: note: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, *rest, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2.

    >>> main(["rates", "--arch", "cifar_resnet20", "--drop-rate", "0.5"])  # doctest: +ELLIPSIS
      #  block        kind             drop_rate
    ...
    9 blocks, expected depth 6.50 of 9
    0
    """
    if argv is None:
        try:
            argv = [*sys.argv[1:], *_job_args()]
        except UsageError as err:
            print(f"sd-tune: error: {err}", file=sys.stderr)
            return 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # -h, or a usage error argparse printed in one line
        return done.code if isinstance(done.code, int) else 2
    _catch_sigterm()
    _INTERRUPTED.clear()
    args.on_interrupt = ""
    warnings.showwarning = _show_note
    try:
        return args.func(args)
    except SdTuneError as err:  # every error sd-tune raises on purpose: one line, its code
        print(f"sd-tune {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        by = _INTERRUPTED[0] if _INTERRUPTED else "Ctrl-C"
        print(
            f"sd-tune {args.command}: error: interrupted ({by}){args.on_interrupt}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
