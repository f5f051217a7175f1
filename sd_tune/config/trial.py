"""One trial's settings from a mapping: each section's keys and types, every check of
their values, every problem collected (:func:`make_trial`, :func:`trial_from_dict`).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from sd_tune.config.messages import ConfigError, _renamed, excerpt
from sd_tune.config.settings import LIMITS, MAX_TEXT_CHARS, SECTIONS, SEED_LIMIT, TrialConfig
from sd_tune.vocab import (
    DATASETS,
    DISTRIBUTIONS,
    METHODS,
    MODEL_FAMILIES,
    SAMPLE_IMPLS,
    TARGET_LAYER_NAMES,
)


def _type_name(tp: Any) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
    }.get(tp, tp)


def _coerce(value: Any, annotation: str) -> tuple[Any, str | None]:
    """Check ``value`` against a dataclass field annotation; return (value, error)."""
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None:
        return (None, None) if optional else (None, f"must be {_type_name(base)}, not null")
    if base == "bool":
        return (
            (value, None)
            if isinstance(value, bool)
            else (value, f"must be true or false, but got {excerpt(value)}")
        )
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return value, f"must be an integer, but got {excerpt(value)}"
    if base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return value, f"must be a finite number, but got {excerpt(value)}"
            return float(value), None
        return value, f"must be a number, but got {excerpt(value)}"
    if base == "str":
        if not isinstance(value, str):
            return value, f"must be a string, but got {excerpt(value)}"
        if len(value) > MAX_TEXT_CHARS:
            return value, (
                f"must be at most {MAX_TEXT_CHARS} characters, but got "
                f"{len(value)}: {excerpt(value)}"
            )
        return value, None
    return value, None


def _key(key: Any) -> str:
    """A mapping key as it appears in a key path: short keys whole, long ones cut."""
    text = str(key) if isinstance(key, (str, int, float, bool)) or key is None else excerpt(key)
    return text if len(text) <= 80 else excerpt(text)


def _section(cls: type, data: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append((path, f"must be a mapping, but got {excerpt(data)}"))
        return cls()
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    first_unknown = None
    given_as: dict[str, str] = {}  # field -> the old key it was given under
    for key, value in data.items():
        field_name = _renamed(path, key) if isinstance(key, str) else key
        if field_name != key:
            if field_name in data:
                problems.append(
                    (
                        f"{path}.{key}",
                        f"and {path}.{field_name} name one setting; keep {path}.{field_name}",
                    )
                )
                continue
            given_as[field_name] = key
            key = field_name
        if key not in known:
            here = f"{path}.{_key(key)}"
            problems.append(
                (
                    here,
                    f"unknown key; known keys: {', '.join(known)}"
                    if first_unknown is None
                    else f"unknown key (the known keys are listed at {first_unknown})",
                )
            )
            first_unknown = first_unknown or here
            continue
        value, err = _coerce(value, str(known[key].type))
        if err:
            problems.append((f"{path}.{given_as.get(key, key)}", err))
        else:
            kwargs[key] = value
    obj = cls(**kwargs)
    obj.__dict__["_given_as"] = given_as  # not a field: messages name the key the user wrote
    return obj


def _path(section_obj: Any, section: str, key: str) -> str:
    """``section.key`` as the user wrote it (an old key where one was used)."""
    return f"{section}.{getattr(section_obj, '_given_as', {}).get(key, key)}"


def _choice(problems: list, path: str, value: Any, allowed: tuple | list) -> None:
    if value not in allowed:
        problems.append(
            (path, f"must be one of {', '.join(map(repr, allowed))}, but got {excerpt(value)}")
        )


def _check_depth(problems: list, path: str, family: str, depth: Any) -> None:
    if family not in MODEL_FAMILIES or not isinstance(depth, int):
        return
    depths = MODEL_FAMILIES[family]
    if depths is None:
        if depth < 8 or (depth - 2) % 6:
            problems.append(
                (
                    path,
                    f"cifar_resnet depth must be 6n+2 (20, 32, 44, 56, 110, "
                    f"1202, ...), but got {depth}",
                )
            )
    elif depth not in depths:
        problems.append(
            (path, f"{family} has depths {', '.join(map(str, depths))}, but got {depth}")
        )


def validate_trial(trial: TrialConfig, problems: list[tuple[str, str]]) -> None:
    """Append the problems of a trial's values (ranges, choices) to ``problems``."""
    d, m, t, s, r = (
        trial.dataset,
        trial.model,
        trial.train,
        trial.stochastic_depth,
        trial.resources,
    )
    _choice(problems, "dataset.name", d.name, DATASETS)
    if not 0 < d.val_fraction < 1:
        problems.append(
            (
                "dataset.val_fraction",
                f"`0 < val_fraction < 1` must hold (every "
                f"epoch reports val_acc), but got "
                f"{d.val_fraction}",
            )
        )
    if not 0 < d.train_fraction <= 1:
        problems.append(
            (
                "dataset.train_fraction",
                f"`0 < train_fraction <= 1` must hold, but got {d.train_fraction}",
            )
        )
    for key in ("max_train_samples", "max_eval_samples", "image_size"):
        value = getattr(d, key)
        if value is not None and value < 1:
            problems.append((f"dataset.{key}", f"must be >= 1 or null, but got {value}"))
    if d.num_workers < 0:
        problems.append(("dataset.num_workers", f"must be >= 0, but got {d.num_workers}"))
    _choice(problems, "model.family", m.family, tuple(MODEL_FAMILIES))
    _check_depth(problems, "model.depth", m.family, m.depth)
    for key in ("epochs", "batch_size"):
        if getattr(t, key) < 1:
            problems.append((f"train.{key}", f"must be >= 1, but got {getattr(t, key)}"))
    for path in LIMITS:
        section, _, key = path.partition(".")
        if section in SECTIONS:  # search.num_samples: _search
            _check_limit(problems, path, getattr(getattr(trial, section), key, None))
    _check_seed(problems, "train.seed", t.seed)
    _check_seed(problems, "dataset.split_seed", d.split_seed)
    for key in ("lr",):
        if getattr(t, key) <= 0:
            problems.append((f"train.{key}", f"must be > 0, but got {getattr(t, key)}"))
    for key in ("momentum", "label_smoothing"):
        if not 0 <= getattr(t, key) < 1:
            problems.append(
                (f"train.{key}", f"`0 <= {key} < 1` must hold, but got {getattr(t, key)}")
            )
    if t.weight_decay < 0:
        problems.append(("train.weight_decay", f"must be >= 0, but got {t.weight_decay}"))
    if not 0 <= t.warmup_epochs <= t.epochs:
        problems.append(
            (
                "train.warmup_epochs",
                f"`0 <= warmup_epochs <= epochs` must hold, "
                f"but got {t.warmup_epochs} (epochs={t.epochs})",
            )
        )
    for key in ("eval_batch_size", "max_steps_per_epoch"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            problems.append((f"train.{key}", f"must be >= 1 or null, but got {getattr(t, key)}"))
    if t.nan_check_every < 1:
        problems.append(("train.nan_check_every", f"must be >= 1, but got {t.nan_check_every}"))
    if not (isinstance(t.compile, bool) or t.compile == "auto"):
        problems.append(
            (
                "train.compile",
                f"must be 'auto' (compile on CUDA only), true or false, but got {t.compile!r}",
            )
        )
    _choice(problems, "stochastic_depth.target_layer_name", s.target_layer_name, TARGET_LAYER_NAMES)
    _choice(
        problems, _path(s, "stochastic_depth", "stochastic_method"), s.stochastic_method, METHODS
    )
    _choice(problems, "stochastic_depth.drop_distribution", s.drop_distribution, DISTRIBUTIONS)
    _choice(problems, "stochastic_depth.sample_impl", s.sample_impl, SAMPLE_IMPLS)
    if not 0 <= s.drop_rate <= 1:
        problems.append(
            (
                "stochastic_depth.drop_rate",
                f"`0 <= drop_rate <= 1` must hold, but got {s.drop_rate}",
            )
        )
    if not 0 <= s.drop_warmup < 1:
        problems.append(
            (
                "stochastic_depth.drop_warmup",
                f"`0 <= drop_warmup < 1` must hold, but got {s.drop_warmup}",
            )
        )
    if r.num_workers < 1:
        problems.append(("resources.num_workers", f"must be >= 1, but got {r.num_workers}"))
    if r.cpus_per_worker <= 0:
        problems.append(("resources.cpus_per_worker", f"must be > 0, but got {r.cpus_per_worker}"))
    if r.gpus_per_worker is not None:
        if r.gpus_per_worker < 0:
            problems.append(
                ("resources.gpus_per_worker", f"must be >= 0, but got {r.gpus_per_worker}")
            )
        elif r.gpus_per_worker > 0 and not r.use_gpu:
            problems.append(
                (
                    "resources.gpus_per_worker",
                    "is > 0 but use_gpu is false; set use_gpu: true or gpus_per_worker: 0",
                )
            )
        elif r.gpus_per_worker > 1 and r.gpus_per_worker != int(r.gpus_per_worker):
            problems.append(
                (
                    "resources.gpus_per_worker",
                    f"a fraction must be at most 1 (Ray "
                    f"shares one GPU, e.g. 0.25: four "
                    f"workers on one GPU); above 1 it "
                    f"must be whole, but got "
                    f"{r.gpus_per_worker}",
                )
            )


def trial_from_dict(data: dict[str, Any], problems: list[tuple[str, str]]) -> TrialConfig:
    """Build a :class:`TrialConfig` from the five sections of ``data``, collecting problems."""
    sections = {
        name: _section(cls, data.get(name), name, problems) for name, cls in SECTIONS.items()
    }
    return TrialConfig(**sections)


def _check_limit(problems: list[tuple[str, str]], path: str, value: Any) -> None:
    largest, why = LIMITS[path]
    if isinstance(value, (int, float)) and value > largest:
        problems.append((path, f"must be <= {largest} ({why}), but got {excerpt(value)}"))


def _check_seed(problems: list[tuple[str, str]], path: str, value: Any) -> None:
    if not 0 <= value < SEED_LIMIT:
        problems.append((path, f"`0 <= seed < 2**32` must hold, but got {excerpt(value)}"))


def make_trial(data: dict[str, Any], source: str = "<trial>") -> TrialConfig:
    """A validated :class:`TrialConfig` from section mappings, or :class:`ConfigError`.

    >>> make_trial({"model": {"family": "resnet", "depth": 50}}).model.arch
    'resnet50'
    """
    problems: list[tuple[str, str]] = []
    trial = trial_from_dict(data, problems)
    if not problems:
        validate_trial(trial, problems)
    if problems:
        raise ConfigError(source, problems)
    return trial
