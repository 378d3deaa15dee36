"""FileSink: files written by path (the Keras writer's way) and by stream.

fsync is observed by wrapping ``os.fsync``: a test proves that each file written by path
is synced before it joins the manifest, and that the directory is synced last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from candle_ckpt.errors import CheckpointWriteError, CkptParamError
from candle_ckpt.storage import fsio
from candle_ckpt.storage.integrity import checksum_file
from candle_ckpt.storage.sink import _OVERLAP_BYTES as OVERLAP
from candle_ckpt.storage.sink import FileSink

DATA = b"keras weights " * 700


@pytest.fixture
def fsyncs(monkeypatch):
    """The inodes os.fsync was called on, in order."""
    seen: list[tuple[int, int]] = []
    real = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        seen.append((st.st_dev, st.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


@pytest.fixture
def steps(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(fsio, "_on_step", seen.append)
    return seen


def _inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32", None])
def test_a_file_written_by_path_is_fsynced_and_checksummed(tmp_path, fsyncs, steps, algorithm):
    sink = FileSink(tmp_path, algorithm)
    path = sink.path("model.weights.h5")
    assert path == tmp_path / "model.weights.h5" and not path.exists()
    path.write_bytes(DATA)
    assert steps == []  # nothing is in the manifest until finish()
    files = sink.finish()
    entry = {"size": len(DATA)}
    if algorithm:
        entry["checksum"] = checksum_file(path, algorithm)
    assert files == {"model.weights.h5": entry}
    assert _inode(path) in fsyncs and fsyncs[-1] == _inode(tmp_path)
    assert fsyncs.index(_inode(path)) < fsyncs.index(_inode(tmp_path))
    assert steps == ["file-written"]


def test_streamed_and_by_path_files_join_one_sorted_manifest(tmp_path, fsyncs, steps):
    sink = FileSink(tmp_path, "xxh3_64")
    sink.path("z.h5").write_bytes(b"zz")
    with sink.open("a.json") as f:
        f.write(b"{}")
        assert f.tell() == 2 and f.writable()
    assert _inode(tmp_path / "a.json") in fsyncs
    files = sink.finish()
    assert list(files) == ["a.json", "z.h5"]
    assert files["a.json"] == {"size": 2, "checksum": checksum_file(tmp_path / "a.json")}
    assert files["z.h5"]["size"] == 2
    assert steps == ["file-written", "file-written"]
    assert sink.finish() == files  # finishing again adds nothing and reads nothing twice


def test_a_streamed_file_without_checksums_has_only_its_size(tmp_path):
    sink = FileSink(tmp_path, None)
    with sink.open("m.bin") as f:
        f.write(memoryview(DATA))
        f.write(bytearray(b"xy"))
    assert sink.finish() == {"m.bin": {"size": len(DATA) + 2}}
    assert (tmp_path / "m.bin").read_bytes() == DATA + b"xy"


def test_a_crash_at_file_written_comes_after_the_file_is_durable(tmp_path, monkeypatch,
                                                                 fsyncs):
    class Crash(Exception):
        pass

    def on_step(name):
        assert _inode(tmp_path / "m.h5") in fsyncs
        raise Crash(name)

    monkeypatch.setattr(fsio, "_on_step", on_step)
    sink = FileSink(tmp_path, "xxh3_64")
    sink.path("m.h5").write_bytes(DATA)
    with pytest.raises(Crash, match="file-written"):
        sink.finish()


@pytest.mark.parametrize("first", ["open", "path"])
@pytest.mark.parametrize("second", ["open", "path"])
def test_a_name_written_twice_is_refused(tmp_path, first, second):
    sink = FileSink(tmp_path, None)
    if first == "open":
        with sink.open("m.bin") as f:
            f.write(b"1")
    else:
        sink.path("m.bin")
    with pytest.raises(CkptParamError, match="written twice"):
        if second == "open":
            with sink.open("m.bin"):
                pass
        else:
            sink.path("m.bin")


def test_a_path_that_exists_already_is_refused(tmp_path):
    (tmp_path / "m.h5").write_bytes(b"old")
    sink = FileSink(tmp_path, None)
    with pytest.raises(CkptParamError, match="exists already"):
        sink.path("m.h5")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CkptParamError, match="exists already"):
        sink.path("dangling")


@pytest.mark.parametrize("name", ["../m.h5", "a/b", "", "..", "ckpt-info.json", "a\nb", 7,
                                  "x" * 256])
def test_a_name_that_restart_would_refuse_is_refused(tmp_path, name):
    sink = FileSink(tmp_path / "work", None)
    with pytest.raises(CkptParamError, match="not accepted"):
        sink.path(name)
    with pytest.raises(CkptParamError, match="not accepted"):
        with sink.open(name):
            pass


def test_a_path_the_backend_did_not_write_is_a_write_error(tmp_path):
    sink = FileSink(tmp_path, None)
    sink.path("m.h5")
    with pytest.raises(CheckpointWriteError, match="did not write") as err:
        sink.finish()
    assert err.value.filename == str(tmp_path / "m.h5")


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
def test_a_path_written_as_something_else_is_a_write_error(tmp_path, kind):
    sink = FileSink(tmp_path, "xxh3_64")
    path = sink.path("m.h5")
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        (tmp_path / "real").write_bytes(DATA)
        path.symlink_to(tmp_path / "real")
    else:
        os.mkfifo(path)
    with pytest.raises(CheckpointWriteError, match="other than a regular file") as err:
        sink.finish()
    assert err.value.filename == str(path)


def test_a_failing_fsync_of_a_path_file_is_raised(tmp_path, monkeypatch):
    import errno

    sink = FileSink(tmp_path, None)
    sink.path("m.h5").write_bytes(DATA)

    def fail(fd):
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError) as err:
        sink.finish()
    assert err.value.errno == errno.EIO
    assert sink.files == {}


def test_a_stream_creates_a_new_file_and_never_follows_a_planted_link(tmp_path):
    (tmp_path / "target").write_bytes(b"keep")
    (tmp_path / "m.bin").symlink_to(tmp_path / "target")
    sink = FileSink(tmp_path, None)
    with pytest.raises(OSError):
        with sink.open("m.bin") as f:
            f.write(b"x")
    assert (tmp_path / "target").read_bytes() == b"keep"


def test_json_safe_replaces_non_finite_floats_recursively():
    nan, inf = float("nan"), float("inf")
    assert fsio.json_safe({"a": nan, "b": [inf, 1.5, (-inf,)], 3: {"c": 2}}) == {
        "a": None, "b": [None, 1.5, [None]], "3": {"c": 2}}
    assert fsio.json_safe("x") == "x" and fsio.json_safe(None) is None


def test_write_json_durable_replaces_a_planted_link_without_following_it(tmp_path):
    import json

    (tmp_path / "victim").write_text("keep")
    (tmp_path / "info.json").symlink_to(tmp_path / "victim")
    fsio.write_json_durable(tmp_path / "info.json", {"x": float("inf"), "y": 1})
    assert not (tmp_path / "info.json").is_symlink()
    assert json.loads((tmp_path / "info.json").read_text()) == {"x": None, "y": 1}
    assert (tmp_path / "victim").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.json", "victim"]


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32"])
def test_a_stream_mixing_small_and_large_writes_is_checksummed_in_order(tmp_path, algorithm):
    """Large writes are hashed on a helper thread while written: the manifest's
    checksum must still be that of the bytes in file order, and the helper must be gone."""
    import threading

    rng = __import__("random").Random(7)
    parts = [bytes(rng.getrandbits(8) for _ in range(97)),
             os.urandom(OVERLAP + 13), b"tail",
             bytearray(os.urandom(2 * OVERLAP)), memoryview(b"x" * 5)]
    sink = FileSink(tmp_path, algorithm)
    with sink.open("model.pt") as f:
        for part in parts:
            assert f.write(part) == len(part)
    files = sink.finish()
    whole = b"".join(bytes(p) for p in parts)
    assert (tmp_path / "model.pt").read_bytes() == whole
    assert files["model.pt"] == {"size": len(whole),
                                 "checksum": checksum_file(tmp_path / "model.pt", algorithm)}
    assert not [t for t in threading.enumerate() if t.name.startswith("candle-ckpt-hash")]


def test_a_failing_large_write_waits_for_its_hash_and_raises(tmp_path, monkeypatch):
    sink = FileSink(tmp_path, "xxh3_64")
    with pytest.raises(OSError, match="injected"):
        with sink.open("model.pt") as f:
            raw = f._raw

            def boom(data):
                raise OSError(28, "injected")

            monkeypatch.setattr(raw, "write", boom, raising=False)
            f.write(b"\0" * (OVERLAP * 2))
    assert "model.pt" not in sink.files


def _write_large(tmp_path: Path) -> tuple[bytes, dict]:
    data = os.urandom(2 * OVERLAP + 5)
    sink = FileSink(tmp_path, "xxh3_64")
    with sink.open("model.pt") as f:
        f.write(data[:OVERLAP + 1])
        f.write(data[OVERLAP + 1:])
    return data, sink.finish()


def test_large_writes_are_hashed_once_interpreter_exit_has_begun(tmp_path, monkeypatch):
    """At exit concurrent.futures' executors refuse new work (their flag is set before
    non-daemon threads are joined), while a background save may still be writing."""
    import concurrent.futures.thread

    monkeypatch.setattr(concurrent.futures.thread, "_shutdown", True)
    data, files = _write_large(tmp_path)
    assert (tmp_path / "model.pt").read_bytes() == data
    assert files["model.pt"]["checksum"] == checksum_file(tmp_path / "model.pt", "xxh3_64")


def test_large_writes_are_hashed_inline_where_no_thread_can_be_started(tmp_path, monkeypatch):
    import threading

    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    data, files = _write_large(tmp_path)
    assert (tmp_path / "model.pt").read_bytes() == data
    assert files["model.pt"]["checksum"] == checksum_file(tmp_path / "model.pt", "xxh3_64")
