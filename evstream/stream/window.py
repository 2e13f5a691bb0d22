"""Time windows and count windows over a sorted event stream, incremental or offline.

Time windows (`WindowSpec(mode="time", window_us=W, stride_us=S)`, S defaults to W): window k
covers the half-open source-time interval [a + k*S, a + k*S + W), where the anchor a is the
`t0_us` the caller gives or else the first event's t. S < W overlaps windows (an event belongs to
every window covering it); S > W leaves gaps whose events belong to no window. Events before a
belong to no window either.

Count windows (`mode="count", count=C, stride_count=Sc`, Sc defaults to C): window k holds the
events with stream indices [k*Sc, k*Sc + C). Its t0_us is its first event's t and its t1_us its
last event's t + 1, so [t0_us, t1_us) covers exactly its events.

Emission (the incremental `Windower`):
- `push(events)` adds a batch (sorted, and not earlier than the previous batch) and returns the
  windows it completed, in index order. A time window is complete once an event at or after its
  end has been seen: the stream is sorted, so nothing more can fall inside it. A count window is
  complete when its C-th event arrives.
- `advance(t_us)` is a watermark: the caller promises no further event earlier than t_us and gets
  every time window ending at or before t_us, whether or not events arrived. This is how a
  sparse scene still yields windows on time: the caller maps wall time to source time and calls
  advance (the "deadline"). An event that arrives below the watermark anyway is *late* and
  counted in `late_events`; it still goes into every window not yet emitted that covers it.
  Count windows ignore advance (they close on counts only), and so does a time windower not yet
  anchored (no t0_us and no event so far).
- Events that fall in no window still to come (before the anchor, in a stride gap, or late for
  windows already emitted) are dropped.
- `finish()` at end of stream returns the windows that have begun but not completed: time
  windows starting at or before the last event, count windows whose first event exists. They
  are partial (a time window keeps its nominal t1_us).
- Empty windows are valid and are emitted like any other (a gap in the events longer than a
  window gives a run of empty windows).

`windows_offline(events, spec, t0_us=None)` computes the same windows for a whole array at once.
Feeding any split of the array into batches to `push` and then calling `finish` (with or without
`advance(t)` calls with t no later than the next event) yields exactly the windows of
`windows_offline`: same indices, bounds and events. The tests hold the two equal for random
splits. (An advance past the last event adds the windows it closes, which the array alone
cannot know about.)

Memory and copies: `push` copies each batch into the windower's own buffer (so a caller may
reuse or release its array, e.g. a shared-memory ring slot); `reserve(n)` + `push_reserved(part)`
let a producer write a batch straight into that buffer instead (the window stage reads the ring
into it: one copy fewer per event), with the same checks and results as `push`. The windower
keeps only the events that a window not yet emitted still needs: events before the next
window's start are dropped. A
`Window.events` is a read-only view into that buffer, never copied and never changed later: the
buffer is only written past its end, and grows or compacts into a fresh array, so an emitted
view stays valid for as long as the caller holds it. `windows_offline` returns views into the
array it was given.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

_MIN_CAPACITY = 4096


@dataclass(frozen=True)
class WindowSpec:
    mode: str = "time"                  # "time" | "count"
    window_us: int = 50_000             # time mode: window length
    stride_us: int | None = None        # time mode: start-to-start distance; None = window_us
    count: int = 100_000                # count mode: events per window
    stride_count: int | None = None     # count mode: events start-to-start; None = count

    def __post_init__(self):
        if self.mode not in ("time", "count"):
            raise ValueError(f"window mode must be 'time' or 'count', got {self.mode!r}")
        for name in ("window_us", "stride_us", "count", "stride_count"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def stride(self) -> int:
        """The start-to-start distance in this mode's unit (microseconds or events)."""
        if self.mode == "time":
            return int(self.stride_us if self.stride_us is not None else self.window_us)
        return int(self.stride_count if self.stride_count is not None else self.count)

    @property
    def length(self) -> int:
        """The window length in this mode's unit (microseconds or events)."""
        return int(self.window_us if self.mode == "time" else self.count)


@dataclass(frozen=True, eq=False)
class Window:
    index: int              # k: 0 for the window at the anchor / the first event
    t0_us: int              # half-open source-time bounds [t0_us, t1_us)
    t1_us: int
    events: np.ndarray      # read-only view, never copied (see the module notes)


def _readonly(view: np.ndarray) -> np.ndarray:
    view = view.view()
    view.flags.writeable = False
    return view


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    # Record-for-record as raw bytes: numpy's field-by-field structured assignment is ~10x
    # slower (numpy 2.4) and both sides always have the same dtype here.
    raw = np.dtype((np.void, src.dtype.itemsize))
    np.copyto(dst.view(raw), src.view(raw))


class _Buffer:
    """Events in [head, tail) of `arr`; global stream index of arr[0] is `base`.

    With `reuse`, compaction alternates between two arrays instead of allocating a fresh one
    each time (fresh arrays cost page faults: ~5 ms per 20 MB on this machine, on the hot path
    at 12 M events/s); the price is that emitted windows' events are valid only until the next
    push (the window stage consumes each window before reading more).
    """

    def __init__(self, reuse: bool = False):
        self.arr: np.ndarray | None = None
        self.spare: np.ndarray | None = None
        self.reuse = reuse
        self.head = 0
        self.tail = 0
        self.base = 0

    def __len__(self) -> int:
        return self.tail - self.head

    def append(self, events: np.ndarray) -> None:
        n = len(events)
        if self.arr is None:
            self.arr = np.zeros(max(_MIN_CAPACITY, 2 * n), events.dtype)
        elif self.tail + n > len(self.arr):
            self._make_room(n)
        _copy(self.arr[self.tail:self.tail + n], events)
        self.tail += n

    def _make_room(self, n: int) -> None:
        """Never write over emitted views: move the live part into a fresh (or, with reuse,
        the spare) array with room for n more."""
        live = self.tail - self.head
        want = max(_MIN_CAPACITY, 2 * (live + n))
        # reuse the spare only with headroom (>= 1.5x what must fit), so compactions stay
        # rare: a tight fit would compact (and copy the open window) on every other push
        if self.reuse and self.spare is not None and 2 * len(self.spare) >= 3 * (live + n):
            fresh = self.spare
        else:      # with reuse, never smaller than the array it replaces: sizes converge
            fresh = np.zeros(max(want, len(self.arr)) if self.reuse else want, self.arr.dtype)
        if self.reuse:
            self.spare = self.arr
        _copy(fresh[:live], self.arr[self.head:self.tail])
        self.base += self.head
        self.arr, self.head, self.tail = fresh, 0, live

    def preallocate(self, n: int, dtype) -> None:
        arrays = [np.zeros(n, dtype) for _ in range(2 if self.reuse else 1)]
        for a in arrays:
            a.view(np.uint8)[::4096] = 0        # touch every page now, not on the hot path
        self.arr = arrays[0]
        self.spare = arrays[1] if self.reuse else None

    def reserve(self, n: int, dtype) -> np.ndarray:
        """Writable room for n events right after the tail (compacting/growing as `append`
        does), for a producer to write into directly (`Windower.push_reserved`)."""
        if self.arr is None:
            self.arr = np.zeros(max(_MIN_CAPACITY, 2 * n), dtype)
        elif self.tail + n > len(self.arr):
            self._make_room(n)
        return self.arr[self.tail:self.tail + n]

    def drop_before(self, pos: int) -> None:
        self.head = max(self.head, min(pos, self.tail))


class Windower:
    """Incremental windowing of one sorted event stream (see the module notes)."""

    def __init__(self, spec: WindowSpec, t0_us: int | None = None, reuse_buffers: bool = False,
                 capacity_events: int = 0, dtype=None):
        """reuse_buffers: emitted windows' events stay valid only until the next push/advance
        (no allocation in steady state); off by default, when windows are views that never
        change. capacity_events: allocate (and touch, so no page fault is left for the first
        windows) a buffer of this many events of `dtype` (EVENT_DTYPE) now, and with
        reuse_buffers its spare too."""
        self.spec = spec
        self.anchor_us = None if t0_us is None else int(t0_us)
        self.next_index = 0             # the next window to emit
        self.late_events = 0            # events that arrived below the advance() watermark
        self.events_in = 0
        self._buf = _Buffer(reuse_buffers)
        if capacity_events > 0:
            self._buf.preallocate(int(capacity_events), _event_dtype(dtype))
        self._last_t: int | None = None
        self._watermark: int | None = None
        self._dtype = None
        self._finished = False

    @property
    def buffered_events(self) -> int:
        return len(self._buf)

    # -- input ----------------------------------------------------------------------------

    def reserve(self, n: int, dtype=None) -> np.ndarray:
        """Writable room for up to n events in the windower's own buffer (EVENT_DTYPE unless
        the stream has another dtype). Write a batch into it (e.g. `RingReader.read(out=...)`)
        and hand the part written to `push_reserved`: one copy fewer than `push`. The room is
        valid until the next call of any other method."""
        if self._finished:
            raise ValueError("reserve() after finish()")
        if dtype is None:
            dtype = self._dtype if self._dtype is not None else _event_dtype(
                None if self._buf.arr is None else self._buf.arr.dtype)
        return self._buf.reserve(int(n), np.dtype(dtype))

    def push_reserved(self, events: np.ndarray) -> list[Window]:
        """`push(events)` for a batch written into the room of the last `reserve` (any
        sub-range of it): the same checks, windows and results as push, without the copy."""
        buf = self._buf
        n = len(events)
        if n == 0:
            return self.push(events)
        offset = -1
        if buf.arr is not None and events.dtype == buf.arr.dtype \
                and events.flags.c_contiguous:
            delta = (events.__array_interface__["data"][0]
                     - buf.arr.__array_interface__["data"][0])
            if delta % buf.arr.itemsize == 0:
                offset = delta // buf.arr.itemsize
        if not buf.tail <= offset <= len(buf.arr) - n:
            raise ValueError("push_reserved() takes a part of the room given by reserve()")
        if offset != buf.tail:              # move it to the tail (the room's start was not used)
            _copy(buf.arr[buf.tail:buf.tail + n], events.copy())
        return self.push(buf.arr[buf.tail:buf.tail + n], _in_place=True)

    def push(self, events: np.ndarray, _in_place: bool = False) -> list[Window]:
        if self._finished:
            raise ValueError("push() after finish()")
        if len(events) == 0:
            return []
        if self._dtype is None:
            self._dtype = events.dtype
            buf = self._buf
            if buf.arr is not None and buf.arr.dtype != events.dtype:   # preallocated for
                buf.arr = buf.spare = None                             # another dtype
        elif events.dtype != self._dtype:
            raise ValueError(f"event dtype changed from {self._dtype} to {events.dtype}")
        t_first, t_last = int(events["t"][0]), int(events["t"][-1])
        if self._last_t is not None and t_first < self._last_t:
            raise ValueError(f"events go back in time: batch starts at t={t_first} after "
                             f"t={self._last_t}")
        self.events_in += len(events)
        if self._watermark is not None and t_first < self._watermark:
            self.late_events += bisect.bisect_left(events["t"], self._watermark)
        self._last_t = t_last
        buf = self._buf
        if self.spec.mode == "count":
            if _in_place:
                buf.tail += len(events)
            else:
                buf.append(events)
            return self._emit_count(final=False)
        if self.anchor_us is None:
            self.anchor_us = t_first
        # events before the next window's start are needed by no open window
        start = self.anchor_us + self.next_index * self.spec.stride
        skip = bisect.bisect_left(events["t"], start) if t_first < start else 0
        if _in_place:
            # already at the buffer's tail; nothing buffered before it is >= start either
            buf.tail += len(events)
            if skip:
                buf.drop_before(buf.tail - len(events) + skip)
        elif skip < len(events):
            buf.append(events[skip:])
        return self._emit_time(self._limit(), final=False)

    def advance(self, t_us: int) -> list[Window]:
        """Watermark: no event earlier than t_us will come; emit time windows ending by then."""
        if self._finished or self.spec.mode == "count" or self.anchor_us is None:
            return []                   # nothing to close before the windows are anchored
        t_us = int(t_us)
        if self._watermark is None or t_us > self._watermark:
            self._watermark = t_us
        return self._emit_time(self._limit(), final=False)

    def finish(self) -> list[Window]:
        if self._finished:
            return []
        self._finished = True
        if self.spec.mode == "count":
            return self._emit_count(final=True)
        if self.anchor_us is None or self._last_t is None:
            return []
        return self._emit_time(self._last_t + 1, final=True)

    def open_window(self) -> Window | None:
        """The next time window to be emitted, with the events it holds so far (a read-only view
        valid until the next push/advance; later calls give a longer prefix of the same events,
        until the window is emitted with all of them). None in count mode, before the windows
        are anchored, and after finish(). For building a window's tensor while it is open."""
        if self._finished or self.spec.mode == "count" or self.anchor_us is None:
            return None
        k = self.next_index
        start = self.anchor_us + k * self.spec.stride
        end = start + self.spec.length
        buf = self._buf
        if buf.arr is None:
            return Window(k, start, end, _empty(self._dtype))
        t_view = buf.arr["t"]
        lo = bisect.bisect_left(t_view, start, buf.head, buf.tail)
        hi = bisect.bisect_left(t_view, end, lo, buf.tail)
        return Window(k, start, end, _readonly(buf.arr[lo:hi]))

    # -- emission -------------------------------------------------------------------------

    def _limit(self) -> int | None:
        """Source time up to which the stream is known complete."""
        if self._watermark is None:
            return self._last_t
        if self._last_t is None:
            return self._watermark
        return max(self._last_t, self._watermark)

    def _emit_time(self, limit: int | None, final: bool) -> list[Window]:
        """Emit windows ending at or before `limit`, or (final) starting before it."""
        if limit is None:
            return []
        spec, buf, a = self.spec, self._buf, self.anchor_us
        stride, length = spec.stride, spec.length
        t_view = buf.arr["t"] if buf.arr is not None else None
        out = []
        while True:
            k = self.next_index
            start = a + k * stride
            end = start + length
            if (start >= limit) if final else (end > limit):
                break
            if t_view is None:
                events = _empty(self._dtype)
            else:
                lo = bisect.bisect_left(t_view, start, buf.head, buf.tail)
                hi = bisect.bisect_left(t_view, end, lo, buf.tail)
                events = _readonly(buf.arr[lo:hi])
            out.append(Window(k, start, end, events))
            self.next_index += 1
        if t_view is not None and out:
            nxt = a + self.next_index * stride
            buf.drop_before(bisect.bisect_left(t_view, nxt, buf.head, buf.tail))
        return out

    def _emit_count(self, final: bool) -> list[Window]:
        spec, buf = self.spec, self._buf
        stride, length = spec.stride, spec.length
        total = buf.base + buf.tail             # events seen so far (stream index of the next)
        out = []
        while True:
            k = self.next_index
            first = k * stride
            last = first + length               # exclusive
            if last > total and not (final and first < total):
                break
            lo = first - buf.base
            hi = min(last, total) - buf.base
            events = _readonly(buf.arr[lo:hi])
            out.append(Window(k, int(events["t"][0]), int(events["t"][-1]) + 1, events))
            self.next_index += 1
        if buf.arr is not None:
            buf.drop_before(self.next_index * stride - buf.base)
        return out


_EMPTY: dict = {}


def _event_dtype(dtype) -> np.dtype:
    if dtype is None:
        from evstream.types import EVENT_DTYPE
        return EVENT_DTYPE
    return np.dtype(dtype)


def _empty(dtype) -> np.ndarray:
    """A zero-length read-only event array (for windows before any event was stored)."""
    if dtype is None:
        from evstream.types import EVENT_DTYPE
        dtype = EVENT_DTYPE
    if dtype not in _EMPTY:
        _EMPTY[dtype] = _readonly(np.zeros(0, dtype))
    return _EMPTY[dtype]


def windows_offline(events: np.ndarray, spec: WindowSpec, t0_us: int | None = None) -> list[Window]:
    """All windows of a whole sorted array: the same windows a Windower would emit for it, with
    events as read-only views into `events`."""
    n = len(events)
    stride, length = spec.stride, spec.length
    if spec.mode == "count":
        out = []
        for k, first in enumerate(range(0, n, stride)):
            view = _readonly(events[first:first + length])
            out.append(Window(k, int(view["t"][0]), int(view["t"][-1]) + 1, view))
        return out
    if n == 0:
        return []
    t = np.ascontiguousarray(events["t"], dtype=np.int64)
    a = int(t[0]) if t0_us is None else int(t0_us)
    end_of_stream = int(t[-1]) + 1
    if end_of_stream <= a:
        return []
    count = -(-(end_of_stream - a) // stride)              # windows starting before the end
    starts = a + stride * np.arange(count, dtype=np.int64)
    lo = np.searchsorted(t, starts, side="left")
    hi = np.searchsorted(t, starts + length, side="left")
    return [Window(k, int(starts[k]), int(starts[k]) + length,
                   _readonly(events[int(lo[k]):int(hi[k])])) for k in range(count)]
