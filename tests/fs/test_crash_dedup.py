"""A crash at every named step of a ``ckpt_dedup`` save, and of the removal of the
objects no checkpoint references any more, is harmless.

As in ``test_crash.py``: a subprocess saves with ``candle_ckpt.storage.fsio._on_step``
set to ``os._exit`` at the n-th occurrence of a step; then a fresh engine must restart
from the newest committed checkpoint with exactly its bytes, every checkpoint committed
before must still verify (its objects included, checksums on), and the next save must
leave the object store holding exactly what the checkpoints reference (a crash leaves
only unreferenced garbage, which the next save removes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from candle_ckpt.storage.integrity import verify_checkpoint
from candle_ckpt.storage.layout import Layout
from candle_ckpt.storage.objects import referenced, sizes
from candle_ckpt.testing import CandleCkptFiles
from tests.helpers.fs import make_params
from tests.helpers.process import child_env

CRASH_CODE = 77

CHILD = textwrap.dedent("""
    import json, os, sys
    import candle_ckpt.storage.fsio
    from candle_ckpt.testing import CandleCkptFiles

    def state(epoch, run):
        frozen = (f"frozen:{run}:".encode() * 400)[:4000]
        return {"model.bin": frozen, "extra.bin": f"{run}:{epoch}:".encode() * 50}

    config = json.loads(sys.argv[2])
    params = {"epochs": 20, "ckpt_directory": sys.argv[1], "ckpt_checksum": True,
              "ckpt_dedup": True}
    params.update(config["params"])
    e = CandleCkptFiles(params, logger=None)
    e.restart()

    def save(epoch, run, metric):
        e.set_model(state(epoch, run))
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
    e.close()  # the removals run on the remover's thread: wait for them
    print(json.dumps(seen))
""")


def state(epoch: int, run: str) -> dict[str, bytes]:
    """What the child saves: model.bin frozen within a run, extra.bin new every epoch."""
    frozen = (f"frozen:{run}:".encode() * 400)[:4000]
    return {"model.bin": frozen, "extra.bin": f"{run}:{epoch}:".encode() * 50}


@dataclass
class Scenario:
    setup: list[tuple[int, str, float]]
    save: tuple[int, str, float]
    steps: list[str]
    before: tuple[int, str] | None
    params: dict = field(default_factory=dict)
    pre: list[tuple[int, str, float]] = field(default_factory=list)
    deleted: int | None = None


COMMIT = ["renamed", "epochs-synced", "best-linked", "last-linked"]

SCENARIOS = {
    # Both objects are new: written, fsynced, renamed, then blobs.json and the info.
    "first-save": Scenario(
        setup=[], save=(1, "b", 0.3), before=None,
        steps=["work-created", "object-written", "object-written", "objects-synced",
               "file-written", "info-written", *COMMIT],
    ),
    # The frozen object is there already: only the changed one is written.
    "frozen-part-shared": Scenario(
        setup=[(1, "a", 0.5), (2, "a", 0.4)], save=(3, "a", 0.3), before=(2, "a"),
        steps=["work-created", "object-written", "objects-synced", "file-written",
               "info-written", *COMMIT],
    ),
    # Epoch 3 is deleted by the keep policy: its own object goes, the shared one stays.
    "keep-policy-deletion": Scenario(
        setup=[(1, "a", 0.1), (2, "a", 0.5)], params={"ckpt_keep_limit": 1},
        pre=[(3, "b", 0.6)], save=(4, "b", 0.7), before=(3, "b"), deleted=3,
        steps=["work-created", "object-written", "objects-synced", "file-written",
               "info-written", "renamed", "epochs-synced", "last-linked", "epoch-unlisted",
               "epoch-deleted", "object-deleted"],
    ),
}

NEW_STEPS = ["object-written", "objects-synced", "object-deleted"]
CASES = [pytest.param(name, step, id=f"{name}-{step}")
         for name, sc in SCENARIOS.items() for step in dict.fromkeys(sc.steps)]


def engine(directory: Path, **extra: object) -> CandleCkptFiles:
    return CandleCkptFiles(make_params(directory, ckpt_checksum=True, ckpt_dedup=True,
                                       **extra), logger=None)


def save(e: CandleCkptFiles, epoch: int, run: str, metric: float) -> None:
    e.set_model(state(epoch, run))
    assert e.ckpt_epoch(epoch - 1, "-", metric)


def prepare(directory: Path, sc: Scenario) -> dict[int, str]:
    committed: dict[int, str] = {}
    if sc.setup:
        with engine(directory, **sc.params) as e:
            for epoch, run, metric in sc.setup:
                save(e, epoch, run, metric)
                committed[epoch] = run
    for epoch, run, _ in sc.pre:
        committed[epoch] = run
    return committed


def run_child(directory: Path, sc: Scenario, step: str | None, occurrence: int = 1):
    config = {"params": sc.params, "pre": sc.pre, "save": sc.save, "step": step,
              "occurrence": occurrence, "exit_code": CRASH_CODE}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), json.dumps(config)],
        capture_output=True, text=True, timeout=120, check=False, env=child_env(),
    )


def store_matches_references(layout: Layout) -> None:
    """The object store holds exactly the objects the checkpoints reference."""
    names = referenced(layout)
    assert isinstance(names, set)
    assert set(sizes(layout)) == names
    leftovers = [p.name for shard in (layout.base / "objects").iterdir()
                 for p in shard.iterdir() if p.name not in names]
    assert leftovers == []


def test_every_new_step_is_crashed_in_some_scenario():
    assert set(NEW_STEPS) <= {step for _, step in (c.values for c in CASES)}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_dedup_save_runs_its_steps_in_order(tmp_path, name):
    sc = SCENARIOS[name]
    prepare(tmp_path, sc)
    result = run_child(tmp_path, sc, None)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == sc.steps
    store_matches_references(Layout.ours(tmp_path))


@pytest.mark.parametrize("name,step", CASES)
def test_crash_at_a_dedup_step_loses_nothing_committed(tmp_path, name, step):
    sc = SCENARIOS[name]
    indices = [i for i, s in enumerate(sc.steps) if s == step]
    commit_index = len(sc.steps) - 1 - sc.steps[::-1].index("last-linked")
    for occurrence, crash_index in enumerate(indices, start=1):
        directory = tmp_path / f"occurrence-{occurrence}"
        committed = prepare(directory, sc)
        result = run_child(directory, sc, step, occurrence)
        assert result.returncode == CRASH_CODE, (result.stdout, result.stderr)
        expected = sc.save[:2] if crash_index >= commit_index else sc.before
        with engine(directory) as e:
            J = e.restart()
            if expected is None:
                assert J is None
            else:
                assert J is not None and (J["epoch"], J["skipped"]) == (expected[0], [])
                assert e.state == state(*expected)
            layout = Layout.ours(directory)
            for epoch, run in committed.items():
                if epoch == sc.deleted and crash_index >= commit_index:
                    continue
                assert layout.is_complete(epoch), f"committed epoch {epoch} lost"
                loaded = e.backend.load(layout.epoch_dir(epoch), layout.read_info(epoch))
                loaded.apply()
                assert e.state == state(epoch, run), f"epoch {epoch} changed"
            for epoch in layout.list_epochs():
                directory_ = layout.epoch_dir(epoch)
                assert verify_checkpoint(directory_, layout.read_info(epoch), True) == []
            nxt = sc.save[0] + 1
            save(e, nxt, "c", 0.01)
        layout = Layout.ours(directory)
        store_matches_references(layout)  # the crash's garbage is gone after a save
        with engine(directory) as e:
            J = e.restart()
            assert J is not None and J["epoch"] == nxt and e.state == state(nxt, "c")
