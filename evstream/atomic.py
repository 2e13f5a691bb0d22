"""Atomic file writes: a reader sees the old file or the whole new one, never part of it.

    atomic_write(path, lambda f: torch.save(obj, f))            # binary
    atomic_write(path, lambda f: f.write(text), mode="w")       # text

The data goes to a temporary file in the same directory (so the final rename cannot cross file
systems), is flushed and fsynced, then `os.replace`d over `path`; the directory is fsynced too
so the rename survives a power cut (best effort: some file systems refuse directory fds). On any
failure the temporary file is removed and the exception propagates; an OSError of the user's
environment (no such folder, no permission, disk full: outpaths.USER_ERRNOS) becomes a one-line
EvstreamError naming `path` and `what` it was. The file gets the mode a
plain open() would give (0o666 less the umask), not mkstemp's 0o600. `durable=False` skips the
fsyncs, for files written many times a second (viewer PNG frames).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from evstream.outpaths import output_errors


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path, write, mode: str = "wb", durable: bool = True, what: str = "file") -> None:
    path = Path(path)
    with output_errors(path, what):
        _atomic_write(path, write, mode, durable)


def _atomic_write(path: Path, write, mode: str, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
