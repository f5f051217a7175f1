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
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from sd_tune import apply_stochastic_depth, build_model, expected_depth, stochastic_blocks
from sd_tune import storage as store
from sd_tune.stochastic_depth import DISTRIBUTIONS, METHODS, SAMPLE_IMPLS


class UsageError(Exception):
    """An error the user can fix; the CLI prints it as one line and exits 2."""


def _rates(args: argparse.Namespace) -> int:
    try:
        model = build_model(args.arch, num_classes=10)
        apply_stochastic_depth(model, args.target, args.method, args.drop_rate,
                               args.distribution, sample_impl=args.sample_impl)
    except ValueError as err:
        raise UsageError(str(err)) from err
    names = {id(m): n for n, m in model.named_modules()}
    print(f"{'#':>3}  {'block':<12} {'kind':<16} {'drop_rate':>9}")
    for i, block in enumerate(stochastic_blocks(model)):
        print(f"{i:>3}  {names[id(block)]:<12} {block.block_class.__name__:<16} "
              f"{block.drop_rate:>9.4f}")
    blocks = stochastic_blocks(model)
    print(f"{len(blocks)} blocks, expected depth {expected_depth(model):.2f} of {len(blocks)}")
    return 0


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=1", "stochastic_depth.method=block"]`` -> a dict of overrides."""
    from sd_tune.config import parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UsageError(f"--set takes section.key=value (e.g. train.epochs=1), but got "
                             f"{item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _load(args: argparse.Namespace):
    """The validated space file with --set (and --name) applied, and its raw mapping."""
    from sd_tune.config import ConfigError, apply_overrides, load_yaml, space_from_dict

    try:
        raw = load_yaml(args.space)
        raw = apply_overrides(raw, parse_sets(args.set))
        if getattr(args, "name", None) and args.command != "train":
            raw["name"] = args.name
        return space_from_dict(raw, str(args.space)), raw
    except ConfigError as err:
        raise UsageError(str(err)) from err


def _validate(args: argparse.Namespace) -> int:
    spec, _ = _load(args)
    from sd_tune.search import optuna_distributions

    dists, _ = optuna_distributions(spec.space)
    print(f"{args.space}: ok: experiment {spec.name!r}, {spec.search.num_samples} trials of "
          f"{spec.trial.model.family} on {spec.trial.dataset.name}, searching "
          f"{', '.join(dists) or 'nothing'}; objectives "
          + ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives))
    return 0


def _preflight_data(trial) -> None:
    """Fail before Ray starts when the data is not there (one message, what to do)."""
    from sd_tune.data import load_splits

    d = trial.dataset
    try:
        load_splits(d.name, root=d.root, download=d.download, val_fraction=d.val_fraction,
                    split_seed=d.split_seed, max_train_samples=d.max_train_samples,
                    train_fraction=d.train_fraction, max_eval_samples=d.max_eval_samples,
                    image_size=d.image_size)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err


def _start_ray(address: str | None, trial, storage: str | None = None, *, trials: int = 1,
               wait_s: float | None = None) -> int | None:
    """Start or join Ray; refuse a trial whose workers the cluster can never hold (counting
    the nodes its autoscaler may add), wait for the nodes the autoscaler is to add when none
    up can hold a trial, check the GPU nodes' driver, and refuse a ``storage`` that not
    every node sees. Returns the trials to run at once when the autoscaler's nodes count
    (None: count the nodes up)."""
    from sd_tune import autoscale, ray_train

    try:
        ray_train.init_ray(address)
    except ConnectionError as err:
        raise UsageError(str(err)) from err
    nodes = ray_train.node_resources()
    problem = ray_train.resource_problem(trial, nodes)
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
    if problem is None and ray_train.gpus_per_worker(trial) > 0:
        problem = autoscale.gpu_driver_problem()
    if problem is None and storage is not None:
        problem = ray_train.storage_problem(storage)
    if problem:
        raise UsageError(problem)
    return slots


def _storage(args: argparse.Namespace, space: Any) -> str:
    """--storage, else $SD_TUNE_STORAGE (the launcher configs and the RayJob set it to the
    cluster's bucket), else the space file's."""
    return args.storage or os.environ.get("SD_TUNE_STORAGE") or space.storage


def _train(args: argparse.Namespace) -> int:
    space, _ = _load(args)
    trial = space.trial
    _preflight_data(trial)
    from sd_tune import ray_train
    from sd_tune.train import progress_line

    storage = _storage(args, space)
    name = args.name or f"train-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _start_ray(args.address, trial, storage, wait_s=args.wait_for_nodes)
    epochs = trial.train.epochs
    print(f"training {trial.model.arch} on {trial.dataset.name}: "
          f"{trial.stochastic_depth.method} stochastic depth, drop_rate "
          f"{trial.stochastic_depth.drop_rate} ({trial.stochastic_depth.drop_distribution}), "
          f"{trial.resources.num_workers} workers, {epochs} epochs", flush=True)
    last: dict[str, Any] = {}

    def emit(metrics: dict[str, Any]) -> None:
        last.update(metrics)
        print(progress_line(metrics, epochs), flush=True)

    try:
        ray_train.fit_trial(trial, storage=storage, name=name, emit=emit,
                            max_failures=args.max_failures)
    except Exception as err:  # Ray wraps the worker's error; show its message, not the stack
        print(f"sd-tune train: the trial failed: {ray_train.root_cause(err)}", file=sys.stderr)
        return 1
    run_dir = ray_train.run_dir(storage, name)
    summary = {k: last[k] for k in ("val_acc", "test_acc", "train_time_s", "wall_time_s")
               if k in last}
    print("done: " + ", ".join(f"{k} {v:.4f}" if k.endswith("acc") else f"{k} {v:.1f}"
                               for k, v in summary.items()))
    print(f"metrics: {run_dir / 'metrics.jsonl'}\ntensorboard --logdir {run_dir}")
    (run_dir / "summary.json").write_text(json.dumps(
        {"name": name, "config": trial.to_dict(), "final": last}, indent=2))
    if store.is_uri(storage):
        # The run's checkpoints are at the URI already; its metrics and summary join them.
        remote = store.join(storage, name)
        try:
            store.upload(run_dir, remote)
        except (OSError, ValueError) as err:
            print(f"sd-tune train: could not copy {run_dir} to {remote}: {err}",
                  file=sys.stderr)
            return 1
        print(f"copied {run_dir} to {remote}")
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

    if not store.is_uri(exp_dir):
        report.write_results(exp_dir, spec.name, records, spec.objectives)
        return
    with tempfile.TemporaryDirectory(prefix="sd-tune-report-") as tmp:
        report.write_results(tmp, spec.name, records, spec.objectives, location=exp_dir)
        # The old TensorBoard entries go, as they do locally, else TensorBoard shows both.
        store.remove(store.join(exp_dir, report.TENSORBOARD_DIR))
        store.upload(tmp, exp_dir)


def _report_experiment(exp_dir: str) -> int:
    from sd_tune import report, search

    spec, _ = search.load_spec(exp_dir)
    records = search.collect_records(exp_dir)
    _write_report(exp_dir, spec, records)
    front = report.pareto_front(records, spec.objectives)
    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{spec.name}: {len(records)} trials (" + ", ".join(f"{v} {k}" for k, v in
                                                          sorted(counts.items())) + ")")
    for r in records:
        if r["status"] == "failed":
            print(f"  failed {r['trial_id']}: {r['error']}")
    print("Pareto front (" + ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives) + "):")
    print(report.format_pareto_table(front, spec.objectives, list(spec.space)))
    print(f"summary: {store.join(exp_dir, 'summary.md')}\n"
          f"tensorboard --logdir {shlex.quote(exp_dir)}")
    unfinished = [r for r in records if r["status"] in ("running", "pending")]
    if unfinished or len(records) < spec.search.num_samples:
        print(f"the search is unfinished ({len(records)} of {spec.search.num_samples} trials "
              f"started, {len(unfinished)} unfinished): sd-tune resume {shlex.quote(exp_dir)}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    spec, raw = _load(args)
    _preflight_data(spec.trial)
    from sd_tune import search

    storage = _storage(args, spec)
    exp_dir = search.experiment_dir(storage, spec.name)
    if _exists(store.join(exp_dir, search.SPEC_FILE)):
        raise UsageError(f"experiment {spec.name!r} already exists in {exp_dir}; continue it "
                         f"with `sd-tune resume {shlex.quote(exp_dir)}`, or start a new one "
                         "with --name NEW")
    from sd_tune.autoscale import expected_trials

    slots = _start_ray(args.address, spec.trial, storage, wait_s=args.wait_for_nodes,
                       trials=expected_trials(spec.search.num_samples,
                                              spec.search.max_concurrent_trials))
    search.run_search(spec, raw, storage, max_failures=args.max_failures, slots=slots)
    return _report_experiment(exp_dir)


def _experiment_dir(path: str) -> str:
    """The experiment at ``path`` (a folder or a URI) as an absolute path or a URI."""
    from sd_tune.search import SPEC_FILE

    # join with no parts drops a URI's trailing slash
    exp_dir = store.join(path) if store.is_uri(path) else store.root(path)
    if not _exists(store.join(exp_dir, SPEC_FILE)):
        raise UsageError(f"{exp_dir} is not an sd-tune experiment folder (no {SPEC_FILE}); "
                         "pass the folder or URI `sd-tune launch` printed, <storage>/<name>")
    return exp_dir


def _resume(args: argparse.Namespace) -> int:
    from sd_tune import search

    exp_dir = _experiment_dir(args.dir)
    spec, _ = search.load_spec(exp_dir)
    _start_ray(args.address, spec.trial, store.parent(exp_dir), wait_s=args.wait_for_nodes)
    search.resume_search(exp_dir, spec, max_failures=args.max_failures)
    return _report_experiment(exp_dir)


def _report(args: argparse.Namespace) -> int:
    return _report_experiment(_experiment_dir(args.dir))


def _space_args(p: argparse.ArgumentParser, *, storage: bool = True) -> None:
    p.add_argument("--space", default="search_spaces/fashion_mnist.yaml",
                   help="search-space YAML file (default: search_spaces/fashion_mnist.yaml, "
                        "the embedded default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.epochs=1 "
                        "--set search.num_samples=4 (repeatable)")
    if storage:
        p.add_argument("--storage", help="results root: a path or s3:// / gs:// URI "
                                         "(default: $SD_TUNE_STORAGE, else the file's "
                                         "storage, usually results/)")


def _experiment_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="the experiment, <storage>/<name>: a folder or a URI "
                               "(s3://bucket/prefix/name)")


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (auto, ray://host:port, host:port); "
                                     "default $RAY_ADDRESS, else a local Ray")
    p.add_argument("--max-failures", type=int, default=1,
                   help="worker-group restarts of a trial from its last checkpoint (default 1)")
    p.add_argument("--wait-for-nodes", type=float, default=None, metavar="SECONDS",
                   help="when no node of the cluster can hold a trial but its autoscaler can "
                        "add one, how long to wait for it before giving up (default 1800)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sd-tune", description="Find how much stochastic depth a ResNet should get.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    launch = sub.add_parser(
        "launch", help="run the search of a space file",
        description="Run a Ray Tune experiment: Optuna proposes drop rate, distribution, depth "
                    "and whatever else the file's `space` lists; each trial trains with Ray "
                    "Train DDP workers. Results go to <storage>/<name>/: Tune's trial folders, "
                    "trials.csv/json, pareto.json, time_to_accuracy.json, summary.md and "
                    "TensorBoard entries.")
    _space_args(launch)
    launch.add_argument("--name", help="experiment name (default: the file's name)")
    _ray_args(launch)
    launch.set_defaults(func=_launch)
    resume = sub.add_parser("resume", help="continue an interrupted search",
                            description="Continue an interrupted experiment: finished trials "
                                        "are kept, unfinished ones continue from their "
                                        "checkpoints, and the search stops at num_samples.")
    _experiment_arg(resume)
    _ray_args(resume)
    resume.set_defaults(func=_resume)
    rep = sub.add_parser("report", help="rebuild an experiment's summary files",
                         description="Rebuild trials.csv/json, pareto.json, "
                                     "time_to_accuracy.json, summary.md and the TensorBoard "
                                     "entries from what the experiment folder holds.")
    _experiment_arg(rep)
    rep.set_defaults(func=_report)
    val = sub.add_parser("validate", help="check a space file without starting anything",
                         description="Check a space file completely and list every problem.")
    _space_args(val, storage=False)
    val.set_defaults(func=_validate)
    train = sub.add_parser(
        "train", help="train one configuration (the file's fixed settings) on Ray Train",
        description="Train the fixed settings of a search-space file once, with Ray Train "
                    "DDP workers and without Tune. Prints one line per epoch; metrics "
                    "(metrics.jsonl), TensorBoard scalars and checkpoints go to "
                    "<storage>/<name>/.")
    _space_args(train)
    train.add_argument("--name", help="run name (default: train-<space name>-<time>)")
    _ray_args(train)
    train.set_defaults(func=_train)
    rates = sub.add_parser("rates", help="show the per-block drop rates surgery gives a model",
                           description="Apply stochastic depth to a model and print the "
                                       "per-block drop rates in forward order.")
    rates.add_argument("--arch", default="resnet50",
                       help="resnet18/34/50/101/152, wide_resnet50_2, resnext50_32x4d or "
                            "cifar_resnet<6n+2> (default: resnet50)")
    rates.add_argument("--drop-rate", type=float, default=0.1, help="default: 0.1")
    rates.add_argument("--distribution", choices=DISTRIBUTIONS, default="linear")
    rates.add_argument("--method", choices=METHODS, default="sample")
    rates.add_argument("--sample-impl", choices=SAMPLE_IMPLS, default="mask")
    rates.add_argument("--target", default="auto", help="block class name or 'auto'")
    rates.set_defaults(func=_rates)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2.

    >>> main(["rates", "--arch", "cifar_resnet20", "--drop-rate", "0.5"])  # doctest: +ELLIPSIS
      #  block        kind             drop_rate
    ...
    9 blocks, expected depth 6.50 of 9
    0
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"sd-tune {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
