"""YAML in: the safe loader (no aliases, no duplicate keys, YAML 1.2 floats), a space file
read with its size bounded, ``--set`` values and overrides.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sd_tune.config.messages import ConfigError, _renamed, excerpt
from sd_tune.config.settings import MAX_FILE_BYTES, MAX_SET_CHARS


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
