"""What ``ckpt_dedup`` checkpoints occupy: each counts the shared objects it references,
``alone`` only those no other checkpoint references; the byte budget counts a shared
object once and never deletes one a remaining checkpoint references; ``list`` shows the
directory's real disk use against the sum of the checkpoints' sizes."""

from __future__ import annotations

import json
from pathlib import Path

from candle_ckpt.storage.layout import Layout
from candle_ckpt.storage.objects import referenced, sizes
from candle_ckpt.storage.usage import Footprint, dir_size
from candle_ckpt.testing import CandleCkptFiles
from tests.helpers.cli import run_cli
from tests.helpers.fs import make_params

FROZEN = b"frozen!!" * 5000  # 40 kB, the same every epoch


def state(epoch: int) -> dict[str, bytes]:
    return {"model.bin": FROZEN, "extra.bin": bytes([epoch]) * 3000}


def write(directory: Path, epochs: int, **extra: object) -> CandleCkptFiles:
    e = CandleCkptFiles(make_params(directory, ckpt_dedup=True, ckpt_save_best=False,
                                    **extra), logger=None)
    for epoch in range(1, epochs + 1):
        e.set_model(state(epoch))
        assert e.ckpt_epoch(epoch - 1, "-", 1.0)
    e.close()
    return e


def refs(directory: Path, epoch: int) -> set[str]:
    info = json.loads((directory / "ckpts" / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                      .read_text())
    return set(info["objects"])


def test_sizes_count_shared_objects_in_each_checkpoint_and_alone_only_its_own(tmp_path):
    write(tmp_path, 4, ckpt_keep_mode="all")
    layout = Layout.ours(tmp_path)
    stored = sizes(layout)
    (frozen,) = set.intersection(*(refs(tmp_path, e) for e in (1, 2, 3, 4)))
    footprint = Footprint.measure({e: layout.epoch_dir(e) for e in (1, 2, 3, 4)})
    for epoch in (1, 2, 3, 4):
        own = dir_size(layout.epoch_dir(epoch))
        (extra,) = refs(tmp_path, epoch) - {frozen}
        assert footprint.size(epoch) == own + stored[frozen] + stored[extra]
        assert footprint.alone(epoch) == own + stored[extra]
    everything = sum(dir_size(layout.epoch_dir(e)) for e in (1, 2, 3, 4)) + sum(
        stored.values())
    assert footprint.of({1, 2, 3, 4}) == everything
    # Measured alone, epoch 1 still shares the frozen object with the others.
    assert Footprint.measure({1: layout.epoch_dir(1)}).alone(1) == footprint.alone(1)


def test_the_byte_budget_counts_a_shared_object_once_and_keeps_what_is_referenced(tmp_path):
    per_epoch = 3000 + 2000  # an extra.bin object, with room for its index and info
    budget = len(FROZEN) + 200 + 3 * per_epoch
    write(tmp_path, 6, ckpt_keep_mode="all", ckpt_keep_bytes=budget)
    layout = Layout.ours(tmp_path)
    kept = layout.complete_epochs()
    # Counting the frozen object in every checkpoint, not even two would fit.
    assert len(kept) >= 3 and kept[-1] == 6
    footprint = Footprint.measure({e: layout.epoch_dir(e) for e in kept})
    assert footprint.of(kept) <= budget
    assert set(sizes(layout)) == referenced(layout)  # nothing referenced was removed
    e = CandleCkptFiles(make_params(tmp_path, ckpt_dedup=True), logger=None)
    try:
        for epoch in kept:
            loaded = e.backend.load(layout.epoch_dir(epoch), layout.read_info(epoch))
            loaded.apply()
            assert e.state == state(epoch)
    finally:
        e.close()


def test_list_shows_disk_use_against_the_sum_of_checkpoint_sizes(tmp_path):
    write(tmp_path, 4, ckpt_keep_mode="all")
    proc = run_cli("list", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert listing["disk_use"] == dir_size(tmp_path / "ckpts")
    assert listing["sizes_sum"] > listing["disk_use"]  # the frozen object, counted 4 times
    rows = listing["checkpoints"]
    assert all(r["size"] - r["alone"] >= len(FROZEN) for r in rows)
    text = run_cli("list", tmp_path).stdout
    assert "sizes add up to" in text and "on disk" in text


def test_the_model_wrote_line_counts_only_the_objects_a_save_wrote(tmp_path):
    write(tmp_path, 2, ckpt_keep_mode="all")
    wrote = [float(line.split("model wrote: ")[1].split(" MB")[0])
             for line in (tmp_path / "ckpt.log").read_text().splitlines()
             if "model wrote: " in line]
    assert len(wrote) == 2
    assert wrote[0] * (1 << 20) >= len(FROZEN) + 3000 - 1000  # everything was new (MiB, 3 digits)
    assert wrote[1] * (1 << 20) < len(FROZEN) / 4  # the frozen object was only referenced
