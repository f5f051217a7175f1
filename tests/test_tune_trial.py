"""What each process imports before it works: a Tune trial's actor before its TorchTrainer
starts, a Train worker, and the driver's commands."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sd_tune.search", "sd_tune.comparison", "optuna", "scipy", "torchvision")


def imported_by(module: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of ``heavy`` a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_a_trial_imports_neither_the_search_nor_scipy_nor_torchvision() -> None:
    """Tune starts a trial's actor by importing the trainable's module: it must stay light."""
    from sd_tune import search, tune_trial

    assert tune_trial.run_trial_in_tune.__module__ == "sd_tune.tune_trial"
    assert search.run_trial_in_tune is tune_trial.run_trial_in_tune  # old pickles resolve
    assert imported_by("sd_tune.tune_trial") == []


def test_a_train_worker_imports_torchvision_only_for_its_models() -> None:
    """Every Train worker imports the training code; CIFAR ResNets need no torchvision."""
    assert imported_by("sd_tune.train") == []
    code = (
        "import sys; from sd_tune.models import build_model; build_model('resnet18', 10); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_drivers_commands_import_no_torch() -> None:
    """``report`` and ``resume`` run in the driver, which trains nothing: torch would add
    ~1.7 s of imports to each (``report`` took 7.9 s with it, 3.3 s without)."""
    modules = "sd_tune.search, sd_tune.experiments, sd_tune.report, sd_tune.repeats"
    assert imported_by(modules, ("torch", "torchvision")) == []
