"""The torch backend: ``CandleCkptPyTorch`` and what it is made of.

===============  ==================================================================
``api``          ``CandleCkptPyTorch``, the public CANDLE class
``backend``      ``TorchBackend``: the backend protocol (capture, write, load)
``entries``      what ``set_model`` names, and how each entry's state is read and set
``copies``       host copies (reusing the previous capture's buffers) and the
                 ``weights_only`` check of everything saved
``matching``     a checkpoint file checked against the live objects (the original
                 CANDLE's files too) before anything changes
``files``        ``model.pt`` and the per-rank RNG files, written and read safely
``order``        the epoch order of a data loader: ``batches()``, exact mid-epoch resume
``dcp``          sharded state (FSDP2, DTensor) through torch.distributed.checkpoint
===============  ==================================================================
"""

from .api import CandleCkptPyTorch
from .backend import TorchBackend, TorchSnapshot
from .entries import unwrap_module
from .files import FORMAT, FORMAT_VERSION, MODEL_FILE, rank_file
from .order import EpochBatches

__all__ = ["FORMAT", "FORMAT_VERSION", "MODEL_FILE", "CandleCkptPyTorch", "EpochBatches",
           "TorchBackend",
           "TorchSnapshot", "rank_file", "unwrap_module"]
