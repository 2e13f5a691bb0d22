"""Output paths: a folder that cannot be made, no permission or a full disk is one line.

    d = ensure_dir(args.out, "export")              # EvstreamError naming the folder and why
    with output_errors(path, "checkpoint"):          # OSError inside -> one-line EvstreamError
        atomic_write(path, ...)
    check_free(path, "video")                        # a disk already (nearly) full, up front

Every command that writes goes through these (and the cli turns any OSError that escapes with
an errno of the environment kind, `USER_ERRNOS`, into the same one line), so a user who points
an output at a read-only mount, a missing drive or a full disk reads which path and why, exit 2,
never a traceback. Some libraries do not raise OSError on a full disk: torch's zip writer fails
on the position check after a short write (nn/checkpoint.py works around it), OpenCV's video
writer drops frames silently (viewer/video.py checks what reached the disk), dv-processing's
writer aborts the process (sources/writer.py checks the free space before each write).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from evstream.errors import EvstreamError

# errnos that say something about the user's environment, not about evstream's code
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                         errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
                         errno.EFBIG, errno.EIO, errno.ENXIO, errno.ENODEV, errno.ELOOP})

MIN_FREE_BYTES = 1 << 20       # below this much free space a writer stops before it fails


def reason(e: OSError) -> str:
    """The short why of an OSError: 'disk full' for ENOSPC/EDQUOT, else its strerror."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full" if e.errno == errno.ENOSPC else "disk quota exceeded"
    return e.strerror or str(e)


def ensure_dir(path: str | os.PathLike, what: str) -> Path:
    """Create directory `path` (and parents) or raise a one-line EvstreamError."""
    p = Path(path)
    check_can_create(p, what)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = e.filename or p
        raise EvstreamError(f"{p}: cannot create the {what} folder ({where}: {reason(e)})") \
            from None
    if not os.access(p, os.W_OK):
        raise EvstreamError(f"{p}: the {what} folder is not writable")
    return p


def check_can_create(path: str | os.PathLike, what: str) -> None:
    """A one-line EvstreamError unless folder `path` exists or could be made (its nearest
    existing ancestor is a writable folder); creates nothing, so a command can check its output
    before its long work."""
    p = Path(path).absolute()
    if p.exists():
        if not p.is_dir():
            raise EvstreamError(f"{path}: the {what} folder exists and is not a folder")
        base = p
    else:
        base = p.parent
        while not base.exists() and base != base.parent:
            base = base.parent
        if not base.is_dir():
            raise EvstreamError(f"{path}: cannot create the {what} folder ({base} is not a "
                                f"folder)")
    if not os.access(base, os.W_OK):
        raise EvstreamError(f"{path}: cannot create the {what} folder ({base} is not writable)")


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, what: str):
    """Turn an OSError raised inside the block into a one-line EvstreamError naming `path`."""
    try:
        yield
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise
        raise EvstreamError(f"{path}: cannot write the {what} ({reason(e)})") from None


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or its
    nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def check_free(path: str | os.PathLike, what: str, need: int = MIN_FREE_BYTES) -> None:
    """A one-line EvstreamError when fewer than `need` bytes are free where `path` goes."""
    left = free_bytes(path)
    if left < need:
        raise EvstreamError(f"{path}: cannot write the {what} (disk full: {left} bytes free, "
                            f"{need} needed)")
