#!/usr/bin/env bash
# Install candle-ckpt with every extra into .venv (if needed) and run the whole suite:
# ruff, mypy, the user guide's build, pytest. Needs only Python >= 3.10 (CI: 3.11) with
# pip and venv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh "dev,keras,torch,jax,plot,docs"
ruff check src tests benchmarks examples scripts
mypy
# The user guide must build: a broken link or anchor, a missing page or example fails.
# Not --quiet: it drops the warnings before --strict counts them.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$site"
python -m pytest -q -p no:cacheprovider "$@"
