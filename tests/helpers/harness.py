"""Random kill -9 harness: SIGKILL real training runs at random instants, then check
that every restart resumes from the newest epoch whose save had returned, with exactly
the weights saved at that epoch.

On demand (prints "N kills, N restarts ok, 0 bad"):
    python -m tests.helpers.harness --framework torch --kills 200   (from the repository root)
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TRAINER = Path(__file__).with_name("harness_trainer.py")


@dataclass
class Outcome:
    kills: int = 0
    kills_in_save: int = 0
    restarts_ok: int = 0
    bad: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.kills} kills, {self.restarts_ok} restarts ok, {len(self.bad)} bad"
                f" ({self.kills_in_save} kills landed inside a save)")


def check_restart(lines: list[str], async_: bool) -> str | None:
    """Check the last "restart" line of a log against what the runs before it saved.

    Returns None when it holds, else a description of the violation.
    """
    restart_at = max(i for i, ln in enumerate(lines) if ln.startswith("restart "))
    _, r, digest = lines[restart_at].split()
    resumed = int(r)
    previous = [i for i, ln in enumerate(lines[:restart_at]) if ln.startswith("restart ")]
    if not previous:
        return None if resumed == 0 else f"first run resumed at {resumed}"
    seg_start = previous[-1]
    segment = lines[seg_start:restart_at]
    prev_resumed = int(segment[0].split()[1])
    saved = [int(ln.split()[1]) for ln in segment if ln.startswith("saved ")]
    saving = [int(ln.split()[1]) for ln in segment if ln.startswith("saving ")]
    digests: dict[int, str] = {}
    for ln in lines[:restart_at]:
        if ln.startswith("saving "):
            _, n, d = ln.split()
            digests[int(n)] = d
        elif ln.startswith("restart "):
            _, n, d = ln.split()
            digests.setdefault(int(n), d)
    # Newest epoch guaranteed durable: a sync save is durable when ckpt_epoch returns;
    # an async one when the next ckpt_epoch (which waits for it) returns.
    durable = saved[-1] if saved and not async_ else (saved[-2] if len(saved) > 1 else None)
    floor = max(prev_resumed, durable or 0)
    ceiling = max([prev_resumed] + saving)
    if not floor <= resumed <= ceiling:
        return (f"resumed at {resumed}, expected between {floor} (newest returned save) "
                f"and {ceiling} (newest attempted)")
    if resumed > 0 and digests.get(resumed) != digest:
        return f"resumed at {resumed} with weights {digest}, saved were {digests.get(resumed)}"
    return None


def run(framework: str, kills: int, seed: int, workdir: Path, *, async_: bool = False,
        checksum: bool = False, size: int = 0, max_delay: float = 0.0,
        epochs: int = 40, dedup: bool = False) -> Outcome:
    """SIGKILL ``kills`` runs of harness_trainer.py at random instants; check every restart."""
    rng = random.Random(seed)
    size = size or {"files": 256, "torch": 512, "keras": 512}[framework]
    max_delay = max_delay or {"files": 1.0, "torch": 1.0, "keras": 2.0}[framework]
    outcome = Outcome()
    run_no = 0
    ckpt_dir = workdir / f"run{run_no}"
    log = workdir / f"run{run_no}.log"
    while outcome.kills < kills:
        cmd = [sys.executable, str(TRAINER), "--framework", framework, "--dir", str(ckpt_dir),
               "--log", str(log), "--epochs", str(epochs), "--size", str(size)]
        if async_:
            cmd.append("--async")
        if checksum:
            cmd.append("--checksum")
        if dedup:
            cmd.append("--dedup")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip() == "ready"
        if not ready:
            proc.wait()
            err = proc.stderr.read() if proc.stderr else ""
            outcome.bad.append(f"run {run_no}: trainer failed to restart: {err[-2000:]}")
            return outcome
        lines = log.read_text().splitlines()
        if sum(ln.startswith("restart ") for ln in lines) > 1:
            problem = check_restart(lines, async_)
            if problem is None:
                outcome.restarts_ok += 1
            else:
                outcome.bad.append(f"run {run_no}: {problem}")
        try:
            proc.wait(timeout=rng.uniform(0.0, max_delay))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL, as a pre-empted job
            proc.wait()
            outcome.kills += 1
            tail = log.read_text().splitlines()[-1:]
            if tail and tail[0].startswith("saving "):
                outcome.kills_in_save += 1
            continue
        if proc.returncode != 0:
            err = proc.stderr.read() if proc.stderr else ""
            outcome.bad.append(f"run {run_no}: trainer exited {proc.returncode}: {err[-2000:]}")
            return outcome
        # The run finished before the kill: start a new one in a fresh directory.
        run_no += 1
        ckpt_dir = workdir / f"run{run_no}"
        log = workdir / f"run{run_no}.log"
    # The last kill's restart is checked by one more (unkilled) start.
    proc = subprocess.run(
        [sys.executable, str(TRAINER), "--framework", framework, "--dir", str(ckpt_dir),
         "--log", str(log), "--epochs", "0", "--size", str(size)]
        + (["--async"] if async_ else []) + (["--checksum"] if checksum else [])
        + (["--dedup"] if dedup else []),
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        outcome.bad.append(f"final restart failed: {proc.stderr[-2000:]}")
    else:
        problem = check_restart(log.read_text().splitlines(), async_)
        if problem is None:
            outcome.restarts_ok += 1
        else:
            outcome.bad.append(f"final restart: {problem}")
    return outcome


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--framework", choices=["files", "torch", "keras"], default="torch")
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--async", dest="async_", action="store_true")
    ap.add_argument("--checksum", action="store_true")
    ap.add_argument("--dedup", action="store_true", help="ckpt_dedup (shared objects)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="candle-ckpt-kill-"))
    try:
        outcome = run(args.framework, args.kills, args.seed, workdir, async_=args.async_,
                      checksum=args.checksum, dedup=args.dedup)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    for problem in outcome.bad:
        print("BAD:", problem)
    print(outcome.line())
    return 0 if not outcome.bad else 1


if __name__ == "__main__":
    sys.exit(main())
