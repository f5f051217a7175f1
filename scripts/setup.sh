#!/usr/bin/env bash
# Set up sd-tune on a fresh Debian machine with Python 3.11: the Fashion-MNIST data package,
# a virtual environment in .venv, PyTorch, and sd-tune with its dev tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q dataset-fashion-mnist
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: the CUDA build that also runs on CPU (pip finds it on the build machines' disk)
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "sd-tune is set up in .venv"
