"""The space file saved in an experiment at launch and read back for resume and report, and
the settings every trial starts from (the space's fixed values; the rest to Optuna).
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from sd_tune import storage as store
from sd_tune.config import (
    ConfigError,
    SpaceFile,
    apply_overrides,
    excerpt,
    space_from_dict,
)
from sd_tune.errors import SdTuneError
from sd_tune.search.files import SPEC_COPY, SPEC_FILE


def optuna_distributions(space: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``space`` section into Optuna distributions and fixed values.

    >>> dists, fixed = optuna_distributions({"stochastic_depth.drop_rate": {"uniform": [0, 0.5]},
    ...                                      "model.depth": {"choice": [20, 56]}, "train.lr": 0.2})
    >>> sorted(dists), fixed
    (['model.depth', 'stochastic_depth.drop_rate'], {'train.lr': 0.2})
    """
    dists: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            fixed[key] = spec
            continue
        kind, args = next(iter(spec.items()))
        if kind == "uniform":
            dists[key] = optuna.distributions.FloatDistribution(float(args[0]), float(args[1]))
        elif kind == "loguniform":
            dists[key] = optuna.distributions.FloatDistribution(
                float(args[0]), float(args[1]), log=True
            )
        elif kind == "int":
            dists[key] = optuna.distributions.IntDistribution(int(args[0]), int(args[1]))
        else:
            dists[key] = optuna.distributions.CategoricalDistribution(list(args))
    return dists, fixed


def base_config(spec: SpaceFile) -> dict[str, Any]:
    """The sections every trial starts from: the file's settings plus the fixed ``space``
    values; the searched values go on top."""
    return apply_overrides(spec.trial.to_dict(), optuna_distributions(spec.space)[1])


class SpecError(SdTuneError, ValueError):
    """An experiment's saved space file cannot be read; the message says why and what to do."""


def save_spec(spec: SpaceFile, exp_dir: str, raw: dict[str, Any]) -> None:
    """Save the resolved space file (and a second copy under ``sd_tune/``) for resume and
    report. ``baseline`` is saved as decided: an experiment saved before baselines existed
    has none, and resumes and reports without one."""
    saved = {"raw": raw, "source": spec.source, "baseline": bool(spec.search.baseline)}
    text = json.dumps(saved, indent=2)
    store.write_text(store.join(exp_dir, SPEC_FILE), text)
    store.write_text(store.join(exp_dir, SPEC_COPY), text)


def load_spec(exp_dir: str, notes: list[str] | None = None) -> tuple[SpaceFile, dict[str, Any]]:
    """The experiment's space file as saved at launch; its copy under ``sd_tune/`` when the
    first cannot be read (then a line saying so goes to ``notes``). :class:`SpecError` when
    neither can."""
    problems = []
    for name in (SPEC_FILE, SPEC_COPY):
        try:
            saved = json.loads(store.read_bytes(store.join(exp_dir, name), limit=2**20))
            spec = space_from_dict(saved["raw"], str(saved["source"]))
        except FileNotFoundError:
            problems.append(f"{name}: not there")
            continue
        except ConfigError as err:
            problems.append(
                f"{name}: {len(err.problems)} invalid setting(s), the first: "
                f"{err.problems[0][0]}: {err.problems[0][1][:120]}"
            )
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:
            why = "not valid JSON" if isinstance(err, ValueError) else excerpt(str(err))
            problems.append(f"{name}: {why if not isinstance(err, KeyError) else 'incomplete'}")
            continue
        spec.search.baseline = saved.get("baseline") is True
        if problems and notes is not None:
            notes.append(
                f"{SPEC_FILE} cannot be read ({problems[0].split(': ', 1)[1]}); used "
                f"its copy {SPEC_COPY}"
            )
        return spec, saved["raw"]
    raise SpecError(
        f"the experiment's saved space file cannot be read ({'; '.join(problems)}): "
        f"it holds the experiment's settings and objectives, written at launch. "
        f"Put back {SPEC_FILE} from a backup of {exp_dir}, or launch the search "
        f"again under a new --name"
    )
