"""The message format between processes and hosts: zmq multipart `[topic, header, buffer...]`.

    header = {"kind": "window", "stream": "cam0", "seq": 7, "t0_us": 0, "t1_us": 50_000,
              "ts": {"window_end": t_ns, "sent": t_ns}, "meta": {"events": 1234}}
    send(sock, b"window", header, [voxels])          # arrays go out zero-copy
    msg = recv(sock, timeout_ms=100, stats=stats)    # Message(topic, header, arrays) or None

Header: one small UTF-8 JSON object. `encode` fills in `v` (the schema version, WIRE_VERSION)
and `buffers` (one {"dtype", "shape"} per array) and defaults for the rest: `stream` "",
`seq` 0, `t0_us`/`t1_us` 0, `ts` {} (named CLOCK_MONOTONIC wall times in ns, for latency:
every process on a host shares that clock) and `meta` {} (free JSON). `kind` is required
("window", "prediction", "frame", "imu", "telemetry", "control", ...: any short name).

Buffers: raw little-endian bytes of C-contiguous arrays. A dtype on the wire is a numpy dtype
string from an allow-list of simple numeric types ("<f4", "|u1", ...) or the name of one of
the evstream record types ("EVENT_DTYPE", "IMU_DTYPE", "TRIGGER_DTYPE"); nothing else, and in
particular never `object` and never pickle, so a message cannot make the receiver run code.

Validation (`decode`, and `encode` for what it produces): the header parses as a JSON object of
the right field types, `v` is a version we know, the frame count is 2 + len(buffers) (at most
MAX_BUFFERS), every dtype is allowed, every shape is a list of at most MAX_NDIM non-negative
ints, every buffer is exactly prod(shape) * itemsize bytes, and the total, declared and sent,
stays under `max_bytes` (DEFAULT_MAX_BYTES = 256 MiB). Anything else is a `WireError`. `recv`
drops and counts malformed messages (`WireStats`) and goes on waiting for a good one within its
timeout, so garbage from a peer never stops a receiver. To also keep a huge frame from ever
being buffered, a receiver can set the socket option zmq.MAXMSGSIZE (zmq then drops the peer;
stream/sockets.py does so on every socket bound to tcp).

Zero-copy both ways. `send` hands the arrays' memory to zmq (`copy=False`): the caller must not
modify an array until zmq is done with it (pass `track=True` and watch the returned
`MessageTracker`, as the window stage's buffer pool does). `decode` returns READ-ONLY numpy
views over the received frames (keep them or `np.array(...)` them; they keep the frame alive).
A frame under ~64 bytes may be unaligned in memory, which numpy handles (slower, still right).

Window slots (version 2, one host only). A header may carry `slot` = {"name", "index", "gen"}
instead of a buffer frame: its one `buffers` entry then describes a tensor the sender left in
shared memory (stream/slots.py; the window stage does this when the launcher made slots, i.e.
every stage runs on this host). `recv` resolves it into a private copy, so receivers see an
ordinary message; a window whose slot was reused before it was read (a live consumer far
behind) is dropped and counted in `WireStats.overwritten` (with its events), like a window
a full zmq queue would have dropped. `drain` resolves only the messages it keeps.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import zmq

from evstream.stream import slots
from evstream.types import EVENT_DTYPE, IMU_DTYPE, TRIGGER_DTYPE

WIRE_VERSION = 1
SLOT_VERSION = 2            # a message whose tensor waits in a shared-memory window slot
KNOWN_VERSIONS = frozenset({1, 2})
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_BUFFERS = 64
MAX_NDIM = 8
MAX_TOPIC_BYTES = 256
IPC_PATH_MAX = 107          # sockaddr_un.sun_path on Linux, without the terminating NUL

NAMED_DTYPES = {"EVENT_DTYPE": EVENT_DTYPE, "IMU_DTYPE": IMU_DTYPE, "TRIGGER_DTYPE": TRIGGER_DTYPE}
SIMPLE_DTYPES = frozenset({"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8",
                           "<f2", "<f4", "<f8"})

_SLOT_FIELDS = {"name": str, "index": int, "gen": int}
_FIELD_TYPES = {"kind": str, "stream": str, "seq": int, "t0_us": int, "t1_us": int,
                "buffers": list, "ts": dict, "meta": dict}


class WireError(ValueError):
    """A message that does not follow the wire format (or would not, for encode)."""


class OversizeError(WireError):
    """A message larger than the receiver's `max_bytes`."""


@dataclass
class Message:
    topic: bytes
    header: dict
    arrays: list[np.ndarray]
    slot: dict | None = None        # an unresolved window-slot reference (see `resolve`)

    @property
    def kind(self) -> str:
        return self.header["kind"]


@dataclass
class WireStats:
    """Receive counters: `received` good messages (and their `bytes` of buffers), `malformed`
    messages dropped for any reason, of which `oversized` for exceeding max_bytes (declared or
    sent); `rejected_peers`: connections to a bound tcp endpoint refused at the handshake
    (counted by stream/sockets.py's monitor: not zmq, a wrong socket type, a CURVE key that is
    not ours)."""

    received: int = 0
    bytes: int = 0
    malformed: int = 0
    oversized: int = 0
    overwritten: int = 0            # windows whose shared-memory slot was reused before reading
    overwritten_events: int = 0
    rejected_peers: int = 0
    last_error: str = ""

    def as_dict(self) -> dict:
        return {"received": self.received, "bytes": self.bytes, "malformed": self.malformed,
                "oversized": self.oversized, "overwritten": self.overwritten,
                "overwritten_events": self.overwritten_events,
                "rejected_peers": self.rejected_peers, "last_error": self.last_error}


def dtype_to_wire(dt: np.dtype) -> str:
    for name, named in NAMED_DTYPES.items():
        if dt == named:
            return name
    s = np.dtype(dt).str
    if s not in SIMPLE_DTYPES:
        raise WireError(f"dtype {dt!r} cannot go on the wire (allowed: {sorted(SIMPLE_DTYPES)} "
                        f"and {sorted(NAMED_DTYPES)}, little-endian)")
    return s


def dtype_from_wire(s) -> np.dtype:
    if not isinstance(s, str):
        raise WireError(f"buffer dtype must be a string, got {type(s).__name__}")
    if s in NAMED_DTYPES:
        return NAMED_DTYPES[s]
    if s not in SIMPLE_DTYPES:
        raise WireError(f"buffer dtype {s[:40]!r} is not allowed")
    return np.dtype(s)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_header(h, n_frames_after_header: int | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> list[tuple[np.dtype, tuple, int]]:
    """Validate a header dict; returns [(dtype, shape, nbytes)] per buffer."""
    if not isinstance(h, dict):
        raise WireError(f"header must be a JSON object, got {type(h).__name__}")
    v = h.get("v")
    if not _is_int(v) or v not in KNOWN_VERSIONS:
        raise WireError(f"unknown wire version {v!r} (this end speaks {sorted(KNOWN_VERSIONS)})")
    for key, typ in _FIELD_TYPES.items():
        val = h.get(key)
        ok = _is_int(val) if typ is int else isinstance(val, typ)
        if not ok:
            raise WireError(f"header field {key!r} must be {typ.__name__}, got {val!r:.60}")
    if not h["kind"] or len(h["kind"]) > 64:
        raise WireError(f"header kind must be 1..64 characters, got {h['kind']!r:.80}")
    for name, t in h["ts"].items():
        if not _is_int(t):
            raise WireError(f"ts[{name!r:.40}] must be an int (ns), got {t!r:.40}")
    bufs = h["buffers"]
    if "slot" in h:
        ref = h["slot"]
        if v < SLOT_VERSION or not isinstance(ref, dict) or set(ref) != set(_SLOT_FIELDS) \
                or not all(_is_int(ref[k]) if t is int else isinstance(ref[k], t)
                           for k, t in _SLOT_FIELDS.items()) or len(ref["name"]) > 255:
            raise WireError(f"header slot must be {{'name', 'index', 'gen'}} (version "
                            f"{SLOT_VERSION}), got {ref!r:.80}")
        if len(bufs) != 1:
            raise WireError(f"a slot message describes exactly one buffer, got {len(bufs)}")
        if n_frames_after_header not in (None, 0):
            raise WireError(f"a slot message has no buffer frames, got {n_frames_after_header}")
        n_frames_after_header = None
    if len(bufs) > MAX_BUFFERS:
        raise WireError(f"{len(bufs)} buffers, more than the limit {MAX_BUFFERS}")
    if n_frames_after_header is not None and n_frames_after_header != len(bufs):
        raise WireError(f"header describes {len(bufs)} buffers, message has "
                        f"{n_frames_after_header}")
    out, total = [], 0
    for i, b in enumerate(bufs):
        if not isinstance(b, dict) or set(b) != {"dtype", "shape"}:
            raise WireError(f"buffer {i}: must be {{'dtype', 'shape'}}, got {b!r:.80}")
        dt = dtype_from_wire(b["dtype"])
        shape = b["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_NDIM \
                or not all(_is_int(d) and d >= 0 for d in shape):
            raise WireError(f"buffer {i}: shape must be at most {MAX_NDIM} non-negative ints, "
                            f"got {shape!r:.80}")
        nbytes = math.prod(shape) * dt.itemsize
        total += nbytes
        if total > max_bytes:
            raise OversizeError(f"message of at least {total} bytes is over the limit of "
                                f"{max_bytes}")
        out.append((dt, tuple(shape), nbytes))
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def encode(topic: bytes | str, header: dict, arrays=(),
           max_bytes: int = DEFAULT_MAX_BYTES, slot: dict | None = None) -> list:
    """-> [topic, header_json, *buffers], the buffers being zero-copy uint8 views of the arrays
    (a non-contiguous array is copied once to make it contiguous). With `slot` (a reference
    from slots.SlotWriter.publish) the one array is described, not sent: it is in the slot."""
    if isinstance(topic, str):
        topic = topic.encode()
    if len(topic) > MAX_TOPIC_BYTES:
        raise WireError(f"topic longer than {MAX_TOPIC_BYTES} bytes")
    arrays = [a if a.flags.c_contiguous else a.copy(order="C") for a in map(np.asarray, arrays)]
    h = {"stream": "", "seq": 0, "t0_us": 0, "t1_us": 0, "ts": {}, "meta": {}}
    h.update(header)
    h["v"] = WIRE_VERSION
    h["buffers"] = [{"dtype": dtype_to_wire(a.dtype), "shape": list(a.shape)} for a in arrays]
    if slot is not None:
        h["v"], h["slot"] = SLOT_VERSION, dict(slot)
    for key in ("seq", "t0_us", "t1_us"):
        if isinstance(h.get(key), np.integer):
            h[key] = int(h[key])
    h["ts"] = {k: int(t) if isinstance(t, np.integer) else t for k, t in h["ts"].items()}
    check_header(h, 0 if slot is not None else len(arrays), max_bytes)
    try:
        raw = json.dumps(h, separators=(",", ":"), default=_json_default,
                         allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise WireError(f"header is not JSON: {e}") from None
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes is over the limit of {MAX_HEADER_BYTES}")
    if slot is not None:
        return [topic, raw]
    return [topic, raw] + [a.reshape(-1).view(np.uint8) for a in arrays]


def _frame_bytes(f):
    """A zmq.Frame, bytes or any buffer -> a memoryview (no copy)."""
    if isinstance(f, zmq.Frame):
        return f.buffer
    return memoryview(f)


def decode(frames, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Validate and unpack a received multipart message; raises WireError if malformed."""
    if len(frames) < 2:
        raise WireError(f"a message needs at least [topic, header], got {len(frames)} frames")
    if len(frames) > 2 + MAX_BUFFERS:
        raise WireError(f"{len(frames) - 2} buffers, more than the limit {MAX_BUFFERS}")
    topic = bytes(_frame_bytes(frames[0]))
    if len(topic) > MAX_TOPIC_BYTES:
        raise WireError(f"topic longer than {MAX_TOPIC_BYTES} bytes")
    raw = _frame_bytes(frames[1])
    sent = sum(_frame_bytes(f).nbytes for f in frames[2:])
    if sent > max_bytes:
        raise OversizeError(f"message of {sent} bytes is over the limit of {max_bytes}")
    if raw.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {raw.nbytes} bytes is over the limit of {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WireError(f"header is not UTF-8 JSON: {e}") from None
    specs = check_header(header, len(frames) - 2, max_bytes)
    if "slot" in header:
        return Message(topic, header, [], slot=header["slot"])
    arrays = []
    for i, ((dt, shape, nbytes), f) in enumerate(zip(specs, frames[2:])):
        buf = _frame_bytes(f)
        if buf.nbytes != nbytes:
            raise WireError(f"buffer {i}: {buf.nbytes} bytes, header says {shape} x "
                            f"{dt.itemsize} = {nbytes}")
        a = np.frombuffer(buf, dtype=dt, count=math.prod(shape)).reshape(shape)
        a.flags.writeable = False
        arrays.append(a)
    return Message(topic, header, arrays)


def _no_constants(name):
    raise ValueError(f"{name} is not allowed in a header")


def send(sock: zmq.Socket, topic: bytes | str, header: dict, arrays=(), flags: int = 0,
         track: bool = False, max_bytes: int = DEFAULT_MAX_BYTES, slot: dict | None = None):
    """Encode and send zero-copy. Returns the MessageTracker when `track`, else None.

    Raises zmq.Again with flags=zmq.NOBLOCK when the peer's queue is full (nothing was sent).
    """
    frames = encode(topic, header, arrays, max_bytes, slot=slot)
    tracker = sock.send_multipart(frames, flags=flags, copy=False, track=track)
    return tracker if track else None


def resolve(msg: Message, stats: WireStats, copy: bool = True) -> bool:
    """Copy a slot message's tensor out of shared memory into `msg.arrays` (a no-op for other
    messages). False (counted in `stats`) when the window is gone or the reference is bad.
    copy=False: `msg.arrays` gets a read-only view into the slot and `msg.slot` stays set; the
    consumer calls `finish(msg, stats)` once it is done with the view."""
    if msg.slot is None or msg.arrays:
        return True
    b = msg.header["buffers"][0]
    try:
        a = slots.read_slot(msg.slot, dtype_from_wire(b["dtype"]), tuple(b["shape"]), copy)
    except slots.StaleSlot:
        stats.overwritten += 1
        stats.overwritten_events += int(msg.header["meta"].get("events", 0) or 0)
        return False
    except (ValueError, KeyError, OSError) as e:
        stats.malformed += 1
        stats.last_error = f"bad window slot: {e}"[:200]
        return False
    a.flags.writeable = False
    msg.arrays = [a]
    if copy:
        msg.slot = None
    stats.bytes += a.nbytes
    return True


def finish(msg: Message, stats: WireStats) -> bool:
    """After using a zero-copy slot view (resolve(copy=False)): was it still intact? Releases
    the slot; False (counted as overwritten) when a live writer reused it meanwhile."""
    if msg.slot is None:
        return True
    ok = slots.slot_valid(msg.slot)
    slots.release_slot(msg.slot)
    msg.slot = None
    if not ok:
        stats.overwritten += 1
        stats.overwritten_events += int(msg.header["meta"].get("events", 0) or 0)
    return ok


def release(msg: Message) -> None:
    """A slot message that will not be read (a live consumer skipped it): give its slot back."""
    if msg.slot is not None:
        slots.release_slot(msg.slot)


def recv(sock: zmq.Socket, timeout_ms: int | None = None, stats: WireStats | None = None,
         max_bytes: int = DEFAULT_MAX_BYTES, resolve_slots: bool = True) -> Message | None:
    """The next well-formed message within `timeout_ms` (None: no limit; 0: only what is
    already queued), or None. Malformed messages are dropped and counted in `stats`, so are
    windows whose slot was overwritten (see the module comment); with resolve_slots=False a
    slot message comes back unresolved (`msg.slot` set, `msg.arrays` empty)."""
    stats = stats if stats is not None else WireStats()
    deadline = None if timeout_ms is None else _now_ms() + max(0, timeout_ms)
    while True:
        left = -1 if deadline is None else max(0, deadline - _now_ms())
        if not sock.poll(left):
            return None
        frames = sock.recv_multipart(copy=False)
        try:
            msg = decode(frames, max_bytes)
        except WireError as e:
            stats.malformed += 1
            if isinstance(e, OversizeError):
                stats.oversized += 1
            stats.last_error = str(e)[:200]
            continue
        if msg.slot is None:
            stats.bytes += sum(a.nbytes for a in msg.arrays)
        elif resolve_slots and not resolve(msg, stats):       # counts its own bytes
            continue
        stats.received += 1
        return msg


DRAWABLE_KINDS = ("window", "prediction")


def drain(sock: zmq.Socket, stats: WireStats | None, lossless: bool,
          first_timeout_ms: int = 0, kinds=DRAWABLE_KINDS,
          copy: bool = True) -> tuple[list, list]:
    """Everything queued on `sock` (waiting up to `first_timeout_ms` for the first message)
    -> (to_handle, stale). Lossless: all of it, in order. Live (the consumer's backpressure):
    the newest message of `kinds` per stream plus every other message (control), in arrival
    order; `stale` holds the messages of `kinds` skipped for a newer one. copy=False: slot
    messages come as zero-copy views (see `resolve`; `finish` each one after use)."""
    stats = stats if stats is not None else WireStats()
    msgs = []
    m = recv(sock, first_timeout_ms, stats, resolve_slots=False)
    while m is not None:
        msgs.append(m)
        m = recv(sock, 0, stats, resolve_slots=False)
    if lossless:
        return [m for m in msgs if resolve(m, stats, copy)], []
    newest = {m.header.get("stream"): i for i, m in enumerate(msgs) if m.kind in kinds}
    keep = set(newest.values())
    handle = [m for i, m in enumerate(msgs)
              if (i in keep or m.kind not in kinds) and resolve(m, stats, copy)]
    stale = [m for i, m in enumerate(msgs) if i not in keep and m.kind in kinds]
    for m in stale:
        release(m)
    return handle, stale


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def bind_random(sock: zmq.Socket, address: str = "tcp://127.0.0.1") -> str:
    """Bind to a free port chosen by the OS; returns the endpoint actually bound."""
    if not address.startswith("tcp://"):
        raise ValueError(f"bind_random wants tcp://HOST, got {address!r}")
    host = address[len("tcp://"):]
    has_port = host.rsplit("]", 1)[-1].count(":") > 0 if host.startswith("[") else ":" in host
    sock.bind(address if has_port else f"{address}:*")
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def ipc_endpoint(path: str | os.PathLike) -> str:
    """ipc://ABSOLUTE_PATH, checked against the Unix socket path limit (zmq fails obscurely)."""
    p = os.path.abspath(os.fspath(path))
    if len(p.encode()) > IPC_PATH_MAX:
        raise ValueError(f"ipc socket path is {len(p.encode())} bytes, over the Linux limit of "
                         f"{IPC_PATH_MAX}: {p}")
    return f"ipc://{p}"
