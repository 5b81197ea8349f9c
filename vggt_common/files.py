"""Files that are never half-written, and one inter-process lock.

Every file or folder a reader may open while a writer is busy (checkpoints, adapters, caches,
the sweep's own records) is written under a temporary name in the same folder and renamed into
place: a reader sees the old version or the new one, never a mix. Standard library only: the
training code, the tracking package and the sweep driver all use it.
"""

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[Path], None], *,
                 fsync: bool = False) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename.

    Args:
        path: the file to (re)place; its folder is created.
        data: text, bytes, or a function that writes the temporary file given its path
            (e.g. `lambda tmp: torch.save(obj, tmp)`).
        fsync: flush the data to the disk before the rename (survives a power loss).

    Returns:
        `path` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode())
            elif isinstance(data, bytes):
                f.write(data)
        if callable(data):
            data(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary folder next to `path`; on success it replaces `path` whole.

    An older `path` is moved aside first and removed after the rename, so a reader finds either
    the old folder or the new one. On an exception the temporary folder is removed and `path`
    is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)) / path.name
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock between processes on `path` (created); released when the holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
