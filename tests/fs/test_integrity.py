"""integrity: manifest member names, legacy records, checksum algorithms, and the field
checks of check_checkpoint.

Each traversal case names a file that exists outside the checkpoint, so only the name
check can reject it (a missing file would be rejected as "missing" anyway).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from candle_ckpt.storage import integrity
from candle_ckpt.storage.integrity import (
    DEFAULT_ALGORITHM,
    DISABLED,
    check_checkpoint,
    checksum_file,
    has_checksums,
    safe_member,
    verify_checkpoint,
)
from tests.helpers.fs import engine, info, train

DATA = b"weights " * 100


def _checkpoint(tmp_path: Path) -> Path:
    """epochs/005 with model.bin inside, and a secret file beside the checkpoint."""
    d = tmp_path / "epochs" / "005"
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(DATA)
    (tmp_path / "epochs" / "secret").write_bytes(DATA)  # same size: only the name differs
    (tmp_path / "secret").write_bytes(DATA)
    return d


def _manifest_info(files: dict, **fields) -> dict:
    info = {"format_version": 1, "epoch": 5, "model_file": "model.bin", "files": files}
    info.update(fields)
    return info


@pytest.mark.parametrize("name", ["../secret", "../../secret", "sub/../../secret",
                                  "..\\secret"])
def test_a_manifest_naming_an_existing_file_outside_is_rejected_by_its_name(tmp_path, name):
    d = _checkpoint(tmp_path)
    files = {"model.bin": {"size": len(DATA)}, name: {"size": len(DATA)}}
    problems = verify_checkpoint(d, _manifest_info(files), check_checksums=False)
    assert len(problems) == 1
    assert "not a plain file name" in problems[0]


def test_an_absolute_manifest_name_of_an_existing_file_is_rejected(tmp_path):
    d = _checkpoint(tmp_path)
    outside = str(tmp_path / "secret")
    files = {"model.bin": {"size": len(DATA)}, outside: {"size": len(DATA)}}
    problems = verify_checkpoint(d, _manifest_info(files), check_checksums=False)
    assert [p for p in problems if "not a plain file name" in p]


@pytest.mark.parametrize("name", ["../secret", "../../secret", "a/../../secret"])
def test_safe_member_refuses_any_separator_even_when_the_file_exists(tmp_path, name):
    _checkpoint(tmp_path)
    assert not safe_member(name)


@pytest.mark.parametrize("name", ["model.bin", "a", "x" * 255, "é" * 127, ".hidden", "a..b"])
def test_safe_member_accepts_plain_names_up_to_255_bytes(name):
    assert safe_member(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 256, "é" * 128, "a\0b", "a\nb",
                                  "\ud800", 7, None, b"model.bin"])
def test_safe_member_refuses_what_is_not_a_plain_name(name):
    assert not safe_member(name)


@pytest.mark.parametrize("model_file", ["../secret", "../epochs/secret", "sub/../../secret"])
def test_a_legacy_model_file_naming_an_existing_file_outside_is_rejected(tmp_path, model_file):
    d = _checkpoint(tmp_path)
    problems = verify_checkpoint(d, {"epoch": 5, "model_file": model_file},
                                 check_checksums=False)
    assert len(problems) == 1
    assert "not a file name inside the checkpoint" in problems[0]


@pytest.mark.parametrize("model_file", [7, None, ["model.bin"], {"a": 1}, True])
def test_a_legacy_model_file_that_is_not_a_string_is_rejected(tmp_path, model_file):
    d = _checkpoint(tmp_path)
    problems = verify_checkpoint(d, {"epoch": 5, "model_file": model_file},
                                 check_checksums=False)
    assert len(problems) == 1
    assert "not a file name inside the checkpoint" in problems[0]


def test_a_legacy_model_file_naming_the_info_file_is_rejected(tmp_path):
    d = _checkpoint(tmp_path)
    (d / "ckpt-info.json").write_text("{}")
    problems = verify_checkpoint(d, {"epoch": 5, "model_file": "ckpt-info.json"},
                                 check_checksums=False)
    assert len(problems) == 1


def test_a_legacy_checkpoint_without_model_file_reads_model_h5(tmp_path):
    d = tmp_path / "005"
    d.mkdir()
    assert verify_checkpoint(d, {"epoch": 5}, False) == ["model.h5: missing"]
    (d / "model.h5").write_bytes(b"")
    assert verify_checkpoint(d, {"epoch": 5}, False) == ["model.h5: empty"]
    (d / "model.h5").write_bytes(DATA)
    assert verify_checkpoint(d, {"epoch": 5}, False) == []


def test_a_legacy_crc32_is_checked_as_a_decimal_string(tmp_path):
    d = _checkpoint(tmp_path)
    crc = str(zlib.crc32(DATA) & 0xFFFFFFFF)
    good = {"epoch": 5, "model_file": "model.bin", "checksum": crc}
    assert verify_checkpoint(d, good, True) == []
    bad = dict(good, checksum=str(int(crc) ^ 1))
    problems = verify_checkpoint(d, bad, True)
    assert len(problems) == 1 and "crc32" in problems[0]
    assert verify_checkpoint(d, bad, False) == []  # sizes only: no checksum read
    assert verify_checkpoint(d, dict(bad, checksum=DISABLED), True) == []


def test_a_legacy_checkpoint_with_another_algorithm_is_checked_with_it(tmp_path):
    d = _checkpoint(tmp_path)
    want = checksum_file(d / "model.bin", "xxh64")
    info = {"epoch": 5, "model_file": "model.bin", "checksum": want,
            "checksum_algorithm": "xxh64"}
    assert verify_checkpoint(d, info, True) == []
    assert verify_checkpoint(d, dict(info, checksum_algorithm="crc32"), True) != []
    unknown = verify_checkpoint(d, dict(info, checksum_algorithm="md5"), True)
    assert len(unknown) == 1 and "not known" in unknown[0]


def test_model_file_not_listed_in_files_is_a_problem(tmp_path):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA)}}, model_file="other.bin")
    problems = verify_checkpoint(d, info, check_checksums=False)
    assert problems == ["other.bin: model_file not listed in files"]


def test_rng_file_not_listed_or_not_a_string_is_a_problem(tmp_path):
    d = _checkpoint(tmp_path)
    files = {"model.bin": {"size": len(DATA)}}
    assert verify_checkpoint(d, _manifest_info(files), False) == []
    assert verify_checkpoint(d, _manifest_info(files, rng_file="rng.json"), False) == [
        "rng.json: rng_file not listed in files"]
    problems = verify_checkpoint(d, _manifest_info(files, rng_file=3), False)
    assert len(problems) == 1 and "rng_file" in problems[0]


@pytest.mark.parametrize("model_file", [None, 3, ["model.bin"]])
def test_a_manifest_model_file_that_is_not_a_string_is_a_problem(tmp_path, model_file):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA)}}, model_file=model_file)
    if model_file is None:
        del info["model_file"]
    problems = verify_checkpoint(d, info, check_checksums=False)
    assert len(problems) == 1 and "model_file" in problems[0]


@pytest.mark.parametrize("algorithm", ["xxh3_64", "xxh3_128", "xxh64", "crc32"])
def test_a_manifest_is_verified_with_the_algorithm_it_records(tmp_path, algorithm):
    d = _checkpoint(tmp_path)
    want = checksum_file(d / "model.bin", algorithm)
    info = _manifest_info({"model.bin": {"size": len(DATA), "checksum": want}},
                          checksum_algorithm=algorithm)
    assert verify_checkpoint(d, info, True) == []
    (d / "model.bin").write_bytes(DATA[:-1] + b"X")  # same size, other content
    problems = verify_checkpoint(d, info, True)
    assert len(problems) == 1 and algorithm in problems[0]
    assert verify_checkpoint(d, info, False) == []


def test_each_algorithm_gives_a_different_checksum():
    values = {a: integrity.new_hasher(a) for a in ("xxh3_64", "xxh3_128", "xxh64", "crc32")}
    for h in values.values():
        h.update(DATA)
    assert len({h.hexdigest() for h in values.values()}) == 4


@pytest.mark.parametrize("recorded", [None, ""])
def test_a_manifest_without_an_algorithm_uses_the_default(tmp_path, recorded):
    d = _checkpoint(tmp_path)
    want = checksum_file(d / "model.bin", DEFAULT_ALGORITHM)
    info = _manifest_info({"model.bin": {"size": len(DATA), "checksum": want}})
    if recorded is not None:
        info["checksum_algorithm"] = recorded
    assert verify_checkpoint(d, info, True) == []
    other = checksum_file(d / "model.bin", "xxh64")
    info["files"]["model.bin"]["checksum"] = other
    assert len(verify_checkpoint(d, info, True)) == 1


@pytest.mark.parametrize("algorithm", ["md5", 7, ["xxh64"]])
def test_a_manifest_with_an_unknown_algorithm_is_a_problem(tmp_path, algorithm):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA)}}, checksum_algorithm=algorithm)
    problems = verify_checkpoint(d, info, False)
    assert len(problems) == 1 and "not known" in problems[0]


def test_a_manifest_entry_without_a_checksum_is_checked_by_size_only(tmp_path):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA)}})
    assert verify_checkpoint(d, info, True) == []
    info["files"]["model.bin"]["size"] = len(DATA) + 1
    problems = verify_checkpoint(d, info, True)
    assert problems == [f"model.bin: size {len(DATA)} != {len(DATA) + 1} recorded"]


@pytest.mark.parametrize("entry", [{"size": -1}, {"size": 1.0}, {"size": True}, {}, 5,
                                   {"size": None}])
def test_a_bad_manifest_entry_is_a_problem(tmp_path, entry):
    d = _checkpoint(tmp_path)
    problems = verify_checkpoint(d, _manifest_info({"model.bin": entry}), False)
    assert len(problems) == 1 and "bad manifest entry" in problems[0]


def test_a_non_string_checksum_in_the_manifest_is_a_problem_even_without_checking(tmp_path):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA), "checksum": 12}})
    problems = verify_checkpoint(d, info, False)
    assert len(problems) == 1 and "not a string" in problems[0]


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, None])
def test_a_bad_format_version_is_a_problem(tmp_path, version):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA)}}, format_version=version)
    problems = verify_checkpoint(d, info, False)
    assert len(problems) == 1 and "format_version" in problems[0]


def test_a_format_version_without_files_is_a_problem(tmp_path):
    d = _checkpoint(tmp_path)
    problems = verify_checkpoint(d, {"format_version": 1, "model_file": "model.bin"}, False)
    assert len(problems) == 1 and "missing" in problems[0]
    problems = verify_checkpoint(d, {"format_version": 1, "files": []}, False)
    assert len(problems) == 1 and "list" in problems[0]


def test_files_without_format_version_is_still_a_manifest(tmp_path):
    d = _checkpoint(tmp_path)
    info = {"epoch": 5, "model_file": "model.bin", "files": {"model.bin": {"size": 1}}}
    assert len(verify_checkpoint(d, info, False)) == 1


def test_the_info_file_is_never_a_manifest_member(tmp_path):
    d = _checkpoint(tmp_path)
    (d / "ckpt-info.json").write_text("{}")
    files = {"model.bin": {"size": len(DATA)}, "ckpt-info.json": {"size": 2}}
    problems = verify_checkpoint(d, _manifest_info(files), False)
    assert len(problems) == 1 and "not a plain file name" in problems[0]


def test_a_manifest_member_that_is_a_directory_or_link_is_a_problem(tmp_path):
    d = _checkpoint(tmp_path)
    (d / "sub").mkdir()
    (d / "link").symlink_to(d / "model.bin")
    files = {"model.bin": {"size": len(DATA)}, "sub": {"size": 0},
             "link": {"size": len(DATA)}}
    problems = verify_checkpoint(d, _manifest_info(files), False)
    assert len(problems) == 2
    assert all("not a regular file" in p for p in problems)


def _info_file(d: Path, info: dict) -> None:
    (d / "ckpt-info.json").write_text(json.dumps(info))


def test_check_checkpoint_accepts_a_good_one_and_returns_its_info(tmp_path):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA)}})
    _info_file(d, info)
    assert check_checkpoint(d, 5, True) == (info, [])


def test_check_checkpoint_refuses_another_epoch_and_a_non_integer_epoch(tmp_path):
    d = _checkpoint(tmp_path)
    for epoch in (4, 5.0, "5", None):
        _info_file(d, _manifest_info({"model.bin": {"size": len(DATA)}}, epoch=epoch))
        info, problems = check_checkpoint(d, 5, False)
        assert info is not None and len(problems) == 1 and "says epoch" in problems[0]


def test_check_checkpoint_of_a_missing_link_or_file_directory(tmp_path):
    d = _checkpoint(tmp_path)
    assert check_checkpoint(tmp_path / "nope", 5, False)[0] is None
    (tmp_path / "link").symlink_to(d)
    info, problems = check_checkpoint(tmp_path / "link", 5, False)
    assert info is None and "links are never followed" in problems[0]
    info, problems = check_checkpoint(d, 5, False)
    assert info is None and problems == ["ckpt-info.json: missing (incomplete checkpoint)"]
    (d / "ckpt-info.json").write_text("[1]")
    info, problems = check_checkpoint(d, 5, False)
    assert info is None and "cannot be read" in problems[0]


@pytest.mark.parametrize("field,value", [
    ("best_metric_last", "0.5"), ("metric_value", [1]), ("epoch_best", 2.0),
    ("epoch_best", -1), ("epoch_best", True), ("checksum", 5), ("best_metric_last", 10**400),
])
def test_check_checkpoint_reports_fields_of_the_wrong_type(tmp_path, field, value):
    d = _checkpoint(tmp_path)
    info = _manifest_info({"model.bin": {"size": len(DATA)}}, **{field: value})
    (d / "ckpt-info.json").write_text(json.dumps(info))
    _, problems = check_checkpoint(d, 5, False)
    assert len(problems) == 1 and field in problems[0]


@pytest.mark.parametrize("field,value", [
    ("best_metric_last", 0.5), ("best_metric_last", 3), ("metric_value", None),
    ("epoch_best", 0), ("epoch_best", 4), ("checksum", "abc"),
])
def test_check_checkpoint_accepts_fields_of_the_right_type(tmp_path, field, value):
    d = _checkpoint(tmp_path)
    _info_file(d, _manifest_info({"model.bin": {"size": len(DATA)}}, **{field: value}))
    assert check_checkpoint(d, 5, False)[1] == []


def test_has_checksums_of_a_manifest_needs_every_entry_to_have_one():
    assert has_checksums({"files": {"a": {"size": 1, "checksum": "x"}}})
    assert has_checksums({"files": {"a": {"size": 1, "checksum": "x"},
                                    "b": {"size": 2, "checksum": "y"}}})
    assert not has_checksums({"files": {"a": {"size": 1, "checksum": "x"}, "b": {"size": 2}}})
    assert not has_checksums({"files": {"a": {"size": 1}}})
    assert not has_checksums({"files": {"a": 5}})


def test_has_checksums_of_a_legacy_record_is_its_checksum_string():
    assert has_checksums({"checksum": "123"})
    assert not has_checksums({"checksum": DISABLED})
    assert not has_checksums({"checksum": 123})
    assert not has_checksums({})
    assert has_checksums({"files": {}, "checksum": "123"})  # an empty manifest says nothing


def test_an_engine_checkpoint_with_checksums_has_checksums(tmp_path):
    e = engine(tmp_path, ckpt_checksum=True)
    train(e, [1])
    assert has_checksums(info(tmp_path, 1))
    e2 = engine(tmp_path / "b", ckpt_checksum=False)
    train(e2, [1])
    assert not has_checksums(info(tmp_path / "b", 1))


def test_checksum_file_refuses_a_fifo_and_a_link_when_not_following(tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        checksum_file(fifo)
    (tmp_path / "f").write_bytes(DATA)
    (tmp_path / "l").symlink_to(tmp_path / "f")
    assert checksum_file(tmp_path / "l") == checksum_file(tmp_path / "f")
    with pytest.raises(OSError):
        checksum_file(tmp_path / "l", follow_symlinks=False)


def test_checksum_fd_reads_from_the_start_whatever_the_offset(tmp_path):
    import os

    (tmp_path / "f").write_bytes(DATA)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        os.lseek(fd, 10, os.SEEK_SET)
        assert integrity.checksum_fd(fd) == checksum_file(tmp_path / "f")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10
    finally:
        os.close(fd)


def test_new_hasher_refuses_an_unknown_algorithm_naming_the_accepted():
    with pytest.raises(ValueError, match="xxh3_64"):
        integrity.new_hasher("md5")
