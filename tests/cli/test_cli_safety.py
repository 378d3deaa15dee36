"""The command line is safe on any tree.

``prune`` never deletes what a restart needs: the checkpoint a restart would load now
(``last``, or the valid one restart falls back to when ``last`` is damaged) and the
newest valid one; ``--keep N`` counts valid checkpoints. No command prints a traceback,
whatever the tree holds: exit 0, 1 or 2, at most one line on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candle_ckpt.cli import main
from candle_ckpt.cli.verify import is_valid
from candle_ckpt.storage.layout import Layout
from tests.helpers.cli import list_json, run_cli, train

Damage = Callable[[Path], None]


def epoch_dir(root: Path, epoch: int) -> Path:
    return root / "ckpts" / "epochs" / f"{epoch:03d}"


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def kept(root: Path) -> list[int]:
    return [c["epoch"] for c in list_json(root)["checkpoints"]]


# ----------------------------------------------------------------------------- prune


def test_prune_keeps_the_fallback_restart_would_load_when_last_is_damaged(run6: Path) -> None:
    # last -> 6 is damaged: restart falls back to 5. The old prune protected only 6 and
    # the best (4), so --keep 1 deleted 5 and the next restart went back to epoch 4.
    flip_byte(epoch_dir(run6, 6) / "model.bin")
    proc = run_cli("prune", run6, "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    assert kept(run6) == [4, 5, 6]  # best, the restart target, and the damaged last
    assert "restart loads 5" in proc.stdout
    assert "left alone: checkpoints that fail verification 6" in proc.stdout
    resumed = train(run6, 6)
    assert resumed["resumed_from"] == 5 and resumed["restored_epoch"] == 5


def test_prune_keep_counts_only_valid_checkpoints(tmp_path: Path) -> None:
    train(tmp_path, 8)  # losses fall every epoch: best = last = 8
    flip_byte(epoch_dir(tmp_path, 7) / "model.bin")
    proc = run_cli("prune", tmp_path, "--keep", "3")
    assert proc.returncode == 0, proc.stderr
    assert "over 7 valid checkpoint(s)" in proc.stdout
    # 3 valid ones kept (8, 6, 5); the damaged 7 is not counted and is left alone.
    assert kept(tmp_path) == [5, 6, 7, 8]
    valid_left = [e for e in kept(tmp_path) if e != 7]
    assert len(valid_left) == 3


def test_prune_keeps_the_newest_valid_checkpoint_when_restart_has_none(run6: Path) -> None:
    # After a rollback to 3, epochs 1-3 are damaged: restart finds nothing valid at or
    # before last. The newest valid checkpoint (6) is what a user rolls forward to;
    # exponential keep, counting ages back from last, would otherwise drop it.
    assert run_cli("rollback", run6, "3").returncode == 0
    for e in (1, 2, 3):
        flip_byte(epoch_dir(run6, e) / "model.bin")
    proc = run_cli("prune", run6, "--keep", "1", "--mode", "exponential")
    assert proc.returncode == 0, proc.stderr
    assert "restart finds no valid checkpoint" in proc.stdout
    assert kept(run6) == [1, 2, 3, 4, 6]  # damaged ones left alone, best 4, newest valid 6


def test_prune_reports_a_deletion_that_fails_and_goes_on(run6: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from candle_ckpt.storage.commit import Committer

    real = Committer.delete_epoch

    def refuse_epoch_2(self: Committer, epoch: int) -> None:
        if epoch == 2:
            raise PermissionError(1, "Operation not permitted")
        real(self, epoch)

    monkeypatch.setattr(Committer, "delete_epoch", refuse_epoch_2)
    rc = main(["prune", str(run6), "--keep", "1"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.strip().splitlines() == [
        "candle-ckpt: error: could not remove 1 checkpoint(s): epoch 2: Operation not permitted"]
    assert kept(run6) == [2, 4, 6]  # 1, 3 and 5 removed all the same
    assert "removed 3 checkpoint(s)" in out


# ----------------------------------------------------------------------------- hostile trees


def _rewrite_info(epoch: int, change: Callable[[dict], object]) -> Damage:
    def damage(root: Path) -> None:
        path = epoch_dir(root, epoch) / "ckpt-info.json"
        info = json.loads(path.read_text())
        result = change(info)
        path.write_text(json.dumps(info if result is None else result))
    return damage


def _write_info_text(epoch: int, text: str) -> Damage:
    def damage(root: Path) -> None:
        (epoch_dir(root, epoch) / "ckpt-info.json").write_text(text)
    return damage


def _set(key: str, value: object) -> Callable[[dict], None]:
    def change(info: dict) -> None:
        info[key] = value
    return change


def _sizes(value: object) -> Callable[[dict], None]:
    def change(info: dict) -> None:
        for entry in info["files"].values():
            entry["size"] = value
    return change


def _info_is_a_directory(root: Path) -> None:
    path = epoch_dir(root, 6) / "ckpt-info.json"
    path.unlink()
    path.mkdir()


def _fifo_for_model_file(root: Path) -> None:
    path = epoch_dir(root, 6) / "model.bin"
    path.unlink()
    os.mkfifo(path)


def _odd_names(root: Path) -> None:
    os.mkdir(os.fsencode(epoch_dir(root, 1)) + b"\xff")  # not UTF-8: not an epoch
    (epoch_dir(root, 5) / "evil\nOK      epoch 9  forged").write_text("x")
    bad = epoch_dir(root, 4)
    info = json.loads((bad / "ckpt-info.json").read_text())
    info["files"]["\x1b[31mred\udcff"] = {"size": 1}
    info["files"]["with\x00nul"] = {"size": 1}
    info["timestamp"] = "2026-01-01\n\x1b[2J"
    (bad / "ckpt-info.json").write_text(json.dumps(info))


def _last_with_a_newline(root: Path) -> None:
    (root / "ckpts" / "last").unlink()
    os.symlink("epochs/006\nforged", root / "ckpts" / "last")


def _epochs_is_a_file(root: Path) -> None:
    shutil.rmtree(root / "ckpts" / "epochs")
    (root / "ckpts" / "epochs").write_text("not a directory")


def _replace(relative: str, make: Callable[[Path], None]) -> Damage:
    def damage(root: Path) -> None:
        path = root / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        make(path)
    return damage


def _epoch_links_outside(root: Path) -> None:
    outside = root.parent / "elsewhere"
    shutil.copytree(epoch_dir(root, 5), outside)
    shutil.rmtree(epoch_dir(root, 5))
    os.symlink(outside, epoch_dir(root, 5))


DAMAGES: dict[str, Damage] = {
    "deep nesting": _write_info_text(6, "[" * 100_000 + "]" * 100_000),
    "400-digit integers": _rewrite_info(6, lambda i: i.update(
        epoch=10 ** 400, metric_value=10 ** 400, time_elapsed=10 ** 400)),
    "lone surrogate": _write_info_text(6, '{"epoch": 6, "save_best_metric": "\\ud800", '
                                          '"metric_value": 1.0, "files": {"\\udcff": {}}}'),
    "float epoch": _rewrite_info(6, _set("epoch", 6.0)),
    "string epoch": _rewrite_info(6, _set("epoch", "6")),
    "null sizes": _rewrite_info(6, _sizes(None)),
    "string sizes": _rewrite_info(6, _sizes("big")),
    "boolean sizes": _rewrite_info(6, _sizes(True)),
    "files a list": _rewrite_info(6, _set("files", ["model.bin"])),
    "files entries not objects": _rewrite_info(6, _set("files", {"model.bin": 3})),
    "escaping manifest names": _rewrite_info(6, _set("files", {
        "../../ckpt.log": {"size": 1}, "/etc/passwd": {"size": 1}})),
    "info a list": _write_info_text(6, "[1, 2]"),
    "info a number": _write_info_text(6, "6"),
    "info not json": _write_info_text(6, "{nope"),
    "info not utf-8": lambda root: (epoch_dir(root, 6) / "ckpt-info.json").write_bytes(
        b"\xff\xfe{}"),
    "info a directory": _info_is_a_directory,
    "info empty object": _write_info_text(6, "{}"),
    "metric a string": _rewrite_info(6, _set("metric_value", "low")),
    "fifo as model file": _fifo_for_model_file,
    "odd file names": _odd_names,
    "last with a newline": _last_with_a_newline,
    "epochs is a file": _epochs_is_a_file,
    "lock is a directory": _replace("ckpt.lock", Path.mkdir),
    "lock is a fifo": _replace("ckpt.lock", os.mkfifo),
    "log is a directory": _replace("ckpt.log", Path.mkdir),
    "log is a fifo": _replace("ckpt.log", os.mkfifo),
    "last is a fifo": _replace("ckpts/last", os.mkfifo),
    "best is a directory": _replace("ckpts/best", Path.mkdir),
    "last is a huge file": _replace("ckpts/last", lambda p: p.write_text("x" * 5_000_000)),
    "epoch links outside": _epoch_links_outside,
    "info a symlink to /dev/zero": _replace("ckpts/epochs/006/ckpt-info.json",
                                            lambda p: os.symlink("/dev/zero", p)),
}

COMMANDS: list[list[str]] = [
    ["list"], ["list", "--json"], ["show"], ["show", "6"], ["show", "4"], ["show", "best"],
    ["show", "6", "--json"], ["verify"], ["verify", "6"], ["plot", "-o", "{out}"],
    ["prune", "--keep", "1", "--dry-run"], ["rollback", "6"], ["prune", "--keep", "1"],
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine") / "save"
    train(directory, 6, "--losses", "0.9,0.5,0.6,0.3,0.4,0.35")
    return directory


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_no_command_prints_a_traceback_on_a_damaged_tree(
        damage: str, pristine: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "run"
    shutil.copytree(pristine, root, symlinks=True)
    DAMAGES[damage](root)
    for command in COMMANDS:
        argv = [command[0], str(root),
                *(a.replace("{out}", str(tmp_path / "m.png")) for a in command[1:])]
        rc = main(argv)
        out, err = capsys.readouterr()
        where = (damage, command, rc, err)
        assert rc in (0, 1, 2), where
        lines = err.strip().splitlines()
        assert len(lines) <= 1, where
        if rc == 2:
            assert lines and lines[0].startswith("candle-ckpt: error: "), where
        assert "a bug in candle-ckpt" not in err, where  # a real cause, not the last resort
        for text in (out, err):
            text.encode("utf-8")  # printable: no lone surrogates reach the terminal
            assert "\x1b" not in text and "\x00" not in text, where
        assert "OK      epoch 9" not in out  # a file name cannot forge an output line


def test_a_planted_log_symlink_is_not_followed(run6: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run6 / "ckpt.log").unlink()
    os.symlink(victim, run6 / "ckpt.log")
    assert run_cli("rollback", run6, "3").returncode == 0
    assert victim.read_text() == "precious\n"
    assert os.readlink(run6 / "ckpts" / "last") == "epochs/003"


def test_odd_names_print_as_escapes_even_on_an_ascii_terminal(pristine: Path,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(pristine, root, symlinks=True)
    _odd_names(root)
    info = epoch_dir(root, 6) / "ckpt-info.json"
    info.write_text(info.read_text().replace('"val_loss"', '"p\\u00e9rte"'))
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    shown = {}
    for command in ("list", "show 4", "show 6", "verify"):
        name, *rest = command.split()
        proc = subprocess.run([sys.executable, "-m", "candle_ckpt", name, str(root), *rest],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode in (0, 1), (command, proc.stderr)
        assert proc.stderr == "" and "Traceback" not in proc.stdout, command
        shown[command] = proc.stdout
    assert "save_best_metric    p\\xe9rte" in shown["show 6"]  # escaped, not an error
    assert "\\x1b[31mred\\udcff" in shown["show 4"]


# ----------------------------------------------------------------------------- fuzz

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
_INFO_KEYS = ["epoch", "files", "model_file", "metric_value", "best_metric_last",
              "save_best_metric", "timestamp", "time_elapsed", "checksum",
              "checksum_algorithm", "epoch_best", "format_version", "metadata"]
_mutations = st.one_of(
    st.tuples(st.just("key"), st.sampled_from(_INFO_KEYS), _json_values),
    st.tuples(st.just("whole"), st.just(""), _json_values),
    st.tuples(st.just("bytes"), st.just(""), st.binary(max_size=64)),
    st.tuples(st.just("entry"), st.sampled_from(["size", "checksum"]), _json_values),
)
_FUZZ_COMMANDS = [["list"], ["list", "--json"], ["show", "6"], ["show", "6", "--json"],
                  ["verify"], ["prune", "--keep", "1", "--dry-run"], ["rollback", "6"]]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations, epoch=st.sampled_from([4, 6]))
def test_fuzzed_ckpt_info_never_makes_a_command_crash(
        pristine: Path, capsys: pytest.CaptureFixture[str],
        mutation: tuple[str, str, object], epoch: int) -> None:
    kind, key, value = mutation
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        shutil.copytree(pristine, root, symlinks=True)
        path = epoch_dir(root, epoch) / "ckpt-info.json"
        if kind == "bytes":
            assert isinstance(value, bytes)
            path.write_bytes(value)
        else:
            info = json.loads(path.read_text())
            if kind == "key":
                info[key] = value
            elif kind == "entry":
                for entry in info["files"].values():
                    entry[key] = value
            else:
                info = value
            path.write_text(json.dumps(info))
        for command in _FUZZ_COMMANDS:
            rc = main([command[0], str(root), *command[1:]])
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert rc in (0, 1, 2) and len(lines) <= 1, (mutation, command, rc, err)
            assert "a bug in candle-ckpt" not in err, (mutation, command, err)
            out.encode("utf-8")
        # Whatever the epoch holds, the checkpoints a restart needs are still there: last
        # (6) when valid, else its fallback (5, never damaged here), and the best (4).
        layout = Layout.ours(root)
        needed = 6 if is_valid(layout, 6) else 5
        assert main(["prune", str(root), "--keep", "1"]) in (0, 2)
        capsys.readouterr()
        assert epoch_dir(root, needed).is_dir() and epoch_dir(root, 4).is_dir()
        assert os.path.lexists(epoch_dir(root, 6))  # last, valid or not


def test_a_bug_of_ours_is_still_one_line_not_a_traceback(
        run6: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import candle_ckpt.cli.parser as parser

    def broken(args: object) -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(parser, "cmd_list", broken)
    assert main(["list", str(run6)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["candle-ckpt: error: unexpected RuntimeError: boom second line "
                                "(a bug in candle-ckpt; please report it with this line)"]
