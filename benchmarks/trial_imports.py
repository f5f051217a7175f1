"""What a search's processes import before they work, as a ratio to what they imported before.

Ray starts new processes for every trial (its Train controller and workers) and one for each
launch's Tune trial actor; on a 2-core machine their imports are a large part of a trial's
start-up. Each row imports a set of modules in a fresh interpreter, rounds interleaved so
machine noise hits all rows alike, and prints the median seconds and the ratio to its
baseline, measured in the same run:

- the Tune trial actor imports ``sd_tune.tune_trial`` (baseline: ``sd_tune.search``, which
  defined the trainable before); since ``ray_train`` imports torch only when it makes a
  trainer, the actor pays for torch once it starts its first trial, not at this import;
- a Train worker imports ``sd_tune.ray_train`` and ``sd_tune.train`` (baseline: the same plus
  ``torchvision``, which ``sd_tune.models`` imported before);
- the driver of ``sd-tune report`` and ``resume`` imports ``sd_tune.search`` and
  ``sd_tune.experiments`` (baseline: the same plus ``ray.train.torch``, which
  ``sd_tune.ray_train`` and so the search imported before, torch with it).

    python benchmarks/trial_imports.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

ROWS = {
    "trial actor": ("sd_tune.tune_trial", "sd_tune.search"),
    "train worker": (
        "sd_tune.ray_train,sd_tune.train",
        "sd_tune.ray_train,sd_tune.train,torchvision",
    ),
    "driver": (
        "sd_tune.search,sd_tune.experiments",
        "sd_tune.search,sd_tune.experiments,ray.train.torch",
    ),
}


def import_seconds(modules: str) -> float:
    """Seconds a fresh interpreter takes to import ``modules`` (comma-separated)."""
    code = (
        "import importlib, time; t = time.perf_counter()\n"
        f"for m in {modules!r}.split(','): importlib.import_module(m)\n"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {m: [] for pair in ROWS.values() for m in pair}
    for _ in range(args.rounds):
        for modules in times:
            times[modules].append(import_seconds(modules))
    print(f"{'process':<14}{'now (s)':>9}{'baseline (s)':>14}{'ratio':>7}   ({args.rounds} rounds)")
    for name, (now, base) in ROWS.items():
        a, b = statistics.median(times[now]), statistics.median(times[base])
        print(f"{name:<14}{a:>9.2f}{b:>14.2f}{a / b:>7.2f}")


if __name__ == "__main__":
    main()
