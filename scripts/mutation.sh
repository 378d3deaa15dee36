#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3, on demand (never in CI).
#
#   scripts/mutation.sh                  # every core module, 12 sampled mutants each
#   scripts/mutation.sh storage.layout saver # only these modules (dotted, under candle_ckpt)
#   MUTATION_SAMPLE=0 scripts/mutation.sh policy   # all of policy's mutants
#
# Environment:
#   MUTATION_SAMPLE   mutants drawn per module (default 12; 0 = all of them)
#   MUTATION_SEED     seed of the draw (default 17: the same sample on every run)
#   MUTATION_JOBS     mutants tested at once (default 2)
#   MUTATION_TIMEOUT  seconds before mutmut's run is stopped (default 3600)
#   MUTATION_RECHECK  0: do not re-check survivors against the whole fast suite (default 1)
#   MUTATION_RESCORE  1: no new run; re-check the last run's survivors (of the modules
#                     given, default all) with the tests as they are now
#
# The settings (modules to mutate, the fast suite tests/unit + tests/fs) are in setup.cfg
# [mutmut]. mutmut copies src/ and tests/ into mutants/ and runs the tests from there; the
# tests that start `python -c` children must import the mutated copy too, so PYTHONPATH
# puts mutants/src ahead of the editable install. The active mutant reaches the children
# through MUTANT_UNDER_TEST, which they inherit. mutants/ is rebuilt on every run.
# Prints the score per module and writes the survivors to mutants/survivors.txt
# (`.venv/bin/mutmut show NAME` prints one's diff).
set -euo pipefail
cd "$(dirname "$0")/.."
ALL_MODULES=(record restorer saver policy storage.layout storage.integrity storage.commit
             storage.sink storage.lock params)
MODULES=("${@//\//.}")
if [[ $# -eq 0 ]]; then MODULES=("${ALL_MODULES[@]}"); fi
BIN=.venv/bin
[[ -x $BIN/mutmut ]] || { echo "mutmut is missing: .venv/bin/pip install -e '.[dev]'" >&2; exit 2; }
export MUTATION_SAMPLE="${MUTATION_SAMPLE:-12}" MUTATION_SEED="${MUTATION_SEED:-17}"
JOBS="${MUTATION_JOBS:-2}"
export PYTHONPATH="$PWD/mutants/src${PYTHONPATH:+:$PYTHONPATH}"

rc=0
if [[ "${MUTATION_RESCORE:-0}" == 1 ]]; then
    # After adding tests: keep the last run's mutants and verdicts, copy the tests as they
    # are now, and re-check only what that run did not kill.
    [[ -f mutants/sample.txt ]] || { echo "no earlier run in mutants/" >&2; exit 2; }
    rm -rf mutants/tests && cp -r tests mutants/tests
    MUTATION_RECHECK=1
else
rm -rf mutants && mkdir mutants
# Generate the mutants first (what `mutmut run` does before testing), so that a sample
# of their names can be drawn; `mutmut run NAMES...` then tests only those.
"$BIN/python" - "${MODULES[@]}" 2> mutants/generate.log <<'EOF'
import contextlib, json, os, random, sys
from pathlib import Path
import mutmut.__main__ as m
from mutmut.mutation.trampoline import set_mutant_under_test

set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
with open("mutants/generate.log", "a") as log, contextlib.redirect_stdout(log):
    m.copy_src_dir()
    m.copy_also_copy_files()
    m.setup_source_paths()
    m.create_mutants(2)
n, rng = int(os.environ["MUTATION_SAMPLE"]), random.Random(int(os.environ["MUTATION_SEED"]))
chosen = []
for module in sys.argv[1:]:
    meta = Path("mutants/src/candle_ckpt", *module.split(".")).with_suffix(".py.meta")
    if not meta.exists():
        sys.exit(f"{module}: not a core module (no mutants generated; see setup.cfg [mutmut])")
    names = sorted(json.loads(meta.read_text())["exit_code_by_key"])
    chosen += names if n <= 0 or n >= len(names) else sorted(rng.sample(names, n))
    print(f"{module}: {len(names)} mutants")
Path("mutants/sample.txt").write_text("\n".join(chosen) + "\n")
EOF
mapfile -t NAMES < mutants/sample.txt
echo "testing ${#NAMES[@]} mutants (sample ${MUTATION_SAMPLE} per module, seed ${MUTATION_SEED})"
timeout "${MUTATION_TIMEOUT:-3600}" "$BIN/mutmut" run --max-children "$JOBS" "${NAMES[@]}" \
    > mutants/run.log 2>&1 || rc=$?
if [[ $rc -ne 0 ]]; then
    tail -n 40 mutants/run.log
    echo "mutmut run exited $rc (124: MUTATION_TIMEOUT reached); the scores count what was tested"
fi
fi

# mutmut runs a mutant only against the tests that called the mutated function in its own
# process; a function reached only in a child process, or only through a path the stats
# run did not record, gets "no tests". Re-check each mutant not killed against the whole
# fast suite, the mutant chosen by MUTANT_UNDER_TEST exactly as mutmut does.
if [[ "${MUTATION_RECHECK:-1}" != 0 ]]; then
    "$BIN/python" - "$JOBS" "${MODULES[@]}" <<'EOF'
import json, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from mutmut.stats import status_by_exit_code

codes = {}
for meta in Path("mutants/src/candle_ckpt").rglob("*.py.meta"):
    codes.update(json.loads(meta.read_text())["exit_code_by_key"])
recheck = {"survived", "no tests", "suspicious"}
before = {}
if os.environ.get("MUTATION_RESCORE") == "1":  # and what the last run did not get to
    recheck.add("not checked")
    if Path("mutants/recheck.json").exists():  # killed by the last re-check: stays killed
        before = json.loads(Path("mutants/recheck.json").read_text())
        before = {n: r for n, r in before.items() if r["rc"] in (1, "timeout")}
todo = [n for n in Path("mutants/sample.txt").read_text().split()
        if status_by_exit_code[codes.get(n)] in recheck and n not in before
        and ".".join(n.split(".")[1:-1]) in sys.argv[2:]]
print(f"re-checking {len(todo)} mutants not killed against tests/unit + tests/fs")

def check(name):
    env = dict(os.environ, MUTANT_UNDER_TEST=name)
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p",
                               "no:cacheprovider", "-p", "no:randomly", "tests/unit", "tests/fs"],
                              cwd="mutants", env=env, capture_output=True, text=True,
                              timeout=1200)
    except subprocess.TimeoutExpired:
        return name, {"rc": "timeout"}
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED ")]
    return name, {"rc": done.returncode, "failed": failed[:1]}  # the test that killed it

with ThreadPoolExecutor(int(sys.argv[1])) as pool:
    results = dict(pool.map(check, todo))
Path("mutants/recheck.json").write_text(json.dumps({**before, **results}, indent=1))
EOF
fi

"$BIN/python" - <<'EOF'
import json
from collections import Counter
from pathlib import Path
from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
chosen = Path("mutants/sample.txt").read_text().split()
codes = {}
for meta in Path("mutants/src/candle_ckpt").rglob("*.py.meta"):
    codes.update(json.loads(meta.read_text())["exit_code_by_key"])
recheck = Path("mutants/recheck.json")
# pytest exits 1 when a test failed: the whole suite killed what mutmut's selection did not
rekilled = {n for n, r in (json.loads(recheck.read_text()) if recheck.exists() else {}).items()
            if r["rc"] in (1, "timeout")}
by_module: dict[str, Counter] = {}
survivors = []
for name in chosen:
    module = ".".join(name.split(".")[1:-1])
    status = "killed" if name in rekilled else status_by_exit_code[codes.get(name)]
    by_module.setdefault(module, Counter())[status] += 1
    if status not in KILLED:
        survivors.append(f"{name}  {status}")
print(f"{'module':<18} {'tested':>6} {'killed':>6} {'survived':>8} {'no tests':>8} "
      f"{'other':>5} {'score':>6}")
total = Counter()
for module, c in by_module.items():
    total += c
    killed = sum(c[s] for s in KILLED)
    n = sum(c.values())
    other = n - killed - c["survived"] - c["no tests"]
    print(f"{module:<18} {n:>6} {killed:>6} {c['survived']:>8} {c['no tests']:>8} "
          f"{other:>5} {100 * killed / n:>5.0f}%")
killed = sum(total[s] for s in KILLED)
print(f"{'all':<18} {sum(total.values()):>6} {killed:>6} {'':>8} {'':>8} {'':>5} "
      f"{100 * killed / max(1, sum(total.values())):>5.0f}%")
Path("mutants/survivors.txt").write_text("\n".join(survivors) + ("\n" if survivors else ""))
print(f"{len(survivors)} not killed: mutants/survivors.txt")
EOF
exit "$rc"
