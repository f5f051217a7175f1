"""An experiment's commands: ``launch`` (a new search), ``resume`` and ``report``, and the
report every one of them ends with (the files, the terminal's front and comparison, what is
unfinished and how to go on).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
from typing import Any

from sd_tune import preflight
from sd_tune import storage as store
from sd_tune.errors import SdTuneError, UsageError


def write_report(exp_dir: str, spec: Any, records: list[dict[str, Any]]) -> None:
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


def report_experiment(exp_dir: str, *, after_search: bool = False) -> int:
    from sd_tune import configurations, report, search, verdict
    from sd_tune.comparison import baseline_seeds_due, compare

    notes: list[str] = []
    spec, _ = search.load_spec(exp_dir, notes)
    records, unreadable = search.collect_records(exp_dir, spec, notes)
    write_report(exp_dir, spec, records)
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
        stopped = f"stopped by {preflight.INTERRUPTED[0]}: " if preflight.INTERRUPTED else ""
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


def search_failed(command: str, exp_dir: str, err: Exception) -> int:
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
        report_experiment(exp_dir)
    return 1


def launch(args: argparse.Namespace, spec: Any, raw: dict[str, Any], storage: str) -> int:
    """``sd-tune launch`` of the space ``spec`` (``raw``: its mapping) into ``storage``."""
    from sd_tune.config import nothing_searched

    if (problem := nothing_searched(spec)) is not None:
        raise UsageError(f"{spec.source}: {problem}")
    preflight.preflight_data(spec.trial)
    from sd_tune import search

    preflight.check_storage(storage)
    exp_dir = search.experiment_dir(storage, spec.name)
    with preflight.locked(exp_dir, "sd-tune launch"):
        if preflight.exists_at(store.join(exp_dir, search.SPEC_FILE)):
            raise UsageError(
                f"experiment {spec.name!r} already exists in {exp_dir}; continue "
                f"it with `sd-tune resume {shlex.quote(exp_dir)}`, or start a new "
                "one with --name NEW"
            )
        from sd_tune.autoscale import expected_trials

        slots, placement_wait_s = preflight.start_ray(
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
            return search_failed("launch", exp_dir, err)
        return report_experiment(exp_dir, after_search=True)


def experiment_dir(path: str) -> str:
    """The experiment at ``path`` (a folder or a URI) as an absolute path or a URI."""
    from sd_tune.search import SPEC_COPY, SPEC_FILE

    # join with no parts drops a URI's trailing slash
    exp_dir = store.join(path) if store.is_uri(path) else store.root(path)
    if not (
        preflight.exists_at(store.join(exp_dir, SPEC_FILE))
        or preflight.exists_at(store.join(exp_dir, SPEC_COPY))
    ):
        raise UsageError(
            f"{exp_dir} is not an sd-tune experiment folder (no {SPEC_FILE}); "
            "pass the folder or URI `sd-tune launch` printed, <storage>/<name>"
        )
    return exp_dir


def resume(args: argparse.Namespace) -> int:
    from sd_tune import search, train_runs

    exp_dir = experiment_dir(args.dir)
    notes: list[str] = []
    spec, _ = search.load_spec(exp_dir, notes)
    preflight.check_storage(exp_dir, "the experiment folder")
    with preflight.locked(exp_dir, "sd-tune resume"):
        note = search.check_state(exp_dir)
        notes += [
            *([note] if note else []),
            *search.repair_records(exp_dir, spec),
            *train_runs.check_train_runs(exp_dir),
        ]
        for line in notes:
            print(f"note: {line}", flush=True)
        _, placement_wait_s = preflight.start_ray(
            args.address, spec.trial, store.parent(exp_dir), wait_s=args.wait_for_nodes
        )
        args.on_interrupt = f"; continue with `sd-tune resume {shlex.quote(exp_dir)}`"
        try:
            search.resume_search(
                exp_dir, spec, max_failures=args.max_failures, placement_wait_s=placement_wait_s
            )
        except search.SearchFailed as err:
            return search_failed("resume", exp_dir, err)
        return report_experiment(exp_dir, after_search=True)


def report(args: argparse.Namespace) -> int:
    exp_dir = experiment_dir(args.dir)
    args.on_interrupt = (
        f"; the report files are whole (each is replaced in one step): run "
        f"`sd-tune report {shlex.quote(exp_dir)}` again"
    )
    return report_experiment(exp_dir)
