"""Typed configuration: one trial's settings and the search-space file, loaded from YAML.

Neither torch nor Ray is imported here. Every problem in a file is collected and reported
together, each with the file, the key path and what is wrong (:class:`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sd_tune.errors import SdTuneError
from sd_tune.vocab import (
    DATASETS,
    DISTRIBUTIONS,
    METHODS,
    MODEL_FAMILIES,
    SAMPLE_IMPLS,
    TARGET_LAYER_NAMES,
    arch_name,
)

# Every metric a trial reports after each epoch (docs/design.md §3); test_* come once at the end.
EPOCH_METRICS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_acc5",
    "train_time_s",
    "wall_time_s",
    "images_per_s",
    "lr",
    "expected_depth",
    "compile_time_s",
)
FINAL_METRICS = ("test_acc", "test_acc5", "test_loss")
SAMPLERS = ("tpe", "nsga2", "random")
DISTRIBUTION_KINDS = ("uniform", "loguniform", "int", "choice")

# Bounds on what a file may ask for: far above any real use, low enough that a typo (1e21
# trials, 1e11 images a batch) fails here with the reason instead of running for ever or
# exhausting memory. ``LIMITS[key] = (largest value, why)``.
LIMITS: dict[str, tuple[int, str]] = {
    "train.epochs": (10_000, "10000 epochs is 100 times the longest published schedules"),
    "train.batch_size": (65_536, "a batch that large does not fit any accelerator's memory"),
    "train.eval_batch_size": (65_536, "a batch that large does not fit any accelerator's memory"),
    "dataset.num_workers": (256, "more decoding processes than any node has cores"),
    "dataset.image_size": (4_096, "larger images than any ResNet recipe uses"),
    "resources.num_workers": (4_096, "more DDP workers than any cluster sd-tune targets"),
    "search.num_samples": (10_000, "each trial is a full training run"),
    "search.repeats": (100, "100 seeds put a 95% interval within a fifth of the seed std"),
}
SEED_LIMIT = 2**32  # numpy and Optuna take seeds in [0, 2**32)
MAX_FILE_BYTES = 256 * 1024  # a space file; the shipped ones are 1-4 KB
MAX_SET_CHARS = 10_000  # one --set value
MAX_CHOICES = 1_000  # values of one `choice`
MAX_TEXT_CHARS = 4_096  # a string setting (a path, a name)
MAX_NAME_CHARS = 100  # an experiment or run name: one folder name
MAX_PROBLEMS_SHOWN = 20  # a message lists this many problems, then says how many more
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = 80
_EXCERPT.maxother = 80
_EXCERPT.maxlong = 40
_EXCERPT.maxlist = _EXCERPT.maxtuple = _EXCERPT.maxdict = _EXCERPT.maxset = 6
_EXCERPT.maxlevel = 3


def excerpt(value: Any) -> str:
    """A bounded ``repr`` of ``value`` for messages: never the whole of a long value.

    >>> excerpt("x" * 1000)[:12], len(excerpt(list(range(10**6)))) < 100
    ("'xxxxxxxxxxx", True)
    """
    return _EXCERPT.repr(value)


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be an experiment or run name, or None. A name is one folder name
    under the storage: letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit,
    at most :data:`MAX_NAME_CHARS` characters (so never ``..``, ``/x`` or ``a/b``).

    >>> name_problem("smoke-2"), name_problem("../escape")[:46]
    (None, "must be one folder name (letters, digits, '_',")
    """
    if isinstance(name, str) and len(name) <= MAX_NAME_CHARS and _NAME.fullmatch(name):
        return None
    got = (
        f"{len(name)} characters"
        if isinstance(name, str) and len(name) > MAX_NAME_CHARS
        else excerpt(name)
    )
    return (
        f"must be one folder name (letters, digits, '_', '.', '-', starting with a letter "
        f"or digit, at most {MAX_NAME_CHARS} characters), but got {got}"
    )


class ConfigError(SdTuneError, ValueError):
    """One or more problems in a configuration; ``problems`` lists ``(key path, message)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:"]
        lines += [
            f"  {path}: {msg}" if path else f"  {msg}"
            for path, msg in problems[:MAX_PROBLEMS_SHOWN]
        ]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
        super().__init__("\n".join(lines))


@dataclass
class DatasetConfig:
    name: str = "fashion_mnist"
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    max_train_samples: int | None = None
    train_fraction: float = 1.0
    max_eval_samples: int | None = None
    image_size: int | None = None
    num_workers: int = 8  # decoding processes per training worker (ImageFolder only)
    shuffle_labels: bool = False  # a control: permute training labels (nothing can be learnt)


@dataclass
class ModelConfig:
    family: str = "cifar_resnet"
    depth: int = 20

    @property
    def arch(self) -> str:
        """The registry name, e.g. ``resnet50``, ``cifar_resnet56``, ``wide_resnet50_2``."""
        return arch_name(self.family, self.depth)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # per worker
    lr: float = 0.1  # peak learning rate for the global batch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to BatchNorm parameters and biases
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0  # linear LR warmup, then cosine to 0, stepped per iteration
    seed: int = 0
    bf16: bool = True  # autocast to bfloat16 on GPU (ignored on CPU)
    channels_last: bool = True  # on GPU (ignored on CPU)
    compile: bool | str = "auto"  # "auto": torch.compile on CUDA, eager on CPU
    eval_batch_size: int | None = None
    max_steps_per_epoch: int | None = None
    deterministic: bool = False
    nan_check_every: int = 50  # steps between reads of the device for a non-finite loss
    fail_at_epoch: int | None = None  # testing aid: make the loss NaN in this epoch


@dataclass
class StochasticDepthConfig:
    target_layer_name: str = "auto"
    stochastic_method: str = "sample"  # the API's name (`method` is the old key, still read)
    drop_rate: float = 0.1
    drop_distribution: str = "linear"
    drop_warmup: float = 0.0
    scale_by_keep: bool = False
    sample_impl: str = "mask"

    @property
    def method(self) -> str:
        """The old name of :attr:`stochastic_method`."""
        return self.stochastic_method

    @method.setter
    def method(self, value: str) -> None:
        self.stochastic_method = value


class RenamedKey(FutureWarning):
    """An old key was used: it still works, under its new name (the CLI prints a note)."""


# Old keys still read, with a note: section -> {old key: the key's name now}.
RENAMED_KEYS: dict[str, dict[str, str]] = {"stochastic_depth": {"method": "stochastic_method"}}


def _renamed(section: str, key: str) -> str:
    """``key``'s name now (itself unless it is an old key of ``section``), with a note."""
    new = RENAMED_KEYS.get(section, {}).get(key)
    if new is None:
        return key
    warnings.warn(
        f"`{section}.{key}` is the old name of `{section}.{new}` (the name "
        f"apply_stochastic_depth uses); it still works, but rename it",
        RenamedKey,
        stacklevel=3,
    )
    return new


@dataclass
class ResourcesConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # default: 1 when use_gpu, else 0


@dataclass
class TrialConfig:
    """Everything one trial needs: what to train, how, with which stochastic depth, on what."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stochastic_depth: StochasticDepthConfig = field(default_factory=StochasticDepthConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every setting."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


@dataclass
class Objective:
    metric: str
    mode: str


@dataclass
class SchedulerConfig:
    kind: str = "asha"
    metric: str = "val_acc"
    mode: str = "max"
    grace_period: int = 1
    reduction_factor: int = 3


@dataclass
class SearchConfig:
    sampler: str = "tpe"
    seed: int = 0
    num_samples: int = 8  # configurations
    repeats: int = 1  # seeds per configuration
    baseline: bool | None = None  # null: on when repeats >= 2 and the drop rate can be above 0
    max_concurrent_trials: int | None = None
    scheduler: SchedulerConfig | None = None

    @property
    def trials(self) -> int:
        """Tune trials: each configuration once per seed.

        >>> SearchConfig(num_samples=4, repeats=3).trials
        12
        """
        return self.num_samples * self.repeats


@dataclass
class SpaceFile:
    """A whole search-space file: the fixed trial settings, what to search and how."""

    name: str
    trial: TrialConfig
    space: dict[str, Any]
    objectives: list[Objective]
    search: SearchConfig
    storage: str
    source: str = "<dict>"

    def baseline_depths(self) -> int:
        """At most how many depths get a baseline: one per depth the search can try, and no
        more than its configurations.

        >>> space_from_dict({"space": {"model.depth": {"choice": [20, 56, 110]}},
        ...                  "search": {"num_samples": 2}}).baseline_depths()
        2
        """
        entry = self.space.get("model.depth")
        if not isinstance(entry, dict):
            return 1
        kind, args = next(iter(entry.items()))
        if kind == "choice":
            count = len(set(args))
        elif kind == "int":
            count = int(args[1]) - int(args[0]) + 1
        else:
            count = self.search.num_samples
        return max(1, min(count, self.search.num_samples))

    @property
    def baseline_trials(self) -> int:
        """At most how many baseline trials run: ``repeats`` seeds per depth, when on."""
        return self.search.repeats * self.baseline_depths() if self.search.baseline else 0

    @property
    def total_trials(self) -> int:
        """At most how many Tune trials the search runs: its configurations' seeds and the
        baseline's (fewer when a searched depth never won a configuration).

        >>> space_from_dict({"search": {"num_samples": 3, "repeats": 2}}).total_trials
        8
        """
        return self.search.trials + self.baseline_trials


SECTIONS = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "stochastic_depth": StochasticDepthConfig,
    "resources": ResourcesConfig,
}
TOP_KEYS = ("name", *SECTIONS, "space", "objectives", "search", "storage")


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


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``, but ``1e-4`` and ``5.0e3`` are floats (as in YAML 1.2), not strings,
    a key given twice in one mapping is an error (not a silent overwrite), and aliases
    (``*name``) are refused: expanding them is how a few hundred bytes become gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found an alias (*{excerpt(event.anchor)[1:-1]}): sd-tune does not "
                "expand YAML aliases; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"found the key {excerpt(key_node.value)} twice in one "
                            f"mapping (first on line {first[key]}); the second "
                            "would silently replace the first: keep one",
                            key_node.start_mark,
                        )
                    first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


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


def parse_value(text: str) -> Any:
    """Parse a ``--set key=value`` value as YAML (``0.1``, ``true``, ``null``, ``[1, 2]``).

    >>> parse_value("0.5"), parse_value("block"), parse_value("null"), parse_value("1e-4")
    (0.5, 'block', None, 0.0001)

    Raises ``ValueError`` saying why for a value that is not YAML, longer than
    :data:`MAX_SET_CHARS`, or uses an alias or a ``!!python`` tag.
    """
    if len(text) > MAX_SET_CHARS:
        raise ValueError(
            f"a value is at most {MAX_SET_CHARS} characters, but got {len(text)}: {excerpt(text)}"
        )
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{excerpt(text)} is not a YAML value: {_yaml_problem(err)}") from err
    except RecursionError as err:
        raise ValueError(f"{excerpt(text)} is nested too deeply") from err


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where, never the input itself."""
    if isinstance(err, yaml.MarkedYAMLError):
        where = err.problem_mark or err.context_mark
        text = _cut(str(err.problem or err.context or ""), 200)
        if where is not None:
            text += f" (line {where.line + 1}, column {where.column + 1})"
        return text
    return _cut(str(err), 200)


def _cut(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (cut ones marked with ``...``)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a raw file mapping with ``{"section.key": value}`` set.

    >>> apply_overrides({"train": {"epochs": 3}}, {"train.epochs": 1, "model.depth": 56})
    {'train': {'epochs': 1}, 'model': {'depth': 56}}
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name:
            out[section] = value
            continue
        name = _renamed(section, name)
        if not isinstance(out.get(section), dict):
            out[section] = {}
        out[section][name] = value
    return out


def _not_a_file(p: Path) -> str:
    """What ``p`` is instead of a space file, and what to pass."""
    if p.is_dir():
        what = "is a directory, not a file"
    elif p.is_fifo():
        what = "is a named pipe (FIFO), not a file"
    elif p.exists():
        what = "is not a regular file (a device or socket)"
    else:
        what = "no such file"
    return f"{what}; pass --space with the path of a search-space YAML file (see search_spaces/)"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise :class:`ConfigError` saying what is wrong with the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), [("", _not_a_file(p))])
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            size = p.stat().st_size
            raise ConfigError(
                str(p),
                [
                    (
                        "",
                        f"is {size / 2**10:,.0f} KiB, but a space file is "
                        f"at most {MAX_FILE_BYTES // 2**10} KiB (a few KB "
                        "is usual): is this the right file?",
                    )
                ],
            )
        data = yaml.load(raw.decode("utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(p), [("", f"cannot be read: {err}")]) from err
    except yaml.YAMLError as err:
        raise ConfigError(str(p), [("", f"is not valid YAML: {_yaml_problem(err)}")]) from err
    except RecursionError as err:
        raise ConfigError(str(p), [("", "is nested too deeply to read")]) from err
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(str(p), [("", f"must be a YAML mapping at the top, but got {got}")])
    return data


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


def _check_limit(problems: list[tuple[str, str]], path: str, value: Any) -> None:
    largest, why = LIMITS[path]
    if isinstance(value, (int, float)) and value > largest:
        problems.append((path, f"must be <= {largest} ({why}), but got {excerpt(value)}"))


def _check_seed(problems: list[tuple[str, str]], path: str, value: Any) -> None:
    if not 0 <= value < SEED_LIMIT:
        problems.append((path, f"`0 <= seed < 2**32` must hold, but got {excerpt(value)}"))


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
