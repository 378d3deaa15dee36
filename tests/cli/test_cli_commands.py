"""list, show, verify, rollback, prune and plot on directories written by real runs.

Every command runs in a subprocess (``python -m candle_ckpt``), as a user runs it; the
directories are written by ``cli_trainer.py`` through the real engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from candle_ckpt.policy import epochs_to_keep
from tests.helpers.cli import assert_one_line_error, list_json, run_cli, train


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def epoch_dir(root: Path, epoch: int) -> Path:
    return root / "ckpts" / "epochs" / f"{epoch:03d}"


def last_target(root: Path) -> str:
    return os.readlink(root / "ckpts" / "last")


# ----------------------------------------------------------------------------- list / show


def test_list_table_has_one_row_per_checkpoint_with_last_and_best(run6: Path) -> None:
    proc = run_cli("list", run6)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("EPOCH"))
    assert lines[header].split() == ["EPOCH", "val_loss", "MARK", "SIZE", "ALONE", "SAVED",
                                     "STATUS"]
    end = lines.index("", header)
    rows = {int(line.split()[0]): line for line in lines[header + 1:end]}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert " best " in rows[4] and " 0.3 " in rows[4]
    assert " last " in rows[6] and " 0.35 " in rows[6]
    assert all(row.rstrip().endswith("complete") for row in rows.values())
    assert "last -> epochs/006" in proc.stdout and "best -> epochs/004" in proc.stdout
    summary = lines[end + 1]
    assert summary.startswith("6 checkpoints: sizes add up to ") and "on disk" in summary


def test_list_gives_each_checkpoints_size_what_it_alone_holds_and_the_disk_use(
        run6: Path) -> None:
    data = list_json(run6)
    sizes = {c["epoch"]: c["size"] for c in data["checkpoints"]}
    for c in data["checkpoints"]:
        directory = Path(c["path"])
        on_disk = sum(f.stat().st_size for f in directory.iterdir())
        assert c["size"] == on_disk and c["alone"] == on_disk  # no files are shared
    assert data["sizes_sum"] == sum(sizes.values())
    assert data["disk_use"] >= data["sizes_sum"]  # plus the log, links and leftovers


def test_list_json_gives_scripts_every_field(run6: Path) -> None:
    data = list_json(run6)
    assert data["layout"] == "candle-ckpt"
    assert data["last"]["epoch"] == 6 and data["best"]["epoch"] == 4
    rows = {c["epoch"]: c for c in data["checkpoints"]}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert [e for e, c in rows.items() if c["last"]] == [6]
    assert [e for e, c in rows.items() if c["best"]] == [4]
    assert rows[2]["metric"] == "val_loss" and rows[2]["metric_value"] == 0.5
    for epoch, row in rows.items():
        on_disk = sum(p.stat().st_size for p in epoch_dir(run6, epoch).iterdir())
        assert row["size"] == on_disk and row["status"] == "complete" and row["timestamp"]


def test_console_script_is_the_same_command(run6: Path) -> None:
    script = Path(sys.executable).with_name("candle-ckpt")
    if not script.exists():
        pytest.skip("candle-ckpt console script not installed next to this python")
    proc = subprocess.run([str(script), "list", str(run6), "--json"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == list_json(run6)


def test_list_accepts_the_ckpts_subdirectory(run6: Path) -> None:
    assert list_json(run6 / "ckpts")["directory"] == str(run6.absolute())


def test_show_prints_metadata_of_last_best_and_a_number(run6: Path) -> None:
    last = run_cli("show", run6)
    assert last.returncode == 0, last.stderr
    assert "epochs/006" in last.stdout and "(last)" in last.stdout
    assert "metric_value" in last.stdout and "0.35" in last.stdout
    assert "model.bin" in last.stdout and "1,006 bytes" in last.stdout
    best = run_cli("show", run6, "best")
    assert "epochs/004" in best.stdout and "(best)" in best.stdout
    two = run_cli("show", run6, "2", "--json")
    assert json.loads(two.stdout)["epoch"] == 2


# ----------------------------------------------------------------------------- verify


def test_verify_passes_an_intact_directory(run6: Path) -> None:
    proc = run_cli("verify", run6)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("OK      epoch") == 6
    assert "xxh3_64 checksums" in proc.stdout


def test_verify_catches_a_flipped_byte_and_names_the_file(run6: Path) -> None:
    bad = epoch_dir(run6, 5) / "model.bin"
    size = bad.stat().st_size
    flip_byte(bad)
    assert bad.stat().st_size == size  # only a checksum can see this
    proc = run_cli("verify", run6)
    assert proc.returncode == 1
    assert f"{bad}: checksum" in proc.stdout
    assert "FAILED  epoch 5" in proc.stdout and proc.stdout.count("OK      epoch") == 5
    # The verdict goes where "all hold" goes: stdout (stderr is for errors, exit 2).
    assert "1 of 6 checked failed" in proc.stdout and proc.stderr == ""
    only_4 = run_cli("verify", run6, "4")
    assert only_4.returncode == 0 and "epoch 5" not in only_4.stdout


def test_verify_columns_line_up_past_epoch_9(tmp_path: Path) -> None:
    train(tmp_path, 11, "--no-checksum")
    proc = run_cli("verify", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("OK")]
    assert len(rows) == 11
    assert len({line.index(str(tmp_path)) for line in rows}) == 1  # paths start in one column
    assert "OK      epoch  9  " in proc.stdout and "OK      epoch 10  " in proc.stdout


def test_verify_checks_sizes_of_a_run_without_checksums(tmp_path: Path) -> None:
    train(tmp_path, 3, "--no-checksum")
    bad = epoch_dir(tmp_path, 2) / "opt.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    proc = run_cli("verify", tmp_path)
    assert proc.returncode == 1
    assert f"{bad}: size 299 != 300 recorded" in proc.stdout
    assert "sizes only" in proc.stdout  # the intact ones say what was checked


def test_verify_reports_an_incomplete_checkpoint(run6: Path) -> None:
    (epoch_dir(run6, 3) / "ckpt-info.json").unlink()
    proc = run_cli("verify", run6)
    assert proc.returncode == 1
    assert "ckpt-info.json: missing (incomplete checkpoint)" in proc.stdout


# ----------------------------------------------------------------------------- rollback


def test_rollback_then_restart_resumes_at_that_epoch(run6: Path) -> None:
    proc = run_cli("rollback", run6, "3")
    assert proc.returncode == 0, proc.stderr
    assert "last -> epochs/003 (was epochs/006)" in proc.stdout
    assert last_target(run6) == "epochs/003"  # relative: the tree can be moved
    assert list_json(run6)["last"]["epoch"] == 3
    assert "rollback: last -> epochs/003" in (run6 / "ckpt.log").read_text()

    resumed = train(run6, 6)
    assert resumed["resumed_from"] == 3
    assert resumed["restored_epoch"] == 3  # the state of epoch 3 was loaded
    assert resumed["saved"] == [4, 5, 6]
    assert last_target(run6) == "epochs/006"
    assert run_cli("verify", run6).returncode == 0


def test_rollback_to_best(run6: Path) -> None:
    proc = run_cli("rollback", run6, "best")
    assert proc.returncode == 0, proc.stderr
    assert last_target(run6) == "epochs/004"


def test_rollback_refuses_an_epoch_that_fails_verification(run6: Path) -> None:
    bad = epoch_dir(run6, 3) / "model.bin"
    flip_byte(bad)
    line = assert_one_line_error(run_cli("rollback", run6, "3"), "refusing", str(bad))
    assert "checksum" in line
    assert last_target(run6) == "epochs/006"


def test_rollback_takes_a_number_or_best_as_its_help_says(run6: Path) -> None:
    assert_one_line_error(run_cli("rollback", run6, "last"), "'last' is not accepted",
                          "an epoch number or 'best'")
    assert "an epoch number, or 'best'" in run_cli("rollback", "--help").stdout
    assert last_target(run6) == "epochs/006"


def test_rollback_refuses_a_missing_epoch(run6: Path) -> None:
    assert_one_line_error(run_cli("rollback", run6, "9"), "no epoch 9", "1, 2, 3, 4, 5, 6")
    assert last_target(run6) == "epochs/006"


def test_changes_refuse_a_directory_locked_by_a_running_training(run6: Path) -> None:
    # Another process holds the writer lock, as a running training does, until we close
    # its stdin.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from candle_ckpt.storage.lock import acquire_lock;"
         "from candle_ckpt.storage.layout import Layout;"
         "acquire_lock(Layout.ours(Path(sys.argv[1])));"
         "print('locked', flush=True); sys.stdin.read()", str(run6)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for args in (("rollback", run6, "3"), ("prune", run6, "--keep", "1")):
            assert_one_line_error(run_cli(*args), "in use by another process",
                                  f"pid {holder.pid}")
        assert last_target(run6) == "epochs/006"
        assert len(list_json(run6)["checkpoints"]) == 6
        assert run_cli("prune", run6, "--keep", "1", "--dry-run").returncode == 0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert run_cli("rollback", run6, "3").returncode == 0  # free again


# ----------------------------------------------------------------------------- prune


def test_prune_never_removes_last_or_best_and_reports_space(tmp_path: Path) -> None:
    losses = "0.9,0.2,0.8,0.7,0.6,0.5,0.45,0.4"  # best: epoch 2
    train(tmp_path, 8, "--losses", losses)
    sizes = {e: sum(p.stat().st_size for p in epoch_dir(tmp_path, e).iterdir())
             for e in range(1, 9)}

    dry = run_cli("prune", tmp_path, "--keep", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [c["epoch"] for c in list_json(tmp_path)["checkpoints"]] == list(range(1, 9))
    freed = sum(sizes[e] for e in (1, 3, 4, 5, 6))
    assert "would free" in dry.stdout and f"({freed:,} bytes)" in dry.stdout

    proc = run_cli("prune", tmp_path, "--keep", "2")
    assert proc.returncode == 0, proc.stderr
    assert [c["epoch"] for c in list_json(tmp_path)["checkpoints"]] == [2, 7, 8]
    for e in (1, 3, 4, 5, 6):
        assert f"removed {epoch_dir(tmp_path, e)}" in proc.stdout
    assert "removed 5 checkpoint(s), freed" in proc.stdout
    assert f"({freed:,} bytes)" in proc.stdout
    assert run_cli("verify", tmp_path).returncode == 0
    assert "prune (linear/2): removed epochs/001" in (tmp_path / "ckpt.log").read_text()


def test_prune_keep_bytes_removes_the_oldest_until_the_rest_fits(tmp_path: Path) -> None:
    losses = "0.9,0.2,0.8,0.7,0.6,0.5,0.45,0.4"  # best: epoch 2
    train(tmp_path, 8, "--losses", losses)
    sizes = {e: sum(p.stat().st_size for p in epoch_dir(tmp_path, e).iterdir())
             for e in range(1, 9)}
    budget = sizes[2] + sizes[7] + sizes[8] + sizes[6] // 2  # room for three of them
    proc = run_cli("prune", tmp_path, "--keep-bytes", str(budget))
    assert proc.returncode == 0, proc.stderr
    assert [c["epoch"] for c in list_json(tmp_path)["checkpoints"]] == [2, 7, 8]
    assert "keep policy all, at most" in proc.stdout

    both = run_cli("prune", tmp_path, "--keep", "5", "--keep-bytes", "1")
    assert both.returncode == 0, both.stderr
    assert "cannot be met" in both.stdout  # last (8) and best (2) stay whatever the budget
    assert [c["epoch"] for c in list_json(tmp_path)["checkpoints"]] == [2, 8]


@pytest.mark.parametrize(("args", "message"), [
    ((), "give --keep N, --keep-bytes SIZE or both"),
    (("--keep-bytes", "lots"), "'lots' is not a size"),
])
def test_prune_without_a_limit_or_with_a_bad_size_says_what_to_give(
        run6: Path, args: tuple[str, ...], message: str) -> None:
    proc = run_cli("prune", run6, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(list_json(run6)["checkpoints"]) == 6


def test_prune_exponential_keeps_recent_and_spaced_out_ones(tmp_path: Path) -> None:
    train(tmp_path, 12)  # losses fall every epoch: best is last
    proc = run_cli("prune", tmp_path, "--keep", "4", "--mode", "exponential")
    assert proc.returncode == 0, proc.stderr
    kept = [c["epoch"] for c in list_json(tmp_path)["checkpoints"]]
    # The training policy: newest of each age band 1, 2-3, 4-7, 8-15 -> 11, 10, 8, 4 plus
    # the newest (12, also best), then the oldest dropped down to the limit of 4.
    assert kept == sorted(epochs_to_keep("exponential", 4, range(1, 13), 12, 12, {12}))
    assert kept == [8, 10, 11, 12]


def test_prune_after_rollback_keeps_the_rolled_back_last(run6: Path) -> None:
    assert run_cli("rollback", run6, "2").returncode == 0
    proc = run_cli("prune", run6, "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    kept = [c["epoch"] for c in list_json(run6)["checkpoints"]]
    assert 2 in kept and 4 in kept  # last and best


# ----------------------------------------------------------------------------- plot


def test_plot_writes_a_png(run6: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "metric.png"
    proc = run_cli("plot", run6, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "6 epoch(s) of val_loss, best epoch 4" in proc.stdout


def test_plot_without_matplotlib_says_how_to_install_it(run6: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; from candle_ckpt.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "plot", str(run6), "-o",
                           str(tmp_path / "x.png")], capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "pip install matplotlib", "pip install -e '.[plot]'")
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", [
    ("list",), ("show",), ("verify",), ("rollback", "1"), ("prune", "--keep", "1"),
    ("plot", "-o", "x.png"),
])
def test_no_such_directory_is_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "nope"
    args = (command[0], missing, *command[1:])
    assert_one_line_error(run_cli(*args, cwd=tmp_path), "no such directory", str(missing))


def test_not_a_checkpoint_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2\n")
    assert_one_line_error(run_cli("list", tmp_path), "not a checkpoint directory")
    assert_one_line_error(run_cli("verify", tmp_path / "data.csv"), "not a directory")


def test_unknown_epoch_is_one_line(run6: Path) -> None:
    assert_one_line_error(run_cli("show", run6, "42"), "no epoch 42")
    assert_one_line_error(run_cli("verify", run6, "42"), "no epoch 42")
    assert_one_line_error(run_cli("show", run6, "latest"), "'latest'")


@pytest.mark.parametrize("command", ["list", "show", "verify", "rollback", "prune", "plot",
                                     "demo"])
def test_every_subcommand_help_has_a_description_and_explains_dir(command: str) -> None:
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    usage, description = proc.stdout.split("\n\n")[:2]
    assert usage.startswith(f"usage: candle-ckpt {command}")
    assert len(description.split()) >= 8, description  # a sentence, not the usage again
    if command != "demo":
        assert "ckpt_directory" in proc.stdout.split("DIR", 2)[-1]  # DIR has help text


def test_the_demo_directory_is_accepted_for_its_interrupted_run(tmp_path: Path) -> None:
    (tmp_path / ".candle-ckpt-demo").write_text("made by candle-ckpt demo\n")
    train(tmp_path / "interrupted", 2)
    data = list_json(tmp_path)
    assert data["directory"] == str(tmp_path / "interrupted")
    assert [c["epoch"] for c in data["checkpoints"]] == [1, 2]
    assert run_cli("verify", tmp_path).returncode == 0


def test_bad_arguments_exit_2_with_usage(run6: Path) -> None:
    proc = run_cli("prune", run6, "--keep", "0")
    assert proc.returncode == 2 and "must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
