"""A crash at every named step of the commit protocol is harmless.

A subprocess saves a checkpoint with ``candle_ckpt.storage.fsio._on_step`` set to ``os._exit``
at the n-th occurrence of a step; a fresh engine must then restart from the newest
committed checkpoint (the one ``last`` points to) with exactly its bytes, and every
checkpoint committed before the crash must still be there and valid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from candle_ckpt.storage.integrity import verify_checkpoint
from candle_ckpt.storage.layout import Layout
from tests.helpers.fs import blobs, ckpts, engine, train
from tests.helpers.process import child_env

CRASH_CODE = 77

CHILD = textwrap.dedent("""
    import json, os, sys
    import candle_ckpt.storage.fsio
    from candle_ckpt.testing import CandleCkptFiles
    from tests.helpers.fs import blobs

    config = json.loads(sys.argv[2])
    params = {"epochs": 20, "ckpt_directory": sys.argv[1], "ckpt_checksum": True}
    params.update(config["params"])
    e = CandleCkptFiles(params, logger=None)
    if config["restart"]:
        e.restart()

    def save(epoch, run, metric):
        e.set_model(blobs(epoch, run))
        assert e.ckpt_epoch(epoch - 1, "-", metric), epoch

    for args in config["pre"]:
        save(*args)
    seen = []

    def on_step(name):
        seen.append(name)
        if name == config["step"] and seen.count(name) == config["occurrence"]:
            os._exit(config["exit_code"])

    candle_ckpt.storage.fsio._on_step = on_step
    save(*config["save"])
    e.close()  # the keep policy's files are removed on a thread: wait for it
    print(json.dumps(seen))
""")


@dataclass
class Scenario:
    """A save to crash, with what must hold after the crash."""

    setup: list[tuple[int, str, float]]
    save: tuple[int, str, float]
    steps: list[str]
    before: tuple[int, str] | None  # what last points to before the save
    params: dict = field(default_factory=dict)
    restart: bool = True
    pre: list[tuple[int, str, float]] = field(default_factory=list)
    relink_last: int | None = None
    repointed: tuple[int, str] | None = None  # last after being moved off a re-done epoch
    redone: int | None = None
    deleted: int | None = None  # removed by the keep policy once the save is committed

    @property
    def after(self) -> tuple[int, str]:
        return self.save[0], self.save[1]


WRITE = ["work-created", "file-written", "file-written", "info-written"]

SCENARIOS = {
    "first-save": Scenario(
        setup=[], save=(1, "b", 0.3), before=None,
        steps=WRITE + ["renamed", "epochs-synced", "best-linked", "last-linked"],
    ),
    "normal-save": Scenario(
        setup=[(1, "a", 0.5), (2, "a", 0.4)], save=(3, "b", 0.3), before=(2, "a"),
        steps=WRITE + ["renamed", "epochs-synced", "best-linked", "last-linked"],
    ),
    "redo-after-rollback": Scenario(
        setup=[(1, "a", 0.5), (2, "a", 0.4), (3, "a", 0.3)], relink_last=1,
        save=(2, "b", 0.45), before=(1, "a"), redone=2,
        steps=WRITE + ["aside-moved", "renamed", "epochs-synced", "aside-deleted",
                       "best-linked", "last-linked"],
    ),
    "redo-the-last-epoch": Scenario(
        setup=[(1, "a", 0.5), (2, "a", 0.4), (3, "a", 0.3)], params={"ckpt_restart_mode": "off"},
        restart=False, save=(3, "b", 0.9), before=(3, "a"), repointed=(2, "a"), redone=3,
        steps=WRITE + ["last-linked", "aside-moved", "renamed", "epochs-synced",
                       "aside-deleted", "best-linked", "last-linked"],
    ),
    "keep-policy-deletion": Scenario(
        setup=[(1, "a", 0.1), (2, "a", 0.5)], params={"ckpt_keep_limit": 1},
        pre=[(3, "b", 0.6)], save=(4, "b", 0.7), before=(3, "b"), deleted=3,
        steps=WRITE + ["renamed", "epochs-synced", "last-linked", "epoch-unlisted",
                       "epoch-deleted"],
    ),
}

ALL_STEPS = ["work-created", "file-written", "info-written", "aside-moved", "renamed",
             "epochs-synced", "aside-deleted", "best-linked", "last-linked", "epoch-unlisted",
             "epoch-deleted"]

CASES = [pytest.param(name, step, id=f"{name}-{step}")
         for name, sc in SCENARIOS.items() for step in ALL_STEPS if step in sc.steps]


def test_every_named_step_is_crashed_in_some_scenario():
    assert {step for _, step in (c.values for c in CASES)} == set(ALL_STEPS)


def prepare(directory: Path, sc: Scenario) -> dict[int, str]:
    """Write the scenario's earlier checkpoints; returns the committed ones (epoch -> run)."""
    committed: dict[int, str] = {}
    if sc.setup:
        with engine(directory, ckpt_checksum=True, **sc.params) as e:
            for epoch, run, metric in sc.setup:
                train(e, [epoch], run=run, metrics={epoch: metric})
                committed[epoch] = run
    if sc.relink_last is not None:
        last = ckpts(directory) / "last"
        last.unlink()
        os.symlink(f"epochs/{sc.relink_last:03d}", last)
    for epoch, run, _ in sc.pre:
        committed[epoch] = run
    return committed


def run_child(directory: Path, sc: Scenario, step: str | None, occurrence: int = 1):
    config = {"params": sc.params, "restart": sc.restart, "pre": sc.pre, "save": sc.save,
              "step": step, "occurrence": occurrence, "exit_code": CRASH_CODE}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), json.dumps(config)],
        capture_output=True, text=True, timeout=120, check=False, env=child_env(),
    )


def expected_resume(sc: Scenario, crash_index: int) -> tuple[int, str] | None:
    commit_index = len(sc.steps) - 1 - sc.steps[::-1].index("last-linked")
    if crash_index >= commit_index:
        return sc.after
    if sc.repointed is not None and crash_index >= sc.steps.index("last-linked"):
        return sc.repointed
    return sc.before


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_protocol_runs_its_steps_in_order(tmp_path, name):
    sc = SCENARIOS[name]
    prepare(tmp_path, sc)
    result = run_child(tmp_path, sc, None)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == sc.steps


@pytest.mark.parametrize("name,step", CASES)
def test_crash_at_step_resumes_from_the_newest_committed_checkpoint(tmp_path, name, step):
    sc = SCENARIOS[name]
    indices = [i for i, s in enumerate(sc.steps) if s == step]
    for occurrence, crash_index in enumerate(indices, start=1):
        directory = tmp_path / f"occurrence-{occurrence}"
        committed = prepare(directory, sc)
        result = run_child(directory, sc, step, occurrence)
        assert result.returncode == CRASH_CODE, (result.stdout, result.stderr)
        check_recovery(directory, sc, committed, crash_index)


def check_recovery(directory: Path, sc: Scenario, committed: dict[int, str],
                   crash_index: int) -> None:
    expected = expected_resume(sc, crash_index)
    committed_now = crash_index >= len(sc.steps) - 1 - sc.steps[::-1].index("last-linked")
    with engine(directory, ckpt_checksum=True) as e:
        J = e.restart()
        if expected is None:
            assert J is None
        else:
            assert J is not None
            assert (J["epoch"], J["skipped"]) == (expected[0], [])
            assert e.state == blobs(*expected)
        layout = Layout.ours(directory)
        assert not os.path.lexists(layout.work)
        assert layout.leftovers() == []
        assert not [p for p in layout.base.iterdir() if ".tmp-" in p.name]
        for epoch, run in committed.items():
            if epoch == sc.deleted and committed_now:
                continue
            assert layout.is_complete(epoch), f"committed epoch {epoch} lost"
            runs = {run, sc.save[1]} if epoch == sc.redone else {run}
            state = {n: (layout.epoch_dir(epoch) / n).read_bytes() for n in ("model.bin",
                                                                          "extra.bin")}
            assert any(state == blobs(epoch, r) for r in runs), f"epoch {epoch} changed"
        for epoch in layout.list_epochs():
            d = layout.epoch_dir(epoch)
            assert verify_checkpoint(d, layout.read_info(epoch), True) == [], d
        # The directory is usable: the next save commits and becomes last.
        nxt = sc.save[0] + 1
        train(e, [nxt], run="c")
    with engine(directory, ckpt_checksum=True) as e:
        J = e.restart()
        assert J is not None and J["epoch"] == nxt and e.state == blobs(nxt, "c")


def test_a_leftover_temporary_link_is_removed_and_last_still_holds(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2])
    base = ckpts(tmp_path)
    os.symlink("epochs/001", base / ".last.tmp-99999")  # crash between symlink and replace
    with engine(tmp_path) as e:
        assert not os.path.lexists(base / ".last.tmp-99999")
        J = e.restart()
    assert J is not None and J["epoch"] == 2
