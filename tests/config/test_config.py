"""Validation of search-space files (sd_tune.config): real YAML files on disk, no mocks."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sd_tune.config import (
    ConfigError,
    Objective,
    SpaceFile,
    apply_overrides,
    load_space,
    parse_value,
    space_from_dict,
    trial_count,
)

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str, **kwargs: object) -> tuple[ConfigError, Path]:
    """Load a file that must fail; check every problem is in the message with its key path."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path, **kwargs)  # type: ignore[arg-type]
    err = info.value
    lines = str(err).splitlines()
    assert lines[0].startswith(f"{path}: {len(err.problems)} problem")
    assert err.source == str(path)
    for key, msg in err.problems:
        assert (f"  {key}: {msg}" if key else f"  {msg}") in lines
    return err, path


def only_problem(tmp_path: Path, text: str, key: str, pattern: str) -> str:
    """The file has exactly one problem, at ``key``, whose message matches ``pattern``."""
    err, _ = problems_of(tmp_path, text)
    assert [k for k, _ in err.problems] == [key], err.problems
    msg = err.problems[0][1]
    assert re.search(pattern, msg), msg
    return msg


# ----------------------------------------------------------------------------- shipped files


def test_the_shipped_files_are_there() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"smoke", "fashion_mnist", "cifar10", "cifar100", "imagenet"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_file_loads_and_validates(path: Path) -> None:
    spec = load_space(path)
    assert isinstance(spec, SpaceFile)
    assert spec.source == str(path)
    assert spec.name == path.stem
    assert spec.space, "a search-space file searches something"
    assert spec.objectives
    assert spec.storage == "results"
    # A quick check with --set keeps the file valid.
    quick = load_space(path, {"train.epochs": 1, "train.warmup_epochs": 0})
    assert quick.trial.train.epochs == 1


def test_cifar_files_follow_the_paper() -> None:
    for name, classes in (("cifar10", "cifar10"), ("cifar100", "cifar100")):
        spec = load_space(SPACES / f"{name}.yaml")
        assert spec.trial.dataset.name == classes
        assert spec.trial.model.family == "cifar_resnet"
        assert spec.space["model.depth"] == {"choice": [20, 56, 110]}
        assert spec.space["stochastic_depth.drop_rate"] == {"uniform": [0.0, 0.7]}
        assert spec.trial.resources.use_gpu and spec.trial.resources.num_workers == 1
        assert spec.search.scheduler is not None and spec.search.scheduler.metric == "val_acc"


def test_fashion_mnist_gpu_file() -> None:
    """The embedded data on one GPU: 4 single-worker trials share it, ASHA, compiled."""
    spec = load_space(SPACES / "fashion_mnist_gpu.yaml")
    r = spec.trial.resources
    assert (r.num_workers, r.use_gpu, r.gpus_per_worker) == (1, True, 0.25)
    assert spec.trial.dataset.name == "fashion_mnist" and spec.trial.train.compile == "auto"
    assert spec.space["model.depth"] == {"choice": [20, 32, 56, 110]}
    assert set(spec.space) >= {
        "stochastic_depth.drop_rate",
        "stochastic_depth.stochastic_method",
        "stochastic_depth.drop_distribution",
    }
    assert 15 <= spec.trial.train.epochs <= 30
    assert spec.search.scheduler is not None and spec.search.scheduler.kind == "asha"


def test_imagenet_file() -> None:
    spec = load_space(SPACES / "imagenet.yaml")
    t = spec.trial
    assert (t.dataset.name, t.dataset.root) == ("imagenet", "/data/imagenet")
    assert t.model.arch == "resnet50"
    assert spec.space["model.depth"] == {"choice": [50, 101, 152]}
    # subset measured 2x the plain step on a GPU: the search compares mask and block
    assert spec.space["stochastic_depth.stochastic_method"] == {"choice": ["sample", "block"]}
    assert (
        t.stochastic_depth.sample_impl == "mask"
        and "stochastic_depth.sample_impl" not in spec.space
    )
    assert (t.resources.num_workers, t.resources.use_gpu, t.resources.cpus_per_worker) == (
        8,
        True,
        8.0,
    )
    assert t.train.lr == pytest.approx(0.1 * t.resources.num_workers * t.train.batch_size / 256)
    assert spec.search.scheduler is not None and spec.search.scheduler.kind == "asha"


# ----------------------------------------------------------------------------- defaults


def test_an_almost_empty_file_gets_the_defaults(tmp_path: Path) -> None:
    spec = load_space(write(tmp_path, "model: {depth: 56}\n", "tiny_exp.yaml"))
    assert spec.name == "tiny_exp"  # from the file name
    assert spec.objectives == [Objective("val_acc", "max"), Objective("train_time_s", "min")]
    assert spec.search.sampler == "tpe"
    assert spec.search.scheduler is None
    assert spec.storage == "results"
    assert spec.space == {}
    assert spec.trial.model.arch == "cifar_resnet56"


def test_scientific_notation_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads `1e-4` as a string; a search-space file means the number.
    spec = load_space(
        write(
            tmp_path,
            """\
        train: {weight_decay: 1e-4, lr: 2.5E-2}
        space:
          train.lr: {loguniform: [1e-3, 1e-1]}
        """,
        )
    )
    assert spec.trial.train.weight_decay == pytest.approx(1e-4)
    assert spec.trial.train.lr == pytest.approx(0.025)
    assert spec.space["train.lr"] == {"loguniform": [0.001, 0.1]}
    assert parse_value("5e-4") == pytest.approx(5e-4)
    assert parse_value("'1e-4'") == "1e-4"  # quoted: still a string
    assert parse_value("1_000") == 1000


# ----------------------------------------------------------------------------- bad files


def test_unknown_top_level_key(tmp_path: Path) -> None:
    msg = only_problem(tmp_path, "name: x\ntrainer: {epochs: 3}\n", "trainer", "unknown key")
    assert "dataset" in msg and "stochastic_depth" in msg  # lists the known keys


def test_unknown_section_key(tmp_path: Path) -> None:
    msg = only_problem(tmp_path, "train: {epoch: 3}\n", "train.epoch", "unknown key")
    assert "epochs" in msg


@pytest.mark.parametrize(
    ("text", "key", "pattern"),
    [
        ("train: {lr: fast}\n", "train.lr", r"must be a number, but got 'fast'"),
        ("train: {epochs: '10'}\n", "train.epochs", r"must be an integer, but got '10'"),
        ("train: {epochs: 2.5}\n", "train.epochs", r"must be an integer, but got 2.5"),
        ("train: {epochs: true}\n", "train.epochs", r"must be an integer, but got True"),
        ("resources: {use_gpu: 1}\n", "resources.use_gpu", r"must be true or false, but got 1"),
        ("resources: {use_gpu: 'yes please'}\n", "resources.use_gpu", "must be true or false"),
        ("model: {family: 3}\n", "model.family", r"must be a string, but got 3"),
        ("train: {lr: .nan}\n", "train.lr", r"must be a finite number"),
        ("train: {lr: null}\n", "train.lr", r"must be a number, not null"),
        ("train: [1, 2]\n", "train", r"must be a mapping, but got \[1, 2\]"),
        ("model: resnet50\n", "model", r"must be a mapping, but got 'resnet50'"),
        ("search: [tpe]\n", "search", r"must be a mapping"),
        ("search: {scheduler: [asha]}\n", "search.scheduler", r"must be a mapping"),
        ("space: [stochastic_depth.drop_rate]\n", "space", r"must be a mapping"),
        ("space: []\n", "space", r"must be a mapping"),
        ("objectives: {metric: val_acc, mode: max}\n", "objectives", r"non-empty list"),
        ("objectives: []\n", "objectives", r"non-empty list"),
        ("objectives: [val_acc]\n", "objectives[0]", r"must be \{metric: \.\.\., mode"),
        ("storage: 3\n", "storage", r"must be a path"),
        ("storage: ''\n", "storage", r"must be a path"),
        ("name: 'my experiment'\n", "name", r"must be one folder name"),
        ("name: [a]\n", "name", r"must be one folder name"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, key: str, pattern: str) -> None:
    only_problem(tmp_path, text, key, pattern)


@pytest.mark.parametrize(
    ("text", "key", "pattern"),
    [
        (
            "stochastic_depth: {drop_rate: 1.5}\n",
            "stochastic_depth.drop_rate",
            r"`0 <= drop_rate <= 1` must hold, but got 1.5",
        ),
        ("stochastic_depth: {drop_rate: -0.1}\n", "stochastic_depth.drop_rate", "0 <= drop_rate"),
        ("stochastic_depth: {drop_warmup: 1}\n", "stochastic_depth.drop_warmup", "drop_warmup"),
        (
            "dataset: {val_fraction: 1}\n",
            "dataset.val_fraction",
            r"`0 < val_fraction < 1` must hold .*but got 1.0",
        ),
        ("dataset: {val_fraction: 0}\n", "dataset.val_fraction", r"every epoch reports val_acc"),
        ("dataset: {train_fraction: 0}\n", "dataset.train_fraction", r"0 < train_fraction"),
        ("dataset: {max_train_samples: 0}\n", "dataset.max_train_samples", r">= 1 or null"),
        ("train: {epochs: 0, warmup_epochs: 0}\n", "train.epochs", r"must be >= 1, but got 0"),
        ("train: {batch_size: -8}\n", "train.batch_size", r"must be >= 1"),
        ("train: {lr: 0}\n", "train.lr", r"must be > 0"),
        ("train: {momentum: 1}\n", "train.momentum", r"`0 <= momentum < 1`"),
        ("train: {weight_decay: -0.1}\n", "train.weight_decay", r"must be >= 0"),
        (
            "train: {epochs: 3, warmup_epochs: 5}\n",
            "train.warmup_epochs",
            r"`0 <= warmup_epochs <= epochs` must hold, but got 5.0 \(epochs=3\)",
        ),
        ("resources: {num_workers: 0}\n", "resources.num_workers", r"must be >= 1"),
        ("resources: {cpus_per_worker: 0}\n", "resources.cpus_per_worker", r"must be > 0"),
        (
            "resources: {gpus_per_worker: 1}\n",
            "resources.gpus_per_worker",
            r"is > 0 but use_gpu is false",
        ),
        (
            "resources: {use_gpu: false, gpus_per_worker: 0.5}\n",
            "resources.gpus_per_worker",
            r"use_gpu is false",
        ),
        (
            "resources: {use_gpu: true, gpus_per_worker: 1.5}\n",
            "resources.gpus_per_worker",
            r"a fraction must be at most 1 .* but got 1.5",
        ),
        (
            "train: {compile: sometimes}\n",
            "train.compile",
            r"must be 'auto' \(compile on CUDA only\), true or false, but got 'sometimes'",
        ),
        ("train: {nan_check_every: 0}\n", "train.nan_check_every", r"must be >= 1, but got 0"),
        ("dataset: {name: mnist}\n", "dataset.name", r"must be one of 'fashion_mnist', .*'mnist'"),
        ("stochastic_depth: {method: row}\n", "stochastic_depth.method", r"'sample', 'block'"),
        (
            "stochastic_depth: {drop_distribution: cosine}\n",
            "stochastic_depth.drop_distribution",
            r"must be one of",
        ),
        ("stochastic_depth: {sample_impl: gather}\n", "stochastic_depth.sample_impl", "'mask'"),
        (
            "stochastic_depth: {target_layer_name: Block}\n",
            "stochastic_depth.target_layer_name",
            r"must be one of 'auto'",
        ),
    ],
)
def test_impossible_values(tmp_path: Path, text: str, key: str, pattern: str) -> None:
    only_problem(tmp_path, text, key, pattern)


def test_gpus_per_worker_is_fine_with_use_gpu(tmp_path: Path) -> None:
    spec = load_space(write(tmp_path, "resources: {use_gpu: true, gpus_per_worker: 0.5}\n"))
    assert spec.trial.resources.gpus_per_worker == 0.5
    assert load_space(write(tmp_path, "resources: {gpus_per_worker: 0}\n")).trial


@pytest.mark.parametrize(
    ("text", "key", "pattern"),
    [
        (
            "model: {family: resnet, depth: 51}\n",
            "model.depth",
            r"resnet has depths 18, 34, 50, 101, 152, but got 51",
        ),
        (
            "model: {family: cifar_resnet, depth: 21}\n",
            "model.depth",
            r"cifar_resnet depth must be 6n\+2 .*but got 21",
        ),
        ("model: {family: cifar_resnet, depth: 2}\n", "model.depth", r"6n\+2"),
        ("model: {family: wide_resnet, depth: 101}\n", "model.depth", r"wide_resnet has depths 50"),
        (
            "model: {family: densenet, depth: 121}\n",
            "model.family",
            r"must be one of 'resnet', .*'cifar_resnet', but got 'densenet'",
        ),
    ],
)
def test_model(tmp_path: Path, text: str, key: str, pattern: str) -> None:
    only_problem(tmp_path, text, key, pattern)


def test_objective_metric_never_reported(tmp_path: Path) -> None:
    msg = only_problem(
        tmp_path,
        """\
        objectives:
          - {metric: val_acc, mode: max}
          - {metric: accuracy, mode: max}
        """,
        "objectives[1].metric",
        r"'accuracy' is never reported",
    )
    assert "val_acc" in msg and "test_acc" in msg
    only_problem(
        tmp_path,
        "objectives: [{metric: val_acc, mode: maximise}]\n",
        "objectives[0].mode",
        r"must be one of 'max', 'min'",
    )
    only_problem(
        tmp_path, "objectives: [{metric: val_acc}]\n", "objectives[0]", r"must be \{metric"
    )
    # test_acc is reported once at the end: a valid objective.
    assert load_space(write(tmp_path, "objectives: [{metric: test_acc, mode: max}]\n"))


def test_scheduler_metric_must_be_reported_every_epoch(tmp_path: Path) -> None:
    only_problem(
        tmp_path,
        "search: {scheduler: {metric: test_acc}}\n",
        "search.scheduler.metric",
        r"'test_acc' is not reported every epoch",
    )
    only_problem(
        tmp_path,
        "search: {scheduler: {metric: acc}}\n",
        "search.scheduler.metric",
        r"not reported every epoch; use one of epoch, .*val_acc",
    )
    only_problem(
        tmp_path,
        "search: {scheduler: {kind: hyperband}}\n",
        "search.scheduler.kind",
        r"must be one of 'asha'",
    )
    only_problem(
        tmp_path,
        "search: {scheduler: {grace_period: 0}}\n",
        "search.scheduler",
        r"grace_period >= 1",
    )
    only_problem(
        tmp_path,
        "search: {scheduler: {patience: 3}}\n",
        "search.scheduler.patience",
        r"unknown key",
    )
    spec = load_space(write(tmp_path, "search: {scheduler: {metric: val_loss, mode: min}}\n"))
    assert spec.search.scheduler is not None and spec.search.scheduler.mode == "min"


def test_search_section(tmp_path: Path) -> None:
    only_problem(
        tmp_path,
        "search: {sampler: cmaes}\n",
        "search.sampler",
        r"must be one of 'tpe', 'nsga2', 'random', but got 'cmaes'",
    )
    only_problem(tmp_path, "search: {num_samples: 0}\n", "search.num_samples", r">= 1")
    only_problem(
        tmp_path,
        "search: {max_concurrent_trials: 0}\n",
        "search.max_concurrent_trials",
        r">= 1 or null",
    )
    only_problem(tmp_path, "search: {samples: 4}\n", "search.samples", r"unknown key")
    for sampler in ("tpe", "nsga2", "random"):
        assert load_space(write(tmp_path, f"search: {{sampler: {sampler}}}\n")).search.sampler


# ----------------------------------------------------------------------------- the space section


@pytest.mark.parametrize(
    ("entry", "key", "pattern"),
    [
        (
            "drop_rate: {uniform: [0, 1]}",
            "space.drop_rate",
            r"must name a setting as 'section.key'",
        ),
        ("sd.drop_rate: {uniform: [0, 1]}", "space.sd.drop_rate", r"'section.key'"),
        (
            "stochastic_depth.rate: {uniform: [0, 1]}",
            "space.stochastic_depth.rate",
            r"'section.key'",
        ),
        ("search.num_samples: {int: [1, 4]}", "space.search.num_samples", r"'section.key'"),
        (
            "stochastic_depth.drop_rate: {uniform: [0.7, 0.1]}",
            "space.stochastic_depth.drop_rate",
            r"`low <= high` must hold, but got low=0.7, high=0.1",
        ),
        (
            "stochastic_depth.drop_rate: {uniform: [0, 1.5]}",
            "space.stochastic_depth.drop_rate",
            r"value 1.5: `0 <= drop_rate <= 1` must hold",
        ),
        (
            "stochastic_depth.drop_rate: {uniform: [0.1]}",
            "space.stochastic_depth.drop_rate",
            r"uniform needs \[low, high\], but got \[0.1\]",
        ),
        (
            "stochastic_depth.drop_rate: {uniform: [a, b]}",
            "space.stochastic_depth.drop_rate",
            r"uniform needs \[low, high\]",
        ),
        ("train.lr: {loguniform: [0, 0.1]}", "space.train.lr", r"loguniform needs low > 0"),
        ("train.lr: {loguniform: [-1, 0.1]}", "space.train.lr", r"loguniform needs low > 0"),
        ("train.epochs: {int: [1.0, 5.0]}", "space.train.epochs", r"int needs integer bounds"),
        ("train.epochs: {int: [1, 5.5]}", "space.train.epochs", r"int needs integer bounds"),
        (
            "train.epochs: {uniform: [1, 5]}",
            "space.train.epochs",
            r"train.epochs is an integer; use int: \[low, high\] or choice",
        ),
        (
            "stochastic_depth.drop_distribution: {choice: []}",
            "space.stochastic_depth.drop_distribution",
            r"choice needs a non-empty list",
        ),
        (
            "stochastic_depth.drop_distribution: {choice: linear}",
            "space.stochastic_depth.drop_distribution",
            r"choice needs a non-empty list",
        ),
        (
            "stochastic_depth.drop_distribution: {choice: [linear, cosine]}",
            "space.stochastic_depth.drop_distribution",
            r"value 'cosine': must be one of",
        ),
        (
            "stochastic_depth.drop_rate: {normal: [0, 1]}",
            "space.stochastic_depth.drop_rate",
            r"a distribution is one of \{uniform\|loguniform\|int\|choice\}",
        ),
        (
            "stochastic_depth.drop_rate: {uniform: [0, 1], choice: [0]}",
            "space.stochastic_depth.drop_rate",
            r"a distribution is one of",
        ),
        (
            "model.depth: {choice: [20, 21]}",
            "space.model.depth",
            r"value 21: cifar_resnet depth must be 6n\+2",
        ),
        (
            "model.depth: {int: [20, 56]}",
            "space.model.depth",
            r"value 21: cifar_resnet depth must be 6n\+2",
        ),  # only the first bad value
        ("model.depth: 21", "space.model.depth", r"value 21: cifar_resnet depth"),  # fixed value
        (
            "resources.use_gpu: {uniform: [0, 1]}",
            "space.resources.use_gpu",
            r"resources.use_gpu is true or false; use choice: \[\.\.\.\], not uniform",
        ),
        (
            "stochastic_depth.method: {int: [0, 1]}",
            "space.stochastic_depth.method",
            r"is a string; use choice",
        ),
        (
            "resources.use_gpu: {choice: [true, 1]}",
            "space.resources.use_gpu",
            r"value 1: must be true or false, but got 1",
        ),
        (
            "resources.gpus_per_worker: {choice: [0, 1]}",
            "space.resources.gpus_per_worker",
            r"value 1: is > 0 but use_gpu is false",
        ),
        (
            "model.family: {choice: [cifar_resnet, densenet]}",
            "space.model.family",
            r"value 'densenet': must be one of",
        ),
    ],
)
def test_bad_space_entries(tmp_path: Path, entry: str, key: str, pattern: str) -> None:
    only_problem(tmp_path, f"space:\n  {entry}\n", key, pattern)


def test_space_depths_of_the_family(tmp_path: Path) -> None:
    err, _ = problems_of(
        tmp_path,
        """\
        model: {family: resnet, depth: 50}
        space:
          model.depth: {choice: [50, 51, 101, 150]}
        """,
    )
    assert err.problems == [
        ("space.model.depth", "value 51: resnet has depths 18, 34, 50, 101, 152, but got 51"),
        ("space.model.depth", "value 150: resnet has depths 18, 34, 50, 101, 152, but got 150"),
    ]


def test_space_values_must_fit_the_fixed_settings(tmp_path: Path) -> None:
    # A family searched with a fixed depth that one family does not have.
    only_problem(
        tmp_path,
        """\
        model: {family: cifar_resnet, depth: 20}
        space:
          model.family: {choice: [cifar_resnet, resnet]}
        """,
        "space.model.family",
        r"value 'resnet': makes model.depth invalid: resnet has depths",
    )
    # ... but not when the depth is searched too (the searcher draws both).
    assert load_space(
        write(
            tmp_path,
            """\
        model: {family: resnet, depth: 50}
        space:
          model.family: {choice: [resnet, wide_resnet]}
          model.depth: {choice: [50]}
        """,
        )
    )
    # Epochs searched below the fixed warmup.
    only_problem(
        tmp_path,
        """\
        train: {epochs: 10, warmup_epochs: 2}
        space:
          train.epochs: {choice: [1, 10]}
        """,
        "space.train.epochs",
        r"value 1: makes train.warmup_epochs invalid: `0 <= warmup",
    )


def test_good_space_entries(tmp_path: Path) -> None:
    spec = load_space(
        write(
            tmp_path,
            """\
        model: {family: resnet, depth: 50}
        space:
          model.depth: {choice: [18, 34, 50, 101, 152]}
          stochastic_depth.drop_rate: {uniform: [0.0, 1.0]}
          stochastic_depth.method: {choice: [sample, block]}
          train.lr: {loguniform: [0.01, 1]}
          train.epochs: {int: [1, 5]}
          train.warmup_epochs: 0.5
          train.weight_decay: {choice: [0, 0.0001]}
        """,
        )
    )
    assert spec.space["train.warmup_epochs"] == 0.5
    assert spec.space["train.epochs"] == {"int": [1, 5]}
    assert list(spec.space) == [
        "model.depth",
        "stochastic_depth.drop_rate",
        "stochastic_depth.method",
        "train.lr",
        "train.epochs",
        "train.warmup_epochs",
        "train.weight_decay",
    ]


# ----------------------------------------------------------------------------- whole-file problems


def test_not_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {epochs: 3\nmodel: [\n")
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(path))}: 1 problem:\n  is not "
        r"valid YAML",
    ) as info:
        load_space(path)
    assert info.value.problems[0][0] == ""


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", "a list"),
        ("just text\n", "a str"),
        ("", "an empty file"),
        ("# nothing\n", "an empty file"),
    ],
)
def test_not_a_mapping_at_the_top(tmp_path: Path, text: str, got: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"must be a YAML mapping at the top, but got {got}"):
        load_space(path)


def test_not_text(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81 binary")
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(path))}: 1 problem:\n  cannot be "
        r"read",
    ):
        load_space(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(path))}: 1 problem:\n  no such "
        r"file; pass --space",
    ) as info:
        load_space(path)
    assert info.value.problems == [("", info.value.problems[0][1])]
    with pytest.raises(ConfigError, match="is a directory, not a file; pass --space"):
        load_space(tmp_path)  # a folder
    fifo = tmp_path / "space.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"is a named pipe \(FIFO\), not a file; pass --space"):
        load_space(fifo)  # read, it would block


def test_several_problems_at_once(tmp_path: Path) -> None:
    err, path = problems_of(
        tmp_path,
        """\
        name: five_problems
        colour: blue
        model: {family: resnet, depth: 51}
        train: {epochs: 3, warmup_epochs: 5, lr: fast}
        stochastic_depth: {drop_rate: 1.5}
        space:
          stochastic_depth.drop_rate: {uniform: [0.5, 0.1]}
        objectives: [{metric: accuracy, mode: max}]
        search: {sampler: grid}
        """,
    )
    assert [k for k, _ in err.problems] == [
        "colour",
        "train.lr",
        "model.depth",
        "train.warmup_epochs",
        "stochastic_depth.drop_rate",
        "space.stochastic_depth.drop_rate",
        "objectives[0].metric",
        "search.sampler",
    ]
    lines = str(err).splitlines()
    assert lines[0] == f"{path}: 8 problems:"
    assert len(lines) == 9
    assert lines[1].startswith("  colour: unknown key")
    assert lines[2] == "  train.lr: must be a number, but got 'fast'"
    assert "  search.sampler: must be one of 'tpe', 'nsga2', 'random', but got 'grid'" in lines


# ----------------------------------------------------------------------------- --set overrides


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        model: {family: cifar_resnet, depth: 20}
        train: {epochs: 10}
        space:
          stochastic_depth.drop_rate: {uniform: [0.0, 0.5]}
        """,
    )
    spec = load_space(
        path,
        {
            "train.epochs": 1,
            "model.depth": 56,
            "stochastic_depth.method": parse_value("block"),
            "space.stochastic_depth.drop_rate": {"uniform": [0.1, 0.2]},
            "storage": "s3://bucket/sd",
            "search.num_samples": 2,
        },
    )
    assert spec.trial.train.epochs == 1
    assert spec.trial.model.depth == 56
    assert spec.trial.stochastic_depth.method == "block"
    assert spec.space == {"stochastic_depth.drop_rate": {"uniform": [0.1, 0.2]}}
    assert spec.storage == "s3://bucket/sd"
    assert spec.search.num_samples == 2
    # the file on disk is not changed
    assert load_space(path).trial.train.epochs == 10


def test_overrides_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {epochs: 10, warmup_epochs: 2}\n")
    err, _ = problems_of(
        tmp_path,
        path.read_text(),
        overrides={
            "train.epochs": 1,
            "model.depth": 21,
            "train.epoch": 3,
            "resources.gpus_per_worker": 1,
            "stochastic_depth.drop_rate": parse_value("1e-1x"),
        },
    )
    assert {k for k, _ in err.problems} == {
        "train.epoch",
        "stochastic_depth.drop_rate",
        "model.depth",
        "train.warmup_epochs",
        "resources.gpus_per_worker",
    }
    with pytest.raises(ConfigError, match=r"trainer: unknown key"):
        load_space(path, {"trainer.epochs": 1})


def test_apply_overrides_copies() -> None:
    data = {"train": {"epochs": 3}, "name": "a"}
    out = apply_overrides(data, {"train.epochs": 1, "name": "b", "model.depth": 56})
    assert out == {"train": {"epochs": 1}, "name": "b", "model": {"depth": 56}}
    assert data == {"train": {"epochs": 3}, "name": "a"}


def test_space_from_dict_source_defaults() -> None:
    spec = space_from_dict({})
    assert (spec.name, spec.source) == ("experiment", "<dict>")
    with pytest.raises(ConfigError, match=r"^<dict>: 1 problem:\n  train.epochs: must be >= 1"):
        space_from_dict({"train": {"epochs": 0, "warmup_epochs": 0}})


# ----------------------------------------------------------------------------- hostile input


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    err, _ = problems_of(
        tmp_path,
        """\
        name: dup
        train: {epochs: 500}
        model: {depth: 20}
        train:
          epochs: 10
        """,
    )
    assert "found the key 'train' twice in one mapping (first on line 2)" in str(err)
    err, _ = problems_of(tmp_path, "train: {epochs: 5, epochs: 6}\n")
    assert "found the key 'epochs' twice" in str(err)


def test_aliases_are_refused_so_a_bomb_stays_small(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = write(tmp_path, "\n".join([*lines, "name: *i"]) + "\n")
    assert path.stat().st_size < 500  # 9**9 "lol"s once expanded
    with pytest.raises(ConfigError, match=r"found an alias \(\*a\): sd-tune does not expand"):
        load_space(path)
    with pytest.raises(ValueError, match=r"alias"):
        parse_value("*x")


def test_a_huge_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.write("space:\n  train.lr: {choice: [")
        f.write("0.1, " * 2_000_000)
        f.write("0.1]}\n")
    with pytest.raises(ConfigError, match=r"is 9,766 KiB, but a space file is at most 256 KiB"):
        load_space(path)


def test_long_values_are_refused_and_quoted_in_short(tmp_path: Path) -> None:
    many = ", ".join(["0.1"] * 5000)
    msg = only_problem(
        tmp_path,
        f"space:\n  train.lr: {{choice: [{many}]}}\n",
        "space.train.lr",
        r"choice takes at most 1000 values",
    )
    assert len(msg) < 300
    msg = only_problem(
        tmp_path,
        f"train: {{lr: '{'x' * 100_000}'}}\n",
        "train.lr",
        r"must be a number, but got 'xxx",
    )
    assert len(msg) < 200
    msg = only_problem(
        tmp_path,
        f"dataset: {{root: '{'y' * 5000}'}}\n",
        "dataset.root",
        r"must be at most 4096 characters, but got 5000",
    )
    assert len(msg) < 200
    path = write(tmp_path, "train:\n" + "".join(f"  k{i}: {i}\n" for i in range(10_000)))
    with pytest.raises(ConfigError) as info:
        load_space(path)
    text = str(info.value)
    assert len(info.value.problems) == 10_000 and len(text) < 5_000  # 20 listed, then a count
    assert len(text.splitlines()) == 22 and text.endswith("  ... and 9980 more")


@pytest.mark.parametrize(
    ("text", "key", "pattern"),
    [
        (
            "search: {num_samples: 1000000000000000000000}\n",
            "search.num_samples",
            r"must be <= 10000 \(each trial is a full training run\), "
            r"but got 1000000000000000000000",
        ),
        (
            "train: {epochs: 100000000000000000000000, warmup_epochs: 0}\n",
            "train.epochs",
            r"must be <= 10000 \(",
        ),
        ("train: {batch_size: 100000000000}\n", "train.batch_size", r"must be <= 65536 \("),
        ("resources: {num_workers: 100000}\n", "resources.num_workers", r"must be <= 4096 \("),
        ("train: {seed: -1}\n", "train.seed", r"`0 <= seed < 2\*\*32` must hold, but got -1"),
        ("search: {seed: 4294967296}\n", "search.seed", r"`0 <= seed < 2\*\*32` must hold"),
    ],
)
def test_upper_bounds(tmp_path: Path, text: str, key: str, pattern: str) -> None:
    only_problem(tmp_path, text, key, pattern)


def test_set_values_that_are_not_yaml() -> None:
    for text, why in (
        ("[1,", "expected the node content"),
        ("*x", "found an alias"),
        (
            "!!python/object/apply:os.system ['true']",
            "could not determine a constructor for the tag",
        ),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_value(text)
    with pytest.raises(ValueError, match=r"at most 10000 characters, but got 20000"):
        parse_value("1" * 20_000)


def test_names_are_one_folder() -> None:
    from sd_tune.config import name_problem

    assert name_problem("imagenet_r50-v2.1") is None
    for bad in ("../..", "/abs/path", "a/b", ".hidden", "", "x" * 101, "with space", None):
        assert name_problem(bad) is not None, bad
    assert name_problem("x" * 300).endswith("but got 300 characters")


def test_a_space_with_nothing_to_search_is_named() -> None:
    from sd_tune.config import nothing_searched

    assert "it is empty" in nothing_searched(space_from_dict({}))
    assert "only fixed values" in nothing_searched(space_from_dict({"space": {"train.lr": 0.2}}))
    assert (
        nothing_searched(space_from_dict({"space": {"train.lr": {"loguniform": [0.01, 0.1]}}}))
        is None
    )


def test_the_old_method_key_still_works_with_a_note(tmp_path: Path) -> None:
    """`stochastic_depth.method` was renamed `stochastic_method` (the API's name): the old key
    is read, in the section, in `space` and in --set, with a RenamedKey note."""
    from sd_tune.config import RenamedKey

    with pytest.warns(
        RenamedKey,
        match=r"`stochastic_depth.method` is the old name of "
        r"`stochastic_depth.stochastic_method`",
    ):
        spec = load_space(write(tmp_path, "stochastic_depth: {method: block}\n"))
    assert spec.trial.stochastic_depth.stochastic_method == "block"
    with pytest.warns(RenamedKey):
        spec = load_space(
            write(tmp_path, "space:\n  stochastic_depth.method: {choice: [sample, block]}\n")
        )
    assert spec.space == {"stochastic_depth.method": {"choice": ["sample", "block"]}}
    with pytest.warns(RenamedKey):
        only_problem(
            tmp_path,
            "stochastic_depth: {method: block, stochastic_method: sample}\n",
            "stochastic_depth.method",
            r"name one setting; keep "
            r"stochastic_depth.stochastic_method",
        )


def test_cli_prints_the_rename_as_one_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sd_tune.cli import main

    path = write(tmp_path, "stochastic_depth: {method: block}\n")
    assert main(["validate", "--space", str(path)]) == 0
    err = capsys.readouterr().err
    assert (
        err.startswith("sd-tune: note: `stochastic_depth.method` is the old name")
        and err.count("\n") == 1
    ), err


def test_baseline_is_on_by_default_with_seeds_and_a_drop_rate_above_zero() -> None:
    def baseline(search: dict, space: dict | None = None, **sections: Any) -> bool | None:
        data = {"search": search, "space": space or {}, **sections}
        return space_from_dict(data).search.baseline

    searched = {"stochastic_depth.drop_rate": {"uniform": [0.0, 0.5]}}
    assert baseline({"repeats": 2}, searched) is True
    assert baseline({"repeats": 2}) is True  # fixed at the default 0.1
    assert baseline({"repeats": 2}, {"stochastic_depth.drop_rate": 0.5}) is True
    assert baseline({"repeats": 1}, searched) is False  # no interval with one seed
    assert baseline({"repeats": 2}, {"stochastic_depth.drop_rate": 0.0}) is False
    assert baseline({"repeats": 2}, stochastic_depth={"drop_rate": 0.0}) is False
    assert baseline({"repeats": 2, "baseline": False}, searched) is False


def test_a_baseline_that_cannot_compare_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"search.baseline: needs search.repeats 2 or more"):
        space_from_dict({"search": {"baseline": True}})
    with pytest.raises(ConfigError, match=r"search.baseline: compares stochastic depth with"):
        space_from_dict(
            {"search": {"repeats": 3, "baseline": True}, "stochastic_depth": {"drop_rate": 0}}
        )
    with pytest.raises(ConfigError, match=r"search.baseline: must be true or false"):
        space_from_dict({"search": {"repeats": 3, "baseline": "yes"}})


def test_the_baseline_counts_its_seeds_at_each_depth() -> None:
    one = space_from_dict({"search": {"num_samples": 4, "repeats": 3}})
    assert (one.baseline_trials, one.total_trials) == (3, 15)
    assert trial_count(one) == (
        "15 trials (4 configurations x 3 seeds, then the best again without stochastic "
        "depth: 3 baseline seeds)"
    )
    depths = space_from_dict(
        {
            "search": {"num_samples": 4, "repeats": 2},
            "space": {"model.depth": {"choice": [8, 14, 20]}},
        }
    )
    assert (depths.baseline_depths(), depths.baseline_trials, depths.total_trials) == (3, 6, 14)
    assert trial_count(depths).startswith("up to 14 trials (4 configurations x 2 seeds, ")
    assert trial_count(depths).endswith(": 2 baseline seeds at each of up to 3 depths)")
    off = space_from_dict({"search": {"num_samples": 4, "repeats": 2, "baseline": False}})
    assert (off.baseline_trials, off.total_trials) == (0, 8)


def test_a_fixed_drop_rate_against_its_baseline_searches_nothing_else() -> None:
    from sd_tune.config import nothing_searched

    paper = {"space": {"stochastic_depth.drop_rate": 0.5}, "search": {"repeats": 3}}
    many = nothing_searched(space_from_dict({**paper, "search": {"repeats": 3, "num_samples": 3}}))
    assert many is not None and many.endswith(
        "or set search.num_samples: 1 to compare these settings with no stochastic depth"
    )
    assert (
        nothing_searched(space_from_dict({**paper, "search": {"repeats": 3, "num_samples": 1}}))
        is None
    )
