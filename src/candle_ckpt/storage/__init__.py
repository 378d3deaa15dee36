"""Everything that touches the checkpoint directory on disk, one job per module.

``fsio`` (fsync, durable JSON, the crash seam), ``sink`` (FileSink: writing and hashing
a checkpoint's files), ``lock`` (the writer lock), ``commit`` (the commit protocol),
``remover`` (background removal of unlisted checkpoints), ``layout`` (names and paths),
``integrity`` (checksums and manifests), ``safeio`` (opening files without following
what a hostile tree plants).
"""
