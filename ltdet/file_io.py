"""Atomic file writes: a reader (or a second job on a shared file system) never sees a partial
file, and a crash mid-write leaves the previous version in place."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


@contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path`` in one
    ``os.replace`` (atomic on POSIX within a file system), on an exception it is removed."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open writes a new file: mode must contain 'w', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would differ from a plain open()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def restored_on_error(path: str) -> Iterator[None]:
    """Within this block ``path`` may be replaced (by code that writes it in place); if the block
    raises, its previous content is put back atomically (or the file removed if it had none)."""
    previous = None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            previous = f.read()
    try:
        yield
    except BaseException:
        if previous is not None:
            with atomic_open(path, "wb") as f:
                f.write(previous)
        elif os.path.isfile(path):
            os.remove(path)
        raise
