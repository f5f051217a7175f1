"""The names experiments' pickles hold keep resolving (sd_tune/pickled.py)."""

from __future__ import annotations

import io
import pickle

import pytest

from sd_tune.pickled import PICKLED_NAMES, resolve


@pytest.mark.parametrize("name", PICKLED_NAMES)
def test_every_pickled_name_resolves_as_pickle_finds_it(name: str) -> None:
    module, _, attr = name.rpartition(".")
    obj = resolve(name)
    assert obj.__name__ == attr
    # What pickle itself does with a GLOBAL reference of an old experiment.
    assert pickle.Unpickler(io.BytesIO()).find_class(module, attr) is obj


def test_a_name_that_moved_away_fails_to_resolve() -> None:
    with pytest.raises(AttributeError):
        resolve("sd_tune.config.NoSuchClass")
    with pytest.raises(ModuleNotFoundError):
        resolve("sd_tune.no_such_module.Progress")
