"""Atomic writes of files and folders (core.io)."""
import os
from pathlib import Path

import pytest

from core.io import atomic_folder, atomic_write


def test_atomic_write_takes_bytes_or_a_writer_and_leaves_no_temporary(tmp_path: Path) -> None:
    atomic_write(tmp_path / "sub" / "a.bin", b"abc")
    atomic_write(tmp_path / "sub" / "b.bin", lambda f: f.write(b"from a writer"))
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"from a writer"
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.bin", "b.bin"]


def test_a_failing_writer_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_write(path, b"old")

    def half_then_fail(f) -> None:
        f.write(b"new but")
        raise OSError("simulated failure")

    with pytest.raises(OSError, match="simulated"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["last.ckpt"]


def test_atomic_folder_appears_whole_and_replaces_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with atomic_folder(tmp_path / "out") as folder:
        assert folder.parent == tmp_path and folder.name.startswith(".out.tmp")
        (folder / "x.txt").write_text("x")
        assert not (tmp_path / "out" / "x.txt").exists()
    assert (tmp_path / "out" / "x.txt").read_text() == "x"
    assert os.stat(tmp_path / "out").st_mode & 0o777 == 0o755
    assert os.listdir(tmp_path) == ["out"]


def test_atomic_folder_removes_its_work_on_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="half"):
        with atomic_folder(tmp_path / "out") as folder:
            (folder / "x.txt").write_text("x")
            raise RuntimeError("half done")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("keep_concurrent", [False, True])
def test_a_folder_that_appeared_meanwhile_is_kept_or_refused(tmp_path: Path, keep_concurrent: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"

    def concurrent_then_fill(folder: Path) -> None:
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        (folder / "ours.txt").write_text("ours")

    context = atomic_folder(out, keep_concurrent=keep_concurrent)
    if keep_concurrent:
        with context as folder:
            concurrent_then_fill(folder)
    else:
        with pytest.raises(OSError):
            with context as folder:
                concurrent_then_fill(folder)
    assert os.listdir(out) == ["theirs.txt"] and os.listdir(tmp_path) == ["out"]
