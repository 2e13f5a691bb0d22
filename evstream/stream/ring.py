"""A single-writer, many-reader ring of EVENT_DTYPE events in shared memory.

    ring = EventRing.create(1 << 22)            # the launcher owns it and unlinks it at the end
    w = EventRing.attach(ring.name).writer()    # in the source process
    r = EventRing.attach(ring.name).reader()    # in each consumer process
    w.write(events); r.read() -> a copy of the next events

Contracts
- Positions are monotonic 64-bit event counts ("sequence numbers"): event number s lives in slot
  s % capacity. The writer publishes `commit` (events completely written) and, BEFORE it starts
  copying, `claim` (the end of what it is about to write; claim >= commit). A write of events
  [a, b) overwrites the slots of events [a - capacity, b - capacity).
- Readers never return torn data (a seqlock): a reader copies [pos, commit), then re-reads
  `claim`; every event numbered below claim - capacity may have been overwritten during the copy,
  so it is cut off and counted in `lost`. Nothing is ever returned twice or out of order, and for
  one reader `writer.written == events read + reader.lost` exactly once the stream has drained
  (for a reader attached before the first write).
- Policy "live": the writer never blocks; a slow reader is lapped and counts what it lost. A write
  larger than the ring keeps only its newest `capacity` events (the rest count as lost).
- Policy "lossless": the writer waits until the slowest ACTIVE reader has read far enough for the
  next events to fit; it writes what fits as soon as it fits (never more than the ring at once).
  `write(events, timeout)` returns how many events it wrote: fewer than given when the timeout
  ran out first (it never raises TimeoutError); `timeout=None` waits as long as it takes. With no
  active reader a lossless writer does not wait (there is nobody to keep the data for).
- Reader slots live in the shared header: position, active flag, pid, heartbeat (the monotonic
  time of its last read call), lost count and a generation number. A reader process holds an OFD
  lock on its slot (see shm.py) while it keeps the slot, so a reader that died, even by SIGKILL,
  is detected exactly by the writer the moment it would wait for it, and is skipped from then on.
  A reader that is alive but stuck is NOT skipped: lossless means lossless, so pass a timeout and
  look at `RingWriter.readers()` (idle seconds per slot) to decide. We deliberately do not declare
  readers dead on a stale heartbeat: a healthy consumer may spend seconds in a model warm-up.
- A new reader starts at the current end of the stream (it sees events written after it joined).
  Readers should be created before the writer starts (the launcher's ready handshake does this).
- `close_stream()` marks the end of the stream: a reader gets `None` from `read()` once it has
  drained everything before the mark. An empty array means "nothing new before the timeout".
- Waiting (a reader with nothing to read, a lossless writer with no space) polls for ~20 us,
  then blocks on a futex (Linux x86-64 / aarch64, through ctypes): the writer bumps a 32-bit
  "data" word in the header after every commit (and at the end of the stream) and wakes its
  waiters; a reader of a lossless ring bumps a "space" word after every read and wakes a writer
  waiting for room. A waiter reads the word BEFORE it looks at the positions and the kernel
  sleeps only while the word still holds that value, so a wake cannot be missed on a single
  writer/single reader ring; every wait is also capped (100 ms for readers, 1 ms for a writer,
  whose word several readers may bump at once) so a missed wake only costs time. An idle reader
  thus uses no CPU and wakes within tens of microseconds of a commit (a sleeping back-off used
  to wake every ~200 us and burned ~30 % of a core on this machine when idle). Elsewhere the
  wait is a sleep with a doubling back-off from 10 us to 100 us. A wake with nobody waiting
  is one ~1 us syscall.
- `last_write_wall_ns` (reader): the writer's `time.monotonic_ns()` when it committed the write
  that contains the newest event of the last read; the last 256 write times are kept in the
  header for this. CLOCK_MONOTONIC is shared by all processes of one host.
- Pages: `create` allocates every page of the segment (posix_fallocate), so a full /dev/shm is an
  OSError there rather than a SIGBUS in the writer; a writer and each reader map all the data
  pages when they take their role (madvise MADV_POPULATE_WRITE / _READ), so no write or read on
  the hot path takes a page fault. Unpopulated, the first pass through a 64 MiB ring cost its
  writer ~40 ms of faults on this machine, inside the stream.
- Only events go through the ring; frames and IMU travel over zmq (evstream.stream.wire).
- The creator owns the segment: `unlink()` it in a `finally`, or use the ring as a context
  manager (`with EventRing.create(n) as ring:`), which also turns a default-action SIGTERM into
  SystemExit while the block runs so the unlink happens. Processes that attach never unlink and
  never register the segment with their resource tracker (CPython bug: see shm.py).
"""

from __future__ import annotations

import ctypes
import os
import platform
import secrets
import struct
import time

import numpy as np

from evstream.stream import shm
from evstream.types import EVENT_DTYPE

_MAGIC = int.from_bytes(b"EVRING01", "little")
_LAYOUT = 2
_LINE = 8                       # int64 words per 64-byte cache line

# header words, line 0: constants
_W_MAGIC, _W_LAYOUT, _W_CAPACITY, _W_MAX_READERS, _W_ITEMSIZE, _W_DATA_OFFSET, _W_TS_LEN = range(7)
# line 1: the writer's state
_W_COMMIT, _W_CLAIM, _W_EOS, _W_WRITES, _W_WRITER_PID, _W_POLICY = range(8, 14)
_W_DATA_SEQ, _W_SPACE_SEQ = 14, 15  # futex words: bumped on commit / on a lossless read
_SEQ_MASK = 0x7FFF_FFFF             # futex compares 32 bits (the low half, little-endian)
_TS_LEN = 256                   # write-time history: end sequence and wall time of recent writes
_W_TS_END = 2 * _LINE
_W_TS_WALL = _W_TS_END + _TS_LEN
_W_SLOTS = _W_TS_WALL + _TS_LEN  # one cache line per reader slot
_S_ACTIVE, _S_POS, _S_HEARTBEAT, _S_PID, _S_GEN, _S_LOST = range(6)
_WRITER_LOCK_BYTE = _W_COMMIT * 8
_MAX_READERS_LIMIT = 64

POLICIES = ("live", "lossless")
_POLICY_CODE = {"live": 1, "lossless": 2}

# waiting: busy-poll this long, then block on the futex for at most *_WAIT_MAX_S at a time
# (without futexes: sleep with a doubling back-off between the SLEEP_ bounds)
SPIN_NS = 20_000
SLEEP_MIN_S = 10e-6
SLEEP_MAX_S = 100e-6
READER_WAIT_MAX_S = 0.1
WRITER_WAIT_MAX_S = 0.001


def _slot_lock_byte(i: int) -> int:
    return (_W_SLOTS + i * _LINE) * 8


# -- futex ---------------------------------------------------------------------------------------

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(
    platform.machine().lower())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1     # not the _PRIVATE forms: the words are shared by processes
_INT_MAX = 0x7FFF_FFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_futex():
    if _SYS_FUTEX is None or not os.uname().sysname == "Linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


_syscall = _load_futex()


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the 32-bit word at `addr` holds `expected`, at most timeout_s (or until a
    wake / signal). Without futexes: a plain sleep of timeout_s."""
    if _syscall is None:
        time.sleep(timeout_s)
        return
    sec = int(timeout_s)
    ts = _Timespec(sec, int((timeout_s - sec) * 1e9))
    _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT, ctypes.c_int(expected),
             ctypes.byref(ts), None, 0)


def futex_wake(addr: int) -> None:
    if _syscall is not None:
        _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, _INT_MAX, None, None, 0)


class _Backoff:
    """`pause(deadline, wait, cap_s)`: poll for SPIN_NS, then block in `wait(seconds)` (a futex
    wait) for at most cap_s at a time, or without futexes sleep with a doubling back-off from
    SLEEP_MIN_S to SLEEP_MAX_S; False once `deadline` has passed."""

    __slots__ = ("t_start_ns", "sleep_s")

    def __init__(self):
        self.t_start_ns = time.monotonic_ns()
        self.sleep_s = SLEEP_MIN_S

    def pause(self, deadline: float | None, wait, cap_s: float) -> bool:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        if time.monotonic_ns() - self.t_start_ns < SPIN_NS:
            return True
        if _syscall is None:
            cap_s = self.sleep_s
            self.sleep_s = min(self.sleep_s * 2, SLEEP_MAX_S)
        wait(cap_s if deadline is None else min(cap_s, deadline - now))
        return True


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


class EventRing:
    """A handle on a ring segment in this process (see the module comment)."""

    def __init__(self, segment: shm.Segment):
        self._seg = segment
        self.name = segment.name
        if segment.size < _W_SLOTS * 8:
            raise ValueError(f"shared memory {self.name!r} is too small for an evstream event ring")
        (magic, layout, capacity, max_readers, itemsize, data_offset,
         _) = struct.unpack_from("<7q", segment.buf, 0)
        if magic != _MAGIC or layout != _LAYOUT:
            raise ValueError(f"shared memory {self.name!r} is not an evstream event ring "
                             f"(layout {_LAYOUT})")
        if itemsize != EVENT_DTYPE.itemsize:
            raise ValueError(f"event ring {self.name!r} holds {itemsize}-byte events, this "
                             f"evstream writes {EVENT_DTYPE.itemsize}")
        if capacity < 1 or not 1 <= max_readers <= _MAX_READERS_LIMIT or data_offset < 0 \
                or segment.size < data_offset + capacity * itemsize:
            raise ValueError(f"event ring {self.name!r} is truncated ({segment.size} bytes)")
        self.capacity = capacity
        self.max_readers = max_readers
        n_words = _W_SLOTS + self.max_readers * _LINE
        self._hdr = np.ndarray((n_words,), np.int64, buffer=segment.buf)
        self._ts_end = self._hdr[_W_TS_END:_W_TS_END + _TS_LEN]
        self._ts_wall = self._hdr[_W_TS_WALL:_W_TS_WALL + _TS_LEN]
        self._slots = self._hdr[_W_SLOTS:].reshape(self.max_readers, _LINE)
        self._data_addr = self._hdr.ctypes.data + 8 * _W_DATA_SEQ
        self._space_addr = self._hdr.ctypes.data + 8 * _W_SPACE_SEQ
        self._words = np.ndarray((self.capacity, EVENT_DTYPE.itemsize // 8), np.int64,
                                 buffer=segment.buf, offset=data_offset)
        self._roles: list = []          # writers/readers opened through this handle
        self._sigterm = None

    # -- lifetime --------------------------------------------------------------------------------

    @classmethod
    def create(cls, capacity_events: int, max_readers: int = 8,
               name: str | None = None) -> "EventRing":
        """Make a new ring (this process owns it: call `unlink()` when done)."""
        capacity_events, max_readers = int(capacity_events), int(max_readers)
        if capacity_events < 1:
            raise ValueError(f"ring capacity must be at least 1 event, got {capacity_events}")
        if not 1 <= max_readers <= _MAX_READERS_LIMIT:
            raise ValueError(f"max_readers must be 1..{_MAX_READERS_LIMIT}, got {max_readers}")
        name = name or f"evstream_{os.getpid()}_{secrets.token_hex(4)}"
        header_bytes = (_W_SLOTS + max_readers * _LINE) * 8
        data_offset = -(-header_bytes // 4096) * 4096
        seg = shm.Segment.create(name, data_offset + capacity_events * EVENT_DTYPE.itemsize)
        hdr = np.ndarray((_W_SLOTS,), np.int64, buffer=seg.buf)   # the segment starts zeroed
        hdr[_W_CAPACITY] = capacity_events
        hdr[_W_MAX_READERS] = max_readers
        hdr[_W_ITEMSIZE] = EVENT_DTYPE.itemsize
        hdr[_W_DATA_OFFSET] = data_offset
        hdr[_W_TS_LEN] = _TS_LEN
        hdr[_W_TS_END:_W_TS_END + _TS_LEN] = -1
        hdr[_W_LAYOUT] = _LAYOUT
        hdr[_W_MAGIC] = _MAGIC
        del hdr
        return shm.adopt(seg, cls)

    @classmethod
    def attach(cls, name: str) -> "EventRing":
        """Map an existing ring (never unlinks it, never registers it with a resource tracker)."""
        return shm.attach_as(name, cls)

    @property
    def owner(self) -> bool:
        return self._seg.owner

    def close(self) -> None:
        """Close this handle's writer/readers (releasing their slots) and unmap. Idempotent."""
        for role in list(self._roles):
            role.close()
        if self._seg.closed:
            return
        self._hdr = self._ts_end = self._ts_wall = self._slots = self._words = None
        try:
            self._seg.close()
        except BufferError:
            # a numpy view over the mapping is still referenced somewhere (e.g. a traceback);
            # the mapping goes away with the process, which is harmless: unlinking is separate
            self._seg.closed = True

    def unlink(self) -> None:
        """Remove the ring from /dev/shm (owner / launcher). Existing mappings stay valid."""
        with shm.signals_blocked():
            self._seg.unlink()

    def __enter__(self) -> "EventRing":
        self._sigterm = shm.exit_on_sigterm()
        self._sigterm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        finally:
            try:
                if self.owner:
                    self.unlink()
            finally:
                self._sigterm.__exit__(None, None, None)

    def _check_open(self) -> None:
        if self._hdr is None:
            raise ValueError(f"event ring {self.name!r} is closed in this process")

    # -- roles -----------------------------------------------------------------------------------

    def writer(self, policy: str = "live") -> "RingWriter":
        if policy not in POLICIES:
            raise ValueError(f"ring policy must be one of {POLICIES}, got {policy!r}")
        self._check_open()
        return RingWriter(self, policy)

    def reader(self) -> "RingReader":
        self._check_open()
        return RingReader(self)

    def info(self) -> dict:
        """Counters for telemetry and debugging (JSON-serialisable)."""
        self._check_open()
        h = self._hdr
        return {"name": self.name, "capacity": self.capacity, "written": int(h[_W_COMMIT]),
                "ended": bool(h[_W_EOS]), "writer_pid": int(h[_W_WRITER_PID]),
                "readers": _slot_table(self, None)}

    # -- copying ---------------------------------------------------------------------------------

    # Events are copied as pairs of int64 words: numpy copies a structured dtype field by
    # field, which is 10-20x slower than this plain memory copy of the same bytes.

    def _copy_in(self, seq: int, ev: np.ndarray) -> None:
        src = np.ascontiguousarray(ev).view(np.int64).reshape(-1, 2)
        i, n = seq % self.capacity, len(src)
        k = min(n, self.capacity - i)
        self._words[i:i + k] = src[:k]
        if n > k:
            self._words[:n - k] = src[k:]

    def _copy_in_checked(self, seq: int, ev: np.ndarray, last_t: int, width: int,
                         height: int) -> int:
        """_copy_in that checks each event as it copies it (see RingWriter.write_checked):
        -> how many events from the front passed (only those count as written)."""
        src = np.ascontiguousarray(ev).view(np.int64).reshape(-1, 2)
        i, n = seq % self.capacity, len(src)
        k = min(n, self.capacity - i)
        good = _copy_checked(src[:k], self._words[i:i + k], last_t, width, height)
        if good == k and n > k:
            good += _copy_checked(src[k:], self._words[:n - k], int(src[k - 1, 0]), width,
                                  height)
        return good

    def _copy_out(self, start: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
        i, n = start % self.capacity, end - start
        k = min(n, self.capacity - i)
        out = np.empty(n, EVENT_DTYPE) if out is None else out[:n]
        dst = out.view(np.int64).reshape(-1, 2)
        dst[:k] = self._words[i:i + k]
        if n > k:
            dst[k:] = self._words[:n - k]
        return out


_copy_checked = None    # stream/ring_kernel.copy_checked, imported by the first writer (below):
                        # the launcher, which only creates the ring, never loads Numba


def _load_copy_kernel(words: np.ndarray) -> None:
    """Load _copy_checked for the arrays a writer passes it (writable and read-only events)
    when the writer takes its role: loaded from Numba's cache at the first write instead, it
    cost the pipeline's source 3-4.5 ms inside the stream."""
    global _copy_checked
    if _copy_checked is None:
        from evstream.stream.ring_kernel import copy_checked
        _copy_checked = copy_checked
    src = np.zeros((0, 2), np.int64)
    _copy_checked(src, words[:0], 0, 1, 1)
    src.flags.writeable = False
    _copy_checked(src, words[:0], 0, 1, 1)


def _slot_table(ring: EventRing, fd: int | None) -> list[dict]:
    now = time.monotonic_ns()
    commit = int(ring._hdr[_W_COMMIT])
    rows = []
    for i in range(ring.max_readers):
        s = ring._slots[i]
        if not s[_S_ACTIVE]:
            continue
        row = {"slot": i, "pid": int(s[_S_PID]), "pos": int(s[_S_POS]),
               "lag": commit - int(s[_S_POS]), "lost": int(s[_S_LOST]),
               "idle_s": round((now - int(s[_S_HEARTBEAT])) / 1e9, 3)}
        if fd is not None:
            row["alive"] = shm.locked_elsewhere(fd, _slot_lock_byte(i))
        rows.append(row)
    return rows


class RingWriter:
    """The one writer of a ring (a second writer, in any process, is refused)."""

    def __init__(self, ring: EventRing, policy: str):
        self._ring = ring
        self.policy = policy
        self.written = 0            # events passed to write() and accepted
        self._fd = ring._seg.open_fd()
        if not shm.try_lock(self._fd, _WRITER_LOCK_BYTE):
            os.close(self._fd)
            raise RuntimeError(f"event ring {ring.name!r} already has a writer "
                               f"(pid {int(ring._hdr[_W_WRITER_PID])})")
        h = ring._hdr
        if h[_W_EOS]:
            self._release()
            raise RuntimeError(f"event ring {ring.name!r}: the stream was already closed")
        # a writer taking over from one that died mid-write keeps its claim: the slots up to
        # that claim may hold half-written events, so readers must keep treating them as such
        self._w = int(h[_W_COMMIT])
        self._claim = int(h[_W_CLAIM])
        self._writes = int(h[_W_WRITES])
        self._dead: dict[int, int] = {}     # reader slot -> generation found dead
        # a lower bound of every reader's position (see _space): readers only move forward,
        # and one that joins starts at the commit, so a value once true stays a lower bound
        self._floor = -(1 << 62)            # (none known yet: the first write looks)
        h[_W_WRITER_PID] = os.getpid()
        h[_W_POLICY] = _POLICY_CODE[policy]
        ring._seg.populate(True, int(h[_W_DATA_OFFSET]))
        _load_copy_kernel(ring._words)
        ring._roles.append(self)

    def write(self, events: np.ndarray, timeout: float | None = None) -> int:
        """Append events (EVENT_DTYPE, 1-D, sorted by the caller). Returns how many were written.

        live: never blocks, returns len(events). lossless: waits for space up to `timeout`
        seconds (None: forever) and returns what it managed to write before that.
        """
        return self._write(events, timeout, None)[0]

    def write_checked(self, events: np.ndarray, last_t: int, width: int, height: int,
                      timeout: float | None = None) -> tuple[int, bool]:
        """write() that checks the events in the same pass as it copies them (one pass over
        the memory instead of two): each must lie inside width x height and be no older than
        the one before it (the first: than last_t). Publishes the longest good prefix and
        returns (events written, bad): `bad` means events[written] failed the check and
        nothing from it on was published. Otherwise as write() (a lossless timeout returns
        (fewer, False)). A live write larger than the ring checks everything first, as the
        events it does not keep must pass too."""
        n = len(events)
        if self.policy == "live" and n > self._ring.capacity:     # (rare: check a copy)
            scratch = np.empty((n, 2), np.int64)
            good = _copy_checked(np.ascontiguousarray(events).view(np.int64).reshape(-1, 2),
                                 scratch, int(last_t), int(width), int(height))
            self._write(events[:good], timeout, None)
            return good, good < n
        return self._write(events, timeout, (int(last_t), int(width), int(height)))

    def _write(self, events, timeout, check) -> tuple[int, bool]:
        if self._fd < 0:
            raise ValueError("ring writer is closed")
        if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE or events.ndim != 1:
            raise TypeError(f"ring writes 1-D EVENT_DTYPE arrays, got "
                            f"{getattr(events, 'dtype', type(events).__name__)!r} "
                            f"shape {getattr(events, 'shape', '?')}")
        n = len(events)
        if n == 0:
            return 0, False
        cap = self._ring.capacity
        if self.policy == "live":
            keep = events if n <= cap else events[n - cap:]
            good = self._put(keep, self._w + (n - len(keep)), check)
            if good < len(keep):                # (check given: keep is all of events)
                self.written += good
                return good, True
            self.written += n
            return n, False
        done = 0
        deadline = _deadline(timeout)
        backoff = None
        h = self._ring._hdr
        while done < n:
            seq = int(h[_W_SPACE_SEQ])          # before looking: a read after this changes it
            shm.fence()
            space = self._space(n - done)
            if space <= 0:
                if backoff is None:
                    backoff = _Backoff()
                addr = self._ring._space_addr
                if not backoff.pause(deadline, lambda t: futex_wait(addr, seq, t),
                                     WRITER_WAIT_MAX_S):
                    break
                continue
            backoff = None
            k = min(space, n - done)
            good = self._put(events[done:done + k], self._w, check)
            done += good
            self.written += good
            if good < k:
                return done, True
            if check is not None:
                check = (int(events["t"][done - 1]), check[1], check[2])
        return done, False

    def _put(self, ev: np.ndarray, start: int, check=None) -> int:
        """Write `ev` as the events from sequence `start` on and publish them; with `check`
        ((last_t, width, height)) only the good prefix. -> events published."""
        ring, h = self._ring, self._ring._hdr
        end = start + len(ev)
        if end > self._claim:
            self._claim = end
        h[_W_CLAIM] = self._claim           # 1. announce what is about to be overwritten
        shm.fence()
        if check is None:                   # 2. copy
            ring._copy_in(start, ev)
        else:
            end = start + ring._copy_in_checked(start, ev, *check)
            if end == start:
                return 0
        k = self._writes % _TS_LEN          # 3. remember when this write became visible
        ring._ts_end[k] = -1
        shm.fence()
        ring._ts_wall[k] = time.monotonic_ns()
        shm.fence()
        ring._ts_end[k] = end
        self._writes += 1
        h[_W_WRITES] = self._writes
        shm.fence()
        h[_W_COMMIT] = end                  # 4. publish
        self._w = end
        self._wake_readers()
        return end - start

    def _wake_readers(self) -> None:
        h = self._ring._hdr
        shm.fence()
        h[_W_DATA_SEQ] = (int(h[_W_DATA_SEQ]) + 1) & _SEQ_MASK
        shm.fence()
        futex_wake(self._ring._data_addr)

    def _space(self, need: int = 1) -> int:
        """Events a lossless write may add now without overwriting unread data of a live reader
        (at least `need` when the readers' last known positions already leave that much room:
        then the reader slots are not looked at, which cost ~30 us a write)."""
        cap = self._ring.capacity
        room = cap - (self._w - self._floor)
        if room >= need:
            return room
        space = self._scan_space()
        self._floor = self._w - (cap - space)
        return space

    def _scan_space(self) -> int:
        ring = self._ring
        slots = ring._slots
        cap = ring.capacity
        active = np.flatnonzero(slots[:, _S_ACTIVE])
        if len(active) == 0:
            return cap
        gens = slots[active, _S_GEN]
        pos = slots[active, _S_POS]
        keep = [j for j, i in enumerate(active) if self._dead.get(int(i)) != int(gens[j])]
        if not keep:
            return cap
        min_pos = int(pos[keep].min())
        space = cap - (self._w - min_pos)
        if space > 0:
            return space
        # blocked: are the readers holding us back still alive? (one fcntl each, only now)
        found_dead = False
        for j in keep:
            i = int(active[j])
            if int(pos[j]) == min_pos and not shm.locked_elsewhere(self._fd, _slot_lock_byte(i)):
                self._dead[i] = int(gens[j])
                found_dead = True
        return self._scan_space() if found_dead else space

    def readers(self) -> list[dict]:
        """Active reader slots: pid, pos, lag, lost, idle_s (since its last read call), alive."""
        return _slot_table(self._ring, self._fd)

    def close_stream(self) -> None:
        """End of stream: readers get None after draining. Also closes this writer."""
        if self._fd < 0:
            return
        h = self._ring._hdr
        shm.fence()
        h[_W_EOS] = 1
        self._wake_readers()
        self.close()

    def close(self) -> None:
        """Give up the writer role WITHOUT ending the stream (another writer may take over)."""
        if self._fd >= 0:
            self._release()
            if self in self._ring._roles:
                self._ring._roles.remove(self)

    def _release(self) -> None:
        shm.unlock(self._fd, _WRITER_LOCK_BYTE)
        os.close(self._fd)
        self._fd = -1


class RingReader:
    """One reader slot of a ring (see the module comment for the guarantees)."""

    def __init__(self, ring: EventRing):
        self._ring = ring
        self.lost = 0
        self.last_write_wall_ns = 0
        self.slot = -1
        self._fd = ring._seg.open_fd()
        for i in range(ring.max_readers):
            if shm.try_lock(self._fd, _slot_lock_byte(i)):
                self.slot = i
                break
        else:
            os.close(self._fd)
            raise RuntimeError(f"event ring {ring.name!r}: all {ring.max_readers} reader slots "
                               f"are taken")
        s = ring._slots[self.slot]
        s[_S_GEN] += 1
        s[_S_PID] = os.getpid()
        s[_S_LOST] = 0
        s[_S_HEARTBEAT] = time.monotonic_ns()
        self._pos = int(ring._hdr[_W_COMMIT])
        s[_S_POS] = self._pos
        shm.fence()
        s[_S_ACTIVE] = 1
        ring._seg.populate(False, int(ring._hdr[_W_DATA_OFFSET]))
        ring._roles.append(self)

    @property
    def pos(self) -> int:
        """Sequence number of the next event this reader will look at."""
        return self._pos

    def read(self, max_events: int | None = None, timeout: float | None = 0.1,
             out: np.ndarray | None = None) -> np.ndarray | None:
        """The next events (a contiguous EVENT_DTYPE copy), at most `max_events` of them.

        Waits up to `timeout` seconds (None: forever) for something new; returns an empty array
        if nothing came, and None at the end of the stream once everything before it was read.
        With `out` (a writable C-contiguous 1-D EVENT_DTYPE array) the events are copied into
        it, at most len(out) of them, and the result is a view of `out` (not always starting
        at out[0]: events overwritten during the copy are cut from the front).
        """
        if self._fd < 0:
            raise ValueError("ring reader is closed")
        if out is not None:
            if not isinstance(out, np.ndarray) or out.dtype != EVENT_DTYPE or out.ndim != 1 \
                    or not out.flags.c_contiguous or not out.flags.writeable or len(out) < 1:
                raise ValueError("out must be a writable, C-contiguous, non-empty 1-D "
                                 "EVENT_DTYPE array")
            max_events = len(out) if max_events is None else min(max_events, len(out))
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        ring = self._ring
        h, cap = ring._hdr, ring.capacity
        slot = ring._slots[self.slot]
        slot[_S_HEARTBEAT] = time.monotonic_ns()
        deadline = _deadline(timeout)
        backoff = None
        while True:
            seq = int(h[_W_DATA_SEQ])           # before looking: a commit after this changes it
            shm.fence()
            ended = h[_W_EOS]
            shm.fence()
            w = int(h[_W_COMMIT])
            r = self._pos
            if w <= r:
                if ended:
                    return None
                if backoff is None:
                    backoff = _Backoff()
                addr = ring._data_addr
                if not backoff.pause(deadline, lambda t: futex_wait(addr, seq, t),
                                     READER_WAIT_MAX_S):
                    return np.empty(0, EVENT_DTYPE)
                continue
            start = max(r, int(h[_W_CLAIM]) - cap)   # below this, already being overwritten
            if start >= w:                           # everything committed is being overwritten
                self._skip(w - r)
                continue
            end = w if max_events is None else min(w, start + max_events)
            got = ring._copy_out(start, end, out)
            shm.fence()
            valid_from = int(h[_W_CLAIM]) - cap      # re-check: what got overwritten meanwhile
            cut = min(max(valid_from - start, 0), end - start)
            self._skip(start - r + cut)
            self._pos = end
            slot[_S_POS] = end
            self._wake_writer()
            if cut == end - start:                   # all of it was overwritten: try again
                if deadline is not None and time.monotonic() >= deadline:
                    return np.empty(0, EVENT_DTYPE)
                continue
            if cut:
                got = got[cut:]
            self.last_write_wall_ns = self._wall_ns(end)
            return got

    def _wake_writer(self) -> None:
        """A lossless writer may be waiting for the room this reader just made."""
        h = self._ring._hdr
        if h[_W_POLICY] == _POLICY_CODE["lossless"]:
            shm.fence()
            h[_W_SPACE_SEQ] = (int(h[_W_SPACE_SEQ]) + 1) & _SEQ_MASK
            shm.fence()
            futex_wake(self._ring._space_addr)

    def _skip(self, n: int) -> None:
        if n:
            self.lost += n
            self._pos += n
            slot = self._ring._slots[self.slot]
            slot[_S_POS] = self._pos
            slot[_S_LOST] = self.lost

    def _wall_ns(self, end: int) -> int:
        """Commit time of the write that holds event end-1 (the earliest write ending >= end)."""
        ring = self._ring
        ends = ring._ts_end.copy()
        cand = np.where(ends >= end, ends, np.iinfo(np.int64).max)
        k = int(cand.argmin())
        if ends[k] < end:                       # older than the history: use the oldest we have
            k = int(np.where(ends >= 0, ends, np.iinfo(np.int64).max).argmin())
        wall = int(ring._ts_wall[k])
        shm.fence()
        if int(ring._ts_end[k]) != int(ends[k]):  # rewritten while we looked: take the newest
            wall = int(ring._ts_wall.max())
        return wall

    def lag(self) -> int:
        """Events committed but not yet read by this reader."""
        return int(self._ring._hdr[_W_COMMIT]) - self._pos

    def writer_alive(self) -> bool:
        """Does a live process hold the writer role right now?"""
        return shm.locked_elsewhere(self._fd, _WRITER_LOCK_BYTE)

    def close(self) -> None:
        """Release the slot (a lossless writer stops waiting for it). Idempotent."""
        if self._fd < 0:
            return
        if self._ring._slots is not None:
            self._ring._slots[self.slot, _S_ACTIVE] = 0
            self._wake_writer()
        shm.unlock(self._fd, _slot_lock_byte(self.slot))
        os.close(self._fd)
        self._fd = -1
        if self in self._ring._roles:
            self._ring._roles.remove(self)
