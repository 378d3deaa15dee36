#!/usr/bin/env bash
# Install candle-ckpt with every extra into .venv (if needed) and run the whole suite:
# ruff, mypy, pytest. Needs only Python 3.11 with pip and venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pinned first: a bare torch requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,keras,torch,plot]"
ruff check src tests benchmarks
mypy
python -m pytest -q -p no:cacheprovider "$@"
