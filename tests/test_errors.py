"""One error base: every error sd-tune defines derives from SdTuneError, keeps its built-in
base, and the CLI ends with its exit code in one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import sd_tune
from sd_tune.errors import SdTuneError

BUILT_IN_BASES = {  # caught as these elsewhere: they keep them
    "TooLarge": ValueError,
    "ConfigError": ValueError,
    "SpecError": ValueError,
    "CudaDriverError": RuntimeError,
    "NoRoomForWorkers": RuntimeError,
}


def sd_tune_errors() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(sd_tune.__path__, "sd_tune."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and not issubclass(obj, Warning)  # notes, not errors
                and obj.__module__ == module.__name__
            ):
                found[f"{obj.__module__}.{name}"] = obj
    return found


def test_every_error_derives_from_the_base_and_keeps_its_built_in_one() -> None:
    errors = sd_tune_errors()
    names = {qualified.rsplit(".", 1)[1] for qualified in errors}
    assert {"UsageError", "ConfigError", "StorageFull", "LockHeld", "SearchFailed"} <= names
    assert len(errors) >= 11, sorted(errors)
    for qualified, cls in errors.items():
        assert issubclass(cls, SdTuneError), qualified
        base = BUILT_IN_BASES.get(cls.__name__)
        if base is not None:
            assert issubclass(cls, base), qualified
        assert cls.exit_code in (1, 2), qualified


def test_main_prints_an_errors_message_as_one_line_with_its_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ConfigError and a SpecError reach main() as they are (no re-wrapping): one line, exit
    2, the same text as the error."""
    from sd_tune import cli
    from sd_tune.config import ConfigError, load_yaml
    from sd_tune.search import SPEC_FILE, SpecError, load_spec

    missing = tmp_path / "nope.yaml"
    assert cli.main(["validate", "--space", str(missing)]) == 2
    with pytest.raises(ConfigError) as config_error:
        load_yaml(missing)
    assert capsys.readouterr().err == f"sd-tune validate: error: {config_error.value}\n"
    (tmp_path / SPEC_FILE).write_text("{")  # an experiment folder whose space is unreadable
    assert cli.main(["report", str(tmp_path)]) == 2
    with pytest.raises(SpecError) as spec_error:
        load_spec(str(tmp_path))
    err = capsys.readouterr().err
    assert err == f"sd-tune report: error: {spec_error.value}\n" and err.count("\n") == 1


def test_search_failed_ends_with_1() -> None:
    from sd_tune.search import SearchFailed

    assert SearchFailed("boom").exit_code == 1
