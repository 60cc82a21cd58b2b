"""Tests for emovec._files: files appear whole or not at all, an unwritable destination is
found before the work that would fill it, and a text file is read within a bound."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from emovec._files import (
    NotWritableError,
    atomic_path,
    check_writable,
    file_set,
    read_text,
    write_text,
)


def test_write_text_creates_the_folder_and_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "report.md"
    write_text(target, "first")
    write_text(target, "zweite Fassung ü")
    assert target.read_text(encoding="utf-8") == "zweite Fassung ü"
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_staging_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as staging:
        staging.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# --- check_writable: an unwritable destination is found before the work -------------------


def test_check_writable_leaves_nothing_behind(tmp_path: Path) -> None:
    """Not even the folders it made to prove the path writable: an interrupted command left
    an empty output folder behind."""
    target = tmp_path / "new" / "deeper" / "v.safetensors"
    assert check_writable(str(target)) == target
    assert list(tmp_path.iterdir()) == []  # the probe and its folders are gone
    target.parent.mkdir(parents=True)
    assert check_writable(target) == target
    assert list(target.parent.iterdir()) == []
    target.write_text("old")
    assert check_writable(target) == target
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == [
        "v.safetensors"
    ]


def _unwritable(tmp_path: Path, where: str) -> tuple[Path, Path]:
    """A destination that cannot be written even by root, and the path the error names."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if where == "parent is a file":
        return blocker / "v.safetensors", blocker
    if where == "grandparent is a file":
        return blocker / "sub" / "v.safetensors", blocker
    if where == "a folder":
        return tmp_path, tmp_path
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    return Path("/proc/emovec-test.safetensors"), Path("/proc")


@pytest.mark.parametrize(
    "where", ["parent is a file", "grandparent is a file", "a folder", "in /proc"]
)
def test_check_writable_refuses_with_a_clear_error(tmp_path: Path, where: str) -> None:
    target, named = _unwritable(tmp_path, where)
    with pytest.raises(NotWritableError) as caught:
        check_writable(target)
    error = caught.value
    # Both an OSError and a ValueError (the command line reports ValueErrors in one line).
    assert isinstance(error, OSError) and isinstance(error, ValueError)
    assert error.filename == str(target) and error.errno is not None
    message = str(error)
    assert message.startswith(f"cannot write {target} (") and str(named) in message
    assert "Choose a location you can write to" in message
    assert "\n" not in message
    assert not target.is_file()


def test_check_writable_refuses_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root writes anyway
            pytest.skip("this user can write to read-only folders")
        with pytest.raises(NotWritableError, match="Permission denied"):
            check_writable(folder / "v.safetensors")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_not_writable_error_survives_pickling(tmp_path: Path) -> None:
    """Raised in a worker process, it must reach the parent intact."""
    target, _ = _unwritable(tmp_path, "parent is a file")
    with pytest.raises(NotWritableError) as caught:
        check_writable(target)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is NotWritableError
    assert (str(copy), copy.filename, copy.errno) == (
        str(caught.value),
        caught.value.filename,
        caught.value.errno,
    )


def test_read_text_reads_a_regular_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.txt"
    path.write_text("Wie geht's?\n", encoding="utf-8")
    assert read_text(path, "queries") == "Wie geht's?\n"
    assert read_text(path, "queries", limit=len(b"Wie geht's?\n")) == "Wie geht's?\n"


def test_read_text_refuses_a_device_and_a_fifo_at_once(tmp_path: Path) -> None:
    """/dev/zero filled 2.4 GB in 5 s and a FIFO blocked forever, deaf to Ctrl-C."""
    with pytest.raises(ValueError, match="not a regular file; give queries as a file"):
        read_text("/dev/zero", "queries")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # no writer ever comes: opening it would block
    with pytest.raises(ValueError, match="not a regular file"):
        read_text(fifo, "pairs")


def test_read_text_refuses_a_file_over_the_limit_and_bytes_that_are_not_utf8(
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"x" * 2049)
    with pytest.raises(ValueError, match="larger than"):
        read_text(path, "pairs", limit=2048)
    path.write_bytes(b"caf\xe9 \xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        read_text(path, "pairs")
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "missing.txt", "queries")


# --- file_set: a bank and its reports appear together or not at all ---------------------


def test_a_file_set_appears_whole(tmp_path: Path) -> None:
    bank, report = tmp_path / "bank.safetensors", tmp_path / "out" / "deep" / "report.md"
    bank.write_text("old bank")
    with file_set() as stage:
        staged = stage(bank)
        assert staged.parent == bank.parent and staged.suffix == ".safetensors"
        staged.write_text("new bank")
        stage(report).write_text("report")
        assert bank.read_text() == "old bank" and not report.exists()  # nothing yet
    assert (bank.read_text(), report.read_text()) == ("new bank", "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors", "out"]


def test_an_interrupted_file_set_leaves_the_old_files_and_no_new_folder(tmp_path: Path) -> None:
    """calibrate interrupted while writing left calibration.md and .json without the bank
    they describe, and an empty output folder."""
    bank = tmp_path / "bank.safetensors"
    bank.write_text("old bank")
    with pytest.raises(KeyboardInterrupt), file_set() as stage:
        stage(tmp_path / "report" / "calibration.md").write_text("table")
        stage(bank).write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]
    assert bank.read_text() == "old bank"
