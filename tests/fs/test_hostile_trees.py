"""Hostile trees and faulty filesystems: links are never followed, special
files never opened, any ckpt-info.json content is a verdict (never a crash), the writer
lock is one writer per directory (also within a process and across fork), and deletion
failures after the commit point are reported as CheckpointDeleteError.

Three checkpoints are written (last -> 003), epoch 3 is damaged, and a fresh engine must
restart from epoch 2 with the exact bytes saved then, saying why 3 was skipped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from candle_ckpt import CheckpointLockedError, CheckpointWriteError, CkptParamError
from candle_ckpt.errors import CheckpointDeleteError, LockLostError, UnsafeFileError
from candle_ckpt.storage import lock
from candle_ckpt.storage.commit import Committer
from candle_ckpt.storage.integrity import check_checkpoint, safe_member
from candle_ckpt.storage.layout import INFO_FILE, Layout, read_info_file, summarize
from candle_ckpt.storage.lock import acquire_writer_lock
from candle_ckpt.storage.safeio import append_log_line, check_log_file, one_line, printable
from candle_ckpt.storage.sink import FileSink
from tests.helpers.fs import blobs, engine, train


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A FIFO opened the wrong way blocks forever: turn that into a failure."""
    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked (a FIFO or lock was waited on)")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def three(directory: Path, checksum: bool = True) -> Path:
    """Epochs 1..3 written; returns epochs/."""
    with engine(directory, ckpt_checksum=checksum) as e:
        assert train(e, [1, 2, 3]) == [1, 2, 3]
    return directory / "ckpts" / "epochs"


def restart_expecting(directory: Path, epoch: int, reason: str,
                      checksum: bool = True) -> dict[str, Any]:
    """Restart must load exactly ``epoch``'s bytes, having skipped 3 for ``reason``."""
    with engine(directory, ckpt_checksum=checksum) as e:
        J = e.restart()
        state = e.state
    assert J is not None, "restart found nothing; epoch 2 was valid"
    assert J["epoch"] == epoch and type(J["epoch"]) is int
    assert state == blobs(epoch)
    assert [s["epoch"] for s in J["skipped"]] == [3]
    assert reason in J["skipped"][0]["reason"], J["skipped"]
    return J


def rewrite_info(epochs: Path, epoch: int, change: Callable[[dict[str, Any]], Any]) -> None:
    path = epochs / f"{epoch:03d}" / INFO_FILE
    info = json.loads(path.read_text())
    result = change(info)
    path.write_text(json.dumps(info if result is None else result))


# ------------------------------------------------------------------ ckpt.lock / ckpt.log

def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.lock").symlink_to(victim)
    with pytest.raises(UnsafeFileError) as err:
        engine(run)
    assert "ckpt.lock" in str(err.value) and "symlink" in str(err.value)
    assert isinstance(err.value, OSError)
    assert victim.read_text() == "precious\n"


def test_rollback_refuses_a_planted_lock_symlink(tmp_path, capsys):
    from candle_ckpt import cli

    three(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "ckpt.lock").unlink()
    (tmp_path / "ckpt.lock").symlink_to(victim)
    assert cli.main(["rollback", str(tmp_path), "2"]) == 2
    assert "symlink" in capsys.readouterr().err
    assert victim.read_text() == "precious\n"
    assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/003"


def test_a_dangling_lock_symlink_does_not_create_its_target(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.lock").symlink_to(tmp_path / "created-by-us")
    with pytest.raises(UnsafeFileError):
        engine(run)
    assert not (tmp_path / "created-by-us").exists()


def test_a_fifo_lock_is_refused_without_blocking(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "ckpt.lock")
    with pytest.raises(UnsafeFileError, match="FIFO"):
        engine(run)


def test_a_hard_linked_lock_file_is_locked_but_never_truncated(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim, run / "ckpt.lock")
    with engine(run) as e:
        assert train(e, [1]) == [1]
    assert victim.read_text() == "precious\n"


def test_log_append_refuses_links_and_fifos_and_writes_one_line(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "link.log"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symlink"):
        append_log_line(link, "x")
    with pytest.raises(UnsafeFileError, match="symlink"):
        check_log_file(link)
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError):
        append_log_line(fifo, "x")
    with pytest.raises(UnsafeFileError):
        check_log_file(fifo)
    assert victim.read_text() == "precious\n"
    log = tmp_path / "ckpt.log"
    check_log_file(log)
    assert log.is_file() and log.read_text() == ""
    append_log_line(log, "first")
    append_log_line(log, "epoch 3: saved\n2026-01-01 00:00:00 INFO    forged line")
    lines = log.read_text().splitlines()
    assert lines[0] == "first" and len(lines) == 2 and "\\n2026" in lines[1]
    fd = os.open(log, os.O_RDONLY)
    try:
        assert os.get_inheritable(fd) is False  # what we open ourselves is never inherited
    finally:
        os.close(fd)


@pytest.mark.parametrize("text,shown", [
    ("model\n2026 INFO forged", "model\\n2026 INFO forged"),
    ("a\rb\tc\x1b[31m", "a\\rb\\tc\\x1b[31m"),
    ("\udcff\udcfe", "\\udcff\\udcfe"),  # a non-UTF-8 name, as os.listdir gives it
    ("abc\u202etxt.exe", "abc\\u202etxt.exe"),  # a bidi override
    ("line\u2028sep", "line\\u2028sep"),
    ("back\\slash", "back\\\\slash"),  # so that an escape cannot be imitated
    ("plain name.bin", "plain name.bin"),
    (b"\xff\n", "\\\\xff\\n"),
])
def test_printable_escapes_what_could_forge_a_line_or_hide_text(text, shown):
    assert printable(text) == shown
    assert "\n" not in printable(text) and printable(text).isprintable()


def test_printable_never_raises():
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert "cannot be shown" in printable(deep)
    assert "bits" in printable(10 ** 5000)  # beyond the int-to-str limit
    assert printable("x" * 5000).endswith("(4000 more characters)")

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert "Hostile" in printable(Hostile())
    assert one_line("keep \\ this\nbut not that") == "keep \\ this\\nbut not that"


# ------------------------------------------------------------------ the writer lock

def test_the_lock_check_passes_while_held_and_fails_after_release(tmp_path):
    lock = acquire_writer_lock(tmp_path)
    lock.check()
    assert lock.held
    lock.release()
    lock.release()  # idempotent
    with pytest.raises(LockLostError, match="released"):
        lock.check()


def test_a_replaced_directory_is_detected_at_the_next_check(tmp_path):
    run = tmp_path / "run"
    lock = acquire_writer_lock(run)
    try:
        run.rename(tmp_path / "moved")
        run.mkdir()
        with pytest.raises(LockLostError, match="replaced"):
            lock.check()
        # The new directory is not protected by the old lock: a new writer may take it.
        with acquire_writer_lock(run) as other:
            other.check()
    finally:
        lock.release()


def test_a_deleted_directory_is_detected_at_the_next_check(tmp_path):
    run = tmp_path / "run"
    lock = acquire_writer_lock(run)
    try:
        shutil.rmtree(run)
        with pytest.raises(LockLostError, match="deleted or moved"):
            lock.check()
    finally:
        lock.release()


def test_a_deleted_lock_file_is_detected_at_the_next_check(tmp_path):
    lock = acquire_writer_lock(tmp_path)
    try:
        (tmp_path / "ckpt.lock").unlink()
        with pytest.raises(LockLostError, match="ckpt.lock"):
            lock.check()
    finally:
        lock.release()


PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from candle_ckpt.storage.lock import acquire_writer_lock
    from candle_ckpt.errors import CheckpointLockedError
    try:
        acquire_writer_lock(Path(sys.argv[1])).release()
        print("free")
    except CheckpointLockedError:
        print("locked")
""")


def probe(directory: Path) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, str(directory)], capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_holds_no_lock_and_cannot_pass_the_check(tmp_path):
    lock = acquire_writer_lock(tmp_path)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what check() and a second acquire say, then wait
        os.close(to_child_w)
        os.close(from_child_r)
        try:
            lock.check()
            said = "check passed"
        except LockLostError as err:
            said = "lost: " + str(err)
        try:
            acquire_writer_lock(tmp_path)
            said += " | acquired"
        except CheckpointLockedError as err:
            said += " | refused: " + str(err)
        os.write(from_child_w, said.encode())
        os.close(from_child_w)
        os.read(to_child_r, 1)  # live on until the parent has probed
        os._exit(0)
    os.close(to_child_r)
    os.close(from_child_w)
    try:
        said = os.read(from_child_r, 4096).decode()
        assert said.startswith("lost: ") and "fork()ed child" in said, said
        assert f"pid {os.getpid()}" in said
        assert "| refused: " in said and "in use by another process" in said, said
        lock.check()  # the parent still holds it
        lock.release()
        # The child is alive and inherited the descriptor; it must not keep the lock.
        assert probe(tmp_path) == "free"
    finally:
        lock.release()
        os.write(to_child_w, b"x")
        os.close(to_child_w)
        os.close(from_child_r)
        os.waitpid(pid, 0)


def test_a_subprocess_does_not_inherit_the_lock(tmp_path):
    with engine(tmp_path):
        helper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE, close_fds=False)
    try:
        assert probe(tmp_path) == "free"  # the engine closed; the helper lives on
    finally:
        helper.communicate(b"", timeout=60)


def test_the_lock_works_under_a_working_directory_deeper_than_path_max(tmp_path):
    home = os.open(".", os.O_RDONLY)
    try:
        os.chdir(tmp_path)
        for _ in range(25):  # 25 * 201 characters > PATH_MAX (4096)
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
        with pytest.raises(OSError) as err:  # the fault is real: absolute paths fail here
            os.stat(os.path.realpath("."))
        assert err.value.errno == errno.ENAMETOOLONG
        lock = acquire_writer_lock(Path("save"))
        try:
            lock.check()
            with pytest.raises(CheckpointLockedError, match="already held"):
                acquire_writer_lock(Path("save"))
            with pytest.raises(CheckpointLockedError, match="already held"):
                acquire_writer_lock(Path("./save/../save"))  # same directory, other name
        finally:
            lock.release()
        layout = Layout.ours(Path("save"))
        Committer(layout, lambda m: None).new_work()
        sink = FileSink(layout.work, "xxh3_64")
        with sink.open("model.bin") as f:
            f.write(b"abc")
        sink.finish()
        Committer(layout, lambda m: None).publish(1, layout.work)
        Committer(layout, lambda m: None).point("last", 1)
        assert layout.read_pointer("last").ok  # no realpath: the pointer still resolves
    finally:
        os.fchdir(home)
        os.close(home)


# ------------------------------------------------------------------ hostile trees

def test_an_epoch_directory_that_is_a_symlink_is_not_a_checkpoint(tmp_path):
    epochs = three(tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(epochs / "003", outside)
    shutil.rmtree(epochs / "003")
    (epochs / "003").symlink_to(outside)
    assert Layout.ours(tmp_path).list_epochs() == [1, 2]
    restart_expecting(tmp_path, 2, "symlink")


BAD_NAMES = ["/etc/passwd", "../003/model.bin", "sub/model.bin", "sub\\model.bin",
             "model\x00.bin", "", ".", "..", "model\n.bin", INFO_FILE, "x" * 300]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_manifest_entry_that_is_not_a_plain_name_invalidates_the_checkpoint(tmp_path, name):
    epochs = three(tmp_path)

    def swap(info: dict[str, Any]) -> None:
        info["files"][name] = info["files"].pop("extra.bin")

    rewrite_info(epochs, 3, swap)
    restart_expecting(tmp_path, 2, "not a plain file name")
    assert not safe_member(name) or name == INFO_FILE  # the sink refuses that one


@pytest.mark.parametrize("name", ["/etc/passwd", "../002/model.bin", "a/b", "a\\b", 7, None])
def test_a_model_file_outside_the_manifest_or_not_a_name_invalidates(tmp_path, name):
    epochs = three(tmp_path)
    rewrite_info(epochs, 3, lambda info: info.__setitem__("model_file", name))
    restart_expecting(tmp_path, 2, "model_file")


def test_a_rng_file_that_escapes_invalidates(tmp_path):
    epochs = three(tmp_path)
    rewrite_info(epochs, 3, lambda info: info.__setitem__("rng_file", "../002/model.bin"))
    restart_expecting(tmp_path, 2, "rng_file")


@pytest.mark.parametrize("checksum", [True, False])
def test_a_member_that_is_a_symlink_is_never_followed(tmp_path, checksum):
    epochs = three(tmp_path, checksum)
    # Same bytes, same size: only refusing the link itself catches this.
    outside = tmp_path / "outside.bin"
    outside.write_bytes((epochs / "003" / "model.bin").read_bytes())
    (epochs / "003" / "model.bin").unlink()
    (epochs / "003" / "model.bin").symlink_to(outside)
    restart_expecting(tmp_path, 2, "symlink", checksum)


@pytest.mark.parametrize("victim", ["model.bin", "extra.bin", INFO_FILE])
@pytest.mark.parametrize("checksum", [True, False])
def test_a_fifo_in_place_of_a_file_invalidates_without_hanging(tmp_path, victim, checksum):
    epochs = three(tmp_path, checksum)
    (epochs / "003" / victim).unlink()
    os.mkfifo(epochs / "003" / victim)
    J_reason = "FIFO" if victim != INFO_FILE else INFO_FILE
    if victim == INFO_FILE:
        # Without a regular ckpt-info.json epoch 3 is not complete: restart says so.
        with engine(tmp_path, ckpt_checksum=checksum) as e:
            J = e.restart()
        assert J is not None and J["epoch"] == 2 and e.state == blobs(2)
        assert J_reason in J["skipped"][0]["reason"]
    else:
        restart_expecting(tmp_path, 2, J_reason, checksum)


def test_a_directory_in_place_of_a_file_invalidates(tmp_path):
    epochs = three(tmp_path)
    (epochs / "003" / "extra.bin").unlink()
    (epochs / "003" / "extra.bin").mkdir()
    restart_expecting(tmp_path, 2, "a directory")


def test_non_utf8_names_in_epochs_are_ignored_everywhere(tmp_path):
    epochs = three(tmp_path)
    os.mkdir(os.fsencode(epochs) + b"/\xff\xfe")
    os.mkdir(os.fsencode(epochs) + b"/00\xff")
    (epochs / "003" / "model\udcff.bin").write_bytes(b"stray")  # not in the manifest
    layout = Layout.ours(tmp_path)
    assert layout.list_epochs() == [1, 2, 3]
    assert [r.epoch for r in summarize(layout)] == [1, 2, 3]
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 3 and e.state == blobs(3)


@pytest.mark.parametrize("name", ["7", "0003", "003\n", "+03", " 03", "٣٣٣"])
def test_only_canonical_epoch_names_are_epochs(tmp_path, name):
    epochs = three(tmp_path)
    shutil.copytree(epochs / "003", epochs / name)
    assert Layout.ours(tmp_path).list_epochs() == [1, 2, 3]


# ------------------------------------------------------------------ ckpt-info.json content

def _deep(info: dict[str, Any]) -> str:
    return "[" * 100_000 + "]" * 100_000


INFO_DAMAGE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "epoch float": lambda i: i.__setitem__("epoch", 3.0),
    "epoch string": lambda i: i.__setitem__("epoch", "3"),
    "epoch true": lambda i: i.__setitem__("epoch", True),
    "epoch 400 digits": lambda i: i.__setitem__("epoch", 10 ** 400),
    "epoch null": lambda i: i.__setitem__("epoch", None),
    "size null": lambda i: i["files"]["model.bin"].__setitem__("size", None),
    "size negative": lambda i: i["files"]["model.bin"].__setitem__("size", -1),
    "size float": lambda i: i["files"]["model.bin"].__setitem__(
        "size", float(i["files"]["model.bin"]["size"])),
    "size string": lambda i: i["files"]["model.bin"].__setitem__(
        "size", str(i["files"]["model.bin"]["size"])),
    "size 400 digits": lambda i: i["files"]["model.bin"].__setitem__("size", 10 ** 400),
    "entry a list": lambda i: i["files"].__setitem__("model.bin", [1]),
    "checksum a number": lambda i: i["files"]["model.bin"].__setitem__("checksum", 12),
    "algorithm a list": lambda i: i.__setitem__("checksum_algorithm", ["xxh3_64"]),
    "algorithm unknown": lambda i: i.__setitem__("checksum_algorithm", "md4"),
    "files removed": lambda i: i.pop("files"),
    "files a list": lambda i: i.__setitem__("files", ["model.bin"]),
    "format_version a string": lambda i: i.__setitem__("format_version", "1"),
    "best_metric_last a string": lambda i: i.__setitem__("best_metric_last", "low"),
    "best_metric_last 400 digits": lambda i: i.__setitem__("best_metric_last", 10 ** 400),
    "epoch_best a float": lambda i: i.__setitem__("epoch_best", 2.5),
    "model_file a surrogate": lambda i: i.__setitem__("model_file", "\ud800"),
    "a list": lambda i: [i],
}


@pytest.mark.parametrize("damage", sorted(INFO_DAMAGE))
def test_any_info_content_is_a_verdict_and_restart_falls_back(tmp_path, damage):
    epochs = three(tmp_path)
    rewrite_info(epochs, 3, INFO_DAMAGE[damage])
    info, problems = check_checkpoint(epochs / "003", 3, True)
    assert problems, f"{damage}: accepted"
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2 and e.state == blobs(2)
    assert [s["epoch"] for s in J["skipped"]] == [3]


RAW_INFO = {
    "deep nesting": '{"epoch": 3, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "beyond the int-str limit": '{"epoch": ' + "9" * 5000 + "}",
    "not utf-8": b'{"epoch": 3, "model_file": "\xff"}',
    "lone surrogate": '{"epoch": 3, "model_file": "\\ud800", "files": {}}',
    "truncated": '{"epoch": 3, "files": {',
    "empty": "",
    "NaN everywhere": '{"epoch": NaN, "best_metric_last": NaN}',
}


@pytest.mark.parametrize("case", sorted(RAW_INFO))
def test_raw_info_bytes_are_a_verdict(tmp_path, case):
    epochs = three(tmp_path)
    raw = RAW_INFO[case]
    path = epochs / "003" / INFO_FILE
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    try:
        read_info_file(path)
    except (OSError, ValueError):
        pass  # the only two it may raise
    info, problems = check_checkpoint(epochs / "003", 3, True)
    assert problems
    restart_expecting(tmp_path, 2, "")


def test_an_oversized_info_file_is_refused_without_reading_it(tmp_path):
    epochs = three(tmp_path)
    path = epochs / "003" / INFO_FILE
    with open(path, "r+b") as f:
        f.truncate(65 << 20)  # sparse: costs nothing on disk
    with pytest.raises(ValueError, match="bytes, more than"):
        read_info_file(path)
    restart_expecting(tmp_path, 2, "more than")


def test_a_legacy_checkpoint_without_format_version_is_still_valid(tmp_path):
    epochs = three(tmp_path)

    def legacy(info: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": 3, "model_file": "model.bin", "checksum": "__DISABLED__",
                "best_metric_last": 0.3, "metadata": None, "save_best_metric": "val_loss"}

    rewrite_info(epochs, 3, legacy)
    assert check_checkpoint(epochs / "003", 3, True)[1] == []


# ------------------------------------------------------------------ unreadable entries

@pytest.fixture
def unreadable(monkeypatch) -> Iterator[Callable[[Path], None]]:
    """Make a path unreadable: chmod 000, or (as root, who ignores modes) fault injection
    of what chmod 000 does: EACCES for reading it and for anything below it. Either way
    the fixture asserts that the fault took effect."""
    blocked: list[str] = []
    chmodded: list[Path] = []

    def denied(p: Any, itself: bool) -> bool:
        if not isinstance(p, (str, os.PathLike)) or isinstance(os.fspath(p), bytes):
            return False
        text = os.fspath(p)
        return any(text.startswith(b + os.sep) or (itself and text == b) for b in blocked)

    def patch(name: str, itself: bool) -> None:
        real = getattr(os, name)

        def fake(p: Any = ".", *a: Any, **k: Any) -> Any:
            if k.get("dir_fd") is None and denied(p, itself):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))
            return real(p, *a, **k)

        monkeypatch.setattr(os, name, fake)

    def block(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0)
            chmodded.append(path)
        else:
            if not blocked:
                for name, itself in (("stat", False), ("lstat", False), ("listdir", True),
                                     ("scandir", True), ("open", True)):
                    patch(name, itself)
            blocked.append(os.fspath(path))
        with pytest.raises(PermissionError):
            os.listdir(path) if path.is_dir() else os.open(path, os.O_RDONLY)

    yield block
    for path in chmodded:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_an_unreadable_older_epoch_does_not_block_restart_from_last(tmp_path, unreadable):
    three(tmp_path)
    unreadable(tmp_path / "ckpts" / "epochs" / "001")
    layout = Layout.ours(tmp_path)
    assert 1 not in layout.complete_epochs()
    rows = summarize(layout)
    assert rows[0].epoch == 1 and rows[0].error is not None
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 3 and J["skipped"] == [] and e.state == blobs(3)


def test_an_unreadable_member_of_last_falls_back(tmp_path, unreadable):
    epochs = three(tmp_path)
    unreadable(epochs / "003" / "extra.bin")
    info, problems = check_checkpoint(epochs / "003", 3, True)
    assert problems and "extra.bin" in problems[0]


# ------------------------------------------------------------------ FileSink

@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_sink_writes_plain_names_only(tmp_path, name):
    sink = FileSink(tmp_path, None)
    with pytest.raises(CkptParamError, match="not accepted"):
        with sink.open(name):
            pass
    with pytest.raises(CkptParamError, match="not accepted"):
        sink.path(name)


def test_the_sink_never_writes_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "model.bin").symlink_to(victim)
    with pytest.raises(FileExistsError):
        with FileSink(work, None).open("model.bin") as f:
            f.write(b"overwritten")
    with pytest.raises(CkptParamError, match="exists already"):
        FileSink(work, None).path("model.bin")
    assert victim.read_text() == "precious\n"


def test_a_backend_writing_a_link_by_path_fails_the_save(tmp_path):
    sink = FileSink(tmp_path, "xxh3_64")
    path = sink.path("model.bin")
    (tmp_path / "elsewhere").write_bytes(b"abc")
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointWriteError, match="not a regular file|symlink"):
        sink.finish()


# ------------------------------------------------------------------ faults around commit

def _is_dir_fd(fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:
        return False


def test_a_directory_fsync_failure_before_the_commit_point_fails_the_save(tmp_path,
                                                                          monkeypatch):
    e = engine(tmp_path)
    try:
        assert train(e, [1]) == [1]
        real = os.fsync
        hits = []

        def fsync(fd: int) -> None:
            if _is_dir_fd(fd):
                hits.append(fd)
                raise OSError(errno.EIO, "Input/output error")
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(CheckpointWriteError) as err:
            train(e, [2])
        monkeypatch.undo()
        assert hits, "the fault was never injected"
        assert err.value.errno == errno.EIO and "epoch 2" in str(err.value)
        assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/001"
    finally:
        e.close()


def test_a_directory_fsync_failure_after_last_is_replaced_is_logged_not_raised(tmp_path,
                                                                               monkeypatch):
    layout = Layout.ours(tmp_path)
    committer = Committer(layout, (logged := []).append)
    committer.new_work()
    sink = FileSink(layout.work, None)
    with sink.open("model.bin") as f:
        f.write(b"x")
    sink.finish()
    committer.publish(1, layout.work)
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(
        OSError(errno.EIO, "Input/output error")) if _is_dir_fd(fd) else real(fd))
    committer.point("last", 1)
    assert os.readlink(layout.last) == "epochs/001"
    assert any("fsync" in m and "failed" in m for m in logged), logged


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EPERM, errno.EACCES])
def test_a_refused_deletion_raises_a_delete_error_and_keeps_the_checkpoint(tmp_path,
                                                                           monkeypatch, code):
    three(tmp_path)
    layout = Layout.ours(tmp_path)
    committer = Committer(layout, lambda m: None)
    real = os.rename

    def rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if os.fspath(src).endswith("epochs/001"):
            raise OSError(code, os.strerror(code), os.fspath(src))
        real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(CheckpointDeleteError) as err:
        committer.delete_epoch(1)
    monkeypatch.undo()
    assert isinstance(err.value, OSError) and err.value.errno == code
    assert "epoch 1" in str(err.value) and "stays in place" in str(err.value)
    assert layout.complete_epochs() == [1, 2, 3]
    assert check_checkpoint(layout.epoch_dir(1), 1, True)[1] == []


def test_a_stuck_deletion_is_unlisted_raised_and_purged_later(tmp_path, monkeypatch):
    three(tmp_path)
    layout = Layout.ours(tmp_path)
    committer = Committer(layout, lambda m: None)
    real = shutil.rmtree

    def rmtree(path: Any, *a: Any, **k: Any) -> None:
        raise OSError(errno.ENOTEMPTY, "Directory not empty", os.fspath(path) + "/.nfs0001")

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(CheckpointDeleteError) as err:
        committer.delete_epoch(1)
    assert err.value.errno == errno.ENOTEMPTY and ".nfs0001" in str(err.value)
    assert layout.list_epochs() == [2, 3]  # unlisted: restart never sees it
    assert len(committer.purge_deletions()) == 1  # still stuck
    monkeypatch.setattr(shutil, "rmtree", real)
    assert committer.purge_deletions() == []
    assert [p.name for p in layout.leftovers()] == []


def test_recover_survives_what_it_cannot_remove(tmp_path, monkeypatch):
    three(tmp_path)
    (tmp_path / "ckpts" / "work").mkdir()
    (tmp_path / "ckpts" / "epochs" / ".deleting-001.1.1").mkdir()
    logged: list[str] = []
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: (_ for _ in ()).throw(
        OSError(errno.EBUSY, "Device or resource busy", os.fspath(p))))
    Committer(Layout.ours(tmp_path), logged.append).recover()
    assert sum("could not remove" in m for m in logged) == 2, logged


def test_new_errors_derive_from_ckpt_error_and_a_builtin():
    from candle_ckpt import CkptError

    for cls, builtin in ((CheckpointDeleteError, OSError), (UnsafeFileError, OSError),
                         (LockLostError, CheckpointLockedError)):
        assert issubclass(cls, CkptError) and issubclass(cls, builtin)
    assert lock.acquire_lock is not None  # the older API stays for current callers


# ------------------------------------------------------------------ through the engine
# What the engine must wire (its call sites are the restructure's): a planted ckpt.log,
# WriterLock.check() before each save, and a failing keep-policy deletion.

def test_a_planted_log_symlink_is_never_appended_to(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.log").symlink_to(victim)
    try:
        with engine(run) as e:
            train(e, [1])
    except UnsafeFileError as err:
        assert "ckpt.log" in str(err)
    assert victim.read_text() == "precious\n"


def test_a_newline_in_a_checkpoint_file_name_cannot_forge_a_log_line(tmp_path):
    epochs = three(tmp_path)
    forged = "x\n2026-01-01 00:00:00 INFO    epoch 3: saved (forged)"

    def swap(info: dict[str, Any]) -> None:
        info["files"][forged] = info["files"].pop("extra.bin")

    rewrite_info(epochs, 3, swap)
    restart_expecting(tmp_path, 2, "not a plain file name")
    lines = (tmp_path / "ckpt.log").read_text(encoding="utf-8").splitlines()
    assert not any(line.startswith("2026-01-01 00:00:00") for line in lines)
    assert any("\\n2026-01-01" in line for line in lines)


def test_an_engine_works_under_a_working_directory_deeper_than_path_max(tmp_path):
    home = os.open(".", os.O_RDONLY)
    try:
        os.chdir(tmp_path)
        for _ in range(25):
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
        with engine(Path("save")) as e:
            assert train(e, [1, 2]) == [1, 2]
        with engine(Path("save")) as e:
            J = e.restart()
            assert J is not None and J["epoch"] == 2 and e.state == blobs(2)
    finally:
        os.fchdir(home)
        os.close(home)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_of_a_writer_cannot_save(tmp_path):
    e = engine(tmp_path)
    try:
        assert train(e, [1]) == [1]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                train(e, [2])
                said = b"saved"
            except LockLostError:
                said = b"refused"
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                said = repr(err).encode()
            os.write(w, said)
            os._exit(0)
        os.close(w)
        said = os.read(r, 4096)
        os.close(r)
        os.waitpid(pid, 0)
        assert said == b"refused"
        assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/001"
    finally:
        e.close()


def test_a_directory_replaced_under_a_running_engine_stops_the_next_save(tmp_path):
    run = tmp_path / "run"
    e = engine(run)
    try:
        assert train(e, [1]) == [1]
        run.rename(tmp_path / "moved")
        run.mkdir()
        with pytest.raises(LockLostError):
            train(e, [2])
        assert not (run / "ckpts").exists()
    finally:
        e.close()


def test_a_failing_keep_deletion_never_fails_a_committed_save(tmp_path, monkeypatch):
    e = engine(tmp_path, ckpt_keep_limit=1, ckpt_save_best=False)
    try:
        assert train(e, [1]) == [1]
        real = os.rename
        hits = []

        def rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if os.fspath(src).endswith("epochs/001") and ".deleting-" in os.fspath(dst):
                hits.append(src)
                raise OSError(errno.EBUSY, "Device or resource busy", os.fspath(src))
            real(src, dst, *a, **k)

        monkeypatch.setattr(os, "rename", rename)
        assert train(e, [2]) == [2]  # committed: the deletion failure is only logged
        monkeypatch.undo()
        assert hits, "the keep policy never tried to delete epoch 1"
        assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/002"
        assert "epoch 1" in (tmp_path / "ckpt.log").read_text()
    finally:
        e.close()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOSPC, errno.EDQUOT])
def test_running_out_of_descriptors_or_inodes_before_the_commit_point_fails_the_save(
        tmp_path, monkeypatch, code):
    e = engine(tmp_path)
    try:
        assert train(e, [1]) == [1]
        real = os.open
        hits = []

        def open_(path: Any, flags: int, *a: Any, **k: Any) -> int:
            if flags & os.O_CREAT and f"{os.sep}work{os.sep}" in os.fspath(path):
                hits.append(path)
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real(path, flags, *a, **k)

        monkeypatch.setattr(os, "open", open_)
        with pytest.raises(CheckpointWriteError) as err:
            train(e, [2])
        monkeypatch.undo()
        assert hits, "the fault was never injected"
        assert err.value.errno == code and "epoch 2" in str(err.value)
        assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/001"
        assert not (tmp_path / "ckpts" / "work").exists()
        assert train(e, [2]) == [2]  # once the fault is gone, saving works again
    finally:
        e.close()
