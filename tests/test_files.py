"""Tests for emovec._files: files appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from emovec._files import atomic_path, write_text


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
