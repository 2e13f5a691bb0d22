"""Low-level shared memory for the event ring: named segments, liveness locks, memory ordering.

Segments. `Segment.create(name, size)` makes /dev/shm/<name> (every page allocated) through
`multiprocessing.shared_memory`, so the creating process's resource tracker still removes it if
that process dies without unlinking (SIGKILL of the launcher). `Segment.attach(name)` maps an
existing segment and does NOT register it anywhere: see `_attach_untracked` for the CPython bug
this works around. Only the creator is expected to `unlink()`; unlinking is idempotent.

Liveness locks. A process that takes a role in a segment (the ring's writer, a reader slot) holds
a Linux open-file-description (OFD) byte-range lock on one byte of the segment file for as long
as it keeps the role. The kernel drops the lock when the process dies however it dies (SIGKILL
included), so "is that reader still alive?" is one `fcntl` call, exact, with no heartbeat timeout
to tune, no pid reuse and no pid-namespace problem. Taking the lock non-blocking is also the
atomic claim of the role: two readers can never own one slot. OFD locks (Linux >= 3.15) belong to
an open file description rather than to a process, so each role opens its own descriptor
(`Segment.open_fd`) and roles held inside one process still see each other. A descriptor must not
be shared with a forked child (the evstream stages use `spawn`, which does not share them).

Ordering. The ring is a seqlock over plain 8-byte-aligned int64 stores and loads (numpy writes
an aligned int64 element with one instruction, which is atomic on 64-bit CPUs). On x86-64 the
hardware keeps stores in order and loads in order (TSO), which is all a seqlock needs, so
`fence()` is a no-op there. On weakly ordered CPUs (aarch64, e.g. a Jetson next to the camera)
`fence()` is a real `fence seq_cst` compiled once per process with Numba.

`exit_on_sigterm()` turns SIGTERM into SystemExit for the duration of a `with` block (when the
process has no SIGTERM handler of its own), so `finally` clauses, unlinking included, run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import platform
import signal
import struct
import threading
from multiprocessing.shared_memory import SharedMemory

SHM_DIR = "/dev/shm"

# struct flock on 64-bit Linux (x86-64 and aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (+ padding). l_pid must be 0 for OFD locks.
_FLOCK = struct.Struct("@hhqqi4x")


def shm_path(name: str) -> str:
    """The file behind a POSIX shared memory name on Linux."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad shared memory name {name!r}")
    return os.path.join(SHM_DIR, name)


class Segment:
    """A mapped shared memory segment: `buf` (writable memoryview), `name`, `size`, `owner`."""

    def __init__(self, name: str, buf: memoryview, size: int, owner: bool, closer, unlinker):
        self.name = name
        self.buf = buf
        self.size = size
        self.owner = owner
        self._closer = closer
        self._unlinker = unlinker
        self.closed = False
        self.unlinked = False

    @classmethod
    def create(cls, name: str, size: int) -> "Segment":
        """Make the segment and allocate every page of it now (posix_fallocate), so a full
        /dev/shm fails here with OSError(ENOSPC), leaving nothing behind, and not as a SIGBUS
        in whichever process writes first."""
        shm_path(name)  # validates the name
        shm = SharedMemory(name=name, create=True, size=size)
        seg = cls(name, shm.buf, size, True, shm.close, shm.unlink)
        try:
            fd = seg.open_fd()
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except BaseException:
            seg.close()
            seg.unlink()
            raise
        return seg

    @classmethod
    def attach(cls, name: str) -> "Segment":
        return _attach_untracked(name)

    def open_fd(self) -> int:
        """A fresh descriptor on the segment file (its own open file description, for OFD locks)."""
        return os.open(shm_path(self.name), os.O_RDWR)

    def populate(self, write: bool, offset: int = 0) -> bool:
        """Map every page of the segment from `offset` into this process now (and for `write`
        make them writable), so the hot path takes no page faults later: madvise
        MADV_POPULATE_WRITE / _READ (Linux >= 5.14). It never changes the contents. False where
        the kernel cannot (the pages then fault in on first use, as before)."""
        return _populate(self.buf, offset, write)

    def close(self) -> None:
        """Unmap. Raises BufferError while numpy views over `buf` are still alive."""
        if not self.closed:
            self._closer()
            self.closed = True

    def unlink(self) -> None:
        """Remove the name from /dev/shm (mappings stay valid). Idempotent."""
        if self.unlinked:
            return
        self.unlinked = True
        try:
            self._unlinker()
        except FileNotFoundError:
            pass


_MADV_POPULATE_READ, _MADV_POPULATE_WRITE = 22, 23
_PAGE = mmap.PAGESIZE


def _populate(buf: memoryview, offset: int, write: bool) -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = -(-offset // _PAGE) * _PAGE
    length = len(buf) - start
    if length <= 0:
        return True
    anchor = ctypes.c_char.from_buffer(buf)        # the mapping's address (page-aligned)
    try:
        addr = ctypes.addressof(anchor) + start
    finally:
        del anchor
    advice = _MADV_POPULATE_WRITE if write else _MADV_POPULATE_READ
    return libc.madvise(addr, length, advice) == 0


def adopt(seg: Segment, make):
    """Wrap a segment this process just created and wrote its header into: -> make(seg). If
    `make` refuses it, the segment is unlinked before the error propagates (attach_as's twin
    for the creating side)."""
    try:
        return make(seg)
    except BaseException:
        seg.unlink()
        raise


def attach_as(name: str, make):
    """Attach to segment `name` and wrap it: -> make(segment). If `make` refuses the segment (it
    is not what the caller expects), the mapping is closed before the error propagates."""
    seg = Segment.attach(name)
    try:
        return make(seg)
    except BaseException:
        seg.close()
        raise


def _attach_untracked(name: str) -> Segment:
    # CPython 3.11 bug (bpo-39959 / gh-82300, still the default in 3.12 and 3.13, where only
    # `track=False` opts out): `SharedMemory(name=...)` registers a segment it merely ATTACHES to
    # with the attaching process's resource tracker, which unlinks the segment and warns
    # "leaked shared_memory objects" when that process exits, destroying the owner's live ring.
    # Calling `resource_tracker.unregister` afterwards is no cure: processes started by
    # multiprocessing share their parent's tracker, whose registry is a set, so it would drop
    # the OWNER's registration too (and the owner's later unlink then makes the tracker print a
    # KeyError). So attaching maps /dev/shm/<name> directly and never talks to the tracker.
    # tests/test_ring.py::test_cpython_attach_bug_and_workaround shows the bug on plain
    # SharedMemory and that this path is free of it.
    path = shm_path(name)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise FileNotFoundError(f"no shared memory segment named {name!r} ({path})") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"shared memory segment {name!r} is empty")
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    buf = memoryview(mm)

    def closer():
        buf.release()
        mm.close()

    def unlinker():
        os.unlink(path)

    return Segment(name, buf, size, False, closer, unlinker)


# -- OFD byte-range locks ------------------------------------------------------------------------

def try_lock(fd: int, offset: int) -> bool:
    """Take an exclusive OFD lock on byte `offset` of `fd`'s file, without waiting."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def unlock(fd: int, offset: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0))


def locked_elsewhere(fd: int, offset: int) -> bool:
    """Does another open file description (alive: the kernel drops a dead one's) hold `offset`?"""
    res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                      _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
    return _FLOCK.unpack(res)[0] != fcntl.F_UNLCK


# -- memory ordering -----------------------------------------------------------------------------

def compile_fence():
    """A Numba-compiled full memory fence (LLVM `fence seq_cst`): () -> None."""
    from numba import njit, types
    from numba.extending import intrinsic

    @intrinsic
    def _fence_seq_cst(typingctx):
        def codegen(context, builder, signature, args):
            builder.fence("seq_cst")
            return context.get_dummy_value()
        return types.void(), codegen

    @njit(nogil=True)
    def fence_seq_cst():
        _fence_seq_cst()

    fence_seq_cst()  # compile now, not in the middle of a write
    return fence_seq_cst


def _noop_fence() -> None:
    """x86-64 keeps stores in order and loads in order: a seqlock needs no fence instruction."""


TSO_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
_fence_impl = _noop_fence if platform.machine().lower() in TSO_MACHINES else None


def fence() -> None:
    global _fence_impl
    if _fence_impl is None:
        _fence_impl = compile_fence()
    _fence_impl()


# -- signals -------------------------------------------------------------------------------------

def _sigterm_to_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_sigterm():
    """Inside the block, SIGTERM raises SystemExit(143) so `finally` clauses run.

    Only where it can and should: in the main thread, and when SIGTERM still has its default
    action (an application that installed its own handler keeps it).
    """
    installed = False
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_exit)
        installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def signals_blocked():
    """Hold SIGINT/SIGTERM back (they are delivered on leaving) around a must-finish step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
