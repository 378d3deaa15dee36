#!/usr/bin/env bash
# Install candle-ckpt with its Keras and torch backends into .venv and run the demo:
# a training run killed with SIGKILL mid-run, restarted, finished, and compared.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[keras,torch,plot]"
candle-ckpt demo "$@"
