"""The typed settings: one trial's five sections, the search, the whole space file (plain
dataclasses), and the words and bounds they take.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sd_tune.vocab import (
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

        >>> from sd_tune.config import space_from_dict
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

        >>> from sd_tune.config import space_from_dict
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
