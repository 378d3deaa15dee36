#!/usr/bin/env bash
# Install candle-ckpt with its Keras and torch backends into .venv and run the demo:
# a training run killed with SIGKILL mid-run, restarted, finished, and compared.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh "keras,torch,plot"
candle-ckpt demo "$@"
