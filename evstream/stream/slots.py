"""Window slots: the window stage's tensors in shared memory, for a consumer on the same host.

Why. A 346x260 voxel grid with B = 5 is 1.8 MB of float32. Sent as a zmq buffer over ipc it is
copied into a Unix socket, through the kernel and out again, and each hop wakes an I/O thread:
about 1.2 ms of the 1.8 ms between a window's end and its delivery on this 2-core machine, and a
third of the window stage's CPU in a `--speed max` replay. With slots the window stage computes
each tensor straight into shared memory and sends only the header over zmq (wire.py puts a
`slot` reference where the buffer frame would be); the consumer copies the tensor out once.

    slots = WindowSlots.create(n_slots=8, slot_bytes=nbytes)   # the launcher; it unlinks it
    w = SlotWriter(WindowSlots.attach(slots.name), lossless=False)     # the window stage
    i = w.acquire(timeout=0.1); out = w.array(i, shape); ...fill out...; ref = w.publish(i)
    arr = read_slot(ref, dtype, shape)       # the consumer (wire.recv does this): a private copy

Layout of the segment (int64 words; the launcher creates it once the sensor size is known and
unlinks it on every exit path, like the event ring; other processes attach without registering
it with a resource tracker, see shm.py):
  line 0: magic, layout, n_slots, slot_bytes, data_offset, release word (32-bit futex)
  line 1 + i: slot i's `gen` and `released`
  data_offset + i * slot_bytes: slot i's bytes (page aligned)

Contracts.
- A seqlock per slot: the writer makes `gen` odd while it fills the slot and even when it
  publishes it; the reference carries that even value. A reader checks `gen` before and after
  its copy: if either differs from the reference, the slot was reused meanwhile (only a live
  writer does that) and `read_slot` raises StaleSlot: the window counts as dropped, never torn.
- After its copy the reader stores the generation in `released` and bumps the release word,
  waking a lossless writer that waits for the slot. A consumer that only looks at a window (the
  counting sink) may take a zero-copy view instead: valid when taken, re-checked with
  `slot_valid` after use, released with `release_slot`.
- Policies. Live: `acquire` takes the slot after the last one, round robin, never waiting (a slow
  consumer loses windows, as with zmq's queue). Lossless: `acquire` takes the lowest-numbered
  free slot (a consumer that keeps up thus leaves the writer cycling through two or three
  cache-warm slots); when none is free it waits until one is released, for at most `timeout`
  (None: no limit; then it returns None so the caller can look for a stop request). A consumer
  holds an OFD lock on the segment's first byte while it lives (the kernel drops it when it dies,
  SIGKILL included); a lossless writer that has seen the lock held and finds it gone (the
  consumer died, e.g. a worker about to be restarted) stops waiting for windows the dead
  consumer had been sent: they were lost with it, as they would be in its zmq queue.
- The writer holds at most a few slots at once (the window being filled, one built ahead);
  `discard` gives a slot back unpublished (its window was dropped).
- A segment name in a message is only attached if it looks like ours (`evstream_` prefix, magic
  and layout match, sizes agree), so a malformed header cannot map or write anything else.
"""

from __future__ import annotations

import os
import secrets
import struct
import time

import numpy as np

from evstream.stream import shm
from evstream.stream.ring import futex_wait, futex_wake

_MAGIC = int.from_bytes(b"EVSLOT01", "little")
_LAYOUT = 1
_LINE = 8                                   # int64 words per 64-byte cache line
_W_MAGIC, _W_LAYOUT, _W_N, _W_SLOT_BYTES, _W_DATA_OFFSET, _W_RELEASE = range(6)
_S_GEN, _S_RELEASED = 0, 1
_CONSUMER_LOCK_BYTE = 0
_SEQ_MASK = 0x7FFF_FFFF
MAX_SLOTS = 64
NAME_PREFIX = "evstream_"
WAIT_SLICE_S = 0.01                         # a lossless writer re-checks its consumer this often


class StaleSlot(Exception):
    """The slot was reused before (or while) it was read: the window is gone."""


def slot_count(slot_bytes: int) -> int:
    """How many slots the launcher makes for tensors of this size: 8, fewer for big sensors
    (each slot is shared memory the consumer may be reading), never fewer than 4."""
    return int(max(4, min(8, (64 << 20) // max(slot_bytes, 1))))


class WindowSlots:
    """A handle on a slot segment in this process."""

    def __init__(self, seg: shm.Segment):
        self._seg = seg
        self.name = seg.name
        if seg.size < _LINE * 8:
            raise ValueError(f"shared memory {self.name!r} is too small for evstream window slots")
        magic, layout, n, slot_bytes, data_offset = struct.unpack_from("<5q", seg.buf, 0)
        if magic != _MAGIC or layout != _LAYOUT:
            raise ValueError(f"shared memory {self.name!r} is not evstream window slots "
                             f"(layout {_LAYOUT})")
        if not 1 <= n <= MAX_SLOTS or slot_bytes < 1 or data_offset < (1 + n) * _LINE * 8 \
                or seg.size < data_offset + n * slot_bytes:
            raise ValueError(f"window slots {self.name!r} are truncated ({seg.size} bytes)")
        self.n_slots, self.slot_bytes, self.data_offset = int(n), int(slot_bytes), int(data_offset)
        self._hdr = np.ndarray(((1 + n) * _LINE,), np.int64, buffer=seg.buf)
        self._slot_words = self._hdr[_LINE:].reshape(n, _LINE)
        self._release_addr = self._hdr.ctypes.data + 8 * _W_RELEASE
        self._fd: int | None = None

    @classmethod
    def create(cls, n_slots: int, slot_bytes: int, name: str | None = None) -> "WindowSlots":
        """Make a new segment (this process owns it: `unlink()` it when done)."""
        n_slots, slot_bytes = int(n_slots), int(slot_bytes)
        if not 1 <= n_slots <= MAX_SLOTS:
            raise ValueError(f"n_slots must be 1..{MAX_SLOTS}, got {n_slots}")
        if slot_bytes < 1:
            raise ValueError(f"slot_bytes must be positive, got {slot_bytes}")
        slot_bytes = -(-slot_bytes // 4096) * 4096
        name = name or f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_w"
        data_offset = -(-((1 + n_slots) * _LINE * 8) // 4096) * 4096
        seg = shm.Segment.create(name, data_offset + n_slots * slot_bytes)   # pages reserved
        # and written once here, by the launcher before `start`: a page that was only reserved
        # faults in page by page in each process (3,520 faults, 7-10 ms for 8 voxel slots),
        # one that was written maps 16 pages per fault (see map_all)
        seg.populate(True, data_offset)
        hdr = np.ndarray((_LINE,), np.int64, buffer=seg.buf)      # the segment starts zeroed
        hdr[_W_N], hdr[_W_SLOT_BYTES], hdr[_W_DATA_OFFSET] = n_slots, slot_bytes, data_offset
        hdr[_W_LAYOUT] = _LAYOUT
        hdr[_W_MAGIC] = _MAGIC
        del hdr
        return shm.adopt(seg, cls)

    @classmethod
    def attach(cls, name: str) -> "WindowSlots":
        """Map an existing segment (never unlinks it, never registers it with a tracker)."""
        if not isinstance(name, str) or not name.startswith(NAME_PREFIX) or "/" in name:
            raise ValueError(f"{name!r:.80} is not an evstream window slot segment")
        return shm.attach_as(name, cls)

    @property
    def owner(self) -> bool:
        return self._seg.owner

    def info(self) -> dict:
        return {"name": self.name, "slots": self.n_slots, "slot_bytes": self.slot_bytes}

    def data(self, i: int, nbytes: int) -> np.ndarray:
        """Slot i's first nbytes as uint8 (a view into shared memory)."""
        return np.ndarray((nbytes,), np.uint8, buffer=self._seg.buf,
                          offset=self.data_offset + i * self.slot_bytes)

    def map_all(self) -> None:
        """Map every slot's pages into this process now, so no window pays page faults for
        them later (8 slots of a 346x260x5 voxel grid: 3,520 faults, ~7 ms, otherwise spread
        over the first windows). A read populate (madvise MADV_POPULATE_READ) is enough for
        the writer too: a shared tmpfs mapping is mapped writable on a read fault, and it
        costs 1/16 of the faults once the pages were written (create() does that; the kernel
        then maps 16 pages per fault); measured 0.5-1.4 ms against 2-14 ms for a write
        populate or touching each page."""
        self._seg.populate(False, self.data_offset)

    # -- the consumer's side ------------------------------------------------------------------

    def hold_consumer_lock(self) -> None:
        """Announce a live consumer (an OFD lock the kernel drops when this process dies)."""
        if self._fd is None:
            self._fd = self._seg.open_fd()
            shm.try_lock(self._fd, _CONSUMER_LOCK_BYTE)

    def consumer_alive(self) -> bool:
        if self._fd is None:
            self._fd = self._seg.open_fd()
        return shm.locked_elsewhere(self._fd, _CONSUMER_LOCK_BYTE)

    def _check(self, slot: int, dtype: np.dtype, shape: tuple) -> int:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= slot < self.n_slots or nbytes > self.slot_bytes:
            raise ValueError(f"slot {slot} of {nbytes} bytes is outside window slots "
                             f"{self.name!r} ({self.n_slots} x {self.slot_bytes} bytes)")
        return nbytes

    def read(self, slot: int, gen: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
        """A private copy of the tensor published in `slot` as generation `gen`; StaleSlot if
        the slot no longer (or not yet) holds it."""
        nbytes = self._check(slot, dtype, shape)
        words = self._slot_words[slot]
        if int(words[_S_GEN]) != gen:
            raise StaleSlot(f"slot {slot} was reused before it was read")
        shm.fence()
        out = np.empty(shape, dtype)
        out.reshape(-1).view(np.uint8)[:] = self.data(slot, nbytes)
        shm.fence()
        if int(words[_S_GEN]) != gen:
            raise StaleSlot(f"slot {slot} was reused while it was read")
        words[_S_RELEASED] = gen
        shm.fence()
        self._hdr[_W_RELEASE] = (int(self._hdr[_W_RELEASE]) + 1) & _SEQ_MASK
        futex_wake(self._release_addr)
        return out

    def view(self, slot: int, gen: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
        """Zero-copy: a read-only view of the tensor in `slot`, valid while `valid(slot, gen)`
        (a live writer may reuse the slot later; call `valid` after using the view, then
        `release`). StaleSlot if it is already gone."""
        nbytes = self._check(slot, dtype, shape)
        if int(self._slot_words[slot][_S_GEN]) != gen:
            raise StaleSlot(f"slot {slot} was reused before it was read")
        shm.fence()
        a = self.data(slot, nbytes).view(dtype).reshape(shape)
        a.flags.writeable = False
        return a

    def valid(self, slot: int, gen: int) -> bool:
        shm.fence()
        return 0 <= slot < self.n_slots and int(self._slot_words[slot][_S_GEN]) == gen

    def release(self, slot: int, gen: int) -> None:
        """The consumer is done with this window (read through a view, or skipped as stale):
        a lossless writer may reuse the slot."""
        if 0 <= slot < self.n_slots and int(self._slot_words[slot][_S_GEN]) == gen:
            self._slot_words[slot][_S_RELEASED] = gen
            shm.fence()
            self._hdr[_W_RELEASE] = (int(self._hdr[_W_RELEASE]) + 1) & _SEQ_MASK
            futex_wake(self._release_addr)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._slot_words = self._hdr = None
        try:
            self._seg.close()
        except BufferError:      # a view is still alive somewhere; the mapping goes at exit
            pass

    def unlink(self) -> None:
        self._seg.unlink()


class SlotWriter:
    """The window stage's end: acquire a slot, fill it, publish it (see the module comment)."""

    def __init__(self, slots: WindowSlots, lossless: bool):
        self.slots = slots
        self.lossless = lossless
        self._next = 0
        self.held: set[int] = set()
        self._seen_consumer = False
        self.waited_s = 0.0          # time spent waiting for the consumer (lossless)
        self.reclaimed = 0           # slots given up after their consumer died
        slots.map_all()

    def _free(self, i: int) -> bool:
        w = self.slots._slot_words[i]
        gen = int(w[_S_GEN])
        return gen == 0 or int(w[_S_RELEASED]) == gen

    def _consumer_gone(self) -> bool:
        alive = self.slots.consumer_alive()
        if alive:
            self._seen_consumer = True
            return False
        return self._seen_consumer

    def acquire(self, timeout: float | None = None) -> int | None:
        """The next slot to fill (made odd: being written), or None if a lossless wait ran out."""
        n = self.slots.n_slots
        i = self._next
        for _ in range(n):
            if i not in self.held:
                break
            i = (i + 1) % n
        else:
            raise RuntimeError("every window slot is held by the writer")
        if self.lossless:
            # the lowest free slot: with a consumer that keeps up, the same two or three slots
            # take turns and stay in this core's cache (round robin over 8 slots of a 346x260
            # voxel grid cost the voxel kernel ~20% more, 58 against 48 ms per 10 M events)
            j = self._lowest_free()
            if j is None:
                j = self._wait_free(i, timeout)
                if j is None:
                    return None
            i = j
        w = self.slots._slot_words[i]
        w[_S_GEN] = int(w[_S_GEN]) + 1       # odd: being written
        shm.fence()
        self.held.add(i)
        self._next = (i + 1) % n
        return i

    def _lowest_free(self) -> int | None:
        return next((j for j in range(self.slots.n_slots)
                     if j not in self.held and self._free(j)), None)

    def _wait_free(self, i: int, timeout: float | None) -> int | None:
        """Wait until a slot is released -> the lowest free one (`i` once the consumer died),
        or None when the timeout ran out."""
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + max(0.0, timeout)
        hdr = self.slots._hdr
        try:
            while True:
                seq = int(hdr[_W_RELEASE])
                shm.fence()
                j = self._lowest_free()
                if j is not None:
                    return j
                if self._consumer_gone():
                    self._reclaim()
                    return i
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return None
                left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - now)
                futex_wait(self.slots._release_addr, seq, left)
        finally:
            self.waited_s += time.monotonic() - t0

    def _reclaim(self) -> None:
        """The consumer died: windows it had been sent will never be released."""
        for j in range(self.slots.n_slots):
            if j not in self.held and not self._free(j):
                w = self.slots._slot_words[j]
                w[_S_RELEASED] = int(w[_S_GEN])
                self.reclaimed += 1
        self._seen_consumer = False          # wait for the next consumer to show itself

    def array(self, i: int, shape: tuple, dtype=np.float32) -> np.ndarray:
        """A writable view of slot i as an array of `shape`."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.slots.slot_bytes:
            raise ValueError(f"a {shape} {dtype} tensor ({nbytes} bytes) does not fit a window "
                             f"slot of {self.slots.slot_bytes} bytes")
        return self.slots.data(i, nbytes).view(dtype).reshape(shape)

    def publish(self, i: int) -> dict:
        """Slot i is complete: -> the reference that goes in the message (wire.py's `slot`)."""
        shm.fence()
        w = self.slots._slot_words[i]
        gen = int(w[_S_GEN]) + 1
        w[_S_GEN] = gen                       # even: complete
        self.held.discard(i)
        return {"name": self.slots.name, "index": i, "gen": gen}

    def discard(self, i: int) -> None:
        """Give slot i back unpublished (or published but never sent)."""
        w = self.slots._slot_words[i]
        gen = int(w[_S_GEN])
        if gen % 2:
            gen += 1
            w[_S_GEN] = gen
        w[_S_RELEASED] = gen
        self.held.discard(i)


# -- the consumer's cache of attached segments (wire.recv resolves references through it) ----------

_attached: dict[str, WindowSlots] = {}
_MAX_ATTACHED = 4


def _consumer_slots(name: str) -> WindowSlots:
    slots = _attached.get(name)
    if slots is None:
        try:
            slots = WindowSlots.attach(name)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        slots.hold_consumer_lock()
        if len(_attached) >= _MAX_ATTACHED:
            old = next(iter(_attached))
            _attached.pop(old).close()
        _attached[name] = slots
    return slots


def prepare_consumer(name: str) -> None:
    """At `start`: map the segment, announce this consumer and map every page, so the first
    windows pay for none of it (otherwise ~20 ms on the first window here)."""
    _consumer_slots(name).map_all()


def read_slot(ref: dict, dtype: np.dtype, shape: tuple, copy: bool = True) -> np.ndarray:
    """Resolve a message's slot reference -> a private copy (copy=False: a read-only view into
    the slot; check `slot_valid(ref)` after using it, then `release_slot(ref)`). Raises
    StaleSlot (the window was overwritten) or ValueError (no such segment, not ours, out of
    range)."""
    slots = _consumer_slots(ref["name"])
    if copy:
        return slots.read(ref["index"], ref["gen"], dtype, shape)
    return slots.view(ref["index"], ref["gen"], dtype, shape)


def slot_valid(ref: dict) -> bool:
    slots = _attached.get(ref["name"])
    return slots is not None and slots.valid(ref["index"], ref["gen"])


def release_slot(ref: dict) -> None:
    slots = _attached.get(ref["name"])
    if slots is not None:
        slots.release(ref["index"], ref["gen"])
