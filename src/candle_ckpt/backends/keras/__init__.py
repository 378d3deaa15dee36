"""The Keras 3 backend: ``CandleCkptKeras``, ``CandleCheckpointCallback``, ``restart()``.

===============  ==================================================================
``api``          the public classes and the module-level ``restart``/``restart_json``
``backend``      ``KerasBackend``: the backend protocol (capture, write, load)
``stores``       Keras' saving and loading walks, recording host copies (reusing the
                 previous capture's arrays) and writing ``model.weights.h5``
``reading``      a ``model.weights.h5`` read and checked against the live model
``legacy``       the original CANDLE's ``model.h5``, read and checked likewise
``h5``           HDF5 files read without trusting them
``rng_file``     ``rng-state.json``: seed generators and the global RNG states
``data``         ``CandleCkptKeras.dataset()``: training data ordered by (seed, epoch)
                 that a restart continues at the next batch; ``data-order.json``
``deferred``     what a restart leaves to apply when training begins (why it is
                 kept per model is said there)
===============  ==================================================================
"""

from .api import (
    CandleCheckpointCallback,
    CandleCkptKeras,
    MultiGPUCheckpoint,
    restart,
    restart_json,
)
from .backend import MODEL_FILE, KerasBackend, KerasSnapshot
from .data import DATA_ORDER_FILE, ResumableData
from .rng_file import RNG_FILE

__all__ = [
    "CandleCkptKeras",
    "CandleCheckpointCallback",
    "KerasBackend",
    "KerasSnapshot",
    "MultiGPUCheckpoint",
    "restart",
    "restart_json",
    "MODEL_FILE",
    "DATA_ORDER_FILE",
    "ResumableData",
    "RNG_FILE",
]
