"""``CandleCkptKeras.dataset`` on real Keras: each epoch's order depends on (seed, epoch)
alone, a resumed epoch skips what was trained without reading it, and ``data-order.json``
is checked at restart like every other file of a checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import candle_ckpt as candle  # noqa: E402
from candle_ckpt.backends.keras.data import (  # noqa: E402
    DATA_ORDER_FILE,
    DataOrder,
    ResumableData,
    epoch_order,
)
from candle_ckpt.errors import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointMismatchError,
    CkptParamError,
)

SAMPLES, BATCH = 30, 4  # 8 batches, the last one of 2


# ------------------------------------------------------------------------ helpers
def arrays() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(SAMPLES * 3, dtype="float32").reshape(SAMPLES, 3)
    return x, x[:, :1] * 2


def model() -> Any:
    keras.utils.set_random_seed(4)
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                          keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return m


def engine(tmp_path: Path, **extra: Any) -> Any:
    g = {"epochs": 2, "ckpt_directory": str(tmp_path / "save"), "ckpt_signals": "SIGUSR1",
         "ckpt_save_best_metric": "loss", **extra}
    return candle.CandleCkptKeras(g, verbose=False)


def epoch_batches(data: ResumableData, epoch: int) -> list[Any]:
    """What fit reads in ``epoch`` (the callback begins it, as in fit)."""
    data.begin_epoch(epoch)
    data.on_epoch_begin()
    batches = list(data.get_numpy_iterator())
    data.on_epoch_end()
    return batches


def first_column(batches: list[Any]) -> list[int]:
    """The samples of array batches, by their first value (x[i, 0] == 3 * i)."""
    return [int(v) // 3 for b in batches for v in b[0][:, 0]]


class Counted(keras.utils.PyDataset):
    """Eight batches; records every index read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[int] = []

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self.read.append(int(index))
        x = np.full((2, 3), index, dtype="float32")
        return x, x[:, :1]


class SignalAt(keras.callbacks.Callback):
    """Sends this process SIGUSR1 after batch ``batch`` of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = -1
        self.trained = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.trained += 1
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)


def stopped_mid_epoch(tmp_path: Path, batch: int = 2, **settings: Any) -> Path:
    """Train epoch 1, then stop by a real SIGUSR1 after ``batch`` + 1 batches of epoch 2;
    the mid-epoch checkpoint's directory."""
    m = model()
    ckpt = engine(tmp_path, **settings)
    ckpt.set_model(m)
    assert ckpt.restart(m) is None
    x, y = arrays()
    data = ckpt.dataset(x, y, batch_size=BATCH, seed=9)
    m.fit(data, epochs=2, callbacks=[SignalAt(1, batch), ckpt], verbose=0)
    assert ckpt.stop_requested
    last = tmp_path / "save" / "ckpts" / os.readlink(tmp_path / "save" / "ckpts" / "last")
    assert last.name == f"001+{batch + 1:06d}"
    return last


# ------------------------------------------------------------------------ the order
def test_the_order_of_an_epoch_depends_on_seed_and_epoch_alone() -> None:
    first = epoch_order(7, 3, 100)
    np.random.seed(1)
    random.seed(1)
    keras.utils.set_random_seed(99)
    assert np.array_equal(epoch_order(7, 3, 100), first)
    assert sorted(first.tolist()) == list(range(100))
    assert not np.array_equal(epoch_order(7, 4, 100), first)
    assert not np.array_equal(epoch_order(8, 3, 100), first)


def test_every_epoch_has_its_own_order_and_reading_it_draws_from_no_global_rng(
        tmp_path: Path) -> None:
    x, y = arrays()
    ckpt = engine(tmp_path)
    data = ckpt.dataset(x, y, batch_size=BATCH, seed=3)
    states = (np.random.get_state()[1].copy(), random.getstate())
    epoch0, epoch1 = first_column(epoch_batches(data, 0)), first_column(epoch_batches(data, 1))
    assert np.array_equal(np.random.get_state()[1], states[0])
    assert random.getstate() == states[1]
    assert sorted(epoch0) == sorted(epoch1) == list(range(SAMPLES))  # each sample once
    assert epoch0 != epoch1
    again = ckpt.dataset(x, y, batch_size=BATCH, seed=3)
    assert first_column(epoch_batches(again, 1)) == epoch1  # a new process: the same
    ckpt.close()


def test_shuffle_false_reads_the_arrays_in_their_order_and_batches_end_partial(
        tmp_path: Path) -> None:
    x, y = arrays()
    ckpt = engine(tmp_path)
    data = ckpt.dataset(x, y, batch_size=BATCH, shuffle=False)
    batches = epoch_batches(data, 5)
    assert first_column(batches) == list(range(SAMPLES))
    assert [len(b[0]) for b in batches] == [4] * 7 + [2]
    assert (data.num_batches, data.batch_size, data.partial_batch_size) == (8, 4, 2)
    ckpt.close()


# ------------------------------------------------------------------------ skipping
def test_a_resumed_epoch_yields_the_rest_of_its_order(tmp_path: Path) -> None:
    x, y = arrays()
    ckpt = engine(tmp_path)
    data = ckpt.dataset(x, y, batch_size=BATCH, seed=3)
    whole = first_column(epoch_batches(data, 2))
    data.resume_from(data.record(2, 3))
    assert data.begin_epoch(2) == 3
    rest = first_column(list(data.get_numpy_iterator()))
    assert rest == whole[3 * BATCH:]
    assert data.begin_epoch(3) == 0  # only the interrupted epoch is shortened
    ckpt.close()


def test_a_resumed_pydataset_epoch_never_reads_the_batches_already_trained(
        tmp_path: Path) -> None:
    source = Counted()
    ckpt = engine(tmp_path)
    data = ckpt.dataset(source, seed=5)
    epoch_batches(data, 1)
    order = list(source.read)
    assert sorted(order) == list(range(8)) and order != list(range(8))
    source.read.clear()
    data.resume_from(data.record(1, 5))
    batches = epoch_batches(data, 1)
    assert source.read == order[5:]
    assert [int(b[0][0, 0]) for b in batches] == order[5:]
    ckpt.close()


def test_a_resumed_tf_data_epoch_skips_with_skip(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    pipeline = tf.data.Dataset.range(10).map(lambda i: (tf.fill([2, 1], i), i)).batch(2)
    ckpt = engine(tmp_path)
    data = ckpt.dataset(pipeline, shuffle=False)
    assert data.num_batches == 5
    data.resume_from(data.record(0, 3))
    data.begin_epoch(0)
    assert [b[1].tolist() for b in data.get_numpy_iterator()] == [[6, 7], [8, 9]]
    data.begin_epoch(1)
    assert len(list(data.get_tf_dataset())) == 5
    ckpt.close()


# ------------------------------------------------------------------------ the record
def test_a_mid_epoch_checkpoint_records_the_data_and_the_position(tmp_path: Path) -> None:
    last = stopped_mid_epoch(tmp_path)
    info = json.loads((last / "ckpt-info.json").read_text())
    assert info["data_order_file"] == DATA_ORDER_FILE and DATA_ORDER_FILE in info["files"]
    record = json.loads((last / DATA_ORDER_FILE).read_text())
    assert record == {"format_version": 1, "source": "arrays", "samples": SAMPLES,
                      "batch_size": BATCH, "batches": 8, "shuffle": True, "seed": 9,
                      "epoch": 1, "batch": 3}


def test_a_restart_continues_the_interrupted_epoch_at_the_next_batch(tmp_path: Path) -> None:
    stopped_mid_epoch(tmp_path)
    m = model()
    ckpt = engine(tmp_path)
    ckpt.set_model(m)
    J = ckpt.restart(m)
    assert J is not None and (J["epoch"], J["batch"]) == (1, 3)
    x, y = arrays()
    count = SignalAt(-1, -1)
    m.fit(ckpt.dataset(x, y, batch_size=BATCH, seed=9), epochs=2, initial_epoch=J["epoch"],
          callbacks=[count, ckpt], verbose=0)
    assert count.trained == 8 - 3
    assert int(keras.ops.convert_to_numpy(m.optimizer.iterations)) == 2 * 8
    assert os.readlink(tmp_path / "save" / "ckpts" / "last") == "epochs/002"


def test_a_checkpoint_after_the_last_batch_of_an_epoch_resumes_at_the_next_epoch(
        tmp_path: Path) -> None:
    stopped_mid_epoch(tmp_path, batch=7)  # the signal after epoch 2's last batch
    m = model()
    ckpt = engine(tmp_path, epochs=3)
    ckpt.set_model(m)
    J = ckpt.restart(m)
    assert J is not None and (J["epoch"], J["batch"]) == (1, 8)
    x, y = arrays()
    count = SignalAt(-1, -1)
    m.fit(ckpt.dataset(x, y, batch_size=BATCH, seed=9), epochs=3, initial_epoch=J["epoch"],
          callbacks=[count, ckpt], verbose=0)
    assert count.trained == 8  # epoch 3 only
    assert int(keras.ops.convert_to_numpy(m.optimizer.iterations)) == 3 * 8
    assert os.readlink(tmp_path / "save" / "ckpts" / "last") == "epochs/003"
    assert "epoch 2: resumed after its last batch; its loss is not known" in \
        (tmp_path / "save" / "ckpt.log").read_text()


def test_shared_object_checkpoints_record_and_resume_the_data_too(tmp_path: Path) -> None:
    last = stopped_mid_epoch(tmp_path, ckpt_dedup=True)
    assert json.loads((last / DATA_ORDER_FILE).read_text())["batch"] == 3
    m = model()
    ckpt = engine(tmp_path, ckpt_dedup=True)
    ckpt.set_model(m)
    J = ckpt.restart(m)
    assert J is not None and (J["epoch"], J["batch"]) == (1, 3)
    x, y = arrays()
    count = SignalAt(-1, -1)
    m.fit(ckpt.dataset(x, y, batch_size=BATCH, seed=9), epochs=2, initial_epoch=J["epoch"],
          callbacks=[count, ckpt], verbose=0)
    assert count.trained == 8 - 3


def test_the_older_api_resumes_mid_epoch_through_the_model(tmp_path: Path) -> None:
    stopped_mid_epoch(tmp_path)
    m = model()
    g = {"epochs": 2, "ckpt_directory": str(tmp_path / "save"),
         "ckpt_save_best_metric": "loss"}
    J = candle.restart(g, m)  # the spec's module-level restart: its own engine
    assert J is not None
    ckpt = candle.CandleCheckpointCallback(g, verbose=False)
    x, y = arrays()
    data = ckpt.dataset(x, y, batch_size=BATCH)  # no seed: the checkpoint's goes on
    count = SignalAt(-1, -1)
    m.fit(data, epochs=2, initial_epoch=J["epoch"], callbacks=[count, ckpt], verbose=0)
    assert count.trained == 8 - 3
    assert data.seed == 9


def test_data_that_differs_from_a_mid_epoch_checkpoint_stops_restart_naming_it(
        tmp_path: Path) -> None:
    stopped_mid_epoch(tmp_path)
    m = model()
    before = [np.array(v) for v in m.get_weights()]
    ckpt = engine(tmp_path)
    ckpt.set_model(m)
    x, y = arrays()
    ckpt.dataset(x, y, batch_size=BATCH * 2, seed=9)
    with pytest.raises(CheckpointMismatchError, match=r"batch_size: 4 in the checkpoint, 8 now"):
        ckpt.restart(m)
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights(), strict=True))
    ckpt.close()


def test_data_made_after_restart_is_checked_against_the_checkpoint(tmp_path: Path) -> None:
    stopped_mid_epoch(tmp_path)
    m = model()
    ckpt = engine(tmp_path)
    ckpt.set_model(m)
    assert ckpt.restart(m) is not None
    x, y = arrays()
    with pytest.raises(CheckpointMismatchError) as err:
        ckpt.dataset(x[:-1], y[:-1], batch_size=BATCH, seed=10)
    assert "samples: 30 in the checkpoint, 29 now" in str(err.value)
    assert "seed: 9 in the checkpoint, 10 now" in str(err.value)
    ckpt.close()


def test_other_data_after_an_epoch_end_checkpoint_is_only_a_warning(tmp_path: Path) -> None:
    m = model()
    ckpt = engine(tmp_path, epochs=1)
    x, y = arrays()
    m.fit(ckpt.dataset(x, y, batch_size=BATCH, seed=9), epochs=1, callbacks=[ckpt], verbose=0)
    m2 = model()
    ckpt2 = engine(tmp_path, epochs=2)
    ckpt2.set_model(m2)
    assert ckpt2.restart(m2) is not None
    ckpt2.dataset(x, y, batch_size=BATCH * 2, seed=9)
    ckpt2.close()
    log = (tmp_path / "save" / "ckpt.log").read_text()
    assert "the training data differs from the checkpoint's (batch_size: 4" in log


@pytest.mark.parametrize(("old", "new"), [('"shuffle": true', '"shuffle": 1234'),
                                          ('"batch": 3', '"batch": 2')],
                         ids=["bad-field", "other-position"])
def test_a_damaged_data_order_file_falls_back_to_the_previous_checkpoint(
        tmp_path: Path, old: str, new: str) -> None:
    last = stopped_mid_epoch(tmp_path)
    path = last / DATA_ORDER_FILE
    text = path.read_text()
    assert old in text and len(old) == len(new)  # same size: only its reader can tell
    path.write_text(text.replace(old, new))
    m = model()
    ckpt = engine(tmp_path)
    ckpt.set_model(m)
    J = ckpt.restart(m)
    ckpt.close()
    assert J is not None and (J["epoch"], J["batch"]) == (1, 0)
    assert J["skipped"][0]["path"] == str(last) and DATA_ORDER_FILE in J["skipped"][0]["reason"]


@pytest.mark.parametrize(("text", "match"), [
    (b"{not json", "not a JSON record"),
    (b"[]", "not a JSON object"),
    (b'{"format_version": 2}', "'format_version' is 2"),
    (b'{"format_version": 1, "source": "csv"}', "'source' is 'csv'"),
])
def test_unreadable_records_are_corrupt(text: bytes, match: str) -> None:
    with pytest.raises(CheckpointCorruptError, match=match):
        DataOrder.from_json(text, "data-order.json")


def test_a_record_past_the_end_of_its_epoch_is_corrupt(tmp_path: Path) -> None:
    ckpt = engine(tmp_path)
    x, y = arrays()
    record = ckpt.dataset(x, y, batch_size=BATCH).record(1, 8)
    assert DataOrder.from_json(record.to_json(), "f") == record  # the last batch: allowed
    too_far = record.to_json().replace(b'"batch": 8', b'"batch": 9')
    with pytest.raises(CheckpointCorruptError, match=r"'batch' is 9; expected an int in \[0, "
                                                     r"batches=8\]"):
        DataOrder.from_json(too_far, "f")
    ckpt.close()


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("args", "match"), [
    ({"batch_size": 0}, "batch_size=0"),
    ({"shuffle": "yes"}, "shuffle='yes'"),
    ({"seed": -1}, "seed=-1"),
    ({"seed": 1.5}, "seed=1.5"),
])
def test_bad_arguments_name_the_parameter(tmp_path: Path, args: dict[str, Any],
                                          match: str) -> None:
    ckpt = engine(tmp_path)
    x, y = arrays()
    with pytest.raises(CkptParamError, match=match):
        ckpt.dataset(x, y, **args)
    ckpt.close()


def test_inputs_that_cannot_resume_exactly_are_refused(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    ckpt = engine(tmp_path)
    x, y = arrays()
    with pytest.raises(CkptParamError, match="same number of samples"):
        ckpt.dataset(x, y[:-1])
    with pytest.raises(CkptParamError, match="y is not accepted with a PyDataset"):
        ckpt.dataset(Counted(), y)
    pipeline = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(CkptParamError, match="shuffle=True cannot reorder a tf.data"):
        ckpt.dataset(pipeline)
    with pytest.raises(CkptParamError, match="is infinite"):
        ckpt.dataset(pipeline.repeat(), shuffle=False)
    with pytest.raises(CkptParamError, match="str is not accepted as array data"):
        ckpt.dataset("x.npy")
    ckpt.close()
