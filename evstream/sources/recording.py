"""AEDAT 4.0 recordings (.aedat4) through dv-processing 2.0.4.

What the source yields:
- Packets in time order: each event batch of the file (one AEDAT4 packet of the events stream)
  together with the frames, IMU samples and triggers stamped up to that batch's last event;
  whatever is left of those streams after the last batch comes in one final packet. A file
  whose single events packet holds every event (the davis346_wheel_* recordings) is one packet.
- Events go through `self.dv_events(store)` (noise filters on the dv EventStore, then a
  zero-copy view as EVENT_DTYPE). Frames, IMU and triggers use the converters in camera.py.
- `camera` is the recording's camera name, `width`/`height` the events stream's sizeX/sizeY
  (`frame_size` the frames stream's, or None).
  --width/--height are used only where the file has no resolution; a flag that disagrees with
  the file is a one-line error. `streams` lists the streams the file declares (even empty ones).
- A file with several cameras needs `stream=CAMERA`; without it the error lists the names.

Every dv-processing exception becomes a one-line SourceError naming the file (and the packet
where there is one). That is not enough on its own, because dv-processing 2.0.4 does not
fail on every broken file: on an LZ4 payload it cannot decompress (a flipped bit in the middle
of a recording) it spins forever holding the GIL, and on a packet whose flatbuffer offsets
point outside the packet it segfaults. Neither can be caught from Python, so this module
checks every packet before dv reads it (`_check_packets`, the one workaround for both; the
tests in tests/test_aedat4.py show the hang in a child process):
- our own parse of the header, the stream list (XML) and the FileDataTable, which says where
  every packet is; without a table (a recording that was never closed) the packet headers are
  walked the way dv does it;
- a numba pass over each packet's LZ4 frame (frame header, block sizes, every sequence's
  lengths and match offsets, the end-of-block rules) that decodes only the start of event
  packets, and all of the small frame/IMU/trigger packets, to check their flatbuffer offsets
  and vector lengths against the packet size (frame pixels against sizeX*sizeY*channels).
The check runs in a background thread (the kernel releases the GIL), ahead of dv's decoding,
so on two cores it costs almost nothing in wall time; a read waits only until the packet it
needs has passed. ZSTD-compressed files are handed to dv unchecked (rare; no decoder here).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Iterator

import numba
import numpy as np

from evstream.errors import SourceError
from evstream.sources import register_reader
from evstream.sources.base import EventSource
from evstream.types import IMU_DTYPE, TRIGGER_DTYPE, EVENT_DTYPE, Frame, Packet

MAGIC = b"#!AER-DAT4.0\r\n"
COMPRESSION = {0: "NONE", 1: "LZ4", 2: "LZ4_HIGH", 3: "ZSTD", 4: "ZSTD_HIGH"}
KINDS = {"EVTS": 1, "FRME": 2, "IMUS": 3, "TRIG": 4}          # packet types we check in depth
EVENT_HEAD_BYTES = 4096          # how much of an event packet is decoded to check its offsets
SYNC_CHECK_BYTES = 4 << 20       # smaller files are checked before reading, without a thread


# -- one-line messages -------------------------------------------------------------------------

def dv_message(e: BaseException) -> str:
    """The useful line of a dv-processing exception (it adds a C++ location and a stacktrace)."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    for ln in lines:
        if not ln or ln.startswith("Stacktrace") or ln[:1].isdigit() or ln.startswith("/"):
            continue
        return ln.split(" - Error info:", 1)[0]
    return type(e).__name__


# -- the file's layout (header, streams, packet table) -------------------------------------------

@dataclass
class StreamInfo:
    id: int
    name: str            # dv's stream name ("events", "frames", "imu", "triggers")
    type: str            # typeIdentifier: EVTS, FRME, IMUS, TRIG, ...
    source: str          # camera name
    size: tuple[int, int] | None = None


@dataclass
class Layout:
    compression: int
    table_pos: int                      # FileDataTable position, -1 when the file has none
    data_start: int
    file_size: int
    streams: dict[int, StreamInfo]
    # packets in file order: payload offset, payload size, stream id
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stream_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def cameras(self) -> list[str]:
        return sorted({s.source for s in self.streams.values() if s.type in KINDS and s.source})


class _Buf:
    """Bounds-checked little-endian reads from bytes; a bad offset raises ValueError."""

    def __init__(self, data: bytes):
        self.data = data

    def get(self, fmt: str, pos: int):
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ValueError(f"offset {pos} outside the {len(self.data)}-byte buffer")
        return struct.unpack_from("<" + fmt, self.data, pos)[0]

    def table(self, pos: int) -> tuple[int, list[int]]:
        """-> (table position, field offsets) of the flatbuffer table at pos."""
        vt = pos - self.get("i", pos)
        vsize, tsize = self.get("H", vt), self.get("H", vt + 2)
        if vsize < 4 or pos + tsize > len(self.data):
            raise ValueError(f"table at {pos} has a bad vtable")
        return pos, [self.get("H", vt + 4 + 2 * i) for i in range((vsize - 4) // 2)]

    def field(self, tbl, i: int, fmt: str, default):
        pos, offs = tbl
        return self.get(fmt, pos + offs[i]) if i < len(offs) and offs[i] else default

    def ref(self, tbl, i: int) -> int | None:
        pos, offs = tbl
        if i >= len(offs) or not offs[i]:
            return None
        p = pos + offs[i]
        return p + self.get("I", p)


def read_layout(path: str) -> Layout:
    """Parse the header, the stream list and the packet table; SourceError if they are broken."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(18)
        if len(head) < 14 or head[:14] != MAGIC:
            raise SourceError(f"{path}: not an AEDAT 4.0 file (it does not start with "
                              f"'#!AER-DAT4.0')")
        if len(head) < 18:
            raise SourceError(f"{path}: truncated inside the file header (byte {len(head)})")
        (hsize,) = struct.unpack_from("<i", head, 14)
        if hsize <= 0 or 18 + hsize > size:
            raise SourceError(f"{path}: truncated or corrupt file header (header size {hsize} "
                              f"at byte 14, file has {size} bytes)")
        b = _Buf(f.read(hsize))
    try:
        root = b.table(b.get("I", 0))
        compression = b.field(root, 0, "i", 0)
        table_pos = b.field(root, 1, "q", -1)
        info = b.ref(root, 2)
        xml = b.data[info + 4: info + 4 + b.get("I", info)].decode() if info else ""
    except (ValueError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: corrupt file header ({e})") from None
    if compression not in COMPRESSION:
        raise SourceError(f"{path}: corrupt file header (unknown compression {compression})")
    data_start = 18 + hsize
    if table_pos >= 0 and not data_start <= table_pos < size:
        raise SourceError(f"{path}: truncated or corrupt: the packet table should be at byte "
                          f"{table_pos} but the file has {size} bytes")
    lay = Layout(compression, table_pos, data_start, size, _streams(path, xml))
    with open(path, "rb") as f:
        if table_pos >= 0:
            _packets_from_table(path, f, lay)
        else:
            _packets_from_headers(f, lay)
    return lay


def _streams(path: str, xml: str) -> dict[int, StreamInfo]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise SourceError(f"{path}: corrupt stream list in the file header ({e})") from None
    out = {}
    # stream nodes are the numbered children of the "outInfo" node (its path varies by writer)
    nodes = [n for info in root.iter("node") if info.get("name") == "outInfo"
             for n in info.findall("node")]
    for node in nodes:
        if not node.get("name", "").isdigit():
            continue
        attrs = {a.get("key"): (a.text or "") for a in node.findall("attr")}
        info = {}
        for child in node.findall("node"):
            if child.get("name") == "info":
                info = {a.get("key"): (a.text or "") for a in child.findall("attr")}
        sid = int(node.get("name"))
        size = None
        if info.get("sizeX", "").isdigit() and info.get("sizeY", "").isdigit():
            size = (int(info["sizeX"]), int(info["sizeY"]))
        out[sid] = StreamInfo(sid, attrs.get("originalOutputName", ""),
                              attrs.get("typeIdentifier", ""), info.get("source", ""), size)
    return out


def _packets_from_table(path: str, f, lay: Layout) -> None:
    f.seek(lay.table_pos)
    raw = f.read()
    where = f"the packet table at byte {lay.table_pos}"
    if lay.compression in (1, 2):
        src = np.frombuffer(raw, np.uint8)
        n = _lz4_frame(src, 0, len(src), np.zeros(0, np.uint8))
        if n < 0:
            raise SourceError(f"{path}: truncated or corrupt: {where} does not decompress "
                              f"({_LZ4_ERRORS.get(n, n)})")
        out = np.zeros(n, np.uint8)
        _lz4_frame(src, 0, len(src), out)
        raw = out.tobytes()
    elif lay.compression != 0:
        return  # ZSTD: no decoder here; dv reads the table and the packets unchecked
    try:
        b = _Buf(raw)
        if b.get("I", 0) != len(raw) - 4:
            raise ValueError("size prefix does not match")
        root = b.table(4 + b.get("I", 4))
        vec = b.ref(root, 0)
        count = b.get("I", vec) if vec is not None else 0
        rows = []
        for i in range(count):
            slot = vec + 4 + 4 * i
            t = b.table(slot + b.get("I", slot))
            offset = b.field(t, 0, "q", 0)
            pinfo = t[1][1] if len(t[1]) > 1 else 0
            sid, psize = (b.get("i", t[0] + pinfo), b.get("i", t[0] + pinfo + 4)) if pinfo \
                else (0, 0)
            rows.append((offset, psize, sid))
    except ValueError as e:
        raise SourceError(f"{path}: truncated or corrupt: {where} is damaged ({e})") from None
    rows.sort()
    prev_end = lay.data_start
    for k, (offset, psize, sid) in enumerate(rows):
        if offset - 8 < prev_end or psize < 0 or offset + psize > lay.table_pos:
            raise SourceError(f"{path}: corrupt: {where} places packet {k} at bytes "
                              f"{offset}..{offset + psize}, outside the data")
        prev_end = offset + psize
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    lay.offsets, lay.sizes, lay.stream_ids = arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


def _packets_from_headers(f, lay: Layout) -> None:
    """No packet table (never closed): walk the 8-byte headers, keeping complete packets."""
    rows = []
    pos = lay.data_start
    while pos + 8 <= lay.file_size:
        f.seek(pos)
        sid, psize = struct.unpack("<ii", f.read(8))
        if psize < 0 or pos + 8 + psize > lay.file_size:
            break
        rows.append((pos + 8, psize, sid))
        pos += 8 + psize
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    lay.offsets, lay.sizes, lay.stream_ids = arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


# -- the packet check (numba; releases the GIL) ---------------------------------------------------

_LZ4_ERRORS = {-1: "LZ4 frame too short", -2: "no LZ4 frame magic", -3: "bad LZ4 frame header",
               -4: "LZ4 frame cut short", -5: "bad LZ4 block size", -6: "bad LZ4 literal run",
               -7: "bad LZ4 match", -8: "LZ4 block breaks the end-of-block rules",
               -9: "bytes after the LZ4 frame", -10: "bad LZ4 header checksum"}
_FB_ERROR = -100     # the decompressed packet's flatbuffer points outside the packet
# file identifiers of the KINDS as little-endian u32 (index = kind)
_IDENTS = np.array([0] + [int.from_bytes(k.encode(), "little") for k in KINDS], np.int64)


@numba.njit(cache=True, nogil=True)
def _xxh32_small(src, p, n):
    """xxHash32 (seed 0) of src[p:p+n] for n < 16: the LZ4 frame descriptor checksum."""
    P1, P2, P3, P4, P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    M = 0xFFFFFFFF
    h = (P5 + n) & M
    i = p
    while i + 4 <= p + n:
        v = np.int64(src[i]) | (np.int64(src[i + 1]) << 8) | (np.int64(src[i + 2]) << 16) \
            | (np.int64(src[i + 3]) << 24)
        h = (h + v * P3) & M
        h = (((h << 17) | (h >> 15)) & M) * P4 & M
        i += 4
    while i < p + n:
        h = (h + np.int64(src[i]) * P5) & M
        h = (((h << 11) | (h >> 21)) & M) * P1 & M
        i += 1
    h ^= h >> 15
    h = (h * P2) & M
    h ^= h >> 13
    h = (h * P3) & M
    h ^= h >> 16
    return h


@numba.njit(cache=True, nogil=True)
def _lz4_walk_block(src, ip, iend, op, oend, low):
    """_lz4_frame's block check without the copying: the hot loop for event packets."""
    last_start = np.int64(-1)
    last_end = np.int64(-1)
    while True:
        token = src[ip]
        ip += 1
        n = np.int64(token >> 4)
        if n == 15:
            while True:
                if ip >= iend:
                    return -6
                b = src[ip]
                ip += 1
                n += b
                if b != 255:
                    break
        ip += n
        op += n
        if ip >= iend:
            if ip == iend and op <= oend:
                break
            return -6
        if ip + 2 > iend:
            return -7
        off = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
        ip += 2
        n = np.int64(token & 15)
        if n == 15:
            while True:
                if ip >= iend:
                    return -7
                b = src[ip]
                ip += 1
                n += b
                if b != 255:
                    break
        if off == 0 or op - off < low:
            return -7
        last_start = op
        op += n + 4
        last_end = op
        if ip >= iend or op > oend:
            return -7
    if last_end >= 0 and (last_end > op - 5 or last_start > op - 12):
        return -8
    return op


@numba.njit(cache=True, nogil=True)
def _lz4_walk(src, p, end):
    """Check the LZ4 frame src[p:end] like _lz4_frame, decoding nothing; -> size or error."""
    q = _lz4_frame_header(src, p, end)
    if q < 0:
        return q
    flg = np.int64(src[p + 4])
    block_max = np.int64(1) << (8 + 2 * ((np.int64(src[p + 5]) >> 4) & 7))
    indep = (flg >> 5) & 1
    bchk = (flg >> 4) & 1
    produced = np.int64(0)
    while True:
        if q + 4 > end:
            return -4
        bs = np.int64(src[q]) | (np.int64(src[q + 1]) << 8) | (np.int64(src[q + 2]) << 16) \
            | (np.int64(src[q + 3]) << 24)
        q += 4
        if bs == 0:
            break
        raw = bs >> 31
        bs &= 0x7FFFFFFF
        if bs > block_max or q + bs + 4 * bchk > end:
            return -5
        if raw:
            produced += bs
        else:
            r = _lz4_walk_block(src, q, q + bs, produced, produced + block_max,
                                produced if indep else np.int64(0))
            if r < 0:
                return r
            produced = r
        q += bs + 4 * bchk
    q += 4 * ((flg >> 2) & 1)
    if q != end:
        return -9
    return produced


@numba.njit(cache=True, nogil=True)
def _lz4_frame_header(src, p, end):
    """Check the LZ4 frame descriptor at p; -> position of the first block, or an error."""
    if end - p < 7:
        return -1
    if not (src[p] == 0x04 and src[p + 1] == 0x22 and src[p + 2] == 0x4D and src[p + 3] == 0x18):
        return -2
    flg = np.int64(src[p + 4])
    bd = np.int64(src[p + 5])
    if (flg >> 6) != 1 or (flg & 3) != 0 or (bd & 0x8F) != 0 or ((bd >> 4) & 7) < 4:
        return -3
    q = p + 6 + 8 * ((flg >> 3) & 1)
    if q + 1 > end:
        return -1
    if ((_xxh32_small(src, p + 4, q - p - 4) >> 8) & 0xFF) != src[q]:
        return -10
    return q + 1


@numba.njit(cache=True, nogil=True)
def _lz4_frame(src, p, end, out, early=False):
    """Check the LZ4 frame src[p:end] and copy its first len(out) decoded bytes into out.

    Returns the decoded size, or a negative code (see _LZ4_ERRORS); with early=True it stops
    (returning len(out)) as soon as out is full, having checked only that far. Stricter than
    the LZ4 library where the format's rules allow it (a zero match offset, the end-of-block
    rules): valid encoders never produce those, and dv must never see an error the library
    reports.
    """
    q = _lz4_frame_header(src, p, end)
    if q < 0:
        return q
    flg = np.int64(src[p + 4])
    block_max = np.int64(1) << (8 + 2 * ((np.int64(src[p + 5]) >> 4) & 7))
    indep = (flg >> 5) & 1
    bchk = (flg >> 4) & 1
    cchk = (flg >> 2) & 1
    limit = out.shape[0]
    produced = np.int64(0)
    while True:
        if q + 4 > end:
            return -4
        bs = np.int64(src[q]) | (np.int64(src[q + 1]) << 8) | (np.int64(src[q + 2]) << 16) \
            | (np.int64(src[q + 3]) << 24)
        q += 4
        if bs == 0:
            break
        raw = bs >> 31
        bs &= 0x7FFFFFFF
        if bs > block_max or q + bs + 4 * bchk > end:
            return -5
        if early and produced >= limit:
            return limit
        if raw:
            for i in range(min(bs, max(limit - produced, 0))):
                out[produced + i] = src[q + i]
            produced += bs
        else:
            ip = q
            iend = q + bs
            op = produced
            oend = produced + block_max
            low = produced if indep else np.int64(0)
            last_start = np.int64(-1)
            last_end = np.int64(-1)
            while True:
                token = np.int64(src[ip])
                ip += 1
                n = token >> 4
                if n == 15:
                    while True:
                        if ip >= iend:
                            return -6
                        b = np.int64(src[ip])
                        ip += 1
                        n += b
                        if b != 255:
                            break
                if ip + n > iend or op + n > oend:
                    return -6
                for i in range(min(n, max(limit - op, 0))):
                    out[op + i] = src[ip + i]
                ip += n
                op += n
                if ip == iend:
                    break
                if ip + 2 > iend:
                    return -7
                off = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
                ip += 2
                if off == 0 or op - off < low:
                    return -7
                n = token & 15
                if n == 15:
                    while True:
                        if ip >= iend:
                            return -7
                        b = np.int64(src[ip])
                        ip += 1
                        n += b
                        if b != 255:
                            break
                n += 4
                if op + n > oend or ip >= iend:
                    return -7
                for i in range(min(n, max(limit - op, 0))):
                    out[op + i] = out[op + i - off]
                last_start = op
                op += n
                last_end = op
                if early and op >= limit:
                    return limit
            if last_end >= 0 and (last_end > op - 5 or last_start > op - 12):
                return -8
            produced = op
        q += bs + 4 * bchk
    q += 4 * cchk
    if q != end:
        return -9
    return produced


@numba.njit(cache=True, inline="always")
def _u32(b, p):
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8) | (np.int64(b[p + 2]) << 16) \
        | (np.int64(b[p + 3]) << 24)


@numba.njit(cache=True, inline="always")
def _u16(b, p):
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8)


@numba.njit(cache=True, nogil=True)
def _fb_table(b, n, tbl, sizes):
    """Table size of the flatbuffer table at tbl, -1 if it or a field (sizes[i] bytes each,
    for the first len(sizes) fields) leaves b[:n]."""
    if tbl < 0 or tbl + 4 > n:
        return -1
    soff = _u32(b, tbl)
    if soff >= 2 ** 31:
        soff -= 2 ** 32
    vt = tbl - soff
    if vt < 0 or vt + 4 > n:
        return -1
    vsize = _u16(b, vt)
    tsize = _u16(b, vt + 2)
    if vsize < 4 or (vsize & 1) or vt + vsize > n or tsize < 4 or tbl + tsize > n:
        return -1
    for i in range((vsize - 4) // 2):
        fo = _u16(b, vt + 4 + 2 * i)
        width = sizes[i] if i < sizes.shape[0] else 1
        if fo != 0 and (fo < 4 or fo + width > tsize):
            return -1
    return tsize


@numba.njit(cache=True, inline="always")
def _fb_field(b, tbl, i):
    vt_soff = _u32(b, tbl)
    if vt_soff >= 2 ** 31:
        vt_soff -= 2 ** 32
    vt = tbl - vt_soff
    if 4 + 2 * i >= _u16(b, vt):
        return np.int64(0)
    return _u16(b, vt + 4 + 2 * i)


@numba.njit(cache=True, nogil=True)
def _fb_check(b, n, total, kind):
    """Check the flatbuffer in b[:n] (the first n bytes of a `total`-byte packet): size prefix,
    root table, and for known kinds the element vector against the packet size. 0 if sound."""
    if total < 12 or n < 12 or _u32(b, 0) != total - 4:
        return _FB_ERROR
    if kind > 0 and _u32(b, 8) != _IDENTS[kind]:
        return _FB_ERROR            # dv would quote the garbled type name in a bad-UTF-8 error
    root = 4 + _u32(b, 4)
    ptr4 = np.array([4], np.int64)
    if _fb_table(b, n, root, ptr4) < 0:
        return _FB_ERROR
    if kind == 1 or kind == 3 or kind == 4:        # EVTS / IMUS / TRIG: elements vector
        fo = _fb_field(b, root, 0)
        if fo == 0:
            return 0
        vec = root + fo + _u32(b, root + fo)
        if vec + 4 > n:
            return _FB_ERROR
        count = _u32(b, vec)
        if kind == 1:
            return 0 if vec + 4 + 16 * count <= total else _FB_ERROR
        if vec + 4 + 4 * count > n:
            return _FB_ERROR
        if kind == 3:
            sizes = np.array([8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4], np.int64)
        else:
            sizes = np.array([8, 1], np.int64)
        for i in range(count):
            slot = vec + 4 + 4 * i
            if _fb_table(b, n, slot + _u32(b, slot), sizes) < 0:
                return _FB_ERROR
        return 0
    if kind == 2:                                   # FRME: pixels vs sizeX * sizeY * channels
        sizes = np.array([8, 8, 8, 8, 8, 1, 2, 2, 2, 2, 4, 8, 1], np.int64)
        if _fb_table(b, n, root, sizes) < 0:
            return _FB_ERROR
        fmt = np.int64(0)
        fo = _fb_field(b, root, 5)
        if fo:
            fmt = np.int64(b[root + fo])
        sx = np.int64(0)
        sy = np.int64(0)
        fo = _fb_field(b, root, 6)
        if fo:
            sx = _u16(b, root + fo)
        fo = _fb_field(b, root, 7)
        if fo:
            sy = _u16(b, root + fo)
        if sx >= 32768 or sy >= 32768:
            return _FB_ERROR
        depth = fmt & 7
        elem = 1 if depth <= 1 else (2 if depth <= 3 or depth == 7 else (4 if depth <= 5 else 8))
        need = sx * sy * elem * (((fmt >> 3) & 511) + 1)
        fo = _fb_field(b, root, 10)
        if fo == 0:
            return 0 if need == 0 else _FB_ERROR
        vec = root + fo + _u32(b, root + fo)
        if vec + 4 > n:
            return _FB_ERROR
        count = _u32(b, vec)
        return 0 if count == need and vec + 4 + count <= n else _FB_ERROR
    return 0


@numba.njit(cache=True, nogil=True)
def _check_packets(src, offsets, sizes, kinds, compressed, progress, stop):
    """Check packets in order; progress[0] = packets passed so far, progress[1] = the failing
    packet index (-1 while none), progress[2] = its error code."""
    head = np.zeros(EVENT_HEAD_BYTES, np.uint8)
    for k in range(offsets.shape[0]):
        if stop[0]:
            return
        p = offsets[k]
        end = p + sizes[k]
        kind = kinds[k]
        if compressed:
            if kind == 0 or kind == 1:
                total = _lz4_walk(src, p, end)
            else:
                total = _lz4_frame(src, p, end, head)
            if total >= 0 and kind != 0:
                if kind == 1:
                    _lz4_frame(src, p, end, head, True)
                    code = _fb_check(head, min(total, EVENT_HEAD_BYTES), total, kind)
                else:
                    full = np.zeros(total, np.uint8)
                    _lz4_frame(src, p, end, full)
                    code = _fb_check(full, total, total, kind)
                total = code if code < 0 else total
        else:
            total = _fb_check(src[p:end], sizes[k], sizes[k], kind) if kind != 0 else 0
        if total < 0:
            progress[1] = k
            progress[2] = total
            return
        progress[0] = k + 1


class _PacketChecker:
    """Runs _check_packets over a file (in a thread for big files) and answers "may dv read
    packet k yet?" with wait(k): returns once packet k passed, raises SourceError if it failed."""

    def __init__(self, path: str, lay: Layout, background: bool):
        self.path = path
        self.lay = lay
        self.progress = np.array([0, -1, 0], np.int64)
        self.stop = np.zeros(1, np.int64)
        self.n = len(lay.offsets)
        self._thread = None
        if lay.compression in (3, 4) or self.n == 0:    # ZSTD: unchecked (see module doc)
            self.progress[0] = self.n
            return
        kinds = np.array([KINDS.get(lay.streams[s].type, 0) if s in lay.streams else 0
                          for s in lay.stream_ids.tolist()], np.int64)
        self._args = (np.memmap(path, np.uint8, "r"), lay.offsets, lay.sizes, kinds,
                      lay.compression in (1, 2), self.progress, self.stop)
        if background:
            self._thread = threading.Thread(target=self._run, name="aedat4-check", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            _check_packets(*self._args)
        finally:
            self._args = None   # drop the memmap

    def wait(self, k: int) -> None:
        if k >= self.n:
            return
        pause = 0.0
        while True:
            finished = self._thread is None or not self._thread.is_alive()
            bad, code = int(self.progress[1]), int(self.progress[2])
            if 0 <= bad <= k:
                self._fail(bad, code)
            if int(self.progress[0]) > k:
                return
            if finished:
                raise SourceError(f"{self.path}: packet check stopped before packet {k}")
            time.sleep(pause)
            pause = min(pause * 2 or 1e-5, 1e-3)

    def wait_all(self) -> None:
        self.wait(self.n - 1)

    def _fail(self, k: int, code: int) -> None:
        lay = self.lay
        sid = int(lay.stream_ids[k])
        name = lay.streams[sid].name if sid in lay.streams else f"stream {sid}"
        what = "its contents are damaged (bad type tag or offsets)" if code == _FB_ERROR else \
            _LZ4_ERRORS.get(code, f"error {code}")
        raise SourceError(f"{self.path}: corrupt packet {k} ({name}) at byte "
                          f"{int(lay.offsets[k]) - 8}: {what}")

    def close(self) -> None:
        self.stop[0] = 1
        if self._thread is not None:
            self._thread.join()
            self._thread = None


# -- the source ---------------------------------------------------------------------------------

class Aedat4Source(EventSource):
    live = False
    # Set True (evstream record does) to keep each event array's dv EventStore reachable
    # through writer.dv_store_of(events), so an .aedat4 -> .aedat4 copy skips the conversion.
    share_dv_stores = False

    def __init__(self, path: str, *, width: int | None = None, height: int | None = None,
                 bad_events: str | None = None, filters=None, stream: str | None = None):
        import dv_processing as dv

        self.name = path
        self._rec = None
        self._checker = None
        lay = read_layout(path)
        cameras = lay.cameras()
        if stream is None and len(cameras) > 1:
            raise SourceError(f"{path}: holds {len(cameras)} cameras ({', '.join(cameras)}); "
                              f"pick one with --stream CAMERA")
        if stream is not None and stream not in cameras:
            raise SourceError(f"{path}: no camera {stream!r} in this file (it holds: "
                              f"{', '.join(cameras) or 'none'})")
        self.layout = lay
        no_table = lay.table_pos < 0
        # dv decodes every packet while opening a file without a table: check them all first
        self._checker = _PacketChecker(
            path, lay, background=not no_table and lay.file_size > SYNC_CHECK_BYTES)
        try:
            if no_table:
                self._checker.wait_all()
            try:
                self._rec = dv.io.MonoCameraRecording(path, stream) if stream else \
                    dv.io.MonoCameraRecording(path)
                rec = self._rec
                self.camera = rec.getCameraName()
                names = list(rec.getStreamNames())
                res = rec.getEventResolution() if rec.isEventStreamAvailable() else None
                fres = rec.getFrameResolution() if rec.isFrameStreamAvailable() else None
                self.frame_size = tuple(int(v) for v in fres) if fres is not None else None
                res = res if res is not None else fres
                self.time_range_us = tuple(int(t) for t in rec.getTimeRange())
            except Exception as e:  # noqa: BLE001 - any dv failure is a bad file
                raise SourceError(f"{path}: {dv_message(e)}") from None
            self._has = {k: k in names for k in ("events", "frames", "imu", "triggers")}
            self.streams = [k for k in ("events", "frames", "imu", "triggers") if self._has[k]]
            self._order = self._read_order(self.camera)
            self._count = dict.fromkeys(self._has, 0)
            self._set_resolution(res, width, height)
        except BaseException:
            self.close()
            raise
        self.compression = COMPRESSION[lay.compression]
        super().__init__(bad_events=bad_events, filters=filters)

    def _read_order(self, camera: str) -> dict[str, np.ndarray | None]:
        """Per dv stream name, the file-order indices of its packets (None: not known, so a
        read waits for the whole check)."""
        lay = self.layout
        out: dict[str, np.ndarray | None] = {}
        for name in self._has:
            ids = [s.id for s in lay.streams.values() if s.name == name and s.source == camera]
            out[name] = np.flatnonzero(lay.stream_ids == ids[0]) if len(ids) == 1 else None
        return out

    def _set_resolution(self, res, width, height) -> None:
        path = self.name
        if res is not None:
            self.width, self.height = int(res[0]), int(res[1])
            if (width is not None and width != self.width) or \
                    (height is not None and height != self.height):
                raise SourceError(f"{path}: the file says {self.width}x{self.height}; "
                                  f"--width/--height {width}x{height} disagree")
        elif width is not None and height is not None:
            self.width, self.height = width, height
            self.resolution_note = "not in the file; from --width/--height"
        else:
            mx = my = -1
            for store in self._dv_batches():
                if len(store):
                    c = store.coordinates()
                    mx, my = max(mx, int(c[:, 0].max())), max(my, int(c[:, 1].max()))
            self._rewind()
            self.width, self.height = (width or mx + 1 or 1), (height or my + 1 or 1)
            self.resolution_note = "not in the file; inferred from the largest x and y"

    # dv reads, each gated by the packet check and with errors turned into one line
    def _dv_next(self, stream: str, method: str):
        k = self._count[stream]
        order = self._order[stream]
        if order is None:
            self._checker.wait_all()
        elif k < len(order):
            self._checker.wait(int(order[k]))
        try:
            item = getattr(self._rec, method)()
        except Exception as e:  # noqa: BLE001
            where = f" (packet {int(order[k])})" if order is not None and k < len(order) else ""
            raise SourceError(f"{self.name}: reading {stream}{where}: {dv_message(e)}") from None
        self._count[stream] = k + 1
        return item

    def _dv_batches(self):
        while self._has["events"]:
            store = self._dv_next("events", "getNextEventBatch")
            if store is None:
                return
            yield store

    def _rewind(self) -> None:
        self._rec.resetSequentialRead()
        self._count = dict.fromkeys(self._has, 0)

    def _read(self) -> Iterator[Packet]:
        from evstream.sources.camera import frame_from_dv, imu_from_dv, triggers_from_dv
        from evstream.sources.writer import remember_dv_store

        if self._rec is None:
            raise SourceError(f"{self.name}: source is closed")
        if any(self._count.values()):
            # a second pass starts time over: reset the base class's time-order check too
            self._rewind()
            self._last_t = np.iinfo(np.int64).min
        side = _SideStreams(self, frame_from_dv, imu_from_dv, triggers_from_dv)
        for store in self._dv_batches():
            if len(store) == 0:
                continue
            t_end = store.getHighestTime()
            events = self.dv_events(store)
            if self.share_dv_stores and self.filters is None:
                remember_dv_store(events, store)
            frames, imu, triggers = side.until(t_end)
            yield Packet(events, frames, imu, triggers)
        frames, imu, triggers = side.until(None)
        if frames or len(imu) or len(triggers):
            yield Packet(np.zeros(0, EVENT_DTYPE), frames, imu, triggers)

    def close(self) -> None:
        self._rec = None      # dv closes the file when the reader is destroyed
        if self._checker is not None:
            self._checker.close()

    def describe(self) -> dict:
        d = super().describe()
        d.update(streams=list(self.streams), compression=self.compression,
                 time_range_us=list(self.time_range_us))
        return d


class _SideStreams:
    """Frames, IMU and triggers held back until the event batches catch up with them."""

    def __init__(self, src: Aedat4Source, frame_from_dv, imu_from_dv, triggers_from_dv):
        self.src = src
        self.conv = {"imu": imu_from_dv, "triggers": triggers_from_dv}
        self.frame_from_dv = frame_from_dv
        self.frame: Frame | None = None
        self.frames_done = not src._has["frames"]
        self.buf = {"imu": np.zeros(0, IMU_DTYPE), "triggers": np.zeros(0, TRIGGER_DTYPE)}
        self.done = {k: not src._has[k] for k in self.buf}

    def until(self, t_us: int | None):
        frames = []
        while not self.frames_done:
            if self.frame is None:
                f = self.src._dv_next("frames", "getNextFrame")
                if f is None:
                    self.frames_done = True
                    break
                self.frame = self.frame_from_dv(f)
            if t_us is not None and self.frame.t_us > t_us:
                break
            frames.append(self.frame)
            self.frame = None
        out = [frames]
        method = {"imu": "getNextImuBatch", "triggers": "getNextTriggerBatch"}
        for k in ("imu", "triggers"):
            buf = self.buf[k]
            while not self.done[k] and (t_us is None or not len(buf) or buf["t"][-1] <= t_us):
                batch = self.src._dv_next(k, method[k])
                if batch is None:
                    self.done[k] = True
                    break
                if len(batch):
                    buf = np.concatenate([buf, self.conv[k](batch)])
            cut = len(buf) if t_us is None else int(np.searchsorted(buf["t"], t_us, "right"))
            out.append(buf[:cut])
            self.buf[k] = buf[cut:]
        return out


def open_aedat4(path, *, width=None, height=None, bad_events=None, filters=None, stream=None):
    return Aedat4Source(os.fspath(path), width=width, height=height, bad_events=bad_events,
                        filters=filters, stream=stream)


register_reader(".aedat4", open_aedat4)
