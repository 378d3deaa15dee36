"""Property-based fuzzing of real checkpoint trees: restart and the command line.

A template run (4 epochs, best = 2, last = 4; checksums on and off) is written once by
CandleCkptFiles; each example copies it, damages the copy (random bytes, truncation,
JSON mutations with type swaps of every field, link swaps of last/best/epoch
directories, permission changes, file -> directory/FIFO/symlink swaps) and asserts:

- restart returns a checkpoint whose loaded files are exactly what was saved for its
  epoch (never a damaged one), or None ("auto") / CheckpointNotFoundError
  ("required"); CheckpointCorruptError only where ``last`` itself was damaged (the
  documented "refusing to guess"), UnsafeFileError only for a planted ``ckpt.lock``;
  nothing else ever escapes, nothing hangs, and no file outside the tree is touched;
- every CLI command (list, show, verify, prune --dry-run, rollback) exits 0, 1 or 2,
  with at most one error line on stderr and never a traceback.

Derandomized (the same examples every run): 600 examples in about 40 s here;
``CANDLE_FUZZ_SCALE=10`` runs ten times as many (a deeper local hunt).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fs import make_params

hypothesis = pytest.importorskip("hypothesis")  # a dev dependency: always there in CI
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from candle_ckpt import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointNotFoundError,
)
from candle_ckpt.errors import UnsafeFileError  # noqa: E402
from candle_ckpt.testing import CandleCkptFiles  # noqa: E402

EPOCHS = (1, 2, 3, 4)
METRICS = {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.4}  # best = 2, last = 4
FILES = ("model.bin", "extra.bin")
INFO = "ckpt-info.json"


def saved(epoch: int) -> dict[str, bytes]:
    """What epoch ``epoch`` saved: distinct, recognisable bytes per (epoch, file)."""
    return {name: bytes([epoch * 16 + i]) * (700 + 97 * epoch + 13 * i) + name.encode()
            for i, name in enumerate(FILES)}


# Examples per property; CANDLE_FUZZ_SCALE=4 digs deeper locally (about 4x the time).
_SCALE = float(os.environ.get("CANDLE_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(examples * _SCALE)))


FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # reproducible in CI: the same examples on every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    out = {}
    for checksum in (True, False):
        root = tmp_path_factory.mktemp(f"template-{checksum}") / "run"
        e = CandleCkptFiles(make_params(root, ckpt_checksum=checksum), logger=None)
        try:
            for epoch in EPOCHS:
                e.set_model(saved(epoch))
                assert e.ckpt_epoch(epoch - 1, "-", METRICS[epoch])
        finally:
            e.close()
        assert os.readlink(root / "ckpts" / "last") == "epochs/004"
        assert os.readlink(root / "ckpts" / "best") == "epochs/002"
        out[checksum] = root
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked: a FIFO or lock was waited on")

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ damage

_DEEP = "__DEEP__"
_HUGE = "__HUGE_INT__"

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
        st.sampled_from([0, -1, 1, 3, 4, 10 ** 400, 1.5, 3.0, -0.0, float("inf"),
                         float("nan"), "", "3", "model.bin", "/etc/passwd",
                         "../003/model.bin", "a/b", "a\\b", "x\x00y", "\ud800", "\n",
                         "xxh3_64", "crc32", "__DISABLED__", _DEEP, _HUGE]),
        st.text(max_size=8),
    ),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)

FIELDS = ["epoch", "format_version", "files", "model_file", "rng_file", "checksum",
          "checksum_algorithm", "best_metric_last", "epoch_best", "metric_value",
          "best_mode", "save_best_metric", "timestamp", "time_elapsed", "metadata",
          "backend"]

member = st.sampled_from(FILES + (INFO,))
epoch_st = st.sampled_from(EPOCHS)

# Each op is plain data, so hypothesis can shrink it and print it on a failure.
content_ops = st.one_of(
    st.tuples(st.just("flip"), epoch_st, member, st.integers(0, 5000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), epoch_st, member, st.integers(0, 2000)),
    st.tuples(st.just("append"), epoch_st, member, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("random"), epoch_st, member, st.binary(max_size=64)),
)
sizeless_content_ops = st.one_of(  # what sizes alone detect (checksums off)
    st.tuples(st.just("truncate"), epoch_st, st.sampled_from(FILES), st.integers(0, 600)),
    st.tuples(st.just("append"), epoch_st, st.sampled_from(FILES),
              st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("flip"), epoch_st, st.just(INFO), st.integers(0, 5000),
              st.integers(1, 255)),
    st.tuples(st.just("truncate"), epoch_st, st.just(INFO), st.integers(0, 2000)),
)
structure_ops = st.one_of(
    st.tuples(st.just("delete"), epoch_st, member),
    st.tuples(st.just("to_dir"), epoch_st, member),
    st.tuples(st.just("to_fifo"), epoch_st, member),
    st.tuples(st.just("to_link"), epoch_st, member,
              st.sampled_from(["other-epoch", "outside", "dangling", "dev-zero"])),
    st.tuples(st.just("chmod"), epoch_st, st.sampled_from(FILES + (INFO, "")),
              st.sampled_from([0, 0o200, 0o111])),
    st.tuples(st.just("epoch_to_link"), epoch_st, epoch_st),
    st.tuples(st.just("epoch_swap"), epoch_st, epoch_st),
    st.tuples(st.just("epoch_delete"), epoch_st),
    st.tuples(st.just("epoch_rename"), epoch_st,
              st.sampled_from(["0004", "4", "004\n", "\udcff\udcfe", ".aside-004",
                               ".deleting-004", "005"])),
)
json_ops = st.one_of(
    st.tuples(st.just("json_set"), epoch_st, st.sampled_from(FIELDS), json_values),
    st.tuples(st.just("json_del"), epoch_st, st.sampled_from(FIELDS)),
    st.tuples(st.just("json_entry"), epoch_st, st.sampled_from(FILES),
              st.sampled_from(["size", "checksum", None]), json_values),
    st.tuples(st.just("json_rename_entry"), epoch_st, st.sampled_from(FILES),
              st.sampled_from(["/etc/passwd", "../002/model.bin", "a/b", "x\x00",
                               "\ud800", INFO, "other.bin"])),
    st.tuples(st.just("json_raw"), epoch_st,
              st.sampled_from([_DEEP, "[1, 2]", "null", '"text"', "{", "\xff",
                               '{"epoch": 4}', "{} {}"])),
)
lock_ops = st.tuples(st.just("lock"), st.sampled_from(
    ["symlink-victim", "dangling", "fifo", "dir", "hardlink-victim"]))
pointer_ops = st.one_of(
    st.tuples(st.just("point"), st.sampled_from(["last", "best"]),
              st.sampled_from(["epochs/001", "epochs/003", "epochs/009", "epochs/../epochs/002",
                               "../ckpts/epochs/002", "/etc", "/nonexistent/epochs/003",
                               "epochs", ".", "epochs/0002", "work", "epochs/004/model.bin"])),
    st.tuples(st.just("pointer_kind"), st.sampled_from(["last", "best"]),
              st.sampled_from(["missing", "dir", "fifo", "text-ok", "text-garbage",
                               "text-huge", "text-escape", "dangling-abs"])),
)


def _path(root: Path, epoch: int, name: str = "") -> Path:
    d = root / "ckpts" / "epochs" / f"{epoch:03d}"
    return d / name if name else d


def _remove(path: Path) -> None:
    if not os.path.lexists(path):
        return
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _rewrite_json(path: Path, change: Any) -> None:
    if not (os.path.lexists(path) and stat.S_ISREG(os.lstat(path).st_mode)):
        return
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return  # already damaged beyond JSON: nothing to mutate
    if not isinstance(info, dict):
        return
    change(info)
    text = json.dumps(info)
    text = text.replace(json.dumps(_DEEP), "[" * 50_000 + "]" * 50_000)
    text = text.replace(json.dumps(_HUGE), "9" * 5000)
    path.write_bytes(text.encode("utf-8", "surrogatepass"))


def apply(root: Path, op: tuple[Any, ...], outside: Path) -> bool:
    """Apply one damage; False when it did nothing (its target was already gone)."""
    before = _snapshot(root)
    _apply(root, op, outside)
    return _snapshot(root) != before


def _snapshot(root: Path) -> list[tuple[str, int, int, int, int]]:
    """Every entry of the tree: type and mode, size, inode, content CRC (regular files)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            crc = 0
            if stat.S_ISREG(st_.st_mode):
                try:
                    with open(path, "rb") as f:
                        crc = zlib.crc32(f.read())
                except OSError:  # chmod 000 by an earlier op (when not root)
                    crc = -1
            out.append((path, st_.st_mode, st_.st_size, st_.st_ino, crc))
    return sorted(out)


def _apply(root: Path, op: tuple[Any, ...], outside: Path) -> None:
    kind = op[0]
    base = root / "ckpts"
    try:
        if kind in ("flip", "truncate", "append", "random", "delete", "to_dir", "to_fifo",
                    "to_link", "chmod"):
            path = _path(root, op[1], op[2]) if op[2] else _path(root, op[1])
            if not os.path.lexists(path):
                return
            regular = stat.S_ISREG(os.lstat(path).st_mode)
            # Reading a FIFO an earlier op made would block the fuzzer itself.
            if kind in ("flip", "truncate", "append", "random", "to_link") and not regular:
                return
            if kind == "flip":
                data = bytearray(path.read_bytes())
                if data:
                    data[op[3] % len(data)] ^= op[4]
                    path.write_bytes(bytes(data))
            elif kind == "truncate":
                size = path.stat().st_size
                if size:
                    os.truncate(path, op[3] % size)
            elif kind == "append":
                with open(path, "ab") as f:
                    f.write(op[3])
            elif kind == "random":
                path.write_bytes(op[3])
            elif kind == "delete":
                _remove(path)
            elif kind == "to_dir":
                _remove(path)
                path.mkdir()
                (path / "inner").write_bytes(b"x")
            elif kind == "to_fifo":
                _remove(path)
                os.mkfifo(path)
            elif kind == "to_link":
                data = path.read_bytes()
                _remove(path)
                target = {"other-epoch": _path(root, 1 if op[1] != 1 else 2, op[2]),
                          "outside": outside, "dangling": root / "nowhere",
                          "dev-zero": Path("/dev/zero")}[op[3]]
                if op[3] == "outside":
                    outside.write_bytes(data)  # same bytes, same size: only lstat tells
                os.symlink(target, path)
            elif kind == "chmod":
                os.chmod(path, op[3])
        elif kind == "epoch_to_link":
            src, dst = _path(root, op[1]), _path(root, op[2])
            if src != dst and os.path.lexists(src) and os.path.lexists(dst):
                _remove(dst)
                os.symlink(src.name, dst)
        elif kind == "epoch_swap":
            a, b = _path(root, op[1]), _path(root, op[2])
            if a != b and os.path.lexists(a) and os.path.lexists(b):
                tmp = a.with_name("swap-tmp")
                os.rename(a, tmp)
                os.rename(b, a)
                os.rename(tmp, b)
        elif kind == "epoch_delete":
            _remove(_path(root, op[1]))
        elif kind == "epoch_rename":
            src = _path(root, op[1])
            dst = os.fsencode(src.parent) + b"/" + os.fsencode(op[2])
            if os.path.lexists(src) and not os.path.lexists(dst):
                os.rename(src, dst)
        elif kind == "json_set":
            _rewrite_json(_path(root, op[1], INFO), lambda i: i.__setitem__(op[2], op[3]))
        elif kind == "json_del":
            _rewrite_json(_path(root, op[1], INFO), lambda i: i.pop(op[2], None))
        elif kind == "json_entry":
            def entry(info: dict[str, Any]) -> None:
                files = info.get("files")
                if isinstance(files, dict) and isinstance(files.get(op[2]), dict):
                    if op[3] is None:
                        files[op[2]] = op[4]
                    else:
                        files[op[2]][op[3]] = op[4]
            _rewrite_json(_path(root, op[1], INFO), entry)
        elif kind == "json_rename_entry":
            def rename(info: dict[str, Any]) -> None:
                files = info.get("files")
                if isinstance(files, dict) and op[2] in files:
                    files[op[3]] = files.pop(op[2])
            _rewrite_json(_path(root, op[1], INFO), rename)
        elif kind == "json_raw":
            path = _path(root, op[1], INFO)
            if os.path.lexists(path) and not os.path.isdir(path):
                _remove(path)
                raw = "[" * 50_000 + "]" * 50_000 if op[2] == _DEEP else op[2]
                path.write_bytes(raw.encode("utf-8", "surrogateescape")
                                 if raw != "\xff" else b"\xff")
        elif kind == "lock":
            path = root / "ckpt.lock"
            victim = outside.with_name("victim.txt")
            _remove(path)
            if op[1] == "symlink-victim":
                os.symlink(victim, path)
            elif op[1] == "dangling":
                os.symlink(outside.with_name("created-by-lock"), path)
            elif op[1] == "fifo":
                os.mkfifo(path)
            elif op[1] == "dir":
                path.mkdir()
            else:
                os.link(victim, path)
        elif kind == "point":
            path = base / op[1]
            _remove(path)
            os.symlink(op[2], path)
        elif kind == "pointer_kind":
            path = base / op[1]
            _remove(path)
            what = op[2]
            if what == "dir":
                path.mkdir()
            elif what == "fifo":
                os.mkfifo(path)
            elif what == "text-ok":
                path.write_text("epochs/003\n")
            elif what == "text-garbage":
                path.write_bytes(b"\xff\xfe\x00garbage")
            elif what == "text-huge":
                with open(path, "wb") as f:
                    f.truncate(10 << 20)
            elif what == "text-escape":
                path.write_text("../../../etc\n")
            elif what == "dangling-abs":
                os.symlink("/old/place/ckpts/epochs/003", path)
        else:  # pragma: no cover - a typo in the strategies
            raise AssertionError(f"unknown op {op!r}")
    except FileNotFoundError:
        pass  # an earlier op removed the target: this one has nothing to damage


# Content damage is caught by comparing the loaded bytes; these swaps may keep the bytes.
_TAINTING = {"delete", "to_dir", "to_fifo", "to_link"}


def tainted(ops: list[tuple[Any, ...]]) -> set[int]:
    """Epochs that must not be loaded, given the ops that took effect: a file of theirs
    was swapped for a link/FIFO/directory or deleted, or their directory was swapped,
    linked or moved away.

    Bytes alone cannot tell a link to an identical copy outside from the real file, so
    this is what proves that links are refused rather than followed.
    """
    out: set[int] = set()
    holds = {e: e for e in EPOCHS}  # directory name -> whose checkpoint it holds now
    for op in ops:
        if op[0] in _TAINTING and op[2] in FILES:
            out.add(op[1])
        elif op[0] == "epoch_to_link" and op[1] != op[2]:
            out.add(op[2])
        elif op[0] == "epoch_swap":
            holds[op[1]], holds[op[2]] = holds[op[2]], holds[op[1]]
        elif op[0] == "epoch_rename" and op[2] == f".aside-{op[1]:03d}":
            pass  # a crash between move-aside and rename: recovery puts it back, by design
        elif op[0] in ("epoch_delete", "epoch_rename"):
            out.add(op[1])
    return out | {e for e, held in holds.items() if held != e}


def _touches_last(ops: list[tuple[Any, ...]]) -> bool:
    return any(op[0] in ("point", "pointer_kind") and op[1] == "last" for op in ops)


VICTIM = b"a file of the user's that a planted link points at\n"


def _fresh_copy(template: Path, scratch: Path) -> tuple[Path, Path]:
    place = Path(tempfile.mkdtemp(dir=scratch))
    root = place / "run"
    shutil.copytree(template, root, symlinks=True)
    (place / "victim.txt").write_bytes(VICTIM)
    return root, place / "outside.bin"


def _assert_nothing_outside_touched(root: Path) -> None:
    assert (root.parent / "victim.txt").read_bytes() == VICTIM, "wrote through a link"
    assert not (root.parent / "created-by-lock").exists(), "created a link's target"


def _cleanup(place: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(place):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o755)
                except OSError:
                    pass
    shutil.rmtree(place, ignore_errors=True)


# ------------------------------------------------------------------ the properties

def check_restart(root: Path, ops: list[tuple[Any, ...]], mode: str, checksum: bool) -> None:
    signal.alarm(30)
    try:
        e = CandleCkptFiles(make_params(root, ckpt_checksum=checksum,
                                        ckpt_restart_mode=mode), logger=None)
    except CheckpointCorruptError:
        assert _touches_last(ops), f"constructor refused an undamaged last: {ops}"
        return
    except UnsafeFileError as err:  # a planted ckpt.lock: refused, never followed
        assert any(op[0] == "lock" for op in ops) and "ckpt.lock" in str(err), err
        _assert_nothing_outside_touched(root)
        return
    try:
        try:
            J = e.restart()
        except CheckpointNotFoundError:
            assert mode == "required"
            return
        except CheckpointCorruptError as err:
            assert _touches_last(ops), f"refused though last was not damaged: {err}"
            assert "rollback" in str(err)
            return
        if J is None:
            assert mode == "auto"
            return
        epoch = J["epoch"]
        assert type(epoch) is int and epoch in EPOCHS, J
        state = e.state
        want = saved(epoch)
        assert state, "an empty state was loaded"
        assert set(state) <= set(want), f"loaded files that epoch {epoch} never saved"
        for name, data in state.items():
            assert data == want[name], f"epoch {epoch}: damaged {name} loaded ({ops})"
        # A manifest edit may legitimately drop the damaged file from what is checked.
        edited = any(op[0].startswith("json") and op[1] == epoch for op in ops)
        assert epoch not in tainted(ops) or edited, f"damaged epoch {epoch} loaded: {ops}"
        if not any(op[0].startswith("json") for op in ops):
            assert state == want  # without manifest edits, the whole epoch comes back
    finally:
        e.close()
        signal.alarm(0)
        _assert_nothing_outside_touched(root)


@fuzz(250)
@given(ops=st.lists(st.one_of(content_ops, structure_ops, json_ops, pointer_ops, lock_ops),
                    min_size=1, max_size=3),
       mode=st.sampled_from(["auto", "required"]))
def test_restart_with_checksums_never_loads_damage(templates, scratch, ops, mode):
    root, outside = _fresh_copy(templates[True], scratch)
    try:
        effective = [op for op in ops if apply(root, op, outside)]
        check_restart(root, effective, mode, checksum=True)
    finally:
        _cleanup(root.parent)


@fuzz(200)
@given(ops=st.lists(st.one_of(sizeless_content_ops, structure_ops, json_ops, pointer_ops,
                                  lock_ops),
                    min_size=1, max_size=3),
       mode=st.sampled_from(["auto", "required"]))
def test_restart_without_checksums_never_loads_what_sizes_detect(templates, scratch, ops,
                                                                  mode):
    root, outside = _fresh_copy(templates[False], scratch)
    try:
        effective = [op for op in ops if apply(root, op, outside)]
        check_restart(root, effective, mode, checksum=False)
    finally:
        _cleanup(root.parent)


CLI_COMMANDS: list[list[str]] = [
    ["list"], ["list", "--json"], ["show"], ["show", "best"], ["show", "3", "--json"],
    ["verify"], ["verify", "4"], ["prune", "--keep", "1", "--dry-run"],
    ["rollback", "2"], ["rollback", "best"],
]


@fuzz(150)
@given(ops=st.lists(st.one_of(content_ops, structure_ops, json_ops, pointer_ops, lock_ops),
                    min_size=1, max_size=3))
def test_every_cli_command_exits_0_1_or_2_without_a_traceback(templates, scratch, ops,
                                                               capsys):
    from candle_ckpt import cli

    root, outside = _fresh_copy(templates[True], scratch)
    try:
        for op in ops:
            apply(root, op, outside)
        for command in CLI_COMMANDS:
            argv = [command[0], str(root), *command[1:]]
            signal.alarm(30)
            try:
                code = cli.main(argv)
            finally:
                signal.alarm(0)
            out, err = capsys.readouterr()
            assert code in (0, 1, 2), (argv, code, ops)
            assert "Traceback" not in err and "Traceback" not in out, (argv, err)
            if code == 2:
                assert len(err.strip().splitlines()) == 1, (argv, err)
            _assert_nothing_outside_touched(root)
    finally:
        _cleanup(root.parent)


def test_the_strategies_reach_every_kind_of_damage():
    """Guard against a strategy that silently stopped generating some damage."""
    kinds = set()

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(st.one_of(content_ops, structure_ops, json_ops, pointer_ops, lock_ops))
    def collect(op: tuple[Any, ...]) -> None:
        kinds.add(op[0])

    collect()
    assert kinds >= {"flip", "truncate", "append", "random", "delete", "to_dir", "to_fifo",
                     "to_link", "chmod", "epoch_to_link", "epoch_swap", "epoch_delete",
                     "epoch_rename", "json_set", "json_del", "json_entry",
                     "json_rename_entry", "json_raw", "point", "pointer_kind", "lock"}
