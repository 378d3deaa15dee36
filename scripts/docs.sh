#!/usr/bin/env bash
# Build the user guide into site/ (open site/index.html), strictly: a broken link, a
# missing page or example fails. Installs candle-ckpt with the docs extra into .venv.
# Arguments go to mkdocs build (e.g. --site-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh "docs"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict "$@"
