"""restorer with a fake backend: validate everything, fall back over damage, stop on a
mismatch, and apply only the checkpoint finally chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
from fshelpers import ckpts, engine, train

from candle_ckpt import CheckpointMismatchError, CheckpointNotFoundError, CkptParamError
from candle_ckpt.backends.base import Restored
from candle_ckpt.logs import CkptLog
from candle_ckpt.restorer import Restorer


class FakeBackend:
    """Refuses the epochs named in ``damaged``/``mismatch``; records what it applied."""

    name = "fake"

    def __init__(self, damaged=(), mismatch=(), misuse=False) -> None:
        self.damaged, self.mismatch, self.misuse = set(damaged), set(mismatch), misuse
        self.checked: list[int] = []
        self.applied: list[int] = []

    def capture(self, live):
        raise AssertionError("not used")

    def write(self, snapshot, sink):
        raise AssertionError("not used")

    def load(self, directory: Path, info: dict) -> Restored:
        epoch = int(directory.name)
        self.checked.append(epoch)
        if self.misuse:
            raise CkptParamError("restart: no model")
        if epoch in self.mismatch:
            raise CheckpointMismatchError(f"epoch {epoch}: layer is (3,) vs (4,)")
        if epoch in self.damaged:
            raise ValueError("truncated tensor data")
        return Restored(lambda: self.applied.append(epoch) or ["a note"])


def three(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3])


def restorer(tmp_path, mode="auto"):
    return Restorer(tmp_path, mode, False, CkptLog(tmp_path / "ckpt.log", None, False))


def test_damage_falls_back_and_only_the_chosen_checkpoint_is_applied(tmp_path):
    three(tmp_path)
    backend = FakeBackend(damaged={3, 2})
    result = restorer(tmp_path).restart(backend)
    assert result is not None and result.epoch == 1
    assert backend.checked == [3, 2, 1] and backend.applied == [1]
    assert [s["epoch"] for s in result.J["skipped"]] == [3, 2]
    assert "truncated" in result.J["skipped"][0]["reason"]
    assert "a note" in (tmp_path / "ckpt.log").read_text()


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_a_mismatch_stops_at_once_without_falling_back_or_applying(tmp_path, mode):
    three(tmp_path)
    backend = FakeBackend(mismatch={3})
    with pytest.raises(CheckpointMismatchError, match="epoch 3"):
        restorer(tmp_path, mode).restart(backend)
    assert backend.checked == [3] and backend.applied == []


def test_misuse_is_not_mistaken_for_damage(tmp_path):
    three(tmp_path)
    backend = FakeBackend(misuse=True)
    with pytest.raises(CkptParamError):
        restorer(tmp_path).restart(backend)
    assert backend.checked == [3]


def test_nothing_valid(tmp_path):
    three(tmp_path)
    assert restorer(tmp_path).restart(FakeBackend(damaged={1, 2, 3})) is None
    with pytest.raises(CheckpointNotFoundError, match="epoch 3"):
        restorer(tmp_path, "required").restart(FakeBackend(damaged={1, 2, 3}))


def test_an_invalid_info_record_is_damage(tmp_path):
    three(tmp_path)
    info = ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json"
    text = info.read_text().replace('"best_metric_last": ', '"best_metric_last": "x", "_": ')
    info.write_text(text)
    backend = FakeBackend()
    result = restorer(tmp_path).restart(backend)
    assert result is not None and result.epoch == 2 and backend.checked == [2]
    assert "best_metric_last" in result.J["skipped"][0]["reason"]


def test_peek_best_reads_what_restart_would_use_and_never_raises(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3], metrics={1: 0.3, 2: 0.1, 3: 0.2})
    best = restorer(tmp_path).peek_best()
    assert best is not None and (best.value, best.epoch) == (0.1, 2)
    (ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json").write_text("[" * 100000)
    assert restorer(tmp_path).peek_best() is None
