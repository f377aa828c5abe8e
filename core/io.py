"""Atomic writes: a file, or a whole folder, appears complete or not at all (never truncated or half written)."""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function that writes to an open binary file) to a temporary file beside
    ``path``, sync it and rename it into place, so an interrupted write never leaves a truncated file or a
    half-overwritten previous one. The temporary name is ``.<name>.<random>.tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(out_dir: str | Path, keep_concurrent: bool = False) -> Iterator[Path]:
    """Yield a new temporary sibling folder of ``out_dir`` to fill; on success rename it to ``out_dir``, which
    must be missing or empty (an empty one is replaced). On an error the temporary folder is removed.

    ``keep_concurrent``: if a non-empty ``out_dir`` appeared meanwhile (a concurrent deterministic generation),
    keep it and drop ours instead of failing. The folder is made readable by all (0o755).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private
        try:
            os.replace(tmp, out_dir)  # replaces an empty folder, never a non-empty one
        except OSError:
            if not (keep_concurrent and out_dir.is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
