"""Opening files of a checkpoint tree without following links or blocking on FIFOs.

A checkpoint directory may have been copied from elsewhere, or planted by someone who
can write into it: a ``ckpt.lock`` that is a symlink to ``~/.bashrc`` must not be
truncated, a ``model.bin`` that is a FIFO must not hang restart, and a ``ckpt.log``
link must not make us append to another file. Every open here therefore

- checks ``lstat`` first (so a device or FIFO is never even opened),
- opens with ``O_NOFOLLOW`` (a link swapped in after the check fails with ELOOP),
  ``O_CLOEXEC`` (a ``subprocess`` never inherits our descriptors) and ``O_NONBLOCK``
  (a FIFO swapped in after the check does not block),
- and checks ``fstat`` of what it opened is the regular file it looked at.

Strings read from a checkpoint (file names, JSON values) go through :func:`printable`
before they reach ``ckpt.log`` or a terminal, so a newline in a name cannot forge a line.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import UnsafeFileError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)
SAFE_FLAGS = _NOFOLLOW | _CLOEXEC | _NONBLOCK | _BINARY

PathLike = str | os.PathLike[str]


def describe_mode(mode: int) -> str:
    """What kind of entry an ``st_mode`` is, in words."""
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _unsafe(path: PathLike, what: str, role: str) -> UnsafeFileError:
    return UnsafeFileError(
        errno.ELOOP if what == "a symlink" else errno.EINVAL,
        f"{printable(os.fspath(path))} is {what}; candle-ckpt only opens {role} that is a "
        "regular file (it never follows links or opens FIFOs/devices). Remove it or move "
        "it away",
        os.fspath(path),
    )


def lstat_regular(path: PathLike, role: str = "a file", dir_fd: int | None = None
                  ) -> os.stat_result:
    """``lstat`` a path and insist on a regular file.

    Raises:
        UnsafeFileError: it is a symlink, directory, FIFO, socket or device.
        OSError: it cannot be looked at (FileNotFoundError, PermissionError, ...).
    """
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise _unsafe(path, describe_mode(st.st_mode), role)
    return st


def open_regular(path: PathLike, flags: int = os.O_RDONLY, mode: int = 0o644,
                 role: str = "a file", dir_fd: int | None = None) -> int:
    """Open a regular file without following a link or blocking; returns the descriptor.

    ``flags`` are the access flags (``os.O_RDONLY``, ``os.O_WRONLY | os.O_APPEND`` ...);
    the safety flags are added. With ``os.O_CREAT`` a missing file is created (a
    dangling symlink is refused, not followed to create its target).

    Raises:
        UnsafeFileError: the path is a symlink or not a regular file.
        OSError: any other failure to open (missing, permission, ENOSPC, EMFILE ...).
    """
    if not flags & os.O_CREAT:
        lstat_regular(path, role, dir_fd)  # never open a device or FIFO at all
    else:
        try:
            lstat_regular(path, role, dir_fd)
        except FileNotFoundError:
            pass
    try:
        fd = os.open(path, flags | SAFE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as err:
        # ELOOP: a symlink appeared after the lstat (FreeBSD says EMLINK); ENXIO: a FIFO
        # without a reader opened for writing. Both mean "not our regular file".
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise _unsafe(path, "a symlink", role) from None
        if err.errno == errno.ENXIO:
            raise _unsafe(path, "a FIFO or device", role) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(path, describe_mode(st.st_mode), role)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: PathLike, max_size: int, role: str = "a file") -> bytes:
    """Read a whole regular file of at most ``max_size`` bytes.

    Raises:
        UnsafeFileError: not a regular file (see :func:`open_regular`).
        ValueError: larger than ``max_size`` (named in the message).
        OSError: it cannot be read.
    """
    fd = open_regular(path, os.O_RDONLY, role=role)
    try:
        size = os.fstat(fd).st_size
        if size > max_size:
            raise ValueError(
                f"{printable(os.fspath(path))}: {size} bytes, more than the {max_size} "
                f"accepted for {role}"
            )
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_size + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_size:  # it grew while we read
                raise ValueError(
                    f"{printable(os.fspath(path))}: more than the {max_size} bytes "
                    f"accepted for {role}"
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def append_bytes(path: PathLike, data: bytes, role: str = "the log file") -> None:
    """Append ``data`` to a regular file with one ``write`` (created if missing).

    Opened ``O_APPEND|O_CREAT|O_NOFOLLOW|O_CLOEXEC``: a record lands whole at the end,
    even with several processes appending, and a symlink is refused, not followed.

    Raises:
        UnsafeFileError: the path is a symlink, FIFO, device or directory.
        OSError: opening or writing failed (ENOSPC, EACCES, EROFS ...).
    """
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644, role)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def append_log_line(path: PathLike, line: str) -> None:
    """Append one line of text to ``ckpt.log``; made :func:`one_line` first.

    Raises:
        UnsafeFileError: ``ckpt.log`` is a symlink or not a regular file.
        OSError: the append failed.
    """
    append_bytes(path, (one_line(line) + "\n").encode("utf-8"), "the log file")


def check_log_file(path: PathLike) -> None:
    """Make sure ``ckpt.log`` can be appended to safely; create it if missing.

    Meant for the engine's constructor, so that a planted link or a FIFO is reported
    at once (with the path) rather than at the first log record.

    Raises:
        UnsafeFileError: ``ckpt.log`` is a symlink, FIFO, device or directory.
        OSError: it cannot be created or opened for appending (EACCES, ENOSPC ...).
    """
    os.close(open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644,
                          "the log file"))


def create_exclusive(path: PathLike, mode: int = 0o644) -> int:
    """Create a new file for writing; never reuses or follows an existing entry.

    Raises:
        FileExistsError: something (a file, a link, anything) is already there.
        OSError: creation failed (ENOSPC, EMFILE ...).
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
                   | _BINARY, mode)


# ------------------------------------------------------------------------ printable

_DEFAULT_LIMIT = 1000


def _escape_char(c: str) -> str:
    code = ord(c)
    if c == "\n":
        return "\\n"
    if c == "\r":
        return "\\r"
    if c == "\t":
        return "\\t"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: Any, limit: int | None = _DEFAULT_LIMIT) -> str:
    """One line of text, safe for a log or terminal, for any value from a checkpoint.

    Control characters (newlines included), format characters (e.g. bidirectional
    overrides), line/paragraph separators and lone surrogates (from non-UTF-8 names)
    are written as ``\\n``, ``\\x1b``, ``\\u202e``, ``\\udcff``; a backslash is doubled
    so that the escaping cannot be imitated. Bytes are decoded with backslash escapes.
    Never raises: a value that cannot be turned into text (a huge int, deep nesting)
    is described instead. Text longer than ``limit`` characters is cut, saying so.
    """
    try:
        if isinstance(value, str):
            text = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            text = bytes(value).decode("utf-8", "backslashreplace")
        elif isinstance(value, os.PathLike):
            text = os.fspath(value)
            if isinstance(text, bytes):
                text = text.decode("utf-8", "backslashreplace")
        elif isinstance(value, int) and not isinstance(value, bool) \
                and value.bit_length() > 1000:
            text = f"<an integer of {value.bit_length()} bits>"
        else:
            text = str(value)
    except Exception as err:  # int-str limit, RecursionError, a user's __str__: say so
        text = f"<{type(value).__name__} that cannot be shown: {type(err).__name__}>"
    cut = 0
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = text[:limit]
    text = _escape(text, backslash=True)
    if cut:
        text += f"...({cut} more characters)"
    return text


def one_line(text: str) -> str:
    """A message made of one line: like :func:`printable`, but backslashes are kept.

    For our own messages, whose untrusted parts were already made :func:`printable`
    (doubling their backslashes again would garble them); a stray newline or control
    character is still escaped, so nothing can start a line of its own.
    """
    return _escape(text, backslash=False)


def _escape(text: str, backslash: bool) -> str:
    if text.isprintable() and not (backslash and "\\" in text):
        return text
    return "".join(
        "\\\\" if (backslash and c == "\\") else c if (c == " " or c.isprintable())
        else _escape_char(c)
        for c in text
    )


def display_path(path: Path | str) -> str:
    """A path for messages: :func:`printable`, never cut."""
    return printable(os.fspath(path), limit=None)
