# Sourced by demo.sh and test.sh: create .venv if needed, activate it, and install
# candle-ckpt with the extras given as "$1" (e.g. "keras,torch,plot").
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pinned first: a bare torch requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[$1]"
