"""Property-based fuzzing of damaged ``ckpt_dedup`` object stores.

A template run of CandleCkptFiles with ``ckpt_dedup`` (4 epochs; ``model.bin`` shared
by epochs 1-2 and by epochs 3-4, ``extra.bin`` new every epoch) is copied for each
example; the copy's object store is damaged (objects missing, truncated, a byte
flipped, swapped for a link to a good copy, renamed to another object's name, extra
files, a shard directory swapped for a link) and:

- restart loads a checkpoint whose every blob is exactly what its epoch saved, and
  never one that references a damaged object (checksums on: every kind of damage;
  off: what sizes and file types reveal), or finds none;
- ``candle-ckpt verify`` reports every checkpoint that references a damaged object,
  exits 1 then (0 when nothing it references is damaged), never with a traceback;
- the next save leaves the store holding exactly what the checkpoints reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.fs import make_params
from tests.helpers.process import child_env

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from candle_ckpt import CheckpointNotFoundError  # noqa: E402
from candle_ckpt.storage.layout import Layout  # noqa: E402
from candle_ckpt.storage.objects import referenced, sizes  # noqa: E402
from candle_ckpt.testing import CandleCkptFiles  # noqa: E402

EPOCHS = (1, 2, 3, 4)
_SCALE = float(os.environ.get("CANDLE_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * _SCALE)), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def saved(epoch: int) -> dict[str, bytes]:
    """model.bin changes at epoch 3 (shared by 1-2 and 3-4); extra.bin every epoch."""
    frozen = bytes([1 + (epoch > 2)]) * 3001
    return {"model.bin": frozen, "extra.bin": bytes([16 * epoch]) * (500 + epoch)}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    out = {}
    for checksum in (True, False):
        root = tmp_path_factory.mktemp(f"objects-{checksum}") / "run"
        e = CandleCkptFiles(make_params(root, ckpt_checksum=checksum, ckpt_dedup=True,
                                        ckpt_save_best=False), logger=None)
        try:
            for epoch in EPOCHS:
                e.set_model(saved(epoch))
                assert e.ckpt_epoch(epoch - 1, "-", 1.0)
        finally:
            e.close()
        out[checksum] = root
    return out


def refs_of(root: Path) -> dict[int, set[str]]:
    out = {}
    for epoch in EPOCHS:
        info = json.loads((root / "ckpts" / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                          .read_text())
        out[epoch] = set(info["objects"])
    return out


def object_path(root: Path, name: str) -> Path:
    return root / "ckpts" / "objects" / name[:2] / name


# ------------------------------------------------------------------ damage
KINDS = ["missing", "truncated", "flipped", "link", "renamed", "extra", "shard-link",
         "emptied"]
SIZE_VISIBLE = {"missing", "truncated", "link", "extra", "shard-link", "emptied"}


def apply(root: Path, op: tuple[str, int, int], outside: Path) -> None:
    """Damage the store (what was damaged is found by comparing with the template)."""
    kind, pick, where = op
    names = sorted(set().union(*refs_of(root).values()))
    name = names[pick % len(names)]
    path = object_path(root, name)
    if os.path.islink(path.parent) or os.path.islink(path) or not path.is_file() \
            or path.stat().st_size == 0:
        return  # already damaged by an earlier step
    if kind == "missing":
        path.unlink()
    elif kind == "truncated":
        size = path.stat().st_size
        os.truncate(path, where % size)
    elif kind == "emptied":
        os.truncate(path, 0)
    elif kind == "flipped":
        data = bytearray(path.read_bytes())
        data[where % len(data)] ^= 1 << (where % 8)
        path.chmod(0o644)
        path.write_bytes(bytes(data))
    elif kind == "link":
        copy = outside / f"good-{name}"
        shutil.copyfile(path, copy)
        path.unlink()
        os.symlink(copy, path)
    elif kind == "renamed":  # another object's content under this name
        other = names[(pick + 1 + where) % len(names)]
        if other == name:
            return
        data = object_path(root, other).read_bytes()
        path.write_bytes(data)
    elif kind == "extra":
        shard = path.parent.parent / f"{where % 256:02x}"
        shard.mkdir(exist_ok=True)
        (shard / f"{where:032x}"[-32:]).write_bytes(b"junk")
        (shard / ".tmp-something").write_bytes(b"junk")
        return
    elif kind == "shard-link":
        copy = outside / f"shard-{name[:2]}"
        if copy.exists():
            return
        shutil.copytree(path.parent, copy)
        shutil.rmtree(path.parent)
        os.symlink(copy, path.parent)


def damaged_epochs(root: Path, template: Path) -> set[int]:
    """The epochs that reference an object no longer exactly as written (the truth,
    whatever sequence of operations led there)."""
    def intact(name: str) -> bool:
        path = object_path(root, name)
        if os.path.islink(path.parent) or os.path.islink(path) or not path.is_file():
            return False
        return path.read_bytes() == object_path(template, name).read_bytes()

    return {e for e, names in refs_of(template).items() if not all(map(intact, names))}


ops_st = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 50),
                            st.integers(0, 10 ** 6)), min_size=1, max_size=3)


def fresh(template: Path) -> tuple[Path, Path]:
    top = Path(tempfile.mkdtemp(prefix="objfuzz-"))
    root = top / "run"
    shutil.copytree(template, root, symlinks=True)
    outside = top / "outside"
    outside.mkdir()
    return root, outside


def run_restart(root: Path, checksum: bool, damaged: set[int]) -> None:
    e = CandleCkptFiles(make_params(root, ckpt_checksum=checksum, ckpt_dedup=True,
                                    ckpt_restart_mode="required"), logger=None)
    try:
        try:
            J = e.restart()
        except CheckpointNotFoundError:
            assert damaged == set(EPOCHS)
            return
        epoch = J["epoch"]
        assert epoch not in damaged, f"epoch {epoch} references a damaged object"
        assert epoch == max(set(EPOCHS) - damaged)
        assert e.state == saved(epoch)
        # The next save heals what it rewrites and leaves no garbage.
        e.set_model(saved(9))
        assert e.ckpt_epoch(8, "-", 1.0)
    finally:
        e.close()
    layout = Layout.ours(root)
    names = referenced(layout)
    assert isinstance(names, set) and set(sizes(layout)) <= names


@fuzz(120)
@given(ops=ops_st)
def test_restart_with_checksums_never_loads_a_damaged_object(templates, ops):
    root, outside = fresh(templates[True])
    try:
        for op in ops:
            apply(root, op, outside)
        run_restart(root, True, damaged_epochs(root, templates[True]))
    finally:
        shutil.rmtree(root.parent)


@fuzz(80)
@given(ops=st.lists(st.tuples(st.sampled_from(sorted(SIZE_VISIBLE)), st.integers(0, 50),
                              st.integers(0, 10 ** 6)), min_size=1, max_size=3))
def test_restart_without_checksums_never_loads_what_sizes_and_types_reveal(templates, ops):
    root, outside = fresh(templates[False])
    try:
        for op in ops:
            apply(root, op, outside)
        run_restart(root, False, damaged_epochs(root, templates[False]))
    finally:
        shutil.rmtree(root.parent)


@fuzz(40)
@given(ops=ops_st)
def test_verify_names_every_checkpoint_that_references_damage(templates, ops):
    root, outside = fresh(templates[True])
    try:
        for op in ops:
            apply(root, op, outside)
        damaged = damaged_epochs(root, templates[True])
        proc = subprocess.run([sys.executable, "-m", "candle_ckpt", "verify", str(root)],
                              capture_output=True, text=True, timeout=60, env=child_env(),
                              check=False)
        assert "Traceback" not in proc.stderr
        assert proc.returncode == (1 if damaged else 0), (proc.stdout, proc.stderr)
        for epoch in EPOCHS:
            line = next(x for x in proc.stdout.splitlines() if f"epoch {epoch} " in x)
            assert line.startswith("OK") == (epoch not in damaged), (line, ops)
    finally:
        shutil.rmtree(root.parent)
