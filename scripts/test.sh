#!/usr/bin/env bash
# Install candle-ckpt with every extra into .venv (if needed) and run the whole suite:
# ruff, mypy, pytest. Needs only Python >= 3.10 (CI: 3.11) with pip and venv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh "dev,keras,torch,jax,plot"
ruff check src tests benchmarks
mypy
python -m pytest -q -p no:cacheprovider "$@"
