"""Training data for an exact mid-epoch resume of ``model.fit``: ``CandleCkptKeras.dataset``.

Keras has no hook for "start this epoch at batch k+1": ``fit`` reads its data from an
adapter it builds once per call, shuffles NumPy inputs with a draw made at the epoch's
start, and counts steps from 0 in every epoch. :class:`ResumableData` is such an
adapter (``fit`` takes a ``DataAdapter`` as it is), driven by the checkpoint callback:

- each epoch's order is a pure function of ``(seed, epoch)`` (:func:`epoch_order`), so
  it needs no RNG state and draws from no global RNG;
- in the epoch a restart resumes mid-way it yields only the batches after the ``k``
  already trained: the skipped ones are not read (arrays and ``PyDataset`` by index,
  ``tf.data`` through ``Dataset.skip``); Keras then ends that epoch when the data runs
  out, so the optimizer takes exactly the steps the uninterrupted run took;
- its shape and position go into every checkpoint as ``data-order.json``
  (:class:`DataOrder`), which restart checks like every other file.

Inputs: NumPy arrays (or dicts/lists/tuples of them) batched here; a
``keras.utils.PyDataset`` (its batches reordered and skipped by index, read with its own
workers); a finite ``tf.data.Dataset`` of batches (read in its own order, skipped with
``skip``: exact when that order does not change from one iteration to the next).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import keras
import numpy as np
from keras.src.trainers.data_adapters import data_adapter_utils
from keras.src.trainers.data_adapters.data_adapter import DataAdapter
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from ...errors import CheckpointCorruptError, CheckpointMismatchError, CkptParamError

DATA_ORDER_FILE = "data-order.json"
DATA_ORDER_FORMAT = 1
SOURCES = ("arrays", "PyDataset", "tf.data")
DEFAULT_BATCH_SIZE = 32  # Keras' own default for array inputs
_MAX_SEED = 2**63 - 1


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order of ``count`` items in ``epoch``: a permutation that depends on nothing else.

    The raw output of a PCG64 bit generator keyed by ``(seed, epoch)`` is a stream NumPy
    keeps stable across versions (``Generator`` methods such as ``permutation`` are not
    promised to), so a run resumed under another NumPy draws the same order.
    """
    bits = np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])).random_raw(count)
    return np.argsort(np.asarray(bits), kind="stable")


# ------------------------------------------------------------------------ the record
@dataclass(frozen=True)
class DataShape:
    """What the training data is, as far as its order goes."""

    source: str  # one of SOURCES
    samples: int | None  # arrays: the number of samples; else None
    batch_size: int | None  # arrays: the batch size; else None
    batches: int  # batches per epoch
    shuffle: bool
    seed: int

    def differences(self, other: DataShape) -> list[str]:
        """``"field: X in the checkpoint, Y now"`` for every field that differs."""
        return [f"{name}: {getattr(other, name)!r} in the checkpoint, {value!r} now"
                for name, value in asdict(self).items() if getattr(other, name) != value]


@dataclass(frozen=True)
class DataOrder:
    """``data-order.json``: the data's shape and where training was in it.

    ``epoch`` counts completed epochs (the 0-based epoch a restart trains next) and
    ``batch`` the batches of that epoch already trained (0 at an epoch's end).
    """

    shape: DataShape
    epoch: int
    batch: int

    def to_json(self) -> bytes:
        record = {"format_version": DATA_ORDER_FORMAT, **asdict(self.shape),
                  "epoch": self.epoch, "batch": self.batch}
        return json.dumps(record, allow_nan=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, where: str) -> DataOrder:
        """Parse and check a record.

        Raises:
            CheckpointCorruptError: not JSON, or a field missing or out of range (the
                checkpoint is damaged: restart falls back to an older one).
        """
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise CheckpointCorruptError(f"{where}: not a JSON record ({err})") from None
        if not isinstance(record, dict):
            raise CheckpointCorruptError(f"{where}: not a JSON object")

        def field(name: str, ok: Callable[[Any], bool], what: str) -> Any:
            value = record.get(name)
            if name not in record or not ok(value):
                raise CheckpointCorruptError(
                    f"{where}: field {name!r} is {value!r}; expected {what}")
            return value

        def count(v: Any) -> bool:
            return type(v) is int and v >= 0

        field("format_version", lambda v: v == DATA_ORDER_FORMAT, str(DATA_ORDER_FORMAT))
        shape = DataShape(
            source=field("source", lambda v: v in SOURCES, f"one of {SOURCES}"),
            samples=field("samples", lambda v: v is None or count(v), "null or an int >= 0"),
            batch_size=field("batch_size", lambda v: v is None or (count(v) and v > 0),
                             "null or an int > 0"),
            batches=field("batches", count, "an int >= 0"),
            shuffle=field("shuffle", lambda v: type(v) is bool, "true or false"),
            seed=field("seed", lambda v: count(v) and v <= _MAX_SEED,
                       f"an int in [0, {_MAX_SEED}]"),
        )
        epoch = field("epoch", count, "an int >= 0")
        batch = field("batch", lambda v: count(v) and v <= shape.batches,
                      f"an int in [0, batches={shape.batches}]")
        return cls(shape, epoch, batch)


# ------------------------------------------------------------------------ sources
class _Source:
    """Where batches come from: ``batches`` of them, each fetched by its index (arrays:
    the index of a batch of an epoch's sample ``order``)."""

    source = ""
    batches = 0
    samples: int | None = None
    batch_size: int | None = None

    def fetch(self, index: int, order: np.ndarray | None = None) -> Any:
        raise NotImplementedError

    def epoch_begins(self) -> None:
        """The user's per-epoch hooks (a PyDataset's), called once per epoch as Keras does."""

    def epoch_ends(self) -> None:
        pass


class _Arrays(_Source):
    """NumPy arrays (any structure of them), batched here: batch ``i`` of an epoch is the
    samples at positions ``i*batch_size ..`` of that epoch's sample order."""

    source = "arrays"

    def __init__(self, data: tuple[Any, ...], batch_size: int) -> None:
        self.data = keras.tree.map_structure(_as_array, data)
        lengths = {int(a.shape[0]) for a in keras.tree.flatten(self.data)}
        if len(lengths) != 1:
            raise CkptParamError(
                "dataset(): x, y and sample_weight must have the same number of samples "
                f"(first dimension); got {sorted(lengths)}")
        self.samples = lengths.pop()
        if self.samples == 0:
            raise CkptParamError("dataset(): x holds no samples")
        self.batch_size = self.size = batch_size
        self.batches = math.ceil(self.samples / batch_size)

    def fetch(self, index: int, order: np.ndarray | None = None) -> Any:
        assert order is not None
        picked = order[index * self.size:(index + 1) * self.size]
        return keras.tree.map_structure(lambda a: a[picked], self.data)

    def spec(self) -> Any:
        import tensorflow as tf

        return keras.tree.map_structure(
            lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)), self.data)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if not hasattr(value, "__array__") or not hasattr(value, "shape"):
        raise CkptParamError(
            f"dataset(): {type(value).__name__} is not accepted as array data; give NumPy "
            "arrays (or a dict, list or tuple of them), a keras.utils.PyDataset or a "
            "tf.data.Dataset")
    array = np.asarray(value)
    if array.ndim == 0:
        raise CkptParamError("dataset(): a scalar is not array data (no samples)")
    return array


class _PyDataset(_Source):
    """A user's ``keras.utils.PyDataset``: batch ``i`` is ``dataset[i]``."""

    source = "PyDataset"

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        try:
            batches = dataset.num_batches
        except NotImplementedError:
            batches = None
        if batches is None:
            raise CkptParamError(
                f"dataset(): the PyDataset {type(dataset).__name__} has no length; an "
                "exact resume needs a finite number of batches per epoch (define __len__)")
        self.batches = int(batches)

    def fetch(self, index: int, order: np.ndarray | None = None) -> Any:
        return self.dataset[int(index)]

    def epoch_begins(self) -> None:
        self.dataset.on_epoch_begin()

    def epoch_ends(self) -> None:
        self.dataset.on_epoch_end()


class _TFData(_Source):
    """A finite ``tf.data.Dataset`` of batches, read in its own order."""

    source = "tf.data"

    def __init__(self, dataset: Any) -> None:
        import tensorflow as tf

        self.dataset = dataset
        cardinality = int(dataset.cardinality())
        if cardinality < 0:
            what = "infinite" if cardinality == int(tf.data.INFINITE_CARDINALITY) \
                else "of unknown length"
            raise CkptParamError(
                f"dataset(): the tf.data.Dataset is {what}; an exact resume needs a finite "
                "number of batches per epoch (drop .repeat(), or add "
                ".apply(tf.data.experimental.assert_cardinality(N)))")
        self.batches = cardinality

    def skipped(self, skip: Any) -> Any:
        return self.dataset.skip(skip)


class _EpochView(keras.utils.PyDataset):
    """One epoch's batches in order, from a position on: what Keras' own PyDataset
    adapter reads (with the user's workers, when the source is a PyDataset). Each epoch
    has its own view, so nothing in it changes while Keras still reads it."""

    def __init__(self, source: _Source, positions: np.ndarray,
                 order: np.ndarray | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.positions = positions
        self.order = order

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Any:
        return self.source.fetch(int(self.positions[index]), self.order)


# ------------------------------------------------------------------------ the adapter
class ResumableData(DataAdapter):
    """Training data for ``fit`` whose order and mid-epoch position are checkpointed.

    Made by :meth:`CandleCkptKeras.dataset`; pass it to ``fit`` as ``x``, with the
    callback that made it in ``callbacks`` (it tells the data which epoch begins).
    """

    def __init__(self, source: _Source, shuffle: bool, seed: int | None) -> None:
        self._source = source
        self._shuffle = bool(shuffle)
        self._seed_given = seed is not None
        self._seed = int(seed) if seed is not None else int(
            np.random.SeedSequence().generate_state(2, np.uint64)[0] >> np.uint64(1))
        self._resume: DataOrder | None = None  # a restart's position, until its epoch
        self._resumed_from: DataOrder | None = None  # the last record adopted
        self._epoch: int | None = None  # the epoch being trained (set by the callback)
        self._skip = 0  # batches of that epoch not to yield
        self._within_epoch = False
        self._epoch_adapter: PyDatasetAdapter | None = None
        self._warned_undriven = False

    # --------------------------------------------------------------- what it is
    @property
    def shape(self) -> DataShape:
        s = self._source
        return DataShape(s.source, s.samples, s.batch_size, s.batches, self._shuffle,
                         self._seed)

    @property
    def seed(self) -> int:
        return self._seed

    def order(self, epoch: int) -> np.ndarray:
        """The order of the batches (arrays: of the samples) in ``epoch``."""
        s = self._source
        count = s.samples if isinstance(s, _Arrays) else s.batches
        assert count is not None
        if not self._shuffle:
            return np.arange(count)
        return epoch_order(self._seed, epoch, count)

    def record(self, epoch: int, batch: int) -> DataOrder:
        """The record a checkpoint at ``batch`` batches into ``epoch`` holds."""
        return DataOrder(self.shape, int(epoch), int(batch))

    # --------------------------------------------------------------- restart
    def check_resume(self, order: DataOrder, where: str) -> list[str]:
        """Check a checkpoint's record against this data; what is worth a warning.

        A checkpoint taken mid-epoch must be continued by the same data in the same order:
        anything else would train some samples of that epoch twice and others never.

        Raises:
            CheckpointMismatchError: a mid-epoch record and data that differ from it.
        """
        shape = self.shape if self._seed_given else replace(self.shape, seed=order.shape.seed)
        differences = shape.differences(order.shape)
        if not differences:
            return []
        if order.batch > 0:
            raise CheckpointMismatchError(
                f"{where}: the training data does not fit this mid-epoch checkpoint "
                f"(epoch {order.epoch} + {order.batch} batches): "
                + "; ".join(differences)
                + ". Pass the data, batch_size, shuffle and seed of the run that wrote it "
                "to dataset(), or roll back to an epoch-end checkpoint "
                "('candle-ckpt rollback DIR EPOCH')")
        return [f"{where}: the training data differs from the checkpoint's ("
                + "; ".join(differences) + "); later epochs are not in the order the "
                "interrupted run would have used"]

    def resume_from(self, order: DataOrder) -> None:
        """Continue as the checkpoint says (checked with :meth:`check_resume` first)."""
        if not self._seed_given:
            self._seed = order.shape.seed  # the interrupted run's order goes on
        self._resume = order if order.batch > 0 else None
        self._resumed_from = order

    @property
    def resumed_from(self) -> DataOrder | None:
        """The checkpoint record this data last took its seed and position from."""
        return self._resumed_from

    # --------------------------------------------------------------- driven by the callback
    def begin_epoch(self, epoch: int) -> int:
        """``epoch`` (0-based) begins: the batches of it that are skipped (already trained)."""
        resume, self._resume = self._resume, None
        self._epoch = int(epoch)
        self._skip = resume.batch if resume is not None and resume.epoch == epoch else 0
        if resume is not None and resume.epoch != epoch:
            warnings.warn(
                f"the checkpoint was taken {resume.batch} batches into epoch {resume.epoch} "
                f"but fit() began epoch {epoch}: it is trained from its first batch (pass "
                "initial_epoch=J['epoch'] to fit)", stacklevel=2)
        return self._skip

    def end_training(self) -> None:
        self._epoch = None
        self._skip = 0

    def _position(self) -> tuple[int, int]:
        """(epoch, batches to skip) of the iteration starting now.

        Outside an epoch begun by the callback: where a pending restart resumes (Keras
        reads one batch before training to build its metrics: one that is read anyway),
        else epoch 0 from its start.
        """
        if self._epoch is not None:
            return self._epoch, self._skip
        if self._resume is not None:
            return self._resume.epoch, self._resume.batch
        return 0, 0

    def _undriven(self) -> None:
        """More than a peek was read outside an epoch the callback began: say why that
        is not what dataset() is for (once)."""
        if not self._warned_undriven:
            self._warned_undriven = True
            warnings.warn(
                "candle_ckpt: data made by CandleCkptKeras.dataset() is read outside a "
                "fit() that has that callback (callbacks=[ckpt]), so in epoch 0's order. "
                "Pass the callback to fit(), so that every epoch gets its own order and a "
                "restart continues mid-epoch; evaluate and predict on the arrays",
                stacklevel=2)

    # --------------------------------------------------------------- Keras' adapter protocol
    def _view(self, epoch: int, skip: int) -> _EpochView:
        s = self._source
        if isinstance(s, _Arrays):
            return _EpochView(s, np.arange(skip, s.batches), self.order(epoch))
        if isinstance(s, _PyDataset):
            user = s.dataset
            return _EpochView(s, self.order(epoch)[skip:], workers=user.workers,
                              use_multiprocessing=user.use_multiprocessing,
                              max_queue_size=user.max_queue_size)
        raise AssertionError(s.source)

    def _batches(self) -> Iterator[Any]:
        """This epoch's remaining batches, as Keras' PyDataset adapter reads them."""
        driven = self._epoch is not None
        epoch, skip = self._position()
        if isinstance(self._source, _TFData):
            batches = self._source.skipped(skip).as_numpy_iterator()
        else:
            adapter = PyDatasetAdapter(self._view(epoch, skip), shuffle=False)
            self._epoch_adapter = adapter
            batches = adapter._get_iterator()
        for count, batch in enumerate(batches):
            if count == 1 and not driven:
                self._undriven()
            yield batch

    def get_numpy_iterator(self) -> Iterator[Any]:
        return data_adapter_utils.get_numpy_iterator(self._batches())

    def get_jax_iterator(self) -> Iterator[Any]:
        return data_adapter_utils.get_jax_iterator(self._batches())

    def get_tf_dataset(self) -> Any:
        import tensorflow as tf

        if isinstance(self._source, _TFData):
            # The skip is read when an epoch's iteration starts, so one dataset serves
            # every epoch (Keras builds it once per fit()).
            skips = tf.data.Dataset.from_generator(
                lambda: iter([self._position()[1]]),
                output_signature=tf.TensorSpec((), tf.int64))
            return skips.flat_map(self._source.skipped)
        if isinstance(self._source, _Arrays):
            spec = self._source.spec()
        else:
            spec = self._probe_spec()
        dataset = tf.data.Dataset.from_generator(self._batches, output_signature=spec)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _probe_spec(self) -> Any:
        """The tensor specs of a PyDataset's batches, from batches that will be read anyway
        (those of the resumed epoch after its skip, when a restart is pending)."""
        epoch, skip = (self._resume.epoch, self._resume.batch) if self._resume else (0, 0)
        positions = self.order(epoch)[skip:skip + data_adapter_utils.NUM_BATCHES_FOR_TENSOR_SPEC]
        if len(positions) == 0:
            positions = self.order(epoch)[:1]
        standardize = PyDatasetAdapter(_EpochView(self._source, positions))._standardize_batch
        batches = [standardize(self._source.fetch(int(i))) for i in positions]
        if not batches:
            raise CkptParamError("dataset(): the PyDataset has length 0")
        return data_adapter_utils.get_tensor_spec(batches)

    def get_torch_dataloader(self) -> Any:
        import torch
        import torch.utils.data as torch_data
        from keras.src.backend.torch.core import convert_to_tensor

        batches = self._batches

        class Batches(torch_data.IterableDataset):
            def __iter__(self) -> Iterator[Any]:
                for batch in batches():
                    yield keras.tree.map_structure(convert_to_tensor, batch,
                                                   none_is_leaf=False)

        # Its own generator: creating a DataLoader's iterator draws a base seed, which
        # must not come from torch's global RNG (Dropout draws from it on this backend,
        # and a resumed epoch creates one iterator more than the uninterrupted run).
        return torch_data.DataLoader(Batches(), batch_size=None,
                                     generator=torch.Generator())

    @property
    def num_batches(self) -> int:
        # The full count: Keras reads it once per fit(); a resumed epoch ends early when
        # its batches run out (the callback quiets Keras' "ran out of data" warning).
        return self._source.batches

    @property
    def batch_size(self) -> int | None:
        return self._source.batch_size

    @property
    def has_partial_batch(self) -> bool:
        s = self._source
        return s.samples is not None and s.batch_size is not None \
            and s.samples % s.batch_size != 0

    @property
    def partial_batch_size(self) -> int | None:
        s = self._source
        if s.samples is None or s.batch_size is None:
            return None
        return s.samples % s.batch_size or None

    def on_epoch_begin(self) -> None:
        if not self._within_epoch:
            self._within_epoch = True
            self._source.epoch_begins()

    def on_epoch_end(self) -> None:
        adapter, self._epoch_adapter = self._epoch_adapter, None
        if adapter is not None and adapter.enqueuer is not None:
            adapter.enqueuer.stop()
        if self._within_epoch:
            self._within_epoch = False
            self._source.epoch_ends()


class EndOfDataWarning:
    """Quiets Keras' "Your input ran out of data; interrupting training" while a resumed
    epoch runs: its data ends before the step count Keras fixed for every epoch, which is
    how that epoch takes only the steps it had left (and training goes on)."""

    MESSAGE = "Your input ran out of data"

    def __init__(self) -> None:
        self._entry: Any = None

    def on(self) -> None:
        if self._entry is None:
            warnings.filterwarnings("ignore", message=self.MESSAGE, category=UserWarning)
            self._entry = warnings.filters[0]

    def off(self) -> None:
        entry, self._entry = self._entry, None
        if entry is None:
            return
        try:
            cast(list, warnings.filters).remove(entry)
        except ValueError:  # someone reset the filters meanwhile
            return
        mutated = getattr(warnings, "_filters_mutated", None)
        if callable(mutated):  # drop the per-module caches of what was ignored
            mutated()


class PhantomStep:
    """Undoes what Keras' step after a resumed epoch's last batch changed.

    Keras fixes one step count for every epoch of a ``fit`` and ends an epoch early only
    when a step finds no data. On TensorFlow that step is one graph whose ops that do not
    depend on the batch still run before the missing batch stops it: the optimizer's
    ``iterations`` and the seed generators' states (Dropout) advance by one step that
    trained nothing. The values from before that step are kept (the model's
    non-trainable variables and the optimizer's scalar counters; everything trainable
    needs a batch) and put back when the epoch ends, so the counters and RNG streams go
    on exactly as in the uninterrupted run. On the other backends the missing batch
    stops the step before it runs, and nothing differs.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[Any, np.ndarray]] = []

    def before(self, model: Any) -> None:
        """The step after the resumed epoch's last batch begins: keep what it may change."""
        optimizer = getattr(model, "optimizer", None)
        counters = [v for v in getattr(optimizer, "variables", []) if len(v.shape) == 0]
        self._saved = [(v, np.array(keras.ops.convert_to_numpy(v), copy=True))
                       for v in [*model.non_trainable_variables, *counters]]

    def undo(self) -> int:
        """The epoch ended: restore what that step changed; how many variables it changed."""
        saved, self._saved = self._saved, []
        changed = 0
        for variable, value in saved:
            if not np.array_equal(keras.ops.convert_to_numpy(variable), value):
                variable.assign(value)
                changed += 1
        return changed


def make_dataset(x: Any, y: Any = None, batch_size: Any = None, shuffle: Any = True,
                 seed: Any = None, sample_weight: Any = None) -> ResumableData:
    """Build the data for :meth:`CandleCkptKeras.dataset` (arguments checked there).

    Raises:
        CkptParamError: an argument that is not accepted, naming it and what is.
    """
    if type(shuffle) is not bool:
        raise CkptParamError(f"dataset(): shuffle={shuffle!r} is not accepted; give True or "
                             "False")
    if seed is not None and (type(seed) is not int or not 0 <= seed <= _MAX_SEED):
        raise CkptParamError(f"dataset(): seed={seed!r} is not accepted; give an int in "
                             f"[0, {_MAX_SEED}], or None (a fresh seed, kept in checkpoints)")
    source: _Source
    if isinstance(x, keras.utils.PyDataset) or _is_tf_dataset(x):
        kind = "a PyDataset" if isinstance(x, keras.utils.PyDataset) else "a tf.data.Dataset"
        for name, value in (("y", y), ("sample_weight", sample_weight),
                            ("batch_size", batch_size)):
            if value is not None:
                raise CkptParamError(
                    f"dataset(): {name} is not accepted with {kind} as x (its batches "
                    f"carry the targets and weights and have their size); got {name}="
                    f"{type(value).__name__}")
        if isinstance(x, keras.utils.PyDataset):
            source = _PyDataset(x)
        else:
            if shuffle:
                raise CkptParamError(
                    "dataset(): shuffle=True cannot reorder a tf.data.Dataset's batches "
                    "without reading them all; pass shuffle=False, and shuffle inside the "
                    "pipeline with a fixed seed (.shuffle(n, seed=S, "
                    "reshuffle_each_iteration=False)) or use arrays or a PyDataset")
            source = _TFData(x)
    else:
        if isinstance(x, DataAdapter) or x is None:
            raise CkptParamError(
                f"dataset(): x={type(x).__name__} is not accepted; give NumPy arrays (or a "
                "dict, list or tuple of them), a keras.utils.PyDataset or a tf.data.Dataset")
        if batch_size is None:
            batch_size = DEFAULT_BATCH_SIZE
        if type(batch_size) is not int or batch_size <= 0:
            raise CkptParamError(f"dataset(): batch_size={batch_size!r} is not accepted; give "
                                 "an int > 0 (default 32)")
        parts = tuple(p for p in (x, y, sample_weight) if p is not None)
        if sample_weight is not None and y is None:
            raise CkptParamError("dataset(): sample_weight needs y")
        source = _Arrays(parts, batch_size)
    return ResumableData(source, shuffle, seed)


def _is_tf_dataset(x: Any) -> bool:
    from keras.src.trainers.data_adapters import is_tf_dataset

    return bool(is_tf_dataset(x))
