"""Event payloads of ROS messages: the `event_camera_msgs` codecs and the event-array layouts.

event_camera_msgs/msg/EventPacket (and its older name event_array_msgs/msg/EventArray, the same
fields) carries `encoding`, `width`, `height`, `time_base` (uint64 ns) and `events` (bytes).
"event ros time = time_base + decoded event time" (the message definition); every decoder here
gives times in nanoseconds, as the reference decoders (ros-event-camera/event_camera_codecs) do,
and the reader turns them into evstream's microseconds. Encodings, as the reference defines them:

- `evt3`: Prophesee EVT 3.0 words (evt_codec.decode_evt3), a stream that goes on from message to
  message: the decoder state (TIME_HIGH, row, vector base, wraps of the 24-bit microsecond
  counter) is carried across messages, so a `Evt3Decoder` serves one topic. Drivers put 0 in
  `time_base` (the time lives in the words: sensor time, microseconds); evstream's own bags put
  the part of the first time above those 24 bits there. External triggers: EXT_TRIGGER words,
  edge 1 -> dv TriggerType 1 (rising), 0 -> 2 (falling); the channel id is dropped.
- `libcaer`: libcaer's polarity events as the camera gives them, 8 bytes each: uint32 data
  (bit 0 valid mark, bit 1 polarity, y in bits 2-16, x in bits 17-31) and int32 microsecond
  timestamp. t = time_base + ts * 1000; `time_base` holds the host time at start-up plus the
  high (overflow) bits of the device time, and a timestamp smaller than the one before it inside
  a message is a device rollover: 2^31 us more from there on. Events are taken whatever their
  valid mark (the reference decoder does the same).
- `libcaer_cmp`: 16-bit words, code in the top 4 bits: TIME_HIGH (0: bits 12-23 of the time
  offset), TIME_LOW (1: bits 0-11), ADDR_X (2: x, 11 bits), ADDR_Y (3: y, 11 bits, polarity in
  bit 11: one event at the current x), VECT_BASE_Y (4: a y base and the polarity), VECT_8 (5: one
  event per set bit b of the low 8 bits at y = base + b, then base += 8). The offset is in
  microseconds from `time_base` (the time of the message's first event, ns) and starts at 0 in
  each message; x, polarity and the vector base carry on. t = time_base + offset * 1000. (The
  reference decoder's 2024-02 rewrite multiplies time_base by 1000 as well; its own tests were
  written against the first version, which these decoders follow.) Codes 6-15 are not defined.
- `mono`: 8 bytes each, uint64: t offset in ns (bits 0-31, added to time_base), x (bits 32-47),
  y (bits 48-62), polarity (bit 63).

The event-array messages of dvs_msgs (rpg_dvs_ros) and prophesee_event_msgs have the same
fields: header, uint32 height, uint32 width, Event[] events with Event = uint16 x, uint16 y,
time ts, bool polarity. Decoding millions of those through a generic deserializer costs a
Python object each, so `parse_event_array` reads them with numpy views of the serialized bytes:
ROS 1 packs the 13-byte Event records; ROS 2's CDR aligns each field to its size from the start
of the data, so the first record takes 14 bytes and the others 16 (see `_cdr_records`).

Encoders (`encode_libcaer`, `encode_libcaer_cmp`, `encode_mono`) write payloads these decoders
read back exactly; they are written from the format description above, for tests and tools.
Decoders stop when their output is full and resume, so a huge message never makes a huge array:
`decode(payload, time_base, max_events)` yields (events, triggers) chunks of at most max_events
events, times in ns (int64), in EVENT_DTYPE / TRIGGER_DTYPE.
"""

from __future__ import annotations

from typing import Iterator

import numba
import numpy as np

from evstream.sources import evt_codec as codec
from evstream.types import EVENT_DTYPE, TRIGGER_DTYPE

ENCODINGS = ("evt3", "libcaer", "libcaer_cmp", "mono")
LIBCAER_ROLLOVER_US = 1 << 31
CMP_OFFSET_BITS = 24                 # libcaer_cmp: microsecond offsets inside one message

OK, BAD_WORD = 0, 1


class PayloadError(Exception):
    """A payload the encoding does not define; `offset` is the byte where it goes wrong."""

    def __init__(self, what: str, offset: int):
        super().__init__(what)
        self.offset = int(offset)


def _view(payload: np.ndarray, dtype, what: str) -> np.ndarray:
    """The payload's bytes as whole items of dtype; a payload with a part item left over is a
    PayloadError at the byte where that part starts."""
    size = np.dtype(dtype).itemsize
    if len(payload) % size:
        raise PayloadError(f"{len(payload)} bytes is not a whole number of {what}",
                           len(payload) - len(payload) % size)
    return payload.view(dtype)


def _empty_triggers():
    return np.zeros(0, TRIGGER_DTYPE)


# -- decoders --------------------------------------------------------------------------------------

class Evt3Decoder:
    """EVT 3.0 words of one topic; the state goes on from message to message."""

    encoding = "evt3"

    def __init__(self):
        self.state = codec.new_evt3_state()

    def decode(self, payload: np.ndarray, time_base: int, max_events: int
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        words = _view(payload, "<u2", "16-bit words")
        cap = max(int(max_events), 2 * codec.MAX_VECTOR_EVENTS) + codec.MAX_VECTOR_EVENTS
        i, n = 0, len(words)
        while i < n:
            ev = np.empty(cap, EVENT_DTYPE)
            tr = np.empty(min(n - i, cap), TRIGGER_DTYPE)
            start = i
            i, n_ev, n_tr, status = codec.decode_evt3(
                words, i, self.state, ev["t"], ev["x"], ev["y"], ev["p"], 0, tr["t"],
                tr["type"], 0)
            if status != codec.OK:
                w = int(words[i])
                raise PayloadError(f"word 0x{w:04x} has undefined EVT 3.0 type 0x{w >> 12:x}",
                                   2 * i)
            if i == start and n_ev == 0 and n_tr == 0:      # cannot happen; never spin
                raise PayloadError("the decoder made no progress", 2 * i)
            ev, tr = ev[:n_ev], tr[:n_tr]
            ev["t"] = ev["t"] * 1000 + int(time_base)
            tr["t"] = tr["t"] * 1000 + int(time_base)
            yield ev, tr


class LibcaerDecoder:
    """libcaer polarity events (8 bytes each); no state between messages."""

    encoding = "libcaer"

    def decode(self, payload, time_base, max_events):
        rec = _view(payload, np.dtype([("data", "<u4"), ("ts", "<i4")]), "8-byte events")
        prev = None
        rolls = 0
        step = max(int(max_events), 1)
        for a in range(0, len(rec), step):
            r = rec[a:a + step]
            ts = r["ts"].astype(np.int64)
            back = np.empty(len(ts), np.int64)
            back[0] = 1 if prev is not None and ts[0] < prev else 0
            back[1:] = ts[1:] < ts[:-1]
            roll = rolls + np.cumsum(back)
            rolls, prev = int(roll[-1]), int(ts[-1])
            data = r["data"]
            ev = np.empty(len(r), EVENT_DTYPE)
            ev["t"] = int(time_base) + (ts + roll * LIBCAER_ROLLOVER_US) * 1000
            ev["x"] = (data >> 17) & 0x7FFF
            ev["y"] = (data >> 2) & 0x7FFF
            ev["p"] = (data >> 1) & 1
            yield ev, _empty_triggers()


class MonoDecoder:
    """`mono` events (8 bytes each); no state between messages."""

    encoding = "mono"

    def decode(self, payload, time_base, max_events):
        w = _view(payload, "<u8", "8-byte events")
        step = max(int(max_events), 1)
        for a in range(0, len(w), step):
            c = w[a:a + step]
            ev = np.empty(len(c), EVENT_DTYPE)
            ev["t"] = int(time_base) + (c & 0xFFFFFFFF).astype(np.int64)
            ev["x"] = (c >> np.uint64(32)) & 0xFFFF
            ev["y"] = (c >> np.uint64(48)) & 0x7FFF
            ev["p"] = c >> np.uint64(63)
            yield ev, _empty_triggers()


# libcaer_cmp decoder state slots: what carries on (x, vector base, polarity) and the time,
# which each message starts again at 0
_CMP_X, _CMP_HIGH, _CMP_LOW, _CMP_BASE_Y, _CMP_POL = range(5)


@numba.njit(cache=True, nogil=True)
def decode_libcaer_cmp(words, start, state, time_base, ev_t, ev_x, ev_y, ev_p, n_ev):
    """Decode libcaer_cmp words from `start` into the outputs from `n_ev` on; stops when fewer
    than 8 free slots are left. Returns (next word, n_ev, status)."""
    cap = ev_t.shape[0] - 8
    ex = state[_CMP_X]
    high = state[_CMP_HIGH]
    low = state[_CMP_LOW]
    base_y = state[_CMP_BASE_Y]
    pol = state[_CMP_POL]
    status = OK
    i = start
    n = words.shape[0]
    while i < n:
        if n_ev > cap:
            break
        w = np.int64(words[i])
        code = w >> 12
        v = w & 0xFFF
        if code == 3:      # ADDR_Y: one event
            ev_t[n_ev] = time_base + (high | low) * 1000
            ev_x[n_ev] = ex
            ev_y[n_ev] = v & 0x7FF
            ev_p[n_ev] = (v >> 11) & 1
            n_ev += 1
        elif code == 2:    # ADDR_X
            ex = v & 0x7FF
        elif code == 1:    # TIME_LOW
            low = v
        elif code == 0:    # TIME_HIGH
            high = v << 12
        elif code == 4:    # VECT_BASE_Y
            base_y = v & 0x7FF
            pol = (v >> 11) & 1
        elif code == 5:    # VECT_8
            t = time_base + (high | low) * 1000
            for b in range(8):
                if (v >> b) & 1:
                    ev_t[n_ev] = t
                    ev_x[n_ev] = ex
                    ev_y[n_ev] = base_y + b
                    ev_p[n_ev] = pol
                    n_ev += 1
            base_y += 8
        else:
            status = BAD_WORD
            break
        i += 1
    state[_CMP_X] = ex
    state[_CMP_HIGH] = high
    state[_CMP_LOW] = low
    state[_CMP_BASE_Y] = base_y
    state[_CMP_POL] = pol
    return i, n_ev, status


class LibcaerCmpDecoder:
    """libcaer_cmp words of one topic (x, polarity and vector base carry on; time restarts)."""

    encoding = "libcaer_cmp"

    def __init__(self):
        self.state = np.zeros(5, np.int64)

    def decode(self, payload, time_base, max_events):
        words = _view(payload, "<u2", "16-bit words")
        self.state[_CMP_HIGH] = self.state[_CMP_LOW] = 0
        cap = max(int(max_events), 8) + 8
        i, n = 0, len(words)
        while i < n:
            ev = np.empty(cap, EVENT_DTYPE)
            i, n_ev, status = decode_libcaer_cmp(words, i, self.state, np.int64(time_base),
                                                 ev["t"], ev["x"], ev["y"], ev["p"], 0)
            if status != OK:
                w = int(words[i])
                raise PayloadError(f"word 0x{w:04x} has undefined libcaer_cmp code {w >> 12}",
                                   2 * i)
            yield ev[:n_ev], _empty_triggers()


DECODERS = {"evt3": Evt3Decoder, "libcaer": LibcaerDecoder, "libcaer_cmp": LibcaerCmpDecoder,
            "mono": MonoDecoder}


def make_decoder(encoding: str):
    """A new decoder for `encoding` (one per topic: some carry state); KeyError if unknown."""
    return DECODERS[encoding]()


# -- encoders ----------------------------------------------------------------------------------

def encode_libcaer(t_us, x, y, p, host_base_ns: int = 0) -> tuple[int, np.ndarray]:
    """Device times t_us (int64 microseconds since the device started) -> (time_base, payload)
    as libcaer_driver packs one message: the timestamps are the low 31 bits of the device time
    (libcaer's int32 counter), time_base the host base plus the device time's high bits."""
    t_us = np.asarray(t_us, np.int64)
    high = (int(t_us[0]) >> 31) << 31 if len(t_us) else 0
    rec = np.empty(len(t_us), np.dtype([("data", "<u4"), ("ts", "<i4")]))
    rec["ts"] = t_us & (LIBCAER_ROLLOVER_US - 1)
    rec["data"] = ((np.asarray(x, np.uint32) << 17) | (np.asarray(y, np.uint32) << 2)
                   | ((np.asarray(p) > 0).astype(np.uint32) << 1) | 1)
    return int(host_base_ns) + high * 1000, rec.view(np.uint8)


def encode_mono(t_ns, x, y, p, time_base: int) -> np.ndarray:
    """Events (t in ns, at most 2^32 - 1 ns after time_base) -> `mono` payload."""
    dt = np.asarray(t_ns, np.int64) - int(time_base)
    if len(dt) and (dt.min() < 0 or dt.max() >= 1 << 32):
        raise ValueError("mono holds 32-bit nanosecond offsets from time_base")
    w = (dt.astype(np.uint64) | (np.asarray(x, np.uint64) << np.uint64(32))
         | (np.asarray(y, np.uint64) << np.uint64(48))
         | ((np.asarray(p) > 0).astype(np.uint64) << np.uint64(63)))
    return w.astype("<u8").view(np.uint8)


def encode_libcaer_cmp(t_us, x, y, p, host_base_ns: int = 0) -> tuple[int, np.ndarray]:
    """Sorted events (t in microseconds) -> (time_base, payload) of one libcaer_cmp message.

    As the driver does: time_base = first time * 1000 + host base; an ADDR_X first; TIME_HIGH /
    TIME_LOW words when those bits of the offset change; ADDR_X when x changes; events of one
    time, x and polarity whose y fall in one aligned block of 8 become VECT_BASE_Y + VECT_8 (one
    alone: ADDR_Y). A block is closed when y does not increase, so the decoder gives the events
    back in their order."""
    t_us = np.asarray(t_us, np.int64)
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    p = (np.asarray(p) > 0).astype(np.int64)
    if not len(t_us):
        return int(host_base_ns), np.zeros(0, np.uint8)
    t0 = int(t_us[0])
    dt = t_us - t0
    if dt.max() >= 1 << CMP_OFFSET_BITS or dt.min() < 0:
        raise ValueError("a libcaer_cmp message spans at most 2^24 us, in time order")
    if x.max() >= 2048 or y.max() >= 2048:
        raise ValueError("libcaer_cmp holds 11-bit x and y")
    out: list[int] = [(2 << 12) | int(x[0])]
    cur_high, cur_low, cur_x, cur_pol = 0, 0, int(x[0]), -1
    block = -1          # aligned y block (y >> 3) being collected; -1: none
    mask = 0
    last_y = -1
    block_pol = 0

    def flush():
        nonlocal block, mask
        if block >= 0:
            if mask & (mask - 1):           # more than one event: a vector
                out.append((4 << 12) | (block_pol << 11) | (block << 3))
                out.append((5 << 12) | mask)
            else:
                out.append((3 << 12) | (block_pol << 11) | ((block << 3) + mask.bit_length() - 1))
        block, mask = -1, 0

    for i in range(len(t_us)):
        d, ex, ey, ep = int(dt[i]), int(x[i]), int(y[i]), int(p[i])
        if (d >> 12) != cur_high:
            flush()
            cur_high = d >> 12
            out.append(cur_high)                       # TIME_HIGH, code 0
        if (d & 0xFFF) != cur_low:
            flush()
            cur_low = d & 0xFFF
            out.append((1 << 12) | cur_low)
        if ex != cur_x:
            flush()
            cur_x = ex
            out.append((2 << 12) | ex)
        if ep != cur_pol:
            flush()
            cur_pol = ep
        if block >= 0 and ((ey >> 3) != block or ey <= last_y):
            flush()
        if block < 0:
            block, block_pol = ey >> 3, ep
        mask |= 1 << (ey & 7)
        last_y = ey
    flush()
    return t0 * 1000 + int(host_base_ns), np.asarray(out, "<u2").view(np.uint8)


# -- event-array messages (dvs_msgs, prophesee_event_msgs) -------------------------------------

def _record_dtype(order: str, t_at: int, size: int) -> np.dtype:
    return np.dtype({"names": ["x", "y", "sec", "nsec", "p"],
                     "formats": [order + "u2", order + "u2", order + "i4", order + "u4", "u1"],
                     "offsets": [0, 2, t_at, t_at + 4, t_at + 8], "itemsize": size})


class LayoutError(Exception):
    """Bytes that are not the event-array layout."""


def _u32(buf: bytes, at: int, order: str) -> int:
    if at + 4 > len(buf):
        raise LayoutError(f"message ends at byte {len(buf)}, inside a field at byte {at}")
    return int.from_bytes(buf[at:at + 4], "little" if order == "<" else "big")


def parse_event_array(raw: bytes, ros1: bool) -> tuple[int, int, str, np.ndarray]:
    """A serialized dvs_msgs / prophesee_event_msgs EventArray -> (width, height, frame_id,
    events with t in ns). Raises LayoutError on bytes that do not fit the layout."""
    buf = memoryview(raw)
    if ros1:
        order, base = "<", 0
        pos = 12                                    # header: seq, stamp sec, nsec
    else:
        if len(buf) < 4 or buf[0] != 0 or buf[1] not in (0, 1):
            raise LayoutError("not a CDR message (bad encapsulation header)")
        order, base = ("<" if buf[1] == 1 else ">"), 4
        pos = base + 8                              # header: stamp sec, nanosec
    n = _u32(buf, pos, order)
    frame_id = bytes(buf[pos + 4:pos + 4 + n]).rstrip(b"\0").decode("utf-8", "replace")
    pos += 4 + n
    if not ros1:
        pos = base + ((pos - base + 3) & ~3)
    height = _u32(buf, pos, order)
    width = _u32(buf, pos + 4, order)
    count = _u32(buf, pos + 8, order)
    pos += 12
    if ros1:
        rec = _records(buf, pos, count, _record_dtype(order, 4, 13), 13)
    else:
        rec = _cdr_records(buf, pos, count, order)
    ev = np.empty(count, EVENT_DTYPE)
    ev["t"] = rec["sec"].astype(np.int64) * 1_000_000_000 + rec["nsec"]
    ev["x"] = rec["x"]
    ev["y"] = rec["y"]
    ev["p"] = rec["p"] != 0
    return width, height, frame_id, ev


def _records(buf, pos: int, count: int, dt: np.dtype, stride: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dt)
    end = pos + (count - 1) * stride + dt.itemsize
    if end > len(buf):
        raise LayoutError(f"{count} events do not fit the message ({len(buf)} bytes)")
    return np.ndarray((count,), dt, buffer=buf, offset=pos, strides=(stride,))


def _cdr_records(buf, pos: int, count: int, order: str) -> np.ndarray:
    """CDR aligns each field to its own size, counted from the start of the data (byte 4): the
    count leaves the first record at a multiple of 4 (x, y, sec at +4, nsec, polarity at +12,
    13 bytes, padded to 14 for the next x); every later record starts 2 past a multiple of 4
    (sec at +6, polarity at +14, 16 bytes with its padding)."""
    if count == 0:
        return np.zeros(0, _record_dtype(order, 4, 13))
    first = _records(buf, pos, 1, _record_dtype(order, 4, 13), 14)
    rest = _records(buf, pos + 14, count - 1, _record_dtype(order, 6, 15), 16)
    out = np.empty(count, _record_dtype(order, 4, 13))
    out[:1] = first
    out[1:] = rest
    return out
