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
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from sd_tune import experiments, preflight, runs
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


def _storage(args: argparse.Namespace, space: Any) -> str:
    """--storage, else $SD_TUNE_STORAGE (the launcher configs and the RayJob set it to the
    cluster's bucket), else the space file's."""
    return args.storage or os.environ.get("SD_TUNE_STORAGE") or space.storage


def _train(args: argparse.Namespace) -> int:
    space, _ = _load(args)
    trial = space.trial
    from sd_tune import cluster, ray_train

    storage = _storage(args, space)
    name = args.name or f"train-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local = ray_train.run_dir(storage, name)
    where = store.join(store.root(storage), name)
    preflight.check_storage(storage)
    again = f"the same command with --resume (sd-tune train ... --name {name} --resume)"
    with preflight.locked(str(local), "sd-tune train"):
        # The run's own refusals first: they need neither the data nor torch (~4 s).
        runs.check_run(name, where, local, trial, resume=args.resume, again=again)
        preflight.preflight_data(trial)
        from sd_tune.train import progress_line

        if not args.resume:
            runs.start_run(local, name, trial)
        _, placement_wait_s = preflight.start_ray(
            args.address, trial, storage, wait_s=args.wait_for_nodes
        )
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
        if preflight.INTERRUPTED or int(last.get("epoch", 0)) < epochs:
            by = f" by {preflight.INTERRUPTED[0]}" if preflight.INTERRUPTED else ""
            raise UsageError(
                f"the run stopped{by} after epoch {int(last.get('epoch', 0))} of "
                f"{epochs}; its metrics and checkpoints are kept: continue it "
                f"with {again}"
            )
        return runs.finish_run(local, where, storage, name, trial, rows)


def _launch(args: argparse.Namespace) -> int:
    spec, raw = _load(args)
    return experiments.launch(args, spec, raw, _storage(args, spec))


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
    resume.set_defaults(func=experiments.resume)
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
    rep.set_defaults(func=experiments.report)
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
    preflight.catch_sigterm()
    preflight.INTERRUPTED.clear()
    args.on_interrupt = ""
    warnings.showwarning = _show_note
    try:
        return args.func(args)
    except SdTuneError as err:  # every error sd-tune raises on purpose: one line, its code
        print(f"sd-tune {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        by = preflight.INTERRUPTED[0] if preflight.INTERRUPTED else "Ctrl-C"
        print(
            f"sd-tune {args.command}: error: interrupted ({by}){args.on_interrupt}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
