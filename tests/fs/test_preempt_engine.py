"""Pre-emption in the engine (framework-free backend): handlers installed, chained and
restored; a signal during a save; time-based and wall-clock saves with a fake clock;
mid-epoch checkpoints in restart's fallback order and the keep policy."""

from __future__ import annotations

import os
import signal

import pytest

from candle_ckpt import CkptParamError, preempt
from candle_ckpt.storage import fsio
from candle_ckpt.storage.layout import CkptKey, Layout, parse_key
from tests.helpers.fs import blobs, ckpts, engine, link_target, train


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(preempt, "monotonic", c)
    monkeypatch.setattr(preempt, "wall_clock", c)
    return c


def test_handlers_chain_to_the_previous_one_and_are_restored(tmp_path):
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGUSR1, mine)
    try:
        e = engine(tmp_path, ckpt_signals="SIGUSR1")
        e._preempt.start()  # what set_model / on_train_begin do
        assert signal.getsignal(signal.SIGUSR1) is not mine
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1] and e._preempt.due() is not None
        e.on_train_end()
        assert signal.getsignal(signal.SIGUSR1) is mine
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_auto_installs_nothing_outside_slurm_and_both_under_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert preempt.parse_signals("auto") == ()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert preempt.parse_signals("auto") == (signal.SIGUSR1, signal.SIGTERM)
    assert preempt.parse_signals(["USR2", "SIGTERM"]) == (signal.SIGUSR2, signal.SIGTERM)
    assert preempt.parse_signals("none") == ()


@pytest.mark.parametrize("bad", ["SIGKILL", "SIGNOPE", "usr9", 12])
def test_bad_signal_names_are_refused_naming_the_parameter(tmp_path, bad):
    with pytest.raises(CkptParamError, match="ckpt_signals"):
        engine(tmp_path, ckpt_signals=bad if not isinstance(bad, int) else [bad])


def test_a_signal_during_a_save_does_not_interrupt_it(tmp_path, monkeypatch):
    e = engine(tmp_path, ckpt_signals="SIGUSR1")
    e._preempt.start()
    sent = []

    def on_step(name):
        if name == "info-written" and not sent:
            sent.append(name)
            os.kill(os.getpid(), signal.SIGUSR1)  # lands in the middle of the commit

    monkeypatch.setattr(fsio, "_on_step", on_step)
    assert train(e, [1]) == [1]  # the save completed normally
    assert link_target(ckpts(tmp_path) / "last") == "epochs/001"
    e.set_model(blobs(2))
    assert e.ckpt_batch(1, 4) is True and e.stop_requested
    assert link_target(ckpts(tmp_path) / "last") == "epochs/001+000005"
    assert not e.ckpt_epoch(1, "-", 0.1)  # the interrupted epoch is not saved as complete
    e.close()
    with engine(tmp_path) as again:
        J = again.restart()
    assert J is not None and (J["epoch"], J["batch"]) == (1, 5) and again.state == blobs(2)


def test_time_based_saves_follow_the_interval_and_do_not_stop(tmp_path, clock):
    with engine(tmp_path, ckpt_save_interval_seconds=60, ckpt_save_best=False,
                ckpt_save_interval=100) as e:
        e.set_model(blobs(1))
        assert e.ckpt_batch(0, 0) is False and Layout.ours(tmp_path).complete_keys() == []
        clock.now += 61
        assert e.ckpt_batch(0, 1) is False and not e.stop_requested
        assert Layout.ours(tmp_path).complete_keys() == [CkptKey(0, 2)]
        clock.now += 30
        assert e.ckpt_batch(0, 2) is False
        clock.now += 31
        e.ckpt_batch(0, 5)  # the later one supersedes the earlier mid-epoch checkpoint
        assert Layout.ours(tmp_path).complete_keys() == [CkptKey(0, 6)]


def test_the_wall_clock_limit_saves_and_stops_margin_seconds_before(tmp_path, clock):
    end = clock.now + 1000
    with engine(tmp_path, ckpt_walltime_end=str(end), ckpt_walltime_margin=100) as e:
        e.set_model(blobs(1))
        clock.now = end - 101
        assert e.ckpt_batch(2, 3) is False
        clock.now = end - 99
        assert e.ckpt_batch(2, 4) is True and e.stop_requested
    assert link_target(ckpts(tmp_path) / "last") == "epochs/002+000005"
    assert "wall-clock limit" in (tmp_path / "ckpt.log").read_text()


def test_slurm_job_end_time_is_read_when_auto(tmp_path, monkeypatch, clock):
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(clock.now + 50)))
    with engine(tmp_path, ckpt_walltime_margin=60) as e:
        e.set_model(blobs(1))
        assert e.ckpt_batch(0, 0) is True


def _fake_scontrol(tmp_path, monkeypatch):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    return calls


@pytest.mark.parametrize(("requeue", "expected"), [("auto", True), ("off", False)])
def test_a_wall_clock_stop_under_slurm_requeues_the_job_when_auto(
        tmp_path, monkeypatch, clock, requeue, expected):
    calls = _fake_scontrol(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(clock.now + 50)))
    with engine(tmp_path / "run", ckpt_walltime_margin=60, ckpt_signals="none",
                ckpt_requeue=requeue) as e:
        e.set_model(blobs(1))
        assert e.ckpt_batch(0, 0) is True
    assert calls.exists() == expected
    if expected:
        assert calls.read_text().split() == ["requeue", "4242"]
        assert "requeued SLURM job 4242" in (tmp_path / "run" / "ckpt.log").read_text()


def test_a_sigterm_stop_under_slurm_does_not_requeue_when_auto(tmp_path, monkeypatch):
    calls = _fake_scontrol(tmp_path, monkeypatch)
    with engine(tmp_path / "run", ckpt_signals="SIGTERM") as e:
        e.set_model(blobs(1))
        e._preempt.start()
        os.kill(os.getpid(), signal.SIGTERM)
        assert e.ckpt_batch(0, 0) is True
    assert not calls.exists()


def test_a_later_complete_epoch_supersedes_mid_epoch_checkpoints(tmp_path, clock):
    with engine(tmp_path, ckpt_save_interval_seconds=10) as e:
        train(e, [1])
        clock.now += 11
        e.set_model(blobs(2))
        e.ckpt_batch(1, 2)
        assert CkptKey(1, 3) in Layout.ours(tmp_path).complete_keys()
        train(e, [2])
    assert Layout.ours(tmp_path).complete_keys() == [CkptKey(1), CkptKey(2)]


def test_restart_falls_back_across_mid_epoch_checkpoints_in_order(tmp_path, clock):
    with engine(tmp_path, ckpt_save_interval_seconds=10, ckpt_keep_mode="all") as e:
        train(e, [1])
        clock.now += 11
        e.set_model(blobs(50))
        e.ckpt_batch(1, 2)  # epochs/001+000003, superseded later
        train(e, [2])
        clock.now += 11
        e.set_model(blobs(60))
        e.ckpt_batch(2, 6)  # epochs/002+000007
    newest = ckpts(tmp_path) / "epochs" / "002+000007" / "model.bin"
    newest.write_bytes(b"damaged")
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and (J["epoch"], J["batch"]) == (2, 0) and e.state == blobs(2)
    assert J["skipped"][0]["batch"] == 7
    assert J["skipped"][0]["path"] == str(newest.parent)


def test_checkpoint_names_parse_one_way_only():
    assert parse_key("002") == CkptKey(2) and parse_key("002+000150") == CkptKey(2, 150)
    for bad in ("002+150", "2+000150", "002+000000", "002+", "+000001", "002+0001500x"):
        assert parse_key(bad) is None, bad
    assert CkptKey(2) < CkptKey(2, 1) < CkptKey(3)


def test_candle_ckpt_list_shows_mid_epoch_checkpoints(tmp_path, clock, capsys):
    from candle_ckpt.cli import main

    with engine(tmp_path, ckpt_save_interval_seconds=10, ckpt_signals="none") as e:
        train(e, [1])
        clock.now += 11
        e.set_model(blobs(2))
        e.ckpt_batch(1, 2)
    assert main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.strip().startswith("1+3")]
    assert "last -> epochs/001+000003" in out
    assert row and "last" in row[0] and "mid-epoch" in row[0], out
