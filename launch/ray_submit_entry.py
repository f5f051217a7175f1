"""Run ``sd-tune`` on a cluster's head node through ``ray submit``.

    ray submit --tmux launch/aws-gpu.yaml launch/ray_submit_entry.py -- \\
        --space search_spaces/imagenet.yaml

``ray submit`` copies this file to ``~/`` on the head and runs it with the cluster's Python
(the launcher configs' venv). It runs ``sd-tune`` with the arguments given: ``launch`` unless
they start with another subcommand (``resume DIR``, ``report DIR``, ``validate``, ``train``),
``--address auto`` (the cluster this node belongs to) and ``--storage $SD_TUNE_STORAGE`` (the
bucket the launcher config sets) unless given, from ``~/sd-tune`` (``$SD_TUNE_HOME``), the
repository copy the config mounts, so that space-file paths are relative to the repository.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

SUBCOMMANDS = frozenset({"launch", "resume", "report", "validate", "train", "rates"})
TAKES_ADDRESS = frozenset({"launch", "resume", "train"})
TAKES_STORAGE = frozenset({"launch", "train"})


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def build_argv(args: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The ``sd-tune`` arguments for the script's arguments ``args``."""
    env = os.environ if env is None else env
    out = list(args)
    if not out or out[0] not in SUBCOMMANDS:
        out = ["launch", *out]
    command = out[0]
    if command in TAKES_ADDRESS and not _given(out, "--address"):
        out += ["--address", "auto"]
    if command in TAKES_STORAGE and not _given(out, "--storage") and env.get("SD_TUNE_STORAGE"):
        out += ["--storage", env["SD_TUNE_STORAGE"]]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_argv(sys.argv[1:] if argv is None else argv)
    home = Path(os.environ.get("SD_TUNE_HOME", "~/sd-tune")).expanduser()
    if home.is_dir():
        os.chdir(home)
    from sd_tune.cli import main as sd_tune_main

    print("sd-tune " + " ".join(args), flush=True)
    return sd_tune_main(args)


if __name__ == "__main__":
    sys.exit(main())
