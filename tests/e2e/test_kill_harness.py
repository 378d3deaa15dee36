"""Bounded runs of the random kill -9 harness (the on-demand run does >= 200 kills)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.harness import check_restart, run


def test_check_restart_accepts_resume_at_newest_returned_save() -> None:
    lines = ["restart 0 aa", "saving 1 d1", "saved 1", "saving 2 d2", "saved 2",
             "saving 3 d3", "restart 2 d2"]
    assert check_restart(lines, async_=False) is None


def test_check_restart_accepts_resume_at_committed_but_unreturned_save() -> None:
    lines = ["restart 0 aa", "saving 1 d1", "saved 1", "saving 2 d2", "restart 2 d2"]
    assert check_restart(lines, async_=False) is None


def test_check_restart_rejects_losing_a_returned_save() -> None:
    lines = ["restart 0 aa", "saving 1 d1", "saved 1", "saving 2 d2", "saved 2",
             "restart 1 d1"]
    assert "expected between 2" in (check_restart(lines, async_=False) or "")


def test_check_restart_rejects_wrong_weights() -> None:
    lines = ["restart 0 aa", "saving 1 d1", "saved 1", "restart 1 zz"]
    assert "weights zz" in (check_restart(lines, async_=False) or "")


def test_check_restart_async_only_requires_the_save_before_the_last() -> None:
    lines = ["restart 0 aa", "saving 1 d1", "saved 1", "saving 2 d2", "saved 2",
             "restart 1 d1"]
    assert check_restart(lines, async_=True) is None


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_random_kills_of_a_files_run_never_lose_or_corrupt(tmp_path: Path, async_: bool) -> None:
    outcome = run("files", 8, seed=7, workdir=tmp_path, async_=async_, checksum=True)
    assert outcome.bad == []
    assert outcome.restarts_ok == outcome.kills


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_random_kills_of_a_torch_run_never_lose_or_corrupt(tmp_path: Path, async_: bool) -> None:
    pytest.importorskip("torch")
    outcome = run("torch", 6, seed=11, workdir=tmp_path, async_=async_)
    assert outcome.bad == []
    assert outcome.restarts_ok == outcome.kills


def test_random_kills_of_a_keras_run_never_lose_or_corrupt(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    outcome = run("keras", 4, seed=13, workdir=tmp_path)
    assert outcome.bad == []
    assert outcome.restarts_ok == outcome.kills


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_random_kills_of_a_dedup_files_run_never_lose_or_corrupt(tmp_path: Path,
                                                                 async_: bool) -> None:
    outcome = run("files", 8, seed=17, workdir=tmp_path, async_=async_, checksum=True,
                  dedup=True)
    assert outcome.bad == []
    assert outcome.restarts_ok == outcome.kills


def test_random_kills_of_a_dedup_torch_run_never_lose_or_corrupt(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    outcome = run("torch", 6, seed=19, workdir=tmp_path, checksum=True, dedup=True)
    assert outcome.bad == []
    assert outcome.restarts_ok == outcome.kills
