# Sourced by demo.sh and test.sh: create .venv if needed, activate it, and install
# candle-ckpt with the extras given as "$1" (e.g. "keras,torch,plot").
# The big installs (torch, tensorflow) take minutes on a fresh machine: pip's own
# progress is shown for them, and each step says what it installs.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "venv.sh: creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
echo "venv.sh: upgrading pip"
python -m pip install -q --upgrade pip
# Pinned first: a bare torch requirement would pull a multi-GB CUDA build.
if [[ ",$1," != *,torch,* ]]; then
  :  # no torch extra asked for (e.g. the docs alone)
elif python -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' \
    2>/dev/null; then
  echo "venv.sh: torch 2.13.0 is already installed"
else
  echo "venv.sh: installing torch 2.13.0 (the largest download: this can take minutes)"
  python -m pip install --progress-bar on "torch==2.13.0"
fi
echo "venv.sh: installing candle-ckpt (editable) with extras [$1]"
python -m pip install --progress-bar on -e ".[$1]"
echo "venv.sh: .venv is ready"
