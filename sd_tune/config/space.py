"""The search-space file: its sections, the space's distributions, the objectives and the
search (seeds, baseline) checked together, and what it costs in trials.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from sd_tune.config.loading import apply_overrides, load_yaml
from sd_tune.config.messages import RENAMED_KEYS, ConfigError, excerpt, name_problem
from sd_tune.config.settings import (
    DISTRIBUTION_KINDS,
    EPOCH_METRICS,
    FINAL_METRICS,
    MAX_CHOICES,
    SAMPLERS,
    SECTIONS,
    TOP_KEYS,
    Objective,
    SchedulerConfig,
    SearchConfig,
    SpaceFile,
    TrialConfig,
)
from sd_tune.config.trial import (
    _check_limit,
    _check_seed,
    _choice,
    _key,
    _section,
    _type_name,
    trial_from_dict,
    validate_trial,
)


def space_from_dict(data: dict[str, Any], source: str = "<dict>") -> SpaceFile:
    """Validate a whole search-space mapping; raise :class:`ConfigError` listing every problem.

    >>> space_from_dict({"name": "demo"}).trial.model.arch
    'cifar_resnet20'
    """
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in TOP_KEYS:
            problems.append((_key(key), f"unknown key; known keys: {', '.join(TOP_KEYS)}"))
    name = data.get("name", Path(source).stem if source != "<dict>" else "experiment")
    if (problem := name_problem(name)) is not None:
        problems.append(("name", problem))
    trial = trial_from_dict(data, problems)
    validate_trial(trial, problems)
    space = data.get("space")
    if space is None:
        space = {}
    if not isinstance(space, dict):
        problems.append(
            (
                "space",
                f"must be a mapping of 'section.key' to a value or a "
                f"distribution, but got {excerpt(space)}",
            )
        )
        space = {}
    base: list[tuple[str, str]] = []
    validate_trial(trial, base)
    for key, spec in space.items():
        _check_space_entry(trial, _key(key), spec, problems, set(map(str, space)), base)
    objectives = _objectives(data.get("objectives"), problems)
    search = _search(data.get("search"), problems)
    _check_repeats(search, space, problems)
    _check_baseline(search, space, trial, problems)
    storage = data.get("storage", "results")
    if not isinstance(storage, str) or not storage:
        problems.append(
            ("storage", f"must be a path or an s3:// / gs:// URI, but got {excerpt(storage)}")
        )
    if problems:
        raise ConfigError(source, problems)
    return SpaceFile(
        name=name,
        trial=trial,
        space=space,
        objectives=objectives,
        search=search,
        storage=storage,
        source=source,
    )


def trial_count(spec: SpaceFile) -> str:
    """How many trials a search runs, in words.

    >>> trial_count(space_from_dict({"search": {"num_samples": 3}}))
    '3 trials'
    >>> trial_count(space_from_dict({"search": {"num_samples": 3, "repeats": 2,
    ...                                         "baseline": False}}))
    '6 trials (3 configurations x 2 seeds)'
    >>> trial_count(space_from_dict({"search": {"num_samples": 3, "repeats": 2}}))[:48]
    '8 trials (3 configurations x 2 seeds, then the b'
    """
    s = spec.search
    if s.repeats == 1:
        return f"{s.trials} trials"
    if not s.baseline:
        return f"{s.trials} trials ({s.num_samples} configurations x {s.repeats} seeds)"
    depths = spec.baseline_depths()
    where = (
        ""
        if depths == 1 and "model.depth" not in searched_keys(spec)
        else (f" at each of up to {depths} depths")
    )
    upto = "up to " if where else ""
    return (
        f"{upto}{spec.total_trials} trials ({s.num_samples} configurations x {s.repeats} seeds, "
        f"then the best again without stochastic depth: {s.repeats} baseline seeds{where})"
    )


def searched_keys(spec: SpaceFile) -> list[str]:
    """The settings ``spec`` searches: its ``space`` keys that hold a distribution.

    >>> searched_keys(space_from_dict({"space": {"train.lr": 0.2,
    ...                                          "model.depth": {"choice": [20, 56]}}}))
    ['model.depth']
    """
    return [k for k, v in spec.space.items() if isinstance(v, dict)]


def nothing_searched(spec: SpaceFile) -> str | None:
    """Why ``sd-tune launch`` refuses ``spec``'s space, or None: a space that lists no
    distribution makes every trial train the same settings.

    >>> nothing_searched(space_from_dict({"space": {"train.lr": 0.2}}))[:45]
    'space: lists no setting to search (only fixed'
    """
    if searched_keys(spec):
        return None
    if spec.search.baseline and spec.search.num_samples == 1:
        return None  # one configuration against its baseline (e.g. the paper's 0.5 linear)
    what = "only fixed values" if spec.space else "it is empty"
    return (
        f"space: lists no setting to search ({what}), so all {spec.search.num_samples} "
        "trials would train the same settings; add a distribution (e.g. "
        "stochastic_depth.drop_rate: {uniform: [0.0, 0.5]}), or train the settings once "
        "with `sd-tune train`"
        + (
            ", or set search.num_samples: 1 to compare these settings with no stochastic depth"
            if spec.search.baseline
            else ""
        )
    )


def load_space(path: str | Path, overrides: dict[str, Any] | None = None) -> SpaceFile:
    """Load and validate a search-space file, with ``--set`` overrides applied first."""
    data = load_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return space_from_dict(data, str(path))


def _check_space_entry(
    trial: TrialConfig,
    key: str,
    spec: Any,
    problems: list[tuple[str, str]],
    space_keys: set[str],
    base: list[tuple[str, str]],
) -> None:
    """Check one ``space`` entry: each value it can take (a fixed value, every choice, the
    bounds of a range, every value of a short int range) must make a valid trial together
    with the fixed settings of the keys that are not searched."""
    path = f"space.{key}"
    section, _, name = key.partition(".")
    name = RENAMED_KEYS.get(section, {}).get(name, name)
    if section not in SECTIONS or name not in {f.name for f in fields(SECTIONS[section])}:
        problems.append(
            (
                path,
                "must name a setting as 'section.key' (e.g. "
                "'stochastic_depth.drop_rate', 'model.depth', 'train.lr')",
            )
        )
        return
    annotation = str(next(f.type for f in fields(SECTIONS[section]) if f.name == name))
    if not isinstance(spec, dict):
        _check_space_values(trial, key, [spec], problems, space_keys, base)
        return
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTION_KINDS:
        problems.append(
            (
                path,
                f"a distribution is one of {{uniform|loguniform|int|choice}}: "
                f"[...], but got {excerpt(spec)}",
            )
        )
        return
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            problems.append((path, f"choice needs a non-empty list, but got {excerpt(args)}"))
            return
        if len(args) > MAX_CHOICES:
            problems.append(
                (
                    path,
                    f"choice takes at most {MAX_CHOICES} values (each is tried "
                    f"as a trial's setting), but got {len(args)}: "
                    f"{excerpt(args)}",
                )
            )
            return
        values = args
    else:
        if (
            not isinstance(args, list)
            or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
        ):
            problems.append((path, f"{kind} needs [low, high], but got {excerpt(args)}"))
            return
        low, high = args
        if not low <= high:
            problems.append((path, f"`low <= high` must hold, but got low={low}, high={high}"))
            return
        if kind == "loguniform" and low <= 0:
            problems.append((path, f"loguniform needs low > 0, but got low={low}"))
            return
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            problems.append((path, f"int needs integer bounds, but got {excerpt(args)}"))
            return
        base_type = annotation.replace("| None", "").strip()
        if base_type in ("bool", "str"):
            problems.append(
                (path, f"{key} is {_type_name(base_type)}; use choice: [...], not {kind}")
            )
            return
        if kind != "int" and base_type == "int":
            problems.append(
                (path, f"{key} is an integer; use int: [low, high] or choice: [...], not {kind}")
            )
            return
        values = list(range(low, high + 1)) if kind == "int" and high - low < 64 else [low, high]
    _check_space_values(trial, key, values, problems, space_keys, base, first_only=kind == "int")


def _check_space_values(
    trial: TrialConfig,
    key: str,
    values: list[Any],
    problems: list[tuple[str, str]],
    space_keys: set[str],
    base: list[tuple[str, str]],
    first_only: bool = False,
) -> None:
    for value in values:
        sub: list[tuple[str, str]] = []
        candidate = trial_from_dict(apply_overrides(trial.to_dict(), {key: value}), sub)
        if not sub:
            validate_trial(candidate, sub)
        found = [
            (
                f"space.{key}",
                f"value {excerpt(value)}: {msg}"
                if p == key
                else f"value {excerpt(value)}: makes {p} invalid: {msg}",
            )
            for p, msg in sub
            if p == key or (p not in space_keys and (p, msg) not in base)
        ]
        problems.extend(found)
        if found and first_only:
            return


def _objectives(raw: Any, problems: list[tuple[str, str]]) -> list[Objective]:
    if raw is None:
        return [Objective("val_acc", "max"), Objective("train_time_s", "min")]
    if not isinstance(raw, list) or not raw:
        problems.append(
            ("objectives", f"must be a non-empty list of {{metric, mode}}, but got {excerpt(raw)}")
        )
        return []
    out = []
    reported = (*EPOCH_METRICS, *FINAL_METRICS)
    for i, item in enumerate(raw):
        path = f"objectives[{i}]"
        if not isinstance(item, dict) or set(item) != {"metric", "mode"}:
            problems.append(
                (path, f"must be {{metric: ..., mode: max|min}}, but got {excerpt(item)}")
            )
            continue
        if item["metric"] not in reported:
            problems.append(
                (
                    f"{path}.metric",
                    f"{excerpt(item['metric'])} is never reported; "
                    f"reported metrics: {', '.join(reported)}",
                )
            )
        _choice(problems, f"{path}.mode", item["mode"], ("max", "min"))
        out.append(Objective(item["metric"], item["mode"]))
    return out


def _check_repeats(
    search: SearchConfig, space: dict[str, Any], problems: list[tuple[str, str]]
) -> None:
    """Seeds per configuration take their seeds from ``train.seed`` and need every seed run
    to the end: a searched ``train.seed`` and an early-stopping scheduler are refused."""
    if not isinstance(search.repeats, int) or search.repeats <= 1:
        return
    if "train.seed" in space:
        problems.append(
            (
                "space.train.seed",
                f"cannot be searched with search.repeats {search.repeats}: each configuration "
                "gets its seeds from train.seed; set train.seed instead",
            )
        )
    if search.scheduler is not None:
        problems.append(
            (
                "search.scheduler",
                f"ASHA stops seeds one by one, so it cannot run with search.repeats "
                f"{search.repeats}; drop the scheduler or set search.repeats: 1",
            )
        )


def drop_rate_can_be_above_zero(space: dict[str, Any], trial: TrialConfig) -> bool:
    """Whether some trial of ``space`` trains with a drop rate above 0 (searched, or fixed
    above 0 in ``space`` or in the ``stochastic_depth`` section).

    >>> drop_rate_can_be_above_zero({}, TrialConfig())
    True
    >>> drop_rate_can_be_above_zero({"stochastic_depth.drop_rate": 0.0}, TrialConfig())
    False
    """
    entry = space.get("stochastic_depth.drop_rate", trial.stochastic_depth.drop_rate)
    if isinstance(entry, dict):
        return True
    return isinstance(entry, (int, float)) and not isinstance(entry, bool) and entry > 0


def _check_baseline(
    search: SearchConfig,
    space: dict[str, Any],
    trial: TrialConfig,
    problems: list[tuple[str, str]],
) -> None:
    """Refuse a baseline that cannot be compared; decide ``search.baseline`` when unset (on
    when repeats >= 2 and the drop rate can be above 0)."""
    if not isinstance(search.repeats, int):
        return
    above_zero = drop_rate_can_be_above_zero(space, trial)
    if search.baseline is None:
        search.baseline = search.repeats >= 2 and above_zero and search.scheduler is None
        return
    if not search.baseline:
        return
    if search.repeats < 2:
        problems.append(
            (
                "search.baseline",
                f"needs search.repeats 2 or more (got {search.repeats}): the comparison with "
                "no stochastic depth is an interval over seeds; set search.repeats: 3, or "
                "search.baseline: false",
            )
        )
    if not above_zero:
        problems.append(
            (
                "search.baseline",
                "compares stochastic depth with drop rate 0, but the drop rate is fixed at 0: "
                "search stochastic_depth.drop_rate or fix it above 0, or set "
                "search.baseline: false",
            )
        )


def _search(raw: Any, problems: list[tuple[str, str]]) -> SearchConfig:
    raw = dict(raw or {}) if isinstance(raw, dict) or raw is None else raw
    if not isinstance(raw, dict):
        problems.append(("search", f"must be a mapping, but got {excerpt(raw)}"))
        return SearchConfig()
    sched_raw = raw.pop("scheduler", None)
    search = _section(SearchConfig, raw, "search", problems)
    _choice(problems, "search.sampler", search.sampler, SAMPLERS)
    if search.num_samples < 1:
        problems.append(("search.num_samples", f"must be >= 1, but got {search.num_samples}"))
    _check_limit(problems, "search.num_samples", search.num_samples)
    if search.repeats < 1:
        problems.append(("search.repeats", f"must be >= 1, but got {search.repeats}"))
    _check_limit(problems, "search.repeats", search.repeats)
    _check_seed(problems, "search.seed", search.seed)
    if search.max_concurrent_trials is not None and search.max_concurrent_trials < 1:
        problems.append(
            (
                "search.max_concurrent_trials",
                f"must be >= 1 or null, but got {search.max_concurrent_trials}",
            )
        )
    if sched_raw is not None:
        sched = _section(SchedulerConfig, sched_raw, "search.scheduler", problems)
        _choice(problems, "search.scheduler.kind", sched.kind, ("asha",))
        _choice(problems, "search.scheduler.mode", sched.mode, ("max", "min"))
        if sched.metric not in EPOCH_METRICS:
            problems.append(
                (
                    "search.scheduler.metric",
                    f"{excerpt(sched.metric)} is not reported "
                    f"every epoch; use one of "
                    f"{', '.join(EPOCH_METRICS)}",
                )
            )
        if sched.grace_period < 1 or sched.reduction_factor < 2:
            problems.append(
                ("search.scheduler", "grace_period >= 1 and reduction_factor >= 2 must hold")
            )
        search.scheduler = sched
    return search
